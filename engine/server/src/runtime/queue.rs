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
//! What it does not do: decide when to send (the worker flushes once per iteration), or apply
//! limits (the worker checks [`SendQueue::len`] before queuing).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// The most iovecs one `sendmsg` carries (IOV_MAX on Linux); more parts go out in several.
const IOV_MAX: usize = 1024;
/// Shared frames up to this size are copied into the owned buffer instead of queued by
/// reference (see [`SendQueue::push_published`]).
pub const COPY_SHARED_MAX: usize = 512;
/// Queues kept for reuse per worker, and the largest owned buffer kept with one.
const POOL_MAX: usize = 1024;
const POOL_BUF_MAX: usize = 64 << 10;

/// A connection's send queue: nothing at all while idle.
#[derive(Debug, Default)]
pub struct SendQueue {
    q: Option<Box<Queue>>,
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
    /// Conflated messages waiting for the connection to catch up (see [`Stage`]).
    stage: Option<Box<Stage>>,
}

// SAFETY: the raw pointers in `iov` and `msg` point only into this queue's own heap buffers
// (`fly_buf`, the `Bytes` in `fly_parts`, `iov`); moving the queue to another thread moves
// their owner with them.
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
            stage: None,
        }
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
}

/// A worker's spare queues, so that queuing on an idle connection does not allocate.
#[derive(Debug, Default)]
pub struct Pool {
    // Boxed: a queue moves in and out of connections as a pointer, never by value.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Queue>>,
}

impl Pool {
    fn take(&mut self) -> Box<Queue> {
        self.spare.pop().unwrap_or_else(|| Box::new(Queue::new()))
    }

    fn put(&mut self, mut q: Box<Queue>) {
        if self.spare.len() < POOL_MAX && q.buf.capacity() <= POOL_BUF_MAX {
            q.buf.clear();
            q.fly_buf.clear();
            q.parts.clear();
            q.fly_parts.clear();
            q.iov.clear();
            q.stage = None;
            q.covered = 0;
            if q.fly_buf.capacity() > POOL_BUF_MAX {
                q.fly_buf = Vec::new();
            }
            self.spare.push(q);
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
    }

    /// Queues a frame: `header` and `payload` copied in one go.
    pub fn push_frame(&mut self, pool: &mut Pool, header: &[u8], payload: &[u8]) {
        let q = self.q(pool);
        q.buf.reserve(header.len() + payload.len());
        q.buf.extend_from_slice(header);
        q.buf.extend_from_slice(payload);
        q.pending += header.len() + payload.len();
    }

    /// Queues a shared frame: a reference, not a copy.
    pub fn push_shared(&mut self, pool: &mut Pool, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let q = self.q(pool);
        q.cover();
        q.pending += frame.len();
        q.parts.push(Part::Shared(frame));
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
            match part {
                Part::Own { start, end } => f(&q.buf[*start..*end]),
                Part::Shared(b) => f(b),
            }
        }
        if q.buf.len() > q.covered {
            f(&q.buf[q.covered..]);
        }
        let taken = q.pending;
        q.buf.clear();
        q.parts.clear();
        q.covered = 0;
        q.pending = 0;
        taken
    }

    /// Moves what is pending in flight. `false` if a send is already in flight or nothing is
    /// pending. What [`SendQueue::in_flight`] then returns stays valid and unmoved until
    /// [`SendQueue::complete`] reports it all sent (or [`SendQueue::discard`]).
    pub fn begin(&mut self) -> bool {
        let Some(q) = self.q.as_deref_mut() else { return false };
        if q.busy || q.pending == 0 {
            return false;
        }
        std::mem::swap(&mut q.buf, &mut q.fly_buf);
        std::mem::swap(&mut q.parts, &mut q.fly_parts);
        q.buf.clear();
        q.parts.clear();
        q.fly_len = q.pending;
        q.fly_sent = 0;
        q.pending = 0;
        q.busy = true;
        q.iov.clear();
        q.iov_pos = 0;
        if !q.fly_parts.is_empty() {
            if q.fly_buf.len() > q.covered {
                q.fly_parts.push(Part::Own { start: q.covered, end: q.fly_buf.len() });
            }
            for part in &q.fly_parts {
                let (base, len) = match part {
                    Part::Own { start, end } => (q.fly_buf[*start..].as_ptr(), end - start),
                    Part::Shared(b) => (b.as_ptr(), b.len()),
                };
                q.iov.push(libc::iovec { iov_base: base as *mut libc::c_void, iov_len: len });
            }
            q.aim();
        }
        q.covered = 0;
        true
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

    /// `n` more bytes of what is in flight were sent. Returns `true` when all of it is sent
    /// (the queue can `begin` again), `false` after a short send (send [`SendQueue::in_flight`]
    /// again).
    pub fn complete(&mut self, n: usize) -> bool {
        let Some(q) = self.q.as_deref_mut() else { return true };
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
        q.fly_buf.clear();
        q.fly_parts.clear();
        q.iov.clear();
        q.fly_len = 0;
        q.fly_sent = 0;
        q.busy = false;
        true
    }

    /// Drops everything queued, in flight and staged (the peer is gone). Call only when the
    /// kernel holds none of the in-flight bytes any more.
    pub fn discard(&mut self) {
        if let Some(q) = self.q.as_deref_mut() {
            q.buf.clear();
            q.parts.clear();
            q.covered = 0;
            q.pending = 0;
            q.stage = None;
        }
        self.complete(usize::MAX);
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
#[derive(Debug, Default)]
struct Stage {
    /// Slots in publish order; a replaced message leaves an empty slot behind.
    order: VecDeque<Option<((u32, u64), Bytes)>>,
    /// Sequence number of `order[0]`.
    head: u64,
    /// Where each key's latest frame is: its sequence number.
    index: HashMap<(u32, u64), u64>,
    /// Bytes staged.
    len: usize,
}

impl Stage {
    fn put(&mut self, key: (u32, u64), frame: Bytes) -> bool {
        let seq = self.head + self.order.len() as u64;
        self.len += frame.len();
        let replaced = match self.index.insert(key, seq) {
            Some(old) => {
                let slot = &mut self.order[(old - self.head) as usize];
                if let Some((_, old)) = slot.take() {
                    self.len -= old.len();
                }
                true
            }
            None => false,
        };
        self.order.push_back(Some((key, frame)));
        replaced
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
    fn idle_queue_is_a_null_pointer_and_returns_to_the_pool() {
        assert_eq!(std::mem::size_of::<SendQueue>(), 8);
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"hello");
        assert!(q.begin());
        assert!(q.complete(5));
        q.recycle(&mut pool);
        assert!(q.q.is_none());
        assert_eq!(pool.spare.len(), 1);
    }

    #[test]
    fn inflight_bytes_stay_still_while_writing_on() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"hello");
        assert!(q.begin());
        let ptr = match q.in_flight() {
            Some(Out::Buf(b)) => b.as_ptr(),
            other => panic!("{other:?}"),
        };
        q.push(&mut pool, &[b'x'; 10_000]); // may reallocate the pending buffer, not in-flight
        assert!(!q.begin(), "one send at a time");
        assert_eq!(q.len(), 10_005);
        assert!(!q.complete(2));
        match q.in_flight() {
            Some(Out::Buf(b)) => assert_eq!((b.as_ptr(), b), (ptr.wrapping_add(2), &b"llo"[..])),
            other => panic!("{other:?}"),
        }
        assert!(q.complete(3));
        assert!(q.begin());
        assert_eq!(flying(&q).len(), 10_000);
        assert!(!q.complete(1));
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
        assert!(q.begin());
        assert_eq!(flying(&q), b"abSHAREDcdeSHARED");
        // Short sends landing inside and on the edges of parts.
        for (n, rest) in [(1, &b"bSHAREDcdeSHARED"[..]), (4, b"REDcdeSHARED"), (3, b"cdeSHARED")] {
            assert!(!q.complete(n));
            assert_eq!(flying(&q), rest);
        }
        q.push(&mut pool, b"next");
        assert!(q.complete(9));
        assert!(q.begin());
        assert!(matches!(q.in_flight(), Some(Out::Buf(b"next"))));
    }

    #[test]
    fn taking_what_is_pending_hands_out_every_piece_in_order_and_leaves_flight_alone() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        q.push(&mut pool, b"flying");
        assert!(q.begin());
        q.push(&mut pool, b"ab");
        q.push_shared(&mut pool, Bytes::from_static(b"SHARED"));
        q.push_frame(&mut pool, b"c", b"de");
        let mut got = Vec::new();
        assert_eq!(q.take_pending(|piece| got.extend_from_slice(piece)), 11);
        assert_eq!(got, b"abSHAREDcde");
        assert_eq!(flying(&q), b"flying");
        assert_eq!(q.len(), 6);
        assert_eq!(q.take_pending(|_| panic!("nothing pending")), 0);
        assert!(q.complete(6));
        q.push(&mut pool, b"x");
        assert!(q.begin());
        assert_eq!(flying(&q), b"x", "usable as before");
    }

    #[test]
    fn a_lone_shared_frame_goes_out_as_a_plain_send_of_the_shared_bytes() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let frame = Bytes::from(vec![7u8; 100]);
        q.push_shared(&mut pool, frame.clone());
        assert!(q.begin());
        match q.in_flight() {
            Some(Out::Buf(b)) => {
                assert_eq!((b.as_ptr(), b.len()), (frame.as_ptr(), 100), "no copy")
            }
            other => panic!("{other:?}"),
        }
        assert!(!q.complete(40));
        match q.in_flight() {
            Some(Out::Buf(b)) => assert_eq!(b.as_ptr(), frame[40..].as_ptr()),
            other => panic!("{other:?}"),
        }
        assert!(q.complete(60));
    }

    #[test]
    fn published_frames_are_copied_when_small_and_shared_when_large() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        let small = Bytes::from(vec![1u8; COPY_SHARED_MAX]);
        let large = Bytes::from(vec![2u8; COPY_SHARED_MAX + 1]);
        q.push_published(&mut pool, &small);
        q.push_published(&mut pool, &small);
        assert!(q.begin());
        match q.in_flight() {
            Some(Out::Buf(b)) => {
                assert_eq!(b.len(), 2 * COPY_SHARED_MAX);
                assert!(b.as_ptr() != small.as_ptr(), "a copy");
            }
            other => panic!("{other:?}"),
        }
        assert!(q.complete(2 * COPY_SHARED_MAX));
        q.push_published(&mut pool, &large);
        assert!(q.begin());
        match q.in_flight() {
            Some(Out::Buf(b)) => assert_eq!(b.as_ptr(), large.as_ptr(), "by reference"),
            other => panic!("{other:?}"),
        }
        assert!(q.complete(large.len()));
    }

    #[test]
    fn more_parts_than_iov_max_go_out_in_several_sends() {
        let mut pool = Pool::default();
        let mut q = SendQueue::default();
        for _ in 0..1500 {
            q.push_shared(&mut pool, Bytes::from_static(b"xy"));
        }
        assert!(q.begin());
        let Some(Out::Msg(m)) = q.in_flight() else { panic!() };
        assert_eq!(m.msg_iovlen, IOV_MAX);
        assert!(!q.complete(IOV_MAX * 2));
        let Some(Out::Msg(m)) = q.in_flight() else { panic!() };
        assert_eq!(m.msg_iovlen, 1500 - IOV_MAX);
        assert!(q.complete(3000 - IOV_MAX * 2));
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
        assert!(q.begin());
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
}
