//! The io_uring loop: multishot accept, multishot recv into a provided-buffer ring, and one send
//! in flight per connection.
//!
//! A received buffer is copied into the connection's `next` buffer and goes straight back to the
//! ring. After each batch of completions, a connection with bytes in `next` and no send in flight
//! swaps `next` with `out` and sends `out`, which nothing touches until that send completes;
//! bytes arriving meanwhile gather in `next`. Recvs stopped by `ENOBUFS` are re-armed after the
//! batch, once its buffers are back in the ring. One `io_uring_enter` per loop iteration submits
//! everything and waits (at most 100 ms, so a stop request is noticed).

use std::alloc::{self, Layout};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, SubmissionQueue, Submitter};

use super::{Config, RingFlags};
use crate::handshake::{Handshake, Progress, BAD_REQUEST};

const SQ_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 16 * 1024;
/// Completions taken off the ring at a time (the ring is synced between chunks).
const CHUNK: usize = 1024;
const GROUP: u16 = 0;
const WAIT: Timespec = Timespec::new().nsec(100_000_000);

/// What a completion is for: the kind in the top byte of `user_data`, then a 24-bit generation
/// of the connection slot, then the slot index.
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;

fn user_data(kind: u64, generation: u32, index: u32) -> u64 {
    (kind << 56) | (u64::from(generation & 0xff_ffff) << 32) | u64::from(index)
}

/// The provided-buffer ring: `count` buffers of `size` bytes lent to the kernel. Its memory lives
/// as long as the process (it is never freed: the kernel may write into it until the ring is
/// gone, and the ring goes only when the process exits).
struct BufRing {
    entries: NonNull<BufRingEntry>,
    ring_len: u16,
    tail: u16,
    memory: NonNull<u8>,
    size: usize,
    count: u16,
}

impl BufRing {
    fn new(count: u16, size: u32) -> io::Result<Self> {
        let count = count.clamp(1, 1 << 15);
        let size = size.max(64) as usize;
        let ring_len = count.next_power_of_two();
        let page = 4096;
        let bad = |_| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large");
        let entries_layout = Layout::from_size_align(
            (usize::from(ring_len) * std::mem::size_of::<BufRingEntry>()).next_multiple_of(page),
            page,
        )
        .map_err(bad)?;
        let memory_layout =
            Layout::from_size_align(size * usize::from(count), page).map_err(bad)?;
        // SAFETY: both layouts have a non-zero size.
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) })
            .ok_or(io::ErrorKind::OutOfMemory)?;
        // SAFETY: as above.
        let memory = NonNull::new(unsafe { alloc::alloc_zeroed(memory_layout) })
            .ok_or(io::ErrorKind::OutOfMemory)?;
        let mut ring = BufRing { entries: entries.cast(), ring_len, tail: 0, memory, size, count };
        for bid in 0..count {
            ring.give_back(bid);
        }
        Ok(ring)
    }

    /// The first `len` bytes of buffer `bid`, `None` if the kernel named one we never lent.
    ///
    /// # Safety
    ///
    /// Buffer `bid` must be ours: named by a completion and not given back since.
    unsafe fn buffer(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.count || len > self.size {
            return None;
        }
        // SAFETY: `bid < count`, so the range lies inside `memory`; the caller guarantees the
        // kernel is done writing it and will not write it again before it is given back.
        Some(unsafe {
            std::slice::from_raw_parts(self.memory.as_ptr().add(usize::from(bid) * self.size), len)
        })
    }

    /// Puts buffer `bid` back in the ring, visible to the kernel at once.
    fn give_back(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let index = usize::from(self.tail & (self.ring_len - 1));
        // SAFETY: `index < ring_len`, inside the entries allocation; the kernel reads only the
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        // SAFETY: `bid < count`: the address lies inside `memory`.
        entry.set_addr(unsafe { self.memory.as_ptr().add(usize::from(bid) * self.size) } as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the `resv` field of entry 0, inside our allocation and aligned for
        // u16; the kernel reads it atomically. The release store publishes the entry above.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

#[derive(Default)]
struct Conn {
    fd: RawFd,
    generation: u32,
    /// `Some` until the request head is complete.
    handshake: Option<Handshake>,
    /// The buffer of the send in flight (untouched until it completes), sent up to `out_sent`.
    out: Vec<u8>,
    out_sent: usize,
    /// Bytes received since that send started.
    next: Vec<u8>,
    sending: bool,
    recv_armed: bool,
    /// Re-arm the recv after this batch (it stopped on `ENOBUFS` or ended with data).
    rearm: bool,
    /// No more receiving: close once the last send is done (and `next` is sent, unless
    /// `discard`).
    closing: bool,
    discard: bool,
    cancel_sent: bool,
    /// In the `dirty` list.
    dirty: bool,
}

struct State {
    listener: TcpListener,
    bufs: BufRing,
    conns: Vec<Conn>,
    free: Vec<u32>,
    /// Connections to look at after the batch.
    dirty: Vec<u32>,
    accept_armed: bool,
}

/// One io_uring event loop over one listener.
pub struct EventLoop {
    ring: IoUring,
    state: State,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").field("conns", &self.state.conns.len()).finish()
    }
}

impl EventLoop {
    /// Creates the ring and registers the buffer ring. Must run on the thread that will call
    /// [`EventLoop::run`] (the ring may be `SINGLE_ISSUER`).
    pub fn new(listener: TcpListener, config: &Config) -> io::Result<Self> {
        let mut builder = IoUring::builder();
        match config.ring_flags {
            RingFlags::Defer => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            RingFlags::Coop => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingFlags::None => {}
        }
        builder.setup_cqsize(CQ_ENTRIES);
        let ring = builder.build(SQ_ENTRIES)?;
        let bufs = BufRing::new(config.buffers, config.buffer_size)?;
        // SAFETY: the entries allocation is page-aligned, holds `ring_len` entries, and is never
        // freed (see BufRing), so it outlives the registration.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries.as_ptr() as u64,
                bufs.ring_len,
                GROUP,
                0,
            )?;
        }
        Ok(EventLoop {
            ring,
            state: State {
                listener,
                bufs,
                conns: Vec::new(),
                free: Vec::new(),
                dirty: Vec::new(),
                accept_armed: false,
            },
        })
    }

    /// Serves until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        let (submitter, mut sq, mut cq) = self.ring.split();
        let state = &mut self.state;
        let args = SubmitArgs::new().timespec(&WAIT);
        let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(CHUNK);
        while !stop.load(Ordering::Relaxed) {
            if !state.accept_armed {
                let entry = opcode::AcceptMulti::new(Fd(state.listener.as_raw_fd()))
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(user_data(ACCEPT, 0, 0));
                push(&mut sq, &submitter, &entry);
                state.accept_armed = true;
            }
            sq.sync();
            match submitter.submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            loop {
                cq.sync();
                cqes.clear();
                cqes.extend(cq.by_ref().take(CHUNK));
                if cqes.is_empty() {
                    break;
                }
                cq.sync();
                for cqe in &cqes {
                    state.complete(cqe, &mut sq, &submitter);
                }
            }
            state.after_batch(&mut sq, &submitter);
        }
        Ok(())
    }
}

/// Queues an entry, submitting what is queued first if the submission queue is full.
fn push(sq: &mut SubmissionQueue<'_>, submitter: &Submitter<'_>, entry: &squeue::Entry) {
    loop {
        // SAFETY: every entry built here names the listener, a connection's open descriptor, or
        // a connection's `out` buffer; the descriptor stays open, and `out` untouched, until the
        // operation's last completion has been seen (see Conn and State::settle).
        if unsafe { sq.push(entry) }.is_ok() {
            return;
        }
        sq.sync();
        if let Err(e) = submitter.submit() {
            if e.raw_os_error() != Some(libc::EBUSY) {
                crate::log_error("io_uring_enter", &e);
            }
        }
        sq.sync();
    }
}

impl State {
    fn complete(&mut self, cqe: &cqueue::Entry, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let data = cqe.user_data();
        let kind = data >> 56;
        let index = data as u32;
        let res = cqe.result();
        let flags = cqe.flags();
        if matches!(kind, RECV | SEND) {
            // Operations end before their slot is reused, so this never fails; but a completion
            // for an earlier occupant must never touch the next one.
            let current = self.conns.get(index as usize).map(|c| c.generation & 0xff_ffff);
            if current != Some((data >> 32) as u32 & 0xff_ffff) {
                return;
            }
        }
        match kind {
            ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    self.open(res, sq, sub);
                } else if res != -libc::ECANCELED {
                    crate::log_error("accept", &io::Error::from_raw_os_error(-res));
                }
            }
            RECV => self.on_recv(index, res, flags),
            SEND => self.on_send(index, res, sq, sub),
            _ => {} // CANCEL: the recv it cancels reports on its own.
        }
    }

    fn open(&mut self, fd: RawFd, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        if let Err(e) = crate::set_nodelay(fd) {
            crate::log_error("TCP_NODELAY", &e);
        }
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(Conn::default());
            (self.conns.len() - 1) as u32
        });
        let conn = &mut self.conns[index as usize];
        conn.fd = fd;
        conn.handshake = Some(Handshake::new());
        let entry = opcode::RecvMulti::new(Fd(fd), GROUP).build().user_data(user_data(
            RECV,
            conn.generation,
            index,
        ));
        conn.recv_armed = true;
        push(sq, sub, &entry);
    }

    fn mark(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }

    fn on_recv(&mut self, index: u32, res: i32, flags: u32) {
        let Some(conn) = self.conns.get_mut(index as usize) else { return };
        let more = cqueue::more(flags);
        if !more {
            conn.recv_armed = false;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                conn.closing = true;
                conn.discard = true;
                self.mark(index);
                return;
            };
            // SAFETY: the completion hands buffer `bid` to us; it goes back below.
            let data = unsafe { self.bufs.buffer(bid, res as usize) };
            if let (false, Some(data)) = (conn.closing, data) {
                match &mut conn.handshake {
                    None => conn.next.extend_from_slice(data),
                    Some(handshake) => match handshake.feed(data, &mut conn.next) {
                        Ok(Progress::NeedMore) => {}
                        Ok(Progress::Done { rest }) => {
                            conn.handshake = None;
                            conn.next.extend_from_slice(&data[rest..]);
                        }
                        Err(_) => {
                            conn.handshake = None;
                            conn.next.clear();
                            conn.next.extend_from_slice(BAD_REQUEST);
                            conn.closing = true;
                        }
                    },
                }
            }
            self.bufs.give_back(bid);
            if !more && !conn.closing {
                conn.rearm = true;
            }
        } else if res == -libc::ENOBUFS {
            if !more && !conn.closing {
                conn.rearm = true;
            }
        } else {
            // End of stream (0) or an error: send what is left on EOF, drop it on errors.
            conn.closing = true;
            conn.discard |= res < 0;
        }
        self.mark(index);
    }

    fn on_send(&mut self, index: u32, res: i32, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let Some(conn) = self.conns.get_mut(index as usize) else { return };
        conn.sending = false;
        if res <= 0 {
            conn.closing = true;
            conn.discard = true;
        } else {
            conn.out_sent += res as usize;
            if conn.out_sent < conn.out.len() && !conn.discard {
                // Short send: the rest of the same buffer, which is still untouched.
                let rest = &conn.out[conn.out_sent..];
                let entry = opcode::Send::new(Fd(conn.fd), rest.as_ptr(), rest.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(user_data(SEND, conn.generation, index));
                conn.sending = true;
                push(sq, sub, &entry);
                return;
            }
            conn.out.clear();
            conn.out_sent = 0;
        }
        self.mark(index);
    }

    /// Re-arms recvs, starts sends, and closes finished connections, for every connection the
    /// batch touched.
    fn after_batch(&mut self, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            self.settle(index, sq, sub);
        }
        // settle never marks, so the list is still empty: give it its capacity back.
        dirty.clear();
        self.dirty = dirty;
    }

    fn settle(&mut self, index: u32, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let conn = &mut self.conns[index as usize];
        conn.dirty = false;
        if conn.rearm {
            conn.rearm = false;
            if !conn.closing && !conn.recv_armed {
                let entry = opcode::RecvMulti::new(Fd(conn.fd), GROUP)
                    .build()
                    .user_data(user_data(RECV, conn.generation, index));
                conn.recv_armed = true;
                push(sq, sub, &entry);
            }
        }
        if conn.discard {
            conn.next.clear();
        }
        if !conn.sending && !conn.next.is_empty() {
            std::mem::swap(&mut conn.out, &mut conn.next);
            conn.out_sent = 0;
            let entry = opcode::Send::new(Fd(conn.fd), conn.out.as_ptr(), conn.out.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(user_data(SEND, conn.generation, index));
            conn.sending = true;
            push(sq, sub, &entry);
        }
        if !conn.closing || conn.sending {
            return;
        }
        if conn.recv_armed {
            if !conn.cancel_sent {
                conn.cancel_sent = true;
                let entry = opcode::AsyncCancel::new(user_data(RECV, conn.generation, index))
                    .build()
                    .user_data(user_data(CANCEL, conn.generation, index));
                push(sq, sub, &entry);
            }
            return;
        }
        // Nothing in flight names this descriptor or these buffers any more.
        // SAFETY: close(2) takes no pointers; the descriptor is ours and closed once.
        unsafe { libc::close(conn.fd) };
        let mut out = std::mem::take(&mut conn.out);
        let mut next = std::mem::take(&mut conn.next);
        out.clear();
        next.clear();
        out.shrink_to(64 * 1024);
        next.shrink_to(64 * 1024);
        *conn = Conn {
            fd: -1,
            generation: conn.generation.wrapping_add(1),
            out,
            next,
            ..Conn::default()
        };
        self.free.push(index);
    }
}
