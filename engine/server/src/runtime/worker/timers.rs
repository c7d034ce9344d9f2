//! Application timers (`WebSocket::set_timer`) and the worker's tick (`Handler::on_tick`).
//!
//! Timers sit in one binary heap per worker, ordered by deadline then by arming order. Arming
//! one pushes 32 bytes (no allocation once the heap has grown to its high-water mark); a
//! connection's timers are not removed when it closes: each carries the slot's generation and
//! is skipped when it comes due for a connection that is gone. The loop wakes for the earliest
//! deadline, so a timer fires in the first iteration at or after it: never early, late by at
//! most one iteration's work. At most `FIRE_MAX` fire per iteration, so a burst of timers cannot
//! hold I/O back.
//!
//! The tick runs at a fixed period from the worker's start (`next += period`), so it does not
//! drift with the time each tick takes; ticks missed by more than a period (a long stall) are
//! skipped, not replayed in a burst.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Core;
use crate::api::Handler;
use crate::runtime::handle::Ctx;

/// The most timers fired in one loop iteration.
const FIRE_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: u64,
    seq: u64,
    slot: u32,
    generation: u32,
    token: u64,
}

/// One worker's armed timers.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    seq: u64,
}

impl Timers {
    pub fn push(&mut self, at: u64, slot: u32, generation: u32, token: u64) {
        self.seq += 1;
        self.heap.push(Reverse(Timer { at, seq: self.seq, slot, generation, token }));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|t| t.0.at)
    }

    /// The next timer due at `now`: (slot, generation, token).
    fn pop_due(&mut self, now: u64) -> Option<(usize, u32, u64)> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        let t = self.heap.pop()?.0;
        Some((t.slot as usize, t.generation, t.token))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

impl<H: Handler> Core<H> {
    /// Fires the timers and the tick that are due.
    pub(super) fn fire_timers(&mut self) {
        let now = self.local.now_ms;
        for _ in 0..FIRE_MAX {
            let Some((slot, generation, token)) = self.local.timers.pop_due(now) else { break };
            // A connection that is closing (a close sent or asked for) has no more use for its
            // timers: closing cancels them.
            let live =
                self.conns.get(slot).is_some_and(|c| c.io.generation == generation && c.can_send());
            if live {
                self.callback(slot, |h, ws| h.on_timer(ws, token));
            }
        }
        if let (Some(next), Some(period)) = (self.next_tick, self.local.settings.tick) {
            if now >= next {
                let period = (period.as_millis() as u64).max(1);
                let mut next = next + period;
                if next <= now {
                    next = now + period;
                }
                self.next_tick = Some(next);
                let mut ctx = Ctx { conns: &mut self.conns, local: &mut self.local };
                self.handler.on_tick(&mut ctx);
                self.after_ctx();
            }
        }
    }

    /// Runs a closure sent with [`Sender::defer`](crate::Sender::defer).
    pub(crate) fn run_deferred(&mut self, f: impl FnOnce(&mut H, &mut Ctx<'_, H::Conn>)) {
        let mut ctx = Ctx { conns: &mut self.conns, local: &mut self.local };
        f(&mut self.handler, &mut ctx);
        self.after_ctx();
    }
}
