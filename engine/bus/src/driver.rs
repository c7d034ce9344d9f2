//! The bus thread: owns the connection, the interest counts and the publish sequence numbers.
//!
//! It sleeps on its command channel until a command or a timer (the next ping, or the next
//! reconnect attempt). A command wakes it, and it handles everything queued behind that one
//! before it flushes: a burst of publishes leaves in one socket write. Protocol details live
//! behind [`Transport`] and [`Conn`] (NATS: one socket; Redis: one to subscribe, one to
//! publish); reconnection, backoff, resubscription and the backlog are the same for both.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::envelope::{self, Header, HEADER_LEN};
use crate::shared::{queue_cost, Count, Shared};
use crate::{subject, BusError, Event, Options};

/// Commands handled in one burst before the timers get a look.
const MAX_BURST: usize = 4096;
/// Bytes buffered for a socket that are written before the burst ends.
const FLUSH_AT: usize = 1 << 20;
/// Topics this node keeps publish sequence numbers for; past it they all start over at 1
/// (receivers take 1 as a stream's start) rather than grow without bound.
const MAX_STREAMS: usize = 1 << 16;

/// What the handle and the readers tell the bus thread.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        topic: Arc<str>,
        frame: Bytes,
        key: u64,
    },
    InterestAdded(Arc<str>),
    InterestRemoved(Arc<str>),
    /// A reader's socket failed or closed.
    Lost {
        generation: u64,
        reason: String,
    },
    /// The server pinged (NATS): answer it.
    ServerPing {
        generation: u64,
    },
    Shutdown,
}

/// What a reader thread needs; `generation` tells the bus thread which connection it reports on.
#[derive(Debug, Clone)]
pub(crate) struct Opening {
    pub shared: Arc<Shared>,
    pub commands: Sender<Command>,
    pub generation: u64,
    pub options: Options,
}

impl Opening {
    /// Tells the bus thread this connection is gone.
    pub fn lost(&self, reason: String) {
        let _ = self.commands.send(Command::Lost { generation: self.generation, reason });
    }
}

/// A bus protocol: how to make a connection.
pub(crate) trait Transport: Send + 'static {
    type Conn: Conn;

    /// Connects, handshakes within `options.connect_timeout`, and starts the reader thread(s).
    fn open(&mut self, opening: Opening) -> Result<Self::Conn, String>;
}

/// One live connection: commands are encoded into a buffer and written by [`Conn::flush`].
pub(crate) trait Conn: Send {
    fn subscribe(&mut self, sid: u64, subject: &str);
    fn unsubscribe(&mut self, sid: u64, subject: &str);
    fn publish(&mut self, subject: &str, header: &[u8; HEADER_LEN], frame: &[u8]);
    /// Queues a keepalive ping; false when earlier pings went unanswered (the link is dead).
    fn ping(&mut self) -> bool;
    /// Answers a server's ping.
    fn pong(&mut self);
    /// Bytes encoded and not yet written.
    fn buffered(&self) -> usize;
    fn flush(&mut self) -> io::Result<()>;
    /// The largest payload the server takes.
    fn max_payload(&self) -> usize;
    /// Clones of the sockets, for [`Shared::set_sockets`].
    fn sockets(&self) -> Vec<TcpStream>;
    /// Shuts the sockets and waits for the readers.
    fn close(self);
}

/// Starts the bus thread; returns once its first connection is up, or with why it is not.
pub(crate) fn start<T: Transport>(
    transport: T,
    shared: Arc<Shared>,
    options: Options,
) -> Result<(Sender<Command>, JoinHandle<()>), BusError> {
    let (tx, rx) = unbounded();
    let (first_tx, first_rx) = bounded(1);
    let driver = Driver {
        transport,
        rng: shared.node | 1,
        shared,
        backoff: options.backoff_min,
        options,
        rx,
        tx: tx.clone(),
        conn: None,
        generation: 0,
        unflushed: 0,
        interest: HashMap::new(),
        next_sid: 1,
        streams: HashMap::new(),
        backlog: VecDeque::new(),
        backlog_bytes: 0,
        next_attempt: Instant::now(),
        next_ping: Instant::now(),
        connected_once: false,
    };
    let thread = thread::Builder::new()
        .name("ringside-bus".into())
        .spawn(move || driver.run(first_tx))
        .map_err(|e| BusError::Connect(format!("could not start the bus thread: {e}")))?;
    match first_rx.recv() {
        Ok(Ok(())) => Ok((tx, thread)),
        Ok(Err(why)) => {
            let _ = thread.join();
            Err(BusError::Connect(why))
        }
        Err(_) => Err(BusError::Connect("the bus thread died while connecting".into())),
    }
}

struct Driver<T: Transport> {
    transport: T,
    shared: Arc<Shared>,
    options: Options,
    rx: Receiver<Command>,
    /// For the readers' reports.
    tx: Sender<Command>,
    conn: Option<T::Conn>,
    /// Which connection is live: reports from older ones are ignored.
    generation: u64,
    /// Publishes encoded into `conn` and not yet written.
    unflushed: u64,
    interest: HashMap<Arc<str>, Interest>,
    next_sid: u64,
    streams: HashMap<Arc<str>, Stream>,
    /// Publishes held while disconnected, oldest first.
    backlog: VecDeque<Outgoing>,
    backlog_bytes: usize,
    backoff: Duration,
    next_attempt: Instant,
    next_ping: Instant,
    connected_once: bool,
    /// xorshift state for the backoff jitter.
    rng: u64,
}

/// A topic some local subscribers want.
struct Interest {
    /// Workers interested (each counts once, however many of its connections subscribe).
    count: usize,
    sid: u64,
    subject: String,
}

/// This node's publish stream on one topic.
struct Stream {
    subject: Arc<str>,
    next_seq: u64,
}

struct Outgoing {
    subject: Arc<str>,
    header: [u8; HEADER_LEN],
    frame: Bytes,
}

impl<T: Transport> Driver<T> {
    fn run(mut self, first: Sender<Result<(), String>>) {
        let started = self.connect();
        let up = started.is_ok();
        let _ = first.send(started);
        if !up {
            return;
        }
        loop {
            let deadline = if self.conn.is_some() { self.next_ping } else { self.next_attempt };
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(command) => {
                    if !self.burst(command) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The driver holds a sender itself; this cannot happen, but stop if it does.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.timers();
        }
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
        self.shared.set_connected(false);
        self.shared.add(Count::Dropped, self.unflushed + self.backlog.len() as u64);
    }

    /// Handles `first` and the commands queued behind it, then writes once. False on shutdown.
    fn burst(&mut self, first: Command) -> bool {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(command) = next.take() {
            if !self.handle(command) {
                return false;
            }
            handled += 1;
            if self.conn.as_ref().is_some_and(|c| c.buffered() >= FLUSH_AT) {
                self.flush();
            }
            if handled < MAX_BURST {
                next = self.rx.try_recv().ok();
            }
        }
        self.flush();
        true
    }

    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Publish { topic, frame, key } => {
                self.shared.unqueue(queue_cost(frame.len()));
                self.publish(topic, frame, key);
            }
            Command::InterestAdded(topic) => self.interest_added(topic),
            Command::InterestRemoved(topic) => self.interest_removed(&topic),
            Command::Lost { generation, reason } => {
                if generation == self.generation && self.conn.is_some() {
                    self.disconnect(reason);
                }
            }
            Command::ServerPing { generation } => {
                if let Some(conn) = self.conn.as_mut().filter(|_| generation == self.generation) {
                    conn.pong();
                }
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn publish(&mut self, topic: Arc<str>, frame: Bytes, key: u64) {
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&topic) {
            self.streams.clear();
        }
        let stream = match self.streams.entry(topic) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                // The handle checked the length, the only way this can fail.
                let Some(subject) = subject::subject(e.key()) else { return };
                e.insert(Stream { subject: subject.into(), next_seq: 1 })
            }
        };
        let seq = stream.next_seq;
        stream.next_seq += 1;
        let out = Outgoing {
            subject: Arc::clone(&stream.subject),
            header: envelope::encode(&Header { origin: self.shared.node, seq, key }),
            frame,
        };
        if self.conn.is_some() {
            self.send(&out);
            return;
        }
        // Disconnected: keep the newest publishes up to the backlog's bound.
        self.backlog_bytes += out.frame.len();
        self.backlog.push_back(out);
        while self.backlog_bytes > self.options.backlog_bytes {
            let Some(old) = self.backlog.pop_front() else { break };
            self.backlog_bytes -= old.frame.len();
            self.shared.count(Count::Dropped);
        }
    }

    /// Encodes a publish into the live connection.
    fn send(&mut self, out: &Outgoing) {
        let Some(conn) = self.conn.as_mut() else { return };
        if out.frame.len() + HEADER_LEN > conn.max_payload() {
            // Its sequence number is spent: receivers see the loss as a gap.
            self.shared.count(Count::Oversized);
            return;
        }
        conn.publish(&out.subject, &out.header, &out.frame);
        self.unflushed += 1;
    }

    fn interest_added(&mut self, topic: Arc<str>) {
        match self.interest.entry(topic) {
            Entry::Occupied(mut e) => e.get_mut().count += 1,
            Entry::Vacant(e) => {
                let Some(subject) = subject::subject(e.key()) else { return };
                let sid = self.next_sid;
                self.next_sid += 1;
                // The route first: a message may follow the subscription at once.
                self.shared.add_route(sid, Arc::clone(e.key()), &subject);
                if let Some(conn) = self.conn.as_mut() {
                    conn.subscribe(sid, &subject);
                }
                e.insert(Interest { count: 1, sid, subject });
            }
        }
    }

    fn interest_removed(&mut self, topic: &str) {
        let Some(interest) = self.interest.get_mut(topic) else { return };
        interest.count -= 1;
        if interest.count > 0 {
            return;
        }
        let Some(interest) = self.interest.remove(topic) else { return };
        if let Some(conn) = self.conn.as_mut() {
            conn.unsubscribe(interest.sid, &interest.subject);
        }
        self.shared.remove_route(interest.sid);
    }

    fn flush(&mut self) {
        let Some(conn) = self.conn.as_mut() else { return };
        if conn.buffered() == 0 {
            return;
        }
        let written = conn.flush();
        self.shared.count(Count::Flushes);
        let publishes = std::mem::take(&mut self.unflushed);
        match written {
            Ok(()) => self.shared.add(Count::Published, publishes),
            Err(e) => {
                self.shared.add(Count::Dropped, publishes);
                let reason = if self.shared.closing() {
                    "shutting down".to_owned()
                } else {
                    format!("writing to the bus failed: {e}")
                };
                self.disconnect(reason);
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        match self.conn.as_mut() {
            Some(conn) if now >= self.next_ping => {
                self.next_ping = now + self.options.ping_interval;
                if conn.ping() {
                    self.flush();
                } else {
                    let silent = self.options.ping_interval * 2;
                    self.disconnect(format!("the bus did not answer pings for {silent:?}"));
                }
            }
            None if now >= self.next_attempt && !self.shared.closing() => {
                // A failure is counted and rescheduled inside.
                let _ = self.connect();
            }
            _ => {}
        }
    }

    /// Makes a connection, subscribes the interest set, sends the backlog.
    fn connect(&mut self) -> Result<(), String> {
        self.generation += 1;
        let opening = Opening {
            shared: Arc::clone(&self.shared),
            commands: self.tx.clone(),
            generation: self.generation,
            options: self.options.clone(),
        };
        let mut conn = match self.transport.open(opening) {
            Ok(conn) => conn,
            Err(why) => return Err(self.failed(why)),
        };
        if !self.shared.set_sockets(conn.sockets()) {
            conn.close();
            return Err("shutting down".into());
        }
        for interest in self.interest.values() {
            conn.subscribe(interest.sid, &interest.subject);
        }
        self.conn = Some(conn);
        let backlog = std::mem::take(&mut self.backlog);
        self.backlog_bytes = 0;
        for out in &backlog {
            self.send(out);
        }
        let publishes = std::mem::take(&mut self.unflushed);
        let conn = self.conn.as_mut().expect("set above");
        self.shared.count(Count::Flushes);
        if let Err(e) = conn.flush() {
            self.shared.add(Count::Dropped, publishes);
            if let Some(conn) = self.conn.take() {
                conn.close();
            }
            return Err(self.failed(format!("writing to the bus failed: {e}")));
        }
        self.shared.add(Count::Published, publishes);
        self.backoff = self.options.backoff_min;
        self.next_ping = Instant::now() + self.options.ping_interval;
        self.shared.set_connected(true);
        let reconnects = if self.connected_once {
            self.shared.count(Count::Reconnects);
            self.shared.stats().reconnects
        } else {
            0
        };
        self.connected_once = true;
        self.shared.emit(Event::Connected { reconnects });
        Ok(())
    }

    /// Counts a failed attempt and schedules the next one; returns `why`.
    fn failed(&mut self, why: String) -> String {
        self.shared.count(Count::ConnectFailures);
        self.schedule_retry();
        why
    }

    fn disconnect(&mut self, reason: String) {
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
        // Encoded, never written (a reader saw the end first): gone with the connection.
        self.shared.add(Count::Dropped, std::mem::take(&mut self.unflushed));
        self.shared.set_sockets(Vec::new());
        self.shared.set_connected(false);
        self.shared.emit(Event::Disconnected { reason });
        // The first retry comes after the shortest delay: a restarted server is often back
        // at once.
        self.backoff = self.options.backoff_min;
        self.schedule_retry();
    }

    /// The next attempt after the current backoff (jittered by ±25% so that a fleet of nodes
    /// does not reconnect in step), and doubles the backoff.
    fn schedule_retry(&mut self) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.75 + (self.rng % 1024) as f64 / 2048.0;
        self.next_attempt = Instant::now() + self.backoff.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(self.options.backoff_max);
    }
}

/// A TCP connection to `host:port` (each address it resolves to, in turn), without Nagle: a
/// burst is already one write, and a lone publish should not wait for an acknowledgement.
pub(crate) fn dial(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    use std::net::ToSocketAddrs;

    let addrs =
        (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?;
    let mut last = format!("{host}:{port} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
                stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Writes and empties `out`; a buffer grown by a large burst is given back.
pub(crate) fn write_out(mut stream: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Write;

    if out.is_empty() {
        return Ok(());
    }
    let written = stream.write_all(out);
    out.clear();
    if out.capacity() > 4 * FLUSH_AT {
        *out = Vec::new();
    }
    written
}
