//! The top of the public API: the builder, a bound server ([`Running`]), the handle of a
//! started one ([`ServerHandle`]), and the handles that reach workers from any thread
//! ([`Sender`], [`Publisher`]).

use std::any::TypeId;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ringside_proto::{CloseCode, Message};

use crate::api::{ConnId, Error, Handler, SendStatus, Stats};
use crate::config::{Backend, Settings, SlowConsumer, TopicPolicy, TopicRule, Workers};
use crate::runtime::handle::Ctx;
use crate::runtime::worker::Core;
use crate::runtime::{self, pubsub, Command};

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
        /// Share the port with other processes.
        reuse_port: bool,
        /// Most bytes of queued output the server holds (each worker gets an equal share).
        max_buffered_output: usize,
        /// SO_SNDBUF of accepted sockets (0: the kernel's default).
        socket_send_buffer: usize,
    }

    /// Answers `200 ok` to a plain GET of `path` (a load balancer's health check).
    pub fn health_path(mut self, path: &str) -> Self {
        self.settings.health_path = Some(path.to_owned());
        self
    }

    /// Calls [`Handler::on_tick`] on every worker every `period` (millisecond resolution).
    pub fn tick(mut self, period: Duration) -> Self {
        self.settings.tick = Some(period);
        self
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

    /// Checks the settings, binds the listeners and prepares the workers; `factory` makes one
    /// handler per worker.
    pub fn build<H, F>(self, factory: F) -> Result<Running<H, F>, Error>
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        let prepared = runtime::prepare(self.settings)?;
        Ok(Running { prepared, factory, _handler: std::marker::PhantomData })
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
        let local_addr = self.prepared.local_addr;
        let backend = self.prepared.backend_name();
        let (shared, threads) = runtime::spawn(self.prepared, Arc::new(self.factory))?;
        Ok(ServerHandle { local_addr, backend, shared, threads })
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully (close 1001 to every client,
    /// wait up to the shutdown timeout) and returns.
    pub fn run(self) -> io::Result<()> {
        let stop = crate::signal::on_terminate()?;
        let handle = self.spawn()?;
        while !stop.load(Ordering::Relaxed) && !handle.is_finished() {
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

/// A running server: stop it, wait for it, message its connections.
#[derive(Debug)]
pub struct ServerHandle {
    pub(crate) local_addr: SocketAddr,
    pub(crate) backend: &'static str,
    pub(crate) shared: Arc<runtime::Shared>,
    pub(crate) threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Publisher {
    pub(crate) fn new(shared: Arc<runtime::Shared>) -> Self {
        Publisher { shared }
    }
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
        self.shared.broadcast(msg);
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
        Publisher::new(Arc::clone(&self.shared))
    }

    /// A handle for sending to, closing and running code on connections' workers from any
    /// thread (cheap to clone, `Send + Sync`).
    pub fn sender(&self) -> Sender {
        Sender::new(Arc::clone(&self.shared))
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.shared.workers()
    }

    /// Counters summed over the workers.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001, wait up to the
    /// shutdown timeout for the replies, stop the workers. Returns the first worker error.
    pub fn shutdown(self) -> io::Result<()> {
        runtime::stop((self.shared, self.threads))
    }
}

/// Reaches connections from any thread: addressed sends and closes, closures run on a worker,
/// publishes. Commands to one worker travel over its channel in order (two sends to one
/// connection from one thread arrive in that order) and are applied in the worker's next loop
/// iteration, in a batch that costs at most one wake-up; what they queue leaves corked with
/// everything else that iteration.
#[derive(Debug, Clone)]
pub struct Sender {
    shared: Arc<runtime::Shared>,
}

impl Sender {
    pub(crate) fn new(shared: Arc<runtime::Shared>) -> Self {
        Sender { shared }
    }

    /// Sends `msg` to connection `conn`. The frame is encoded here, on the calling thread.
    /// `Queued` means handed to the connection's worker, which then applies the send limit and
    /// policy like any send; a stale id is a no-op there (counted in [`Stats::stale`]).
    /// `Closed` when the server has stopped.
    pub fn send(&self, conn: ConnId, msg: Message<'_>) -> SendStatus {
        let frame = pubsub::encode(msg);
        if self.shared.send(conn.worker(), Command::Send(conn, frame)) {
            SendStatus::Queued
        } else {
            SendStatus::Closed
        }
    }

    /// Sends a text message (see [`Sender::send`]).
    pub fn send_text(&self, conn: ConnId, text: &str) -> SendStatus {
        self.send(conn, Message::Text(text))
    }

    /// Sends an already encoded frame (an unmasked server frame) to `conn`: for a message sent
    /// to many connections one at a time, encoded once.
    pub fn send_frame(&self, conn: ConnId, frame: Bytes) -> SendStatus {
        if self.shared.send(conn.worker(), Command::Send(conn, frame)) {
            SendStatus::Queued
        } else {
            SendStatus::Closed
        }
    }

    /// Starts the close handshake on `conn` with `code` and `reason`; `false` when the server
    /// has stopped. A stale id is a no-op.
    pub fn close(&self, conn: ConnId, code: CloseCode, reason: &str) -> bool {
        self.shared.send(conn.worker(), Command::Close(conn, code, reason.into()))
    }

    /// Runs `f` on `worker`'s thread, in its next loop iteration, with its handler and context
    /// (uWebSockets' `Loop::defer`). `H` must be the server's handler type.
    pub fn defer<H: Handler>(
        &self,
        worker: usize,
        f: impl FnOnce(&mut H, &mut Ctx<'_, H::Conn>) + Send + 'static,
    ) -> Result<(), Error> {
        if self.shared.handler != TypeId::of::<H>() {
            return Err(Error::WrongHandler);
        }
        if worker >= self.shared.workers() {
            return Err(Error::NoWorker(worker));
        }
        let run = Box::new(move |core: &mut dyn std::any::Any| {
            if let Some(core) = core.downcast_mut::<Core<H>>() {
                core.run_deferred(f);
            }
        });
        if self.shared.send(worker, Command::Defer(run)) {
            Ok(())
        } else {
            Err(Error::Stopped)
        }
    }

    /// Publishes `msg` to every subscriber of `topic` on every worker.
    pub fn publish(&self, topic: &str, msg: Message<'_>) {
        self.shared.publish(topic, 0, msg);
    }

    /// Publishes with a conflation key.
    pub fn publish_keyed(&self, topic: &str, key: u64, msg: Message<'_>) {
        self.shared.publish(topic, key, msg);
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.shared.workers()
    }
}
