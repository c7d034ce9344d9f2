//! The public API: the builder with every tunable, the `Handler` an application implements, the
//! `WebSocket` handle it gets in callbacks, and the handle of a running server.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringside_proto::handshake::Request;
use ringside_proto::{CloseCode, Message};

use crate::runtime;
pub use crate::runtime::conn::WebSocket;

/// How many workers (event loops, one thread each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per online CPU.
    PerCore,
    /// Exactly this many.
    Count(usize),
}

/// The I/O backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring when the kernel has every operation it needs, else epoll (logged).
    Auto,
    /// io_uring; fails to start if the kernel lacks it.
    IoUring,
    /// epoll through mio.
    Epoll,
}

/// What happens to a connection whose send queue passes the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close it with 1008 (policy violation). For streams where a gap is worse than a reconnect.
    Close,
    /// Drop the message for that connection, and count it.
    Drop,
    /// On topics: keep only the latest message per key for that connection (a message still
    /// waiting is replaced by the newer one with the same key), so a lagging subscriber gets the
    /// latest price or state, never a stale backlog. Memory stays bounded by the number of keys.
    /// For messages that are not publishes, the same as `Drop`.
    Conflate,
}

/// How a topic treats a subscriber that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    /// What happens to a publish that does not fit under `limit`.
    pub slow_consumer: SlowConsumer,
    /// Queued bytes (of everything the connection has queued) above which the policy applies.
    pub limit: usize,
}

/// A per-topic policy: for topics named `pattern`, or starting with it if it ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// A topic name, or a prefix followed by `*`.
    pub pattern: String,
    /// The policy for those topics.
    pub policy: TopicPolicy,
}

/// The handler's answer to an upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// Complete the handshake.
    Accept,
    /// Refuse with this HTTP status (kept within 400..=599), e.g. 401 or 404.
    Reject(u16),
}

/// An application: one instance per worker, called on that worker's thread. Callbacks must not
/// block; work that blocks belongs on the application's own threads.
pub trait Handler: 'static {
    /// Decide on an upgrade request that passed every RFC check (auth, path, origin beyond the
    /// allow-list). Default: accept.
    fn on_upgrade(&mut self, request: &Request<'_>) -> Upgrade {
        let _ = request;
        Upgrade::Accept
    }
    /// A connection is open.
    fn on_open(&mut self, ws: &mut WebSocket<'_>) {
        let _ = ws;
    }
    /// A complete message arrived. `msg` borrows the receive buffer: copy what you keep.
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>);
    /// The connection's send queue fell back under the high-water mark after passing it.
    fn on_drain(&mut self, ws: &mut WebSocket<'_>) {
        let _ = ws;
    }
    /// The connection is closed: `code` is the peer's close code, 1005 when its close frame had
    /// none, 1006 when it went away without one, or the code we failed it with. Nothing can be
    /// sent any more.
    fn on_close(&mut self, ws: &mut WebSocket<'_>, code: CloseCode, reason: &str) {
        let _ = (ws, code, reason);
    }
}

/// Every tunable, with its default.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on. Default 127.0.0.1:9001.
    pub listen: SocketAddr,
    /// Worker count. Default one per CPU.
    pub workers: Workers,
    /// I/O backend. Default auto.
    pub backend: Backend,
    /// Pin worker i to CPU i (mod CPU count). Default on.
    pub pin: bool,
    /// Largest message accepted (1009 beyond). Default 16 MiB.
    pub max_message_size: u64,
    /// Largest frame accepted (1009 beyond). Default 16 MiB.
    pub max_frame_size: u64,
    /// Largest request head (431 beyond). Default 8 KiB.
    pub max_head_bytes: usize,
    /// Close connections silent for this long (a ping goes out at half of it if `ping_idle`).
    /// Default 120 s.
    pub idle_timeout: Duration,
    /// Ping idle connections at half the idle timeout, so live peers stay open. Default on.
    pub ping_idle: bool,
    /// A client must complete its upgrade request within this (slowloris). Default 10 s.
    pub handshake_timeout: Duration,
    /// After our close frame, wait this long for the peer's before dropping TCP. Default 5 s.
    pub close_timeout: Duration,
    /// Queued bytes above which `on_drain` is armed and reading pauses. Default 1 MiB.
    pub send_high_water: usize,
    /// Queued bytes above which the slow-consumer policy applies. Default 16 MiB.
    pub send_limit: usize,
    /// The slow-consumer policy. Default close (1008).
    pub slow_consumer: SlowConsumer,
    /// Per-topic policies, first match wins; other topics use `slow_consumer` and `send_limit`.
    pub topic_rules: Vec<TopicRule>,
    /// Most topics one connection may subscribe to. Default 4096.
    pub max_subscriptions: usize,
    /// Origins allowed to connect (exact match, case-insensitive); empty: any. Default empty.
    pub allowed_origins: Vec<String>,
    /// Subprotocols, in the server's order of preference. Default none.
    pub subprotocols: Vec<String>,
    /// io_uring submission queue entries (the completion queue gets 4x). Default 4096.
    pub ring_entries: u32,
    /// io_uring provided receive buffers per worker. Default 2048.
    pub recv_buffers: u32,
    /// Size of each io_uring receive buffer (epoll's shared one is at least 64 KiB). Default
    /// 32 KiB: a 16 KiB message with its header arrives in one buffer and is parsed in place.
    pub recv_buffer_size: usize,
    /// On shutdown, wait this long for clients to answer our 1001 close. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Most connections one worker holds (further accepts are refused). Default 1,000,000.
    pub max_connections_per_worker: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            workers: Workers::PerCore,
            backend: Backend::Auto,
            pin: true,
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            max_head_bytes: 8 << 10,
            idle_timeout: Duration::from_secs(120),
            ping_idle: true,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            send_high_water: 1 << 20,
            send_limit: 16 << 20,
            slow_consumer: SlowConsumer::Close,
            topic_rules: Vec::new(),
            max_subscriptions: 4096,
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            ring_entries: 4096,
            recv_buffers: 2048,
            recv_buffer_size: 32 << 10,
            shutdown_timeout: Duration::from_secs(5),
            max_connections_per_worker: 1_000_000,
        }
    }
}

/// The entry point.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with every setting at its default.
    pub fn builder() -> Builder {
        Builder { settings: Settings::default() }
    }
}

/// Configures and starts a server.
#[derive(Debug, Clone)]
pub struct Builder {
    settings: Settings,
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident: $ty:ty),* $(,)?) => {
        $(#[$doc] pub fn $name(mut self, value: $ty) -> Self {
            self.settings.$name = value;
            self
        })*
    };
}

impl Builder {
    /// Listen on `addr` (the first address it resolves to).
    pub fn bind(mut self, addr: impl ToSocketAddrs) -> io::Result<Self> {
        self.settings.listen = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "listen address resolves to nothing")
        })?;
        Ok(self)
    }

    setter! {
        /// Worker count.
        workers: Workers,
        /// I/O backend.
        backend: Backend,
        /// Pin workers to CPUs.
        pin: bool,
        /// Largest message accepted.
        max_message_size: u64,
        /// Largest frame accepted.
        max_frame_size: u64,
        /// Largest request head.
        max_head_bytes: usize,
        /// Idle timeout.
        idle_timeout: Duration,
        /// Ping idle connections.
        ping_idle: bool,
        /// Handshake timeout.
        handshake_timeout: Duration,
        /// Close timeout.
        close_timeout: Duration,
        /// Send queue high-water mark.
        send_high_water: usize,
        /// Send queue hard limit.
        send_limit: usize,
        /// Slow-consumer policy.
        slow_consumer: SlowConsumer,
        /// Most subscriptions per connection.
        max_subscriptions: usize,
        /// Allowed origins.
        allowed_origins: Vec<String>,
        /// Subprotocols by preference.
        subprotocols: Vec<String>,
        /// io_uring ring size.
        ring_entries: u32,
        /// io_uring provided buffers per worker.
        recv_buffers: u32,
        /// Receive buffer size.
        recv_buffer_size: usize,
        /// Shutdown timeout.
        shutdown_timeout: Duration,
        /// Connection cap per worker.
        max_connections_per_worker: usize,
    }

    /// Sets the policy of the topics named `pattern` (or starting with it, if it ends with
    /// `*`). Rules are tried in the order they were added.
    pub fn topic(mut self, pattern: &str, policy: TopicPolicy) -> Self {
        self.settings.topic_rules.push(TopicRule { pattern: pattern.to_owned(), policy });
        self
    }

    /// Replaces every setting at once.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The settings so far.
    pub fn current(&self) -> &Settings {
        &self.settings
    }

    /// Binds the listeners and prepares the workers; `factory` makes one handler per worker.
    pub fn build<H, F>(self, factory: F) -> io::Result<Running<H, F>>
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        runtime::prepare(self.settings, factory)
    }
}

/// A server that is bound and ready: `run` it on this thread or `spawn` it.
pub struct Running<H, F> {
    pub(crate) prepared: runtime::Prepared,
    pub(crate) factory: F,
    pub(crate) _handler: std::marker::PhantomData<fn() -> H>,
}

impl<H, F> std::fmt::Debug for Running<H, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("local_addr", &self.prepared.local_addr).finish()
    }
}

impl<H: Handler, F: Fn() -> H + Send + Sync + 'static> Running<H, F> {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.prepared.local_addr
    }

    /// The backend the workers will use (after `Auto` probed).
    pub fn backend_name(&self) -> &'static str {
        self.prepared.backend_name()
    }

    /// Starts the workers and returns a handle to stop them.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        runtime::spawn(self.prepared, Arc::new(self.factory))
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully (close 1001 to every client,
    /// wait up to the shutdown timeout) and returns.
    pub fn run(self) -> io::Result<()> {
        let handle = self.spawn()?;
        let signalled = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&signalled))?;
        }
        while !signalled.load(Ordering::Relaxed) && !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
        }
        handle.shutdown()
    }
}

/// Publishes to a running server from any thread; one message goes out to every worker in a
/// single channel send each.
#[derive(Debug, Clone)]
pub struct Publisher {
    shared: Arc<runtime::Shared>,
}

impl Publisher {
    /// Publishes `msg` to every subscriber of `topic`.
    pub fn publish(&self, topic: &str, msg: Message<'_>) {
        self.shared.publish(topic, 0, msg);
    }

    /// Publishes with a conflation key (see [`ServerHandle::publish_keyed`]).
    pub fn publish_keyed(&self, topic: &str, key: u64, msg: Message<'_>) {
        self.shared.publish(topic, key, msg);
    }
}

/// What the workers counted, summed (updated once per loop iteration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Open connections.
    pub connections: u64,
    /// Publishes delivered into subscribers' queues.
    pub delivered: u64,
    /// Messages dropped under the `drop` policy (sends and publishes).
    pub dropped: u64,
    /// Staged publishes replaced by a newer one with the same key (`conflate`).
    pub conflated: u64,
    /// Connections closed with 1008 for falling behind.
    pub slow_closed: u64,
}

/// A running server: stop it, wait for it, message its connections.
#[derive(Debug)]
pub struct ServerHandle {
    pub(crate) local_addr: SocketAddr,
    pub(crate) backend: &'static str,
    pub(crate) shared: Arc<runtime::Shared>,
    pub(crate) threads: Vec<JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend in use: "io_uring" or "epoll".
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Whether any worker has stopped (normally only after a shutdown).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Sends `msg` to every open connection on every worker, from any thread.
    pub fn broadcast(&self, msg: Message<'_>) {
        self.shared.broadcast(None, msg);
    }

    /// Publishes `msg` to every subscriber of `topic` on every worker, from any thread.
    pub fn publish(&self, topic: &str, msg: Message<'_>) {
        self.shared.publish(topic, 0, msg);
    }

    /// Publishes with a conflation key: on a conflating topic, a subscriber that lags gets only
    /// the latest message of each key.
    pub fn publish_keyed(&self, topic: &str, key: u64, msg: Message<'_>) {
        self.shared.publish(topic, key, msg);
    }

    /// A handle for publishing from other threads (cheap to clone, `Send + Sync`).
    pub fn publisher(&self) -> Publisher {
        Publisher { shared: Arc::clone(&self.shared) }
    }

    /// Counters summed over the workers.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001, wait up to the
    /// shutdown timeout for the replies, stop the workers. Returns the first worker error.
    pub fn shutdown(self) -> io::Result<()> {
        self.shared.begin_shutdown();
        let mut result = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or_else(|_| Err(io::Error::other("a worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}
