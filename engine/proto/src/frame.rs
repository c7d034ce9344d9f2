//! Frame headers (RFC 6455 section 5.2): decoding with every rule a receiver must enforce, and
//! encoding for server frames (unmasked) and client frames (masked).
//!
//! This module looks at one header at a time; it does not know which message is open or whether
//! the connection is closing (that is [`crate::connection`]). The one extension bit it knows is
//! RSV1, which permessage-deflate (RFC 7692) uses to mark a compressed message: only
//! [`decode_header_deflate`] accepts it, and only where that extension allows it.

use crate::error::Error;
use crate::mask;

/// The longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry (section 5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A frame opcode. The reserved ones (3-7, 0xB-0xF) are not representable: decoding them fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: a further fragment of the open message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }

    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Result<OpCode, Error> {
        Ok(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return Err(Error::ReservedOpcode),
        })
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The FIN bit: this frame ends its message.
    pub fin: bool,
    /// The RSV1 bit: with permessage-deflate, the first frame of a compressed message. Always
    /// `false` from [`decode_header`], which refuses it.
    pub rsv1: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, present on every client frame and on no server frame.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub len: u64,
}

/// What a receiver enforces while decoding a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeRules {
    /// Frames must carry a mask (a server receiving from a client) or must not (a client).
    pub expect_masked: bool,
    /// Frames with a longer payload fail with 1009.
    pub max_frame_size: u64,
}

/// Decodes a frame header from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed; the rules that can already be checked on the bytes
/// present have been, so a peer sending a reserved opcode fails on its first byte. On success,
/// returns the header and its length in bytes.
pub fn decode_header(buf: &[u8], rules: DecodeRules) -> Result<Option<(Header, usize)>, Error> {
    decode(buf, rules, false)
}

/// [`decode_header`] for a connection that negotiated permessage-deflate: RSV1 is allowed on
/// the first frame of a data message (text or binary), and is [`Error::BadRsv1`] (1002) on a
/// control frame or a continuation frame (RFC 7692 section 6.1). RSV2 and RSV3 still fail.
pub fn decode_header_deflate(
    buf: &[u8],
    rules: DecodeRules,
) -> Result<Option<(Header, usize)>, Error> {
    decode(buf, rules, true)
}

fn decode(buf: &[u8], rules: DecodeRules, deflate: bool) -> Result<Option<(Header, usize)>, Error> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let reserved = if deflate { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Err(Error::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0f)?;
    if rsv1 && (opcode.is_control() || opcode == OpCode::Continuation) {
        return Err(Error::BadRsv1);
    }
    if opcode.is_control() && !fin {
        return Err(Error::FragmentedControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    if masked != rules.expect_masked {
        return Err(Error::BadMask);
    }
    let len7 = b1 & 0x7f;
    if opcode.is_control() && u64::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(Error::ControlTooLong);
    }
    let (len, mut at) = match len7 {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([ext[0], ext[1]]));
            if len < 126 {
                return Err(Error::BadLength);
            }
            (len, 4)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(ext);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 || len <= u64::from(u16::MAX) {
                return Err(Error::BadLength);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if len > rules.max_frame_size {
        return Err(Error::FrameTooLarge);
    }
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some((Header { fin, rsv1, opcode, mask, len }, at)))
}

/// An encoded frame header: up to [`MAX_HEADER_LEN`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct EncodedHeader {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl EncodedHeader {
    /// The header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The same header with RSV1 set: the first frame of a message compressed with
    /// permessage-deflate (never a control frame or a continuation, RFC 7692 section 6.1).
    pub fn with_rsv1(mut self) -> Self {
        self.bytes[0] |= 0x40;
        self
    }
}

/// Encodes a header for a payload of `len` bytes, in the minimal length encoding.
pub fn encode_header(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, len: u64) -> EncodedHeader {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = (u8::from(fin) << 7) | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = match len {
        0..=125 => {
            bytes[1] = mask_bit | len as u8;
            2
        }
        126..=0xffff => {
            bytes[1] = mask_bit | 126;
            bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            bytes[1] = mask_bit | 127;
            bytes[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        bytes[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    EncodedHeader { bytes, len: at as u8 }
}

/// Appends one whole frame to `out`: unmasked for a server (`mask: None`), masked with `mask`
/// for a client.
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let header = encode_header(fin, opcode, mask, payload.len() as u64);
    out.reserve(header.as_bytes().len() + payload.len());
    out.extend_from_slice(header.as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        mask::apply(&mut out[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: DecodeRules = DecodeRules { expect_masked: true, max_frame_size: 1 << 20 };
    const CLIENT: DecodeRules = DecodeRules { expect_masked: false, max_frame_size: 1 << 20 };

    #[test]
    fn lengths_round_trip_in_minimal_encoding() {
        for len in [0u64, 1, 125, 126, 127, 0xffff, 0x1_0000, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = encode_header(true, OpCode::Binary, mask, len);
                let expected =
                    2 + if len < 126 {
                        0
                    } else if len <= 0xffff {
                        2
                    } else {
                        8
                    } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(h.as_bytes().len(), expected);
                let rules = if mask.is_some() { SERVER } else { CLIENT };
                let (d, n) = decode_header(h.as_bytes(), rules).unwrap().unwrap();
                assert_eq!(n, expected);
                assert_eq!(d, Header { fin: true, rsv1: false, opcode: OpCode::Binary, mask, len });
                // Every strict prefix is incomplete, never an error.
                for cut in 0..n {
                    assert_eq!(decode_header(&h.as_bytes()[..cut], rules), Ok(None));
                }
            }
        }
    }

    #[test]
    fn receiver_rules_fail_with_the_right_error() {
        let d = |bytes: &[u8]| decode_header(bytes, SERVER);
        assert_eq!(d(&[0x81 | 0x40, 0x80]), Err(Error::ReservedBits));
        assert_eq!(d(&[0x81 | 0x20]), Err(Error::ReservedBits));
        assert_eq!(d(&[0x81 | 0x10]), Err(Error::ReservedBits));
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(d(&[0x80 | op]), Err(Error::ReservedOpcode), "opcode {op}");
        }
        assert_eq!(d(&[0x09, 0x80]), Err(Error::FragmentedControl));
        assert_eq!(d(&[0x89, 0x80 | 126, 0, 126]), Err(Error::ControlTooLong));
        assert_eq!(d(&[0x82, 0x05]), Err(Error::BadMask));
        assert_eq!(decode_header(&[0x82, 0x85], CLIENT), Err(Error::BadMask));
        // Non-minimal lengths and the top bit of the 64-bit length.
        assert_eq!(d(&[0x82, 0x80 | 126, 0, 125]), Err(Error::BadLength));
        assert_eq!(d(&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), Err(Error::BadLength));
        assert_eq!(d(&[0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(Error::BadLength));
        // Over the frame limit: 1009, decided from the header alone.
        assert_eq!(d(&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x20, 0, 0]), Err(Error::FrameTooLarge));
        assert_eq!(Error::FrameTooLarge.close_code().unwrap().0, 1009);
    }

    #[test]
    fn rsv1_only_where_deflate_allows_it() {
        let d = |bytes: &[u8]| decode_header_deflate(bytes, SERVER);
        let h = encode_header(false, OpCode::Text, Some([1, 2, 3, 4]), 3).with_rsv1();
        assert_eq!(h.as_bytes()[0], 0x41);
        let (header, _) = d(h.as_bytes()).unwrap().unwrap();
        assert!(header.rsv1 && !header.fin && header.opcode == OpCode::Text);
        assert_eq!(decode_header(h.as_bytes(), SERVER), Err(Error::ReservedBits));
        let (binary, n) = d(&[0xc2, 0x80, 1, 2, 3, 4]).unwrap().unwrap();
        assert!(binary.rsv1 && binary.fin && binary.opcode == OpCode::Binary && n == 6);
        // Not on a continuation or a control frame, decided on the first byte.
        for b0 in [0x40, 0xc0, 0xc8, 0xc9, 0xca] {
            assert_eq!(d(&[b0]), Err(Error::BadRsv1), "{b0:#x}");
        }
        assert_eq!(Error::BadRsv1.close_code().unwrap().0, 1002);
        // RSV2 and RSV3 are still nobody's.
        assert_eq!(d(&[0xa1]), Err(Error::ReservedBits));
        assert_eq!(d(&[0x91]), Err(Error::ReservedBits));
        assert_eq!(d(&[0x81, 0x80]), Ok(None));
    }

    #[test]
    fn written_frames_unmask_back_to_the_payload() {
        let mut out = Vec::new();
        write_frame(&mut out, true, OpCode::Text, Some([9, 8, 7, 6]), b"hello");
        let (h, n) = decode_header(&out, SERVER).unwrap().unwrap();
        let mut payload = out[n..].to_vec();
        mask::apply(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"hello");
        out.clear();
        write_frame(&mut out, false, OpCode::Binary, None, &[1, 2, 3]);
        assert_eq!(out, [0x02, 3, 1, 2, 3]);
    }
}
