//! The contract between a worker and its I/O backend, written once for every backend.
//!
//! A backend owns sockets, the listener and whatever the kernel interface needs (an epoll set, an
//! io_uring ring and its buffer ring). It knows nothing of WebSocket: it reports what happened
//! through the [`Driver`] the worker passes to [`Backend::poll`], and it sends what a
//! connection's [`SendQueue`] holds when the worker asks. Connection ids are the worker's slab
//! keys; the backend indexes its own per-connection state by them.
//!
//! Lifecycle of an id: the backend accepts a socket and asks [`Driver::on_accept`] for an id
//! (`None` refuses it). Data arrives through [`Driver::on_data`]. When the peer is gone
//! (EOF, reset, error) the backend calls [`Driver::on_hangup`] once and delivers no more data.
//! The worker calls [`Backend::close`] once per id (again with `hard` when its close timeout
//! expires), after which the backend finishes its operations on that socket and calls
//! [`Driver::on_released`], possibly many iterations later: only then may the id be reused.
//!
//! A hang-up on EOF is a half-close: the worker still flushes what it queued (the echo of the
//! peer's close frame) and the backend sends it before closing; only a failed socket drops it.
//! The worker keeps every connection's [`SendQueue`] alive and in place until `on_released`,
//! which is what makes it sound for a completion backend to hand the in-flight buffer's address
//! to the kernel.

pub mod epoll;
pub mod uring;

pub use super::queue::{Loan, Out, SendQueue};

use std::io;
use std::time::Duration;

/// What a backend tells the worker.
pub trait Driver {
    /// A connection from `peer` (the TCP peer address, `None` only where the backend could not
    /// learn it) was accepted; returns the id to use for it, or `None` to refuse it (the backend
    /// then closes the socket).
    fn on_accept(&mut self, peer: Option<std::net::SocketAddr>) -> Option<usize>;
    /// Bytes arrived on `id`. The buffer is the backend's (a provided buffer, the shared receive
    /// buffer); the driver may modify it in place (unmasking).
    ///
    /// `send` starts sending a connection's queue at once, as [`Backend::flush`] would: the
    /// driver calls it for the replies this data caused when they should leave now, while they
    /// are in the cache (write-through), rather than with the corked flush at the end of the
    /// loop iteration. Those replies may borrow from `data` (a large echo is queued by
    /// reference, see [`SendQueue::push_borrowed`]), and the driver settles them before it
    /// returns ([`SendQueue::settle`]) except what a send started through `send` still holds:
    /// then it returns `true`, and the backend must keep `data` unchanged and unused until the
    /// queue of `id` no longer [borrows in flight](SendQueue::borrows_in_flight), calling
    /// `settle` on that queue after each of its send completions. A backend whose sends are
    /// over when `send` returns never sees `true`; one that cannot keep more buffers passes
    /// `lend: false`, and nothing borrows from `data`.
    fn on_data(
        &mut self,
        id: usize,
        data: &mut [u8],
        lend: bool,
        send: &mut dyn FnMut(usize, &mut SendQueue),
    ) -> bool;
    /// The peer is gone (EOF or an error): no more data will arrive on `id`. Called at most once.
    fn on_hangup(&mut self, id: usize);
    /// The send queue of `id`, for the backend to take bytes from and to report sends into.
    /// `None` when the id is unknown (a completion arriving for a connection being released).
    fn queue(&mut self, id: usize) -> Option<&mut SendQueue>;
    /// A send on `id` completed and its queue has room again (the worker may flush more, call
    /// `on_drain`, resume reading).
    fn on_sent(&mut self, id: usize);
    /// The backend holds nothing of `id` any more: the id may be reused.
    fn on_released(&mut self, id: usize);
}

/// What a worker asks of its backend.
pub trait Backend {
    /// Waits for I/O for at most `timeout` (returning early when woken), and reports everything
    /// that completed to `driver`.
    fn poll(&mut self, driver: &mut dyn Driver, timeout: Duration) -> io::Result<()>;
    /// Starts sending what `queue` holds for `id`. A backend that completes asynchronously
    /// takes ownership of the bytes for the time the kernel holds them ([`SendQueue::begin`]).
    fn flush(&mut self, id: usize, queue: &mut SendQueue);
    /// Stops reading from `id` (backpressure: its send queue is over the limit) or resumes.
    fn set_reading(&mut self, id: usize, reading: bool);
    /// Closes `id`. Graceful (`hard == false`): what was flushed is sent first, then the write
    /// side is shut down and the socket is closed when the peer closes its side; the worker
    /// calls again with `hard` when its close timeout expires. Hard: close now (RST if unread
    /// data remains). Either way the backend calls [`Driver::on_released`] later, once.
    fn close(&mut self, id: usize, hard: bool);
    /// Stops accepting new connections (shutdown).
    fn stop_accepting(&mut self);
    /// The backend's name for logs: "io_uring" or "epoll".
    fn name(&self) -> &'static str;
    /// Accepts that failed for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS), so far.
    fn accept_errors(&self) -> u64 {
        0
    }
    /// Stops every operation on the kernel's side and waits (bounded) until none can touch the
    /// worker's memory. `false` when that could not be confirmed: the worker must then leak, not
    /// free, the send queues with bytes in flight (a completion backend hands their addresses
    /// to the kernel). A backend that never lends memory to the kernel past a call is always
    /// quiet.
    fn quiesce(&mut self) -> bool {
        true
    }
}

/// Wakes a worker from another thread: an eventfd the worker's poll watches.
#[derive(Debug, Clone)]
pub struct Waker {
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl Waker {
    /// A new eventfd (non-blocking, close-on-exec).
    pub fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Waker { fd: std::sync::Arc::new(fd) })
    }

    /// The eventfd, for the backend to watch.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Wakes the worker.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. EAGAIN (counter full)
        // means a wake-up is pending anyway.
        unsafe { libc::write(self.raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears pending wake-ups (called by the backend after the eventfd became readable).
    pub fn reset(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an eventfd we own; EAGAIN is fine.
        unsafe { libc::read(self.raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }
}
