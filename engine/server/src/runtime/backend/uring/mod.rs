//! The io_uring backend: one ring per worker, or several when one ring's direct-descriptor table
//! cannot hold the worker's connections (see `ring.rs`), created and used on the worker's thread
//! only.
//!
//! Operations: [`accept::SLOTS`] single-shot accepts into direct descriptors (a ring's
//! fixed-file table, so held connections take no slot in the process fd table), each with its
//! own peer-address buffer (see `accept.rs`), a multishot recv per connection selecting
//! from its ring's provided-buffer ring, one `Send` (or `SendMsg` over an iovec array, when
//! shared frames are queued) at a time per connection straight from its [`SendQueue`],
//! `Shutdown`, `AsyncCancel` and `Close` on the direct descriptor to close, and a multishot poll
//! on the waker's eventfd in the primary ring. TCP_NODELAY is set on the listener (accepted
//! sockets inherit it) and again per connection through the socket uring_cmd where the kernel
//! has it (6.7+). One `io_uring_enter` per loop iteration submits everything and waits; a worker
//! with several rings also enters each other ring that has submissions or completion work.
//!
//! A connection lives in one ring: the one its accept was armed on, which allocated its direct
//! descriptor. Accepts are armed only on a ring with a free slot (the lowest such), and a new
//! ring is set up when every table is full, until the tables hold the connection cap; while none
//! can take one, accepts wait for a close and clients wait in the listen queue.
//!
//! A large reply is written through: its send is prepared right after the read that caused it (the
//! `send` callback of `Driver::on_data`), often straight from the provided buffer the read filled
//! (the buffer is then held until the send completes: see `hold`), and submitted with the next
//! wait, never in the middle of a batch of completions. (Submitting mid-batch was measured to make
//! batches huge: each submit lets the peers answer, their data piles up as deferred completion
//! work, and the next wait copied about 200 x 16 KiB messages into receive buffers before the
//! worker touched the first, all of them cache-cold by then: 21 us of server CPU per 16 KiB echo at
//! 200 connections, against 15 us without.) Each ring's buffer ring lends the kernel only what
//! recent waits used and grows on ENOBUFS (see `buf_ring.rs`); each send's bytes are held by its
//! [`Loan`] until its completion.
//!
//! Every operation's `user_data` names its kind, connection id and the id's generation. Each
//! connection counts the operations that still owe a final completion. Closing cancels what is
//! in flight, closes the direct descriptor once that count is zero (never earlier: see
//! `close_slot`), and releases the id to the worker when the close completes. So no completion
//! arrives for an id the worker has reused, and no send buffer the kernel may still read is
//! freed.
//!
//! What it does not do: zero-copy send (measured: no gain for 20 B - 1 KiB messages on loopback),
//! registered buffers, SQPOLL.

mod accept;
mod buf_ring;
mod op;
mod ring;
mod setup;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::io;
use std::mem::ManuallyDrop;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::types::{Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags};

use self::accept::{Accepts, SLOTS};
use self::buf_ring::{BufRing, GROUP};
use self::op::{Kind, Op, GEN_MASK};
use self::ring::{Ring, MAX_RINGS, SLOT_BITS};
pub use self::setup::probe;
use self::setup::TaskRun;
use super::{Backend, Driver, Loan, Out, SendQueue, Waker};
use crate::config::Settings;
use crate::metrics::{BackendKind, WorkerMetricsRef};
use crate::runtime::pubsub::Mix;

/// The largest completion queue asked for: the kernel's IORING_MAX_CQ_ENTRIES.
const MAX_CQ_ENTRIES: u32 = 1 << 16;
/// Completion rounds per `poll` at most: a kernel that keeps posting cannot hold the worker.
const MAX_ROUNDS: usize = 8;
/// The longest wait while recvs wait for a re-arm after ENOBUFS.
const STARVED_WAIT: Duration = Duration::from_millis(1);
/// The longest single wait (a larger timeout is cut to this; the worker just polls again).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Delay before re-arming accept after it failed (EMFILE, ENFILE with a full direct-descriptor
/// table, ENOBUFS, ENOMEM): retrying at once would spin while the resource is short. A static:
/// the kernel reads it when the timeout is submitted, which may be after the call that queued it.
static ACCEPT_RETRY: Timespec = Timespec::new().nsec(20_000_000);
/// Option values for the socket uring_cmd: statics, for the same reason.
static ONE: libc::c_int = 1;
static LINGER_NOW: libc::linger = libc::linger { l_onoff: 1, l_linger: 0 };

// Connection flags.
/// The id is in use (between accept and release).
const LIVE: u16 = 1 << 0;
/// A multishot recv is armed (counted in `ops`).
const RECV: u16 = 1 << 1;
/// A cancel of that recv is on its way.
const RECV_CANCEL: u16 = 1 << 2;
/// A send is in flight (counted in `ops`).
const SEND: u16 = 1 << 3;
/// Reading paused by backpressure.
const PAUSED: u16 = 1 << 4;
/// The peer is gone (EOF or an error): no more data is delivered. Queued bytes are still sent.
const HUNG_UP: u16 = 1 << 5;
/// The worker called `close` (graceful or hard).
const CLOSING: u16 = 1 << 6;
/// Our write side is shut down.
const SHUT: u16 = 1 << 7;
/// The direct descriptor is being closed and every operation cancelled.
const TEARDOWN: u16 = 1 << 8;
/// Queued for a recv re-arm after the batch.
const REARM: u16 = 1 << 9;
/// The close of the direct descriptor is submitted.
const CLOSED: u16 = 1 << 10;
/// A send failed: nothing more can go out (an EOF alone does not stop sending: a half-closed
/// peer still gets what is queued, its close echo for one).
const BROKEN: u16 = 1 << 11;
/// A receive buffer is kept for its send (see `held`).
const HELD: u16 = 1 << 12;

/// One connection's state: 12 bytes per id.
#[derive(Debug, Clone, Copy, Default)]
struct Conn {
    /// Its direct descriptor: the ring's index in the high bits, the slot in that ring's table in
    /// the low [`SLOT_BITS`].
    file: u32,
    /// Bumped at every release, so completions for an earlier holder of the id are recognised.
    gen: u32,
    /// Operations submitted whose final completion has not arrived.
    ops: u16,
    flags: u16,
}

impl Conn {
    fn has(&self, flags: u16) -> bool {
        self.flags & flags != 0
    }

    /// Its slot in its ring's fixed-file table.
    fn slot(&self) -> u32 {
        self.file & ((1 << SLOT_BITS) - 1)
    }

    /// The ring it lives in.
    fn ring(&self) -> usize {
        (self.file >> SLOT_BITS) as usize
    }

    /// Whether its multishot recv should be running and is not.
    fn wants_recv(&self) -> bool {
        self.has(LIVE)
            && !self.has(RECV | HUNG_UP | TEARDOWN)
            && (!self.has(PAUSED) || self.has(CLOSING))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    /// Every accept slot has its accept in the ring; each completion re-arms its slot.
    Armed,
    /// An accept failed (out of descriptors or memory): slots that complete stay out of the
    /// ring (a connection they accepted is still handed over) until a timer re-arms them all.
    Retrying,
    /// `stop_accepting` cancelled the slots in flight; waiting for each one's completion.
    Stopping,
    /// Not accepting; the listener is closed.
    Stopped,
}

/// One worker's rings, listener and connections.
pub struct Uring {
    /// Ring 0 (the primary), where the worker waits, then the rings added as tables filled.
    /// Never empty. Each ring cancels its operations and frees its buffers when dropped.
    rings: Vec<Ring>,
    taskrun: TaskRun,
    listener: Option<TcpListener>,
    accept: Accept,
    /// The kernel writes peer addresses into these until the accepts complete: freed in `Drop`
    /// only once every ring is quiet, else leaked.
    accepts: ManuallyDrop<Accepts>,
    /// The ring each accept slot's accept was armed on (meaningful while it is in flight).
    accept_ring: [u16; SLOTS],
    /// Whether every operation is known to be over (`Some(true)`), after `quiesce`.
    quiet: Option<bool>,
    waker: Waker,
    conns: Vec<Conn>,
    /// Direct descriptors wanted in all rings together: the connection cap and room for refusals.
    files_wanted: u64,
    /// Direct descriptors per ring at most: RLIMIT_NOFILE (the kernel's cap), smaller in tests.
    files_per_ring: u64,
    /// What a new ring is built with (its buffers come from `ring_buffers`).
    settings: Settings,
    /// Per id: the loan of its send in flight (while `SEND`), returned to the queue with the
    /// send's completion. Kept beside `conns`, one byte per id.
    loans: Vec<Option<Loan>>,
    /// Per id with `HELD`: the receive buffer (of the connection's ring) its send in flight
    /// reads from, an echo sent straight from where it arrived. Given back once the send
    /// completed and the queue settled.
    held: HashMap<u32, u16, BuildHasherDefault<Mix>>,
    /// The most buffers held at once: a quarter of what one ring may grow to. A send held up
    /// by a peer that does not read keeps its buffer, so without a bound such peers could
    /// take every receive buffer; past it, replies are copied into their queues as before.
    max_held: usize,
    /// Set TCP_NODELAY (and SO_LINGER for hard closes) through the socket uring_cmd; turned off
    /// at the first completion saying the kernel cannot.
    sockopt_cmd: bool,
    cqes: Vec<cqueue::Entry>,
    /// Recvs to re-arm after the current batch: (id, gen).
    rearm: Vec<(u32, u32)>,
    /// Recvs that found the buffer ring empty. Re-armed after the batch, when every buffer is
    /// back in the ring, at most one per buffer: a re-arm into an empty ring fails at once,
    /// and re-arming in the batch spins on ENOBUFS (measured once: 18.5M of them, throughput
    /// down 4x).
    starved: VecDeque<(u32, u32)>,
    released: Vec<usize>,
    /// Per ring, buffers left for ENOBUFS re-arms in this batch (scratch for `rearm_recvs`).
    budget: Vec<u16>,
    stats: Stats,
    /// The worker's counters: enters, completions, ENOBUFS re-arms, bytes sent.
    metrics: WorkerMetricsRef,
    /// Bytes the kernel took from completed sends, stored into `metrics` once per poll.
    bytes_sent: u64,
    /// SO_SNDBUF for accepted sockets (0: the kernel's default), boxed: the socket uring_cmd
    /// reads it when the kernel runs the command, which may be after the call that queued it.
    send_buffer: Box<libc::c_int>,
}

/// Counters shown in `Debug`, for diagnosis.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// Accepts that failed for lack of a slot in the direct-descriptor table (ENFILE), of a
    /// descriptor or of memory.
    accept_errors: u64,
    enobufs: u64,
    stale: u64,
    cq_overflow: u64,
    backlogged: u64,
    /// Rings set up after the primary.
    rings_added: u64,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let primary = &self.rings[0].ring;
        f.debug_struct("Uring")
            .field("ring_flags", &self.taskrun.flags())
            .field("sq_entries", &primary.params().sq_entries())
            .field("cq_entries", &primary.params().cq_entries())
            .field("rings", &self.rings)
            .field("accept", &self.accept)
            .field("accepts", &self.accepts)
            .field("live", &self.conns.iter().filter(|c| c.has(LIVE)).count())
            .field("sockopt_cmd", &self.sockopt_cmd)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Uring {
    /// Accepts that failed for lack of a slot in the direct-descriptor table (ENFILE), of a
    /// descriptor or of memory, since the backend started. While the shortage lasts, each
    /// retry that fails counts too: about 50 a second.
    pub fn accept_errors(&self) -> u64 {
        self.stats.accept_errors
    }

    /// A ring serving `listener` (bound, listening, non-blocking), and more as connections fill
    /// its direct-descriptor table. Call it on the worker's thread: the rings are set up for a
    /// single issuer.
    pub fn new(listener: TcpListener, waker: Waker, settings: &Settings) -> io::Result<Self> {
        Uring::with_files_per_ring(listener, waker, settings, setup::nofile_limit())
    }

    /// As [`Uring::new`], with at most `files_per_ring` direct descriptors per ring (tests use a
    /// handful, to exercise several rings without holding thousands of sockets).
    fn with_files_per_ring(
        listener: TcpListener,
        waker: Waker,
        settings: &Settings,
        files_per_ring: u64,
    ) -> io::Result<Self> {
        let files_wanted =
            (settings.max_connections_per_worker as u64).saturating_add(setup::REFUSAL_ROOM);
        let files = ring::table_size(files_wanted, 0, files_per_ring);
        let (sq, cq) = ring_entries(settings);
        let (primary, taskrun) = Ring::new(sq, cq, files, ring_buffers(settings, 0)?, None)?;
        let sockopt_cmd = setup::has_uring_cmd(&primary.ring);
        let mut this = Uring {
            rings: vec![primary],
            taskrun,
            listener: None,
            accept: Accept::Stopped,
            accepts: ManuallyDrop::new(Accepts::new()),
            accept_ring: [0; SLOTS],
            quiet: None,
            waker,
            conns: Vec::new(),
            files_wanted,
            files_per_ring: files_per_ring.max(1),
            settings: settings.clone(),
            loans: Vec::new(),
            held: HashMap::default(),
            max_held: settings.recv_buffers as usize * buf_ring::MAX_CHUNKS / 4,
            sockopt_cmd,
            cqes: Vec::with_capacity(256),
            rearm: Vec::new(),
            starved: VecDeque::new(),
            released: Vec::new(),
            budget: Vec::new(),
            stats: Stats::default(),
            metrics: super::epoll::detached_metrics(),
            bytes_sent: 0,
            send_buffer: Box::new(
                libc::c_int::try_from(settings.socket_send_buffer).unwrap_or(libc::c_int::MAX),
            ),
        };
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux: every kernel gets
        // it even where the per-connection uring_cmd is missing.
        set_option(listener.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, &ONE);
        this.listener = Some(listener);
        this.arm_waker();
        this.arm_accepts();
        Ok(this)
    }

    /// Counts into `metrics` from now on (until then, into a block nobody reads).
    pub fn set_metrics(&mut self, metrics: WorkerMetricsRef, kind: BackendKind) {
        metrics.set_backend(kind);
        self.metrics = metrics;
    }

    /// Sets up one more ring, its table sized by what the connection cap still needs; `None`
    /// when the tables already hold the cap (or the ring count is at its limit).
    fn add_ring(&mut self) -> Option<io::Result<usize>> {
        let have: u64 = self.rings.iter().map(|r| u64::from(r.files)).sum();
        if have >= self.files_wanted || self.rings.len() >= MAX_RINGS {
            return None;
        }
        let files = ring::table_size(self.files_wanted, have, self.files_per_ring);
        let index = self.rings.len();
        let (sq, cq) = ring_entries(&self.settings);
        let made = ring_buffers(&self.settings, index).and_then(|bufs| {
            Ring::new(sq, cq, files, bufs, Some(self.waker.raw_fd())).map(|(ring, _)| ring)
        });
        Some(made.map(|ring| {
            self.rings.push(ring);
            self.stats.rings_added += 1;
            tracing::debug!(rings = index + 1, files, "io_uring: another ring for connections");
            index
        }))
    }

    /// Queues a submission on ring `r`; when its SQ is full, submits what it holds first (every
    /// consumed completion is already released: `reap` copies them out before dispatching), and
    /// when even that fails keeps it, in order, for the next `poll`.
    fn push(&mut self, r: usize, entry: squeue::Entry) {
        let ring = &mut self.rings[r];
        if ring.backlog.is_empty() {
            // SAFETY: every entry built here points at memory valid until its completion: a
            // connection's in-flight send bytes, iovecs and msghdr (kept by `SendQueue::begin`
            // until `complete`, and the id is not released before the completion), an accept
            // slot's address buffer (owned by `accepts`, which never moves or frees it before
            // `Drop` has cancelled and waited for every operation), or statics.
            if unsafe { ring.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            let _ = ring.ring.submit();
            self.metrics.uring_enters.inc();
            // SAFETY: as above.
            if unsafe { ring.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.stats.backlogged += 1;
        ring.backlog.push_back(entry);
    }

    /// Moves ring `r`'s backlogged submissions into its SQ, submitting when it fills.
    fn drain_backlog(&mut self, r: usize) {
        let ring = &mut self.rings[r];
        while let Some(entry) = ring.backlog.front() {
            // SAFETY: see `push`.
            if unsafe { ring.ring.submission().push(entry) }.is_err() {
                self.metrics.uring_enters.inc();
                if ring.ring.submit().is_err() || ring.ring.submission().is_full() {
                    return;
                }
                continue;
            }
            ring.backlog.pop_front();
        }
    }

    /// Submits everything ring `r` holds and, if `timeout` is not zero, waits for a completion
    /// or the timeout. Always asks for completions: with DEFER_TASKRUN that is what runs the
    /// kernel's pending completion work (and flushes an overflowed CQ).
    fn enter(&mut self, r: usize, timeout: Duration) -> io::Result<()> {
        self.drain_backlog(r);
        let ring = &mut self.rings[r].ring;
        let to_submit = ring.submission().len() as u32;
        let want = u32::from(!timeout.is_zero());
        let timespec = Timespec::from(timeout.min(MAX_WAIT));
        let args = SubmitArgs::new().timespec(&timespec);
        let mut flags = EnterFlags::GETEVENTS | EnterFlags::EXT_ARG;
        if ring.params().is_feature_no_iowait() {
            // The wait is idle time, not I/O: keep it out of iowait.
            flags |= EnterFlags::NO_IOWAIT;
        }
        // SAFETY: EXT_ARG with a live `io_uring_getevents_arg` (SubmitArgs is a transparent
        // wrapper of it) whose timespec outlives the call; the ring is ours.
        let entered = unsafe { ring.submitter().enter(to_submit, want, flags.bits(), Some(&args)) };
        self.metrics.uring_enters.inc();
        match entered {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // A signal, the timeout, or no room for completions yet: reap and go on.
                Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => Ok(()),
                Some(libc::EBADR) => {
                    // The kernel dropped completions (it could not even queue the overflow):
                    // some connections may never be released. Say so; keep serving.
                    crate::log_rate_limited("io_uring dropped completions", &e);
                    Ok(())
                }
                _ => Err(e),
            },
        }
    }

    /// Copies every available completion of ring `r` out and releases the CQ slots.
    fn reap(&mut self, r: usize) {
        self.cqes.clear();
        self.cqes.extend(self.rings[r].ring.completion());
        self.metrics.uring_cqes.add(self.cqes.len() as u64);
    }

    fn arm_waker(&mut self) {
        let poll = opcode::PollAdd::new(Fd(self.waker.raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(Op::global(Kind::Waker).encode());
        self.push(0, poll);
    }

    /// Puts every idle accept slot back in a ring with room for its connection. Slots for which
    /// no ring has room stay idle until a close frees a slot (`room_freed`).
    fn arm_accepts(&mut self) {
        if self.listener.is_none() {
            return;
        }
        self.accept = Accept::Armed;
        for k in self.accepts.idle() {
            if !self.arm_accept(k) {
                break;
            }
        }
    }

    /// Arms accept slot `k` on the lowest ring with a free slot in its table, setting up a new
    /// ring when every table is full; `false` when no ring can take a connection now.
    fn arm_accept(&mut self, k: usize) -> bool {
        let Some(fd) = self.listener.as_ref().map(AsRawFd::as_raw_fd) else { return false };
        let Some(r) = self.ring_with_room() else { return false };
        let accept = self.accepts.arm(k, fd);
        self.accept_ring[k] = r as u16;
        self.rings[r].used += 1;
        self.push(r, accept);
        true
    }

    /// The lowest ring with a free slot, or a new one. When setting one up fails (out of
    /// descriptors for the ring itself, or memory), counted as a failed accept, and accepting
    /// backs off like after one.
    fn ring_with_room(&mut self) -> Option<usize> {
        if let Some(r) = self.rings.iter().position(|r| r.used < r.files) {
            return Some(r);
        }
        match self.add_ring()? {
            Ok(r) => Some(r),
            Err(e) => {
                self.stats.accept_errors += 1;
                crate::log_rate_limited("accept (no room for another io_uring ring)", &e);
                self.back_off_accepts();
                None
            }
        }
    }

    /// Stops re-arming accepts until the retry timer (20 ms) re-arms them all: what accepting
    /// does while descriptors or memory are short, instead of retrying at once.
    fn back_off_accepts(&mut self) {
        if self.accept != Accept::Armed {
            return;
        }
        self.accept = Accept::Retrying;
        let timer = opcode::Timeout::new(&ACCEPT_RETRY)
            .build()
            .user_data(Op::global(Kind::AcceptRetry).encode());
        self.push(0, timer);
    }

    /// A slot of ring `r`'s table came free (its close completed): accept slots waiting for room
    /// can go back in.
    fn room_freed(&mut self, r: usize) {
        let ring = &mut self.rings[r];
        ring.used = ring.used.saturating_sub(1);
        if self.accept == Accept::Armed && self.accepts.idle().next().is_some() {
            self.arm_accepts();
        }
    }

    /// The live connection `op` was submitted for, if it is still that one.
    fn current(&mut self, id: u32, gen: u32) -> Option<&mut Conn> {
        self.conns.get_mut(id as usize).filter(|c| c.has(LIVE) && c.gen == gen)
    }

    fn op(&self, kind: Kind, id: usize) -> Op {
        Op::conn(kind, id as u32, self.conns[id].gen)
    }

    /// Queues `entry` as one more operation `id` waits for, on its ring.
    fn push_counted(&mut self, id: usize, entry: squeue::Entry) {
        self.conns[id].ops += 1;
        self.push(self.conns[id].ring(), entry);
    }

    /// Submits an option set through the socket uring_cmd on `id`'s direct descriptor. Counted
    /// like any operation on the slot (see `close_slot`).
    fn set_option_cmd(
        &mut self,
        id: usize,
        level: i32,
        name: i32,
        value: *const libc::c_void,
        len: u32,
    ) {
        if !self.sockopt_cmd {
            return;
        }
        let entry = opcode::SetSockOpt::new(
            Fixed(self.conns[id].slot()),
            level as u32,
            name as u32,
            value,
            len,
        )
        .build()
        .user_data(self.op(Kind::SockOpt, id).encode());
        self.push_counted(id, entry);
    }

    fn arm_recv(&mut self, id: usize) {
        let recv = opcode::RecvMulti::new(Fixed(self.conns[id].slot()), GROUP)
            .build()
            .user_data(self.op(Kind::Recv, id).encode());
        self.conns[id].flags |= RECV;
        self.push_counted(id, recv);
    }

    fn cancel(&mut self, id: usize, target: Kind) {
        let cancel = opcode::AsyncCancel::new(self.op(target, id).encode())
            .build()
            .user_data(self.op(Kind::Cancel, id).encode());
        self.push_counted(id, cancel);
    }

    /// Lends what `queue` has in flight (or pending) to a send on `id`.
    fn start_send(&mut self, id: usize, queue: &mut SendQueue) {
        let Some(loan) = queue.begin() else { return };
        match queue.in_flight() {
            Some(out) => self.send(id, out, loan),
            None => {
                queue.complete(loan, 0);
            }
        }
    }

    /// Submits a send of `out`, which `loan` keeps in place until the completion returns it.
    fn send(&mut self, id: usize, out: Out<'_>, loan: Loan) {
        let fd = Fixed(self.conns[id].slot());
        // MSG_WAITALL: the kernel retries a short send itself instead of completing early.
        let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
        let send = match out {
            Out::Buf(bytes) => {
                // A longer buffer goes out in several sends (the rest comes back from the queue).
                let len = bytes.len().min(u32::MAX as usize) as u32;
                opcode::Send::new(fd, bytes.as_ptr(), len).flags(flags).build()
            }
            Out::Msg(msg) => opcode::SendMsg::new(fd, msg).flags(flags as u32).build(),
        };
        let send = send.user_data(self.op(Kind::Send, id).encode());
        self.conns[id].flags |= SEND;
        self.loans[id] = Some(loan);
        self.push_counted(id, send);
    }

    fn rearm_later(&mut self, id: usize) {
        let conn = &mut self.conns[id];
        if !conn.has(REARM) {
            conn.flags |= REARM;
            self.rearm.push((id as u32, conn.gen));
        }
    }

    /// One operation of `id` delivered its final completion. When it was the last one of a
    /// connection being torn down, closes its slot, or releases the id if that was the close.
    fn op_done(&mut self, id: usize) {
        let conn = &mut self.conns[id];
        conn.ops = conn.ops.saturating_sub(1);
        if conn.ops != 0 || !conn.has(TEARDOWN) {
            return;
        }
        if conn.has(CLOSED) {
            let r = conn.ring();
            // No operation is left, so no send reads a held buffer (`on_send` gives it back
            // first; this is a safety net).
            self.give_back_held(id);
            let conn = &mut self.conns[id];
            *conn = Conn { gen: conn.gen.wrapping_add(1) & GEN_MASK, ..Conn::default() };
            self.released.push(id);
            self.room_freed(r);
        } else {
            self.close_slot(id);
        }
    }

    /// The peer is gone. Reported to the driver once, unless the worker already closed the id
    /// (then this is the EOF a graceful close waits for).
    fn hang_up(&mut self, id: usize, driver: &mut dyn Driver) {
        let conn = &mut self.conns[id];
        if conn.has(HUNG_UP) {
            return;
        }
        conn.flags |= HUNG_UP;
        if conn.has(CLOSING) {
            self.advance_close(id);
        } else {
            driver.on_hangup(id);
        }
    }

    /// Moves a graceful close on: after the last send, shut the write side and read until the
    /// peer's EOF (discarding), then tear down. A peer that already closed its side (or failed)
    /// needs no shutdown: tear down after the last send.
    fn advance_close(&mut self, id: usize) {
        let conn = self.conns[id];
        if !conn.has(CLOSING) || conn.has(TEARDOWN | SEND) {
            return;
        }
        if conn.has(HUNG_UP) {
            self.teardown(id, false);
            return;
        }
        if !conn.has(SHUT) {
            self.conns[id].flags |= SHUT;
            let shutdown = opcode::Shutdown::new(Fixed(conn.slot()), libc::SHUT_WR)
                .build()
                .user_data(self.op(Kind::Shutdown, id).encode());
            self.push_counted(id, shutdown);
        }
        if self.conns[id].wants_recv() {
            self.arm_recv(id);
        }
    }

    /// Cancels whatever `id` has in flight; once the last of it completed, closes the direct
    /// descriptor (`close_slot`), and once that completed, releases the id.
    fn teardown(&mut self, id: usize, hard: bool) {
        let conn = self.conns[id];
        if conn.has(TEARDOWN) {
            return;
        }
        self.conns[id].flags |= TEARDOWN;
        if hard && !conn.has(HUNG_UP) {
            // Unread data or an unresponsive peer: reset rather than linger in FIN_WAIT.
            let linger = (&LINGER_NOW as *const libc::linger).cast();
            let len = std::mem::size_of::<libc::linger>() as u32;
            self.set_option_cmd(id, libc::SOL_SOCKET, libc::SO_LINGER, linger, len);
        }
        if conn.has(RECV) && !conn.has(RECV_CANCEL) {
            self.conns[id].flags |= RECV_CANCEL;
            self.cancel(id, Kind::Recv);
        }
        if conn.has(SEND) {
            self.cancel(id, Kind::Send);
        }
        self.close_slot(id);
    }

    /// Closes `id`'s direct descriptor when nothing else of it is in flight. Not earlier: an
    /// operation the kernel runs in its worker threads (shutdown always is) looks the slot up
    /// only when it runs, and a slot closed by then may already hold the next connection.
    fn close_slot(&mut self, id: usize) {
        let conn = self.conns[id];
        if !conn.has(TEARDOWN) || conn.has(CLOSED) || conn.ops != 0 {
            return;
        }
        self.conns[id].flags |= CLOSED;
        let close = opcode::Close::new(Fixed(conn.slot()))
            .build()
            .user_data(self.op(Kind::Close, id).encode());
        self.push_counted(id, close);
    }

    /// One completion reaped from ring `r`.
    fn dispatch(&mut self, r: usize, cqe: &cqueue::Entry, driver: &mut dyn Driver) {
        let (res, flags) = (cqe.result(), cqe.flags());
        let Some(op) = Op::decode(cqe.user_data()) else {
            self.stats.stale += 1;
            return;
        };
        match op.kind {
            Kind::Accept => self.on_accept(r, op, res, driver),
            Kind::AcceptRetry => {
                if self.accept == Accept::Retrying {
                    self.arm_accepts();
                }
            }
            Kind::AcceptCancel => {}
            // The refused socket's slot is free again.
            Kind::Refused => self.room_freed(r),
            Kind::Waker => {
                self.waker.reset();
                if !cqueue::more(flags) && res != -libc::EBADF && res != -libc::EINVAL {
                    self.arm_waker();
                }
            }
            Kind::Recv => self.on_recv(r, op, res, flags, driver),
            Kind::Send => self.on_send(op, res, driver),
            Kind::SockOpt if matches!(-res, libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY) => {
                if self.sockopt_cmd {
                    // Before 6.7 sockets had no uring_cmd: rely on the listener's TCP_NODELAY.
                    self.sockopt_cmd = false;
                    let e = io::Error::from_raw_os_error(-res);
                    crate::log_rate_limited("setsockopt through io_uring unsupported", &e);
                }
                self.finish(op);
            }
            Kind::SockOpt | Kind::Shutdown | Kind::Cancel | Kind::Close => self.finish(op),
        }
    }

    /// A connection's operation with nothing to do on completion but count it.
    fn finish(&mut self, op: Op) {
        if self.current(op.id, op.gen).is_some() {
            self.op_done(op.id as usize);
        } else {
            self.stats.stale += 1;
        }
    }

    /// Accept slot `op`'s accept, armed on ring `r`, completed.
    fn on_accept(&mut self, r: usize, op: Op, res: i32, driver: &mut dyn Driver) {
        let Some(k) = self.accepts.complete(op) else {
            self.stats.stale += 1;
            return;
        };
        if res < 0 {
            // No slot was taken: the one this accept was promised is free again (counted here
            // and not through `room_freed`: this slot is re-armed below, or backs off).
            let ring = &mut self.rings[r];
            ring.used = ring.used.saturating_sub(1);
        }
        if res >= 0 {
            let slot = res as u32;
            let id = match self.accept {
                // Read before the slot is re-armed: the next accept overwrites the address.
                Accept::Armed | Accept::Retrying => driver.on_accept(self.accepts.peer(k)),
                Accept::Stopping | Accept::Stopped => None,
            };
            match id {
                Some(id) if id < u32::MAX as usize => self.open(id, r, slot),
                refused => {
                    // The slot stays counted in `used` until this close completes.
                    let close = opcode::Close::new(Fixed(slot))
                        .build()
                        .user_data(Op::global(Kind::Refused).encode());
                    self.push(r, close);
                    if let Some(id) = refused {
                        // An id this backend cannot encode (never with a slab): give it back.
                        driver.on_hangup(id);
                        self.released.push(id);
                    }
                }
            }
        } else if res != -libc::ECANCELED {
            let e = io::Error::from_raw_os_error(-res);
            if super::epoll::is_transient_accept_error(&e) {
                self.stats.accept_errors += 1;
            }
            crate::log_rate_limited("accept", &e);
        }
        match self.accept {
            Accept::Armed if res >= 0 => {
                // Without room in any ring the slot waits for a close (`room_freed`).
                self.arm_accept(k);
            }
            Accept::Armed => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM...: retry later, all slots at once (the others
                // would likely fail alike). Not at once: the accept would fail again while the
                // shortage lasts. A full direct-descriptor table is not among them: accepts are
                // armed only where a slot is free (unlike epoll's, an accept into a full table
                // would take the connection off the listen queue and the kernel would close it).
                self.back_off_accepts();
            }
            Accept::Stopping if !self.accepts.any_in_flight() => {
                self.accept = Accept::Stopped;
                self.listener = None;
            }
            Accept::Retrying | Accept::Stopping | Accept::Stopped => {}
        }
    }

    /// A connection accepted into direct descriptor `slot` of ring `r`, known to the worker as
    /// `id`.
    fn open(&mut self, id: usize, r: usize, slot: u32) {
        if self.conns.len() <= id {
            self.conns.resize(id + 1, Conn::default());
            self.loans.resize_with(id + 1, || None);
        }
        let conn = &mut self.conns[id];
        debug_assert!(!conn.has(LIVE), "the worker reused id {id} before its release");
        let file = (r as u32) << SLOT_BITS | slot;
        *conn = Conn { file, gen: conn.gen, ops: 0, flags: LIVE };
        let one = (&ONE as *const libc::c_int).cast();
        self.set_option_cmd(id, libc::IPPROTO_TCP, libc::TCP_NODELAY, one, 4);
        if *self.send_buffer != 0 {
            // Inherited from the listener too; set again like TCP_NODELAY.
            let size = (&*self.send_buffer as *const libc::c_int).cast();
            self.set_option_cmd(id, libc::SOL_SOCKET, libc::SO_SNDBUF, size, 4);
        }
        self.arm_recv(id);
    }

    /// A completion of `op`'s multishot recv, reaped from ring `r` (whose buffers it selects).
    fn on_recv(&mut self, r: usize, op: Op, res: i32, flags: u32, driver: &mut dyn Driver) {
        let more = cqueue::more(flags);
        // A buffer named by a completion is ours until given back, whatever became of the recv.
        let bid = cqueue::buffer_select(flags).filter(|&bid| self.rings[r].bufs.take(bid));
        let Some(conn) = self.current(op.id, op.gen) else {
            // Never expected (the id is held until this recv's last completion), but the
            // buffer must go back to the ring regardless.
            if let Some(bid) = bid {
                self.rings[r].bufs.give_back(bid);
            }
            self.stats.stale += 1;
            return;
        };
        if !more {
            conn.flags &= !(RECV | RECV_CANCEL);
        }
        let deliver = !conn.has(CLOSING | HUNG_UP | TEARDOWN);
        let id = op.id as usize;
        if res > 0 {
            if let Some(bid) = bid {
                let mut hold = false;
                if deliver {
                    // SAFETY: the completion handed buffer `bid` to us (`take`); it goes back
                    // only below, after the driver is done with it, or once the send that
                    // holds it is over (`held`). Nothing else refers to it: the driver's
                    // write-through only reads it through the send queue.
                    if let Some(data) = unsafe { self.rings[r].bufs.buffer(bid, res as usize) } {
                        let lend = self.held.len() < self.max_held;
                        hold = driver.on_data(id, data, lend, &mut |id, queue| {
                            // Prepared now, submitted with the next wait (see the module
                            // notes).
                            Backend::flush(self, id, queue);
                        });
                    }
                }
                if hold {
                    self.hold(id, bid);
                } else {
                    self.rings[r].bufs.give_back(bid);
                }
            }
            if !more {
                self.rearm_later(id);
            }
        } else {
            if let Some(bid) = bid {
                self.rings[r].bufs.give_back(bid);
            }
            match -res {
                0 => self.hang_up(id, driver),
                libc::ENOBUFS => {
                    self.stats.enobufs += 1;
                    self.rings[r].bufs.starve();
                    if !more && !self.conns[id].has(REARM) {
                        self.conns[id].flags |= REARM;
                        self.starved.push_back((op.id, op.gen));
                    }
                }
                // Paused or closing (re-armed if that changed since), or nothing to worry about.
                libc::ECANCELED | libc::EINTR | libc::EAGAIN => {
                    if !more {
                        self.rearm_later(id);
                    }
                }
                _ => self.hang_up(id, driver),
            }
        }
        if !more {
            self.op_done(id);
        }
    }

    /// Keeps receive buffer `bid` of `id`'s ring for the send that reads from it.
    fn hold(&mut self, id: usize, bid: u16) {
        self.conns[id].flags |= HELD;
        if let Some(old) = self.held.insert(id as u32, bid) {
            // Never expected: a queue borrows only with nothing in flight. The older buffer
            // may still be read by the kernel, so it is leaked, not given back.
            debug_assert!(false, "a second receive buffer held by one connection");
            tracing::warn!(buffer = old, "a receive buffer was leaked");
        }
    }

    /// Gives back the receive buffer `id` held for its send, if any, once no send reads it.
    fn unhold(&mut self, id: usize, queue: Option<&mut SendQueue>) {
        if !self.conns[id].has(HELD) {
            return;
        }
        if let Some(queue) = queue {
            if queue.settle() {
                return;
            }
            debug_assert!(!queue.borrows_in_flight());
        }
        self.give_back_held(id);
    }

    /// Returns the receive buffer `id` holds, if any, to its ring.
    fn give_back_held(&mut self, id: usize) {
        let conn = &mut self.conns[id];
        if !conn.has(HELD) {
            return;
        }
        conn.flags &= !HELD;
        let r = conn.ring();
        if let Some(bid) = self.held.remove(&(id as u32)) {
            self.rings[r].bufs.give_back(bid);
        }
    }

    fn on_send(&mut self, op: Op, res: i32, driver: &mut dyn Driver) {
        let Some(conn) = self.current(op.id, op.gen) else {
            self.stats.stale += 1;
            return;
        };
        conn.flags &= !SEND;
        let id = op.id as usize;
        let conn = *conn;
        let failed = res <= 0;
        if failed {
            self.conns[id].flags |= BROKEN;
        } else {
            // The kernel took these bytes, whatever becomes of the queue.
            self.bytes_sent += res as u64;
        }
        let loan = self.loans[id].take();
        let mut done = false;
        if let (Some(queue), Some(loan)) = (driver.queue(id), loan) {
            let all = queue.complete(loan, if failed { 0 } else { res as usize });
            if failed || (!all && conn.has(TEARDOWN)) {
                // Nothing more will go out: drop what is in flight and queued, so the queue is
                // neither stuck busy nor kept for a flush that would fail again.
                queue.discard();
                done = true;
            } else if !all {
                self.start_send(id, queue);
            } else {
                done = true;
                if conn.has(CLOSING) && !conn.has(TEARDOWN | SHUT) {
                    // Bytes queued while this send was in flight must leave before the FIN.
                    self.start_send(id, queue);
                }
            }
        }
        // A held receive buffer goes back once no send reads from it (after a short send the
        // rest may be in flight again, or settled into the queue).
        self.unhold(id, driver.queue(id));
        if failed && res != -libc::ECANCELED {
            self.hang_up(id, driver);
        }
        if done && !failed && !self.conns[id].has(TEARDOWN) {
            driver.on_sent(id);
        }
        self.advance_close(id);
        self.op_done(id);
    }

    /// After a batch: refill the buffer ring (which grows it after ENOBUFS), re-arm the recvs
    /// that ended, and as many ENOBUFS ones as the ring has buffers.
    fn rearm_recvs(&mut self) {
        // Each ring's recvs select from that ring's buffers: refilled, each ring takes as many
        // starved re-arms as it now lends buffers.
        let mut budget = std::mem::take(&mut self.budget);
        budget.clear();
        budget.extend(self.rings.iter_mut().map(|r| r.bufs.refill()));
        let mut rearm = std::mem::take(&mut self.rearm);
        for (id, gen) in rearm.drain(..) {
            if let Some(conn) = self.current(id, gen) {
                conn.flags &= !REARM;
                if conn.wants_recv() {
                    self.arm_recv(id as usize);
                }
            }
        }
        self.rearm = rearm;
        for _ in 0..self.starved.len() {
            let Some((id, gen)) = self.starved.pop_front() else { break };
            if let Some(conn) = self.current(id, gen) {
                let buffers = &mut budget[conn.ring()];
                if *buffers == 0 {
                    // Its ring has none left for this batch: it waits for the next one.
                    self.starved.push_back((id, gen));
                    continue;
                }
                conn.flags &= !REARM;
                if conn.wants_recv() {
                    *buffers -= 1;
                    self.metrics.uring_enobufs_rearms.inc();
                    self.arm_recv(id as usize);
                }
            }
        }
        self.budget = budget;
    }
}

impl Backend for Uring {
    fn poll(&mut self, driver: &mut dyn Driver, timeout: Duration) -> io::Result<()> {
        // Recvs still waiting for their ENOBUFS re-arm get it after the next batch: keep that
        // batch from being a long wait.
        let mut timeout = if self.starved.is_empty() { timeout } else { timeout.min(STARVED_WAIT) };
        let several = self.rings.len() > 1;
        let watching = several && !timeout.is_zero();
        if several {
            // The wait below enters the primary only: the other rings submit now.
            for r in 1..self.rings.len() {
                if self.rings[r].has_submissions() {
                    self.enter(r, Duration::ZERO)?;
                }
            }
            if watching && Ring::watch(&mut self.rings[1..]) {
                timeout = Duration::ZERO;
            }
        }
        let waited = self.enter(0, timeout);
        if watching {
            Ring::unwatch(&mut self.rings[1..]);
        }
        waited?;
        for round in 0..MAX_ROUNDS {
            let mut more = false;
            // Rings added while dispatching are looked at from the next round on.
            for r in 0..self.rings.len() {
                // NODROP kept what did not fit in a CQ; entering again moves it in. The primary
                // was just entered; another ring is entered first if the kernel holds
                // completion work for it. With DEFER_TASKRUN one enter runs a bounded batch of
                // that work (20 items on 6.13+ kernels, which then set IORING_SQ_TASKRUN again),
                // so a ring with a backlog is entered again in the next round rather than
                // waiting for the next `poll`.
                let overflow = self.rings[r].ring.submission().cq_overflow();
                if overflow && round > 0 {
                    self.stats.cq_overflow += 1;
                }
                // Only with several rings: one ring's leftover work is run by the next poll's
                // enter, which the loop makes at once when there is work, so entering it again
                // per round would only add system calls to every busy iteration.
                let reenter = several && (round > 0 || r > 0);
                if reenter && self.rings[r].needs_enter() {
                    self.enter(r, Duration::ZERO)?;
                }
                self.reap(r);
                more |= !self.cqes.is_empty() || (several && self.rings[r].needs_enter());
                let batch = std::mem::take(&mut self.cqes);
                for cqe in &batch {
                    self.dispatch(r, cqe, driver);
                }
                self.cqes = batch;
            }
            if !more {
                break;
            }
        }
        self.rearm_recvs();
        // Sends complete only here, in completions.
        self.metrics.bytes_sent.set_total(self.bytes_sent);
        let mut released = std::mem::take(&mut self.released);
        for id in released.drain(..) {
            driver.on_released(id);
        }
        self.released = released;
        Ok(())
    }

    fn flush(&mut self, id: usize, queue: &mut SendQueue) {
        let Some(conn) = self.conns.get(id).filter(|c| c.has(LIVE)) else { return };
        if conn.has(BROKEN) {
            queue.discard();
            return;
        }
        if conn.has(SEND | TEARDOWN | SHUT) {
            return;
        }
        self.start_send(id, queue);
    }

    fn set_reading(&mut self, id: usize, reading: bool) {
        let Some(conn) = self.conns.get_mut(id).filter(|c| c.has(LIVE)) else { return };
        if conn.has(CLOSING) {
            // A closing connection reads (and discards) until the peer's EOF.
            return;
        }
        if reading {
            conn.flags &= !PAUSED;
            if conn.wants_recv() {
                self.arm_recv(id);
            }
        } else {
            conn.flags |= PAUSED;
            if conn.has(RECV) && !conn.has(RECV_CANCEL) {
                // Multishot keeps delivering while data comes: only a cancel stops it. What
                // arrives before the cancel lands is still delivered.
                conn.flags |= RECV_CANCEL;
                self.cancel(id, Kind::Recv);
            }
        }
    }

    fn close(&mut self, id: usize, hard: bool) {
        let Some(conn) = self.conns.get_mut(id).filter(|c| c.has(LIVE)) else { return };
        conn.flags = (conn.flags | CLOSING) & !PAUSED;
        if hard {
            self.teardown(id, true);
        } else {
            self.advance_close(id);
        }
    }

    fn stop_accepting(&mut self) {
        match self.accept {
            Accept::Armed | Accept::Retrying if self.accepts.any_in_flight() => {
                // Each slot's completion (cancelled, or a connection accepted meanwhile, which
                // is refused) takes it out of flight; the last one closes the listener. A retry
                // timer still pending finds Stopping or Stopped and does nothing.
                self.accept = Accept::Stopping;
                for k in self.accepts.busy() {
                    // A cancel finds only operations of its own ring.
                    let cancel = opcode::AsyncCancel::new(Accepts::op(k).encode())
                        .build()
                        .user_data(Op::global(Kind::AcceptCancel).encode());
                    self.push(usize::from(self.accept_ring[k]), cancel);
                }
            }
            Accept::Armed | Accept::Retrying => {
                // No accept in the ring.
                self.accept = Accept::Stopped;
                self.listener = None;
            }
            Accept::Stopping | Accept::Stopped => {}
        }
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn accept_errors(&self) -> u64 {
        Uring::accept_errors(self)
    }

    fn quiesce(&mut self) -> bool {
        if self.quiet.is_none() {
            // Every ring, even after one failed: each frees its buffers only if it is quiet.
            let quiet = self.rings.iter_mut().fold(true, |quiet, r| r.quiesce() & quiet);
            if !quiet {
                tracing::error!(
                    "io_uring operations outlived the one-second cancel at shutdown; their \
                     buffers are leaked rather than freed under the kernel"
                );
            }
            self.quiet = Some(quiet);
        }
        self.quiet == Some(true)
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Operations may still point into the buffer rings, the accept address buffers and send
        // queues: cancel them all and wait before anything is freed; what the kernel may still
        // use after a timed-out wait is leaked instead. Each ring frees its own buffers when
        // dropped, after this, if it is quiet.
        if super::Backend::quiesce(self) {
            // SAFETY: dropped once, here, and no operation of any ring can touch them any more.
            unsafe { ManuallyDrop::drop(&mut self.accepts) };
        }
    }
}

/// setsockopt(2) of an int on a descriptor we hold; failure only costs the option.
fn set_option(fd: std::os::fd::RawFd, level: i32, name: i32, value: &libc::c_int) {
    // SAFETY: reads one int from a live reference; `fd` is open for the call.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Submission and completion entries of every ring of a worker.
fn ring_entries(settings: &Settings) -> (u32, u32) {
    let sq = settings.ring_entries.clamp(64, 32_768);
    (sq, sq.saturating_mul(4).min(MAX_CQ_ENTRIES))
}

/// The provided receive buffers of ring `index` (0: the primary). A ring added for more
/// connections starts with an eighth of the primary's buffers: most connections held at that
/// scale are idle, and an idle connection holds no buffer.
fn ring_buffers(settings: &Settings, index: usize) -> io::Result<BufRing> {
    let count =
        if index == 0 { settings.recv_buffers } else { (settings.recv_buffers / 8).max(16) };
    BufRing::new(count, settings.recv_buffer_size)
}
