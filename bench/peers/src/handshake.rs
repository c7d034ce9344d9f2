//! The minimal server side of the RFC 6455 opening handshake that `raw-echo` needs: find the end
//! of the request head, take `Sec-WebSocket-Key` out of it, and write the `101` answer.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The longest request head accepted, terminator included.
pub const MAX_HEAD: usize = 8 * 1024;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// No `\r\n\r\n` within [`MAX_HEAD`] bytes.
    TooLong,
    /// Not a `GET` request carrying a `Sec-WebSocket-Key` header.
    NotUpgrade,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HandshakeError::TooLong => "request head longer than 8 KiB",
            HandshakeError::NotUpgrade => "not a WebSocket upgrade request",
        })
    }
}

/// Gathers a request head across reads.
#[derive(Debug, Default)]
pub struct Handshake {
    head: Vec<u8>,
}

/// What one more chunk of bytes did to a [`Handshake`].
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The head is not complete yet.
    NeedMore,
    /// The head is complete: the answer was appended to `out`, and the bytes of the chunk from
    /// `rest` on came after the head (they belong to the WebSocket stream).
    Done {
        /// Offset in the chunk just fed of the first byte after the head.
        rest: usize,
    },
}

impl Handshake {
    /// A handshake with nothing read yet.
    pub fn new() -> Self {
        Handshake { head: Vec::new() }
    }

    /// Feeds the next chunk read from the socket. On completion the `101` answer is appended to
    /// `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<Progress, HandshakeError> {
        // The terminator may straddle the previous chunk: search from 3 bytes back.
        let start = self.head.len().saturating_sub(3);
        let old = self.head.len();
        let take = chunk.len().min(MAX_HEAD - old);
        self.head.extend_from_slice(&chunk[..take]);
        match find_head_end(&self.head[start..]) {
            Some(end) => {
                let end = start + end;
                respond(&self.head[..end], out)?;
                Ok(Progress::Done { rest: end - old })
            }
            None if self.head.len() >= MAX_HEAD => Err(HandshakeError::TooLong),
            None => Ok(Progress::NeedMore),
        }
    }
}

/// The length of the request head (terminator included) if `buf` holds all of it.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Checks a complete request head and appends the `101 Switching Protocols` answer to `out`.
pub fn respond(head: &[u8], out: &mut Vec<u8>) -> Result<(), HandshakeError> {
    if !head.starts_with(b"GET ") {
        return Err(HandshakeError::NotUpgrade);
    }
    let key = head
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"sec-websocket-key").then(|| value[1..].trim_ascii())
        })
        .next()
        .filter(|key| !key.is_empty())
        .ok_or(HandshakeError::NotUpgrade)?;
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key(key).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Ok(())
}

/// The answer to a request that is not a WebSocket upgrade.
pub const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6455_sample_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn head_split_across_chunks_with_trailing_bytes() {
        let req =
            b"GET / HTTP/1.1\r\nHost: x\r\nsec-websocket-key:  dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nABC";
        let head_len = req.len() - 3;
        for split in 1..req.len() {
            let mut hs = Handshake::new();
            let mut out = Vec::new();
            let first = hs.feed(&req[..split], &mut out).unwrap();
            let (chunk, progress) = if let Progress::Done { .. } = first {
                (&req[..split], first)
            } else {
                (&req[split..], hs.feed(&req[split..], &mut out).unwrap())
            };
            let Progress::Done { rest } = progress else { panic!("not done at split {split}") };
            let trailing = if split >= head_len { &req[head_len..split] } else { &req[head_len..] };
            assert_eq!(&chunk[rest..], trailing, "split {split}");
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("HTTP/1.1 101 "));
            assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        }
    }

    #[test]
    fn refuses_garbage_and_long_heads() {
        let mut out = Vec::new();
        assert_eq!(
            Handshake::new().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut out),
            Err(HandshakeError::NotUpgrade)
        );
        let mut hs = Handshake::new();
        let junk = vec![b'a'; 5000];
        assert_eq!(hs.feed(&junk, &mut out), Ok(Progress::NeedMore));
        assert_eq!(hs.feed(&junk, &mut out), Err(HandshakeError::TooLong));
        assert!(out.is_empty());
    }
}
