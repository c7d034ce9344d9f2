//! A small NATS client: the text protocol over one blocking socket.
//!
//! The bus thread writes `CONNECT`, `SUB subject sid`, `UNSUB sid`, `PUB subject len` and
//! `PING`/`PONG`; a reader thread parses `INFO`, `MSG subject sid [reply] len`, `PING`, `PONG`,
//! `+OK` and `-ERR`. The connection asks for no echo (this node's publishes are not sent back),
//! no headers and no verbose acknowledgements. Not done: TLS, JetStream, cluster discovery
//! (`INFO` updates are read and ignored), NKey/JWT authentication (user and password or a token
//! come from the URL).

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::driver::{Command, Conn, Opening, Transport};
use crate::envelope::HEADER_LEN;
use crate::inbuf::Inbuf;
use crate::shared::{Count, RouteKey};
use crate::url::Endpoint;
use crate::MAX_INCOMING;

/// The longest protocol line accepted (`INFO` grows with a cluster's URL list; `MSG` lines stay
/// under the server's 4096-byte control-line limit).
const MAX_LINE: usize = 64 << 10;
/// What a server that does not say allows per message.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// One message from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    /// The server's JSON description of itself.
    Info(&'a [u8]),
    Msg {
        sid: u64,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    /// The quoted reason, as sent.
    Err(&'a [u8]),
}

/// Why the server's bytes are not the NATS protocol: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    LineTooLong,
    Unknown(String),
    BadMsg,
    TooLarge(usize),
    BadTerminator,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::LineTooLong => write!(f, "a protocol line over {MAX_LINE} bytes"),
            ParseError::Unknown(op) => write!(f, "unknown operation {op:?}"),
            ParseError::BadMsg => f.write_str("a malformed MSG line"),
            ParseError::TooLarge(n) => write!(f, "a {n}-byte message, over {MAX_INCOMING}"),
            ParseError::BadTerminator => f.write_str("a payload not followed by CRLF"),
        }
    }
}

/// Parses one operation from the start of `buf`: `Ok(None)` until all of it is there.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, ParseError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LINE { Err(ParseError::LineTooLong) } else { Ok(None) };
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let after = nl + 1;
    let gap = |b: &u8| *b == b' ' || *b == b'\t';
    let start = line.iter().position(|b| !gap(b)).unwrap_or(line.len());
    let end = line[start..].iter().position(gap).map_or(line.len(), |n| start + n);
    let verb = &line[start..end];
    // What follows the verb (INFO's JSON, -ERR's reason), spaces and all.
    let rest = line[end..].trim_ascii();
    let fields = rest.split(gap).filter(|f| !f.is_empty());
    let op = match verb {
        v if v.eq_ignore_ascii_case(b"MSG") => {
            let args: Vec<&[u8]> = fields.collect();
            let (sid, size) = match args[..] {
                [_subject, sid, size] | [_subject, sid, _, size] => (number(sid), number(size)),
                _ => return Err(ParseError::BadMsg),
            };
            let (Some(sid), Some(size)) = (sid, size) else { return Err(ParseError::BadMsg) };
            let size = usize::try_from(size).map_err(|_| ParseError::TooLarge(usize::MAX))?;
            if size > MAX_INCOMING {
                return Err(ParseError::TooLarge(size));
            }
            let end = after + size;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ParseError::BadTerminator);
            }
            return Ok(Some((Op::Msg { sid, payload: &buf[after..end] }, end + 2)));
        }
        v if v.eq_ignore_ascii_case(b"PING") => Op::Ping,
        v if v.eq_ignore_ascii_case(b"PONG") => Op::Pong,
        v if v.eq_ignore_ascii_case(b"+OK") => Op::Ok,
        v if v.eq_ignore_ascii_case(b"-ERR") => Op::Err(rest),
        v if v.eq_ignore_ascii_case(b"INFO") => Op::Info(rest),
        v => return Err(ParseError::Unknown(String::from_utf8_lossy(v).into_owned())),
    };
    Ok(Some((op, after)))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The value of `"key":` in the server's INFO, if it is a number or a boolean. INFO is flat JSON
/// from a server this node chose to trust, so a scan is enough (keys cannot appear inside its
/// strings unescaped).
fn info_field<'a>(info: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pattern = format!("\"{key}\":");
    let at = info.windows(pattern.len()).position(|w| w == pattern.as_bytes())?;
    let value = info[at + pattern.len()..].trim_ascii_start();
    let len = value.iter().position(|&b| b == b',' || b == b'}').unwrap_or(value.len());
    Some(value[..len].trim_ascii_end())
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) struct Nats {
    endpoint: Endpoint,
}

impl Nats {
    pub fn new(endpoint: Endpoint) -> Self {
        Nats { endpoint }
    }

    fn connect_line(&self) -> String {
        let ep = &self.endpoint;
        let mut auth = String::new();
        match (&ep.user, &ep.password) {
            (Some(user), Some(pass)) => {
                auth = format!(",\"user\":{},\"pass\":{}", json_string(user), json_string(pass));
            }
            (Some(token), None) => auth = format!(",\"auth_token\":{}", json_string(token)),
            (None, Some(pass)) => auth = format!(",\"pass\":{}", json_string(pass)),
            (None, None) => {}
        }
        format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\
             \"name\":\"ringside-bus\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\
             \"echo\":false,\"headers\":false{auth}}}\r\nPING\r\n",
            env!("CARGO_PKG_VERSION")
        )
    }
}

impl Transport for Nats {
    type Conn = NatsConn;

    fn open(&mut self, opening: Opening) -> Result<NatsConn, String> {
        let ep = &self.endpoint;
        let where_ = format!("nats://{}:{}", ep.host, ep.port);
        let timeout = opening.options.connect_timeout;
        let mut stream = crate::driver::dial(&ep.host, ep.port, timeout)?;
        let fail = |why: String| format!("{where_}: {why}");
        let mut inbuf = Inbuf::new();
        let mut max_payload = DEFAULT_MAX_PAYLOAD;
        // The server speaks first: INFO.
        handshake_step(&mut stream, &mut inbuf, |op| match op {
            Op::Info(info) => {
                if info_field(info, "tls_required") == Some(b"true") {
                    return Err("the server requires TLS, which this client does not speak: \
                                allow plain connections from this network"
                        .into());
                }
                if let Some(n) = info_field(info, "max_payload").and_then(number) {
                    max_payload = usize::try_from(n).unwrap_or(usize::MAX);
                }
                Ok(true)
            }
            other => Err(format!("expected INFO, got {other:?}: is this a NATS server?")),
        })
        .map_err(fail)?;
        stream
            .write_all(self.connect_line().as_bytes())
            .map_err(|e| fail(format!("sending CONNECT failed: {e}")))?;
        // PONG answers the PING after CONNECT: the server took CONNECT (or said -ERR).
        handshake_step(&mut stream, &mut inbuf, |op| match op {
            Op::Pong => Ok(true),
            Op::Err(why) => Err(format!(
                "the server refused the connection: {} (credentials go in the URL: \
                 nats://user:password@host:port or nats://token@host:port)",
                String::from_utf8_lossy(why)
            )),
            _ => Ok(false),
        })
        .map_err(fail)?;
        stream.set_read_timeout(None).map_err(|e| fail(e.to_string()))?;
        stream
            .set_write_timeout(Some(opening.options.write_timeout))
            .map_err(|e| fail(e.to_string()))?;
        let pings_out = Arc::new(AtomicU32::new(0));
        let reader = {
            let stream = stream.try_clone().map_err(|e| fail(e.to_string()))?;
            let pings_out = Arc::clone(&pings_out);
            thread::Builder::new()
                .name("ringside-bus-nats".into())
                .spawn(move || read_loop(stream, inbuf, opening, pings_out))
                .map_err(|e| fail(format!("could not start the reader thread: {e}")))?
        };
        Ok(NatsConn { stream, out: Vec::new(), reader: Some(reader), pings_out, max_payload })
    }
}

/// Reads until `step` accepts an operation (`Ok(true)`), within the socket's read timeout.
fn handshake_step(
    stream: &mut TcpStream,
    inbuf: &mut Inbuf,
    mut step: impl FnMut(Op<'_>) -> Result<bool, String>,
) -> Result<(), String> {
    loop {
        match parse(inbuf.data()) {
            Ok(Some((op, n))) => {
                let done = step(op)?;
                inbuf.consume(n);
                if done {
                    return Ok(());
                }
            }
            Ok(None) => match inbuf.read_from(stream) {
                Ok(0) => return Err("the server closed the connection during the handshake".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("no handshake answer ({e}): is this a NATS server?")),
            },
            Err(e) => return Err(format!("not the NATS protocol ({e}): is this a NATS server?")),
        }
    }
}

fn read_loop(mut stream: TcpStream, mut inbuf: Inbuf, o: Opening, pings_out: Arc<AtomicU32>) {
    let mut server_error = String::new();
    let reason = loop {
        match parse(inbuf.data()) {
            Ok(Some((op, n))) => {
                match op {
                    Op::Msg { sid, payload } => o.shared.receive(RouteKey::Sid(sid), payload),
                    Op::Ping => {
                        let _ = o.commands.send(Command::ServerPing { generation: o.generation });
                    }
                    Op::Pong => pings_out.store(0, Relaxed),
                    Op::Err(why) => {
                        o.shared.count(Count::ServerErrors);
                        server_error = format!(" after -ERR {}", String::from_utf8_lossy(why));
                    }
                    Op::Info(_) | Op::Ok => {}
                }
                inbuf.consume(n);
            }
            Ok(None) => match inbuf.read_from(&mut stream) {
                Ok(0) => break format!("the NATS server closed the connection{server_error}"),
                Ok(_) => {}
                Err(e) => break format!("reading from NATS failed{server_error}: {e}"),
            },
            Err(e) => break format!("NATS protocol error: {e}"),
        }
    };
    o.lost(reason);
}

pub(crate) struct NatsConn {
    stream: TcpStream,
    out: Vec<u8>,
    reader: Option<JoinHandle<()>>,
    /// Pings sent since the last PONG.
    pings_out: Arc<AtomicU32>,
    max_payload: usize,
}

impl Conn for NatsConn {
    fn subscribe(&mut self, sid: u64, subject: &str) {
        let _ = write!(self.out, "SUB {subject} {sid}\r\n");
    }

    fn unsubscribe(&mut self, sid: u64, _subject: &str) {
        let _ = write!(self.out, "UNSUB {sid}\r\n");
    }

    fn publish(&mut self, subject: &str, header: &[u8; HEADER_LEN], frame: &[u8]) {
        let _ = write!(self.out, "PUB {subject} {}\r\n", HEADER_LEN + frame.len());
        self.out.extend_from_slice(header);
        self.out.extend_from_slice(frame);
        self.out.extend_from_slice(b"\r\n");
    }

    fn ping(&mut self) -> bool {
        if self.pings_out.fetch_add(1, Relaxed) >= 2 {
            return false;
        }
        self.out.extend_from_slice(b"PING\r\n");
        true
    }

    fn pong(&mut self) {
        self.out.extend_from_slice(b"PONG\r\n");
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        crate::driver::write_out(&self.stream, &mut self.out)
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn sockets(&self) -> Vec<TcpStream> {
        self.stream.try_clone().into_iter().collect()
    }

    fn close(mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_each_operation() {
        let info = b"INFO {\"max_payload\":1048576,\"tls_required\":false}\r\n";
        let (op, n) = parse(info).unwrap().unwrap();
        assert_eq!(n, info.len());
        let Op::Info(json) = op else { panic!("{op:?}") };
        assert_eq!(info_field(json, "max_payload"), Some(&b"1048576"[..]));
        assert_eq!(info_field(json, "tls_required"), Some(&b"false"[..]));
        assert_eq!(info_field(json, "auth_required"), None);
        assert_eq!(parse(b"PING\r\nPONG"), Ok(Some((Op::Ping, 6))));
        assert_eq!(parse(b"pong\r\n"), Ok(Some((Op::Pong, 6))));
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((Op::Ok, 5))));
        assert_eq!(
            parse(b"-ERR 'Unknown Protocol Operation'\r\n"),
            Ok(Some((Op::Err(b"'Unknown Protocol Operation'"), 35)))
        );
        let msg = b"MSG a.b 7 5\r\nhello\r\nPING\r\n";
        assert_eq!(parse(msg), Ok(Some((Op::Msg { sid: 7, payload: b"hello" }, 20))));
        let reply = b"MSG a\t9  inbox.1 0\r\n\r\n";
        assert_eq!(parse(reply), Ok(Some((Op::Msg { sid: 9, payload: b"" }, reply.len()))));
    }

    #[test]
    fn waits_for_whole_operations() {
        let msg = b"MSG a.b 7 5\r\nhello\r\n";
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(parse(b"HELLO\r\n"), Err(ParseError::Unknown("HELLO".into())));
        assert_eq!(parse(b"\r\n"), Err(ParseError::Unknown(String::new())));
        assert_eq!(parse(b"MSG a 1\r\n"), Err(ParseError::BadMsg));
        assert_eq!(parse(b"MSG a x 1\r\nx\r\n"), Err(ParseError::BadMsg));
        assert_eq!(parse(b"MSG a 1 -1\r\n"), Err(ParseError::BadMsg));
        assert_eq!(parse(b"MSG a 1 99999999999999999999\r\n"), Err(ParseError::BadMsg));
        assert_eq!(parse(b"MSG a 1 1 2 3\r\n"), Err(ParseError::BadMsg));
        assert_eq!(parse(b"MSG a 1 2\r\nabXY"), Err(ParseError::BadTerminator));
        let huge = format!("MSG a 1 {}\r\n", MAX_INCOMING + 1);
        assert_eq!(parse(huge.as_bytes()), Err(ParseError::TooLarge(MAX_INCOMING + 1)));
        assert_eq!(parse(&vec![b'A'; MAX_LINE]), Err(ParseError::LineTooLong));
        assert_eq!(parse(&vec![b'A'; MAX_LINE - 1]), Ok(None));
    }

    #[test]
    fn connect_line_carries_credentials_as_json() {
        let nats = |url| Nats::new(Endpoint::parse(url).unwrap()).connect_line();
        let line = nats("nats://al%22ice:p%5Cw@h");
        assert!(line.contains(r#""user":"al\"ice","pass":"p\\w""#), "{line}");
        assert!(nats("nats://tok@h").contains(r#""auth_token":"tok""#));
        assert!(nats("nats://h").contains(r#""echo":false,"headers":false}"#));
        assert!(nats("nats://h").ends_with("}\r\nPING\r\n"));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut rest = &bytes[..];
            while let Ok(Some((_, n))) = parse(rest) {
                prop_assert!(n > 0 && n <= rest.len());
                rest = &rest[n..];
            }
        }

        #[test]
        fn msg_round_trips(sid in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut wire = format!("MSG ringside.t {sid} {}\r\n", payload.len()).into_bytes();
            wire.extend_from_slice(&payload);
            wire.extend_from_slice(b"\r\n");
            prop_assert_eq!(parse(&wire), Ok(Some((Op::Msg { sid, payload: &payload }, wire.len()))));
        }
    }
}
