//! One thread's event loop: a slab of connections on one epoll instance, each taken through
//! connect, upgrade, open and the close handshake, with every error counted by kind.
//!
//! A scenario plugs in as a [`Behavior`]: it hears when a connection opens, when a message or
//! pong arrives and when a connection ends, and it sends through [`Driver::send_frame`]. Frames
//! are appended to the connection's outgoing buffer and written once per event (one `send` for
//! all the frames due); a short write keeps the rest and waits for EPOLLOUT.
//!
//! The driver does not schedule traffic or decide phases: that is the scenario's loop, which
//! calls [`Driver::poll`] in between.

use std::collections::VecDeque;
use std::io::{self, Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use flate2::{Decompress, FlushDecompress, Status};
use ringside_proto::close::{parse_payload, write_payload};
use ringside_proto::deflate::DeflateOffer;
use ringside_proto::frame::{write_frame, DecodeRules};
use ringside_proto::handshake::{generate_key, parse_response, write_client_request};
use ringside_proto::{CloseCode, OpCode};
use socket2::Socket;

use crate::plan::{source_for, Ports, PORT_ATTEMPTS};
use crate::reader::{Frame, FrameReader};
use crate::rng::Xorshift;
use crate::stats::{Errors, Kind};
use crate::sys::{self, Epoll, READABLE, WRITABLE};
use crate::target::Target;

/// The largest frame accepted from the server.
pub const MAX_FRAME: u64 = 16 << 20;

/// Bytes read per `recv`; a full read is followed by another (up to [`READS_PER_EVENT`]).
const READ_BUF: usize = 256 << 10;
const READS_PER_EVENT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No socket: never used, or ended.
    Free,
    Connecting,
    /// TCP up, upgrade request sent, waiting for the 101.
    Handshaking,
    Open,
    /// Our close frame sent, waiting for the server's.
    Closing,
    /// Close frames exchanged, waiting for the server's FIN.
    AwaitFin,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// We asked and the close handshake completed (raw mode: we dropped the socket).
    Clean,
    /// We asked and it did not complete in time, or it was still being set up.
    Unclean,
    /// An error (already counted): failed connect or upgrade, reset, protocol error, or a close
    /// the server started.
    Failed,
}

/// A scenario's side of the event loop.
pub trait Behavior {
    /// Whether data payloads are needed (else only their lengths are seen).
    const CAPTURE: bool;
    /// The upgrade completed.
    fn on_open(&mut self, d: &mut Driver, id: usize, now: u64);
    /// A data message or a pong arrived.
    fn on_message(&mut self, d: &mut Driver, id: usize, frame: Frame<'_>, now: u64);
    /// The connection is gone (its slot is free again).
    fn on_end(&mut self, d: &mut Driver, id: usize, end: End, now: u64);
}

/// What every connection of a thread shares.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub raw: bool,
    pub connect_timeout_ns: u64,
    pub close_timeout_ns: u64,
    /// How long to poll without sleeping after the last event (see `--spin-us`).
    pub spin_ns: u64,
    pub source_addrs: Vec<Ipv4Addr>,
    pub ports: Option<Ports>,
    /// Offer permessage-deflate (see `--deflate`) and inflate what the server compresses.
    pub deflate: bool,
}

/// One connection's state: about 250 bytes while idle, no heap.
#[derive(Debug)]
pub struct Conn {
    sock: Option<Socket>,
    pub state: State,
    /// Bumped whenever the slot gets a new socket, so stale events and deadlines are ignored.
    gen: u32,
    epollout: bool,
    dirty: bool,
    doomed: bool,
    /// The server started the close: the connection ends as failed.
    unexpected: bool,
    /// CLOCK_MONOTONIC ns when the TCP connect started.
    pub started_ns: u64,
    reader: FrameReader,
    out: Vec<u8>,
    handshake: Option<Box<Handshake>>,
    /// permessage-deflate agreed: whether the server keeps context, and then this
    /// connection's inflater (made at its first compressed message).
    inflate: Option<Inflate>,
}

/// A connection's receive side of permessage-deflate.
#[derive(Debug)]
struct Inflate {
    /// The server keeps context between messages: the inflater must too.
    takeover: bool,
    own: Option<Box<Decompress>>,
}

#[derive(Debug)]
struct Handshake {
    key: [u8; 24],
    response: Vec<u8>,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            sock: None,
            state: State::Free,
            gen: 0,
            epollout: false,
            dirty: false,
            doomed: false,
            unexpected: false,
            started_ns: 0,
            reader: FrameReader::default(),
            out: Vec::new(),
            handshake: None,
            inflate: None,
        }
    }
}

#[derive(Debug)]
pub struct Driver {
    epoll: Epoll,
    pub conns: Vec<Conn>,
    cfg: Config,
    rules: DecodeRules,
    dirty: Vec<u32>,
    doomed: Vec<(u32, End)>,
    /// (slot, gen, deadline) of connections in setup and in closing, in deadline order (every
    /// entry of a queue has the same timeout, so start order is deadline order).
    setup_deadlines: VecDeque<(u32, u32, u64)>,
    close_deadlines: VecDeque<(u32, u32, u64)>,
    pub rng: Xorshift,
    pub errors: Errors,
    /// Connections in Connecting or Handshaking, in Closing or AwaitFin, in Open, and not Free.
    pub in_setup: usize,
    pub closing: usize,
    pub open: usize,
    pub live: usize,
    pub closed_clean: u64,
    pub closed_unclean: u64,
    /// Connections that reached Open, and that ended failed, since the start.
    pub opened_total: u64,
    pub failed_total: u64,
    rbuf: Vec<u8>,
    /// Inflated messages, and the inflater every connection whose server keeps no context uses
    /// (reset after each message).
    inflated: Vec<u8>,
    fresh: Option<Box<Decompress>>,
}

impl Driver {
    pub fn new(cfg: Config, slots: usize, seed: u64) -> io::Result<Driver> {
        Ok(Driver {
            epoll: Epoll::new(1024)?,
            conns: (0..slots).map(|_| Conn::new()).collect(),
            rules: DecodeRules { expect_masked: cfg.raw, max_frame_size: MAX_FRAME },
            cfg,
            dirty: Vec::new(),
            doomed: Vec::new(),
            setup_deadlines: VecDeque::new(),
            close_deadlines: VecDeque::new(),
            rng: Xorshift::new(seed),
            errors: Errors::default(),
            in_setup: 0,
            closing: 0,
            open: 0,
            live: 0,
            closed_clean: 0,
            closed_unclean: 0,
            opened_total: 0,
            failed_total: 0,
            rbuf: vec![0; READ_BUF],
            inflated: Vec::new(),
            fresh: None,
        })
    }

    #[inline]
    pub fn is_open(&self, id: usize) -> bool {
        self.conns[id].state == State::Open && !self.conns[id].doomed
    }

    /// Bytes queued on `id` and not yet accepted by the kernel.
    pub fn unsent(&self, id: usize) -> usize {
        self.conns[id].out.len()
    }

    fn set_state(&mut self, id: usize, to: State) {
        let from = std::mem::replace(&mut self.conns[id].state, to);
        let setup = |s| matches!(s, State::Connecting | State::Handshaking);
        self.in_setup = self.in_setup + usize::from(setup(to)) - usize::from(setup(from));
        let closing = |s| matches!(s, State::Closing | State::AwaitFin);
        self.closing = self.closing + usize::from(closing(to)) - usize::from(closing(from));
        self.open = self.open + usize::from(to == State::Open) - usize::from(from == State::Open);
        self.live = self.live + usize::from(to != State::Free) - usize::from(from != State::Free);
        self.opened_total += u64::from(to == State::Open && from != State::Open);
    }

    fn token(&self, id: usize) -> u64 {
        (u64::from(self.conns[id].gen) << 32) | id as u64
    }

    /// Starts a connection in free slot `id`; `g` (its global index) picks the source address.
    /// Failures are counted and end the slot through `on_end` at the next poll.
    pub fn connect(&mut self, id: usize, g: u64, now: u64) {
        debug_assert_eq!(self.conns[id].state, State::Free);
        let c = &mut self.conns[id];
        c.gen = c.gen.wrapping_add(1);
        c.started_ns = now;
        let mut attempt = 0;
        let sock = loop {
            let source = source_for(g, &self.cfg.source_addrs, self.cfg.ports, attempt);
            match sys::start_connect(source, self.cfg.target.addr) {
                Ok(sock) => break sock,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL))
                        && self.cfg.ports.is_some()
                        && attempt + 1 < PORT_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(e) => {
                    self.errors.io(&e, "connect");
                    self.doom(id, End::Failed);
                    return;
                }
            }
        };
        let fd = sock.as_raw_fd();
        self.conns[id].sock = Some(sock);
        self.set_state(id, State::Connecting);
        let token = self.token(id);
        if let Err(e) = self.epoll.add(fd, READABLE | WRITABLE, token) {
            self.errors.io(&e, "epoll_ctl");
            self.doom(id, End::Failed);
            return;
        }
        let gen = self.conns[id].gen;
        self.setup_deadlines.push_back((id as u32, gen, now + self.cfg.connect_timeout_ns));
    }

    /// Queues one masked frame on `id` (written at the end of the current event or poll).
    #[inline]
    pub fn send_frame(&mut self, id: usize, opcode: OpCode, payload: &[u8]) {
        let key = self.rng.mask();
        let c = &mut self.conns[id];
        write_frame(&mut c.out, true, opcode, Some(key), payload);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id as u32);
        }
    }

    /// Starts the close handshake on `id`: close frame 1000, then wait for the server's close
    /// and its FIN (bounded by --close-timeout). A connection still being set up is dropped.
    pub fn begin_close(&mut self, id: usize, now: u64) {
        let c = &self.conns[id];
        if c.doomed {
            return;
        }
        match c.state {
            State::Free | State::Closing | State::AwaitFin => {}
            State::Connecting | State::Handshaking => self.doom(id, End::Unclean),
            // A raw echo would only echo our close frame back and never send a FIN.
            State::Open if self.cfg.raw => self.doom(id, End::Clean),
            State::Open => {
                let mut payload = Vec::with_capacity(2);
                write_payload(&mut payload, CloseCode::NORMAL, "");
                self.send_frame(id, OpCode::Close, &payload);
                self.set_state(id, State::Closing);
                let gen = self.conns[id].gen;
                self.close_deadlines.push_back((id as u32, gen, now + self.cfg.close_timeout_ns));
            }
        }
    }

    /// Counts an error and ends the connection as failed.
    pub fn fail(&mut self, id: usize, kind: Kind, what: impl FnOnce() -> String) {
        if self.conns[id].doomed {
            return;
        }
        self.errors.count(kind, what);
        self.doom(id, End::Failed);
    }

    fn doom(&mut self, id: usize, end: End) {
        let c = &mut self.conns[id];
        if !c.doomed {
            c.doomed = true;
            self.doomed.push((id as u32, end));
        }
    }

    /// Waits for events up to `timeout_ns` (shortened to the next connect or close deadline),
    /// handles them, writes what they queued, and ends timed-out and failed connections.
    pub fn poll<B: Behavior>(&mut self, b: &mut B, timeout_ns: u64) -> io::Result<()> {
        self.flush_dirty();
        self.end_doomed(b);
        let now = sys::now_ns();
        let mut timeout = timeout_ns;
        for q in [&self.setup_deadlines, &self.close_deadlines] {
            if let Some(&(_, _, deadline)) = q.front() {
                timeout = timeout.min(deadline.saturating_sub(now));
            }
        }
        let mut n = 0;
        if self.cfg.spin_ns > 0 && timeout > 0 {
            let until = now + self.cfg.spin_ns.min(timeout);
            loop {
                n = self.epoll.wait(0)?;
                if n > 0 || sys::now_ns() >= until {
                    break;
                }
            }
        }
        if n == 0 {
            n = self.epoll.wait(timeout)?;
        }
        for i in 0..n {
            let (events, token) = self.epoll.event(i);
            self.handle(b, events, token);
            self.flush_dirty();
            self.end_doomed(b);
        }
        self.expire(sys::now_ns());
        self.end_doomed(b);
        Ok(())
    }

    /// Writes every connection with queued bytes (one `send` each).
    pub fn flush_dirty(&mut self) {
        while let Some(id) = self.dirty.pop() {
            self.flush(id as usize);
        }
    }

    fn flush(&mut self, id: usize) {
        let c = &mut self.conns[id];
        c.dirty = false;
        if c.doomed || c.out.is_empty() {
            return;
        }
        let Some(sock) = c.sock.as_ref() else { return };
        let mut sock: &Socket = sock;
        // socket2 sends with MSG_NOSIGNAL: a reset peer gives EPIPE, not SIGPIPE.
        match sock.write(&c.out) {
            Ok(n) if n == c.out.len() => {
                c.out.clear();
                if c.epollout {
                    c.epollout = false;
                    self.interest(id, READABLE);
                }
            }
            Ok(n) => {
                c.out.drain(..n);
                self.want_write(id);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.want_write(id),
            Err(e) => {
                self.errors.io(&e, "send");
                self.doom(id, End::Failed);
            }
        }
    }

    fn want_write(&mut self, id: usize) {
        if !self.conns[id].epollout {
            self.conns[id].epollout = true;
            self.interest(id, READABLE | WRITABLE);
        }
    }

    fn interest(&mut self, id: usize, interest: u32) {
        let Some(fd) = self.conns[id].sock.as_ref().map(|s| s.as_raw_fd()) else { return };
        let token = self.token(id);
        if let Err(e) = self.epoll.modify(fd, interest, token) {
            self.errors.io(&e, "epoll_ctl");
            self.doom(id, End::Failed);
        }
    }

    fn handle<B: Behavior>(&mut self, b: &mut B, events: u32, token: u64) {
        let id = (token & 0xffff_ffff) as usize;
        let c = &self.conns[id];
        if c.gen != (token >> 32) as u32 || c.sock.is_none() || c.doomed {
            return;
        }
        let now = sys::now_ns();
        if c.state == State::Connecting {
            self.connected(id, events);
            return;
        }
        if events & WRITABLE != 0 {
            self.flush(id);
        }
        let hangup = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;
        if events & (READABLE | hangup) != 0 {
            self.readable(b, id, now);
        }
    }

    fn connected(&mut self, id: usize, events: u32) {
        let sock = self.conns[id].sock.as_ref().expect("connecting has a socket");
        match sock.take_error() {
            Ok(None) if events & WRITABLE != 0 => {}
            Ok(None) => return,
            Ok(Some(e)) | Err(e) => {
                self.errors.io(&e, "connect");
                self.doom(id, End::Failed);
                return;
            }
        }
        self.interest(id, READABLE);
        let key = generate_key();
        let t = &self.cfg.target;
        let c = &mut self.conns[id];
        let offer = self.cfg.deflate.then(|| DeflateOffer::default().header_value());
        let headers: Vec<(&str, &str)> =
            offer.iter().map(|v| ("Sec-WebSocket-Extensions", v.as_str())).collect();
        write_client_request(&t.host, &t.path, &key, &[], &headers, &mut c.out);
        c.handshake = Some(Box::new(Handshake { key, response: Vec::with_capacity(256) }));
        self.set_state(id, State::Handshaking);
        self.flush(id);
    }

    fn readable<B: Behavior>(&mut self, b: &mut B, id: usize, now: u64) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        for _ in 0..READS_PER_EVENT {
            let Some(sock) = self.conns[id].sock.as_ref() else { break };
            let mut sock: &Socket = sock;
            let n = match sock.read(&mut rbuf) {
                Ok(0) => {
                    self.eof(id);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.errors.io(&e, "recv");
                    self.doom(id, End::Failed);
                    break;
                }
            };
            let go_on = if self.conns[id].state == State::Handshaking {
                self.handshake_bytes(b, id, &mut rbuf[..n], now)
            } else {
                self.frames(b, id, &mut rbuf[..n], now)
            };
            if !go_on || n < rbuf.len() || self.conns[id].doomed {
                break;
            }
        }
        self.rbuf = rbuf;
    }

    fn handshake_bytes<B: Behavior>(
        &mut self,
        b: &mut B,
        id: usize,
        bytes: &mut [u8],
        now: u64,
    ) -> bool {
        let hs = self.conns[id].handshake.as_mut().expect("handshaking has its key");
        hs.response.extend_from_slice(bytes);
        match parse_response(&hs.response, &hs.key, &[]) {
            Ok(None) => true,
            Err(e) => {
                let status = hs.response.split(|&c| c == b'\r').next().unwrap_or_default();
                let status = String::from_utf8_lossy(status).into_owned();
                self.fail(id, Kind::Handshake, || format!("upgrade failed: {e} ({status:?})"));
                false
            }
            Ok(Some(accepted)) => {
                let mut hs = self.conns[id].handshake.take().expect("checked above");
                if self.cfg.deflate {
                    match DeflateOffer::default().accept(accepted.extensions.as_deref()) {
                        Ok(agreed) => {
                            let c = &mut self.conns[id];
                            c.reader.deflate = agreed.is_some();
                            c.inflate = agreed.map(|p| Inflate {
                                takeover: !p.server_no_context_takeover,
                                own: None,
                            });
                        }
                        Err(e) => {
                            self.fail(id, Kind::Handshake, || format!("permessage-deflate: {e}"));
                            return false;
                        }
                    }
                }
                self.set_state(id, State::Open);
                b.on_open(self, id, now);
                let rest = &mut hs.response[accepted.head_len..];
                rest.is_empty() || self.frames(b, id, rest, now)
            }
        }
    }

    fn frames<B: Behavior>(&mut self, b: &mut B, id: usize, bytes: &mut [u8], now: u64) -> bool {
        let mut reader = std::mem::take(&mut self.conns[id].reader);
        let rules = self.rules;
        let result = reader.feed(bytes, rules, B::CAPTURE, |f| self.frame(b, id, f, now));
        self.conns[id].reader = reader;
        match result {
            Ok(go_on) => go_on,
            Err(e) => {
                self.fail(id, Kind::Protocol, || format!("protocol error from the server: {e}"));
                false
            }
        }
    }

    fn frame<B: Behavior>(&mut self, b: &mut B, id: usize, f: Frame<'_>, now: u64) -> bool {
        if self.conns[id].doomed {
            return false;
        }
        match f.opcode {
            OpCode::Close => self.close_frame(id, f.payload.unwrap_or_default(), now),
            OpCode::Ping => {
                if self.conns[id].state == State::Open {
                    self.send_frame(id, OpCode::Pong, f.payload.unwrap_or_default());
                }
                true
            }
            _ if f.compressed => {
                let mut out = std::mem::take(&mut self.inflated);
                out.clear();
                match self.inflate(id, f.payload.unwrap_or_default(), &mut out) {
                    Ok(()) => {
                        let payload = Some(&out[..]);
                        let inflated = Frame { len: out.len() as u64, payload, ..f };
                        b.on_message(self, id, inflated, now);
                    }
                    Err(why) => self.fail(id, Kind::Protocol, || why),
                }
                self.inflated = out;
                !self.conns[id].doomed
            }
            _ => {
                b.on_message(self, id, f, now);
                !self.conns[id].doomed
            }
        }
    }

    /// Inflates one compressed message of `id` (RFC 7692 section 7.2.2: the payload with the
    /// `00 00 ff ff` tail put back) into `out`, at most [`MAX_FRAME`] bytes.
    fn inflate(&mut self, id: usize, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let Some(state) = self.conns[id].inflate.as_mut() else {
            return Err("a compressed message without permessage-deflate".into());
        };
        let takeover = state.takeover;
        let z = if takeover { &mut state.own } else { &mut self.fresh };
        let z = z.get_or_insert_with(|| Box::new(Decompress::new(false)));
        let result = (|| {
            for mut input in [payload, &[0, 0, 0xff, 0xff][..]] {
                loop {
                    if out.len() == out.capacity() {
                        out.reserve((out.len() + input.len() * 2).max(4096));
                    }
                    let before = z.total_in();
                    let status = z
                        .decompress_vec(input, out, FlushDecompress::Sync)
                        .map_err(|e| format!("compressed message does not inflate: {e}"))?;
                    input = &input[(z.total_in() - before) as usize..];
                    if out.len() as u64 > MAX_FRAME {
                        return Err(format!("an inflated message over {MAX_FRAME} bytes"));
                    }
                    // Done with this input once it is used up and zlib left room unfilled.
                    if status == Status::StreamEnd
                        || (input.is_empty() && out.len() < out.capacity())
                    {
                        break;
                    }
                }
            }
            Ok(())
        })();
        if !takeover || result.is_err() {
            z.reset(false);
        }
        result
    }

    fn close_frame(&mut self, id: usize, payload: &[u8], now: u64) -> bool {
        let (code, reason) = match parse_payload(payload) {
            Ok(Some(cf)) => (cf.code.0, cf.reason),
            Ok(None) => (1005, ""),
            Err(e) => {
                self.fail(id, Kind::Protocol, || format!("bad close frame from the server: {e}"));
                return false;
            }
        };
        match self.conns[id].state {
            State::Open => {
                self.errors.unexpected_close(code, reason);
                self.conns[id].unexpected = true;
                // Answer with the same code (section 5.5.1), then wait for the FIN.
                let reply = if CloseCode(code).is_sendable() { code } else { 1000 };
                let mut echo = Vec::with_capacity(2);
                write_payload(&mut echo, CloseCode(reply), "");
                self.send_frame(id, OpCode::Close, &echo);
                self.set_state(id, State::AwaitFin);
                let gen = self.conns[id].gen;
                self.close_deadlines.push_back((id as u32, gen, now + self.cfg.close_timeout_ns));
                true
            }
            State::Closing => {
                self.set_state(id, State::AwaitFin);
                true
            }
            _ => {
                self.fail(id, Kind::Protocol, || "a second close frame from the server".into());
                false
            }
        }
    }

    fn eof(&mut self, id: usize) {
        let c = &self.conns[id];
        match c.state {
            State::AwaitFin if c.unexpected => self.doom(id, End::Failed),
            State::AwaitFin => self.doom(id, End::Clean),
            State::Closing => {
                // RFC 6455 section 7.1.1: the server answers our close before its FIN.
                self.errors.unexpected_close(1006, "");
                self.doom(id, End::Unclean);
            }
            State::Handshaking => self.fail(id, Kind::Handshake, || {
                "the server closed the connection during the upgrade".into()
            }),
            _ => {
                self.errors.unexpected_close(1006, "");
                self.doom(id, End::Failed);
            }
        }
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(id, gen, deadline)) = self.setup_deadlines.front() {
            if deadline > now {
                break;
            }
            self.setup_deadlines.pop_front();
            let (id, c) = (id as usize, &self.conns[id as usize]);
            if c.gen == gen && matches!(c.state, State::Connecting | State::Handshaking) {
                let phase = if c.state == State::Connecting { "TCP connect" } else { "upgrade" };
                self.fail(id, Kind::Timeout, || {
                    format!("{phase} not done within --connect-timeout")
                });
            }
        }
        while let Some(&(id, gen, deadline)) = self.close_deadlines.front() {
            if deadline > now {
                break;
            }
            self.close_deadlines.pop_front();
            let (id, c) = (id as usize, &self.conns[id as usize]);
            if c.gen == gen && matches!(c.state, State::Closing | State::AwaitFin) && !c.doomed {
                let what = if c.state == State::Closing {
                    "no close frame from the server within --close-timeout"
                } else {
                    "no FIN from the server within --close-timeout of its close frame"
                };
                self.errors.count(Kind::Timeout, || what.to_string());
                let end = if c.unexpected { End::Failed } else { End::Unclean };
                self.doom(id, end);
            }
        }
    }

    /// Ends every doomed connection: closes its socket, frees the slot, tells the behavior.
    pub fn end_doomed<B: Behavior>(&mut self, b: &mut B) {
        while let Some((id, end)) = self.doomed.pop() {
            let id = id as usize;
            let c = &mut self.conns[id];
            // Dropping the socket closes it, which also removes it from the epoll set.
            c.sock = None;
            c.doomed = false;
            c.unexpected = false;
            c.epollout = false;
            c.dirty = false;
            c.reader = FrameReader::default();
            c.out.clear();
            c.handshake = None;
            c.gen = c.gen.wrapping_add(1);
            self.set_state(id, State::Free);
            match end {
                End::Clean => self.closed_clean += 1,
                End::Unclean => self.closed_unclean += 1,
                End::Failed => self.failed_total += 1,
            }
            b.on_end(self, id, end, sys::now_ns());
        }
    }

    /// Fails every connection still connecting or upgrading, as a timeout.
    pub fn fail_in_setup(&mut self, why: &str) {
        for id in 0..self.conns.len() {
            if matches!(self.conns[id].state, State::Connecting | State::Handshaking) {
                self.fail(id, Kind::Timeout, || why.to_string());
            }
        }
    }

    /// Drops every connection left, counting close timeouts for those closing.
    pub fn abandon_all<B: Behavior>(&mut self, b: &mut B, why: &str) {
        for id in 0..self.conns.len() {
            let c = &self.conns[id];
            if c.state != State::Free && !c.doomed {
                if matches!(c.state, State::Closing | State::AwaitFin) {
                    self.errors.count(Kind::Timeout, || why.to_string());
                }
                self.doom(id, End::Unclean);
            }
        }
        self.end_doomed(b);
    }
}
