//! Socket-free tests of the worker: a fake backend with scripted reads, a peer that reads only
//! as much as the test lets it, and an injected clock. Each test drives [`turn`] step by step;
//! nothing sleeps and nothing touches a socket.

use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use ringside_proto::deflate::{DeflateOffer, DeflateParams};
use ringside_proto::frame::{self, OpCode};
use ringside_proto::handshake::{generate_key, parse_response, write_client_request};
use ringside_proto::{CloseCode, Config, Connection, Event, Message, Role};

use super::{turn, Core};
use crate::api::{ConnId, Handler, SendStatus, Upgrade, Upgrading};
use crate::config::{Compression, Settings, SlowConsumer, TopicPolicy, TopicRule};
use crate::runtime::backend::{Backend, Driver, Out, SendQueue, Waker};
use crate::runtime::handle::{Ctx, WebSocket};
use crate::runtime::{Command, Shared, WorkerStats};
use crate::server::Sender;

/// What the fake backend was asked to do, and what it will report.
#[derive(Default)]
pub(super) struct Fake {
    /// Events for the next poll, in order.
    pub(super) script: VecDeque<Ev>,
    /// Bytes each connection's peer has read (what the server sent).
    pub(super) sent: HashMap<usize, Vec<u8>>,
    /// How many more bytes each peer reads before it stops reading (absent: unlimited).
    pub(super) window: HashMap<usize, usize>,
    /// Connections with a send that did not finish (the peer stopped reading).
    pub(super) stalled: Vec<usize>,
    pub(super) reading: HashMap<usize, bool>,
    pub(super) closed: Vec<(usize, bool)>,
    /// Ids to release at the next poll.
    pub(super) releasing: Vec<usize>,
    pub(super) accepting: bool,
    pub(super) timeouts: Vec<Duration>,
    /// Every connection flushed, in order.
    pub(super) flushes: Vec<usize>,
    /// Wall time each flush takes (a real send to a peer costs microseconds).
    pub(super) flush_delay: Duration,
    /// Connections whose replies the worker wanted written through after a read, with the
    /// bytes queued then.
    pub(super) written_through: Vec<(usize, usize)>,
}

pub(super) enum Ev {
    Accept(SocketAddr),
    Data(usize, Vec<u8>),
    Hangup(usize),
}

impl Fake {
    fn new() -> Self {
        Fake { accepting: true, ..Fake::default() }
    }

    /// Sends as much of `queue` as the peer's window takes.
    fn push_out(&mut self, id: usize, queue: &mut SendQueue) -> bool {
        // Like epoll: each loan lasts one write.
        while let Some(loan) = queue.begin() {
            let bytes: Vec<u8> = match queue.in_flight() {
                Some(Out::Buf(b)) => b.to_vec(),
                Some(Out::Msg(msg)) => iov_bytes(msg),
                None => Vec::new(),
            };
            let window = self.window.get(&id).copied().unwrap_or(usize::MAX);
            let n = bytes.len().min(window);
            if let Some(w) = self.window.get_mut(&id) {
                *w -= n;
            }
            self.sent.entry(id).or_default().extend_from_slice(&bytes[..n]);
            if !queue.complete(loan, n) && n == 0 {
                return false;
            }
        }
        queue.in_flight().is_none()
    }
}

/// The bytes a `msghdr` describes.
fn iov_bytes(msg: &libc::msghdr) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..msg.msg_iovlen {
        // SAFETY: the queue keeps the iovec array and the buffers it points into alive and
        // unmoved while the send is in flight, which it is while we hold `msg`.
        let v = unsafe { &*msg.msg_iov.add(i) };
        // SAFETY: as above; each iovec describes `iov_len` initialised bytes.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
        });
    }
    out
}

impl Backend for Fake {
    fn poll(&mut self, driver: &mut dyn Driver, timeout: Duration) -> io::Result<()> {
        self.timeouts.push(timeout);
        for id in std::mem::take(&mut self.releasing) {
            driver.on_released(id);
        }
        // Stalled sends finish when the peer's window opened.
        for id in std::mem::take(&mut self.stalled) {
            if let Some(queue) = driver.queue(id) {
                let mut q = std::mem::take(queue);
                let done = self.push_out(id, &mut q);
                *driver.queue(id).unwrap() = q;
                if done {
                    driver.on_sent(id);
                } else {
                    self.stalled.push(id);
                }
            }
        }
        while let Some(ev) = self.script.pop_front() {
            match ev {
                Ev::Accept(peer) => {
                    if self.accepting {
                        if let Some(id) = driver.on_accept(Some(peer)) {
                            // A new connection in a reused id is a new socket.
                            self.sent.remove(&id);
                            self.window.remove(&id);
                            self.reading.remove(&id);
                            self.stalled.retain(|&s| s != id);
                        }
                    }
                }
                Ev::Data(id, mut bytes) => {
                    if self.reading.get(&id).copied().unwrap_or(true) {
                        let held = driver.on_data(id, &mut bytes, true, &mut |id, queue| {
                            self.written_through.push((id, queue.len()));
                            self.flush(id, queue);
                        });
                        // Every send of this backend is over when `flush` returns.
                        assert!(!held, "a synchronous backend was asked to keep a buffer");
                        // The driver settled what borrowed from the buffer: reusing it must
                        // change nothing queued.
                        bytes.fill(0xEE);
                    } else {
                        // Paused: it waits in the kernel, like a real socket's.
                        self.script.push_front(Ev::Data(id, bytes));
                        break;
                    }
                }
                Ev::Hangup(id) => driver.on_hangup(id),
            }
        }
        Ok(())
    }

    fn flush(&mut self, id: usize, queue: &mut SendQueue) {
        self.flushes.push(id);
        if !self.flush_delay.is_zero() {
            std::thread::sleep(self.flush_delay);
        }
        if self.stalled.contains(&id) {
            return;
        }
        if !self.push_out(id, queue) {
            self.stalled.push(id);
        }
    }

    fn set_reading(&mut self, id: usize, reading: bool) {
        self.reading.insert(id, reading);
    }

    fn close(&mut self, id: usize, hard: bool) {
        self.closed.push((id, hard));
        if !self.releasing.contains(&id) {
            self.releasing.push(id);
        }
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    fn name(&self) -> &'static str {
        "fake"
    }
}

/// A worker on the fake backend with its clock, and a client-side protocol state per
/// connection to read what the server sent.
pub(super) struct Rig<H: Handler> {
    pub(super) core: Core<H>,
    pub(super) fake: Fake,
    pub(super) inbox: Receiver<Command>,
    pub(super) shared: Arc<Shared>,
    pub(super) now: u64,
    pub(super) clients: HashMap<usize, (Connection, usize)>,
}

pub(super) fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 40000 + u16::from(n)))
}

impl<H: Handler> Rig<H> {
    pub(super) fn new(settings: Settings, handler: H) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            wakers: vec![Waker::new().unwrap()],
            wake_pending: vec![AtomicBool::new(false)],
            inboxes: vec![tx],
            stats: vec![WorkerStats::default()],
            metrics: crate::metrics::WorkerMetrics::for_workers(1),
            exited: Default::default(),
            handler: TypeId::of::<H>(),
            bus: None,
            bus_gaps: Default::default(),
            bus_lost: Default::default(),
            tls: None,
        });
        let core = Core::new(0, handler, settings, Arc::clone(&shared));
        Rig { core, fake: Fake::new(), inbox: rx, shared, now: 0, clients: HashMap::new() }
    }

    /// One loop iteration at the current fake time.
    pub(super) fn turn(&mut self) -> bool {
        self.core.set_now(self.now);
        turn(&mut self.core, &mut self.fake, &self.inbox).unwrap()
    }

    /// Advances the clock by `ms`, one iteration per 10 ms.
    pub(super) fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 10).min(end);
            self.turn();
        }
    }

    /// Accepts a connection (id returned) without upgrading it.
    pub(super) fn accept(&mut self, from: SocketAddr) -> usize {
        // Counted by generations: a release in the same turn may keep the slab's length.
        let before = self.core.generation;
        self.fake.script.push_back(Ev::Accept(from));
        self.turn();
        assert_eq!(self.core.generation, before.wrapping_add(1), "accepted");
        self.core
            .conns
            .iter()
            .map(|(id, _)| id)
            .max_by_key(|&id| self.core.conns[id].io.generation)
            .unwrap()
    }

    pub(super) fn data(&mut self, id: usize, bytes: &[u8]) {
        self.fake.script.push_back(Ev::Data(id, bytes.to_vec()));
        self.turn();
    }

    /// Accepts and upgrades a connection to `path`; returns its id.
    pub(super) fn open(&mut self, from: SocketAddr, path: &str) -> usize {
        let id = self.accept(from);
        let mut req = Vec::new();
        write_client_request("test", path, &generate_key(), &[], &[], &mut req);
        self.data(id, &req);
        let sent = self.take_sent(id);
        assert!(sent.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&sent));
        let end = sent.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut client = Connection::new(Role::Client, Config::default());
        let mut rest = sent[end..].to_vec();
        let _ = client.read(&mut rest);
        self.clients.insert(id, (client, 0));
        id
    }

    pub(super) fn take_sent(&mut self, id: usize) -> Vec<u8> {
        self.fake.sent.remove(&id).unwrap_or_default()
    }

    /// The messages (and closes, as "close CODE") the client of `id` received since last asked.
    pub(super) fn received(&mut self, id: usize) -> Vec<String> {
        let mut bytes = self.take_sent(id);
        let (client, _) = self.clients.get_mut(&id).expect("an upgraded connection");
        let mut out = Vec::new();
        let mut pos = 0;
        while let Ok((n, Some(event))) = client.read(&mut bytes[pos..]) {
            pos += n;
            out.push(match event {
                Event::Message(Message::Text(t)) => t.to_owned(),
                Event::Message(Message::Binary(b)) => format!("binary {}", b.len()),
                Event::Ping(p) => format!("ping {}", String::from_utf8_lossy(p)),
                Event::Pong(p) => format!("pong {}", String::from_utf8_lossy(p)),
                Event::Close(f) => format!("close {}", f.map_or(1005, |f| f.code.0)),
            });
        }
        out
    }

    /// A masked client frame.
    pub(super) fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::write_frame(&mut out, true, opcode, Some([1, 2, 3, 4]), payload);
        out
    }

    pub(super) fn text(&mut self, id: usize, text: &str) {
        let f = Self::frame(OpCode::Text, text.as_bytes());
        self.data(id, &f);
    }

    pub(super) fn sender(&self) -> Sender {
        Sender::new(Arc::clone(&self.shared))
    }

    pub(super) fn id_of(&self, slot: usize) -> ConnId {
        self.core.local.id(slot, &self.core.conns[slot].io)
    }
}

/// Echoes, records callbacks, and obeys a few commands: "timer MS TOKEN", "close".
#[derive(Default)]
struct App {
    log: Vec<String>,
    ticks: u32,
}

#[derive(Default, Debug)]
struct Session {
    user: String,
    messages: u32,
}

impl Handler for App {
    type Conn = Session;

    fn on_upgrade(&mut self, req: &Upgrading<'_>) -> Upgrade<Session> {
        match req.query().and_then(|q| q.strip_prefix("user=")) {
            Some(user) => Upgrade::Accept(Session { user: user.into(), messages: 0 }),
            None if req.path() == "/anon" => Upgrade::Accept(Session::default()),
            None => Upgrade::Reject(401),
        }
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, Session>) {
        self.log.push(format!("open {} {} {}", ws.data().user, ws.peer_addr(), ws.path()));
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Session>, msg: Message<'_>) {
        ws.data_mut().messages += 1;
        if let Message::Binary(b) = msg {
            // Echoed as it came: a large one borrows from the receive buffer.
            let _ = ws.send_binary(b);
            return;
        }
        let Message::Text(t) = msg else { return };
        if let Some(rest) = t.strip_prefix("timer ") {
            let (ms, token) = rest.split_once(' ').unwrap();
            ws.set_timer(Duration::from_millis(ms.parse().unwrap()), token.parse().unwrap());
        } else if t == "close" {
            ws.close(CloseCode::NORMAL, "asked");
        } else {
            let reply = format!("{}: {t}", ws.data().user);
            let _ = ws.send_text(&reply);
        }
    }

    fn on_ping(&mut self, ws: &mut WebSocket<'_, Session>, payload: &[u8]) {
        self.log.push(format!("ping {} {}", ws.data().user, payload.len()));
    }

    fn on_pong(&mut self, ws: &mut WebSocket<'_, Session>, payload: &[u8]) {
        self.log.push(format!("pong {} {}", ws.data().user, payload.len()));
    }

    fn on_timer(&mut self, ws: &mut WebSocket<'_, Session>, token: u64) {
        self.log.push(format!("timer {} {token}", ws.data().user));
        let _ = ws.send_text(&format!("timer {token}"));
    }

    fn on_drain(&mut self, ws: &mut WebSocket<'_, Session>) {
        self.log.push(format!("drain {}", ws.data().user));
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_, Session>) {
        self.ticks += 1;
        let _ = ctx;
    }

    fn on_close(&mut self, ws: &mut WebSocket<'_, Session>, code: CloseCode, _reason: &str) {
        self.log.push(format!("close {} {} after {}", ws.data().user, code.0, ws.data().messages));
    }
}

fn settings() -> Settings {
    Settings::default()
}

#[test]
fn connection_data_lives_from_upgrade_to_close() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.open(peer(7), "/feed?user=ann");
    rig.text(id, "hello");
    rig.text(id, "again");
    assert_eq!(rig.received(id), ["ann: hello", "ann: again"]);
    rig.data(id, &Rig::<App>::frame(OpCode::Close, &1000u16.to_be_bytes()));
    assert_eq!(rig.received(id), ["close 1000"]);
    assert_eq!(rig.core.handler.log, ["open ann 127.0.0.7:40007 /feed", "close ann 1000 after 2"]);
    rig.turn();
    assert!(rig.core.conns.get(id).is_none(), "released after the close");
}

#[test]
fn large_replies_are_written_through_after_their_read_small_ones_stay_corked() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.open(peer(7), "/feed?user=ann");
    rig.fake.written_through.clear();
    rig.text(id, "small");
    assert_eq!(rig.received(id), ["ann: small"]);
    assert!(rig.fake.written_through.is_empty(), "a 11-byte reply waits for the flush");
    let big = "x".repeat(8000);
    rig.text(id, &big);
    assert_eq!(rig.received(id), [format!("ann: {big}")]);
    assert_eq!(rig.fake.written_through, [(id, 4 + 5 + 8000)], "header and payload at once");
    // A reply behind one still waiting on the peer waits for the flush, in order.
    rig.fake.written_through.clear();
    rig.fake.window.insert(id, 10);
    rig.text(id, &big);
    rig.text(id, &big);
    assert_eq!(rig.fake.written_through, [(id, 8009)], "only while nothing is in flight");
    rig.fake.window.remove(&id);
    rig.turn();
    assert_eq!(rig.received(id), [format!("ann: {big}"), format!("ann: {big}")]);
}

#[test]
fn a_large_echo_leaves_from_the_receive_buffer_and_what_the_socket_left_is_kept() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.open(peer(7), "/feed?user=ann");
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut echo = vec![0x82, 126, 0x4e, 0x20];
    echo.extend_from_slice(&payload);
    // The socket takes it all: header and payload in one write, the payload from where the
    // read put it (the fake then overwrites that buffer: nothing may still point into it).
    rig.fake.written_through.clear();
    rig.data(id, &Rig::<App>::frame(OpCode::Binary, &payload));
    assert_eq!(rig.fake.written_through, [(id, echo.len())]);
    assert!(rig.take_sent(id) == echo, "the echo, byte for byte");

    // Two in one read, and the socket takes 1,000 bytes: the rest (of the first frame's
    // payload, the second's header and payload) is copied before the buffer goes back.
    let mut two = Rig::<App>::frame(OpCode::Binary, &payload);
    two.extend_from_slice(&Rig::<App>::frame(OpCode::Binary, &payload));
    rig.fake.window.insert(id, 1000);
    rig.data(id, &two);
    assert_eq!(rig.take_sent(id).len(), 1000);
    rig.fake.window.remove(&id);
    rig.turn();
    let mut sent = echo[..1000].to_vec();
    sent.extend_from_slice(&rig.take_sent(id));
    assert!(sent == [&echo[..], &echo[..]].concat(), "both echoes whole, in order");

    // A small one is copied and corked as before; a payload that is not in the read (a
    // reply the handler built) is copied.
    rig.data(id, &Rig::<App>::frame(OpCode::Binary, &payload[..100]));
    assert_eq!(rig.received(id), ["binary 100"]);
    let big = "y".repeat(5000);
    rig.text(id, &big);
    assert_eq!(rig.received(id), [format!("ann: {big}")]);
}

#[test]
fn refused_upgrade_gets_its_status_and_no_callbacks() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.accept(peer(1));
    let mut req = Vec::new();
    write_client_request("test", "/private", &generate_key(), &[], &[], &mut req);
    rig.data(id, &req);
    let sent = rig.take_sent(id);
    assert!(sent.starts_with(b"HTTP/1.1 401"), "{}", String::from_utf8_lossy(&sent));
    assert!(rig.core.handler.log.is_empty());
    assert_eq!(rig.fake.closed, [(id, false)]);
}

#[test]
fn the_request_may_arrive_split_at_every_byte() {
    let mut req = Vec::new();
    write_client_request("test", "/?user=bo", &generate_key(), &[], &[], &mut req);
    req.extend_from_slice(&Rig::<App>::frame(OpCode::Text, b"hi"));
    for split in 1..req.len() {
        let mut rig = Rig::new(settings(), App::default());
        let id = rig.accept(peer(2));
        rig.data(id, &req[..split]);
        rig.data(id, &req[split..]);
        let sent = rig.take_sent(id);
        assert!(sent.starts_with(b"HTTP/1.1 101"), "split {split}");
        assert!(sent.ends_with(b"bo: hi"), "split {split}: the pipelined frame is answered");
    }
}

#[test]
fn a_trickled_head_over_the_limit_gets_431() {
    let mut rig = Rig::new(Settings { max_head_bytes: 1024, ..settings() }, App::default());
    let id = rig.accept(peer(3));
    rig.data(id, b"GET / HTTP/1.1\r\n");
    for _ in 0..100 {
        rig.data(id, b"X-Filler: 0123456789\r\n");
    }
    let sent = rig.take_sent(id);
    assert!(sent.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&sent));
}

#[test]
fn fin_with_the_last_data_still_delivers_it() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.open(peer(4), "/?user=cy");
    rig.fake.script.push_back(Ev::Data(id, Rig::<App>::frame(OpCode::Text, b"last")));
    rig.fake.script.push_back(Ev::Hangup(id));
    rig.turn();
    assert_eq!(rig.received(id), ["cy: last"]);
    assert_eq!(rig.core.handler.log.last().unwrap(), "close cy 1006 after 1");
}

#[test]
fn handshake_timeout_drops_a_slow_client() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.accept(peer(5));
    rig.data(id, b"GET / HTTP/1.1\r\n");
    rig.advance(9_900);
    assert!(rig.fake.closed.is_empty());
    rig.advance(400);
    assert_eq!(rig.fake.closed, [(id, true)]);
}

#[test]
fn idle_connections_are_pinged_then_closed() {
    let s = Settings { idle_timeout: Duration::from_secs(10), ..settings() };
    let mut rig = Rig::new(s, App::default());
    let id = rig.open(peer(6), "/?user=di");
    rig.advance(5_300);
    assert_eq!(rig.received(id), ["ping "]);
    rig.advance(5_000);
    assert_eq!(rig.received(id), ["close 1000"]);
    // The peer never answers the close: the close timeout drops TCP.
    rig.advance(5_300);
    assert!(rig.fake.closed.contains(&(id, true)), "{:?}", rig.fake.closed);
    assert_eq!(rig.core.handler.log.last().unwrap(), "close di 1006 after 0");
}

#[test]
fn ping_and_pong_reach_their_hooks() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.open(peer(8), "/?user=ed");
    rig.data(id, &Rig::<App>::frame(OpCode::Ping, b"abc"));
    rig.data(id, &Rig::<App>::frame(OpCode::Pong, b"12"));
    assert_eq!(rig.received(id), ["pong abc"], "the automatic pong");
    assert_eq!(rig.core.handler.log[1..], ["ping ed 3", "pong ed 2"]);
}

#[test]
fn high_water_pauses_reading_and_drain_resumes_it() {
    let s = Settings { send_high_water: 1000, send_limit: 100_000, ..settings() };
    let mut rig = Rig::new(s, App::default());
    let id = rig.open(peer(9), "/?user=fi");
    rig.fake.window.insert(id, 0);
    let big = "x".repeat(600);
    rig.text(id, &big);
    rig.text(id, &big);
    assert_eq!(rig.fake.reading.get(&id), Some(&false), "paused over the high-water mark");
    assert_eq!(rig.core.conns[id].io.queue.len(), 2 * (600 + 8));
    rig.fake.window.insert(id, usize::MAX);
    rig.turn();
    rig.turn();
    assert_eq!(rig.fake.reading.get(&id), Some(&true), "resumed");
    assert!(rig.core.handler.log.contains(&"drain fi".to_owned()));
    assert_eq!(rig.received(id).len(), 2);
}

#[test]
fn slow_consumer_close_drop_and_conflate() {
    let rules = vec![
        TopicRule {
            pattern: "drop".into(),
            policy: TopicPolicy { slow_consumer: SlowConsumer::Drop, limit: 100 },
        },
        TopicRule {
            pattern: "close".into(),
            policy: TopicPolicy { slow_consumer: SlowConsumer::Close, limit: 100 },
        },
        TopicRule {
            pattern: "px".into(),
            policy: TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: 100 },
        },
    ];
    let s = Settings { topic_rules: rules, ..settings() };
    let mut rig = Rig::new(s, App::default());
    let ids: Vec<usize> = (0..3).map(|i| rig.open(peer(20 + i), "/anon")).collect();
    for (&id, topic) in ids.iter().zip(["drop", "close", "px"]) {
        let conn = &mut rig.core.conns[id];
        let _ = conn;
        rig.core.local.topics.subscribe(id, topic).unwrap();
        rig.fake.window.insert(id, 0);
    }
    let sender = rig.sender();
    for i in 0..20u64 {
        let msg = format!("{i:040}");
        for topic in ["drop", "close", "px"] {
            // Two keys on the conflated topic.
            sender.publish_keyed(topic, i % 2, Message::Text(&msg));
        }
        rig.turn();
    }
    let stats = rig.core.local.counts;
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.slow_closed, 1, "{stats:?}");
    assert!(stats.conflated > 0, "{stats:?}");
    // Let everyone read: the conflating one gets what fits plus the latest of each key.
    for &id in &ids {
        rig.fake.window.insert(id, usize::MAX);
    }
    rig.turn();
    rig.turn();
    let px = rig.received(ids[2]);
    assert!(px.len() < 20, "{px:?}");
    assert_eq!(px[px.len() - 2..], [format!("{:040}", 18), format!("{:040}", 19)]);
    let closed = rig.received(ids[1]);
    assert_eq!(closed.last().unwrap(), "close 1008");
}

#[test]
fn timers_fire_once_in_order_and_die_with_their_connection() {
    let mut rig = Rig::new(settings(), App::default());
    let a = rig.open(peer(30), "/?user=a");
    let b = rig.open(peer(31), "/?user=b");
    rig.text(a, "timer 300 2");
    rig.text(a, "timer 100 1");
    rig.text(b, "timer 200 3");
    rig.text(b, "close");
    // The loop sleeps until the earliest deadline, not the sweep's 250 ms.
    rig.turn();
    assert_eq!(rig.fake.timeouts.last(), Some(&Duration::from_millis(100)));
    rig.advance(99);
    assert!(rig.received(a).is_empty(), "never early");
    rig.advance(1);
    assert_eq!(rig.received(a), ["timer 1"]);
    rig.advance(400);
    assert_eq!(rig.received(a), ["timer 2"]);
    let log = rig.core.handler.log.join("|");
    assert!(!log.contains("timer b"), "a closed connection's timer never fires: {log}");
    assert_eq!(rig.core.local.timers.len(), 0);
}

#[test]
fn ticks_keep_their_period() {
    let s = Settings { tick: Some(Duration::from_millis(33)), ..settings() };
    let mut rig = Rig::new(s, App::default());
    rig.advance(1_000);
    // 1000 / 33 = 30 ticks at 33, 66, ... 990 ms.
    assert_eq!(rig.core.handler.ticks, 30);
}

#[test]
fn a_stale_id_never_reaches_the_next_connection_in_its_slot() {
    let mut rig = Rig::new(settings(), App::default());
    let first = rig.open(peer(40), "/?user=old");
    let old = rig.id_of(first);
    rig.data(first, &Rig::<App>::frame(OpCode::Close, &1000u16.to_be_bytes()));
    rig.turn();
    rig.turn();
    let second = rig.open(peer(41), "/?user=new");
    assert_eq!(second, first, "the slot is reused");
    let new = rig.id_of(second);
    assert_ne!(old, new);
    let sender = rig.sender();
    assert_eq!(sender.send_text(old, "for old"), SendStatus::Queued, "handed to the worker");
    assert!(sender.close(old, CloseCode::NORMAL, "old"));
    rig.turn();
    assert!(rig.received(second).is_empty(), "nothing reached the new connection");
    assert_eq!(rig.core.local.counts.stale, 2);
    // The same through a Ctx, synchronously.
    let mut ctx = Ctx { conns: &mut rig.core.conns, local: &mut rig.core.local };
    assert_eq!(ctx.send(old, Message::Text("x")), SendStatus::Closed);
    assert!(ctx.data_mut(old).is_none());
    assert_eq!(ctx.data_mut(new).unwrap().user, "new");
    assert_eq!(ctx.send(new, Message::Text("for new")), SendStatus::Queued);
    rig.turn();
    assert_eq!(rig.received(second), ["for new"]);
}

#[test]
fn addressed_sends_and_deferred_closures_from_another_thread() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.open(peer(50), "/?user=gu");
    let conn = rig.id_of(id);
    let sender = rig.sender();
    let t = std::thread::spawn(move || {
        for i in 0..100 {
            assert_eq!(sender.send_text(conn, &format!("fill {i}")), SendStatus::Queued);
        }
        sender
            .defer::<App>(0, move |app, ctx| {
                app.log.push("deferred".into());
                let user = ctx.data_mut(conn).unwrap().user.clone();
                let _ = ctx.send(conn, Message::Text(&format!("hi {user}")));
                ctx.close(conn, CloseCode::GOING_AWAY, "done");
            })
            .unwrap();
        assert!(matches!(sender.defer::<Wrong>(0, |_, _| {}), Err(crate::Error::WrongHandler)));
    });
    t.join().unwrap();
    rig.turn();
    let got = rig.received(id);
    let expected: Vec<String> = (0..100)
        .map(|i| format!("fill {i}"))
        .chain(["hi gu".to_owned(), "close 1001".to_owned()])
        .collect();
    assert_eq!(got, expected, "in order, corked into one iteration");
    assert!(rig.core.handler.log.contains(&"deferred".to_owned()));
}

#[test]
fn a_batch_reaches_each_worker_as_one_command_in_order() {
    let mut rig = Rig::new(settings(), App::default());
    let a = rig.open(peer(51), "/?user=a");
    let b = rig.open(peer(52), "/?user=b");
    let (ca, cb) = (rig.id_of(a), rig.id_of(b));
    rig.core.local.topics.subscribe(b, "md.X").unwrap();
    let sender = rig.sender();
    let mut batch = sender.batch();
    let big = "x".repeat(600); // past the packed size: its own command, in its place
    for i in 0..50 {
        batch.send_text(ca, &format!("ack {i}"));
        batch.send(cb, Message::Text(&format!("fill {i}")));
        if i == 24 {
            batch.send_text(ca, &big);
        }
    }
    batch.publish_keyed("md.X", 1, Message::Text("book 1"));
    batch.publish("md.X", Message::Text("book 2"));
    batch
        .defer::<App>(0, move |app, ctx| {
            app.log.push(format!("deferred {}", ctx.data_mut(ca).unwrap().user));
        })
        .unwrap();
    batch.close(ca, CloseCode::GOING_AWAY, "done");
    assert!(matches!(batch.defer::<Wrong>(0, |_, _| {}), Err(crate::Error::WrongHandler)));
    assert!(matches!(batch.defer::<App>(1, |_, _| {}), Err(crate::Error::NoWorker(1))));
    assert_eq!(batch.len(), 105);
    assert!(rig.inbox.is_empty(), "nothing leaves before the flush");
    assert!(batch.flush());
    assert!(batch.is_empty());
    assert_eq!(rig.inbox.len(), 1, "one channel send for the worker");
    rig.turn();
    let mut acks: Vec<String> =
        (0..50).map(|i| format!("ack {i}")).chain(["close 1001".to_owned()]).collect();
    acks.insert(25, big);
    assert_eq!(rig.received(a), acks);
    let fills: Vec<String> =
        (0..50).map(|i| format!("fill {i}")).chain(["book 1".into(), "book 2".into()]).collect();
    assert_eq!(rig.received(b), fills);
    assert!(rig.core.handler.log.contains(&"deferred a".to_owned()));
    // Dropping a batch flushes it; a flush with nothing gathered sends nothing.
    let mut empty = sender.batch();
    assert!(empty.flush());
    assert!(rig.inbox.is_empty());
    let mut last = sender.batch();
    last.send_text(cb, "last");
    drop(last);
    assert_eq!(rig.inbox.len(), 1, "a single command goes unwrapped");
    rig.turn();
    assert_eq!(rig.received(b), ["last"]);
}

struct Wrong;

impl Handler for Wrong {
    type Conn = ();
    fn on_message(&mut self, _: &mut WebSocket<'_>, _: Message<'_>) {}
}

#[test]
fn shutdown_closes_everyone_with_1001_then_finishes() {
    let mut rig = Rig::new(settings(), App::default());
    let id = rig.open(peer(60), "/?user=ha");
    rig.shared.begin_shutdown();
    assert!(!rig.turn());
    assert!(!rig.fake.accepting);
    assert!(!rig.turn(), "the close frame leaves with the next flush");
    assert_eq!(rig.received(id), ["close 1001"]);
    rig.data(id, &Rig::<App>::frame(OpCode::Close, &1001u16.to_be_bytes()));
    rig.now += 10;
    assert!(rig.turn(), "finished once the last connection is released");
}

// permessage-deflate.

/// Upgrades a connection offering `offer` (none: no extension); returns its id and what the
/// server agreed to, checked by the client side of the negotiation, which the client connection
/// then uses to inflate.
fn open_deflate<H: Handler>(
    rig: &mut Rig<H>,
    from: SocketAddr,
    path: &str,
    offer: Option<DeflateOffer>,
) -> (usize, Option<DeflateParams>) {
    let id = rig.accept(from);
    let key = generate_key();
    let value = offer.map(|o| o.header_value());
    let headers: Vec<(&str, &str)> =
        value.iter().map(|v| ("Sec-WebSocket-Extensions", v.as_str())).collect();
    let mut req = Vec::new();
    write_client_request("test", path, &key, &[], &headers, &mut req);
    rig.data(id, &req);
    let sent = rig.take_sent(id);
    let accepted = parse_response(&sent, &key, &[]).unwrap().expect("a whole 101");
    let agreed = match offer {
        Some(o) => o.accept(accepted.extensions.as_deref()).unwrap(),
        None => {
            assert_eq!(accepted.extensions, None, "nothing offered, nothing agreed");
            None
        }
    };
    let mut client = Connection::new(Role::Client, Config::default());
    if let Some(params) = agreed {
        client.enable_deflate(params, None);
    }
    rig.clients.insert(id, (client, 0));
    (id, agreed)
}

/// What the client of `id` received since last asked, each message with whether its frame was
/// compressed (RSV1).
fn received_rsv1<H: Handler>(rig: &mut Rig<H>, id: usize) -> Vec<(bool, String)> {
    let mut bytes = rig.take_sent(id);
    let rules = frame::DecodeRules { expect_masked: false, max_frame_size: u64::MAX };
    let mut flags = Vec::new();
    let mut at = 0;
    while let Ok(Some((h, n))) = frame::decode_header_deflate(&bytes[at..], rules) {
        flags.push(h.rsv1);
        at += n + h.len as usize;
    }
    assert_eq!(at, bytes.len(), "whole frames");
    let (client, _) = rig.clients.get_mut(&id).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        match client.read(&mut bytes[pos..]) {
            Ok((n, Some(Event::Message(m)))) => {
                pos += n;
                let text = match m {
                    Message::Text(t) => t.to_owned(),
                    Message::Binary(b) => format!("binary {}", b.len()),
                };
                out.push((flags[out.len()], text));
            }
            Ok((_, None)) => break,
            Ok((_, Some(other))) => panic!("unexpected {other:?}"),
            Err(e) => panic!("the client failed on what the server sent: {e}"),
        }
    }
    out
}

/// A JSON tick of about 200 bytes, different for every `i`.
fn tick(i: u64) -> String {
    format!(
        r#"{{"type":"tick","symbol":"SYM{:03}","seq":{i},"bid":{}.{:02},"ask":{}.{:02},"volume":{},"venue":"XNAS","flags":["regular","odd-lot"],"padding":"........................................"}}"#,
        i % 7,
        100 + i % 13,
        i % 100,
        101 + i % 11,
        (i * 7) % 100,
        i * 37
    )
}

#[test]
fn deflate_dedicated_sends_compress_with_context_within_the_budget() {
    // Room for exactly one connection whose client keeps context: compressor + inflater.
    let one =
        crate::runtime::deflate::compressor_bytes(15) + crate::runtime::deflate::INFLATER_BYTES;
    let s = Settings {
        deflate: Compression::Dedicated,
        deflate_memory: one,
        deflate_threshold: 64,
        ..settings()
    };
    let mut rig = Rig::new(s, App::default());
    let (a, agreed) = open_deflate(&mut rig, peer(70), "/anon", Some(DeflateOffer::default()));
    let params = agreed.expect("agreed");
    assert!(!params.server_no_context_takeover && !params.client_no_context_takeover);
    assert_eq!(rig.core.local.deflate.in_use(), one);
    // Echoes of similar messages: compressed, and smaller once the context holds the first.
    let mut sizes = Vec::new();
    for i in 0..5 {
        rig.text(a, &tick(i));
        let raw = rig.fake.sent.get(&a).map_or(0, Vec::len);
        sizes.push(raw);
        let got = received_rsv1(&mut rig, a);
        assert_eq!(got, [(true, format!(": {}", tick(i)))]);
    }
    assert!(sizes[4] * 2 < sizes[0], "context takeover pays: {sizes:?}");
    // A short message goes plain; the next compressed one still decodes (context intact).
    rig.text(a, "hi");
    rig.text(a, &tick(9));
    assert_eq!(
        received_rsv1(&mut rig, a),
        [(false, ": hi".into()), (true, format!(": {}", tick(9)))]
    );
    // The budget is spent: the next upgrade is answered without the extension, and served.
    let (b, agreed) = open_deflate(&mut rig, peer(71), "/anon", Some(DeflateOffer::default()));
    assert_eq!(agreed, None);
    assert_eq!(rig.core.local.counts.deflate_declined, 1);
    rig.text(b, &tick(1));
    assert_eq!(received_rsv1(&mut rig, b), [(false, format!(": {}", tick(1)))]);
    // A client that keeps no context and wants none from us needs no budget at all.
    let light = DeflateOffer {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..DeflateOffer::default()
    };
    let (c, agreed) = open_deflate(&mut rig, peer(72), "/anon", Some(light));
    assert!(agreed.is_some());
    rig.text(c, &tick(2));
    assert_eq!(received_rsv1(&mut rig, c), [(true, format!(": {}", tick(2)))]);
    assert_eq!(rig.core.local.deflate.in_use(), one);
    // The first connection closes: its share comes back, and the next upgrade gets it.
    rig.data(a, &Rig::<App>::frame(OpCode::Close, &1000u16.to_be_bytes()));
    rig.turn();
    rig.turn();
    assert!(rig.core.conns.get(a).is_none());
    assert_eq!(rig.core.local.deflate.in_use(), 0);
    let (d, agreed) = open_deflate(&mut rig, peer(73), "/anon", Some(DeflateOffer::default()));
    assert!(agreed.is_some());
    rig.text(d, &tick(3));
    assert_eq!(received_rsv1(&mut rig, d), [(true, format!(": {}", tick(3)))]);
}

#[test]
fn deflate_shared_publish_is_compressed_once_per_window_class() {
    let s = Settings { deflate: Compression::Shared, deflate_threshold: 64, ..settings() };
    let mut rig = Rig::new(s, App::default());
    let small_window = DeflateOffer { server_max_window_bits: Some(10), ..DeflateOffer::default() };
    let offers = [
        Some(DeflateOffer::default()),
        Some(DeflateOffer::default()),
        None,
        Some(small_window),
        Some(DeflateOffer::default()),
    ];
    let mut ids = Vec::new();
    for (i, offer) in offers.into_iter().enumerate() {
        let (id, agreed) = open_deflate(&mut rig, peer(80 + i as u8), "/anon", offer);
        assert_eq!(agreed.is_some(), offer.is_some());
        if let Some(p) = agreed {
            assert!(p.server_no_context_takeover && p.client_no_context_takeover, "{p:?}");
        }
        rig.core.local.topics.subscribe(id, "ticks").unwrap();
        ids.push(id);
    }
    assert_eq!(rig.core.local.deflate.in_use(), 0, "shared mode holds nothing per connection");
    let sender = rig.sender();
    sender.publish("ticks", Message::Text(&tick(1)));
    sender.publish("ticks", Message::Text("short"));
    rig.turn();
    // Window 15 once, window 10 once (a 10-bit frame would also serve the 15-bit ones, but
    // they came first); the short one goes plain.
    assert_eq!(rig.core.local.counts.compressed_shared, 2);
    assert_eq!(rig.core.local.counts.compressed_per_conn, 0);
    for (i, &id) in ids.iter().enumerate() {
        let compressed = i != 2;
        assert_eq!(
            received_rsv1(&mut rig, id),
            [(compressed, tick(1)), (false, "short".to_owned())],
            "subscriber {i}"
        );
    }
    // A small window first: its frame serves every larger window too.
    let (first, _) = open_deflate(&mut rig, peer(90), "/anon", Some(small_window));
    let (second, _) = open_deflate(&mut rig, peer(91), "/anon", Some(DeflateOffer::default()));
    for id in [first, second] {
        rig.core.local.topics.subscribe(id, "solo").unwrap();
    }
    sender.publish("solo", Message::Text(&tick(2)));
    rig.turn();
    assert_eq!(rig.core.local.counts.compressed_shared, 3);
    for id in [first, second] {
        assert_eq!(received_rsv1(&mut rig, id), [(true, tick(2))]);
    }
    // Sends from another thread and broadcasts are compressed too.
    let to = rig.id_of(ids[0]);
    assert_eq!(sender.send_text(to, &tick(3)), SendStatus::Queued);
    rig.turn();
    assert_eq!(received_rsv1(&mut rig, ids[0]), [(true, tick(3))]);
    rig.shared.broadcast(Message::Text(&tick(4)));
    rig.turn();
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(received_rsv1(&mut rig, id), [(i != 2, tick(4))], "subscriber {i}");
    }
}

#[test]
fn deflate_conflation_and_drops_never_break_a_context_takeover_stream() {
    let rules = vec![
        TopicRule {
            pattern: "px".into(),
            policy: TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: 600 },
        },
        TopicRule {
            pattern: "drop".into(),
            policy: TopicPolicy { slow_consumer: SlowConsumer::Drop, limit: 600 },
        },
    ];
    let s = Settings {
        deflate: Compression::Dedicated,
        deflate_threshold: 64,
        topic_rules: rules,
        ..settings()
    };
    let mut rig = Rig::new(s, App::default());
    let shared_offer = DeflateOffer { server_no_context_takeover: true, ..DeflateOffer::default() };
    let (own_px, _) = open_deflate(&mut rig, peer(100), "/anon", Some(DeflateOffer::default()));
    let (shared_px, p) = open_deflate(&mut rig, peer(101), "/anon", Some(shared_offer));
    assert!(p.unwrap().server_no_context_takeover);
    let (own_drop, _) = open_deflate(&mut rig, peer(102), "/anon", Some(DeflateOffer::default()));
    for (id, topic) in [(own_px, "px"), (shared_px, "px"), (own_drop, "drop")] {
        rig.core.local.topics.subscribe(id, topic).unwrap();
        // Reads a little, then nothing: the rest waits, staged or dropped.
        rig.fake.window.insert(id, 300);
    }
    let sender = rig.sender();
    for i in 0..40u64 {
        sender.publish_keyed("px", i % 3, Message::Text(&tick(i)));
        sender.publish("drop", Message::Text(&tick(i)));
        rig.turn();
    }
    let counts = rig.core.local.counts;
    assert!(counts.conflated > 10 && counts.dropped > 10, "{counts:?}");
    for &id in &[own_px, shared_px, own_drop] {
        rig.fake.window.insert(id, usize::MAX);
    }
    for _ in 0..4 {
        rig.turn();
    }
    // Every message decodes to one that was published, in order, and each key's latest
    // arrives; the client's inflater fails (1007) or yields other text if a frame it never got
    // was referred to.
    for id in [own_px, shared_px] {
        let got = received_rsv1(&mut rig, id);
        let seqs: Vec<u64> = got
            .iter()
            .map(|(compressed, text)| {
                assert!(*compressed, "{text}");
                (0..40).find(|&i| *text == tick(i)).expect("a published message")
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert!(seqs.ends_with(&[37, 38, 39]), "{seqs:?}");
        assert!(seqs.len() < 30, "conflated: {seqs:?}");
    }
    let got = received_rsv1(&mut rig, own_drop);
    assert!(got.len() < 40 && !got.is_empty(), "{}", got.len());
    for (compressed, text) in &got {
        assert!(*compressed && (0..40).any(|i| *text == tick(i)), "{text}");
    }
    // After the drops, the stream goes on decoding.
    sender.publish("drop", Message::Text(&tick(40)));
    rig.turn();
    assert_eq!(received_rsv1(&mut rig, own_drop), [(true, tick(40))]);
    assert!(rig.core.local.counts.compressed_per_conn > 0);
}

#[test]
fn deflate_a_dropped_send_resets_its_compressor() {
    let s = Settings {
        deflate: Compression::Dedicated,
        deflate_threshold: 64,
        slow_consumer: SlowConsumer::Drop,
        send_limit: 1500,
        send_high_water: 1500,
        ..settings()
    };
    let mut rig = Rig::new(s, App::default());
    let (id, _) = open_deflate(&mut rig, peer(110), "/anon", Some(DeflateOffer::default()));
    rig.fake.window.insert(id, 0);
    for i in 0..60 {
        rig.text(id, &tick(i));
    }
    assert!(rig.core.local.counts.dropped > 0);
    rig.fake.window.insert(id, usize::MAX);
    rig.turn();
    rig.turn();
    let got = received_rsv1(&mut rig, id);
    assert!(!got.is_empty() && got.len() < 60, "{}", got.len());
    for (compressed, text) in &got {
        assert!(*compressed && (0..60).any(|i| *text == format!(": {}", tick(i))), "{text}");
    }
    // What follows the drops must not refer to what the client never got.
    for i in 60..63 {
        rig.text(id, &tick(i));
        assert_eq!(received_rsv1(&mut rig, id), [(true, format!(": {}", tick(i)))]);
    }
}

/// The worker's Prometheus block: upgrades by status and closes by code, by value.
fn upgrades(rig: &Rig<App>, status: u16) -> u64 {
    let i = crate::metrics::UPGRADE_STATUSES.iter().position(|&s| s == status).unwrap();
    rig.shared.metrics[0].upgrades()[i]
}

fn closes(rig: &Rig<App>, code: u16) -> u64 {
    let i = crate::metrics::CLOSE_CODES.iter().position(|&c| c == code).unwrap();
    rig.shared.metrics[0].closes()[i]
}

#[test]
fn metrics_count_what_the_protocol_does() {
    let s = Settings { max_message_size: 100, max_head_bytes: 1024, ..settings() };
    let mut rig = Rig::new(s, App::default());
    let mut fed = 0u64;
    let id = rig.open(peer(70), "/?user=io");
    let m = Arc::clone(&rig.shared.metrics);
    assert_eq!(m[0].connections_accepted.get(), 1);
    assert_eq!(m[0].connections_open.get(), 1);
    assert_eq!(upgrades(&rig, 101), 1);
    fed += m[0].bytes_received.get();
    for text in ["one", "two"] {
        let f = Rig::<App>::frame(OpCode::Text, text.as_bytes());
        fed += f.len() as u64;
        rig.data(id, &f);
    }
    for (op, payload) in [(OpCode::Ping, &b"p"[..]), (OpCode::Pong, b"q")] {
        let f = Rig::<App>::frame(op, payload);
        fed += f.len() as u64;
        rig.data(id, &f);
    }
    assert_eq!(m[0].messages_received.get(), 2);
    assert_eq!(m[0].messages_sent.get(), 2, "two echoes; the automatic pong is not a message");
    assert_eq!(m[0].pings_received.get(), 1);
    assert_eq!(m[0].pongs_received.get(), 1);
    assert_eq!(m[0].bytes_received.get(), fed, "every byte handed to the worker");

    // Refusals by status: the application's 401, a head over the limit's 431.
    let refused = rig.accept(peer(71));
    let mut req = Vec::new();
    write_client_request("test", "/private", &generate_key(), &[], &[], &mut req);
    rig.data(refused, &req);
    rig.turn(); // released
    let big = rig.accept(peer(72));
    rig.data(big, b"GET / HTTP/1.1\r\n");
    for _ in 0..60 {
        rig.data(big, b"X-Filler: 0123456789\r\n");
    }
    assert_eq!(upgrades(&rig, 401), 1);
    assert_eq!(upgrades(&rig, 431), 1);
    assert_eq!(m[0].connections_accepted.get(), 3);

    rig.turn(); // the refused ones are released
                // A message over the limit closes with 1009, a client's close with its code.
    let other = rig.open(peer(73), "/?user=jo");
    rig.data(other, &Rig::<App>::frame(OpCode::Binary, &[0; 101]));
    assert_eq!(rig.received(other).last().unwrap(), "close 1009");
    assert_eq!(closes(&rig, 1009), 1);
    rig.data(id, &Rig::<App>::frame(OpCode::Close, &1000u16.to_be_bytes()));
    assert_eq!(closes(&rig, 1000), 1);
    assert_eq!(closes(&rig, 1006), 0);
    assert!(m[0].loop_iteration.count() >= 10, "one observation per iteration");
}

#[test]
fn the_send_queue_gauge_follows_a_peer_that_stops_reading() {
    let s = Settings { send_high_water: 100_000, send_limit: 200_000, ..settings() };
    let mut rig = Rig::new(s, App::default());
    let id = rig.open(peer(80), "/?user=ka");
    rig.fake.window.insert(id, 0);
    let big = "x".repeat(1000);
    rig.text(id, &big);
    rig.text(id, &big);
    let queued = rig.core.conns[id].io.queue.len() as u64;
    assert!(queued > 2000, "{queued}");
    rig.advance(300); // past a sweep
    assert_eq!(rig.shared.metrics[0].send_queued_bytes.get(), queued);
    rig.fake.window.insert(id, usize::MAX);
    rig.advance(300);
    assert_eq!(rig.shared.metrics[0].send_queued_bytes.get(), 0);
}

#[test]
fn publishes_and_slow_consumers_reach_the_metrics() {
    let rules = vec![TopicRule {
        pattern: "t".into(),
        policy: TopicPolicy { slow_consumer: SlowConsumer::Close, limit: 100 },
    }];
    let mut rig = Rig::new(Settings { topic_rules: rules, ..settings() }, App::default());
    let fast = rig.open(peer(90), "/anon");
    let slow = rig.open(peer(91), "/anon");
    rig.core.local.topics.subscribe(fast, "t").unwrap();
    rig.core.local.topics.subscribe(slow, "t").unwrap();
    rig.fake.window.insert(slow, 0);
    let sender = rig.sender();
    for i in 0..5 {
        sender.publish("t", Message::Text(&format!("{i:040}")));
        rig.turn();
    }
    let m = &rig.shared.metrics[0];
    assert_eq!(m.slow_consumers_closed.get(), 1);
    assert_eq!(m.publishes_delivered.get(), rig.core.local.counts.delivered);
    assert!(m.publishes_delivered.get() >= 5, "{}", m.publishes_delivered.get());
    assert_eq!(m.messages_sent.get(), m.publishes_delivered.get(), "a publish is a message");
    assert_eq!(closes(&rig, 1008), 0, "not until the peer answers or times out");
    rig.fake.window.insert(slow, usize::MAX);
    rig.turn();
    assert_eq!(rig.received(slow).last().unwrap(), "close 1008");
    rig.data(slow, &Rig::<App>::frame(OpCode::Close, &1008u16.to_be_bytes()));
    assert_eq!(closes(&rig, 1008), 1);
}

#[test]
fn a_ping_is_not_counted_as_a_message() {
    let s = Settings { idle_timeout: Duration::from_secs(10), ..settings() };
    let mut rig = Rig::new(s, App::default());
    let id = rig.open(peer(100), "/?user=lu");
    rig.advance(5_300);
    assert_eq!(rig.received(id), ["ping "], "the idle ping went out");
    rig.text(id, "hi");
    assert_eq!(rig.received(id), ["lu: hi"]);
    assert_eq!(rig.shared.metrics[0].messages_sent.get(), 1, "the echo only");
}
