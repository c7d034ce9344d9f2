//! What the handle, the bus thread and the reader threads share: counters, the sink, the
//! subscription routes with their per-origin sequence tracking, the live sockets.
//!
//! The routes sit behind a mutex that only bus threads take (the bus thread when interest
//! changes, a reader once per message); workers never touch it.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::envelope;
use crate::{BusError, Delivery, Event, Gap, Options, Sink};

/// How many publishing nodes one topic tracks; past it the topic's tracking starts over (a
/// loss in that instant goes unreported) rather than grow without bound.
const MAX_ORIGINS_PER_TOPIC: usize = 4096;

/// A queued publish's charge against [`Options::queue_bytes`]: its frame and the command around it.
pub(crate) fn queue_cost(frame_len: usize) -> usize {
    frame_len + 64
}

/// Counters, as [`crate::BusHandle::stats`] returns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Publishes written to a bus connection.
    pub published: u64,
    /// Times the bus thread wrote its buffered commands out (one write per socket with data):
    /// `published / flushes` is how many publishes a write carries.
    pub flushes: u64,
    /// Publishes this node never wrote: the queue was full, the backlog overflowed while
    /// disconnected, or a write failed with them in it.
    pub dropped: u64,
    /// Publishes over the payload limit (this node's or the NATS server's), dropped.
    pub oversized: u64,
    /// Publishes from other nodes handed to the sink.
    pub received: u64,
    /// This node's own publishes that came back from the bus, dropped.
    pub own_filtered: u64,
    /// Gap events: times a sequence jumped.
    pub gaps: u64,
    /// Publishes missing in those gaps.
    pub lost: u64,
    /// Messages whose sequence number was already seen, dropped.
    pub duplicates: u64,
    /// Bus messages on a subscribed subject that are not a valid envelope, dropped.
    pub malformed: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Connection attempts that failed (each is retried after a backoff).
    pub connect_failures: u64,
    /// Errors the bus server reported (`-ERR`), each also in a disconnect reason when fatal.
    pub server_errors: u64,
    /// Events the sink panicked on (each one lost).
    pub sink_panics: u64,
    /// Topics this node is subscribed to on the bus now.
    pub subscriptions: u64,
    /// Whether the connection is up now.
    pub connected: bool,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    flushes: AtomicU64,
    dropped: AtomicU64,
    oversized: AtomicU64,
    received: AtomicU64,
    own_filtered: AtomicU64,
    gaps: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    server_errors: AtomicU64,
    sink_panics: AtomicU64,
    subscriptions: AtomicU64,
    connected: AtomicBool,
}

/// Which counter to bump (the bus thread and the readers name them; the atomics stay private).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Published,
    Flushes,
    Dropped,
    Oversized,
    Reconnects,
    ConnectFailures,
    ServerErrors,
}

/// A subscription as the readers see it.
#[derive(Debug)]
struct Route {
    topic: Arc<str>,
    subject: Box<[u8]>,
    /// Last sequence number seen per origin node.
    last_seq: HashMap<u64, u64>,
}

#[derive(Debug, Default)]
struct Routes {
    by_sid: HashMap<u64, Route>,
    /// Redis names the channel, not a subscription id.
    sid_of: HashMap<Box<[u8]>, u64>,
}

/// How a reader names the subscription a message arrived on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RouteKey<'a> {
    Sid(u64),
    Subject(&'a [u8]),
}

pub(crate) struct Shared {
    pub node: u64,
    sink: Sink,
    counters: Counters,
    routes: Mutex<Routes>,
    /// Bytes of publishes in the channel to the bus thread.
    queued: AtomicUsize,
    queue_limit: usize,
    max_payload: usize,
    /// Clones of the live connection's sockets, so that shutdown can cut a blocked write.
    sockets: Mutex<Vec<TcpStream>>,
    closing: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(sink: Sink, options: Options) -> Self {
        Shared {
            node: random_node_id(),
            sink,
            counters: Counters::default(),
            routes: Mutex::default(),
            queued: AtomicUsize::new(0),
            queue_limit: options.queue_bytes,
            max_payload: options.max_payload,
            sockets: Mutex::default(),
            closing: AtomicBool::new(false),
        }
    }

    /// Charges a publish of `frame_len` bytes against the queue, or says why it is dropped.
    pub fn admit(&self, frame_len: usize) -> Result<(), BusError> {
        let len = frame_len + envelope::HEADER_LEN;
        if len > self.max_payload {
            self.count(Count::Oversized);
            return Err(BusError::TooLarge { len, max: self.max_payload });
        }
        let cost = queue_cost(frame_len);
        if self.queued.fetch_add(cost, Relaxed) + cost > self.queue_limit {
            self.queued.fetch_sub(cost, Relaxed);
            self.count(Count::Dropped);
            return Err(BusError::Full);
        }
        Ok(())
    }

    /// The bus thread took a publish of this cost off the channel.
    pub fn unqueue(&self, cost: usize) {
        self.queued.fetch_sub(cost, Relaxed);
    }

    pub fn count(&self, what: Count) {
        self.add(what, 1);
    }

    pub fn add(&self, what: Count, n: u64) {
        let c = &self.counters;
        let counter = match what {
            Count::Published => &c.published,
            Count::Flushes => &c.flushes,
            Count::Dropped => &c.dropped,
            Count::Oversized => &c.oversized,
            Count::Reconnects => &c.reconnects,
            Count::ConnectFailures => &c.connect_failures,
            Count::ServerErrors => &c.server_errors,
        };
        counter.fetch_add(n, Relaxed);
    }

    pub fn set_connected(&self, up: bool) {
        self.counters.connected.store(up, Relaxed);
    }

    /// Hands `event` to the sink. A panic there would end a bus thread (and with the bus
    /// thread, the bus): it is caught and counted instead, after the panic hook reported it.
    pub fn emit(&self, event: Event) {
        let call = std::panic::AssertUnwindSafe(|| (self.sink)(event));
        if std::panic::catch_unwind(call).is_err() {
            self.counters.sink_panics.fetch_add(1, Relaxed);
        }
    }

    pub fn stats(&self) -> BusStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        BusStats {
            published: get(&c.published),
            flushes: get(&c.flushes),
            dropped: get(&c.dropped),
            oversized: get(&c.oversized),
            received: get(&c.received),
            own_filtered: get(&c.own_filtered),
            gaps: get(&c.gaps),
            lost: get(&c.lost),
            duplicates: get(&c.duplicates),
            malformed: get(&c.malformed),
            reconnects: get(&c.reconnects),
            connect_failures: get(&c.connect_failures),
            server_errors: get(&c.server_errors),
            sink_panics: get(&c.sink_panics),
            subscriptions: get(&c.subscriptions),
            connected: c.connected.load(Relaxed),
        }
    }

    /// Readers start delivering messages for `sid` (before the bus is asked to subscribe).
    pub fn add_route(&self, sid: u64, topic: Arc<str>, subject: &str) {
        let subject: Box<[u8]> = subject.as_bytes().into();
        let mut routes = self.routes();
        routes.sid_of.insert(subject.clone(), sid);
        routes.by_sid.insert(sid, Route { topic, subject, last_seq: HashMap::new() });
        self.counters.subscriptions.store(routes.by_sid.len() as u64, Relaxed);
    }

    /// Readers drop whatever still arrives for `sid`; its sequence tracking is forgotten (a
    /// later subscription starts fresh: what was published meanwhile was not wanted).
    pub fn remove_route(&self, sid: u64) {
        let mut routes = self.routes();
        if let Some(route) = routes.by_sid.remove(&sid) {
            routes.sid_of.remove(&route.subject);
        }
        self.counters.subscriptions.store(routes.by_sid.len() as u64, Relaxed);
    }

    /// A message arrived on a subscription: check its envelope and sequence, then hand it to
    /// the sink (after a gap event if publishes were lost before it).
    pub fn receive(&self, key: RouteKey<'_>, payload: &[u8]) {
        let c = &self.counters;
        let Ok((header, frame)) = envelope::decode(payload) else {
            c.malformed.fetch_add(1, Relaxed);
            return;
        };
        if header.origin == self.node {
            c.own_filtered.fetch_add(1, Relaxed);
            return;
        }
        let (topic, gap) = {
            let mut guard = self.routes();
            let routes = &mut *guard;
            let sid = match key {
                RouteKey::Sid(sid) => Some(sid),
                RouteKey::Subject(s) => routes.sid_of.get(s).copied(),
            };
            // Nothing: it was in flight when this node unsubscribed.
            let Some(route) = sid.and_then(|sid| routes.by_sid.get_mut(&sid)) else { return };
            if route.last_seq.len() >= MAX_ORIGINS_PER_TOPIC
                && !route.last_seq.contains_key(&header.origin)
            {
                route.last_seq.clear();
            }
            let last = route.last_seq.entry(header.origin).or_insert(0);
            let gap = match *last {
                // The first message from this origin since subscribing, or the origin started
                // its stream over (seq 1): nothing to compare with.
                0 => None,
                _ if header.seq == 1 => None,
                l if header.seq <= l => {
                    c.duplicates.fetch_add(1, Relaxed);
                    return;
                }
                l if header.seq > l + 1 => Some(Gap {
                    topic: Arc::clone(&route.topic),
                    origin: header.origin,
                    expected: l + 1,
                    received: header.seq,
                }),
                _ => None,
            };
            *last = header.seq;
            (Arc::clone(&route.topic), gap)
        };
        if let Some(gap) = gap {
            c.gaps.fetch_add(1, Relaxed);
            c.lost.fetch_add(gap.lost(), Relaxed);
            self.emit(Event::Gap(gap));
        }
        c.received.fetch_add(1, Relaxed);
        self.emit(Event::Delivery(Delivery {
            topic,
            key: header.key,
            // Its own allocation: a delivery may sit in a slow client's queue for long, and
            // must not pin the reader's whole buffer meanwhile.
            frame: Bytes::copy_from_slice(frame),
            origin: header.origin,
            seq: header.seq,
        }));
    }

    /// Registers the live connection's sockets; false (and they are shut) when closing.
    pub fn set_sockets(&self, sockets: Vec<TcpStream>) -> bool {
        let mut live = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        shut(&live);
        *live = sockets;
        if self.closing.load(Relaxed) {
            shut(&live);
            return false;
        }
        true
    }

    /// Shuts every live socket down and refuses new ones: unblocks the bus thread and readers.
    pub fn close_sockets(&self) {
        self.closing.store(true, Relaxed);
        shut(&self.sockets.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // A panicking sink cannot poison this: the lock is never held across a sink call.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn shut(sockets: &[TcpStream]) {
    for s in sockets {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// A random id: std's `RandomState` is seeded from the OS's randomness once per process and
/// advanced per instance; the time and pid make it differ across restarts regardless.
fn random_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};

    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::envelope::Header;

    fn shared() -> (Arc<Shared>, Arc<Mutex<Vec<Event>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let options = Options { queue_bytes: 1000, max_payload: 200, ..Options::default() };
        let sink: Sink = Box::new(move |e| sink.lock().unwrap().push(e));
        (Arc::new(Shared::new(sink, options)), events)
    }

    fn msg(origin: u64, seq: u64) -> Vec<u8> {
        let mut m = envelope::encode(&Header { origin, seq, key: 7 }).to_vec();
        m.extend_from_slice(b"frame");
        m
    }

    fn seqs(events: &Mutex<Vec<Event>>) -> Vec<String> {
        let events = std::mem::take(&mut *events.lock().unwrap());
        events
            .into_iter()
            .map(|e| match e {
                Event::Delivery(d) => format!("{}#{}", d.origin, d.seq),
                Event::Gap(g) => format!("gap {}:{}..{}", g.origin, g.expected, g.received),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn sequences_gaps_duplicates_and_restarts() {
        let (s, events) = shared();
        s.add_route(1, "t".into(), "ringside.t");
        for seq in [5, 6, 9, 9, 8, 10, 1, 2] {
            s.receive(RouteKey::Sid(1), &msg(42, seq));
        }
        s.receive(RouteKey::Subject(b"ringside.t"), &msg(43, 3));
        assert_eq!(
            seqs(&events),
            ["42#5", "42#6", "gap 42:7..9", "42#9", "42#10", "42#1", "42#2", "43#3"]
        );
        let st = s.stats();
        assert_eq!((st.received, st.gaps, st.lost, st.duplicates), (7, 1, 2, 2));
    }

    #[test]
    fn own_unrouted_and_malformed_messages_are_dropped() {
        let (s, events) = shared();
        s.add_route(1, "t".into(), "ringside.t");
        s.receive(RouteKey::Sid(1), &msg(s.node, 1));
        s.receive(RouteKey::Sid(2), &msg(42, 1));
        s.receive(RouteKey::Subject(b"ringside.u"), &msg(42, 1));
        s.receive(RouteKey::Sid(1), b"RSB");
        s.remove_route(1);
        s.receive(RouteKey::Sid(1), &msg(42, 1));
        assert!(seqs(&events).is_empty());
        let st = s.stats();
        assert_eq!((st.own_filtered, st.malformed, st.received, st.subscriptions), (1, 1, 0, 0));
    }

    #[test]
    fn resubscribing_starts_sequence_tracking_fresh() {
        let (s, events) = shared();
        s.add_route(1, "t".into(), "ringside.t");
        s.receive(RouteKey::Sid(1), &msg(42, 1));
        s.remove_route(1);
        s.add_route(2, "t".into(), "ringside.t");
        s.receive(RouteKey::Sid(2), &msg(42, 50));
        assert_eq!(seqs(&events), ["42#1", "42#50"]);
    }

    #[test]
    fn origins_per_topic_are_bounded() {
        let (s, _events) = shared();
        s.add_route(1, "t".into(), "ringside.t");
        for origin in 0..MAX_ORIGINS_PER_TOPIC as u64 + 10 {
            s.receive(RouteKey::Sid(1), &msg(origin + 1000, 1));
        }
        let routes = s.routes();
        assert!(routes.by_sid[&1].last_seq.len() <= MAX_ORIGINS_PER_TOPIC);
    }

    #[test]
    fn a_panicking_sink_loses_the_event_not_the_thread() {
        let sink: Sink = Box::new(|e| {
            if let Event::Delivery(d) = e {
                assert!(d.seq != 2, "the sink fails on seq 2");
            }
        });
        let s = Shared::new(sink, Options::default());
        s.add_route(1, "t".into(), "ringside.t");
        for seq in 1..=3 {
            s.receive(RouteKey::Sid(1), &msg(42, seq));
        }
        let st = s.stats();
        assert_eq!((st.received, st.sink_panics), (3, 1));
    }

    #[test]
    fn admission_bounds_size_and_queue() {
        let (s, _events) = shared();
        assert_eq!(s.admit(200), Err(BusError::TooLarge { len: 228, max: 200 }));
        for _ in 0..4 {
            s.admit(150).unwrap();
        }
        assert_eq!(s.admit(150), Err(BusError::Full));
        s.unqueue(queue_cost(150));
        s.admit(150).unwrap();
        let st = s.stats();
        assert_eq!((st.oversized, st.dropped), (1, 1));
    }
}
