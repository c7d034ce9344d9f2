//! A small Redis pub/sub client: RESP2 over two blocking sockets.
//!
//! A Redis connection in subscriber mode can only (un)subscribe and ping, so there are two: one
//! for `SUBSCRIBE`/`UNSUBSCRIBE` (its reader gets the `message` pushes) and one for pipelined
//! `PUBLISH` (its reader consumes the integer replies, which must be read or the server's
//! output buffer for this client grows). Both fail and come back together. Redis sends this
//! node's own publishes back to its subscriber socket; the envelope's node id filters them.
//! Not done: TLS, RESP3, Sentinel or Cluster (Cluster's pub/sub broadcasts across the cluster,
//! so pointing at one node works, without failover).

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::driver::{Conn, Opening, Transport};
use crate::envelope::HEADER_LEN;
use crate::inbuf::Inbuf;
use crate::shared::{Count, RouteKey};
use crate::url::Endpoint;
use crate::MAX_INCOMING;

/// The longest simple string, error or length line.
const MAX_LINE: usize = 64 << 10;
/// The most elements in an array reply (pub/sub pushes have 3 or 4).
const MAX_ARRAY: i64 = 64;
/// How deep arrays nest.
const MAX_DEPTH: usize = 4;

/// One RESP2 value, borrowing the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<&'a [u8]>),
    Array(Option<Vec<Value<'a>>>),
}

/// Why the server's bytes are not RESP2: the connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RespError {
    LineTooLong,
    BadType(u8),
    BadNumber,
    TooLarge,
    TooDeep,
    BadTerminator,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::LineTooLong => write!(f, "a line over {MAX_LINE} bytes"),
            RespError::BadType(b) => write!(f, "unknown type byte {:?}", *b as char),
            RespError::BadNumber => f.write_str("a malformed number or length"),
            RespError::TooLarge => write!(f, "a length over the limit ({MAX_INCOMING} bytes)"),
            RespError::TooDeep => f.write_str("arrays nested too deep"),
            RespError::BadTerminator => f.write_str("a line or bulk string not ended by CRLF"),
        }
    }
}

/// Parses one value from the start of `buf`: `Ok(None)` until all of it is there.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value<'_>, usize)>, RespError> {
    let Some(&kind) = buf.get(pos) else { return Ok(None) };
    if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
        return Err(RespError::BadType(kind));
    }
    let window = &buf[pos + 1..buf.len().min(pos + 1 + MAX_LINE)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if window.len() >= MAX_LINE { Err(RespError::LineTooLong) } else { Ok(None) };
    };
    let line = window[..nl].strip_suffix(b"\r").ok_or(RespError::BadTerminator)?;
    let next = pos + 1 + nl + 1;
    let value = match kind {
        b'+' => Value::Simple(line),
        b'-' => Value::Error(line),
        b':' => Value::Int(number(line)?),
        b'$' => {
            let len = number(line)?;
            if len == -1 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            let len = usize::try_from(len).map_err(|_| RespError::BadNumber)?;
            if len > MAX_INCOMING {
                return Err(RespError::TooLarge);
            }
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::BadTerminator);
            }
            return Ok(Some((Value::Bulk(Some(&buf[next..end])), end + 2)));
        }
        _ => {
            let len = number(line)?;
            if len == -1 {
                return Ok(Some((Value::Array(None), next)));
            }
            if !(0..=MAX_ARRAY).contains(&len) {
                return Err(if len < 0 { RespError::BadNumber } else { RespError::TooLarge });
            }
            if depth >= MAX_DEPTH {
                return Err(RespError::TooDeep);
            }
            let mut items = Vec::with_capacity(len as usize);
            let mut at = next;
            for _ in 0..len {
                let Some((item, end)) = parse_at(buf, at, depth + 1)? else { return Ok(None) };
                items.push(item);
                at = end;
            }
            return Ok(Some((Value::Array(Some(items)), at)));
        }
    };
    Ok(Some((value, next)))
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    let unsigned = digits.strip_prefix(b"-").unwrap_or(digits);
    if unsigned.is_empty() || unsigned.len() > 19 || !unsigned.iter().all(u8::is_ascii_digit) {
        return Err(RespError::BadNumber);
    }
    std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or(RespError::BadNumber)
}

/// Appends `args` as one RESP command.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

pub(crate) struct Redis {
    endpoint: Endpoint,
}

impl Redis {
    pub fn new(endpoint: Endpoint) -> Self {
        Redis { endpoint }
    }

    /// One socket, authenticated and answering PING.
    fn dial(&self, timeout: std::time::Duration) -> Result<(TcpStream, Inbuf), String> {
        let ep = &self.endpoint;
        let mut stream = crate::driver::dial(&ep.host, ep.port, timeout)?;
        let mut hello = Vec::new();
        let authenticated = ep.password.is_some();
        if let Some(pass) = &ep.password {
            match &ep.user {
                Some(user) => command(&mut hello, &[b"AUTH", user.as_bytes(), pass.as_bytes()]),
                None => command(&mut hello, &[b"AUTH", pass.as_bytes()]),
            }
        }
        command(&mut hello, &[b"PING"]);
        stream.write_all(&hello).map_err(|e| format!("sending PING failed: {e}"))?;
        let mut inbuf = Inbuf::new();
        if authenticated {
            match reply(&mut stream, &mut inbuf)? {
                Reply::Simple(ok) if ok == "OK" => {}
                Reply::Error(e) => {
                    return Err(format!("the server refused the credentials in the URL: {e}"))
                }
                other => return Err(format!("AUTH answered {other:?}: is this a Redis server?")),
            }
        }
        match reply(&mut stream, &mut inbuf)? {
            Reply::Simple(pong) if pong == "PONG" => Ok((stream, inbuf)),
            Reply::Error(e) if e.starts_with("NOAUTH") => Err(format!(
                "the server wants a password: put it in the URL, \
                 redis://:password@host:port ({e})"
            )),
            Reply::Error(e) => Err(format!("the server refused PING: {e}")),
            other => Err(format!("PING answered {other:?}: is this a Redis server?")),
        }
    }
}

/// A handshake reply, owned.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Other,
}

/// Reads one reply within the socket's read timeout.
fn reply(stream: &mut TcpStream, inbuf: &mut Inbuf) -> Result<Reply, String> {
    loop {
        match parse(inbuf.data()) {
            Ok(Some((value, n))) => {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let owned = match value {
                    Value::Simple(s) => Reply::Simple(text(s)),
                    Value::Error(e) => Reply::Error(text(e)),
                    _ => Reply::Other,
                };
                inbuf.consume(n);
                return Ok(owned);
            }
            Ok(None) => match inbuf.read_from(stream) {
                Ok(0) => return Err("the server closed the connection during the handshake".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("no answer to PING ({e}): is this a Redis server?")),
            },
            Err(e) => return Err(format!("not RESP ({e}): is this a Redis server?")),
        }
    }
}

impl Transport for Redis {
    type Conn = RedisConn;

    fn open(&mut self, opening: Opening) -> Result<RedisConn, String> {
        let ep = &self.endpoint;
        let where_ = format!("redis://{}:{}", ep.host, ep.port);
        let fail = |why: String| format!("{where_}: {why}");
        let timeout = opening.options.connect_timeout;
        let (sub, sub_in) = self.dial(timeout).map_err(fail)?;
        let (publ, pub_in) = self.dial(timeout).map_err(fail)?;
        let sub_pings = Arc::new(AtomicU32::new(0));
        let pub_pings = Arc::new(AtomicU32::new(0));
        let mut readers = Vec::new();
        for (stream, inbuf, pings, subscriber) in
            [(&sub, sub_in, &sub_pings, true), (&publ, pub_in, &pub_pings, false)]
        {
            stream.set_read_timeout(None).map_err(|e| fail(e.to_string()))?;
            stream
                .set_write_timeout(Some(opening.options.write_timeout))
                .map_err(|e| fail(e.to_string()))?;
            let stream = stream.try_clone().map_err(|e| fail(e.to_string()))?;
            let (o, pings) = (opening.clone(), Arc::clone(pings));
            let spawned = thread::Builder::new()
                .name("ringside-bus-redis".into())
                .spawn(move || read_loop(stream, inbuf, o, pings, subscriber));
            match spawned {
                Ok(reader) => readers.push(reader),
                Err(e) => {
                    let _ = sub.shutdown(Shutdown::Both);
                    let _ = publ.shutdown(Shutdown::Both);
                    readers.into_iter().for_each(|r| drop(r.join()));
                    return Err(fail(format!("could not start a reader thread: {e}")));
                }
            }
        }
        Ok(RedisConn {
            sub,
            publ,
            sub_out: Vec::new(),
            pub_out: Vec::new(),
            readers,
            sub_pings,
            pub_pings,
            max_payload: opening.options.max_payload,
        })
    }
}

fn read_loop(
    mut stream: TcpStream,
    mut inbuf: Inbuf,
    o: Opening,
    pings_out: Arc<AtomicU32>,
    subscriber: bool,
) {
    let which = if subscriber { "subscriber" } else { "publisher" };
    let mut server_error = String::new();
    let reason = loop {
        match parse(inbuf.data()) {
            Ok(Some((value, n))) => {
                match value {
                    Value::Array(Some(items)) => match &items[..] {
                        [Value::Bulk(Some(b"message")), Value::Bulk(Some(channel)), Value::Bulk(Some(payload))] => {
                            o.shared.receive(RouteKey::Subject(channel), payload)
                        }
                        // PING's answer in subscriber mode.
                        [Value::Bulk(Some(b"pong")), ..] => pings_out.store(0, Relaxed),
                        // (un)subscribe confirmations.
                        _ => {}
                    },
                    Value::Simple(b"PONG") => pings_out.store(0, Relaxed),
                    Value::Error(why) => {
                        o.shared.count(Count::ServerErrors);
                        server_error = format!(" after -{}", String::from_utf8_lossy(why));
                    }
                    // PUBLISH's count of receivers.
                    _ => {}
                }
                inbuf.consume(n);
            }
            Ok(None) => match inbuf.read_from(&mut stream) {
                Ok(0) => break format!("Redis closed the {which} connection{server_error}"),
                Ok(_) => {}
                Err(e) => break format!("reading the Redis {which} connection failed: {e}"),
            },
            Err(e) => break format!("Redis protocol error on the {which} connection: {e}"),
        }
    };
    o.lost(reason);
}

pub(crate) struct RedisConn {
    sub: TcpStream,
    publ: TcpStream,
    sub_out: Vec<u8>,
    pub_out: Vec<u8>,
    readers: Vec<JoinHandle<()>>,
    sub_pings: Arc<AtomicU32>,
    pub_pings: Arc<AtomicU32>,
    max_payload: usize,
}

impl Conn for RedisConn {
    fn subscribe(&mut self, _sid: u64, subject: &str) {
        command(&mut self.sub_out, &[b"SUBSCRIBE", subject.as_bytes()]);
    }

    fn unsubscribe(&mut self, _sid: u64, subject: &str) {
        command(&mut self.sub_out, &[b"UNSUBSCRIBE", subject.as_bytes()]);
    }

    fn publish(&mut self, subject: &str, header: &[u8; HEADER_LEN], frame: &[u8]) {
        let out = &mut self.pub_out;
        let _ = write!(out, "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{subject}\r\n", subject.len());
        let _ = write!(out, "${}\r\n", HEADER_LEN + frame.len());
        out.extend_from_slice(header);
        out.extend_from_slice(frame);
        out.extend_from_slice(b"\r\n");
    }

    fn ping(&mut self) -> bool {
        let sub_late = self.sub_pings.fetch_add(1, Relaxed) >= 2;
        let pub_late = self.pub_pings.fetch_add(1, Relaxed) >= 2;
        if sub_late || pub_late {
            return false;
        }
        command(&mut self.sub_out, &[b"PING"]);
        command(&mut self.pub_out, &[b"PING"]);
        true
    }

    /// Redis does not ping its clients.
    fn pong(&mut self) {}

    fn buffered(&self) -> usize {
        self.sub_out.len() + self.pub_out.len()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        crate::driver::write_out(&self.sub, &mut self.sub_out)?;
        crate::driver::write_out(&self.publ, &mut self.pub_out)
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn sockets(&self) -> Vec<TcpStream> {
        [&self.sub, &self.publ].into_iter().filter_map(|s| s.try_clone().ok()).collect()
    }

    fn close(self) {
        let _ = self.sub.shutdown(Shutdown::Both);
        let _ = self.publ.shutdown(Shutdown::Both);
        for reader in self.readers {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn one(wire: &[u8]) -> Value<'_> {
        let (v, n) = parse(wire).unwrap().unwrap();
        assert_eq!(n, wire.len());
        v
    }

    #[test]
    fn parses_each_type() {
        assert_eq!(one(b"+PONG\r\n"), Value::Simple(b"PONG"));
        assert_eq!(one(b"-ERR no\r\n"), Value::Error(b"ERR no"));
        assert_eq!(one(b":-42\r\n"), Value::Int(-42));
        assert_eq!(one(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(one(b"$0\r\n\r\n"), Value::Bulk(Some(b"")));
        assert_eq!(one(b"$4\r\na\r\nb\r\n"), Value::Bulk(Some(b"a\r\nb")));
        assert_eq!(one(b"*-1\r\n"), Value::Array(None));
        let push = b"*3\r\n$7\r\nmessage\r\n$10\r\nringside.t\r\n$2\r\nhi\r\n";
        assert_eq!(
            one(push),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"message")),
                Value::Bulk(Some(b"ringside.t")),
                Value::Bulk(Some(b"hi")),
            ]))
        );
    }

    #[test]
    fn waits_for_whole_values() {
        let push = b"*3\r\n$7\r\nmessage\r\n$10\r\nringside.t\r\n$2\r\nhi\r\n";
        for cut in 0..push.len() {
            assert_eq!(parse(&push[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(parse(b"?x\r\n"), Err(RespError::BadType(b'?')));
        assert_eq!(parse(b":12a\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b":\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b":99999999999999999999\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b"$-2\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b"*-2\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b"+OK\n"), Err(RespError::BadTerminator));
        assert_eq!(parse(b"$2\r\nabcd"), Err(RespError::BadTerminator));
        let huge = format!("${}\r\n", MAX_INCOMING + 1);
        assert_eq!(parse(huge.as_bytes()), Err(RespError::TooLarge));
        assert_eq!(parse(b"*65\r\n"), Err(RespError::TooLarge));
        assert_eq!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"), Err(RespError::TooDeep));
        let mut long = vec![b'+'];
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        assert_eq!(parse(&long), Err(RespError::LineTooLong));
        // An error inside an array surfaces too.
        assert_eq!(parse(b"*2\r\n:1\r\n!\r\n"), Err(RespError::BadType(b'!')));
    }

    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &[b"SUBSCRIBE", b"ringside.a b"]);
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$12\r\nringside.a b\r\n");
        assert_eq!(
            one(&out),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"SUBSCRIBE")),
                Value::Bulk(Some(b"ringside.a b")),
            ]))
        );
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
        fn bulk_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut wire = Vec::new();
            command(&mut wire, &[&payload]);
            prop_assert_eq!(parse(&wire), Ok(Some((Value::Array(Some(vec![Value::Bulk(Some(&payload))])), wire.len()))));
        }
    }
}
