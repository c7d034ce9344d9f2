//! Per-worker counters: one [`WorkerMetrics`] per worker, written only by that worker's thread
//! and read by the scrape thread.
//!
//! Every value is an `AtomicU64` updated with a Relaxed load and a Relaxed store, not a
//! read-modify-write: with one writer nothing is lost, and on x86-64 and AArch64 that compiles to
//! the plain load, add and store a `u64` field would (no `lock` prefix, no fence). Each worker's
//! block is aligned to 128 bytes (two cache lines: the adjacent-line prefetcher pairs them), so
//! no two workers ever write the same line; the scrape thread's reads invalidate a worker's
//! lines at most once per scrape.
//!
//! A second writer would not be undefined behaviour, only lost updates: each field has exactly one
//! writing thread, the worker that owns the block.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A monotonic count with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`. Only the owning worker calls this (see the module doc).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Stores a running total the worker keeps in a plain `u64` (the once-per-iteration style:
    /// count in the loop, publish the totals at the end of each iteration). The total must never
    /// go down.
    #[inline]
    pub fn set_total(&self, total: u64) {
        self.0.store(total, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A level that goes up and down (never below zero) with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Zero.
    pub const fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }

    /// Sets the level.
    #[inline]
    pub fn set(&self, value: u64) {
        self.0.store(value, Relaxed);
    }

    /// Raises the level by `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).saturating_add(n), Relaxed);
    }

    /// Lowers the level by `n`, stopping at zero (a release counted twice shows as zero, not as
    /// 18 quintillion).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).saturating_sub(n), Relaxed);
    }

    /// The current level.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the loop-iteration histogram's buckets, nanoseconds, ascending (10 µs to 1 s
/// in 1-2.5-5 steps); one more bucket, `+Inf`, holds what is slower.
pub const LOOP_BUCKETS_NS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// A histogram of durations over [`LOOP_BUCKETS_NS`], with a single writer.
///
/// Buckets are stored per bucket (not cumulative) so an observation is one increment; the
/// exposition adds them up. The count is the sum of the buckets, so `_count` always equals the
/// `+Inf` bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Counter; LOOP_BUCKETS_NS.len() + 1],
    sum_ns: Counter,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one duration given in nanoseconds.
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        // Most iterations are short: a linear scan from the smallest bucket ends early.
        let i = LOOP_BUCKETS_NS.iter().position(|&le| ns <= le).unwrap_or(LOOP_BUCKETS_NS.len());
        self.buckets[i].inc();
        self.sum_ns.add(ns);
    }

    /// Observations in each bucket (not cumulative); the last is the `+Inf` bucket.
    pub fn buckets(&self) -> [u64; LOOP_BUCKETS_NS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].get())
    }

    /// The sum of all observations, nanoseconds (wraps after 584 years of loop time).
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns.get()
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.buckets().iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }
}

/// The upgrade statuses counted on their own; any other goes to "other".
pub const UPGRADE_STATUSES: [u16; 8] = [101, 400, 401, 403, 404, 405, 426, 431];

/// The close codes counted on their own; any other goes to "other".
pub const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1013];

/// The I/O backend a worker runs, shown as the `backend` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    /// Not set yet (the worker has not started its backend).
    Unknown,
    /// io_uring.
    IoUring,
    /// epoll.
    Epoll,
}

impl BackendKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Unknown => "unknown",
            BackendKind::IoUring => "io_uring",
            BackendKind::Epoll => "epoll",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => BackendKind::IoUring,
            2 => BackendKind::Epoll,
            _ => BackendKind::Unknown,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            BackendKind::Unknown => 0,
            BackendKind::IoUring => 1,
            BackendKind::Epoll => 2,
        }
    }
}

/// One worker's counters and gauges. Written only by that worker; see the module doc.
///
/// Field docs say what each one counts; `docs/operations.md` says what to do when it moves.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    backend: AtomicU8,
    /// Connections the worker holds now, handshaking or open (gauge).
    pub connections_open: Gauge,
    /// TCP connections accepted.
    pub connections_accepted: Counter,
    upgrades: [Counter; UPGRADE_STATUSES.len() + 1],
    closes: [Counter; CLOSE_CODES.len() + 1],
    /// WebSocket data messages received (whole messages, after reassembly).
    pub messages_received: Counter,
    /// WebSocket data messages queued for sending (a publish counts once per subscriber).
    pub messages_sent: Counter,
    /// Bytes read from sockets (wire bytes: headers, frames, masks).
    pub bytes_received: Counter,
    /// Bytes the kernel accepted from send queues (wire bytes).
    pub bytes_sent: Counter,
    /// Ping frames received.
    pub pings_received: Counter,
    /// Pong frames received.
    pub pongs_received: Counter,
    /// Publishes queued to a subscriber.
    pub publishes_delivered: Counter,
    /// Publishes not queued to a subscriber that was over its send limit (policy `drop`).
    pub publishes_dropped: Counter,
    /// Publishes that replaced an older staged message of the same key (policy `conflate`).
    pub publishes_conflated: Counter,
    /// Connections closed (1008) for falling behind (policy `close`).
    pub slow_consumers_closed: Counter,
    /// Bytes in send queues that the kernel has not accepted yet (gauge).
    pub send_queued_bytes: Gauge,
    /// Bytes held for clients' unfinished input: partial frames, fragments being assembled,
    /// upgrade requests not yet complete (gauge).
    pub input_buffered_bytes: Gauge,
    /// The input budget the worker charges `input_buffered_bytes` against (gauge; 0 = none).
    pub input_budget_bytes: Gauge,
    /// Bytes of memory the worker holds for output: send-queue buffers, staged conflated
    /// messages (gauge).
    pub output_buffered_bytes: Gauge,
    /// The output budget the worker charges `output_buffered_bytes` against (gauge; 0 = none).
    pub output_budget_bytes: Gauge,
    /// Times a connection was refused or closed because a budget was spent.
    pub budget_refusals: Counter,
    /// Accepts that failed for lack of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    pub accept_errors: Counter,
    /// Busy time of each loop iteration: from the return of the backend's wait to the end of the
    /// iteration. Its count is the number of iterations.
    pub loop_iteration: Histogram,
    /// io_uring completions reaped.
    pub uring_cqes: Counter,
    /// io_uring_enter calls (submit and wait).
    pub uring_enters: Counter,
    /// Receives re-armed after finding the provided-buffer ring empty (ENOBUFS).
    pub uring_enobufs_rearms: Counter,
    /// Events epoll_wait returned.
    pub epoll_events: Counter,
    /// epoll_wait calls.
    pub epoll_waits: Counter,
}

impl WorkerMetrics {
    /// One zeroed block per worker, to share between the workers and the [`MetricsServer`].
    ///
    /// [`MetricsServer`]: super::MetricsServer
    pub fn for_workers(workers: usize) -> Arc<[WorkerMetrics]> {
        (0..workers).map(|_| WorkerMetrics::default()).collect()
    }

    /// Records which backend this worker runs (once, when its backend is up).
    pub fn set_backend(&self, backend: BackendKind) {
        self.backend.store(backend.to_u8(), Relaxed);
    }

    /// The backend this worker runs.
    pub fn backend(&self) -> BackendKind {
        BackendKind::from_u8(self.backend.load(Relaxed))
    }

    /// Counts one answer to an upgrade request, by its HTTP status (101 when accepted).
    #[inline]
    pub fn upgrade(&self, status: u16) {
        let i =
            UPGRADE_STATUSES.iter().position(|&s| s == status).unwrap_or(UPGRADE_STATUSES.len());
        self.upgrades[i].inc();
    }

    /// Upgrade answers per status, in [`UPGRADE_STATUSES`] order, then "other".
    pub fn upgrades(&self) -> [u64; UPGRADE_STATUSES.len() + 1] {
        std::array::from_fn(|i| self.upgrades[i].get())
    }

    /// Counts one closed WebSocket connection by the close code its handler was told (1006 when
    /// the peer vanished without a close frame).
    #[inline]
    pub fn closed(&self, code: u16) {
        let i = CLOSE_CODES.iter().position(|&c| c == code).unwrap_or(CLOSE_CODES.len());
        self.closes[i].inc();
    }

    /// Closes per code, in [`CLOSE_CODES`] order, then "other".
    pub fn closes(&self) -> [u64; CLOSE_CODES.len() + 1] {
        std::array::from_fn(|i| self.closes[i].get())
    }
}

/// One worker's block, held by value: what a worker's core and its backend keep so they can
/// reach their counters without carrying the whole set and an index around.
#[derive(Clone)]
pub struct WorkerMetricsRef {
    all: Arc<[WorkerMetrics]>,
    index: usize,
}

impl WorkerMetricsRef {
    /// Worker `index`'s block of `all`; `None` when there is no such worker.
    pub fn new(all: Arc<[WorkerMetrics]>, index: usize) -> Option<Self> {
        (index < all.len()).then_some(WorkerMetricsRef { all, index })
    }

    /// The worker index (the `worker` label).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl std::ops::Deref for WorkerMetricsRef {
    type Target = WorkerMetrics;

    #[inline]
    fn deref(&self) -> &WorkerMetrics {
        &self.all[self.index]
    }
}

impl std::fmt::Debug for WorkerMetricsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetricsRef").field("index", &self.index).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<WorkerMetrics>(), 128);
        assert_eq!(std::mem::size_of::<WorkerMetrics>() % 128, 0);
        let set = WorkerMetrics::for_workers(3);
        for pair in set.windows(2) {
            let a = &pair[0] as *const WorkerMetrics as usize;
            let b = &pair[1] as *const WorkerMetrics as usize;
            assert_eq!(a % 128, 0);
            assert!(b - a >= std::mem::size_of::<WorkerMetrics>());
        }
    }

    #[test]
    fn counters_and_gauges() {
        let c = Counter::new();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        c.set_total(100);
        assert_eq!(c.get(), 100);
        let g = Gauge::new();
        g.add(10);
        g.sub(3);
        assert_eq!(g.get(), 7);
        g.sub(100);
        assert_eq!(g.get(), 0, "a gauge stops at zero");
        g.set(5);
        assert_eq!(g.get(), 5);
    }

    #[test]
    fn statuses_and_codes_land_in_their_slot_or_other() {
        let m = WorkerMetrics::default();
        m.upgrade(101);
        m.upgrade(101);
        m.upgrade(431);
        m.upgrade(500);
        m.upgrade(200);
        let u = m.upgrades();
        assert_eq!(u[0], 2);
        assert_eq!(u[7], 1);
        assert_eq!(u[8], 2, "500 and 200 are other");
        m.closed(1000);
        m.closed(1013);
        m.closed(4000);
        m.closed(1005);
        let c = m.closes();
        assert_eq!(c[0], 1);
        assert_eq!(c[9], 1);
        assert_eq!(c[10], 2, "4000 and 1005 are other");
    }

    #[test]
    fn histogram_bounds_are_inclusive() {
        let h = Histogram::default();
        h.observe_ns(0);
        h.observe_ns(10_000); // exactly the first bound: le="1e-05" includes it
        h.observe_ns(10_001);
        h.observe(Duration::from_secs(1));
        h.observe(Duration::from_secs(2));
        h.observe(Duration::from_secs(u64::MAX));
        let b = h.buckets();
        assert_eq!(b[0], 2);
        assert_eq!(b[1], 1);
        assert_eq!(b[15], 1);
        assert_eq!(b[16], 2, "past 1 s is +Inf");
        assert_eq!(h.count(), 6);
    }

    #[test]
    fn a_ref_reaches_its_own_block() {
        let all = WorkerMetrics::for_workers(2);
        let one = WorkerMetricsRef::new(Arc::clone(&all), 1).unwrap();
        one.connections_accepted.inc();
        assert_eq!(all[1].connections_accepted.get(), 1);
        assert_eq!(all[0].connections_accepted.get(), 0);
        assert_eq!(one.index(), 1);
        assert!(WorkerMetricsRef::new(all, 2).is_none());
    }

    #[test]
    fn backend_round_trips() {
        let m = WorkerMetrics::default();
        assert_eq!(m.backend(), BackendKind::Unknown);
        m.set_backend(BackendKind::Epoll);
        assert_eq!(m.backend(), BackendKind::Epoll);
        m.set_backend(BackendKind::IoUring);
        assert_eq!(m.backend().as_str(), "io_uring");
    }
}
