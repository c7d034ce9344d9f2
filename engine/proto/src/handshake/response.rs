//! Handshake responses the application shapes: a refusal with its own status, headers and body
//! (`401` with `WWW-Authenticate`, `403`), and extra headers on the `101` (`Set-Cookie`).
//!
//! Every name and value is checked before a byte is written. An application that copies user
//! input into a header could otherwise split the response: a CR or LF in a value starts a header,
//! or a body, of the sender's choosing. Headers that frame the response or the upgrade
//! (`Content-Length`, `Connection`, `Sec-WebSocket-Accept`, ...) are written by this module and
//! refused from the caller, since a second copy would make the response ambiguous.

use std::fmt;

use super::headers::is_token;
use super::server::Accept;
use crate::error::reason_phrase;

/// Headers a refusal writes itself.
const REFUSAL_RESERVED: &[&str] = &["content-length", "transfer-encoding", "connection"];

/// Headers the `101` writes itself.
const ACCEPT_RESERVED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Why a response cannot be written as asked. Nothing was written; the caller's own code is at
/// fault (a handler passing unchecked input), so answer 500 and log this.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldError {
    /// A refusal's status outside 300..=599, or 304 (which has no body): use a 4xx or 5xx.
    Status(u16),
    /// A header name that is not an HTTP token (RFC 9110 section 5.6.2): letters, digits and
    /// ``!#$%&'*+-.^_`|~`` only. The name, escaped.
    Name(String),
    /// A header value holding CR, LF, NUL or another control character (HTAB is allowed).
    /// The header's name, escaped.
    Value(String),
    /// A header the server writes itself (`Content-Length`, `Connection`, and on the `101`
    /// `Upgrade` and the `Sec-WebSocket-*` answers). The name, escaped.
    Reserved(String),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldError::Status(s) => {
                write!(f, "status {s} cannot refuse an upgrade: use 300..=599 (not 304)")
            }
            FieldError::Name(n) => write!(f, "header name \"{n}\" is not an HTTP token"),
            FieldError::Value(n) => {
                write!(f, "header \"{n}\" has a control character (CR, LF, NUL) in its value")
            }
            FieldError::Reserved(n) => {
                write!(f, "header \"{n}\" is written by the server; do not set it")
            }
        }
    }
}

impl std::error::Error for FieldError {}

/// Checks one header against the field syntax of RFC 9110 section 5.5 and 5.6.2.
pub fn check_field(name: &str, value: &str) -> Result<(), FieldError> {
    if !is_token(name.as_bytes()) {
        return Err(FieldError::Name(escaped(name)));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(FieldError::Value(escaped(name)));
    }
    Ok(())
}

/// Appends a refusal to `out`: the status line, `headers` in order, `Content-Type:
/// text/plain; charset=utf-8` when there is a body and `headers` name no type, `Content-Length`,
/// `Connection: close`, and `body`. The caller closes the connection after sending it.
pub fn write_refusal<N: AsRef<str>, V: AsRef<str>>(
    status: u16,
    headers: &[(N, V)],
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FieldError> {
    if !(300..=599).contains(&status) || status == 304 {
        return Err(FieldError::Status(status));
    }
    check_all(headers, REFUSAL_RESERVED)?;
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    write_fields(headers, out);
    let typed = headers.iter().any(|(n, _)| n.as_ref().eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !typed {
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    }
    out.extend_from_slice(
        format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes(),
    );
    out.extend_from_slice(body);
    Ok(())
}

impl Accept<'_> {
    /// [`Accept::write_response`] with `headers` added after the handshake's own (a session
    /// cookie). Nothing is written if a header is refused.
    pub fn write_response_with<N: AsRef<str>, V: AsRef<str>>(
        &self,
        extensions_header: Option<&str>,
        headers: &[(N, V)],
        out: &mut Vec<u8>,
    ) -> Result<(), FieldError> {
        check_all(headers, ACCEPT_RESERVED)?;
        self.write_response(extensions_header, out);
        // Reopen the head: drop the blank line, add the headers, end it again.
        out.truncate(out.len() - 2);
        write_fields(headers, out);
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

fn check_all<N: AsRef<str>, V: AsRef<str>>(
    headers: &[(N, V)],
    reserved: &[&str],
) -> Result<(), FieldError> {
    for (name, value) in headers {
        let (name, value) = (name.as_ref(), value.as_ref());
        check_field(name, value)?;
        if reserved.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return Err(FieldError::Reserved(escaped(name)));
        }
    }
    Ok(())
}

fn write_fields<N: AsRef<str>, V: AsRef<str>>(headers: &[(N, V)], out: &mut Vec<u8>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_ref().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_ref().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The reason phrase: the standard one where the handshake knows it, else the status class's.
fn reason(status: u16) -> &'static str {
    match (reason_phrase(status), status / 100) {
        ("Error", 3) => "Redirection",
        ("Error", 4) => "Client Error",
        ("Error", _) => "Server Error",
        (known, _) => known,
    }
}

/// A name for an error message: printable, at most 64 characters.
fn escaped(name: &str) -> String {
    name.chars().take(64).flat_map(char::escape_default).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::test_util::get;
    use crate::handshake::{parse_request, validate, HandshakeConfig};

    fn refusal(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<String, FieldError> {
        let mut out = b"kept".to_vec();
        let r = write_refusal(status, headers, body, &mut out);
        if r.is_err() {
            assert_eq!(out, b"kept", "nothing written on an error");
        }
        r.map(|()| String::from_utf8(out[4..].to_vec()).unwrap())
    }

    #[test]
    fn refusals() {
        assert_eq!(
            refusal(401, &[("WWW-Authenticate", "Bearer realm=\"chat\"")], b"log in\n").unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"chat\"\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 7\r\n\
             Connection: close\r\n\r\nlog in\n"
        );
        assert_eq!(
            refusal(403, &[], b"").unwrap(),
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            refusal(302, &[("Location", "/login"), ("content-type", "text/html")], b"<p>").unwrap(),
            "HTTP/1.1 302 Redirection\r\nLocation: /login\r\ncontent-type: text/html\r\n\
             Content-Length: 3\r\nConnection: close\r\n\r\n<p>"
        );
    }

    #[test]
    fn refuses_what_would_split_or_confuse_the_response() {
        type Case<'a> = (u16, &'a [(&'a str, &'a str)], FieldError);
        let table: &[Case<'_>] = &[
            (101, &[], FieldError::Status(101)),
            (200, &[], FieldError::Status(200)),
            (304, &[], FieldError::Status(304)),
            (600, &[], FieldError::Status(600)),
            (401, &[("X", "a\r\nSet-Cookie: evil=1")], FieldError::Value("X".into())),
            (401, &[("X", "a\nb")], FieldError::Value("X".into())),
            (401, &[("X", "a\rb")], FieldError::Value("X".into())),
            (401, &[("X", "a\0b")], FieldError::Value("X".into())),
            (401, &[("X", "a\x7fb")], FieldError::Value("X".into())),
            (401, &[("X\r\nY", "1")], FieldError::Name("X\\r\\nY".into())),
            (401, &[("X Y", "1")], FieldError::Name("X Y".into())),
            (401, &[("", "1")], FieldError::Name(String::new())),
            (401, &[("X:", "1")], FieldError::Name("X:".into())),
            (401, &[("Content-Length", "0")], FieldError::Reserved("Content-Length".into())),
            (401, &[("connection", "keep-alive")], FieldError::Reserved("connection".into())),
            (401, &[("Transfer-Encoding", "x")], FieldError::Reserved("Transfer-Encoding".into())),
        ];
        for (status, headers, want) in table {
            assert_eq!(refusal(*status, headers, b"x").unwrap_err(), *want, "{headers:?}");
        }
        // Tabs and non-ASCII text are field content.
        assert!(refusal(401, &[("X", "a\tb é")], b"").is_ok());
        assert!(FieldError::Value("X".into()).to_string().contains("control character"));
    }

    #[test]
    fn accept_with_headers() {
        let buf = get(&[], &["Sec-WebSocket-Protocol: chat"]);
        let cfg = HandshakeConfig { subprotocols: vec!["chat".into()], ..Default::default() };
        let req = parse_request(&buf, &cfg).unwrap().unwrap();
        let accept = validate(&req, &cfg).unwrap();
        let mut plain = Vec::new();
        accept.write_response(None, &mut plain);
        let mut out = Vec::new();
        accept.write_response_with(None, &[("Set-Cookie", "sid=1; HttpOnly")], &mut out).unwrap();
        let head = String::from_utf8(out).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert_eq!(
            head,
            format!("{}Set-Cookie: sid=1; HttpOnly\r\n\r\n", &plain[..plain.len() - 2])
        );
        assert!(head.contains("Sec-WebSocket-Protocol: chat\r\n"));
        for name in ["Sec-WebSocket-Accept", "upgrade", "Sec-WebSocket-Protocol", "Connection"] {
            let mut out = Vec::new();
            let e = accept.write_response_with(None, &[(name, "x")], &mut out).unwrap_err();
            assert_eq!(e, FieldError::Reserved(name.into()));
            assert!(out.is_empty());
        }
        let mut out = Vec::new();
        let e = accept.write_response_with(None, &[("Set-Cookie", "a\r\n\r\nb")], &mut out);
        assert_eq!(e, Err(FieldError::Value("Set-Cookie".into())));
        assert!(out.is_empty());
    }
}
