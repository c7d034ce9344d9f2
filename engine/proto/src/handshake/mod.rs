//! The opening handshake (RFC 6455 section 4): the HTTP/1.1 upgrade, server side and client side.
//!
//! Server side: [`parse_request_incremental`] finds and parses a request head in the bytes read
//! so far (at a cost linear in them however they arrive; [`parse_request`] parses from scratch),
//! [`validate`] applies the checks of section 4.2.1 and chooses a subprotocol, and
//! [`Accept::write_response`] writes the `101 Switching Protocols` answer. A rejection is an
//! [`Error`] whose [`Error::http_response`] is the answer to send instead. An application that
//! shapes the answer itself (a `401` with `WWW-Authenticate`, a `Set-Cookie` on the `101`) uses
//! [`write_refusal`] and [`Accept::write_response_with`], which refuse header injection.
//!
//! Client side (the load generator, tests): [`generate_key`], [`write_client_request`] and
//! [`parse_response`] with the checks of section 4.1.
//!
//! This module does no I/O and keeps no state between calls: the caller buffers bytes and calls
//! again. It parses extension offers ([`parse_extensions`]); the one extension it negotiates is
//! permessage-deflate, and only when [`HandshakeConfig::deflate`] is set (by default every
//! offer is declined, which RFC 6455 section 9.1 allows).

use crate::deflate::DeflateConfig;
// Named only by doc links; `cfg(doc)` keeps it from being an unused import elsewhere.
#[cfg(doc)]
use crate::error::Error;

mod client;
mod extensions;
mod headers;
mod request;
mod response;
mod server;
#[cfg(test)]
mod test_util;

pub use client::{generate_key, parse_response, write_client_request, ClientAccepted};
pub use extensions::{parse_extensions, ExtensionOffer};
pub use request::{head_end, parse_request, parse_request_incremental, Request};
pub use response::{check_field, write_refusal, FieldError};
pub use server::{accept_key, validate, Accept};

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
    /// permessage-deflate (RFC 7692): `None` (the default) declines every offer; `Some`
    /// accepts the first valid offer as the config says ([`crate::deflate::negotiate`]), and
    /// [`Accept::deflate`] holds the agreement for the connection.
    pub deflate: Option<DeflateConfig>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            allowed_origins: None,
            require_origin: false,
            subprotocols: Vec::new(),
            deflate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::get;
    use super::*;
    use crate::error::Error;

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

    /// The incremental parse of `buf[..cut]` then (if that waits for more) `buf`, checked
    /// against the whole parse.
    fn exercise_incremental(buf: &[u8], cut: usize, cfg: &HandshakeConfig) {
        let incremental = |buf: &[u8], scanned: usize| {
            let got = parse_request_incremental(buf, scanned, cfg);
            if head_end(buf, 0).is_some() {
                assert_eq!(got, parse_request(buf, cfg));
            } else if buf.len() >= cfg.max_head_bytes {
                assert_eq!(got, Err(Error::HeadersTooLarge));
            } else {
                assert_eq!(got, Ok(None));
            }
            got == Ok(None)
        };
        if incremental(&buf[..cut], 0) {
            incremental(buf, cut);
        }
    }

    fn exercise(buf: &[u8], cfg: &HandshakeConfig) {
        for cut in [0, buf.len() / 3, buf.len() / 2, buf.len()] {
            exercise_incremental(buf, cut, cfg);
        }
        if let Ok(Some(req)) = parse_request(buf, cfg) {
            assert_eq!(head_end(buf, 0), Some(req.head_len()));
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
                deflate: Some(DeflateConfig::dedicated(10)),
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
