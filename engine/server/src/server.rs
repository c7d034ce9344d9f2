//! The top of the public API: the builder, a bound server ([`Running`]), the handle of a
//! started one ([`ServerHandle`]), and the handles that reach workers from any thread
//! ([`Sender`], [`Publisher`]).

use std::any::TypeId;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ringside_proto::edge::{ForwardedHeader, TrustedProxies};
use ringside_proto::frame::{self, OpCode};
use ringside_proto::{CloseCode, Message};

use crate::api::{ConnId, Error, Handler, SendStatus, Stats};
use crate::config::ProxyProtocol;
use crate::config::{
    Backend, Compression, Settings, SlowConsumer, TlsIdentity, TopicPolicy, TopicRule, Workers,
};
use crate::metrics::MetricsServer;
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
        /// Input the server may hold for unfinished messages, all workers together.
        max_buffered_input: usize,
        /// Time a started message has to finish.
        message_timeout: Duration,
        /// Frames per connection per loop iteration.
        read_budget_frames: u32,
        /// Bytes parsed per connection per loop iteration.
        read_budget_bytes: usize,
        /// Pings and pongs per connection per second (0: no limit).
        max_control_rate: u32,
        /// permessage-deflate: off, shared or dedicated compressors.
        deflate: Compression,
        /// Window bits of a dedicated compressor (9..=15).
        deflate_window: u8,
        /// Payloads shorter than this are sent uncompressed.
        deflate_threshold: usize,
        /// Per-worker budget for deflate state held between messages, bytes.
        deflate_memory: usize,
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

    /// Serves Prometheus metrics (`GET /metrics`) and readiness (`GET /health`: 200 while
    /// the workers run, 503 once shutdown began) on `addr`, from a thread of its own. Port 0
    /// picks a free port: see [`ServerHandle::metrics_addr`].
    pub fn metrics_listen(mut self, addr: SocketAddr) -> Self {
        self.settings.metrics_listen = Some(addr);
        self
    }

    /// Calls [`Handler::on_tick`] on every worker every `period` (millisecond resolution).
    pub fn tick(mut self, period: Duration) -> Self {
        self.settings.tick = Some(period);
        self
    }

    /// Fans topics out across nodes over a message bus: `nats://host:port` or
    /// `redis://host:port` (docs/cluster.md). The server connects when it starts, and
    /// `spawn` fails if the bus cannot be reached then; later outages are ridden out.
    pub fn bus(mut self, url: &str) -> Self {
        self.settings.bus = Some(url.to_owned());
        self
    }

    /// Sets the policy of the topics named `pattern` (or starting with it, if it ends with
    /// `*`). Rules are tried in the order they were added.
    pub fn topic(mut self, pattern: &str, policy: TopicPolicy) -> Self {
        self.settings.topic_rules.push(TopicRule { pattern: pattern.to_owned(), policy });
        self
    }

    /// Serves TLS (wss) with the certificate chain and private key in these PEM files, read
    /// when the server is built and again at each [`ServerHandle::reload_tls`].
    pub fn tls(mut self, cert_pem: impl AsRef<Path>, key_pem: impl AsRef<Path>) -> Self {
        self.settings.tls =
            Some(TlsIdentity::files(cert_pem.as_ref().to_owned(), key_pem.as_ref().to_owned()));
        self
    }

    /// Serves TLS (wss) with a certificate chain and private key given as PEM bytes.
    pub fn tls_pem(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Self {
        self.settings.tls = Some(TlsIdentity::pem(cert_pem, key_pem));
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

/// The deployment edge: proxies and the access log.
impl Builder {
    setter! {
        /// Proxies whose forwarding and PROXY headers are believed.
        trusted_proxies: TrustedProxies,
        /// Forwarding headers read from trusted proxies, in order.
        forwarded_headers: Vec<ForwardedHeader>,
        /// Refuse (400) a trusted proxy's request that names no usable client.
        require_forwarded: bool,
        /// Whether connections start with a PROXY protocol header.
        proxy_protocol: ProxyProtocol,
        /// Log every upgrade attempt (target `ringside::access`).
        access_log: bool,
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

    /// Starts the workers (and the metrics listener, when one is set) and returns a handle to
    /// stop them. Fails when the metrics address cannot be bound: the workers are stopped again.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let local_addr = self.prepared.local_addr;
        let backend = self.prepared.backend_name();
        let metrics_listen = self.prepared.settings.metrics_listen;
        let (shared, threads) = runtime::spawn(self.prepared, Arc::new(self.factory))?;
        let metrics = match metrics_listen {
            None => None,
            Some(addr) => {
                let ready = Arc::clone(&shared);
                let health = Arc::new(move || ready.is_ready());
                match MetricsServer::start(addr, Arc::clone(&shared.metrics), health) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        let _ = runtime::stop((shared, threads));
                        let why = format!("metrics listener on {addr} (--metrics-listen): {e}");
                        return Err(io::Error::new(e.kind(), why));
                    }
                }
            }
        };
        Ok(ServerHandle { local_addr, backend, shared, threads, metrics })
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully (close 1001 to every client,
    /// wait up to the shutdown timeout) and returns. With TLS, SIGHUP reloads the certificate
    /// ([`ServerHandle::reload_tls`]); a failed reload is logged and the old one stays.
    pub fn run(self) -> io::Result<()> {
        let stop = crate::signal::on_terminate()?;
        let hangup = match self.prepared.settings.tls {
            Some(_) => Some(crate::signal::on_hangup()?),
            None => None,
        };
        let handle = self.spawn()?;
        while !stop.load(Ordering::Relaxed) && !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if hangup.is_some_and(|h| h.swap(false, Ordering::Relaxed)) {
                if let Err(e) = handle.reload_tls() {
                    tracing::error!(target: "ringside", error = %e, "certificate reload failed");
                }
            }
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
    pub(crate) fn new(shared: Arc<runtime::Shared>) -> Self {
        Publisher { shared }
    }

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
    /// The `/metrics` and `/health` listener, stopped after the workers on shutdown.
    pub(crate) metrics: Option<MetricsServer>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the metrics listener, when one was asked for
    /// ([`Builder::metrics_listen`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
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

    /// The bus connection's counters (publishes sent and received, gaps, reconnects), or
    /// none without a bus.
    pub fn bus_stats(&self) -> Option<ringside_bus::BusStats> {
        self.shared.bus.as_ref().map(ringside_bus::BusHandle::stats)
    }

    /// Loads the TLS certificate and key again (the files are read anew) and serves them to
    /// every connection accepted from now on; open connections keep their session. On error
    /// (unreadable file, bad PEM, a key that does not match) the previous certificate stays.
    pub fn reload_tls(&self) -> Result<(), Error> {
        let tls = self.shared.tls.as_ref().ok_or_else(not_tls)?;
        tls.reload().map_err(Error::Tls)?;
        tracing::info!(target: "ringside", "TLS certificate reloaded; new connections get it");
        Ok(())
    }

    /// Serves `identity` to every connection accepted from now on (see
    /// [`ServerHandle::reload_tls`]); later reloads read it.
    pub fn set_tls(&self, identity: TlsIdentity) -> Result<(), Error> {
        let tls = self.shared.tls.as_ref().ok_or_else(not_tls)?;
        tls.replace(identity).map_err(Error::Tls)?;
        tracing::info!(target: "ringside", "TLS certificate replaced; new connections get it");
        Ok(())
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001, wait up to the
    /// shutdown timeout for the replies, stop the workers. Returns the first worker error.
    pub fn shutdown(self) -> io::Result<()> {
        // `/health` answers 503 from the moment shutdown begins; the listener stays up while
        // the workers drain, so a scraper sees the final counts.
        let result = runtime::stop((self.shared, self.threads));
        drop(self.metrics);
        result
    }
}

/// A message encoded as a server frame, once, for sending to many connections.
#[derive(Debug, Clone)]
pub struct Encoded(Bytes);
fn not_tls() -> Error {
    Error::Tls("this server was not started with TLS (Builder::tls, --tls-cert)".into())
}

/// Reaches connections from any thread: addressed sends and closes, closures run on a worker,
/// publishes. Commands to one worker travel over its channel in order (two sends to one
/// connection from one thread arrive in that order) and are applied in the worker's next loop
/// iteration, in a batch that costs at most one wake-up; what they queue leaves corked with
/// everything else that iteration. A thread that answers bursts gathers each burst in a
/// [`Batch`] instead, which hands it over at once.
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
        self.send_encoded(conn, &Sender::encode(msg))
    }

    /// Sends a text message (see [`Sender::send`]).
    pub fn send_text(&self, conn: ConnId, text: &str) -> SendStatus {
        self.send(conn, Message::Text(text))
    }

    /// Encodes `msg` once, for [`Sender::send_encoded`] to many connections.
    pub fn encode(msg: Message<'_>) -> Encoded {
        Encoded(pubsub::encode(msg))
    }

    /// Sends a message encoded with [`Sender::encode`]: a message for many connections is
    /// encoded once and shared (a reference count per connection, or a copy when small).
    pub fn send_encoded(&self, conn: ConnId, frame: &Encoded) -> SendStatus {
        if self.shared.send(conn.worker(), Command::Send(conn, frame.0.clone())) {
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
        let run = deferred(&self.shared, worker, f)?;
        if self.shared.send(worker, run) {
            Ok(())
        } else {
            Err(Error::Stopped)
        }
    }

    /// A [`Batch`]: sends, closes, deferred closures and publishes gathered on this thread and
    /// handed to each worker at once.
    pub fn batch(&self) -> Batch {
        Batch {
            shared: Arc::clone(&self.shared),
            pending: (0..self.shared.workers()).map(|_| Pending::default()).collect(),
            len: 0,
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

/// `f` as a command for `worker`, after checking that `H` is the server's handler type.
fn deferred<H: Handler>(
    shared: &runtime::Shared,
    worker: usize,
    f: impl FnOnce(&mut H, &mut Ctx<'_, H::Conn>) + Send + 'static,
) -> Result<Command, Error> {
    if shared.handler != TypeId::of::<H>() {
        return Err(Error::WrongHandler);
    }
    if worker >= shared.workers() {
        return Err(Error::NoWorker(worker));
    }
    Ok(Command::Defer(Box::new(move |core: &mut dyn std::any::Any| {
        if let Some(core) = core.downcast_mut::<Core<H>>() {
            core.run_deferred(f);
        }
    })))
}

/// Sends, closes, deferred closures and publishes gathered on one thread, then handed to the
/// workers by [`flush`](Batch::flush) (or on drop): one channel send and at most one wake-up
/// per worker that has something, however much was gathered.
///
/// For a thread that answers bursts, such as a matching engine draining its queue: separate
/// [`Sender`] calls each hand their command over at once, and when the worker shares a core
/// with that thread, each can wake the worker and switch to it; a batch gathered over the
/// burst costs one switch. Small messages (frames up to 512 bytes) are encoded back to back
/// into one buffer per worker, so a burst of acks costs no allocation per message. What a
/// worker gets is applied in the order it was gathered, in one loop iteration, and leaves
/// corked. From [`Sender::batch`]; one batch can serve many bursts.
#[derive(Debug)]
pub struct Batch {
    shared: Arc<runtime::Shared>,
    /// Per worker, what it gets at the next flush.
    pending: Vec<Pending>,
    len: usize,
}

/// One worker's share of a batch: commands, and the run of small frames gathered since the
/// last command (kept apart so that order holds: a command seals the run before it).
#[derive(Debug, Default)]
struct Pending {
    commands: Vec<Command>,
    frames: Vec<u8>,
    to: Vec<(ConnId, u32, u32)>,
}

impl Pending {
    /// Turns the run of small frames into a command.
    fn seal(&mut self) {
        if !self.to.is_empty() {
            let frames = Bytes::from(std::mem::take(&mut self.frames));
            let to = std::mem::take(&mut self.to);
            self.commands.push(Command::Packed(frames, to));
        }
    }
}

/// Frames up to this size are packed (they are copied into the connection's queue anyway).
const PACK_MAX: usize = crate::runtime::queue::COPY_SHARED_MAX;
/// A run of packed frames is sealed past this many bytes.
const PACK_RUN: usize = 1 << 20;

impl Batch {
    /// Gathers `msg` for connection `conn` (encoded here, on the calling thread). At the flush
    /// it is queued as [`Sender::send`] would: under the send limit and policy; a stale id is a
    /// no-op there.
    pub fn send(&mut self, conn: ConnId, msg: Message<'_>) {
        let Some(p) = self.pending.get_mut(conn.worker()) else { return };
        if msg.len() + 10 > PACK_MAX {
            self.push(conn.worker(), Command::Send(conn, pubsub::encode(msg)));
            return;
        }
        let opcode = match msg {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        let start = p.frames.len();
        frame::write_frame(&mut p.frames, true, opcode, None, msg.as_bytes());
        p.to.push((conn, start as u32, p.frames.len() as u32));
        if p.frames.len() > PACK_RUN {
            p.seal();
        }
        self.len += 1;
    }

    /// Gathers a text message (see [`Batch::send`]).
    pub fn send_text(&mut self, conn: ConnId, text: &str) {
        self.send(conn, Message::Text(text));
    }

    /// Gathers an already encoded frame (see [`Sender::send_frame`]).
    pub fn send_frame(&mut self, conn: ConnId, frame: Bytes) {
        self.push(conn.worker(), Command::Send(conn, frame));
    }

    /// Gathers a close of `conn` (see [`Sender::close`]).
    pub fn close(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        self.push(conn.worker(), Command::Close(conn, code, reason.into()));
    }

    /// Gathers a closure to run on `worker` (see [`Sender::defer`]); checked now.
    pub fn defer<H: Handler>(
        &mut self,
        worker: usize,
        f: impl FnOnce(&mut H, &mut Ctx<'_, H::Conn>) + Send + 'static,
    ) -> Result<(), Error> {
        let run = deferred(&self.shared, worker, f)?;
        self.push(worker, run);
        Ok(())
    }

    /// Gathers a publish to every subscriber of `topic` on every worker (encoded once here).
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) {
        self.publish_keyed(topic, 0, msg);
    }

    /// Gathers a publish with a conflation key.
    pub fn publish_keyed(&mut self, topic: &str, key: u64, msg: Message<'_>) {
        let p = pubsub::Publication::new(topic, key, msg);
        for worker in 1..self.pending.len() {
            self.publish_to(worker, p.copied());
        }
        self.publish_to(0, p);
    }

    /// Publishes in a row go to a worker as one command.
    fn publish_to(&mut self, worker: usize, p: pubsub::Publication) {
        let pending = &mut self.pending[worker];
        if pending.to.is_empty() {
            if let Some(Command::Publish(list)) = pending.commands.last_mut() {
                list.push(p);
                self.len += 1;
                return;
            }
        }
        self.push(worker, Command::Publish(vec![p]));
    }

    fn push(&mut self, worker: usize, command: Command) {
        // Ids and workers come from this server, so the index is in range; a foreign one is
        // dropped like a stale id.
        if let Some(pending) = self.pending.get_mut(worker) {
            pending.seal();
            pending.commands.push(command);
            self.len += 1;
        }
    }

    /// Messages, closes, closures and publishes gathered and not yet flushed (a publish counts
    /// once per worker).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits for a flush.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands what was gathered to the workers. `false` when the server has stopped (what was
    /// gathered is dropped).
    pub fn flush(&mut self) -> bool {
        let mut delivered = true;
        for (worker, pending) in self.pending.iter_mut().enumerate() {
            pending.seal();
            let command = match pending.commands.len() {
                0 => continue,
                1 => pending.commands.pop().expect("one command"),
                n => {
                    Command::Batch(std::mem::replace(&mut pending.commands, Vec::with_capacity(n)))
                }
            };
            delivered &= self.shared.send(worker, command);
        }
        self.len = 0;
        delivered
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}
