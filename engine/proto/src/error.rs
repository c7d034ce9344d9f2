//! The one error type of the protocol core.
//!
//! Every way a peer can get the protocol wrong is a variant here, and each variant maps, in this
//! file and nowhere else, to what the peer is told: an HTTP status (and headers) while the opening
//! handshake is still running, a close code once the connection speaks WebSocket.

use std::fmt;

use crate::close::CloseCode;

/// A protocol violation by the peer, or a limit it ran into.
///
/// Handshake variants ([`Error::http_status`] is `Some`) mean: answer with
/// [`Error::http_response`] and close the TCP connection. Frame-level variants
/// ([`Error::close_code`] is `Some`) mean: the connection has already queued a close frame with that
/// code in its output; flush it, then close the TCP connection. Nothing else is sent afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // ---- opening handshake (RFC 6455 section 4.2.1) -------------------------------------------
    /// The request is not well-formed HTTP/1.1 (bad request line, bad header syntax, HTTP/1.0,
    /// a header value that is not valid for its field). Answer: 400.
    MalformedRequest(&'static str),
    /// The method is not `GET`. Answer: 405 with `Allow: GET`.
    MethodNotAllowed,
    /// The request target is neither a path (`/chat?room=1`) nor an absolute `http` or `https`
    /// URI (`http://host/chat`): `*`, `host:port`, a bare name. Answer: 400.
    BadTarget,
    /// The request announces a body (`Transfer-Encoding`, or a `Content-Length` other than 0).
    /// An upgrade request has none, and what follows its head is read as WebSocket frames.
    /// Answer: 400.
    UnexpectedBody,
    /// The request carries no `Host` header, or more than one. Answer: 400.
    MissingHost,
    /// A plain HTTP request with no `Upgrade` header at all: not a WebSocket client.
    /// Answer: 426 with `Upgrade: websocket`. The server may serve such requests itself (a
    /// health check) before treating them as this error.
    NotUpgrade,
    /// `Upgrade` is present but does not name `websocket`. Answer: 400.
    BadUpgrade,
    /// `Connection` does not hold the `Upgrade` token. Answer: 400.
    BadConnection,
    /// `Sec-WebSocket-Key` is missing, repeated, or does not base64-decode to exactly 16 bytes.
    /// Answer: 400.
    BadKey,
    /// `Sec-WebSocket-Version` is missing. Answer: 400 (with `Sec-WebSocket-Version: 13` so the
    /// client learns what we speak).
    MissingVersion,
    /// `Sec-WebSocket-Version` is present but not 13. Answer: 426 with `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// `Sec-WebSocket-Extensions` does not parse as RFC 6455 section 9.1 says. Answer: 400.
    BadExtensions,
    /// The request head is larger than the configured limit, or has more header fields than the
    /// parser holds. Answer: 431.
    HeadersTooLarge,
    /// The `Origin` header is missing or not on the configured allow-list. Answer: 403.
    OriginRefused,
    /// The embedding application refused the upgrade (authentication, path). Answer: the status
    /// given, which the server keeps in 400..=599.
    Refused(u16),

    // ---- the server's handshake response, seen by a client (RFC 6455 section 4.2.2) -----------
    /// The server's response is not `101` with valid `Upgrade`, `Connection` and a matching
    /// `Sec-WebSocket-Accept`, or it chose a subprotocol or extension the client did not offer.
    /// Fail the connection without sending a close frame.
    BadResponse(&'static str),

    // ---- framing (RFC 6455 section 5) ----------------------------------------------------------
    /// RSV1-3 set without an extension that defines them. Close 1002.
    ReservedBits,
    /// With permessage-deflate negotiated: RSV1 (the compressed-message bit) on a control frame
    /// or a continuation frame, where RFC 7692 section 6.1 forbids it. Close 1002.
    BadRsv1,
    /// Opcode 3-7 or 0xB-0xF. Close 1002.
    ReservedOpcode,
    /// A control frame with FIN clear. Close 1002.
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload. Close 1002.
    ControlTooLong,
    /// A client frame without the mask bit (server side), or a server frame with it (client
    /// side). Close 1002.
    BadMask,
    /// A 64-bit payload length with its top bit set, or a length not in the minimal encoding
    /// (RFC 6455 section 5.2: "the minimal number of bytes MUST be used"). Close 1002.
    BadLength,
    /// A continuation frame with no message open. Close 1002.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open. Close 1002.
    ExpectedContinuation,
    /// A close frame with a 1-byte payload, or with a code that may not be sent on the wire.
    /// Close 1002.
    BadClosePayload,
    /// A single frame longer than the configured frame limit. Close 1009.
    FrameTooLarge,
    /// A message longer than the configured message limit. Close 1009.
    MessageTooLarge,
    /// A text message or a close reason that is not UTF-8. Close 1007.
    InvalidUtf8,
    /// A compressed message (permessage-deflate) that does not inflate: corrupt DEFLATE data,
    /// data after a final block, or a back-reference to data the receiver does not have (before
    /// the start of the stream, or over 32 KiB back).
    /// Close 1007: the payload is inconsistent with the message (RFC 6455 section 7.4.1).
    BadCompressedData,

    // ---- local misuse -------------------------------------------------------------------------
    /// Nothing more may be sent: this side has sent its close frame, or the connection failed.
    /// Not the peer's fault; nothing to tell it.
    Closed,
}

impl Error {
    /// The HTTP status to answer with, for errors of the opening handshake; `None` for errors of
    /// an established connection.
    pub fn http_status(&self) -> Option<u16> {
        Some(match self {
            Error::MalformedRequest(_)
            | Error::BadTarget
            | Error::UnexpectedBody
            | Error::MissingHost
            | Error::BadUpgrade
            | Error::BadConnection
            | Error::BadKey
            | Error::MissingVersion
            | Error::BadExtensions => 400,
            Error::OriginRefused => 403,
            Error::MethodNotAllowed => 405,
            Error::NotUpgrade | Error::UnsupportedVersion => 426,
            Error::HeadersTooLarge => 431,
            Error::Refused(status) => (*status).clamp(400, 599),
            _ => return None,
        })
    }

    /// The close code to fail the connection with, for errors of an established connection;
    /// `None` for handshake errors.
    pub fn close_code(&self) -> Option<CloseCode> {
        Some(match self {
            Error::ReservedBits
            | Error::BadRsv1
            | Error::ReservedOpcode
            | Error::FragmentedControl
            | Error::ControlTooLong
            | Error::BadMask
            | Error::BadLength
            | Error::UnexpectedContinuation
            | Error::ExpectedContinuation
            | Error::BadClosePayload => CloseCode::PROTOCOL_ERROR,
            Error::FrameTooLarge | Error::MessageTooLarge => CloseCode::MESSAGE_TOO_BIG,
            Error::InvalidUtf8 | Error::BadCompressedData => CloseCode::INVALID_PAYLOAD,
            _ => return None,
        })
    }

    /// The full HTTP response for a handshake error: status line, the headers the status calls
    /// for, `Connection: close` and a short plain-text body saying what was wrong. `None` for
    /// errors that are not handshake rejections.
    pub fn http_response(&self) -> Option<Vec<u8>> {
        let status = self.http_status()?;
        let extra: &str = match self {
            Error::MethodNotAllowed => "Allow: GET\r\n",
            Error::UnsupportedVersion | Error::MissingVersion => "Sec-WebSocket-Version: 13\r\n",
            // RFC 9110 15.5.22: a 426 names the protocol to upgrade to.
            Error::NotUpgrade => "Upgrade: websocket\r\n",
            _ => "",
        };
        let body = format!("{self}\n");
        Some(
            format!(
                "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {len}\r\nConnection: {connection}\r\n\r\n{body}",
                reason = reason_phrase(status),
                len = body.len(),
                connection = if *self == Error::NotUpgrade { "Upgrade, close" } else { "close" },
            )
            .into_bytes(),
        )
    }
}

/// The standard reason phrase for the statuses the handshake produces.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MalformedRequest(what) => write!(f, "malformed HTTP request: {what}"),
            Error::MethodNotAllowed => f.write_str("a WebSocket upgrade must use GET"),
            Error::BadTarget => {
                f.write_str("the request target must be a path (/chat) or an http(s) URI")
            }
            Error::UnexpectedBody => f.write_str(
                "an upgrade request has no body: send no Content-Length (or 0) and no \
                 Transfer-Encoding",
            ),
            Error::MissingHost => f.write_str("the request needs exactly one Host header"),
            Error::NotUpgrade => {
                f.write_str("this is a WebSocket endpoint: send an upgrade request")
            }
            Error::BadUpgrade => f.write_str("the Upgrade header must name websocket"),
            Error::BadConnection => {
                f.write_str("the Connection header must hold the Upgrade token")
            }
            Error::BadKey => {
                f.write_str("Sec-WebSocket-Key must be one base64 value of exactly 16 bytes")
            }
            Error::MissingVersion => f.write_str("Sec-WebSocket-Version is missing (we speak 13)"),
            Error::UnsupportedVersion => {
                f.write_str("unsupported Sec-WebSocket-Version (we speak 13)")
            }
            Error::BadExtensions => f.write_str("Sec-WebSocket-Extensions does not parse"),
            Error::HeadersTooLarge => f.write_str("request header fields too large"),
            Error::OriginRefused => f.write_str("origin not allowed"),
            Error::Refused(status) => write!(f, "upgrade refused by the application ({status})"),
            Error::BadResponse(what) => write!(f, "bad handshake response: {what}"),
            Error::ReservedBits => f.write_str("reserved bits set without a negotiated extension"),
            Error::BadRsv1 => f.write_str("RSV1 (compressed) on a control or continuation frame"),
            Error::ReservedOpcode => f.write_str("reserved opcode"),
            Error::FragmentedControl => f.write_str("fragmented control frame"),
            Error::ControlTooLong => f.write_str("control frame payload over 125 bytes"),
            Error::BadMask => f.write_str("frame masking does not match the sender's role"),
            Error::BadLength => f.write_str("payload length not in minimal encoding or over 2^63"),
            Error::UnexpectedContinuation => f.write_str("continuation frame with no open message"),
            Error::ExpectedContinuation => {
                f.write_str("new data frame while a fragmented message is open")
            }
            Error::BadClosePayload => f.write_str("invalid close frame payload or code"),
            Error::FrameTooLarge => f.write_str("frame over the size limit"),
            Error::MessageTooLarge => f.write_str("message over the size limit"),
            Error::InvalidUtf8 => f.write_str("text is not valid UTF-8"),
            Error::BadCompressedData => f.write_str("compressed message does not inflate"),
            Error::Closed => {
                f.write_str("the connection is closing or closed: nothing more may be sent")
            }
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_exactly_one_answer() {
        let all = [
            Error::MalformedRequest("x"),
            Error::MethodNotAllowed,
            Error::BadTarget,
            Error::UnexpectedBody,
            Error::MissingHost,
            Error::NotUpgrade,
            Error::BadUpgrade,
            Error::BadConnection,
            Error::BadKey,
            Error::MissingVersion,
            Error::UnsupportedVersion,
            Error::BadExtensions,
            Error::HeadersTooLarge,
            Error::OriginRefused,
            Error::Refused(401),
            Error::ReservedBits,
            Error::BadRsv1,
            Error::ReservedOpcode,
            Error::FragmentedControl,
            Error::ControlTooLong,
            Error::BadMask,
            Error::BadLength,
            Error::UnexpectedContinuation,
            Error::ExpectedContinuation,
            Error::BadClosePayload,
            Error::FrameTooLarge,
            Error::MessageTooLarge,
            Error::InvalidUtf8,
            Error::BadCompressedData,
        ];
        for e in all {
            assert!(
                e.http_status().is_some() != e.close_code().is_some(),
                "{e:?} must map to a status or a close code"
            );
            assert!(!e.to_string().is_empty());
        }
        for local in [Error::BadResponse("x"), Error::Closed] {
            assert_eq!(local.http_status(), None);
            assert_eq!(local.close_code(), None);
        }
    }

    #[test]
    fn rejection_responses_carry_the_headers_the_status_needs() {
        let r = String::from_utf8(Error::MethodNotAllowed.http_response().unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(r.contains("\r\nAllow: GET\r\n"));
        let r = String::from_utf8(Error::UnsupportedVersion.http_response().unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 "));
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let r = String::from_utf8(Error::HeadersTooLarge.http_response().unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 "));
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(len, body.len());
        assert_eq!(Error::Refused(99).http_status(), Some(400));
        assert_eq!(Error::ReservedBits.http_response(), None);
    }
}
