//! Output under pressure: the output budget's sweep (which connections give up what they hold
//! when the worker holds more than its share), the inbox taken a bounded amount per
//! iteration, publishers paused while their publishes wait, and memory given back to the
//! system after a spike.
//!
//! The sweep runs only when the worker is over budget (checked after each command and at each
//! flush, a comparison), at most every [`RESWEEP_MS`] while it cannot get under: it recounts
//! every connection's charge exactly (O(connections)), sorts those whose sends wait on the
//! peer (or that are closing) by what they hold, and
//! applies the slow-consumer policy to the largest holders until the worker is a quarter under
//! its share: `close` closes with 1008 and drops what is pending (not what the kernel may
//! hold), `drop` drops what is pending and counts the messages, `conflate` keeps what is
//! pending (further publishes are staged, bounded by keys). Connections already closing are
//! closed hard. If that is not enough, the largest holders left are closed whatever their
//! policy: the budget is a bound. Until the worker is under its target again, no stalled
//! connection may queue more than the largest queue the sweep left alone (the budget's cap).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::fanout::DEFER_THROTTLE;
use super::Core;
use crate::api::Handler;
use crate::config::SlowConsumer;
use crate::runtime::backend::Backend;
use crate::runtime::budget::CAP_FLOOR;
use crate::runtime::conn::flag;
use crate::runtime::Command;

/// While a sweep that acted could not get the worker under its target (what it freed is still
/// in flight, or closes have not completed), the next one waits this long.
const RESWEEP_MS: u64 = 10;
/// Memory is given back to the system (malloc_trim) after a spike: the worker held at least
/// this much output, or closed at least [`TRIM_CONNS`] connections since the last time...
const TRIM_AFTER: usize = 32 << 20;
const TRIM_CONNS: usize = 10_000;
/// ...once the whole server has held less than this for [`QUIET_MS`]: malloc_trim locks every
/// thread's arena while it walks the heap (hundreds of milliseconds after a spike of hundreds
/// of MiB), so it must not run while the spike goes on; measured in the soak, trimming every
/// second during an attack took the echo p99 from 100 to 500 ms...
const QUIET_BYTES: u64 = 8 << 20;
const QUIET_MS: u64 = 3_000;
/// ...and at most once per this, process-wide.
const TRIM_EVERY: Duration = Duration::from_secs(10);

impl<H: Handler> Core<H> {
    /// Applies commands from other threads, at most one iteration's fan-out work of them (the
    /// rest wait in the channel for the next iteration, which then polls without waiting), and
    /// enforces the output budget between them.
    pub(super) fn take_commands(&mut self, inbox: &Receiver<Command>) {
        self.inbox_left = false;
        loop {
            if !self.deferred.is_empty() || self.turn_full() {
                self.inbox_left = !inbox.is_empty();
                return;
            }
            let Ok(command) = inbox.try_recv() else { return };
            self.turn_work += 1;
            self.apply(command);
            if self.local.budget.over() && !self.swept {
                // Once per iteration here (the flush sweeps again with fresh stall marks).
                self.swept = true;
                self.enforce_budget();
            }
        }
    }

    /// Pauses reading from connections whose publishes wait in `deferred` (or whose
    /// deliveries wait for their flush), and resumes them once those are delivered.
    pub(super) fn pause_throttled<B: Backend>(&mut self, backend: &mut B) {
        if self.throttled.is_empty() {
            return;
        }
        let resume = self.deferred.len() <= DEFER_THROTTLE / 2
            && !self.remote_backlogged()
            && self.bulk.is_empty();
        for &id in &self.throttled {
            let Some(conn) = self.conns.get(id) else { continue };
            if !resume {
                backend.set_reading(id, false);
            } else if !conn.io.has(flag::OVER_HIGH_WATER) {
                backend.set_reading(id, true);
            }
        }
        if resume {
            self.throttled.clear();
        }
    }

    /// Marks the watched connections whose send is still in flight as stalled, and recounts
    /// their charge.
    pub(super) fn look_at_watched(&mut self) {
        let mut watch = std::mem::take(&mut self.watch);
        for id in watch.drain(..) {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            // Dirty ones too: bulk output may wait iterations for its flush, and a send in
            // flight since the last one is stalled whether or not more was queued behind it.
            if conn.io.queue.in_flight().is_none() {
                continue;
            }
            conn.io.queue.set_stalled(true);
            self.local.budget.settle(&mut conn.io.queue, &mut self.local.pool);
        }
        self.watch = watch;
    }

    /// Over budget: recounts, then makes the largest holders give up what they hold (see the
    /// module's doc).
    pub(super) fn enforce_budget(&mut self) {
        let now = self.local.now_ms;
        if now < self.local.budget.next_sweep_ms {
            return;
        }
        let mut holders = std::mem::take(&mut self.holders);
        holders.clear();
        let mut held = 0;
        for (id, conn) in self.conns.iter_mut() {
            let charge = self.local.budget.charge(&conn.io.queue);
            conn.io.queue.set_charged(charge);
            held += charge;
            // Only what waits on the peer is a slow consumer's: a queue that keeps up leaves
            // with this iteration's flush.
            if charge > 0 && (conn.io.queue.is_stalled() || !conn.can_send()) {
                holders.push((charge, id));
            }
        }
        let budget = &mut self.local.budget;
        budget.held = held;
        budget.pushed = 0;
        if held <= budget.limit {
            self.holders = holders;
            return;
        }
        let target = budget.target();
        holders.sort_unstable_by_key(|&(charge, _)| std::cmp::Reverse(charge));
        let mut left = held;
        let mut relieved = 0;
        while left > target && relieved < holders.len() {
            left = left.saturating_sub(self.relieve(holders[relieved].1, false));
            relieved += 1;
        }
        let mut forced = 0;
        while left > target && forced < holders.len() {
            left = left.saturating_sub(self.relieve(holders[forced].1, true));
            forced += 1;
        }
        let acted = relieved.max(forced);
        // Until under target again, nobody grows past the largest queue left alone.
        let spared = holders.get(acted).and_then(|&(_, id)| self.conns.get(id));
        let budget = &mut self.local.budget;
        budget.cap = spared.map_or(0, |c| c.io.queue.len()).max(CAP_FLOOR);
        // Acted and still over: what was freed waits for closes and sends to complete.
        budget.next_sweep_ms = if acted > 0 && left > target { now + RESWEEP_MS } else { now };
        crate::log_rate_limited(
            "output budget",
            &std::io::Error::other(format!(
                "worker {} held {held} bytes of output, over its {} byte share of \
                 max_buffered_output; the {acted} largest holders gave up what they could \
                 (the {forced} largest closed whatever their policy)",
                self.local.worker, budget.limit
            )),
        );
        self.holders = holders;
    }

    /// Applies the budget to connection `id`: its slow-consumer policy, or with `force` a
    /// close whatever the policy. Returns the bytes this frees, now or when the connection is
    /// released.
    fn relieve(&mut self, id: usize, force: bool) -> usize {
        let Some(conn) = self.conns.get_mut(id) else { return 0 };
        let before = conn.io.queue.charged();
        if !conn.can_send() {
            // Closing (or not open): what it holds goes when the socket does, soon; counted as
            // gone now, so that the next sweep does not count it twice.
            conn.io.queue.set_charged(0);
            self.local.budget.held = self.local.budget.held.saturating_sub(before);
            self.drop_conn(id, "over the output budget");
            return before;
        }
        let policy =
            self.local.topics.lenient_policy(id).unwrap_or(self.local.settings.slow_consumer);
        match policy {
            SlowConsumer::Drop if !force => {
                let frames = conn.io.queue.drop_pending();
                self.local.counts.dropped += frames as u64;
                self.local.mark_dirty(id, &mut conn.io);
            }
            SlowConsumer::Conflate if !force => return 0,
            _ => self.close_slow_consumer(id),
        }
        let Some(conn) = self.conns.get_mut(id) else { return before };
        let after = self.local.budget.charge(&conn.io.queue);
        conn.io.queue.set_charged(after);
        let budget = &mut self.local.budget;
        budget.held = (budget.held + after).saturating_sub(before);
        before.saturating_sub(after)
    }

    /// Every sweep (250 ms): shrinks the queue pool to what the load uses, and after a spike
    /// (much output held, or many connections closed) once the server has been quiet for a
    /// while, asks the allocator to give freed memory back to the system.
    pub(super) fn give_back_memory(&mut self) {
        self.local.pool.trim();
        let conns = self.conns.len();
        let now = self.local.now_ms;
        let server_holds = self.local.shared.stats().buffered_output;
        let budget = &mut self.local.budget;
        budget.peak_conns = budget.peak_conns.max(conns);
        let spike = budget.peak >= TRIM_AFTER || budget.peak_conns >= conns + TRIM_CONNS;
        if !spike || server_holds >= QUIET_BYTES {
            budget.quiet_since_ms = None;
            return;
        }
        let since = *budget.quiet_since_ms.get_or_insert(now);
        if now < since + QUIET_MS || !trim_due() {
            return;
        }
        budget.peak = budget.held + budget.pushed;
        budget.peak_conns = conns;
        budget.quiet_since_ms = None;
        if budget.trim {
            trim_heap();
        }
    }
}

/// Whether the process may trim now (at most once per [`TRIM_EVERY`], whichever worker asks);
/// `true` claims the turn.
fn trim_due() -> bool {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < TRIM_EVERY) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// Returns the allocator's free memory to the system: glibc keeps freed memory in each
/// thread's arena (and raises its mmap threshold after large frees, so later large buffers come
/// from the arenas too), which leaves a process that served a spike hundreds of MiB above
/// what it uses.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) takes no pointers and may be called from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
