//! A blocking permessage-deflate client for the real-socket tests: it offers the extension with
//! the protocol core's [`DeflateOffer`], checks the server's answer with it, sends messages
//! compressed or not and fragmented as told, and reports for every message it receives whether
//! it came compressed (RSV1), so a test checks what was on the wire, not only what it meant.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use ringside_proto::deflate::{DeflateOffer, DeflateParams};
use ringside_proto::frame::{self, DecodeRules, OpCode};
use ringside_proto::handshake;
use ringside_proto::{mask, Config, Connection, Event, Message, Role};

use crate::{read_some, Seen, WAIT};

/// zlib level of the client's messages (the server's answers use its own).
const CLIENT_LEVEL: u32 = 6;

/// A connected client that may have agreed to permessage-deflate.
#[derive(Debug)]
pub struct DeflateClient {
    pub stream: TcpStream,
    pub conn: Connection,
    /// What the server agreed to (`None`: it declined, or nothing was offered).
    pub agreed: Option<DeflateParams>,
    /// The `Sec-WebSocket-Extensions` value of the 101, as sent.
    pub response: Option<String>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether the data message being received started with RSV1.
    rsv1: bool,
}

impl DeflateClient {
    /// Connects, offers `offer` (none: no extension) and checks the answer.
    pub fn connect(addr: SocketAddr, offer: Option<DeflateOffer>) -> io::Result<DeflateClient> {
        Self::connect_header(addr, offer.map(|o| o.header_value()), offer)
    }

    /// Connects sending `header` as `Sec-WebSocket-Extensions` (several offers, say), and checks
    /// the answer as the client that made `offer` (the one the server should pick).
    pub fn connect_header(
        addr: SocketAddr,
        header: Option<String>,
        offer: Option<DeflateOffer>,
    ) -> io::Result<DeflateClient> {
        let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        stream.set_nodelay(true)?;
        let key = handshake::generate_key();
        let headers: Vec<(&str, &str)> =
            header.iter().map(|v| ("Sec-WebSocket-Extensions", v.as_str())).collect();
        let mut req = Vec::new();
        handshake::write_client_request(&addr.to_string(), "/", &key, &[], &headers, &mut req);
        stream.write_all(&req)?;
        let mut buf = vec![0; 64 << 10];
        let mut end = 0;
        let accepted = loop {
            let n = read_some(&mut stream, &mut buf[end..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in handshake"));
            }
            end += n;
            match handshake::parse_response(&buf[..end], &key, &[]) {
                Ok(Some(accepted)) => break accepted,
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        };
        let agreed = match offer {
            Some(o) => o
                .accept(accepted.extensions.as_deref())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            None if accepted.extensions.is_some() => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "an extension unasked"))
            }
            None => None,
        };
        let huge = u64::MAX >> 1;
        let config = Config { max_frame_size: huge, max_message_size: huge, auto_pong: true };
        let mut conn = Connection::new(Role::Client, config);
        if let Some(p) = agreed {
            conn.enable_deflate(p, Some(p.deflater(Role::Client, CLIENT_LEVEL)));
        }
        Ok(DeflateClient {
            stream,
            conn,
            agreed,
            response: accepted.extensions,
            buf,
            start: accepted.head_len,
            end,
            rsv1: false,
        })
    }

    /// Sends a text or binary message in `fragments` frames (at least one), compressed (RSV1 on
    /// the first frame) if `compress` and the extension was agreed.
    pub fn send(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        compress: bool,
        fragments: usize,
    ) -> io::Result<()> {
        let mut body = Vec::new();
        let compressed = match self.conn.deflater_mut() {
            Some(d) if compress => {
                d.compress(payload, &mut body);
                true
            }
            _ => {
                body.extend_from_slice(payload);
                false
            }
        };
        let pieces = fragments.clamp(1, body.len().max(1));
        let step = body.len().div_ceil(pieces).max(1);
        let mut chunks: Vec<&[u8]> = body.chunks(step).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let mut wire = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let fin = i + 1 == chunks.len();
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            let key: [u8; 4] = rand_key();
            let mut header = frame::encode_header(fin, op, Some(key), chunk.len() as u64);
            if i == 0 && compressed {
                header = header.with_rsv1();
            }
            wire.extend_from_slice(header.as_bytes());
            let at = wire.len();
            wire.extend_from_slice(chunk);
            mask::apply(&mut wire[at..], key, 0);
        }
        self.stream.write_all(&wire)
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next message or control frame, and whether it came compressed; waits at most
    /// [`WAIT`].
    pub fn recv(&mut self) -> io::Result<(bool, Seen)> {
        let deadline = Instant::now() + WAIT;
        let rules = DecodeRules { expect_masked: false, max_frame_size: u64::MAX >> 1 };
        loop {
            // One whole frame at a time, so the RSV1 of each message's first frame is seen.
            let avail = &self.buf[self.start..self.end];
            let found = frame::decode_header_deflate(avail, rules)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((h, n)) = found {
                let total = n + h.len as usize;
                if total <= avail.len() {
                    if matches!(h.opcode, OpCode::Text | OpCode::Binary) {
                        self.rsv1 = h.rsv1;
                    }
                    let frame = &mut self.buf[self.start..self.start + total];
                    let (used, event) = self
                        .conn
                        .read(frame)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    debug_assert_eq!(used, total);
                    self.start += total;
                    let seen = event.map(|ev| match ev {
                        Event::Message(Message::Text(t)) => Seen::Text(t.to_owned()),
                        Event::Message(Message::Binary(b)) => Seen::Binary(b.to_vec()),
                        Event::Ping(p) => Seen::Ping(p.to_vec()),
                        Event::Pong(p) => Seen::Pong(p.to_vec()),
                        Event::Close(c) => Seen::Close(
                            c.map(|c| c.code.0),
                            c.map_or(String::new(), |c| c.reason.to_owned()),
                        ),
                    });
                    if let Some(seen) = seen {
                        let out = self.conn.take_output();
                        let _ = self.stream.write_all(&out);
                        let compressed =
                            matches!(seen, Seen::Text(_) | Seen::Binary(_)) && self.rsv1;
                        return Ok((compressed, seen));
                    }
                    continue;
                }
                if total > self.buf.len() {
                    self.buf.resize(total.next_power_of_two(), 0);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no frame from the server"));
            }
            // Room for more: move what is left to the front.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match read_some(&mut self.stream, &mut self.buf[self.end..]) {
                Ok(0) => return Ok((false, Seen::Eof)),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok((false, Seen::Eof))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until the server's close frame and returns its code (any messages before it are
    /// skipped); then expects EOF.
    pub fn expect_close(&mut self) -> io::Result<Option<u16>> {
        loop {
            match self.recv()?.1 {
                Seen::Close(code, _) => {
                    let (_, after) = self.recv()?;
                    if after != Seen::Eof {
                        return Err(io::Error::other(format!("after close: {after:?}")));
                    }
                    return Ok(code);
                }
                Seen::Eof => return Err(io::Error::other("EOF without a close frame")),
                _ => {}
            }
        }
    }
}

/// A masking key that differs per frame (tests need no unpredictability, only variety).
fn rand_key() -> [u8; 4] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    let x = NEXT.fetch_add(0x6d2b_79f5, Ordering::Relaxed);
    (x ^ (x >> 15)).wrapping_mul(0x2c1b_3c6d).to_le_bytes()
}

/// The current resident set size and its peak (VmRSS, VmHWM) of this process, bytes.
pub fn rss_and_peak() -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/self/status")))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets this process's peak RSS (VmHWM) to its current RSS (Linux `clear_refs` 5).
pub fn reset_peak_rss() -> io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}

/// What a [`WireTap`] saw of the server's side of the streams it relayed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tapped {
    /// Connections relayed.
    pub connections: u64,
    /// Each 101's `Sec-WebSocket-Extensions` value (`None`: no extension agreed).
    pub extensions: Vec<Option<String>>,
    /// Data messages the server sent, and how many of them came compressed (RSV1).
    pub messages: u64,
    pub compressed: u64,
    /// Payload bytes of the server's data frames, as on the wire.
    pub payload_bytes: u64,
}

/// A TCP relay between clients and the server that reads the server's side: the upgrade
/// response and every frame header. It tells what a client that shows no wire (a browser) got:
/// whether the extension was agreed and whether messages really came compressed.
#[derive(Debug)]
pub struct WireTap {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Tapped>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long a relay may live at most (every loop in a test is bounded).
const TAP_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

impl WireTap {
    /// Starts relaying to `server` on a free loopback port.
    pub fn start(server: SocketAddr) -> io::Result<WireTap> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Tapped::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            let born = Instant::now();
            while !stop2.load(Ordering::Relaxed) && born.elapsed() < TAP_LIFETIME {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(upstream) = TcpStream::connect_timeout(&server, WAIT) {
                            relay(client, upstream, Arc::clone(&seen2), Arc::clone(&stop2));
                        }
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Ok(WireTap { addr, seen, stop })
    }

    /// What was seen so far.
    pub fn seen(&self) -> Tapped {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WireTap {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies both ways between `client` and `server` (one thread each), reading the server's
/// side into `seen`; each side's end is passed on as a shutdown of the other's writing half.
fn relay(
    client: TcpStream,
    server: TcpStream,
    seen: std::sync::Arc<std::sync::Mutex<Tapped>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::Read;
    use std::net::Shutdown;
    let pump = move |mut from: TcpStream, mut to: TcpStream, mut scan: Option<Scanner>| {
        let _ = from.set_read_timeout(Some(std::time::Duration::from_millis(200)));
        let born = Instant::now();
        let mut buf = vec![0u8; 64 << 10];
        while born.elapsed() < TAP_LIFETIME && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(s) = scan.as_mut() {
                        s.feed(&buf[..n]);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { return };
    let scanner = Scanner { seen, head: Vec::new(), in_frames: false, header: Vec::new(), skip: 0 };
    std::thread::spawn({
        let pump = pump.clone();
        move || pump(client, server2, None)
    });
    std::thread::spawn(move || pump(server, client2, Some(scanner)));
}

/// Reads a server's byte stream: the response head, then frame headers (payloads skipped).
struct Scanner {
    seen: std::sync::Arc<std::sync::Mutex<Tapped>>,
    head: Vec<u8>,
    in_frames: bool,
    /// A frame header cut by the end of a read.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
}

impl Scanner {
    fn feed(&mut self, mut bytes: &[u8]) {
        if !self.in_frames {
            let from = self.head.len().saturating_sub(3);
            self.head.extend_from_slice(bytes);
            let Some(end) = self.head[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let end = from + end + 4;
            let head = String::from_utf8_lossy(&self.head[..end]).into_owned();
            let ext = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-extensions")
                    .then(|| value.trim().to_owned())
            });
            let rest = self.head[end..].to_vec();
            {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.connections += 1;
                seen.extensions.push(ext);
            }
            self.in_frames = true;
            self.head = Vec::new();
            return self.feed(&rest);
        }
        let rules = DecodeRules { expect_masked: false, max_frame_size: u64::MAX >> 1 };
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let had = self.header.len();
            let take = (frame::MAX_HEADER_LEN - had).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            match frame::decode_header_deflate(&self.header, rules) {
                Ok(Some((h, n))) => {
                    bytes = &bytes[n - had..];
                    self.header.clear();
                    self.skip = h.len;
                    if matches!(h.opcode, OpCode::Text | OpCode::Binary) {
                        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen.messages += 1;
                        seen.compressed += u64::from(h.rsv1);
                        seen.payload_bytes += h.len;
                    } else if h.opcode == OpCode::Continuation {
                        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen.payload_bytes += h.len;
                    }
                }
                Ok(None) => bytes = &bytes[take..],
                // Not a frame stream we understand: stop reading it.
                Err(_) => {
                    self.skip = u64::MAX;
                    return;
                }
            }
        }
    }
}
