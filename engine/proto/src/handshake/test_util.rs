//! Request builders and outcome checks shared by the handshake tests.

use crate::error::Error;

use super::{accept_key, parse_request, validate, HandshakeConfig};

pub(super) const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Request bytes from lines, CRLF-terminated, with the blank line.
pub(super) fn head(lines: &[&str]) -> Vec<u8> {
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// A valid upgrade request with `extra` headers added and headers whose name starts with
/// one of `drop` (case-insensitively) left out.
pub(super) fn request(first: &str, drop: &[&str], extra: &[&str]) -> Vec<u8> {
    let base = [
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let mut lines = vec![first];
    lines.extend(base.iter().copied().filter(|line| {
        !drop.iter().any(|d| line.to_ascii_lowercase().starts_with(&d.to_ascii_lowercase()))
    }));
    lines.extend_from_slice(extra);
    head(&lines)
}

pub(super) fn get(drop: &[&str], extra: &[&str]) -> Vec<u8> {
    request("GET /chat HTTP/1.1", drop, extra)
}

pub(super) fn outcome(buf: &[u8], cfg: &HandshakeConfig) -> Result<Option<String>, Error> {
    let req = parse_request(buf, cfg)?.expect("the test request is complete");
    let accept = validate(&req, cfg)?;
    assert_eq!(&accept.accept_key, accept_key(SAMPLE_KEY.as_bytes()).as_slice());
    Ok(accept.protocol.map(str::to_string))
}

pub(super) fn accepted(buf: &[u8]) {
    if let Err(e) = outcome(buf, &HandshakeConfig::default()) {
        panic!("{e:?} for {}", String::from_utf8_lossy(buf));
    }
}

pub(super) fn rejected(buf: &[u8], cfg: &HandshakeConfig) -> Error {
    match outcome(buf, cfg) {
        Ok(_) => panic!("accepted {}", String::from_utf8_lossy(buf)),
        Err(e) => e,
    }
}
