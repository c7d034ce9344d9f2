//! The opening handshake (RFC 6455 section 4): the HTTP/1.1 upgrade, server side and client side.
//!
//! Server side: [`parse_request`] finds and parses a request head in the bytes read so far,
//! [`validate`] applies the checks of section 4.2.1 and chooses a subprotocol, and
//! [`Accept::write_response`] writes the `101 Switching Protocols` answer. A rejection is an
//! [`Error`] whose [`Error::http_response`] is the answer to send instead.
//!
//! Client side (the load generator, tests): [`generate_key`], [`write_client_request`] and
//! [`parse_response`] with the checks of section 4.1.
//!
//! This module does no I/O and keeps no state between calls: the caller buffers bytes and calls
//! again. It parses extension offers ([`parse_extensions`]) but does not negotiate any extension;
//! the caller decides what goes into the `Sec-WebSocket-Extensions` answer.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::error::Error;

/// The most header fields a request (or a response, client side) may carry.
pub const MAX_HEADERS: usize = 64;

/// The GUID appended to `Sec-WebSocket-Key` before hashing (RFC 6455 section 1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The default limit on the size of a request head, and the fixed limit on a response head.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;

/// What the server accepts in an upgrade request.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Largest request head (request line + headers + blank line) accepted, default 8 KiB. A
    /// head that reaches it without being complete, or a complete one longer than it, is
    /// [`Error::HeadersTooLarge`] (431); so are more than [`MAX_HEADERS`] header fields.
    pub max_head_bytes: usize,
    /// `None`: any `Origin` (or none). `Some(list)`: `Origin` must match one entry exactly,
    /// ASCII case-insensitively (e.g. `"https://app.example.com"`), else
    /// [`Error::OriginRefused`] (403).
    pub allowed_origins: Option<Vec<String>>,
    /// With an allow-list set: whether a request *without* `Origin` (a non-browser client) is
    /// refused (`true`) or let through (`false`, the default).
    pub require_origin: bool,
    /// Subprotocols the server speaks, in its order of preference.
    pub subprotocols: Vec<String>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            allowed_origins: None,
            require_origin: false,
            subprotocols: Vec::new(),
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: the head is incomplete and still under the limit; call again, from the start of
/// the same buffer, when more bytes have arrived (the request may come in any number of pieces).
/// `Err`: a rejection, to be answered with [`Error::http_response`]. Bytes after the head
/// ([`Request::head_len`]) are not looked at: they are the start of the frame stream.
pub fn parse_request<'b>(
    buf: &'b [u8],
    cfg: &HandshakeConfig,
) -> Result<Option<Request<'b>>, Error> {
    // Nothing past the limit can belong to an acceptable head, so httparse never sees it.
    let window = buf.get(..cfg.max_head_bytes).unwrap_or(buf);
    let at_limit = buf.len() >= cfg.max_head_bytes;
    let incomplete = || {
        if at_limit {
            Err(Error::HeadersTooLarge)
        } else {
            Ok(None)
        }
    };
    // Re-parsing from the start on every call is fine (the head is bounded), but a trickled
    // head should not cost an httparse run per read.
    if !has_blank_line(window) {
        return incomplete();
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return incomplete(),
        Err(e) => return Err(request_error(e)),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Error::MalformedRequest("bad request line"));
    };
    let mut req = Request {
        method,
        target,
        version,
        head_len,
        headers: [("", &[]); MAX_HEADERS],
        header_count: 0,
    };
    for (slot, h) in req.headers.iter_mut().zip(parsed.headers.iter()) {
        *slot = (h.name, h.value);
        req.header_count += 1;
    }
    Ok(Some(req))
}

/// A parsed request head, borrowing from the input. Holds its headers inline: parsing allocates
/// nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Request<'b> {
    method: &'b str,
    target: &'b str,
    version: u8,
    head_len: usize,
    headers: [(&'b str, &'b [u8]); MAX_HEADERS],
    header_count: usize,
}

impl<'b> Request<'b> {
    /// The method, as sent (methods are case-sensitive).
    pub fn method(&self) -> &'b str {
        self.method
    }

    /// The request target without the query.
    pub fn path(&self) -> &'b str {
        self.target
            .split_once('?')
            .map_or(self.target, |(path, _)| path)
    }

    /// The part of the target after the first `?`, if there is one.
    pub fn query(&self) -> Option<&'b str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The full request target.
    pub fn target(&self) -> &'b str {
        self.target
    }

    /// The HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Bytes of the head, including the final blank line. Bytes after it are the start of the
    /// frame stream (a client may send frames right behind its request).
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// Every header field, in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + '_ {
        self.headers.iter().take(self.header_count).copied()
    }

    /// All values of a header (case-insensitive name), in order, each repeated header separate.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// The header's value; if it is repeated, all values joined with `", "` as RFC 9110 section
    /// 5.3 says. Borrowed when the header appears once.
    pub fn header(&self, name: &str) -> Option<Cow<'b, [u8]>> {
        let mut values = self.header_values(name);
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = first.to_vec();
        for value in std::iter::once(second).chain(values) {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value);
        }
        Some(Cow::Owned(joined))
    }

    /// Cookie pairs from every `Cookie` header (`"a=1; b=2"`), names and values trimmed of
    /// whitespace and otherwise as sent (a quoted value keeps its quotes). Headers that are not
    /// UTF-8 and pieces without `=` or with an empty name are skipped.
    pub fn cookies(&self) -> impl Iterator<Item = (&'b str, &'b str)> + '_ {
        self.header_values("cookie")
            .filter_map(|value| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                let name = name.trim_matches(is_ows_char);
                (!name.is_empty()).then(|| (name, value.trim_matches(is_ows_char)))
            })
    }

    /// The value of the first cookie named `name` (cookie names are case-sensitive).
    pub fn cookie(&self, name: &str) -> Option<&'b str> {
        self.cookies()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Headers<'r, 'b>(&'r Request<'b>);
        impl fmt::Debug for Headers<'_, '_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(
                        self.0
                            .headers()
                            .map(|(name, value)| (name, String::from_utf8_lossy(value))),
                    )
                    .finish()
            }
        }
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("version", &self.version)
            .field("head_len", &self.head_len)
            .field("headers", &Headers(self))
            .finish()
    }
}

/// What the server answers with when it accepts.
#[derive(Debug)]
pub struct Accept<'b> {
    /// `base64(SHA-1(key ++ GUID))`, the `Sec-WebSocket-Accept` value.
    pub accept_key: [u8; 28],
    /// The chosen subprotocol: the server's most preferred one among those the client offered;
    /// `None` if the client offered none of them (or none at all).
    pub protocol: Option<&'b str>,
    /// The client's extension offers, in order; empty (and not allocated) without the header.
    pub extensions: Vec<ExtensionOffer<'b>>,
}

impl Accept<'_> {
    /// Appends the `101 Switching Protocols` response to `out`, with
    /// `Sec-WebSocket-Protocol` if a subprotocol was chosen and `Sec-WebSocket-Extensions:
    /// {extensions_header}` if that is `Some` (the caller negotiates extensions).
    pub fn write_response(&self, extensions_header: Option<&str>, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: ",
        );
        out.extend_from_slice(&self.accept_key);
        out.extend_from_slice(b"\r\n");
        if let Some(protocol) = self.protocol {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(protocol.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(extensions) = extensions_header {
            out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
            out.extend_from_slice(extensions.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Checks an upgrade request as RFC 6455 section 4.2.1 says, and chooses a subprotocol.
///
/// The checks run in this order, the first failure being the answer: method `GET`
/// ([`Error::MethodNotAllowed`]); HTTP/1.1 ([`Error::MalformedRequest`]); exactly one `Host`
/// ([`Error::MissingHost`]); an `Upgrade` header ([`Error::NotUpgrade`]) naming `websocket`
/// ([`Error::BadUpgrade`]); `Connection` holding `upgrade` ([`Error::BadConnection`]);
/// `Sec-WebSocket-Version` present ([`Error::MissingVersion`]) and 13
/// ([`Error::UnsupportedVersion`]); one `Sec-WebSocket-Key` of 16 base64 bytes
/// ([`Error::BadKey`]); the origin policy ([`Error::OriginRefused`]); the extension offers
/// ([`Error::BadExtensions`]); the subprotocol tokens ([`Error::MalformedRequest`]).
pub fn validate<'b>(req: &Request<'b>, cfg: &HandshakeConfig) -> Result<Accept<'b>, Error> {
    if req.method() != "GET" {
        return Err(Error::MethodNotAllowed);
    }
    if req.version() != 1 {
        return Err(Error::MalformedRequest("HTTP/1.1 is required"));
    }
    if req.header_values("host").count() != 1 {
        return Err(Error::MissingHost);
    }
    if req.header_values("upgrade").next().is_none() {
        return Err(Error::NotUpgrade);
    }
    if !has_token(req.header_values("upgrade"), "websocket") {
        return Err(Error::BadUpgrade);
    }
    if !has_token(req.header_values("connection"), "upgrade") {
        return Err(Error::BadConnection);
    }
    // Joined, so a repeated header ("13, 13") is not 13.
    match req.header("sec-websocket-version") {
        None => return Err(Error::MissingVersion),
        Some(version) if trim_ows(&version) == b"13" => {}
        Some(_) => return Err(Error::UnsupportedVersion),
    }
    let key = single(req.header_values("sec-websocket-key")).ok_or(Error::BadKey)?;
    let key = trim_ows(key);
    if !is_valid_key(key) {
        return Err(Error::BadKey);
    }
    check_origin(req, cfg)?;
    let extensions = parse_extensions(req.header_values("sec-websocket-extensions"))?;
    let protocol = choose_protocol(req, &cfg.subprotocols)?;
    Ok(Accept {
        accept_key: accept_key(key),
        protocol,
        extensions,
    })
}

/// The `Sec-WebSocket-Accept` value for a key: `base64(SHA-1(key ++ GUID))`. For the key
/// `dGhlIHNhbXBsZSBub25jZQ==` it is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    let mut out = [0; 28];
    STANDARD
        .encode_slice(sha1.finalize(), &mut out)
        .expect("a 20-byte digest encodes to exactly 28 base64 bytes");
    out
}

/// One extension offer: the extension's name and its parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer<'b> {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: &'b str,
    /// The parameters: name and optional value. A quoted value is unquoted; it is `Owned` only
    /// when it held backslash escapes.
    pub params: Vec<(&'b str, Option<Cow<'b, str>>)>,
}

/// Parses `Sec-WebSocket-Extensions` values (each repeated header separately) as RFC 6455
/// section 9.1 says:
///
/// ```text
/// extension-list = 1#extension
/// extension      = token *( ";" param )
/// param          = token [ "=" ( token | quoted-string ) ]
/// ```
///
/// A quoted value must be a token once unquoted (section 9.1). Whitespace is allowed around
/// `,`, `;` and `=`, and empty list elements are skipped (RFC 9110 section 5.6.1). Anything else
/// is [`Error::BadExtensions`]. No values: an empty `Vec`, which does not allocate.
pub fn parse_extensions<'b>(
    values: impl Iterator<Item = &'b [u8]>,
) -> Result<Vec<ExtensionOffer<'b>>, Error> {
    let mut offers = Vec::new();
    for value in values {
        parse_extension_list(value, &mut offers).ok_or(Error::BadExtensions)?;
    }
    Ok(offers)
}

// ---- client side ---------------------------------------------------------------------------

/// A fresh random `Sec-WebSocket-Key`: 16 random bytes, base64-encoded (24 ASCII bytes).
pub fn generate_key() -> [u8; 24] {
    let mut key = [0; 24];
    STANDARD
        .encode_slice(rand::random::<[u8; 16]>(), &mut key)
        .expect("16 bytes encode to exactly 24 base64 bytes");
    key
}

/// Appends a client upgrade request to `out`: `GET {path} HTTP/1.1` (`/` if `path` is empty),
/// `Host`, `Upgrade: websocket`, `Connection: Upgrade`, `Sec-WebSocket-Key`,
/// `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Protocol` (the protocols comma-joined) if there
/// are any, then `extra_headers`, then the blank line.
///
/// The strings are written as given: they come from the caller, not from a peer, and must not
/// hold CR or LF.
pub fn write_client_request(
    host: &str,
    path: &str,
    key: &[u8; 24],
    protocols: &[&str],
    extra_headers: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    let path = if path.is_empty() { "/" } else { path };
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
    if let Some((first, rest)) = protocols.split_first() {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(first.as_bytes());
        for protocol in rest {
            out.extend_from_slice(b", ");
            out.extend_from_slice(protocol.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in extra_headers {
        for part in [name, ": ", value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What a client learns from the server's accepting response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    /// Bytes of the response head; what follows is the server's frame stream.
    pub head_len: usize,
    /// The subprotocol the server chose (one the client offered), if any.
    pub protocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` value(s), joined with `", "`, if any. They parse as section
    /// 9.1 says; whether they were offered is for the caller to check.
    pub extensions: Option<String>,
}

/// Parses the server's response to a request made with `key` offering `protocols`, with the
/// checks of RFC 6455 section 4.1.
///
/// `Ok(None)`: incomplete. Everything wrong is [`Error::BadResponse`]: a status other than 101,
/// HTTP other than 1.1, `Upgrade` not `websocket`, `Connection` without `upgrade`, a missing,
/// repeated or wrong `Sec-WebSocket-Accept`, a subprotocol not offered, unparsable extensions, or
/// a head over [`DEFAULT_MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
pub fn parse_response(
    buf: &[u8],
    key: &[u8; 24],
    protocols: &[&str],
) -> Result<Option<ClientAccepted>, Error> {
    const TOO_LARGE: Error = Error::BadResponse("response head too large");
    let window = buf.get(..DEFAULT_MAX_HEAD_BYTES).unwrap_or(buf);
    let at_limit = buf.len() >= DEFAULT_MAX_HEAD_BYTES;
    let incomplete = || if at_limit { Err(TOO_LARGE) } else { Ok(None) };
    if !has_blank_line(window) {
        return incomplete();
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return incomplete(),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(_) => return Err(Error::BadResponse("malformed response head")),
    };
    if parsed.code != Some(101) {
        return Err(Error::BadResponse("status is not 101"));
    }
    if parsed.version != Some(1) {
        return Err(Error::BadResponse("response is not HTTP/1.1"));
    }
    let headers = &*parsed.headers;
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    // Section 4.1: the Upgrade value itself must be "websocket", not merely list it.
    if !single(values("upgrade")).is_some_and(|v| trim_ows(v).eq_ignore_ascii_case(b"websocket")) {
        return Err(Error::BadResponse("Upgrade is not websocket"));
    }
    if !has_token(values("connection"), "upgrade") {
        return Err(Error::BadResponse("Connection does not hold upgrade"));
    }
    let expected = accept_key(key);
    if single(values("sec-websocket-accept")).map(trim_ows) != Some(&expected[..]) {
        return Err(Error::BadResponse(
            "Sec-WebSocket-Accept does not match the key",
        ));
    }
    let mut chosen = values("sec-websocket-protocol");
    let protocol = match (chosen.next(), chosen.next()) {
        (None, _) => None,
        (Some(value), None) => {
            let value = trim_ows(value);
            let offered = protocols.iter().find(|p| p.as_bytes() == value);
            Some(
                offered
                    .ok_or(Error::BadResponse("subprotocol not offered"))?
                    .to_string(),
            )
        }
        (Some(_), Some(_)) => return Err(Error::BadResponse("more than one subprotocol")),
    };
    let extensions = match values("sec-websocket-extensions").next() {
        None => None,
        Some(_) => {
            parse_extensions(values("sec-websocket-extensions"))
                .map_err(|_| Error::BadResponse("bad Sec-WebSocket-Extensions"))?;
            let joined: Vec<&str> = values("sec-websocket-extensions")
                .map(|v| std::str::from_utf8(trim_ows(v)))
                .collect::<Result<_, _>>()
                .map_err(|_| Error::BadResponse("bad Sec-WebSocket-Extensions"))?;
            Some(joined.join(", "))
        }
    };
    Ok(Some(ClientAccepted {
        head_len,
        protocol,
        extensions,
    }))
}

// ---- helpers -------------------------------------------------------------------------------

/// Whether `buf` holds an empty line: CRLF CRLF, or the bare-LF forms httparse also accepts
/// (RFC 9112 section 2.2 lets a recipient take LF alone as a line terminator).
fn has_blank_line(buf: &[u8]) -> bool {
    let mut rest = buf;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        rest = rest.get(i + 1..).unwrap_or_default();
        if matches!(rest, [b'\n', ..] | [b'\r', b'\n', ..]) {
            return true;
        }
    }
    false
}

fn request_error(e: httparse::Error) -> Error {
    match e {
        httparse::Error::TooManyHeaders => Error::HeadersTooLarge,
        httparse::Error::HeaderName => Error::MalformedRequest("bad header name"),
        httparse::Error::HeaderValue => Error::MalformedRequest("bad header value"),
        httparse::Error::NewLine => Error::MalformedRequest("bad line ending"),
        httparse::Error::Version => Error::MalformedRequest("bad HTTP version"),
        httparse::Error::Token | httparse::Error::Status => {
            Error::MalformedRequest("bad request line")
        }
    }
}

/// The only item of `items`, if there is exactly one.
fn single<T>(mut items: impl Iterator<Item = T>) -> Option<T> {
    match (items.next(), items.next()) {
        (Some(item), None) => Some(item),
        _ => None,
    }
}

/// Whether a comma-separated list, spread over any number of header values, holds `token`
/// (ASCII case-insensitively).
fn has_token<'a>(values: impl Iterator<Item = &'a [u8]>, token: &str) -> bool {
    values
        .flat_map(|value| value.split(|&b| b == b','))
        .any(|item| trim_ows(item).eq_ignore_ascii_case(token.as_bytes()))
}

fn is_ows_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `bytes` without leading and trailing optional whitespace (SP and HTAB, RFC 9110 5.6.3).
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ' && b != b'\t');
    let end = bytes.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(start), Some(end)) => bytes.get(start..=end).unwrap_or_default(),
        _ => &[],
    }
}

/// `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}

/// Section 4.2.1 item 5: 24 characters of padded standard base64 that decode to 16 bytes. The
/// decoder is strict: non-zero trailing bits are refused like any other non-canonical form.
fn is_valid_key(key: &[u8]) -> bool {
    let mut raw = [0; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut raw) == Ok(16)
}

fn check_origin(req: &Request<'_>, cfg: &HandshakeConfig) -> Result<(), Error> {
    let Some(allowed) = &cfg.allowed_origins else {
        return Ok(());
    };
    let mut origins = req.header_values("origin");
    match (origins.next(), origins.next()) {
        (None, _) if !cfg.require_origin => Ok(()),
        (Some(origin), None)
            if allowed
                .iter()
                .any(|a| trim_ows(origin).eq_ignore_ascii_case(a.as_bytes())) =>
        {
            Ok(())
        }
        // Missing when required, not listed, or repeated (which one would we believe?).
        _ => Err(Error::OriginRefused),
    }
}

/// The server's most preferred subprotocol among those offered in `Sec-WebSocket-Protocol`.
/// Names are compared exactly: RFC 6455 section 4.1 has the client accept only a value it
/// sent, and browsers compare case-sensitively.
fn choose_protocol<'b>(req: &Request<'b>, preferred: &[String]) -> Result<Option<&'b str>, Error> {
    const BAD: Error = Error::MalformedRequest("bad Sec-WebSocket-Protocol");
    let offered = || {
        req.header_values("sec-websocket-protocol")
            .flat_map(|value| value.split(|&b| b == b','))
            .map(trim_ows)
            .filter(|item| !item.is_empty())
    };
    if !offered().all(is_token) {
        return Err(BAD);
    }
    for want in preferred {
        if let Some(item) = offered().find(|item| *item == want.as_bytes()) {
            return std::str::from_utf8(item).map(Some).map_err(|_| BAD);
        }
    }
    Ok(None)
}

/// Parses one header value of extension offers onto `offers`; `None` on a syntax error.
fn parse_extension_list<'b>(value: &'b [u8], offers: &mut Vec<ExtensionOffer<'b>>) -> Option<()> {
    let mut cur = Cursor {
        bytes: value,
        pos: 0,
    };
    loop {
        cur.skip_ows();
        match cur.peek() {
            None => return Some(()),
            Some(b',') => {
                cur.pos += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = cur.token()?;
        let mut params = Vec::new();
        loop {
            cur.skip_ows();
            match cur.peek() {
                None | Some(b',') => break,
                Some(b';') => cur.pos += 1,
                Some(_) => return None,
            }
            cur.skip_ows();
            let param = cur.token()?;
            cur.skip_ows();
            let mut param_value = None;
            if cur.peek() == Some(b'=') {
                cur.pos += 1;
                cur.skip_ows();
                param_value = Some(if cur.peek() == Some(b'"') {
                    let unquoted = cur.quoted_string()?;
                    is_token(unquoted.as_bytes()).then_some(unquoted)?
                } else {
                    Cow::Borrowed(cur.token()?)
                });
            }
            params.push((param, param_value));
        }
        offers.push(ExtensionOffer { name, params });
    }
}

/// A read position in a header value. Every access goes through `get`, so no input can make
/// it panic.
struct Cursor<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Cursor<'b> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// `1*tchar`.
    fn token(&mut self) -> Option<&'b str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        let token = self.bytes.get(start..self.pos)?;
        if token.is_empty() {
            return None;
        }
        std::str::from_utf8(token).ok()
    }

    /// A `quoted-string` (RFC 9110 section 5.6.4) starting at the opening quote, unquoted.
    fn quoted_string(&mut self) -> Option<Cow<'b, str>> {
        self.pos += 1;
        let start = self.pos;
        // Only built once a backslash escape makes the value differ from the raw bytes.
        let mut unescaped: Option<Vec<u8>> = None;
        loop {
            match self.peek()? {
                b'"' => {
                    let raw = self.bytes.get(start..self.pos)?;
                    self.pos += 1;
                    return match unescaped {
                        None => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
                        Some(v) => String::from_utf8(v).ok().map(Cow::Owned),
                    };
                }
                b'\\' => {
                    let before = self.bytes.get(start..self.pos)?;
                    self.pos += 1;
                    let escaped = self
                        .peek()
                        .filter(|&b| b == b'\t' || b >= 0x20 && b != 0x7f)?;
                    unescaped
                        .get_or_insert_with(|| before.to_vec())
                        .push(escaped);
                    self.pos += 1;
                }
                b if b == b'\t' || b >= 0x20 && b != 0x7f => {
                    if let Some(v) = unescaped.as_mut() {
                        v.push(b);
                    }
                    self.pos += 1;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// Request bytes from lines, CRLF-terminated, with the blank line.
    fn head(lines: &[&str]) -> Vec<u8> {
        let mut out = lines.join("\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out
    }

    /// A valid upgrade request with `extra` headers added and headers whose name starts with
    /// one of `drop` (case-insensitively) left out.
    fn request(first: &str, drop: &[&str], extra: &[&str]) -> Vec<u8> {
        let base = [
            "Host: server.example.com",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ];
        let mut lines = vec![first];
        lines.extend(base.iter().copied().filter(|line| {
            !drop.iter().any(|d| {
                line.to_ascii_lowercase()
                    .starts_with(&d.to_ascii_lowercase())
            })
        }));
        lines.extend_from_slice(extra);
        head(&lines)
    }

    fn get(drop: &[&str], extra: &[&str]) -> Vec<u8> {
        request("GET /chat HTTP/1.1", drop, extra)
    }

    fn outcome(buf: &[u8], cfg: &HandshakeConfig) -> Result<Option<String>, Error> {
        let req = parse_request(buf, cfg)?.expect("the test request is complete");
        let accept = validate(&req, cfg)?;
        assert_eq!(
            &accept.accept_key,
            accept_key(SAMPLE_KEY.as_bytes()).as_slice()
        );
        Ok(accept.protocol.map(str::to_string))
    }

    fn accepted(buf: &[u8]) {
        if let Err(e) = outcome(buf, &HandshakeConfig::default()) {
            panic!("{e:?} for {}", String::from_utf8_lossy(buf));
        }
    }

    fn rejected(buf: &[u8], cfg: &HandshakeConfig) -> Error {
        match outcome(buf, cfg) {
            Ok(_) => panic!("accepted {}", String::from_utf8_lossy(buf)),
            Err(e) => e,
        }
    }

    fn status(buf: &[u8]) -> u16 {
        rejected(buf, &HandshakeConfig::default())
            .http_status()
            .expect("a handshake error")
    }

    fn key_of(len: usize) -> String {
        STANDARD.encode(vec![7; len])
    }

    fn response_text(e: Error) -> String {
        String::from_utf8(e.http_response().expect("a handshake error")).unwrap()
    }

    #[test]
    fn rfc_sample_request_is_accepted() {
        let buf = head(&[
            "GET /chat HTTP/1.1",
            "Host: server.example.com",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Origin: http://example.com",
            "Sec-WebSocket-Protocol: chat, superchat",
            "Sec-WebSocket-Version: 13",
        ]);
        let cfg = HandshakeConfig {
            subprotocols: vec!["chat".into()],
            ..HandshakeConfig::default()
        };
        let req = parse_request(&buf, &cfg).unwrap().unwrap();
        assert_eq!(req.method(), "GET");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.head_len(), buf.len());
        assert_eq!(req.headers().count(), 7);
        let accept = validate(&req, &cfg).unwrap();
        assert_eq!(&accept.accept_key, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accept.protocol, Some("chat"));
        assert!(accept.extensions.is_empty());
        assert_eq!(accept.extensions.capacity(), 0);

        let mut out = Vec::new();
        accept.write_response(None, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: chat\r\n\r\n"
        );
        assert_eq!(
            &accept_key(SAMPLE_KEY.as_bytes()),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn non_get_is_405_with_allow() {
        let e = rejected(
            &request("POST /chat HTTP/1.1", &[], &[]),
            &HandshakeConfig::default(),
        );
        assert_eq!(e, Error::MethodNotAllowed);
        assert_eq!(e.http_status(), Some(405));
        assert!(response_text(e).contains("\r\nAllow: GET\r\n"));
        // Methods are case-sensitive (RFC 9110 section 9.1).
        assert_eq!(status(&request("get /chat HTTP/1.1", &[], &[])), 405);
    }

    #[test]
    fn http_1_0_is_400() {
        let e = rejected(
            &request("GET /chat HTTP/1.0", &[], &[]),
            &HandshakeConfig::default(),
        );
        assert!(matches!(e, Error::MalformedRequest(_)));
        assert_eq!(e.http_status(), Some(400));
    }

    #[test]
    fn host_must_appear_exactly_once() {
        let e = rejected(&get(&["host"], &[]), &HandshakeConfig::default());
        assert_eq!(e, Error::MissingHost);
        assert_eq!(e.http_status(), Some(400));
        let e = rejected(
            &get(&[], &["Host: other.example.com"]),
            &HandshakeConfig::default(),
        );
        assert_eq!(e, Error::MissingHost);
        assert_eq!(e.http_status(), Some(400));
    }

    #[test]
    fn upgrade_header_is_checked() {
        let e = rejected(&get(&["upgrade"], &[]), &HandshakeConfig::default());
        assert_eq!(e, Error::NotUpgrade);
        assert_eq!(e.http_status(), Some(426));
        assert!(response_text(e).contains("\r\nUpgrade: websocket\r\n"));

        let e = rejected(
            &get(&["upgrade"], &["Upgrade: h2c"]),
            &HandshakeConfig::default(),
        );
        assert_eq!(e, Error::BadUpgrade);
        assert_eq!(e.http_status(), Some(400));

        accepted(&get(&["upgrade"], &["Upgrade: WebSocket"]));
        accepted(&get(&["upgrade"], &["Upgrade: h2c, websocket"]));
        accepted(&get(&["upgrade"], &["Upgrade: h2c", "Upgrade: WEBSOCKET"]));
    }

    #[test]
    fn connection_must_hold_upgrade() {
        let e = rejected(
            &get(&["connection"], &["Connection: keep-alive"]),
            &HandshakeConfig::default(),
        );
        assert_eq!(e, Error::BadConnection);
        assert_eq!(e.http_status(), Some(400));
        assert_eq!(status(&get(&["connection"], &[])), 400);
        // A token, not a substring.
        assert_eq!(
            status(&get(&["connection"], &["Connection: upgraded"])),
            400
        );

        accepted(&get(&["connection"], &["Connection: keep-alive, Upgrade"]));
        accepted(&get(
            &["connection"],
            &["Connection: keep-alive", "Connection: Upgrade"],
        ));
        accepted(&get(&["connection"], &["Connection:keep-alive,upgrade"]));
    }

    #[test]
    fn header_names_are_case_insensitive() {
        accepted(&head(&[
            "GET / HTTP/1.1",
            "HOST: a",
            "upgrade: websocket",
            "CoNnEcTiOn: Upgrade",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "SEC-WEBSOCKET-VERSION: 13",
        ]));
    }

    #[test]
    fn version_must_be_13() {
        let e = rejected(
            &get(&["sec-websocket-version"], &[]),
            &HandshakeConfig::default(),
        );
        assert_eq!(e, Error::MissingVersion);
        assert_eq!(e.http_status(), Some(400));
        assert!(response_text(e).contains("\r\nSec-WebSocket-Version: 13\r\n"));

        let e = rejected(
            &get(&["sec-websocket-version"], &["Sec-WebSocket-Version: 8"]),
            &HandshakeConfig::default(),
        );
        assert_eq!(e, Error::UnsupportedVersion);
        assert_eq!(e.http_status(), Some(426));
        assert!(response_text(e).contains("\r\nSec-WebSocket-Version: 13\r\n"));

        let twice = get(&[], &["Sec-WebSocket-Version: 13"]);
        assert_eq!(
            rejected(&twice, &HandshakeConfig::default()),
            Error::UnsupportedVersion
        );
    }

    #[test]
    fn key_must_be_one_base64_value_of_16_bytes() {
        let cases = [
            get(&["sec-websocket-key"], &[]),
            get(
                &["sec-websocket-key"],
                &[&format!("Sec-WebSocket-Key: {}", key_of(15))],
            ),
            get(
                &["sec-websocket-key"],
                &[&format!("Sec-WebSocket-Key: {}", key_of(17))],
            ),
            get(
                &["sec-websocket-key"],
                &["Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="],
            ),
            get(
                &["sec-websocket-key"],
                &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"],
            ),
            get(
                &["sec-websocket-key"],
                &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR=="],
            ),
            get(&[], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]),
        ];
        assert_eq!(
            key_of(17).len(),
            24,
            "17 bytes also encode to 24 characters"
        );
        for buf in cases {
            let e = rejected(&buf, &HandshakeConfig::default());
            assert_eq!(e, Error::BadKey, "{}", String::from_utf8_lossy(&buf));
            assert_eq!(e.http_status(), Some(400));
        }
        accepted(&get(
            &["sec-websocket-key"],
            &["Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  "],
        ));
    }

    #[test]
    fn head_size_is_limited() {
        let cfg = HandshakeConfig::default();
        let mut endless = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        endless.resize(cfg.max_head_bytes - 1, b'a');
        assert_eq!(parse_request(&endless, &cfg), Ok(None));
        endless.push(b'a');
        let e = parse_request(&endless, &cfg).unwrap_err();
        assert_eq!(e, Error::HeadersTooLarge);
        assert_eq!(e.http_status(), Some(431));

        let pad = format!("X-Pad: {}", "p".repeat(cfg.max_head_bytes));
        let e = parse_request(&get(&[], &[&pad]), &cfg).unwrap_err();
        assert_eq!(e.http_status(), Some(431));

        // Exactly at the limit is still accepted.
        let buf = get(&[], &[]);
        let exact = HandshakeConfig {
            max_head_bytes: buf.len(),
            ..HandshakeConfig::default()
        };
        assert!(parse_request(&buf, &exact).unwrap().is_some());
        let one_less = HandshakeConfig {
            max_head_bytes: buf.len() - 1,
            ..HandshakeConfig::default()
        };
        assert_eq!(
            parse_request(&buf, &one_less).unwrap_err(),
            Error::HeadersTooLarge
        );
    }

    #[test]
    fn header_count_is_limited() {
        let extra: Vec<String> = (0..MAX_HEADERS - 5).map(|i| format!("X-H{i}: v")).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        accepted(&get(&[], &extra));

        let extra: Vec<String> = (0..MAX_HEADERS - 4).map(|i| format!("X-H{i}: v")).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let e = parse_request(&get(&[], &extra), &HandshakeConfig::default()).unwrap_err();
        assert_eq!(e, Error::HeadersTooLarge);
        assert_eq!(e.http_status(), Some(431));
    }

    #[test]
    fn origin_policy() {
        let cfg = HandshakeConfig {
            allowed_origins: Some(vec!["https://app.example.com".into()]),
            ..HandshakeConfig::default()
        };
        let e = rejected(&get(&[], &["Origin: https://evil.example.com"]), &cfg);
        assert_eq!(e, Error::OriginRefused);
        assert_eq!(e.http_status(), Some(403));
        assert!(outcome(&get(&[], &["Origin: https://APP.example.com"]), &cfg).is_ok());
        assert!(outcome(&get(&[], &[]), &cfg).is_ok());
        let twice = get(
            &[],
            &[
                "Origin: https://app.example.com",
                "Origin: https://evil.example.com",
            ],
        );
        assert_eq!(rejected(&twice, &cfg), Error::OriginRefused);

        let strict = HandshakeConfig {
            require_origin: true,
            ..cfg
        };
        assert_eq!(rejected(&get(&[], &[]), &strict), Error::OriginRefused);
        assert!(outcome(&get(&[], &["Origin: https://app.example.com"]), &strict).is_ok());

        // Without an allow-list any origin passes.
        accepted(&get(&[], &["Origin: https://evil.example.com"]));
    }

    #[test]
    fn request_arrives_in_pieces() {
        let cfg = HandshakeConfig::default();
        let buf = get(&[], &["Cookie: a=1"]);
        let whole = parse_request(&buf, &cfg).unwrap().unwrap();
        for k in 0..buf.len() {
            assert_eq!(
                parse_request(&buf[..k], &cfg),
                Ok(None),
                "prefix of {k} bytes"
            );
        }
        assert_eq!(parse_request(&buf, &cfg).unwrap().as_ref(), Some(&whole));
        assert_eq!(whole.head_len(), buf.len());
    }

    #[test]
    fn pipelined_frames_after_the_head_are_left_alone() {
        let mut buf = get(&[], &[]);
        let head_len = buf.len();
        let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        buf.extend_from_slice(&frame);
        let req = parse_request(&buf, &HandshakeConfig::default())
            .unwrap()
            .unwrap();
        assert_eq!(req.head_len(), head_len);
        assert_eq!(&buf[req.head_len()..], &frame);
        validate(&req, &HandshakeConfig::default()).unwrap();
    }

    #[test]
    fn subprotocol_follows_server_preference() {
        let cfg = HandshakeConfig {
            subprotocols: vec!["a".into(), "b".into()],
            ..HandshakeConfig::default()
        };
        let chosen = |offer: &[&str]| outcome(&get(&[], offer), &cfg).unwrap();
        assert_eq!(chosen(&["Sec-WebSocket-Protocol: b, a"]), Some("a".into()));
        assert_eq!(chosen(&["Sec-WebSocket-Protocol: b"]), Some("b".into()));
        assert_eq!(
            chosen(&["Sec-WebSocket-Protocol: c", "Sec-WebSocket-Protocol: b"]),
            Some("b".into())
        );
        assert_eq!(chosen(&["Sec-WebSocket-Protocol: c, d"]), None);
        assert_eq!(chosen(&["Sec-WebSocket-Protocol: A"]), None);
        assert_eq!(chosen(&[]), None);

        let none = outcome(
            &get(&[], &["Sec-WebSocket-Protocol: a"]),
            &HandshakeConfig::default(),
        );
        assert_eq!(none, Ok(None));
        let e = rejected(&get(&[], &["Sec-WebSocket-Protocol: a b"]), &cfg);
        assert_eq!(e.http_status(), Some(400));
    }

    #[test]
    fn extension_offers_are_parsed() {
        let buf = get(
            &[],
            &[
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo; a=\"10\"",
                "Sec-WebSocket-Extensions: x-bar ; b = 2 ; c=\"1\\5\",, ",
            ],
        );
        let req = parse_request(&buf, &HandshakeConfig::default())
            .unwrap()
            .unwrap();
        let accept = validate(&req, &HandshakeConfig::default()).unwrap();
        assert_eq!(
            accept.extensions,
            vec![
                ExtensionOffer {
                    name: "permessage-deflate",
                    params: vec![("client_max_window_bits", None)],
                },
                ExtensionOffer {
                    name: "x-foo",
                    params: vec![("a", Some(Cow::Borrowed("10")))],
                },
                ExtensionOffer {
                    name: "x-bar",
                    params: vec![("b", Some("2".into())), ("c", Some("15".into()))],
                },
            ]
        );
        assert!(matches!(
            accept.extensions[1].params[0].1,
            Some(Cow::Borrowed(_))
        ));
        assert!(matches!(
            accept.extensions[2].params[1].1,
            Some(Cow::Owned(_))
        ));

        let mut out = Vec::new();
        accept.write_response(Some("permessage-deflate"), &mut out);
        assert!(out.ends_with(b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
    }

    #[test]
    fn bad_extension_syntax_is_400() {
        for bad in [
            "permessage-deflate; client_max_window_bits, x-foo; a=\"b c\"",
            "; a",
            "foo;",
            "foo; =1",
            "foo; a=",
            "foo; a=\"\"",
            "foo; a=\"10",
            "foo; a=\"1\\",
            "foo bar",
            "foo; a=1 2",
            "f\u{e9}e",
            "foo, \"bar\"",
        ] {
            let buf = get(&[], &[&format!("Sec-WebSocket-Extensions: {bad}")]);
            let e = rejected(&buf, &HandshakeConfig::default());
            assert_eq!(e, Error::BadExtensions, "{bad}");
            assert_eq!(e.http_status(), Some(400));
        }
        assert_eq!(
            parse_extensions([b"a, b" as &[u8]].into_iter())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn cookies_and_query() {
        let buf = request(
            "GET /chat?room=1&x=%20 HTTP/1.1",
            &[],
            &["Cookie: a=1; b=2", "Cookie:  c = x=y ;junk; =v"],
        );
        let req = parse_request(&buf, &HandshakeConfig::default())
            .unwrap()
            .unwrap();
        assert_eq!(req.target(), "/chat?room=1&x=%20");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1&x=%20"));
        assert_eq!(
            req.cookies().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("c", "x=y")]
        );
        assert_eq!(req.cookie("b"), Some("2"));
        assert_eq!(req.cookie("B"), None);
        assert_eq!(
            req.header("cookie").unwrap().as_ref(),
            b"a=1; b=2, c = x=y ;junk; =v"
        );
        assert!(matches!(
            req.header("host"),
            Some(Cow::Borrowed(b"server.example.com"))
        ));
        assert_eq!(req.header("x-missing"), None);
        assert!(format!("{req:?}").contains("server.example.com"));

        let buf = get(&[], &[]);
        let plain = parse_request(&buf, &HandshakeConfig::default())
            .unwrap()
            .unwrap();
        assert_eq!((plain.path(), plain.query()), ("/chat", None));
    }

    #[test]
    fn malformed_http_is_400() {
        for bad in [
            b"GET /chat HTTP/1.1\r\nHost server\r\n\r\n" as &[u8],
            b"GET /chat HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET /chat HTTP/1.1\r\nBad Name: a\r\n\r\n",
            b"GET /chat HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
            b"GET /chat HTTP/1.1\rHost: a\r\n\r\n",
        ] {
            let e = parse_request(bad, &HandshakeConfig::default()).unwrap_err();
            assert!(matches!(e, Error::MalformedRequest(_)), "{e:?}");
        }
    }

    #[test]
    fn client_round_trip() {
        let key = generate_key();
        assert_ne!(key, generate_key());
        let mut raw = [0; 18];
        assert_eq!(STANDARD.decode_slice(key, &mut raw), Ok(16));

        let mut request = Vec::new();
        write_client_request(
            "example.com:8080",
            "/chat?x=1",
            &key,
            &["chat", "superchat"],
            &[("Origin", "https://app.example.com"), ("Cookie", "sid=abc")],
            &mut request,
        );
        let cfg = HandshakeConfig {
            allowed_origins: Some(vec!["https://app.example.com".into()]),
            require_origin: true,
            subprotocols: vec!["superchat".into(), "chat".into()],
            ..HandshakeConfig::default()
        };
        let req = parse_request(&request, &cfg).unwrap().unwrap();
        assert_eq!(req.head_len(), request.len());
        assert_eq!(req.query(), Some("x=1"));
        assert_eq!(req.cookie("sid"), Some("abc"));
        let accept = validate(&req, &cfg).unwrap();
        assert_eq!(accept.accept_key, accept_key(&key));

        let mut response = Vec::new();
        accept.write_response(Some("permessage-deflate"), &mut response);
        let head_len = response.len();
        response.extend_from_slice(&[0x81, 0x00]);
        for k in 0..head_len {
            assert_eq!(
                parse_response(&response[..k], &key, &["chat", "superchat"]),
                Ok(None)
            );
        }
        assert_eq!(
            parse_response(&response, &key, &["chat", "superchat"]),
            Ok(Some(ClientAccepted {
                head_len,
                protocol: Some("superchat".into()),
                extensions: Some("permessage-deflate".into()),
            }))
        );

        let mut plain = Vec::new();
        write_client_request("h", "", &key, &[], &[], &mut plain);
        assert!(plain.starts_with(b"GET / HTTP/1.1\r\n"));
        let req = parse_request(&plain, &HandshakeConfig::default())
            .unwrap()
            .unwrap();
        assert_eq!(req.header_values("sec-websocket-protocol").count(), 0);
        let accept = validate(&req, &HandshakeConfig::default()).unwrap();
        let mut response = Vec::new();
        accept.write_response(None, &mut response);
        let ok = parse_response(&response, &key, &[]).unwrap().unwrap();
        assert_eq!((ok.protocol, ok.extensions), (None, None));
    }

    #[test]
    fn client_rejects_bad_responses() {
        let key = *b"dGhlIHNhbXBsZSBub25jZQ==";
        let good = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ];
        assert!(parse_response(&head(&good), &key, &[]).unwrap().is_some());
        let with = |replace: usize, line: &str| {
            let mut lines = good.to_vec();
            lines[replace] = line;
            head(&lines)
        };
        let bad = |buf: Vec<u8>, protocols: &[&str]| {
            let e = parse_response(&buf, &key, protocols).unwrap_err();
            assert!(matches!(e, Error::BadResponse(_)), "{e:?}");
            assert_eq!(e.http_status(), None);
            e
        };
        assert_eq!(
            bad(with(0, "HTTP/1.1 403 Forbidden"), &[]),
            Error::BadResponse("status is not 101")
        );
        bad(
            with(3, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo"),
            &[],
        );
        bad(
            with(3, "Sec-WebSocket-Accept: x3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            &[],
        );
        let other_key = generate_key();
        assert!(matches!(
            parse_response(&head(&good), &other_key, &[]),
            Err(Error::BadResponse(_))
        ));
        bad(with(1, "Upgrade: h2c"), &[]);
        bad(with(2, "Connection: keep-alive"), &[]);

        let mut chose = good.to_vec();
        chose.push("Sec-WebSocket-Protocol: superchat");
        bad(head(&chose), &["chat"]);
        bad(head(&chose), &[]);
        assert_eq!(
            parse_response(&head(&chose), &key, &["chat", "superchat"])
                .unwrap()
                .unwrap()
                .protocol
                .as_deref(),
            Some("superchat")
        );

        let mut endless = b"HTTP/1.1 101 Switching Protocols\r\nX: ".to_vec();
        endless.resize(DEFAULT_MAX_HEAD_BYTES, b'x');
        assert_eq!(
            parse_response(&endless, &key, &[]),
            Err(Error::BadResponse("response head too large"))
        );
    }

    /// xorshift64*: deterministic noise without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            const INTERESTING: &[u8] = b"\r\n:,;=\"\\ \t?\x00\x7f\x80\xffaZ9-";
            if self.below(2) == 0 {
                INTERESTING[self.below(INTERESTING.len())]
            } else {
                self.next() as u8
            }
        }
    }

    fn exercise(buf: &[u8], cfg: &HandshakeConfig) {
        if let Ok(Some(req)) = parse_request(buf, cfg) {
            assert!(req.head_len() <= buf.len());
            let _ = req.cookies().count();
            let _ = format!("{req:?}");
            if let Ok(accept) = validate(&req, cfg) {
                let mut out = Vec::new();
                accept.write_response(None, &mut out);
            }
        }
        let _ = parse_response(buf, b"dGhlIHNhbXBsZSBub25jZQ==", &["chat"]);
        let _ = parse_extensions(std::iter::once(buf));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let cfgs = [
            HandshakeConfig::default(),
            HandshakeConfig {
                max_head_bytes: 200,
                allowed_origins: Some(vec!["https://a.example".into()]),
                require_origin: true,
                subprotocols: vec!["chat".into(), "superchat".into()],
            },
        ];
        let valid = get(
            &[],
            &[
                "Origin: https://a.example",
                "Sec-WebSocket-Protocol: superchat, chat",
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; x=\"1\\2\"",
                "Cookie: a=1; b=2",
            ],
        );
        for cfg in &cfgs {
            exercise(&valid, cfg);
        }
        for i in 0..2000 {
            let cfg = &cfgs[i % 2];
            let buf = match i % 4 {
                // Noise.
                0 => (0..rng.below(300)).map(|_| rng.byte()).collect(),
                // A request line and noise for headers.
                1 => {
                    let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
                    buf.extend((0..rng.below(200)).map(|_| rng.byte()));
                    buf.extend_from_slice(b"\r\n\r\n");
                    buf
                }
                // A valid request with a few bytes changed, inserted, removed or cut off.
                _ => {
                    let mut buf = valid.clone();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(buf.len());
                        match rng.below(4) {
                            0 => buf[at] = rng.byte(),
                            1 => buf.insert(at, rng.byte()),
                            2 => {
                                buf.remove(at);
                            }
                            _ => buf.truncate(at),
                        }
                        if buf.is_empty() {
                            break;
                        }
                    }
                    buf
                }
            };
            exercise(&buf, cfg);
        }
    }
}
