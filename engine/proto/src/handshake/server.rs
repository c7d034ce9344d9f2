//! Server side, second step: the checks of RFC 6455 section 4.2.1 on a parsed request, the
//! choice of subprotocol, and the `101 Switching Protocols` answer.
//!
//! Extension offers are parsed and handed to the caller; permessage-deflate is negotiated here
//! when the config enables it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::deflate::{self, Negotiated};
use crate::error::Error;

use super::headers::{has_token, is_token, single, trim_ows};
use super::request::resource_name;
use super::{parse_extensions, ExtensionOffer, HandshakeConfig, Request, GUID};

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
    /// permessage-deflate, if the config enables it and an offer was acceptable: the agreement
    /// for [`crate::Connection::enable_deflate`] and the response value, which
    /// [`Accept::write_response`] writes.
    pub deflate: Option<Negotiated>,
}

impl Accept<'_> {
    /// Appends the `101 Switching Protocols` response to `out`, with
    /// `Sec-WebSocket-Protocol` if a subprotocol was chosen, `Sec-WebSocket-Extensions` with
    /// the permessage-deflate answer if [`Accept::deflate`] is set, and
    /// `Sec-WebSocket-Extensions: {extensions_header}` if that is `Some` (other extensions the
    /// caller negotiated itself; it must not name permessage-deflate again).
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
        if let Some(deflate) = &self.deflate {
            out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
            out.extend_from_slice(deflate.response.as_bytes());
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
/// ([`Error::MethodNotAllowed`]); HTTP/1.1 ([`Error::MalformedRequest`]); a target in origin
/// form (`/chat`) or absolute form (`http://host/chat`) ([`Error::BadTarget`]); no body: no
/// `Transfer-Encoding` and no `Content-Length` other than 0 ([`Error::UnexpectedBody`]); exactly
/// one `Host`
/// ([`Error::MissingHost`]); an `Upgrade` header ([`Error::NotUpgrade`]) naming `websocket`
/// ([`Error::BadUpgrade`]); `Connection` holding `upgrade` ([`Error::BadConnection`]);
/// `Sec-WebSocket-Version` present ([`Error::MissingVersion`]) and 13
/// ([`Error::UnsupportedVersion`]); one `Sec-WebSocket-Key` of 16 base64 bytes
/// ([`Error::BadKey`]); the origin policy ([`Error::OriginRefused`]); the extension offers
/// ([`Error::BadExtensions`]); the subprotocol tokens ([`Error::MalformedRequest`]). An
/// unacceptable permessage-deflate offer is declined, never an error.
pub fn validate<'b>(req: &Request<'b>, cfg: &HandshakeConfig) -> Result<Accept<'b>, Error> {
    if req.method() != "GET" {
        return Err(Error::MethodNotAllowed);
    }
    if req.version() != 1 {
        return Err(Error::MalformedRequest("HTTP/1.1 is required"));
    }
    if resource_name(req.target()).is_none() {
        return Err(Error::BadTarget);
    }
    if has_body(req) {
        return Err(Error::UnexpectedBody);
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
    let deflate = cfg.deflate.as_ref().and_then(|d| deflate::negotiate(&extensions, d));
    Ok(Accept { accept_key: accept_key(key), protocol, extensions, deflate })
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

/// Section 4.2.1 item 5: 24 characters of padded standard base64 that decode to 16 bytes. The
/// decoder is strict: non-zero trailing bits are refused like any other non-canonical form.
fn is_valid_key(key: &[u8]) -> bool {
    let mut raw = [0; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut raw) == Ok(16)
}

/// Whether the request announces a body. An upgrade request has none (RFC 6455 section 4.1
/// describes a bare GET), and the bytes after the head are read as WebSocket frames: a body
/// there would be parsed as frames, and a proxy in front that framed the request by its
/// `Content-Length` or `Transfer-Encoding` would disagree with us on where it ends (request
/// smuggling). `Content-Length: 0` announces none and passes; so does a value of more zeros,
/// which still means 0 (RFC 9110 section 8.6); anything else is refused, lists and repeats
/// included.
fn has_body(req: &Request<'_>) -> bool {
    req.header_values("transfer-encoding").next().is_some()
        || req.header_values("content-length").any(|value| {
            let value = trim_ows(value);
            value.is_empty() || value.iter().any(|&b| b != b'0')
        })
}

fn check_origin(req: &Request<'_>, cfg: &HandshakeConfig) -> Result<(), Error> {
    let Some(allowed) = &cfg.allowed_origins else {
        return Ok(());
    };
    let mut origins = req.header_values("origin");
    match (origins.next(), origins.next()) {
        (None, _) if !cfg.require_origin => Ok(()),
        (Some(origin), None)
            if allowed.iter().any(|a| trim_ows(origin).eq_ignore_ascii_case(a.as_bytes())) =>
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::parse_request;
    use crate::handshake::test_util::{
        accepted, get, head, outcome, rejected, request, SAMPLE_KEY,
    };

    fn status(buf: &[u8]) -> u16 {
        rejected(buf, &HandshakeConfig::default()).http_status().expect("a handshake error")
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
        let cfg =
            HandshakeConfig { subprotocols: vec!["chat".into()], ..HandshakeConfig::default() };
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
        assert_eq!(&accept_key(SAMPLE_KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn deflate_is_declined_by_default_and_negotiated_when_enabled() {
        let offer = "Sec-WebSocket-Extensions: x-foo, permessage-deflate; client_max_window_bits";
        let buf = get(&[], &[offer]);
        let req = parse_request(&buf, &HandshakeConfig::default()).unwrap().unwrap();
        let accept = validate(&req, &HandshakeConfig::default()).unwrap();
        assert_eq!(accept.deflate, None);
        let mut out = Vec::new();
        accept.write_response(None, &mut out);
        assert!(!String::from_utf8(out).unwrap().contains("Extensions"));

        let cfg = HandshakeConfig {
            deflate: Some(crate::deflate::DeflateConfig::shared()),
            ..HandshakeConfig::default()
        };
        let accept = validate(&req, &cfg).unwrap();
        let negotiated = accept.deflate.as_ref().unwrap();
        assert!(negotiated.params.server_no_context_takeover);
        assert_eq!(accept.extensions.len(), 2, "all offers stay visible to the caller");
        let mut out = Vec::new();
        accept.write_response(None, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(
                "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover\r\n\r\n"
            ),
            "{text}"
        );
        // No acceptable offer: no header.
        let buf = get(&[], &["Sec-WebSocket-Extensions: permessage-deflate; x=1"]);
        let req = parse_request(&buf, &cfg).unwrap().unwrap();
        assert_eq!(validate(&req, &cfg).unwrap().deflate, None);
    }

    #[test]
    fn non_get_is_405_with_allow() {
        let e = rejected(&request("POST /chat HTTP/1.1", &[], &[]), &HandshakeConfig::default());
        assert_eq!(e, Error::MethodNotAllowed);
        assert_eq!(e.http_status(), Some(405));
        assert!(response_text(e).contains("\r\nAllow: GET\r\n"));
        // Methods are case-sensitive (RFC 9110 section 9.1).
        assert_eq!(status(&request("get /chat HTTP/1.1", &[], &[])), 405);
    }

    #[test]
    fn http_1_0_is_400() {
        let e = rejected(&request("GET /chat HTTP/1.0", &[], &[]), &HandshakeConfig::default());
        assert!(matches!(e, Error::MalformedRequest(_)));
        assert_eq!(e.http_status(), Some(400));
    }

    #[test]
    fn target_must_be_a_path_or_an_http_uri() {
        for target in ["*", "server.example.com:443", "chat", "ws://a/chat", "http://u@a/chat"] {
            let buf = request(&format!("GET {target} HTTP/1.1"), &[], &[]);
            let e = rejected(&buf, &HandshakeConfig::default());
            assert_eq!(e, Error::BadTarget, "{target}");
            assert_eq!(e.http_status(), Some(400));
        }
        for target in ["/", "/chat?x=1", "http://server.example.com/chat", "https://a:1"] {
            accepted(&request(&format!("GET {target} HTTP/1.1"), &[], &[]));
        }
        // The method is checked first: `OPTIONS *` is the 405 of any other method.
        assert_eq!(status(&request("OPTIONS * HTTP/1.1", &[], &[])), 405);
    }

    #[test]
    fn a_request_with_a_body_is_400() {
        for header in [
            "Content-Length: 5",
            "Content-Length: 10, 10",
            "Content-Length: 0, 5",
            "Content-Length:",
            "Content-Length: -0",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: identity",
            "transfer-encoding: gzip, chunked",
        ] {
            let e = rejected(&get(&[], &[header]), &HandshakeConfig::default());
            assert_eq!(e, Error::UnexpectedBody, "{header}");
            assert_eq!(e.http_status(), Some(400));
            assert!(response_text(e).contains("an upgrade request has no body"));
        }
        let twice = get(&[], &["Content-Length: 0", "Content-Length: 7"]);
        assert_eq!(rejected(&twice, &HandshakeConfig::default()), Error::UnexpectedBody);
        accepted(&get(&[], &["Content-Length: 0"]));
        accepted(&get(&[], &["Content-Length:  00 "]));
        accepted(&get(&[], &["Content-Length: 0", "Content-Length: 0"]));
    }

    #[test]
    fn host_must_appear_exactly_once() {
        let e = rejected(&get(&["host"], &[]), &HandshakeConfig::default());
        assert_eq!(e, Error::MissingHost);
        assert_eq!(e.http_status(), Some(400));
        let e = rejected(&get(&[], &["Host: other.example.com"]), &HandshakeConfig::default());
        assert_eq!(e, Error::MissingHost);
        assert_eq!(e.http_status(), Some(400));
    }

    #[test]
    fn upgrade_header_is_checked() {
        let e = rejected(&get(&["upgrade"], &[]), &HandshakeConfig::default());
        assert_eq!(e, Error::NotUpgrade);
        assert_eq!(e.http_status(), Some(426));
        assert!(response_text(e).contains("\r\nUpgrade: websocket\r\n"));

        let e = rejected(&get(&["upgrade"], &["Upgrade: h2c"]), &HandshakeConfig::default());
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
        assert_eq!(status(&get(&["connection"], &["Connection: upgraded"])), 400);

        accepted(&get(&["connection"], &["Connection: keep-alive, Upgrade"]));
        accepted(&get(&["connection"], &["Connection: keep-alive", "Connection: Upgrade"]));
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
        let e = rejected(&get(&["sec-websocket-version"], &[]), &HandshakeConfig::default());
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
        assert_eq!(rejected(&twice, &HandshakeConfig::default()), Error::UnsupportedVersion);
    }

    #[test]
    fn key_must_be_one_base64_value_of_16_bytes() {
        let cases = [
            get(&["sec-websocket-key"], &[]),
            get(&["sec-websocket-key"], &[&format!("Sec-WebSocket-Key: {}", key_of(15))]),
            get(&["sec-websocket-key"], &[&format!("Sec-WebSocket-Key: {}", key_of(17))]),
            get(&["sec-websocket-key"], &["Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="]),
            get(&["sec-websocket-key"], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"]),
            get(&["sec-websocket-key"], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR=="]),
            get(&[], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]),
        ];
        assert_eq!(key_of(17).len(), 24, "17 bytes also encode to 24 characters");
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
        let twice =
            get(&[], &["Origin: https://app.example.com", "Origin: https://evil.example.com"]);
        assert_eq!(rejected(&twice, &cfg), Error::OriginRefused);

        let strict = HandshakeConfig { require_origin: true, ..cfg };
        assert_eq!(rejected(&get(&[], &[]), &strict), Error::OriginRefused);
        assert!(outcome(&get(&[], &["Origin: https://app.example.com"]), &strict).is_ok());

        // Without an allow-list any origin passes.
        accepted(&get(&[], &["Origin: https://evil.example.com"]));
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

        let none = outcome(&get(&[], &["Sec-WebSocket-Protocol: a"]), &HandshakeConfig::default());
        assert_eq!(none, Ok(None));
        let e = rejected(&get(&[], &["Sec-WebSocket-Protocol: a b"]), &cfg);
        assert_eq!(e.http_status(), Some(400));
    }
}
