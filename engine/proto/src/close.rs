//! Close codes and close-frame payloads (RFC 6455 sections 5.5.1 and 7.4).
//!
//! This module decides which codes a peer may put on the wire and parses a received close
//! payload; it does not run the close handshake (that is [`crate::connection`]).

use std::fmt;

use crate::error::Error;

/// A WebSocket close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no code was present (never sent on the wire; reported locally).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: closed without a close frame (never sent on the wire; reported locally).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: message data not consistent with its type (text that is not UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violates the endpoint's policy (also: slow consumer).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (overload).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether a peer may send this code in a close frame: 1000-1003, 1007-1014 (the codes
    /// IANA has registered for the wire), and 3000-4999 (libraries, frameworks, applications).
    /// 1004 is reserved, 1005, 1006 and 1015 must never be on the wire, and everything below
    /// 1000, in 1016-2999 or from 5000 up is not assigned.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed close frame payload: a code and a UTF-8 reason, or nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The status code the peer sent.
    pub code: CloseCode,
    /// The reason, possibly empty; at most 123 bytes.
    pub reason: &'a str,
}

/// Parses a close payload (already unmasked). Empty is valid and means "no status"; one byte is a
/// protocol error; otherwise the code must be sendable and the rest UTF-8.
pub fn parse_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(Error::BadClosePayload);
            }
            let reason = simdutf8::basic::from_utf8(reason).map_err(|_| Error::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Writes a close payload for `code` and `reason` into `out`, cutting the reason at a character
/// boundary so that the payload stays within the 125 bytes a control frame may carry.
pub fn write_payload(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(truncate_reason(reason).as_bytes());
}

/// The longest prefix of `reason` that fits a close frame (123 bytes) and ends on a character
/// boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes_are_exactly_the_rfc_ranges() {
        for code in 0..=u16::MAX {
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(CloseCode(code).is_sendable(), expected, "code {code}");
        }
    }

    #[test]
    fn payloads_parse_and_fail_as_the_rfc_says() {
        assert_eq!(parse_payload(b""), Ok(None));
        assert_eq!(parse_payload(&[3]), Err(Error::BadClosePayload));
        let ok = parse_payload(&[0x03, 0xe8, b'b', b'y', b'e']).unwrap().unwrap();
        assert_eq!(ok.code, CloseCode::NORMAL);
        assert_eq!(ok.reason, "bye");
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let p = bad.to_be_bytes();
            assert_eq!(parse_payload(&p), Err(Error::BadClosePayload), "code {bad}");
        }
        assert_eq!(parse_payload(&[0x03, 0xe8, 0xff]), Err(Error::InvalidUtf8));
        assert_eq!(Error::InvalidUtf8.close_code(), Some(CloseCode::INVALID_PAYLOAD));
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        write_payload(&mut out, CloseCode::GOING_AWAY, &reason);
        assert!(out.len() <= 125);
        assert!(std::str::from_utf8(&out[2..]).is_ok());
        assert_eq!(out.len(), 2 + 122);
    }
}
