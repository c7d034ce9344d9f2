//! The worker's output budget: how many bytes of queued output (send queues, conflation
//! stages, and the kernel's send buffers of connections that stopped reading) this worker may
//! hold, and what it holds now.
//!
//! Every connection's send limit bounds that connection; the budget bounds all of them
//! together, so that N connections x the send limit cannot take the process (and the kernel's
//! TCP memory) past what the machine has. The worker's share is
//! `Settings::max_buffered_output` / workers.
//!
//! Counting is cheap: pushes add to [`Budget::pushed`] as they happen (one addition), and the
//! flush settles each dirty connection's charge once per loop iteration ([`Budget::settle`]:
//! the difference between what its queue holds now and what was counted for it). A
//! connection's charge is the heap its queue holds ([`SendQueue::footprint`], shared frames
//! counted in full) plus, while a send has waited across a loop iteration (the peer's
//! socket buffer is full), the socket's send buffer: the kernel memory a non-reader holds.
//!
//! What it does not do: choose victims (the worker's `output` sweep does, when
//! [`Budget::over`]), or count memory other than queued output (connection state, receive
//! buffers).

use super::queue::{Pool, SendQueue};

/// Never cap a connection's queue below this while over budget: small replies (an echo, a
/// handshake answer, a pong) still go out to connections that hold little.
pub(crate) const CAP_FLOOR: usize = 16 << 10;

/// One worker's output budget.
#[derive(Debug)]
pub(crate) struct Budget {
    /// This worker's share of `Settings::max_buffered_output`.
    pub limit: usize,
    /// Bytes counted at the last settle or sweep.
    pub held: usize,
    /// Bytes queued since then (settled at the next flush).
    pub pushed: usize,
    /// While over budget: the most a stalled connection may queue before its slow-consumer
    /// policy applies (the largest queue the last sweep left alone); `usize::MAX` otherwise.
    pub cap: usize,
    /// What a stalled connection's socket send buffer counts (the effective SO_SNDBUF).
    pub socket: usize,
    /// No sweep before this (worker clock, ms): a sweep that could not get under budget is
    /// not repeated every iteration.
    pub next_sweep_ms: u64,
    /// The most held since memory was last given back to the system, and since when (ms) the
    /// server has been quiet enough to give it back.
    pub peak: usize,
    pub quiet_since_ms: Option<u64>,
    /// The most connections since then.
    pub peak_conns: usize,
    /// Whether to give memory back with malloc_trim after a spike (`RINGSIDE_NO_MALLOC_TRIM=1`
    /// turns it off, to measure what it does).
    pub trim: bool,
}

impl Budget {
    pub fn new(limit: usize, socket: usize) -> Self {
        Budget {
            limit,
            held: 0,
            pushed: 0,
            cap: usize::MAX,
            socket,
            next_sweep_ms: 0,
            peak: 0,
            quiet_since_ms: None,
            peak_conns: 0,
            trim: std::env::var_os("RINGSIDE_NO_MALLOC_TRIM").is_none_or(|v| v != "1"),
        }
    }

    /// Whether the worker holds more than its share.
    pub fn over(&self) -> bool {
        self.held + self.pushed > self.limit
    }

    /// Where a sweep aims: a quarter under the limit, so that one is not needed again at once.
    pub fn target(&self) -> usize {
        self.limit / 4 * 3
    }

    /// The limit under which `queue` may take more: `limit`, lowered to the cap while the
    /// worker is over budget if the queue's sends wait on a full socket buffer. A connection
    /// that keeps up is never capped: what it holds leaves with this iteration's flush.
    pub fn limit_for(&self, queue: &SendQueue, limit: usize) -> usize {
        if queue.is_stalled() {
            limit.min(self.cap)
        } else {
            limit
        }
    }

    /// What `queue` counts against the budget now.
    pub fn charge(&self, queue: &SendQueue) -> usize {
        let socket = if queue.is_stalled() { self.socket } else { 0 };
        queue.footprint() + socket
    }

    /// Gives an idle queue back to the pool and recounts `queue`'s charge.
    pub fn settle(&mut self, queue: &mut SendQueue, pool: &mut Pool) {
        let old = queue.charged();
        queue.recycle(pool);
        let new = self.charge(queue);
        queue.set_charged(new);
        self.held = (self.held + new).saturating_sub(old);
    }

    /// Forgets `queue`'s charge (its connection is gone; the caller discards the queue).
    pub fn release(&mut self, queue: &mut SendQueue) {
        let old = queue.set_charged(0);
        self.held = self.held.saturating_sub(old);
    }

    /// Called once per flush, after every dirty connection was settled.
    pub fn settled(&mut self) {
        self.pushed = 0;
        self.peak = self.peak.max(self.held);
        if self.cap != usize::MAX && self.held <= self.target() {
            self.cap = usize::MAX;
        }
    }
}

/// What a stalled connection's send buffer counts: the socket's SO_SNDBUF as the kernel sets
/// it for `requested` (it doubles the value for its bookkeeping), or, when `requested` is 0
/// (the kernel's default, autotuned), the most autotuning grows it to (`net.ipv4.tcp_wmem`'s
/// third value).
pub(crate) fn socket_charge(requested: usize) -> usize {
    if requested == 0 {
        return std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
            .ok()
            .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
            .unwrap_or(4 << 20);
    }
    let probe = || -> std::io::Result<usize> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_send_buffer_size(requested)?;
        socket.send_buffer_size()
    };
    probe().unwrap_or(requested.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn settling_counts_footprint_and_the_socket_of_a_stalled_send() {
        let mut pool = Pool::default();
        let mut budget = Budget::new(1 << 20, 1000);
        let mut q = SendQueue::default();
        q.push_shared(&mut pool, Bytes::from(vec![0u8; 5000]));
        budget.pushed += 5000;
        let loan = q.begin().unwrap();
        budget.settle(&mut q, &mut pool);
        budget.settled();
        let footprint = q.footprint();
        assert!(footprint >= 5000);
        assert_eq!(budget.held, footprint);
        q.set_stalled(true);
        budget.settle(&mut q, &mut pool);
        assert_eq!(budget.held, footprint + 1000);
        assert!(q.complete(loan, 5000));
        q.set_stalled(false);
        budget.settle(&mut q, &mut pool);
        assert_eq!(budget.held, 0, "an idle queue goes back to the pool and counts nothing");
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn the_socket_charge_is_what_the_kernel_sets() {
        let charge = socket_charge(64 << 10);
        // Linux doubles the request (up to net.core.wmem_max).
        assert!(((64 << 10)..=(128 << 10)).contains(&charge), "{charge}");
        assert!(socket_charge(0) >= 64 << 10);
    }
}
