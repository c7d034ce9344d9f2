//! Client side (the load generator, tests): the upgrade request and the checks of RFC 6455
//! section 4.1 on the server's answer.
//!
//! It keeps no state: the caller holds on to the key and the offered subprotocols between
//! [`write_client_request`] and [`parse_response`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::error::Error;

use super::headers::{has_blank_line, has_token, single, trim_ows};
use super::{accept_key, parse_extensions, DEFAULT_MAX_HEAD_BYTES, MAX_HEADERS};

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
        headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
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
        return Err(Error::BadResponse("Sec-WebSocket-Accept does not match the key"));
    }
    let mut chosen = values("sec-websocket-protocol");
    let protocol = match (chosen.next(), chosen.next()) {
        (None, _) => None,
        (Some(value), None) => {
            let value = trim_ows(value);
            let offered = protocols.iter().find(|p| p.as_bytes() == value);
            Some(offered.ok_or(Error::BadResponse("subprotocol not offered"))?.to_string())
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
    Ok(Some(ClientAccepted { head_len, protocol, extensions }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::test_util::head;
    use crate::handshake::{parse_request, validate, HandshakeConfig};

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
            assert_eq!(parse_response(&response[..k], &key, &["chat", "superchat"]), Ok(None));
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
        let req = parse_request(&plain, &HandshakeConfig::default()).unwrap().unwrap();
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
        bad(with(3, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo"), &[]);
        bad(with(3, "Sec-WebSocket-Accept: x3pPLMBiTxaQ9kYGzzhZRbK+xOo="), &[]);
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
}
