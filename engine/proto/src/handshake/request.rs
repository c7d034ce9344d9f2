//! Server side, first step: finding and parsing the request head in the bytes read so far.
//!
//! It checks HTTP syntax and the head's size only; whether the request is an acceptable upgrade
//! is for [`validate`](super::validate) to say.

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
        self.target.split_once('?').map_or(self.target, |(path, _)| path)
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
