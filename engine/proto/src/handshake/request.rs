//! Server side, first step: finding and parsing the request head in the bytes read so far.
//!
//! It checks HTTP syntax and the head's size only; whether the request is an acceptable upgrade
//! is for [`validate`](super::validate) to say.
//!
//! A head may arrive a byte at a time. [`parse_request_incremental`] (built on [`head_end`])
//! looks at each new byte a bounded number of times and runs the HTTP parser once, when the
//! head is complete, so the cost is linear in the bytes received however they are split;
//! [`parse_request`] parses whatever it is given, from the start.

use std::borrow::Cow;
use std::fmt;

use crate::error::Error;

use super::headers::{has_blank_line, is_ows_char};
use super::{HandshakeConfig, MAX_HEADERS};

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: the head is incomplete and still under the limit; call again, from the start of
/// the same buffer, when more bytes have arrived (the request may come in any number of pieces).
/// `Err`: a rejection, to be answered with [`Error::http_response`]. Bytes after the head
/// ([`Request::head_len`]) are not looked at: they are the start of the frame stream.
///
/// Each call looks at all of `buf`: a caller that receives the head in pieces should call
/// [`parse_request_incremental`], which does not.
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
    // Cheaper than an httparse run that would only say "partial".
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

/// [`parse_request`] for a head that arrives in pieces, at a cost linear in its bytes.
///
/// `buf` holds every byte received so far, from the start of the connection; `scanned` is how
/// many of them earlier calls already looked at without finding a complete head: the length
/// `buf` had at the last call that returned `Ok(None)`, 0 at the first call. Until the blank
/// line that ends the head is there ([`head_end`]), nothing is parsed: the answer is `Ok(None)`,
/// or [`Error::HeadersTooLarge`] once `buf` reaches [`HandshakeConfig::max_head_bytes`]. Then the
/// head is parsed once, with the same outcome as [`parse_request`] on the same bytes.
///
/// ```
/// use ringside_proto::handshake::{parse_request_incremental, HandshakeConfig};
///
/// let cfg = HandshakeConfig::default();
/// let mut partial = Vec::new();
/// for piece in [&b"GET /chat HTTP/1.1\r\nHost: a\r"[..], b"\n\r\n"] {
///     let scanned = partial.len(); // what the last call saw, before the new bytes go in
///     partial.extend_from_slice(piece);
///     match parse_request_incremental(&partial, scanned, &cfg) {
///         Ok(None) => continue, // keep the bytes, wait for more
///         Ok(Some(req)) => assert_eq!(req.path(), "/chat"),
///         Err(e) => panic!("answer {:?} and close", e.http_status()),
///     }
/// }
/// ```
pub fn parse_request_incremental<'b>(
    buf: &'b [u8],
    scanned: usize,
    cfg: &HandshakeConfig,
) -> Result<Option<Request<'b>>, Error> {
    if head_end(buf, scanned).is_some() {
        parse_request(buf, cfg)
    } else if buf.len() >= cfg.max_head_bytes {
        Err(Error::HeadersTooLarge)
    } else {
        Ok(None)
    }
}

/// Where the request head at the start of `buf` ends: the length of the head through its
/// blank line, if that line has arrived. Only the line ends after the first `scanned` bytes are
/// looked at (from two bytes before them on, since a line end of up to three bytes may straddle
/// the previous end of the buffer): pass the length `buf` had at the last call that returned
/// `None`, and every byte is examined a bounded number of times however the head is split.
///
/// A blank line is CRLF CRLF, or one of the bare-LF forms the parser also takes (LF LF, LF CRLF,
/// RFC 9112 section 2.2). Blank lines before the request line do not end a head: the parser
/// skips them (RFC 9112 section 2.2 says a server should), so a line only ends the head when
/// the line before it is not empty. This finds the end wherever [`parse_request`] would
/// complete; `Some` does not mean the head is valid: [`parse_request`] says that.
pub fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let mut from = scanned.saturating_sub(2);
    while let Some(at) = buf.get(from..)?.iter().position(|&b| b == b'\n') {
        let lf = from + at;
        from = lf + 1;
        let end = match buf.get(lf + 1..)? {
            [b'\n', ..] => lf + 2,
            [b'\r', b'\n', ..] => lf + 3,
            _ => continue,
        };
        // The line this LF ends, without its CR: empty when it starts the buffer or follows
        // another LF.
        let line_end = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
        let line_empty = line_end == 0 || buf[line_end - 1] == b'\n';
        if end > scanned && !line_empty {
            return Some(end);
        }
    }
    None
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

    /// The path of the request target, without the query: `/chat` for `/chat?room=1`, and for
    /// an absolute-form target (`http://host/chat?room=1`) too; `/` for `http://host`.
    pub fn path(&self) -> &'b str {
        match resource_name(self.target) {
            Some((path, _)) => path,
            // A target `validate` refuses: as sent, up to the query.
            None => self.target.split_once('?').map_or(self.target, |(path, _)| path),
        }
    }

    /// The part of the target after the first `?`, if there is one.
    pub fn query(&self) -> Option<&'b str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The full request target, as sent.
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
        self.headers().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, value)| value)
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
        self.cookies().find(|(n, _)| *n == name).map(|(_, value)| value)
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

/// The path and query of a request target (RFC 9112 section 3.2) that names a WebSocket
/// resource: the origin form (`/chat?room=1`), or the absolute form with an `http` or `https`
/// scheme (`http://host:port/chat?room=1`), which a server must accept (RFC 9112 section
/// 3.2.2) and RFC 6455 section 4.2.1 lets a client send. An absolute form with no path names
/// `/` (RFC 6455 section 3). `None` for every other form: the asterisk form (`*`, for
/// `OPTIONS`), the authority form (`host:port`, for `CONNECT`), another scheme, an empty
/// authority or one with userinfo (RFC 9110 section 4.2.4 says to treat that as an error).
pub(super) fn resource_name(target: &str) -> Option<(&str, Option<&str>)> {
    let resource = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, resource) = rest.split_at(authority_len);
        if authority.is_empty() || authority.contains(['@', '#']) {
            return None;
        }
        resource
    };
    let (path, query) = match resource.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (resource, None),
    };
    Some((if path.is_empty() { "/" } else { path }, query))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::test_util::{accepted, get, request};
    use crate::handshake::validate;

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
        let exact = HandshakeConfig { max_head_bytes: buf.len(), ..HandshakeConfig::default() };
        assert!(parse_request(&buf, &exact).unwrap().is_some());
        let one_less =
            HandshakeConfig { max_head_bytes: buf.len() - 1, ..HandshakeConfig::default() };
        assert_eq!(parse_request(&buf, &one_less).unwrap_err(), Error::HeadersTooLarge);
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
    fn request_arrives_in_pieces() {
        let cfg = HandshakeConfig::default();
        let buf = get(&[], &["Cookie: a=1"]);
        let whole = parse_request(&buf, &cfg).unwrap().unwrap();
        for k in 0..buf.len() {
            assert_eq!(parse_request(&buf[..k], &cfg), Ok(None), "prefix of {k} bytes");
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
        let req = parse_request(&buf, &HandshakeConfig::default()).unwrap().unwrap();
        assert_eq!(req.head_len(), head_len);
        assert_eq!(&buf[req.head_len()..], &frame);
        validate(&req, &HandshakeConfig::default()).unwrap();
    }

    #[test]
    fn cookies_and_query() {
        let buf = request(
            "GET /chat?room=1&x=%20 HTTP/1.1",
            &[],
            &["Cookie: a=1; b=2", "Cookie:  c = x=y ;junk; =v"],
        );
        let req = parse_request(&buf, &HandshakeConfig::default()).unwrap().unwrap();
        assert_eq!(req.target(), "/chat?room=1&x=%20");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1&x=%20"));
        assert_eq!(req.cookies().collect::<Vec<_>>(), [("a", "1"), ("b", "2"), ("c", "x=y")]);
        assert_eq!(req.cookie("b"), Some("2"));
        assert_eq!(req.cookie("B"), None);
        assert_eq!(req.header("cookie").unwrap().as_ref(), b"a=1; b=2, c = x=y ;junk; =v");
        assert!(matches!(req.header("host"), Some(Cow::Borrowed(b"server.example.com"))));
        assert_eq!(req.header("x-missing"), None);
        assert!(format!("{req:?}").contains("server.example.com"));

        let buf = get(&[], &[]);
        let plain = parse_request(&buf, &HandshakeConfig::default()).unwrap().unwrap();
        assert_eq!((plain.path(), plain.query()), ("/chat", None));
    }

    /// Heads in every line-ending form the parser takes, some with bytes after them.
    fn heads() -> Vec<(Vec<u8>, usize)> {
        let crlf = get(&[], &["Cookie: a=1"]);
        let mut pipelined = crlf.clone();
        pipelined.extend_from_slice(&[0x81, 0x82, b'\r', b'\n', b'\r', b'\n', 0, 0]);
        let bare_lf = b"GET / HTTP/1.1\nHost: a\nUpgrade: websocket\n\n".to_vec();
        let lf_crlf = b"GET / HTTP/1.1\nHost: a\n\r\n".to_vec();
        let crlf_lf = b"GET / HTTP/1.1\r\nHost: a\r\n\n".to_vec();
        let no_headers = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let mut leading_blank_lines = b"\r\n\n\r\n\n\n".to_vec();
        leading_blank_lines.extend_from_slice(&crlf);
        vec![
            (crlf.clone(), crlf.len()),
            (pipelined, crlf.len()),
            (bare_lf.clone(), bare_lf.len()),
            (lf_crlf.clone(), lf_crlf.len()),
            (crlf_lf.clone(), crlf_lf.len()),
            (no_headers.clone(), no_headers.len()),
            (leading_blank_lines.clone(), leading_blank_lines.len()),
        ]
    }

    #[test]
    fn head_end_agrees_with_the_parser() {
        let cfg = HandshakeConfig::default();
        for (buf, len) in heads() {
            let req = parse_request(&buf, &cfg).unwrap().unwrap();
            assert_eq!(req.head_len(), len, "{:?}", String::from_utf8_lossy(&buf));
            assert_eq!(head_end(&buf, 0), Some(len), "{:?}", String::from_utf8_lossy(&buf));
        }
    }

    #[test]
    fn head_end_finds_the_end_at_every_split_point() {
        for (buf, len) in heads() {
            let text = String::from_utf8_lossy(&buf);
            for cut in 0..=buf.len() {
                // First piece: the end is found only if it lies within it.
                let first = head_end(&buf[..cut], 0);
                assert_eq!(first, (cut >= len).then_some(len), "{text:?} cut at {cut}");
                if first.is_none() {
                    // Second piece: found, looking only from the cut on.
                    assert_eq!(head_end(&buf, cut), Some(len), "{text:?} cut at {cut}");
                }
            }
            // A byte at a time.
            let mut scanned = 0;
            let found = (1..=buf.len()).find_map(|n| {
                let end = head_end(&buf[..n], scanned);
                scanned = n;
                end
            });
            assert_eq!(found, Some(len), "{text:?} a byte at a time");
        }
    }

    #[test]
    fn head_end_ignores_blank_lines_before_the_request_line() {
        for blank in [&b"\r\n"[..], b"\n", b"\r\n\r\n", b"\n\n\n", b"\r\n\n\r\n"] {
            assert_eq!(head_end(blank, 0), None, "{blank:?}");
            let mut scanned = 0;
            let mut buf = Vec::new();
            for _ in 0..100 {
                buf.extend_from_slice(blank);
                assert_eq!(head_end(&buf, scanned), None);
                scanned = buf.len();
            }
        }
        // Nor bytes that are not a blank line at all.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\rX", 0), None);
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"ab", 10), None);
    }

    #[test]
    fn incremental_parse_matches_whole_parse_at_every_split_point() {
        let cfg = HandshakeConfig::default();
        let mut cases: Vec<Vec<u8>> = heads().into_iter().map(|(buf, _)| buf).collect();
        cases.push(b"GET /chat HTTP/1.1\r\nBad Name: a\r\n\r\n".to_vec());
        cases.push(b"x\n\n".to_vec());
        for buf in &cases {
            let whole = parse_request(buf, &cfg);
            for cut in 0..=buf.len() {
                let first = parse_request_incremental(&buf[..cut], 0, &cfg);
                if cut < buf.len() && first == Ok(None) {
                    let second = parse_request_incremental(buf, cut, &cfg);
                    assert_eq!(second, whole, "{:?} cut at {cut}", String::from_utf8_lossy(buf));
                } else {
                    assert_eq!(first, parse_request(&buf[..cut], &cfg));
                }
            }
        }
    }

    #[test]
    fn incremental_parse_refuses_an_endless_head_at_the_limit_without_parsing() {
        let cfg = HandshakeConfig { max_head_bytes: 100, ..HandshakeConfig::default() };
        let mut buf = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        let mut scanned = 0;
        while buf.len() < 99 {
            buf.push(b'a');
            assert_eq!(parse_request_incremental(&buf, scanned, &cfg), Ok(None));
            scanned = buf.len();
        }
        buf.push(b'a');
        assert_eq!(parse_request_incremental(&buf, scanned, &cfg), Err(Error::HeadersTooLarge));
        // A head complete only past the limit is refused too.
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request_incremental(&buf, 100, &cfg), Err(Error::HeadersTooLarge));
    }

    /// The worker's loop over a head that arrives a byte at a time: the bytes so far are kept,
    /// each read is appended, and the parse is asked again. Linear work takes about a quarter
    /// of a second here in a debug build; quadratic work (a look at the whole buffer per read,
    /// half a million million byte visits) would take many minutes, so the bound has room for
    /// a loaded machine and still cannot miss it.
    #[test]
    fn a_trickled_head_costs_time_linear_in_its_bytes() {
        const HEAD: usize = 1 << 20;
        let cfg = HandshakeConfig { max_head_bytes: 2 * HEAD, ..HandshakeConfig::default() };
        let pad = format!("X-Pad: {}", "p".repeat(HEAD));
        let head = get(&[], &[&pad]);
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_secs(2);
        let mut partial = Vec::new();
        let mut parsed = None;
        for (i, &byte) in head.iter().enumerate() {
            let scanned = partial.len();
            partial.push(byte);
            match parse_request_incremental(&partial, scanned, &cfg) {
                Ok(None) => {}
                Ok(Some(req)) => {
                    parsed = Some((i, req.head_len(), req.header_values("x-pad").count()));
                    break;
                }
                Err(e) => panic!("{e:?} at byte {i}"),
            }
            if i % 4096 == 0 {
                assert!(started.elapsed() < limit, "{i} bytes took {:?}", started.elapsed());
            }
        }
        let elapsed = started.elapsed();
        eprintln!("{} bytes a byte at a time: {elapsed:?}", head.len());
        assert_eq!(parsed, Some((head.len() - 1, head.len(), 1)));
        assert!(elapsed < limit, "took {elapsed:?}");
    }

    #[test]
    fn absolute_form_targets_name_their_path() {
        let cases = [
            ("/chat", Some(("/chat", None))),
            ("/chat?room=1", Some(("/chat", Some("room=1")))),
            ("//x", Some(("//x", None))),
            ("http://server.example.com/chat?room=1", Some(("/chat", Some("room=1")))),
            ("HTTPS://server.example.com:8443/a/b", Some(("/a/b", None))),
            ("http://server.example.com", Some(("/", None))),
            ("http://server.example.com?x", Some(("/", Some("x")))),
            ("*", None),
            ("server.example.com:443", None),
            ("chat", None),
            ("ws://server.example.com/chat", None),
            ("http:///chat", None),
            ("http://user@server.example.com/chat", None),
            ("http:/chat", None),
        ];
        for (target, want) in cases {
            assert_eq!(resource_name(target), want, "{target}");
            let buf = request(&format!("GET {target} HTTP/1.1"), &[], &[]);
            let req = parse_request(&buf, &HandshakeConfig::default()).unwrap().unwrap();
            assert_eq!(req.target(), target);
            if let Some((path, _)) = want {
                assert_eq!(req.path(), path, "{target}");
            }
        }
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
}
