//! A connection's outgoing bytes, corked: everything queued during one loop iteration leaves in
//! one send (one `send`, or one `sendmsg` over an iovec array when shared frames are queued).
//!
//! Two kinds of bytes are queued. Frames written for this connection alone (echoes, control
//! frames, the handshake reply) are copied into an owned buffer: for small messages a copy is
//! cheaper than a reference count. Frames shared by many connections (a publish, a broadcast)
//! are queued as [`Bytes`] clones: a reference count, no copy, however many subscribers hold
//! them.
//!
//! The queue keeps what is in flight apart from what is pending, so that a completion backend
//! can hand the in-flight bytes (and the iovec array and `msghdr` describing them) to the kernel
//! and keep them untouched until the send completes, while handlers queue more. All of it lives
//! in one boxed [`Queue`] taken from the worker's [`Pool`] while bytes are queued: an idle
//! connection's queue is one null pointer.
//!
//! Bytes handed to the kernel are typed: [`SendQueue::begin`] returns a [`Loan`], the one
//! proof that a send holds the in-flight bytes, and only [`SendQueue::complete`] (the send's
//! result) takes it back. While it is out, nothing frees, reuses or moves those bytes:
//! `discard` and `drop_pending` leave them, the queue is not recycled, and a queue dropped with
//! a loan out leaks them rather than free memory the kernel may still read (a completion
//! backend stores the loan with its operation, as tokio-uring keeps a buffer in its op).
//!
//! A third kind is **borrowed**: a payload still in the backend's receive buffer, queued by
//! reference while the read that brought it is being handled (an echo of a large message),
//! so that when the backend sends it right after that read, the payload goes from the receive
//! buffer to the socket with no copy in between. Borrowed bytes never outlive the read on
//! their own: [`SendQueue::settle`] copies whatever of them the socket did not take, unless a
//! send holds them, in which case the backend keeps the receive buffer until that send is
//! over ([`SendQueue::borrows_in_flight`]).
//!
//! Each queue knows the heap it holds ([`SendQueue::footprint`]), which the worker counts
//! against its output budget (see `budget`).
//!
//! What it does not do: decide when to send (the worker flushes once per iteration), or apply
//! limits (the worker checks [`SendQueue::len`] before queuing).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// The most iovecs one `sendmsg` carries (IOV_MAX on Linux); more parts go out in several.
const IOV_MAX: usize = 1024;
/// Shared frames up to this size are copied into the owned buffer instead of queued by
/// reference (see [`SendQueue::push_published`]).
pub const COPY_SHARED_MAX: usize = 512;
/// Queues kept for reuse per worker, and the largest owned buffer kept with one. A spare with
/// larger buffers is kept without them. Spares unused for a trim period are freed (see
/// [`Pool::trim`]), so the pool holds what the worker's steady load needs, not its peak.
const POOL_MAX: usize = 1024;
const POOL_BUF_MAX: usize = 16 << 10;
/// Larger buffers, up to this size, are kept too while the spares' larger buffers add up to at
/// most [`POOL_LARGE_BYTES`]: connections echoing 16 KiB messages (a buffer just over 16 KiB
/// with the header) reuse their buffers instead of allocating and freeing them per message,
/// which made the allocator return and refault heap pages (measured: page faults and page
/// clearing were 6% of the server's samples at 200 x 16 KiB on io_uring).
const POOL_LARGE_MAX: usize = 64 << 10;
const POOL_LARGE_BYTES: usize = 8 << 20;
/// Parts (and iovecs) kept with a pooled queue.
const POOL_PARTS_MAX: usize = 64;

/// A connection's send queue: nothing at all while idle.
#[derive(Debug, Default)]
pub struct SendQueue {
    q: Option<Box<Queue>>,
}

/// The kernel's hold on a queue's bytes in flight, from the send that was handed them
/// ([`SendQueue::begin`]) to its result ([`SendQueue::complete`]). Not `Clone`: one loan per
/// send. A loan dropped instead of returned leaves the bytes lent for good (leaked, never freed
/// under the kernel).
#[derive(Debug)]
#[must_use = "bytes lent to a send stay lent until its result returns the loan to `complete`"]
pub struct Loan {
    _private: (),
}

/// What a backend hands the kernel: the unsent rest of the bytes in flight.
#[derive(Debug, Clone, Copy)]
pub enum Out<'a> {
    /// One contiguous buffer (only owned bytes are in flight).
    Buf(&'a [u8]),
    /// Several parts: a `msghdr` over the queue's iovec array, for `sendmsg`.
    Msg(&'a libc::msghdr),
}

/// Where the bytes of one part live.
#[derive(Debug)]
enum Part {
    /// A range of the owned buffer.
    Own { start: usize, end: usize },
    /// A frame shared with other connections.
    Shared(Bytes),
    /// Bytes of a buffer the queue does not own (see [`SendQueue::push_borrowed`]).
    Borrowed { ptr: *const u8, len: usize },
}

impl Part {
    /// The part's bytes; `own` is the buffer its owned range is of.
    fn bytes<'a>(&'a self, own: &'a [u8]) -> &'a [u8] {
        match self {
            Part::Own { start, end } => &own[*start..*end],
            Part::Shared(b) => b,
            // SAFETY: a borrowed part exists only while its bytes are valid and unchanged
            // (the contract of `push_borrowed`, kept by `settle`).
            Part::Borrowed { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

/// The queue proper, boxed so that its address (which the `msghdr` and iovecs handed to the
/// kernel point into) does not move while a send is in flight.
struct Queue {
    /// Owned bytes queued since the last `begin`.
    buf: Vec<u8>,
    /// Once a shared frame is queued: the order of owned ranges and shared frames. Empty: all of
    /// `buf` is the pending data.
    parts: Vec<Part>,
    /// Bytes of `buf` that `parts` covers already.
    covered: usize,
    /// Bytes pending (owned and shared), not yet in flight.
    pending: usize,
    /// In flight: the owned buffer and parts swapped out of the pending side.
    fly_buf: Vec<u8>,
    fly_parts: Vec<Part>,
    /// Their iovecs, the first `iov_pos` of them sent, the next possibly in part.
    iov: Vec<libc::iovec>,
    iov_pos: usize,
    msg: libc::msghdr,
    fly_len: usize,
    fly_sent: usize,
    busy: bool,
    /// A [`Loan`] is out: a send holds the in-flight bytes.
    lent: bool,
    /// Conflated messages waiting for the connection to catch up (see [`Stage`]).
    stage: Option<Box<Stage>>,
    /// Frames pending (what [`SendQueue::drop_pending`] reports dropped).
    pending_frames: usize,
    /// Bytes of shared frames held by reference, pending and in flight.
    shared: usize,
    fly_shared: usize,
    /// Borrowed parts, pending and in flight.
    borrowed: u32,
    fly_borrowed: u32,
    /// A send was still in flight when the worker last looked: the peer's socket buffer is
    /// full (see `budget`).
    stalled: bool,
    /// What the worker counts for this queue in its output budget.
    charged: usize,
}

// SAFETY: the raw pointers in `iov` and `msg` point only into this queue's own heap buffers
// (`fly_buf`, the `Bytes` in `fly_parts`, `iov`), or into a borrowed receive buffer, which
// exists only within the worker thread's handling of one read (or, held by a send, until that
// send completes on the same thread); moving the queue to another thread moves their owner
// with them.
unsafe impl Send for Queue {}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("pending", &self.pending)
            .field("in_flight", &(self.fly_len - self.fly_sent))
            .field("parts", &self.parts.len())
            .field("staged", &self.stage.as_ref().map_or(0, |s| s.len))
            .finish()
    }
}

impl Queue {
    fn new() -> Self {
        Queue {
            buf: Vec::new(),
            parts: Vec::new(),
            covered: 0,
            pending: 0,
            fly_buf: Vec::new(),
            fly_parts: Vec::new(),
            iov: Vec::new(),
            iov_pos: 0,
            // SAFETY: msghdr is plain old data; all zeroes is an empty message.
            msg: unsafe { std::mem::zeroed() },
            fly_len: 0,
            fly_sent: 0,
            busy: false,
            lent: false,
            stage: None,
            pending_frames: 0,
            shared: 0,
            fly_shared: 0,
            borrowed: 0,
            fly_borrowed: 0,
            stalled: false,
            charged: 0,
        }
    }

    /// Forgets what was in flight (all sent, or dropped with no loan out).
    fn clear_flight(&mut self) {
        debug_assert!(!self.lent, "bytes lent to a send are never freed");
        self.fly_buf.clear();
        self.fly_parts.clear();
        self.iov.clear();
        self.fly_len = 0;
        self.fly_sent = 0;
        self.fly_shared = 0;
        self.fly_borrowed = 0;
        self.busy = false;
    }

    fn is_idle(&self) -> bool {
        !self.busy && self.pending == 0 && self.stage.as_ref().is_none_or(|s| s.len == 0)
    }

    /// Closes the owned range written since the last part, so a shared part can follow it.
    fn cover(&mut self) {
        if self.buf.len() > self.covered {
            self.parts.push(Part::Own { start: self.covered, end: self.buf.len() });
            self.covered = self.buf.len();
        }
    }

    /// Points the `msghdr` at the unsent iovecs (at most IOV_MAX of them).
    fn aim(&mut self) {
        let rest = &mut self.iov[self.iov_pos..];
        self.msg.msg_iov = rest.as_mut_ptr();
        self.msg.msg_iovlen = rest.len().min(IOV_MAX);
    }

    /// Heap bytes this queue holds: itself, its buffers' capacity, the shared frames it keeps
    /// alive (each counted in full, although other connections may hold them too: an upper
    /// bound), and its stage.
    fn heap(&self) -> usize {
        std::mem::size_of::<Queue>()
            + self.buf.capacity()
            + self.fly_buf.capacity()
            + (self.parts.capacity() + self.fly_parts.capacity()) * std::mem::size_of::<Part>()
            + self.iov.capacity() * std::mem::size_of::<libc::iovec>()
            + self.shared
            + self.fly_shared
            + self.stage.as_ref().map_or(0, |s| s.heap())
    }
}

/// A worker's spare queues, so that queuing on an idle connection does not allocate.
#[derive(Debug, Default)]
pub struct Pool {
    // Boxed: a queue moves in and out of connections as a pointer, never by value.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Queue>>,
    /// The fewest spares there were since the last trim: that many went unused.
    low: usize,
    /// Capacity of the spares' buffers over [`POOL_BUF_MAX`].
    large: usize,
}

/// Capacity of a queue's owned buffers over [`POOL_BUF_MAX`].
fn large_bytes(q: &Queue) -> usize {
    [&q.buf, &q.fly_buf].iter().map(|b| b.capacity()).filter(|&c| c > POOL_BUF_MAX).sum()
}

impl Pool {
    fn take(&mut self) -> Box<Queue> {
        let q = self.spare.pop().unwrap_or_else(|| Box::new(Queue::new()));
        self.low = self.low.min(self.spare.len());
        self.large -= large_bytes(&q);
        q
    }

    fn put(&mut self, mut q: Box<Queue>) {
        if self.spare.len() >= POOL_MAX {
            return;
        }
        // Keep the queue, not a spike's buffers: a connection that once queued megabytes
        // would otherwise pin them in the pool.
        for buf in [&mut q.buf, &mut q.fly_buf] {
            let cap = buf.capacity();
            let keep = cap <= POOL_BUF_MAX
                || (cap <= POOL_LARGE_MAX && self.large + cap <= POOL_LARGE_BYTES);
            if keep {
                buf.clear();
                if cap > POOL_BUF_MAX {
                    self.large += cap;
                }
            } else {
                *buf = Vec::new();
            }
        }
        for parts in [&mut q.parts, &mut q.fly_parts] {
            if parts.capacity() > POOL_PARTS_MAX {
                *parts = Vec::new();
            } else {
                parts.clear();
            }
        }
        if q.iov.capacity() > POOL_PARTS_MAX {
            q.iov = Vec::new();
        } else {
            q.iov.clear();
        }
        q.stage = None;
        q.covered = 0;
        q.pending_frames = 0;
        q.shared = 0;
        q.fly_shared = 0;
        q.borrowed = 0;
        q.fly_borrowed = 0;
        q.stalled = false;
        q.charged = 0;
        self.spare.push(q);
    }

    /// Frees the spares no connection needed since the last trim (the worker calls this every
    /// sweep): after a spike, the pool shrinks back to what the load uses.
    pub fn trim(&mut self) {
        let unused = self.low.min(self.spare.len());
        let keep = self.spare.len() - unused;
        self.spare.truncate(keep);
        self.spare.shrink_to(keep.max(16));
        self.low = self.spare.len();
        self.large = self.spare.iter().map(|q| large_bytes(q)).sum();
    }

    #[cfg(test)]
    /// Heap bytes the spares hold.
    pub fn bytes(&self) -> usize {
        self.spare.capacity() * std::mem::size_of::<usize>()
            + self.spare.iter().map(|q| q.heap()).sum::<usize>()
    }

    #[cfg(test)]
    #[allow(clippy::len_without_is_empty)]
    /// Spare queues held.
    pub fn len(&self) -> usize {
        self.spare.len()
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        if let Some(q) = self.q.take() {
            if q.lent {
                // A send may still read these bytes: leak them rather than free them under it.
                std::mem::forget(q);
            }
        }
    }
}

impl SendQueue {
    fn q(&mut self, pool: &mut Pool) -> &mut Queue {
        self.q.get_or_insert_with(|| pool.take())
    }

    /// Bytes queued and not yet sent (staged conflated messages not included).
    pub fn len(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.pending + q.fly_len - q.fly_sent)
    }

    /// Whether nothing is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a copy of `bytes`.
    pub fn push(&mut self, pool: &mut Pool, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let q = self.q(pool);
        q.buf.extend_from_slice(bytes);
        q.pending += bytes.len();
        q.pending_frames += 1;
    }

    /// Queues a frame: `header` and `payload` copied in one go.
    pub fn push_frame(&mut self, pool: &mut Pool, header: &[u8], payload: &[u8]) {
        let q = self.q(pool);
        q.buf.reserve(header.len() + payload.len());
        q.buf.extend_from_slice(header);
        q.buf.extend_from_slice(payload);
        q.pending += header.len() + payload.len();
        q.pending_frames += 1;
    }

    /// Queues a shared frame: a reference, not a copy.
    pub fn push_shared(&mut self, pool: &mut Pool, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let q = self.q(pool);
        q.cover();
        q.pending += frame.len();
        q.pending_frames += 1;
        q.shared += frame.len();
        q.parts.push(Part::Shared(frame));
    }

    /// Queues a frame whose payload stays where it is: `header` is copied, `payload` is queued
    /// by reference.
    ///
    /// # Safety
    ///
    /// `payload` must stay valid and unchanged until [`SendQueue::settle`] is called, and, if
    /// `settle` then returns `true`, until [`SendQueue::borrows_in_flight`] is `false`.
    pub unsafe fn push_borrowed(&mut self, pool: &mut Pool, header: &[u8], payload: &[u8]) {
        let q = self.q(pool);
        q.buf.extend_from_slice(header);
        q.cover();
        q.parts.push(Part::Borrowed { ptr: payload.as_ptr(), len: payload.len() });
        q.borrowed += 1;
        q.pending += header.len() + payload.len();
        q.pending_frames += 1;
    }

    /// The borrowed bytes are about to go: copies those pending into the queue's own buffer,
    /// and those in flight too if no send holds them. Returns `true` when a send holds
    /// borrowed bytes: their buffer must then stay as it is until `borrows_in_flight` is
    /// `false` (the send completed, and any rest of it was copied by a later `settle`).
    pub fn settle(&mut self) -> bool {
        let Some(q) = self.q.as_deref_mut() else { return false };
        if q.borrowed > 0 {
            q.cover();
            for i in 0..q.parts.len() {
                if let Part::Borrowed { .. } = q.parts[i] {
                    let start = q.buf.len();
                    let bytes = q.parts[i].bytes(&[]);
                    q.buf.extend_from_slice(bytes);
                    q.parts[i] = Part::Own { start, end: q.buf.len() };
                }
            }
            q.covered = q.buf.len();
            q.borrowed = 0;
        }
        if q.fly_borrowed == 0 {
            return false;
        }
        if q.lent {
            return true;
        }
        // A short send left borrowed bytes unsent and nothing holds them: the unsent rest of
        // the flight becomes one owned buffer.
        let mut rest = Vec::with_capacity(q.fly_len - q.fly_sent);
        for v in &q.iov[q.iov_pos..] {
            // SAFETY: each iovec describes unsent bytes of a part of the flight, all valid
            // (borrowed ones included: this is the settle their contract waits for).
            rest.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
            });
        }
        q.fly_parts.clear();
        q.iov.clear();
        q.iov_pos = 0;
        q.fly_len = rest.len();
        q.fly_sent = 0;
        q.fly_shared = 0;
        q.fly_borrowed = 0;
        q.fly_buf = rest;
        false
    }

    /// Whether bytes in flight still read from a borrowed buffer (see [`SendQueue::settle`]).
    pub fn borrows_in_flight(&self) -> bool {
        self.q.as_ref().is_some_and(|q| q.fly_borrowed > 0)
    }

    /// Queues a frame shared with other connections: small ones (up to [`COPY_SHARED_MAX`])
    /// are copied into the owned buffer, larger ones queued by reference. For a small frame the
    /// copy costs less than the reference: no atomic increment now and decrement after the
    /// send, no iovec, and consecutive small frames leave as one contiguous plain `send`. A
    /// queued copy also takes about the room of a queued reference (a part and an iovec).
    pub fn push_published(&mut self, pool: &mut Pool, frame: &Bytes) {
        if frame.len() <= COPY_SHARED_MAX {
            self.push(pool, frame);
        } else {
            self.push_shared(pool, frame.clone());
        }
    }

    /// Hands what is pending (not what is in flight), in order, piece by piece to `f`, and
    /// forgets it: for a TLS connection the plaintext the worker queued goes through the
    /// session into the connection's ciphertext queue this way. Returns the bytes handed over.
    pub fn take_pending(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let Some(q) = self.q.as_deref_mut() else { return 0 };
        if q.pending == 0 {
            return 0;
        }
        for part in &q.parts {
            f(part.bytes(&q.buf));
        }
        if q.buf.len() > q.covered {
            f(&q.buf[q.covered..]);
        }
        let taken = q.pending;
        q.buf.clear();
        q.parts.clear();
        q.covered = 0;
        q.pending = 0;
        q.borrowed = 0;
        taken
    }

    /// Lends the bytes in flight to a send: the unsent rest of what is in flight, or else what
    /// is pending, moved in flight. `None` if a loan is already out or nothing is queued. What
    /// [`SendQueue::in_flight`] then returns stays valid and unmoved until the loan comes back
    /// through [`SendQueue::complete`].
    pub fn begin(&mut self) -> Option<Loan> {
        let q = self.q.as_deref_mut()?;
        if q.lent {
            return None;
        }
        if q.busy {
            // A short send left bytes unsent: lend the rest again.
            q.lent = true;
            return Some(Loan { _private: () });
        }
        if q.pending == 0 {
            return None;
        }
        std::mem::swap(&mut q.buf, &mut q.fly_buf);
        std::mem::swap(&mut q.parts, &mut q.fly_parts);
        q.buf.clear();
        q.parts.clear();
        q.fly_len = q.pending;
        q.fly_sent = 0;
        q.pending = 0;
        q.pending_frames = 0;
        q.fly_shared = q.shared;
        q.shared = 0;
        q.fly_borrowed = q.borrowed;
        q.borrowed = 0;
        q.busy = true;
        q.lent = true;
        q.iov.clear();
        q.iov_pos = 0;
        if !q.fly_parts.is_empty() {
            if q.fly_buf.len() > q.covered {
                q.fly_parts.push(Part::Own { start: q.covered, end: q.fly_buf.len() });
            }
            for part in &q.fly_parts {
                let bytes = part.bytes(&q.fly_buf);
                let (base, len) = (bytes.as_ptr(), bytes.len());
                q.iov.push(libc::iovec { iov_base: base as *mut libc::c_void, iov_len: len });
            }
            q.aim();
        }
        q.covered = 0;
        Some(Loan { _private: () })
    }

    /// Whether a send holds the bytes in flight (a [`Loan`] is out).
    pub fn is_lent(&self) -> bool {
        self.q.as_ref().is_some_and(|q| q.lent)
    }

    /// The unsent rest of what is in flight, if anything is.
    pub fn in_flight(&self) -> Option<Out<'_>> {
        let q = self.q.as_deref()?;
        if !q.busy {
            return None;
        }
        Some(if q.fly_parts.is_empty() {
            Out::Buf(&q.fly_buf[q.fly_sent..])
        } else if q.iov.len() - q.iov_pos == 1 {
            // One part left (a lone publish, the common fan-out case): a plain send is cheaper
            // in the kernel than a one-element sendmsg.
            let v = &q.iov[q.iov_pos];
            // SAFETY: the iovec describes bytes of a buffer this queue holds, unmoved, until
            // `complete` says they are sent.
            Out::Buf(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) })
        } else {
            Out::Msg(&q.msg)
        })
    }

    /// The send that had `loan` is over and took `n` more bytes of what is in flight. Returns
    /// `true` when all of it is sent (the queue can `begin` anew), `false` after a short send
    /// (lend the rest with [`SendQueue::begin`] and send [`SendQueue::in_flight`] again).
    pub fn complete(&mut self, loan: Loan, n: usize) -> bool {
        let Loan { _private: () } = loan;
        let Some(q) = self.q.as_deref_mut() else { return true };
        q.lent = false;
        if !q.busy {
            return true;
        }
        let n = n.min(q.fly_len - q.fly_sent);
        q.fly_sent += n;
        if q.fly_sent < q.fly_len {
            if !q.fly_parts.is_empty() {
                let mut left = n;
                while left > 0 {
                    let iov = &mut q.iov[q.iov_pos];
                    if left >= iov.iov_len {
                        left -= iov.iov_len;
                        q.iov_pos += 1;
                    } else {
                        // SAFETY: `left < iov_len`: the new base stays inside the same buffer.
                        iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
                        iov.iov_len -= left;
                        left = 0;
                    }
                }
                q.aim();
            }
            return false;
        }
        q.clear_flight();
        true
    }

    /// Drops everything queued and staged (the peer is gone), and what is in flight unless a
    /// send holds it: bytes lent stay until their loan comes back to `complete` (call `discard`
    /// again then).
    pub fn discard(&mut self) {
        if let Some(q) = self.q.as_deref_mut() {
            q.buf.clear();
            q.parts.clear();
            q.covered = 0;
            q.pending = 0;
            q.pending_frames = 0;
            q.shared = 0;
            q.borrowed = 0;
            q.stage = None;
            if !q.lent {
                q.clear_flight();
            }
        }
    }

    /// Drops what is pending and staged, keeping what is in flight (the kernel may hold it, and
    /// a frame in it may be partly sent): whole frames only, so the stream stays valid. Frees
    /// the pending buffers. Returns the frames dropped (the output budget's drop policy).
    pub fn drop_pending(&mut self) -> usize {
        let Some(q) = self.q.as_deref_mut() else { return 0 };
        let frames = q.pending_frames + q.stage.as_ref().map_or(0, |s| s.index.len());
        q.buf = Vec::new();
        q.parts = Vec::new();
        q.covered = 0;
        q.pending = 0;
        q.pending_frames = 0;
        q.shared = 0;
        q.borrowed = 0;
        q.stage = None;
        frames
    }

    /// Heap bytes this queue holds (0 while idle: an idle connection holds no queue).
    pub fn footprint(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.heap())
    }

    /// Whether the last look found a send still in flight from an earlier loop iteration.
    pub fn is_stalled(&self) -> bool {
        self.q.as_ref().is_some_and(|q| q.stalled)
    }

    /// Records whether a send waits on a full socket buffer (see `budget`).
    pub fn set_stalled(&mut self, stalled: bool) {
        if let Some(q) = self.q.as_deref_mut() {
            q.stalled = stalled;
        }
    }

    /// What the worker's output budget counts for this queue now.
    pub fn charged(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.charged)
    }

    /// Records what the budget counts for this queue; returns what it counted before.
    /// Only a queue that exists can be charged: `n` is dropped for an idle one (which holds
    /// nothing).
    pub fn set_charged(&mut self, n: usize) -> usize {
        match self.q.as_deref_mut() {
            Some(q) => std::mem::replace(&mut q.charged, n),
            None => 0,
        }
    }

    /// Gives the queue back to the pool when it holds nothing.
    pub fn recycle(&mut self, pool: &mut Pool) {
        if self.q.as_ref().is_some_and(|q| q.is_idle()) {
            if let Some(q) = self.q.take() {
                pool.put(q);
            }
        }
    }

    /// Conflation: holds `frame` as the latest value for `key` (replacing an older one still
    /// waiting, which is dropped). Returns whether one was replaced.
    pub fn stage(&mut self, pool: &mut Pool, key: (u32, u64), frame: Bytes) -> bool {
        let q = self.q(pool);
        q.stage.get_or_insert_with(Box::default).put(key, frame)
    }

    /// Bytes staged for conflation.
    pub fn staged_len(&self) -> usize {
        self.q.as_ref().and_then(|q| q.stage.as_ref()).map_or(0, |s| s.len)
    }

    /// Whether any conflated message is staged.
    pub fn has_staged(&self) -> bool {
        self.staged_len() > 0
    }

    /// Moves staged messages into the queue, oldest first, while the queue stays within `limit`
    /// (at least one when the queue is empty). Returns how many moved.
    pub fn unstage(&mut self, pool: &mut Pool, limit: usize) -> usize {
        self.unstage_with(pool, limit, |frame| frame)
    }

    /// [`SendQueue::unstage`], queuing `f(frame)` for each staged frame (the limit counts the
    /// staged length).
    pub fn unstage_with(
        &mut self,
        pool: &mut Pool,
        limit: usize,
        mut f: impl FnMut(Bytes) -> Bytes,
    ) -> usize {
        let mut moved = 0;
        loop {
            let len = self.len();
            let Some(q) = self.q.as_deref_mut() else { return moved };
            let Some(stage) = q.stage.as_deref_mut() else { return moved };
            let Some(next) = stage.peek_len() else { return moved };
            if len > 0 && len + next > limit {
                return moved;
            }
            let Some(frame) = stage.pop() else { return moved };
            self.push_published(pool, &f(frame));
            moved += 1;
        }
    }

    /// Drops the staged messages of `topic` (the connection unsubscribed).
    pub fn unstage_topic(&mut self, topic: u32) {
        if let Some(stage) = self.q.as_deref_mut().and_then(|q| q.stage.as_deref_mut()) {
            stage.remove_topic(topic);
        }
    }
}

/// Conflated messages of one connection: the latest frame per (topic, key), in the order their
/// latest versions were published.
///
/// Memory is bounded by the number of keys: a slot emptied by a newer version of its key is
/// reused when it is the newest slot (one key published flat out holds one slot), and the
/// order is compacted once empty slots outnumber the live ones, so that it never holds more
/// than about twice as many slots as keys, however long the subscriber stays behind.
#[derive(Debug, Default)]
struct Stage {
    /// Slots in publish order; a replaced message leaves an empty slot behind until the next
    /// compaction.
    order: VecDeque<Option<((u32, u64), Bytes)>>,
    /// Sequence number of `order[0]`.
    head: u64,
    /// Where each key's latest frame is: its sequence number.
    index: HashMap<(u32, u64), u64>,
    /// Bytes staged.
    len: usize,
}

/// Empty slots tolerated beyond the number of live ones before the order is compacted.
const STAGE_SLACK: usize = 16;

impl Stage {
    fn put(&mut self, key: (u32, u64), frame: Bytes) -> bool {
        self.len += frame.len();
        let newest = self.head + self.order.len() as u64;
        let replaced = match self.index.get(&key) {
            Some(&old) => {
                let at = (old - self.head) as usize;
                if let Some((_, old)) = self.order[at].take() {
                    self.len -= old.len();
                }
                if old + 1 == newest {
                    // Already the newest slot: replacing it in place keeps the publish order.
                    self.order[at] = Some((key, frame));
                    return true;
                }
                true
            }
            None => false,
        };
        self.index.insert(key, newest);
        self.order.push_back(Some((key, frame)));
        self.skip_empty();
        if self.order.len() > 2 * self.index.len() + STAGE_SLACK {
            self.compact();
        }
        replaced
    }

    /// Drops the empty slots and renumbers the live ones: O(live), run once empty slots
    /// outnumber live ones, so O(1) per `put` on average.
    fn compact(&mut self) {
        self.order.retain(Option::is_some);
        self.head = 0;
        for (seq, slot) in self.order.iter().enumerate() {
            if let Some((key, _)) = slot {
                self.index.insert(*key, seq as u64);
            }
        }
        let live = self.order.len();
        if self.order.capacity() > 4 * live + 4 * STAGE_SLACK {
            self.order.shrink_to(2 * live + STAGE_SLACK);
        }
    }

    /// Heap bytes held: the slots, the index and the staged frames.
    fn heap(&self) -> usize {
        std::mem::size_of::<Stage>()
            + self.order.capacity() * std::mem::size_of::<Option<((u32, u64), Bytes)>>()
            + self.index.capacity() * (std::mem::size_of::<((u32, u64), u64)>() + 1)
            + self.len
    }

    fn skip_empty(&mut self) {
        while let Some(None) = self.order.front() {
            self.order.pop_front();
            self.head += 1;
        }
    }

    fn peek_len(&mut self) -> Option<usize> {
        self.skip_empty();
        self.order.front().and_then(|s| s.as_ref()).map(|(_, f)| f.len())
    }

    fn pop(&mut self) -> Option<Bytes> {
        self.skip_empty();
        let (key, frame) = self.order.pop_front()??;
        self.head += 1;
        self.index.remove(&key);
        self.len -= frame.len();
        Some(frame)
    }

    fn remove_topic(&mut self, topic: u32) {
        for slot in &mut self.order {
            if slot.as_ref().is_some_and(|((t, _), _)| *t == topic) {
                if let Some((key, frame)) = slot.take() {
                    self.index.remove(&key);
                    self.len -= frame.len();
                }
            }
        }
        self.skip_empty();
        if self.order.len() > 2 * self.index.len() + STAGE_SLACK {
            self.compact();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies out what `in_flight` describes.
    fn flying(q: &SendQueue) -> Vec<u8> {
        match q.in_flight() {
            None => Vec::new(),
            Some(Out::Buf(b)) => b.to_vec(),
            Some(Out::Msg(m)) => {
                let mut out = Vec::new();
                // SAFETY: the queue built these iovecs over buffers it holds.
                let iov = unsafe { std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen) };
                for v in iov {
                    // SAFETY: as above.
                    out.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
                    });
                }
                out
            }
        }
    }

    #[test]
    fn lent_bytes_are_freed_only_when_their_loan_returns() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let frame = Bytes::from(vec![5u8; 4096]);
        q.push_shared(&mut pool, frame.clone());
        let loan = q.begin().unwrap();
        assert!(q.is_lent());
        let before = flying(&q);
        // None of these may free or move what the send holds.
        q.discard();
        assert_eq!(q.drop_pending(), 0);
        q.recycle(&mut pool);
        assert!(q.begin().is_none(), "one loan at a time");
        assert_eq!((flying(&q), pool.len()), (before, 0));
        assert!(!frame.is_unique(), "the queue still holds the frame");
        // A short send: the loan comes back, the rest is lent again.
        assert!(!q.complete(loan, 96));
        assert!(!q.is_lent());
        let loan = q.begin().unwrap();
        assert_eq!(flying(&q).len(), 4000);
        assert!(q.complete(loan, 4000));
        q.recycle(&mut pool);
        assert!(frame.is_unique(), "released once the send is over");

        // Dropped while lent: leaked, never freed under the kernel.
        let mut q = SendQueue::default();
        q.push_shared(&mut pool, frame.clone());
        let loan = q.begin().unwrap();
        drop(q);
        drop(loan);
        assert!(!frame.is_unique(), "the lent frame was leaked, not freed");
    }

    #[test]
    fn a_short_send_without_a_kernel_hold_can_be_discarded() {
        // The epoll backend: the socket took part of it, nothing is lent between calls.
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"hello");
        let loan = q.begin().unwrap();
        assert!(!q.complete(loan, 2));
        assert!(q.in_flight().is_some() && !q.is_lent());
        q.discard();
        assert!(q.is_empty() && q.in_flight().is_none());
    }

    #[test]
    fn idle_queue_is_a_null_pointer_and_returns_to_the_pool() {
        assert_eq!(std::mem::size_of::<SendQueue>(), 8);
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"hello");
        let loan = q.begin().unwrap();
        assert!(q.complete(loan, 5));
        q.recycle(&mut pool);
        assert!(q.q.is_none());
        assert_eq!(pool.spare.len(), 1);
    }

    #[test]
    fn inflight_bytes_stay_still_while_writing_on() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"hello");
        let loan = q.begin().unwrap();
        let ptr = match q.in_flight() {
            Some(Out::Buf(b)) => b.as_ptr(),
            other => panic!("{other:?}"),
        };
        q.push(&mut pool, &[b'x'; 10_000]); // may reallocate the pending buffer, not in-flight
        assert!(q.begin().is_none(), "one send at a time");
        assert_eq!(q.len(), 10_005);
        assert!(!q.complete(loan, 2));
        let loan = q.begin().unwrap();
        match q.in_flight() {
            Some(Out::Buf(b)) => assert_eq!((b.as_ptr(), b), (ptr.wrapping_add(2), &b"llo"[..])),
            other => panic!("{other:?}"),
        }
        assert!(q.complete(loan, 3));
        let loan = q.begin().unwrap();
        assert_eq!(flying(&q).len(), 10_000);
        assert!(!q.complete(loan, 1));
        q.discard();
        assert!(q.is_empty());
    }

    #[test]
    fn shared_frames_go_out_in_order_between_owned_bytes_across_short_sends() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let shared = Bytes::from_static(b"SHARED");
        q.push(&mut pool, b"ab");
        q.push_shared(&mut pool, shared.clone());
        q.push_frame(&mut pool, b"c", b"de");
        q.push_shared(&mut pool, shared.clone());
        assert_eq!(q.len(), 2 + 6 + 3 + 6);
        let mut loan = q.begin().unwrap();
        assert_eq!(flying(&q), b"abSHAREDcdeSHARED");
        // Short sends landing inside and on the edges of parts.
        for (n, rest) in [(1, &b"bSHAREDcdeSHARED"[..]), (4, b"REDcdeSHARED"), (3, b"cdeSHARED")] {
            assert!(!q.complete(loan, n));
            loan = q.begin().unwrap();
            assert_eq!(flying(&q), rest);
        }
        q.push(&mut pool, b"next");
        assert!(q.complete(loan, 9));
        let _loan = q.begin().unwrap();
        assert!(matches!(q.in_flight(), Some(Out::Buf(b"next"))));
    }

    #[test]
    fn taking_what_is_pending_hands_out_every_piece_in_order_and_leaves_flight_alone() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"flying");
        let loan = q.begin().unwrap();
        q.push(&mut pool, b"ab");
        q.push_shared(&mut pool, Bytes::from_static(b"SHARED"));
        q.push_frame(&mut pool, b"c", b"de");
        let mut got = Vec::new();
        assert_eq!(q.take_pending(|piece| got.extend_from_slice(piece)), 11);
        assert_eq!(got, b"abSHAREDcde");
        assert_eq!(flying(&q), b"flying");
        assert_eq!(q.len(), 6);
        assert_eq!(q.take_pending(|_| panic!("nothing pending")), 0);
        assert!(q.complete(loan, 6));
        q.push(&mut pool, b"x");
        let _loan = q.begin().unwrap();
        assert_eq!(flying(&q), b"x", "usable as before");
    }

    #[test]
    fn a_lone_shared_frame_goes_out_as_a_plain_send_of_the_shared_bytes() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let frame = Bytes::from(vec![7u8; 100]);
        q.push_shared(&mut pool, frame.clone());
        let loan = q.begin().unwrap();
        match q.in_flight() {
            Some(Out::Buf(b)) => {
                assert_eq!((b.as_ptr(), b.len()), (frame.as_ptr(), 100), "no copy")
            }
            other => panic!("{other:?}"),
        }
        assert!(!q.complete(loan, 40));
        let loan = q.begin().unwrap();
        match q.in_flight() {
            Some(Out::Buf(b)) => assert_eq!(b.as_ptr(), frame[40..].as_ptr()),
            other => panic!("{other:?}"),
        }
        assert!(q.complete(loan, 60));
    }

    #[test]
    fn published_frames_are_copied_when_small_and_shared_when_large() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let small = Bytes::from(vec![1u8; COPY_SHARED_MAX]);
        let large = Bytes::from(vec![2u8; COPY_SHARED_MAX + 1]);
        q.push_published(&mut pool, &small);
        q.push_published(&mut pool, &small);
        let loan = q.begin().unwrap();
        match q.in_flight() {
            Some(Out::Buf(b)) => {
                assert_eq!(b.len(), 2 * COPY_SHARED_MAX);
                assert!(b.as_ptr() != small.as_ptr(), "a copy");
            }
            other => panic!("{other:?}"),
        }
        assert!(q.complete(loan, 2 * COPY_SHARED_MAX));
        q.push_published(&mut pool, &large);
        let loan = q.begin().unwrap();
        match q.in_flight() {
            Some(Out::Buf(b)) => assert_eq!(b.as_ptr(), large.as_ptr(), "by reference"),
            other => panic!("{other:?}"),
        }
        assert!(q.complete(loan, large.len()));
    }

    #[test]
    fn more_parts_than_iov_max_go_out_in_several_sends() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        for _ in 0..1500 {
            q.push_shared(&mut pool, Bytes::from_static(b"xy"));
        }
        let loan = q.begin().unwrap();
        let Some(Out::Msg(m)) = q.in_flight() else { panic!() };
        assert_eq!(m.msg_iovlen, IOV_MAX);
        assert!(!q.complete(loan, IOV_MAX * 2));
        let loan = q.begin().unwrap();
        let Some(Out::Msg(m)) = q.in_flight() else { panic!() };
        assert_eq!(m.msg_iovlen, 1500 - IOV_MAX);
        assert!(q.complete(loan, 3000 - IOV_MAX * 2));
    }

    #[test]
    fn staging_keeps_the_latest_per_key_in_publish_order() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let f = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(!q.stage(&mut pool, (1, 7), f("a1")));
        assert!(!q.stage(&mut pool, (1, 8), f("b1")));
        assert!(q.stage(&mut pool, (1, 7), f("a2")));
        assert!(!q.stage(&mut pool, (2, 7), f("other topic")));
        assert_eq!(q.staged_len(), 4 + 11);
        q.unstage_topic(2);
        assert_eq!(q.unstage(&mut pool, usize::MAX), 2);
        let _loan = q.begin().unwrap();
        assert_eq!(flying(&q), b"b1a2", "b1 was published before a2");
        assert_eq!(q.staged_len(), 0);
    }

    #[test]
    fn unstaging_respects_the_limit_but_always_moves_one_into_an_empty_queue() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        for key in 0..3 {
            q.stage(&mut pool, (0, key), Bytes::from_static(b"0123456789"));
        }
        assert_eq!(q.unstage(&mut pool, 5), 1, "one into the empty queue");
        assert_eq!(q.unstage(&mut pool, 25), 1);
        assert_eq!(q.len(), 20);
        assert_eq!(q.staged_len(), 10);
    }
    #[test]
    fn a_key_staged_forever_holds_one_slot() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let frame = Bytes::from_static(b"price 1.23456");
        q.stage(&mut pool, (0, 0), frame.clone());
        let after_one = q.footprint();
        for _ in 0..200_000 {
            assert!(q.stage(&mut pool, (0, 0), frame.clone()));
        }
        assert_eq!(q.footprint(), after_one, "no growth with the publish count");
        assert_eq!(q.staged_len(), frame.len());
    }

    #[test]
    fn interleaved_keys_stay_bounded_by_the_key_count_and_keep_publish_order() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let f = |k: u64, i: u64| Bytes::from(format!("{k}:{i};"));
        // One rare key stays at the front while three others are republished behind it: the
        // emptied slots are behind a live one, so only compaction can reclaim them.
        q.stage(&mut pool, (0, 99), f(99, 0));
        let mut peak = 0;
        for i in 0..100_000u64 {
            q.stage(&mut pool, (0, i % 3), f(i % 3, i));
            if i == 1_000 {
                peak = q.footprint();
            }
            if i > 1_000 {
                assert!(q.footprint() <= peak + 64, "grew at {i}: {} > {peak}", q.footprint());
            }
        }
        let stage = q.q.as_ref().unwrap().stage.as_ref().unwrap();
        assert!(stage.order.len() <= 2 * 4 + STAGE_SLACK + 1, "{}", stage.order.len());
        assert_eq!(q.unstage(&mut pool, usize::MAX), 4);
        let _loan = q.begin().unwrap();
        assert_eq!(
            flying(&q),
            b"99:0;1:99997;2:99998;0:99999;",
            "latest versions, in publish order"
        );
    }

    #[test]
    fn dropping_pending_keeps_what_is_in_flight_and_counts_frames() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"first");
        let loan = q.begin().unwrap();
        q.push_frame(&mut pool, b"h", b"second");
        q.push_shared(&mut pool, Bytes::from(vec![1u8; 600]));
        q.stage(&mut pool, (1, 1), Bytes::from_static(b"staged"));
        assert_eq!(q.drop_pending(), 3);
        assert_eq!(q.len(), 5);
        assert_eq!(q.staged_len(), 0);
        assert_eq!(flying(&q), b"first");
        assert!(q.complete(loan, 5));
        assert!(q.begin().is_none(), "nothing pending");
    }

    #[test]
    fn the_pool_keeps_large_message_buffers_within_its_byte_cap() {
        let mut pool = Pool::default();
        let mut queues: Vec<SendQueue> = (0..1000).map(|_| SendQueue::default()).collect();
        for q in &mut queues {
            q.push(&mut pool, &[0u8; (16 << 10) + 4]);
            let loan = q.begin().unwrap();
            assert!(q.complete(loan, (16 << 10) + 4));
        }
        for q in &mut queues {
            q.recycle(&mut pool);
        }
        assert!(pool.large <= POOL_LARGE_BYTES && pool.large > POOL_LARGE_BYTES / 2);
        let kept = pool.spare.iter().filter(|q| q.fly_buf.capacity() > POOL_BUF_MAX).count();
        assert_eq!(kept * ((16 << 10) + 4), pool.large);
        // A queue taken from the pool reuses its buffer: no allocation for the next message.
        let mut q = SendQueue::default();
        q.push(&mut pool, &[1u8; 100]);
        let loan = q.begin().unwrap();
        assert!(q.complete(loan, 100));
        q.push(&mut pool, &[1u8; (16 << 10) + 4]);
        assert_eq!(q.q.as_ref().unwrap().buf.capacity(), (16 << 10) + 4, "reused, not grown");
        pool.trim();
        pool.trim();
        assert_eq!(pool.large, 0);
    }

    #[test]
    fn the_pool_keeps_no_spike_buffers_and_frees_unused_spares() {
        let mut pool = Pool::default();
        let mut queues: Vec<SendQueue> = (0..100).map(|_| SendQueue::default()).collect();
        for q in &mut queues {
            q.push(&mut pool, &[0u8; 1 << 20]);
            let loan = q.begin().unwrap();
            assert!(q.complete(loan, 1 << 20));
        }
        for q in &mut queues {
            q.recycle(&mut pool);
        }
        assert_eq!(pool.len(), 100);
        assert!(pool.bytes() < 100 * 1024, "no megabyte buffers kept: {}", pool.bytes());
        pool.trim(); // the spike's spares were in use since the pool was made
        assert_eq!(pool.len(), 100);
        pool.trim(); // none was taken since the last trim
        assert_eq!(pool.len(), 0);
    }
}
