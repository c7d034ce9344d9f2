//! Fans Ringside topics out across nodes over an existing message bus: NATS or Redis pub/sub.
//!
//! Each node sends its topic publishes to the bus, and subscribes on the bus to the topics some
//! local connection wants (interest-based: [`BusHandle::interest_added`] and
//! [`BusHandle::interest_removed`] count interest per topic, so the bus carries a topic to a node
//! only while that node has a subscriber for it). Publishes from other nodes come back through a
//! sink the server supplies ([`connect`]), which hands them to its workers. A node's own
//! publishes never come back from the bus: the server delivers those locally, as without a bus.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use ringside_bus::{connect, Event};
//!
//! let bus = connect("nats://127.0.0.1:4222", |event| match event {
//!     // Push into the inbox of each worker (they know their own subscribers) and wake it.
//!     Event::Delivery(d) => println!("{} bytes on {} from {:x}", d.frame.len(), d.topic, d.origin),
//!     Event::Gap(g) => eprintln!("lost {} publishes on {} from {:x}", g.lost(), g.topic, g.origin),
//!     _ => {}
//! })?;
//! bus.interest_added("price.EURUSD")?; // a worker's first subscriber of the topic
//! let frame = bytes::Bytes::from_static(b"\x81\x051.085"); // as the server encodes a publish
//! bus.publish(Arc::from("price.EURUSD"), frame, 7)?; // to every other interested node
//! bus.interest_removed("price.EURUSD"); // that worker's last subscriber left
//! # Ok::<(), ringside_bus::BusError>(())
//! ```
//!
//! A publish travels as an [envelope]: the origin node's random id, a sequence number per origin
//! and topic, the conflation key, then the encoded WebSocket frame verbatim. The topic is the bus
//! subject ([`subject`]: `ringside.` plus a reversible escape).
//!
//! # Threads, not an async runtime
//!
//! Nothing here ever blocks a server worker: [`BusHandle::publish`] and the interest calls put a
//! command on a channel (`crossbeam-channel`) and return. One bus thread owns the connection and
//! does blocking `std::net::TcpStream` writes; one reader thread per socket parses what the bus
//! sends and calls the sink. Tokio is not used: it would bring a second scheduler and its
//! threads into a thread-per-core server for two sockets' worth of I/O.
//!
//! # What it guarantees
//!
//! - **Order per publisher node and topic:** a node's publishes on one topic reach every other
//!   interested node in publish order (one connection per node, and both buses keep order per
//!   connection).
//! - **No echo:** a node never gets its own publishes back (each carries the node id, and the
//!   receiver drops its own; NATS is also asked not to echo).
//! - **At most once, with gap detection:** a publish reaches each interested node once or not at
//!   all. Across a bus outage (or a backlog that overflowed while disconnected) publishes are
//!   lost, not retried; the receiver sees the sequence jump and reports a [`Gap`] with the count.
//! - **Bounded memory:** publishes waiting for the bus thread ([`Options::queue_bytes`]) and held
//!   while disconnected ([`Options::backlog_bytes`]) are bounded; beyond that they are dropped
//!   and counted, never buffered without bound. Incoming messages are bounded by
//!   [`MAX_INCOMING`].
//! - **Reconnection:** a lost connection is retried with exponential backoff (50 ms doubling to
//!   2 s, jittered), and the current interest set is subscribed again before anything else.
//!
//! # What it does not do
//!
//! - No delivery across nodes for publishes the bus never took: nothing is persisted or
//!   replayed (use NATS JetStream or Redis streams for that; this is live fan-out).
//! - No order between different publishers, or between topics.
//! - No gap report for messages lost before a node's first message from a publisher on a topic,
//!   or for publishes dropped at [`BusHandle::publish`] because the queue was full (those are
//!   counted in the publisher's [`BusStats::dropped`]).
//! - No TLS and no cluster discovery: one `nats://` or `redis://` address (point it at a local
//!   proxy or a load-balanced name for more).
//! - No frame validation: the bus is trusted; anyone who can publish on its `ringside.` subjects
//!   can send frames to this node's clients.

mod driver;
pub mod envelope;
mod inbuf;
mod nats;
mod redis;
mod shared;
pub mod subject;
mod url;

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;

use crate::driver::Command;
use crate::shared::Shared;

pub use crate::shared::BusStats;

/// The largest bus message a reader accepts (header and frame); a larger one ends the
/// connection. NATS allows at most 64 MiB per message.
pub const MAX_INCOMING: usize = 64 << 20;

/// What the bus hands to the server's sink.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A publish from another node.
    Delivery(Delivery),
    /// Publishes from one node on one topic were lost (sent before [`Event::Delivery`] of the
    /// message that revealed the loss).
    Gap(Gap),
    /// The connection is up, and every topic with interest has been subscribed (again).
    Connected {
        /// How many times this handle has reconnected so far (0 on the first connection).
        reconnects: u64,
    },
    /// The connection was lost; the bus thread is reconnecting. Publishes until then are held
    /// in the backlog or dropped.
    Disconnected {
        /// What happened, for a log line.
        reason: String,
    },
}

/// A publish from another node, for this node's local subscribers of `topic`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Arc<str>,
    /// The conflation key the publisher gave.
    pub key: u64,
    /// The encoded WebSocket frame, as the publisher encoded it.
    pub frame: Bytes,
    /// The publishing node's id.
    pub origin: u64,
    /// Its sequence number in `origin`'s stream for `topic`.
    pub seq: u64,
}

/// Publishes lost between two that arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub topic: Arc<str>,
    /// The publishing node's id.
    pub origin: u64,
    /// The sequence number that should have come next.
    pub expected: u64,
    /// The one that came.
    pub received: u64,
}

impl Gap {
    /// How many publishes are missing.
    pub fn lost(&self) -> u64 {
        self.received - self.expected
    }
}

/// Where the bus delivers [`Event`]s. It runs on a bus thread: it must not block (push into a
/// worker's channel and wake it), or the bus connection stalls and the bus may drop this node
/// as a slow consumer. It must not call [`BusHandle::shutdown`] (the call would wait for its own
/// thread), nor own a [`BusHandle`] (a cycle: the bus would never stop). A panic in it is
/// caught and counted ([`BusStats::sink_panics`]); that event is lost.
pub type Sink = Box<dyn Fn(Event) + Send + Sync>;

/// Tunables; [`Options::default`] fits most deployments.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Limit for one TCP connect and the protocol handshake after it.
    pub connect_timeout: Duration,
    /// A socket write blocked this long means the bus is not reading: reconnect.
    pub write_timeout: Duration,
    /// How often the bus thread pings the bus; two intervals without an answer mean the
    /// connection is dead (a host gone without a reset).
    pub ping_interval: Duration,
    /// The first reconnect delay; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Publishes waiting for the bus thread, in bytes; past it `publish` refuses.
    pub queue_bytes: usize,
    /// Publishes held while disconnected, in bytes; past it the oldest are dropped.
    pub backlog_bytes: usize,
    /// The largest frame plus envelope a publish may carry (NATS servers also impose their
    /// `max_payload`, 1 MiB by default).
    pub max_payload: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            queue_bytes: 64 << 20,
            backlog_bytes: 4 << 20,
            max_payload: 1 << 20,
        }
    }
}

impl Options {
    /// The options with every value in a range that works: timeouts and the ping interval at
    /// least 10 ms (a zero timeout is an error for the socket calls, a zero interval a ping
    /// storm), `backoff_min` at least 1 ms (zero would spin on a dead bus), `backoff_max` no
    /// less than `backoff_min`, `max_payload` no more than what receivers accept
    /// ([`MAX_INCOMING`]).
    fn normalized(mut self) -> Options {
        let floor = Duration::from_millis(10);
        self.connect_timeout = self.connect_timeout.max(floor);
        self.write_timeout = self.write_timeout.max(floor);
        self.ping_interval = self.ping_interval.max(floor);
        self.backoff_min = self.backoff_min.max(Duration::from_millis(1));
        self.backoff_max = self.backoff_max.max(self.backoff_min);
        self.max_payload = self.max_payload.min(MAX_INCOMING);
        self
    }
}

/// This crate's one error type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusError {
    /// The bus URL is malformed or names something unsupported; the message says what to fix.
    BadUrl(String),
    /// The first connection failed (later ones are retried in the background): check that the
    /// bus runs at that address and that the credentials are right.
    Connect(String),
    /// A topic name is empty or longer than [`subject::MAX_TOPIC_LEN`] bytes; the server refuses
    /// those before they get here.
    BadTopic,
    /// The bus thread has [`Options::queue_bytes`] waiting already: the bus is slower than the
    /// publishers. The publish was dropped and counted.
    Full,
    /// The frame is larger than [`Options::max_payload`] allows: dropped and counted.
    TooLarge { len: usize, max: usize },
    /// The handle was shut down.
    Closed,
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::BadUrl(why) => write!(f, "bad bus URL {why}"),
            BusError::Connect(why) => write!(f, "could not connect to the bus: {why}"),
            BusError::BadTopic => f.write_str("topic names are 1 to 1024 bytes"),
            BusError::Full => {
                f.write_str("the bus queue is full (the bus is slower than the publishers)")
            }
            BusError::TooLarge { len, max } => {
                write!(f, "a {len}-byte publish is over the bus limit of {max} bytes")
            }
            BusError::Closed => f.write_str("the bus handle was shut down"),
        }
    }
}

impl std::error::Error for BusError {}

/// Checks `url` as [`connect`] would, without connecting: for a server that checks its
/// settings before it starts anything.
pub fn check_url(url: &str) -> Result<(), BusError> {
    url::Endpoint::parse(url).map(|_| ())
}

/// Connects to `url` (`nats://host:port` or `redis://host:port`) with default [`Options`].
pub fn connect(
    url: &str,
    sink: impl Fn(Event) + Send + Sync + 'static,
) -> Result<BusHandle, BusError> {
    connect_with(url, Options::default(), sink)
}

/// Connects to `url`: returns once the first connection is up (the sink has seen
/// [`Event::Connected`] by then), or with the reason it could not be made within
/// `options.connect_timeout`. After that, lost connections are re-made in the background for as
/// long as the handle lives.
pub fn connect_with(
    url: &str,
    options: Options,
    sink: impl Fn(Event) + Send + Sync + 'static,
) -> Result<BusHandle, BusError> {
    let endpoint = url::Endpoint::parse(url)?;
    let options = options.normalized();
    let shared = Arc::new(Shared::new(Box::new(sink), options.clone()));
    let (commands, thread) = match endpoint.kind {
        url::Kind::Nats => driver::start(nats::Nats::new(endpoint), Arc::clone(&shared), options)?,
        url::Kind::Redis => {
            driver::start(redis::Redis::new(endpoint), Arc::clone(&shared), options)?
        }
    };
    Ok(BusHandle {
        inner: Arc::new(Inner { shared, commands, thread: std::sync::Mutex::new(Some(thread)) }),
    })
}

/// A node's connection to the bus. Cheap to clone (`Send + Sync`): every worker may hold one.
/// Dropping the last clone stops the bus threads without waiting for them;
/// [`BusHandle::shutdown`] waits.
#[derive(Debug, Clone)]
pub struct BusHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl BusHandle {
    /// Publishes `frame` (an encoded WebSocket frame) on `topic` to every other interested node,
    /// with conflation key `key`. Never blocks: it queues the publish for the bus thread. An
    /// error means the publish was dropped (and counted); the local delivery is the caller's.
    pub fn publish(&self, topic: Arc<str>, frame: Bytes, key: u64) -> Result<(), BusError> {
        if topic.is_empty() || topic.len() > subject::MAX_TOPIC_LEN {
            return Err(BusError::BadTopic);
        }
        self.inner.shared.admit(frame.len())?;
        let cost = shared::queue_cost(frame.len());
        self.inner.commands.send(Command::Publish { topic, frame, key }).map_err(|_| {
            self.inner.shared.unqueue(cost);
            BusError::Closed
        })
    }

    /// One more local subscriber set (a worker) wants `topic`: the first subscribes the node on
    /// the bus. Call it once per worker when that worker's first connection subscribes.
    pub fn interest_added(&self, topic: &str) -> Result<(), BusError> {
        if topic.is_empty() || topic.len() > subject::MAX_TOPIC_LEN {
            return Err(BusError::BadTopic);
        }
        self.send(Command::InterestAdded(topic.into()))
    }

    /// One fewer: the last unsubscribes the node on the bus. Call it once per worker when that
    /// worker's last subscriber of `topic` leaves. More removes than adds are ignored.
    pub fn interest_removed(&self, topic: &str) {
        let _ = self.send(Command::InterestRemoved(topic.into()));
    }

    /// This node's id (random per [`connect`]): the `origin` other nodes see.
    pub fn node_id(&self) -> u64 {
        self.inner.shared.node
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BusStats {
        self.inner.shared.stats()
    }

    /// Stops the bus threads and waits for them (bounded by the write timeout): no sink call
    /// happens after it returns. Other clones of the handle get [`BusError::Closed`] from then.
    pub fn shutdown(&self) {
        self.inner.stop();
        let thread = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    fn send(&self, command: Command) -> Result<(), BusError> {
        self.inner.commands.send(command).map_err(|_| BusError::Closed)
    }
}

impl Inner {
    fn stop(&self) {
        let _ = self.commands.send(Command::Shutdown);
        // A bus thread blocked in a write notices at once.
        self.shared.close_sockets();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_clamped_to_what_works() {
        let zero = Options {
            connect_timeout: Duration::ZERO,
            write_timeout: Duration::ZERO,
            ping_interval: Duration::ZERO,
            backoff_min: Duration::ZERO,
            backoff_max: Duration::ZERO,
            queue_bytes: 0,
            backlog_bytes: 0,
            max_payload: usize::MAX,
        }
        .normalized();
        assert_eq!(zero.connect_timeout, Duration::from_millis(10));
        assert_eq!(zero.write_timeout, Duration::from_millis(10));
        assert_eq!(zero.ping_interval, Duration::from_millis(10));
        assert_eq!(
            (zero.backoff_min, zero.backoff_max),
            (Duration::from_millis(1), Duration::from_millis(1))
        );
        assert_eq!(zero.max_payload, MAX_INCOMING);
        let default = Options::default().normalized();
        assert_eq!(default.backoff_max, Duration::from_secs(2));
        assert_eq!(default.max_payload, 1 << 20);
    }

    #[test]
    fn handles_are_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<BusHandle>();
    }
}
