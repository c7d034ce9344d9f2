//! The runtime: binds one listener per worker (SO_REUSEPORT, so the kernel spreads accepts),
//! picks the backend once, starts one pinned thread per worker, and carries what workers share:
//! the shutdown flag, their wakers and their command channels.

pub(crate) mod backend;
pub(crate) mod budget;
pub(crate) mod cluster;
pub(crate) mod conn;
pub(crate) mod deflate;
pub(crate) mod handle;
pub(crate) mod pubsub;
pub(crate) mod queue;
pub(crate) mod tls;
pub(crate) mod worker;

use std::any::{Any, TypeId};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ringside_bus::BusHandle;
use ringside_proto::{CloseCode, Message};
use socket2::{Domain, Protocol, Socket, Type};

use self::backend::epoll::Epoll;
use self::backend::uring::Uring;
use self::backend::Waker;
use self::pubsub::Publication;
use crate::api::Stats;
use crate::api::{ConnId, Handler};
use crate::config::{Backend, Settings, Workers};
use crate::metrics::{BackendKind, WorkerMetrics, WorkerMetricsRef};

/// A closure to run on a worker, given its `Core<H>` as `Any` (the sender checked `H`).
pub(crate) type Deferred = Box<dyn FnOnce(&mut dyn Any) + Send>;

/// What a worker can be asked from another thread.
pub(crate) enum Command {
    /// An encoded frame for every open connection.
    Broadcast(Bytes),
    /// Publishes, in publish order (a batch from another worker's loop iteration, or one from a
    /// publisher thread).
    Publish(Vec<Publication>),
    /// An encoded frame for one connection.
    Send(ConnId, Bytes),
    /// Close one connection.
    Close(ConnId, CloseCode, Box<str>),
    /// Run a closure on the worker.
    Defer(Deferred),
    /// Small frames for several connections, encoded back to back in one buffer: each
    /// connection with the range of its frame (from a `Batch`).
    Packed(Bytes, Vec<(ConnId, u32, u32)>),
    /// Commands gathered by a `Batch`, applied in order.
    Batch(Vec<Command>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Broadcast(b) => write!(f, "Broadcast({} bytes)", b.len()),
            Command::Publish(p) => write!(f, "Publish({} publications)", p.len()),
            Command::Send(id, b) => write!(f, "Send({id}, {} bytes)", b.len()),
            Command::Close(id, code, _) => write!(f, "Close({id}, {code})"),
            Command::Defer(_) => f.write_str("Defer"),
            Command::Packed(b, to) => write!(f, "Packed({} frames, {} bytes)", to.len(), b.len()),
            Command::Batch(b) => write!(f, "Batch({} commands)", b.len()),
        }
    }
}

/// One worker's counters, written by it once per loop iteration, read by anyone.
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    pub connections: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub conflated: AtomicU64,
    pub slow_closed: AtomicU64,
    pub stale: AtomicU64,
    pub accept_errors: AtomicU64,
    pub compressed_shared: AtomicU64,
    pub compressed_per_conn: AtomicU64,
    pub deflate_declined: AtomicU64,
    pub deflate_memory: AtomicU64,
    pub buffered_output: AtomicU64,
}

/// What all workers and handles share.
#[derive(Debug)]
pub(crate) struct Shared {
    shutdown: AtomicBool,
    wakers: Vec<Waker>,
    /// Set when a worker has been woken and has not drained its inbox since: further senders
    /// skip the eventfd write (one wake-up per batch, not per message).
    wake_pending: Vec<AtomicBool>,
    inboxes: Vec<Sender<Command>>,
    pub(crate) stats: Vec<WorkerStats>,
    /// Each worker's Prometheus counters (worker i writes block i; the metrics thread reads).
    pub(crate) metrics: Arc<[WorkerMetrics]>,
    /// Worker threads that have returned (or panicked): readiness is over once one has.
    pub(crate) exited: AtomicUsize,
    /// The handler type the workers run, so a deferred closure for another type is refused at
    /// the call instead of failing on the worker.
    pub(crate) handler: TypeId,
    /// The message bus to the other nodes (`Settings::bus`), if any.
    pub(crate) bus: Option<BusHandle>,
    /// Gaps the bus reported, and the publishes lost in them.
    bus_gaps: AtomicU64,
    bus_lost: AtomicU64,
    /// The TLS configuration, when serving wss.
    pub(crate) tls: Option<Arc<tls::TlsShared>>,
}

impl Shared {
    pub(crate) fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends `command` to `worker` and wakes it unless a wake-up is already on its way;
    /// `false` when the worker has stopped (or does not exist).
    pub(crate) fn send(&self, worker: usize, command: Command) -> bool {
        let Some(inbox) = self.inboxes.get(worker) else { return false };
        if inbox.send(command).is_err() {
            return false;
        }
        if !self.wake_pending[worker].swap(true, Ordering::SeqCst) {
            self.wakers[worker].wake();
        }
        true
    }

    /// Commands waiting in `worker`'s inbox (publishers elsewhere slow down while it is long).
    pub(crate) fn backlog(&self, worker: usize) -> usize {
        self.inboxes.get(worker).map_or(0, Sender::len)
    }

    /// Called by `worker` right before it drains its inbox.
    pub(crate) fn woken(&self, worker: usize) {
        self.wake_pending[worker].store(false, Ordering::SeqCst);
    }

    /// Encodes `msg` once and hands every worker its own copy.
    pub(crate) fn publish(&self, topic: &str, key: u64, msg: Message<'_>) {
        let p = Publication::new(topic, key, msg);
        self.publish_to_bus(&p);
        for worker in 1..self.workers() {
            self.send(worker, Command::Publish(vec![p.copied()]));
        }
        self.send(0, Command::Publish(vec![p]));
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for w in &self.stats {
            total.connections += w.connections.load(Ordering::Relaxed);
            total.delivered += w.delivered.load(Ordering::Relaxed);
            total.dropped += w.dropped.load(Ordering::Relaxed);
            total.conflated += w.conflated.load(Ordering::Relaxed);
            total.slow_closed += w.slow_closed.load(Ordering::Relaxed);
            total.stale += w.stale.load(Ordering::Relaxed);
            total.accept_errors += w.accept_errors.load(Ordering::Relaxed);
            total.compressed_shared += w.compressed_shared.load(Ordering::Relaxed);
            total.compressed_per_conn += w.compressed_per_conn.load(Ordering::Relaxed);
            total.deflate_declined += w.deflate_declined.load(Ordering::Relaxed);
            total.deflate_memory += w.deflate_memory.load(Ordering::Relaxed);
            total.buffered_output += w.buffered_output.load(Ordering::Relaxed);
        }
        total.bus_gaps = self.bus_gaps.load(Ordering::Relaxed);
        total.bus_lost = self.bus_lost.load(Ordering::Relaxed);
        total
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Ready to serve: no shutdown asked and every worker still running (and so accepting).
    pub(crate) fn is_ready(&self) -> bool {
        !self.is_shutting_down() && self.exited.load(Ordering::Relaxed) == 0
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Encodes `msg` once and hands it to every worker.
    pub(crate) fn broadcast(&self, msg: Message<'_>) {
        let frame = pubsub::encode(msg);
        for worker in 1..self.workers() {
            self.send(worker, Command::Broadcast(Bytes::copy_from_slice(&frame)));
        }
        self.send(0, Command::Broadcast(frame));
    }
}

/// The backend a server runs, after `Auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    IoUring,
    Epoll,
}

/// Bound listeners and settings, ready to start.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) local_addr: SocketAddr,
    pub(crate) settings: Settings,
    kind: Kind,
    listeners: Vec<TcpListener>,
    tls: Option<Arc<tls::TlsShared>>,
}

impl Prepared {
    pub(crate) fn backend_name(&self) -> &'static str {
        match self.kind {
            Kind::IoUring => "io_uring",
            Kind::Epoll => "epoll",
        }
    }
}

/// Resolves the worker count and backend and binds one listener per worker.
pub(crate) fn prepare(settings: Settings) -> Result<Prepared, crate::Error> {
    settings.check()?;
    let workers = match settings.workers {
        Workers::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    }
    .clamp(1, usize::from(u16::MAX));
    let kind = match settings.backend {
        Backend::Epoll => Kind::Epoll,
        Backend::IoUring => {
            probe_uring(&settings).map_err(|why| {
                io::Error::new(io::ErrorKind::Unsupported, format!("io_uring unavailable: {why}"))
            })?;
            Kind::IoUring
        }
        Backend::Auto => match probe_uring(&settings) {
            Ok(()) => Kind::IoUring,
            Err(why) => {
                tracing::warn!(reason = %why, "io_uring unavailable; using epoll");
                Kind::Epoll
            }
        },
    };
    // Load the certificate before binding: a bad one fails the start, naming the file.
    let tls = match &settings.tls {
        Some(identity) => {
            Some(Arc::new(tls::TlsShared::new(identity.clone()).map_err(crate::Error::Tls)?))
        }
        None => None,
    };
    let mut listeners = Vec::with_capacity(workers);
    let mut addr = settings.listen;
    if !settings.reuse_port && addr.port() != 0 {
        refuse_if_in_use(addr)?;
    }
    for _ in 0..workers {
        let listener = bind(addr, settings.socket_send_buffer)?;
        // With port 0 the first bind picks the port; the others share it.
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(Prepared { local_addr: addr, settings, kind, listeners, tls })
}

/// Runs the io_uring probe on a short-lived thread: tearing a ring down queues task work on the
/// thread that owned it, which can interrupt that thread's next blocking syscall (EINTR).
pub(crate) fn probe_uring(settings: &Settings) -> Result<(), String> {
    let settings = settings.clone();
    std::thread::spawn(move || backend::uring::probe(&settings))
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

/// Fails with "address in use" when another socket already listens on `addr`: our listeners
/// share the port among themselves (SO_REUSEPORT), which would otherwise let a second server
/// quietly take part of the first one's traffic. A probe bound without SO_REUSEPORT conflicts
/// with any listener on the port.
fn refuse_if_in_use(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                format!("{addr} is already in use (set reuse_port / --reuse-port to share it)"),
            )
        } else {
            e
        }
    })
}

/// A listening socket. Accepted sockets inherit its SO_SNDBUF (`send_buffer`, 0: the kernel's
/// default) on every kernel; the backends set it again per connection.
fn bind(addr: SocketAddr, send_buffer: usize) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if send_buffer != 0 {
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps the backlog at net.core.somaxconn.
    socket.listen(65535)?;
    Ok(socket.into())
}

/// Started workers: what they share and their threads.
pub(crate) type Started = (Arc<Shared>, Vec<JoinHandle<io::Result<()>>>);

/// Stops started workers and waits for them, then for the bus threads; the first error.
pub(crate) fn stop((shared, threads): Started) -> io::Result<()> {
    shared.begin_shutdown();
    let mut result = Ok(());
    for t in threads {
        let r = t.join().unwrap_or_else(|_| Err(io::Error::other("a worker panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    if let Some(bus) = &shared.bus {
        bus.shutdown();
    }
    result
}

/// Starts the workers.
pub(crate) fn spawn<H, F>(prepared: Prepared, factory: Arc<F>) -> io::Result<Started>
where
    H: Handler,
    F: Fn() -> H + Send + Sync + 'static,
{
    let Prepared { local_addr: _, settings, kind, listeners, tls } = prepared;
    let count = listeners.len();
    let wakers = (0..count).map(|_| Waker::new()).collect::<io::Result<Vec<_>>>()?;
    let (inboxes, outboxes): (Vec<Sender<Command>>, Vec<Receiver<Command>>) =
        (0..count).map(|_| crossbeam_channel::unbounded()).unzip();
    let mut bus_error = None;
    // The bus's sink reaches the workers through a weak reference (see `cluster::connect`).
    let shared = Arc::new_cyclic(|me| Shared {
        shutdown: AtomicBool::new(false),
        wakers,
        wake_pending: (0..count).map(|_| AtomicBool::new(false)).collect(),
        inboxes,
        stats: (0..count).map(|_| WorkerStats::default()).collect(),
        metrics: WorkerMetrics::for_workers(count),
        exited: AtomicUsize::new(0),
        handler: TypeId::of::<H>(),
        bus: settings.bus.as_deref().and_then(|url| {
            cluster::connect(url, me.clone()).map_err(|e| bus_error = Some(e)).ok()
        }),
        bus_gaps: AtomicU64::new(0),
        bus_lost: AtomicU64::new(0),
        tls,
    });
    if let Some(e) = bus_error {
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()));
    }
    let cores =
        if settings.pin { core_affinity::get_core_ids().unwrap_or_default() } else { vec![] };
    let mut threads = Vec::with_capacity(count);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<()>>(count);
    for (index, (listener, inbox)) in listeners.into_iter().zip(outboxes).enumerate() {
        let shared = Arc::clone(&shared);
        let factory = Arc::clone(&factory);
        let settings = settings.clone();
        let core_id = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let ready = ready_tx.clone();
        let thread =
            std::thread::Builder::new().name(format!("ringside-{index}")).spawn(move || {
                // Counts this thread's end however it ends (return, error or panic).
                let _exited = Exited(Arc::clone(&shared));
                if let Some(core_id) = core_id {
                    core_affinity::set_for_current(core_id);
                }
                let waker = shared.wakers[index].clone();
                let mut core = worker::Core::new(
                    index as u16,
                    factory(),
                    settings.clone(),
                    Arc::clone(&shared),
                );
                match kind {
                    Kind::Epoll => {
                        let mut backend =
                            match Epoll::new(listener, waker, settings.recv_buffer_size) {
                                Ok(b) => b.with_send_buffer(settings.socket_send_buffer),
                                Err(e) => {
                                    let _ =
                                        ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                                    return Err(e);
                                }
                            };
                        backend.set_metrics(metrics_ref(&shared, index), BackendKind::Epoll);
                        let _ = ready.send(Ok(()));
                        worker::run(&mut core, &mut backend, &inbox)
                    }
                    Kind::IoUring => {
                        let mut backend = match Uring::new(listener, waker, &settings) {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                                return Err(e);
                            }
                        };
                        backend.set_metrics(metrics_ref(&shared, index), BackendKind::IoUring);
                        let _ = ready.send(Ok(()));
                        worker::run(&mut core, &mut backend, &inbox)
                    }
                }
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = stop((shared, threads));
                return Err(e);
            }
            Err(_) => break,
        }
    }
    Ok((shared, threads))
}

/// Worker `index`'s metrics block.
pub(crate) fn metrics_ref(shared: &Shared, index: usize) -> WorkerMetricsRef {
    WorkerMetricsRef::new(Arc::clone(&shared.metrics), index).expect("one metrics block per worker")
}

/// Dropped when a worker thread ends: counts it in `Shared::exited`.
struct Exited(Arc<Shared>);

impl Drop for Exited {
    fn drop(&mut self) {
        self.0.exited.fetch_add(1, Ordering::Relaxed);
    }
}
