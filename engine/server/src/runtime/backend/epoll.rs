//! The epoll backend (through mio): edge-triggered readiness, one shared receive buffer per
//! worker, writes straight from the connection's send queue.
//!
//! An idle connection costs a socket and a few bytes here; no buffer is held per connection. A
//! connection that keeps the socket readable is served a bounded number of reads per loop
//! iteration and revisited on the next one (edge-triggered epoll will not report it again), so
//! one busy peer cannot starve the others.
//!
//! When accept(2) fails for lack of a descriptor (EMFILE, ENFILE) or of memory, the connection
//! stays in the listen queue and no later edge may ever announce it: with the queue full, no new
//! connection arrives to raise one. So accepting is retried after every [`ACCEPT_RETRY`] while
//! it fails, and at once after this worker closes a socket; see `accept`.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{Backend, Driver, Out, SendQueue, Waker};
use crate::metrics::{BackendKind, WorkerMetrics, WorkerMetricsRef};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// Reads served to one connection per loop iteration before moving on.
const READS_PER_TURN: usize = 4;
/// The smallest shared receive buffer: one per worker, so it can hold a 16 KiB message with its
/// header in one read (parsed in place, not assembled from pieces) at no cost per connection.
const MIN_RECV_BUF: usize = 64 << 10;
/// How long to wait before accepting again after accept(2) failed for lack of a resource: one
/// failed call per interval costs nothing measurable, and descriptors freed elsewhere (another
/// worker, another part of the process) are put to use within it.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// The peer closed or the socket failed; `on_hangup` was called.
    hung_up: bool,
    /// Reading is paused by backpressure.
    paused: bool,
    /// The socket may hold unread bytes (paused, or its turn ended before EAGAIN).
    readable: bool,
    /// An event reported the peer's FIN or an error: read to EOF, since no later edge will
    /// announce what is already queued.
    read_closed: bool,
    /// `close(graceful)` was asked: shut the write side once everything is written.
    closing: bool,
    /// Bytes of the send queue could not be written yet (waiting for EPOLLOUT).
    unsent: bool,
    write_shut: bool,
}

/// One worker's epoll set, listener and connections.
#[derive(Debug)]
pub struct Epoll {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    waker: Waker,
    conns: Vec<Option<Conn>>,
    /// Receive buffer shared by every connection of this worker.
    buf: Vec<u8>,
    /// Connections to read again on the next poll without waiting for an edge.
    backlog: Vec<usize>,
    /// Hang-ups found outside `poll` (a failed write), reported on the next poll.
    hangups: Vec<usize>,
    released: Vec<usize>,
    /// Set while accept(2) fails for lack of a resource: when to try again.
    accept_retry: Option<Instant>,
    /// accept(2) calls that failed for lack of a descriptor or of memory.
    accept_errors: u64,
    /// The worker's counters: bytes sent, epoll_wait calls and events.
    metrics: WorkerMetricsRef,
    /// Bytes written so far, stored into `metrics` once per poll (not per write).
    bytes_sent: u64,
    /// SO_SNDBUF for accepted sockets (0: the kernel's default).
    send_buffer: usize,
}

impl Epoll {
    /// A backend serving `listener` (already bound and listening, non-blocking).
    /// `waker` is the eventfd other threads write to wake this worker.
    pub fn new(
        listener: std::net::TcpListener,
        waker: Waker,
        recv_buffer_size: usize,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&waker.raw_fd()), WAKER, Interest::READABLE)?;
        Ok(Epoll {
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            waker,
            conns: Vec::new(),
            buf: vec![0; recv_buffer_size.max(MIN_RECV_BUF)],
            backlog: Vec::new(),
            hangups: Vec::new(),
            released: Vec::new(),
            accept_retry: None,
            accept_errors: 0,
            metrics: detached_metrics(),
            bytes_sent: 0,
            send_buffer: 0,
        })
    }

    /// Counts into `metrics` from now on (until then, into a block nobody reads).
    pub fn set_metrics(&mut self, metrics: WorkerMetricsRef, kind: BackendKind) {
        metrics.set_backend(kind);
        self.metrics = metrics;
    }

    /// Sets SO_SNDBUF on every accepted socket (0: leave the kernel's default), so that a
    /// client that stops reading holds at most that much kernel memory.
    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes;
        self
    }

    /// accept(2) calls that failed for lack of a descriptor (EMFILE, ENFILE) or of memory
    /// (ENOBUFS, ENOMEM) since the backend started. While the shortage lasts, each retry that
    /// fails counts too: about 50 a second.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors
    }

    /// Accepts until the listen queue is empty.
    ///
    /// Out of descriptors (EMFILE, ENFILE) or memory, the connection stays queued, and the
    /// edge-triggered listener will not report it again: only a new arrival raises an edge,
    /// and once the queue is full none arrives. So a failure arms `accept_retry`, which `poll`
    /// honours by capping its wait and accepting again when it is due, until an accept
    /// succeeds or the queue is empty; closing a socket makes the retry due at once.
    ///
    /// Why not the spare-descriptor trick (keep one open, and when out of descriptors close it
    /// to accept and drop the waiting connection): it turns a shortage into refusing every
    /// client, also those that would be served a moment later, and with several workers
    /// sharing the process's table another worker's accept may take the freed slot first. Left
    /// in the queue, a client waits (or, past a full queue, its SYN is retried by its kernel)
    /// and is served as soon as descriptors are free again.
    fn accept(&mut self, driver: &mut dyn Driver) {
        self.accept_retry = None;
        loop {
            let Some(listener) = &self.listener else { return };
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => {
                    self.accept_errors += 1;
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    crate::log_rate_limited("accept", &e);
                    return;
                }
                Err(_) => continue,
            };
            let Some(id) = driver.on_accept(Some(peer)) else { continue };
            let _ = stream.set_nodelay(true);
            if self.send_buffer != 0 {
                let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.send_buffer);
            }
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                crate::log_rate_limited("register", &e);
                driver.on_hangup(id);
                self.released.push(id);
                continue;
            }
            if self.conns.len() <= id {
                self.conns.resize_with(id + 1, || None);
            }
            self.conns[id] = Some(Conn {
                stream,
                hung_up: false,
                paused: false,
                readable: false,
                read_closed: false,
                closing: false,
                unsent: false,
                write_shut: false,
            });
        }
    }

    /// Reads what `id` has, up to a turn's worth, and hands it to the driver.
    fn read(&mut self, id: usize, driver: &mut dyn Driver) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
            if conn.hung_up {
                return;
            }
            if conn.paused {
                conn.readable = true;
                return;
            }
            match recv(conn.stream.as_raw_fd(), &mut self.buf) {
                Ok(0) => {
                    self.hang_up(id, driver);
                    return;
                }
                Ok(n) if n < self.buf.len() && !conn.read_closed => {
                    // A short read drained the socket: more data, or the FIN, will raise a new
                    // edge (epoll reports every arrival), so the read that would only say
                    // EAGAIN is saved. Not when the FIN is already in: nothing would report it.
                    conn.readable = false;
                    self.deliver(id, n, driver);
                    return;
                }
                Ok(n) => self.deliver(id, n, driver),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.hang_up(id, driver);
                    return;
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            conn.readable = true;
            self.backlog.push(id);
        }
    }

    /// Hands the first `n` bytes of the receive buffer to the driver, writing at once what it
    /// wants written through (unless earlier bytes wait for the socket).
    fn deliver(&mut self, id: usize, n: usize, driver: &mut dyn Driver) {
        // Taken out for the call, so the driver's write-through can borrow the backend.
        let mut buf = std::mem::take(&mut self.buf);
        let held = driver.on_data(id, &mut buf[..n], true, &mut |id, queue| {
            let waiting = self.conns.get(id).and_then(Option::as_ref).is_none_or(|c| c.unsent);
            if !waiting {
                self.write(id, queue);
            }
        });
        // Each write's loan ends within the call, so the driver settled every borrowed byte.
        assert!(!held, "epoll lent a receive buffer beyond a write");
        self.buf = buf;
    }

    fn hang_up(&mut self, id: usize, driver: &mut dyn Driver) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
        if conn.hung_up {
            return;
        }
        conn.hung_up = true;
        if conn.closing {
            // Our close was waiting for the peer's side to close: done.
            self.release(id);
        } else {
            driver.on_hangup(id);
        }
    }

    fn release(&mut self, id: usize) {
        if let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.released.push(id);
            if self.accept_retry.is_some() {
                // A descriptor is free (when `conn` drops, below): a waiting connection can
                // have it now.
                self.accept_retry = Some(Instant::now());
            }
        }
    }

    /// Writes as much of the queue as the socket takes.
    fn write(&mut self, id: usize, queue: &mut SendQueue) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
        // Each loan lives for one write(2): the kernel has copied what it took when the call
        // returns, so nothing stays lent between calls.
        while let Some(loan) = queue.begin() {
            let written = match queue.in_flight() {
                Some(Out::Buf(bytes)) => send(conn.stream.as_raw_fd(), bytes),
                Some(Out::Msg(msg)) => send_msg(conn.stream.as_raw_fd(), msg),
                None => Ok(0),
            };
            let sent = *written.as_ref().unwrap_or(&0);
            self.bytes_sent += sent as u64;
            queue.complete(loan, sent);
            match written {
                Ok(n) if n > 0 || queue.in_flight().is_none() => {}
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The peer is gone; drop what was queued, report the hang-up on next poll.
                    queue.discard();
                    if !conn.hung_up {
                        self.hangups.push(id);
                    }
                    break;
                }
            }
        }
        conn.unsent = !queue.is_empty();
        if conn.closing && !conn.unsent {
            if conn.hung_up {
                // The peer had already closed its side: everything is written, we are done.
                self.release(id);
            } else if !conn.write_shut {
                conn.write_shut = true;
                let _ = conn.stream.shutdown(Shutdown::Write);
            }
        }
    }
}

impl Backend for Epoll {
    fn poll(&mut self, driver: &mut dyn Driver, timeout: Duration) -> io::Result<()> {
        let mut timeout = if self.backlog.is_empty() && self.hangups.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        if let Some(at) = self.accept_retry {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for id in std::mem::take(&mut self.hangups) {
            self.hang_up(id, driver);
        }
        for id in std::mem::take(&mut self.backlog) {
            self.read(id, driver);
        }
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let mut seen = 0u64;
        for event in events.iter() {
            seen += 1;
            match event.token() {
                LISTENER => self.accept(driver),
                WAKER => self.waker.reset(),
                Token(id) => {
                    if event.is_writable() {
                        let unsent =
                            self.conns.get(id).and_then(Option::as_ref).is_some_and(|c| c.unsent);
                        if unsent {
                            if let Some(queue) = driver.queue(id) {
                                self.write(id, queue);
                                if queue.is_empty() {
                                    driver.on_sent(id);
                                }
                            }
                        }
                    }
                    if event.is_read_closed() || event.is_error() {
                        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
                            conn.read_closed = true;
                        }
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(id, driver);
                    }
                }
            }
        }
        self.events = events;
        self.metrics.epoll_waits.inc();
        self.metrics.epoll_events.add(seen);
        // Writes happen here and in the worker's flush after this poll: the next poll stores
        // those.
        self.metrics.bytes_sent.set_total(self.bytes_sent);
        if self.accept_retry.is_some_and(|at| at <= Instant::now()) {
            self.accept(driver);
        }
        for id in self.released.drain(..) {
            driver.on_released(id);
        }
        Ok(())
    }

    fn flush(&mut self, id: usize, queue: &mut SendQueue) {
        let waiting = self.conns.get(id).and_then(Option::as_ref).is_some_and(|c| c.unsent);
        if waiting && queue.in_flight().is_some() {
            // The socket was full at the last write: EPOLLOUT writes when it has room. A write
            // now would only say EAGAIN again, once per iteration per stalled peer.
            return;
        }
        self.write(id, queue);
    }

    fn set_reading(&mut self, id: usize, reading: bool) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
        conn.paused = !reading;
        if reading && conn.readable {
            self.backlog.push(id);
        }
    }

    fn close(&mut self, id: usize, hard: bool) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
        if hard || (conn.hung_up && !conn.unsent) {
            if hard && !conn.hung_up {
                // Unread data or an unresponsive peer: don't linger in FIN_WAIT with it.
                set_linger_zero(&conn.stream);
            }
            self.release(id);
            return;
        }
        conn.closing = true;
        conn.paused = false;
        if conn.hung_up {
            // Half-closed peer with bytes still to write: EPOLLOUT finishes them, then releases.
            return;
        }
        if !conn.unsent && !conn.write_shut {
            conn.write_shut = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        if conn.readable {
            // Drain and discard what the peer still sends until its FIN.
            self.backlog.push(id);
        }
    }

    fn stop_accepting(&mut self) {
        self.accept_retry = None;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn name(&self) -> &'static str {
        "epoll"
    }

    fn accept_errors(&self) -> u64 {
        Epoll::accept_errors(self)
    }
}

// The per-message socket calls go through `syscall(2)`, not libc's wrappers: those are
// cancellation points, and in a process with more than one thread glibc switches asynchronous
// cancellation on and off around each one (0.4-0.5% of the server's samples at 200 x 16 KiB
// echoes). Nothing here is ever cancelled. Every argument is passed as a `c_long`, the width
// the variadic `syscall` reads.

/// The result of a raw system call as a byte count.
fn sys_len(n: libc::c_long) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// recvfrom(2) or sendto(2) of `len` bytes at `ptr` on `fd`, with no address.
///
/// # Safety
///
/// `ptr` must be valid for `len` bytes (writable for recvfrom) for the call.
unsafe fn transfer(
    nr: libc::c_long,
    fd: RawFd,
    ptr: libc::c_long,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: the caller vouches for the buffer; both calls take no address (null pointers).
    sys_len(unsafe {
        libc::syscall(
            nr,
            libc::c_long::from(fd),
            ptr,
            len as libc::c_long,
            libc::c_long::from(flags),
            0 as libc::c_long,
            0 as libc::c_long,
        )
    })
}

/// recv(2) into `buf`.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is borrowed mutably for the call, writable for its length.
    unsafe { transfer(libc::SYS_recvfrom, fd, buf.as_mut_ptr() as libc::c_long, buf.len(), 0) }
}

/// send(2) of `bytes`; MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    // SAFETY: `bytes` is borrowed for the call, readable for its length.
    unsafe { transfer(libc::SYS_sendto, fd, bytes.as_ptr() as libc::c_long, bytes.len(), flags) }
}

/// sendmsg(2) of a queue's iovecs; MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
fn send_msg(fd: RawFd, msg: &libc::msghdr) -> io::Result<usize> {
    // SAFETY: `msg` and the iovecs it points to describe live buffers the queue holds until
    // `complete`; the fd is open for the call.
    sys_len(unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            libc::c_long::from(fd),
            msg as *const libc::msghdr as libc::c_long,
            libc::c_long::from(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT),
        )
    })
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt(2) reads `size_of::<linger>()` bytes from a live `linger`; the fd is
    // owned by `stream` and open.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// A metrics block of its own, for a backend not (yet) given its worker's.
pub(crate) fn detached_metrics() -> WorkerMetricsRef {
    WorkerMetricsRef::new(WorkerMetrics::for_workers(1), 0).expect("one block")
}

/// accept(2) errors that mean "out of a resource for now", not "this connection failed".
pub(crate) fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
