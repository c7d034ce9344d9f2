//! The scenarios, one thread's side each, and the phases they share: ramping connections up at
//! a bounded rate and concurrency, waiting at the barrier, and closing everything cleanly.

pub mod connect;
pub mod echo;
pub mod fanout;
pub mod hold;

use std::ops::Range;

use crate::cli::Scenario;
use crate::driver::{Behavior, Driver};
use crate::part::{Setup, ThreadCtx, Times};
use crate::stats::{Kind, Tally};
use crate::sys::now_ns;

/// How long one poll waits at most when nothing is scheduled: bounds how late a phase change
/// is noticed.
pub const IDLE_POLL_NS: u64 = 10_000_000;

/// Closes started per loop turn at the end (the rest of the turn reads the answers).
const CLOSE_BATCH: usize = 2_000;

/// Runs one thread of the part.
pub fn run_thread(ctx: ThreadCtx) -> Result<Tally, String> {
    let result = match ctx.scenario.clone() {
        Scenario::Echo(a) => echo::run_echo(&a, ctx),
        Scenario::Rate(a) => echo::run_rate(&a, ctx),
        Scenario::Connect(a) => connect::run(&a, ctx),
        Scenario::Hold(a) => hold::run(&a, ctx),
        Scenario::Fanout(a) => fanout::run(&a, ctx),
    };
    result.map(|mut t| {
        t.threads = 1;
        t
    })
}

/// Opens a thread's connections: at most `rate` per second (0: unbounded) and at most
/// `max_pending` in setup at once. Slot `k` gets global index `range.start + k`.
#[derive(Debug)]
pub struct Ramp {
    range: Range<u64>,
    next: u64,
    rate: f64,
    max_pending: usize,
    start_ns: u64,
    pub end_ns: u64,
}

impl Ramp {
    pub fn new(ctx: &ThreadCtx) -> Ramp {
        Ramp {
            range: ctx.range.clone(),
            next: 0,
            rate: ctx.ramp_rate,
            max_pending: ctx.max_pending,
            start_ns: 0,
            end_ns: 0,
        }
    }

    /// Starts the connections due; returns when the next one is due (if waiting on the rate).
    pub fn tick(&mut self, d: &mut Driver, now: u64) -> Option<u64> {
        if self.start_ns == 0 {
            self.start_ns = now;
        }
        let n = self.range.end - self.range.start;
        while self.next < n && d.in_setup < self.max_pending {
            if self.rate > 0.0 {
                let due = self.start_ns + (self.next as f64 * 1e9 / self.rate) as u64;
                if due > now {
                    return Some(due);
                }
            }
            d.connect(self.next as usize, self.range.start + self.next, now);
            self.next += 1;
        }
        None
    }

    /// Connections not started yet.
    pub fn remaining(&self) -> u64 {
        self.range.end - self.range.start - self.next
    }

    pub fn done(&self, d: &Driver) -> bool {
        self.next == self.range.end - self.range.start && d.in_setup == 0
    }
}

/// The setup phase: ramp up (and whatever `extra_ready` waits for, e.g. subscriptions), then
/// report ready. Connections that fail are counted, not retried. Past the setup deadline the
/// connections not open yet are counted as timeouts and the run goes on with the rest (a
/// behavior still waiting on its own, such as subscriptions, checks `extra_ready` itself).
pub fn setup<B: Behavior>(
    d: &mut Driver,
    b: &mut B,
    ctx: &mut ThreadCtx,
    messages: impl Fn(&B) -> u64,
    extra_ready: impl Fn(&B, &Driver) -> bool,
) -> Result<Setup, String> {
    let mut ramp = Ramp::new(ctx);
    loop {
        let now = now_ns();
        let next = ramp.tick(d, now);
        if ramp.done(d) {
            if ramp.end_ns == 0 {
                ramp.end_ns = now;
            }
            if extra_ready(b, d) {
                break;
            }
        }
        if ctx.ctl.aborted() {
            return Err("aborted".into());
        }
        if now > ctx.setup_deadline {
            // Go on with what opened; what did not is counted, so the report says how many.
            let never = ramp.remaining();
            if never > 0 {
                d.errors.count_n(Kind::Timeout, never, || {
                    format!("setup ran out of time before {never} connections were started")
                });
            }
            d.fail_in_setup("connect+upgrade still unfinished when setup ran out of time");
            d.end_doomed(b);
            ramp.end_ns = now;
            break;
        }
        ctx.ctl.publish(now, d.open, messages(b), d.errors.total());
        let wait = next.map_or(IDLE_POLL_NS, |t| t.saturating_sub(now)).min(IDLE_POLL_NS);
        d.poll(b, wait).map_err(|e| format!("epoll: {e}"))?;
    }
    let setup = Setup {
        opened: d.opened_total,
        failed: d.failed_total,
        ramp_start_ns: ramp.start_ns,
        ramp_end_ns: ramp.end_ns,
    };
    ctx.ctl.ready(setup);
    Ok(setup)
}

/// Waits at the barrier (serving the connections meanwhile) and then until `start`.
pub fn wait_go<B: Behavior>(
    d: &mut Driver,
    b: &mut B,
    ctx: &mut ThreadCtx,
    messages: impl Fn(&B) -> u64,
) -> Result<Times, String> {
    let times = loop {
        if let Some(t) = ctx.ctl.go() {
            break t;
        }
        if ctx.ctl.aborted() {
            return Err("aborted".into());
        }
        let now = now_ns();
        ctx.ctl.publish(now, d.open, messages(b), d.errors.total());
        d.poll(b, IDLE_POLL_NS).map_err(|e| format!("epoll: {e}"))?;
    };
    poll_until(d, b, ctx, times.start, &messages)?;
    Ok(times)
}

/// Serves the connections until `until`.
pub fn poll_until<B: Behavior>(
    d: &mut Driver,
    b: &mut B,
    ctx: &mut ThreadCtx,
    until: u64,
    messages: &impl Fn(&B) -> u64,
) -> Result<(), String> {
    loop {
        let now = now_ns();
        if now >= until {
            return Ok(());
        }
        ctx.ctl.publish(now, d.open, messages(b), d.errors.total());
        d.poll(b, (until - now).min(IDLE_POLL_NS)).map_err(|e| format!("epoll: {e}"))?;
    }
}

/// Closes every connection cleanly (close 1000, the server's close, its FIN), at most
/// `max_pending` at once (so a slow server shows as a longer close phase, not as close
/// timeouts of connections that were only queued), each bounded by the close timeout; returns
/// (start, end) ns.
pub fn close_all<B: Behavior>(
    d: &mut Driver,
    b: &mut B,
    ctx: &mut ThreadCtx,
    messages: impl Fn(&B) -> u64,
) -> Result<(u64, u64), String> {
    let start = now_ns();
    let slots = d.conns.len();
    let mut next = 0;
    // Each connection has its own close deadline; this one only backstops the loop, allowing
    // for the closes to go `max_pending` at a time at 1 ms or worse each.
    let backstop = 2 * ctx.cfg.close_timeout_ns + 5_000_000_000;
    let deadline = start + backstop + (slots / ctx.max_pending.max(1)) as u64 * 1_000_000;
    loop {
        let now = now_ns();
        let batch_end = (next + CLOSE_BATCH).min(slots);
        while next < batch_end && d.closing < ctx.max_pending {
            d.begin_close(next, now);
            next += 1;
        }
        if next == slots && d.live == 0 {
            break;
        }
        if now > deadline {
            d.abandon_all(b, "the close phase ran out of time");
            break;
        }
        ctx.ctl.publish(now, d.open, messages(b), d.errors.total());
        d.poll(b, if next < slots { 0 } else { IDLE_POLL_NS })
            .map_err(|e| format!("epoll: {e}"))?;
    }
    Ok((start, now_ns()))
}

/// Moves what the driver counted into the tally.
pub fn finish(d: &Driver, setup: Setup, close: (u64, u64), t: &mut Tally) {
    t.opened = setup.opened;
    t.failed = setup.failed;
    t.ramp_start_ns = setup.ramp_start_ns;
    t.ramp_end_ns = setup.ramp_end_ns;
    t.close_clean += d.closed_clean;
    t.close_unclean += d.closed_unclean;
    t.close_start_ns = close.0;
    t.close_end_ns = close.1;
    t.errors.merge(&d.errors);
}

/// Whether `now` is in the measured window.
#[inline]
pub fn in_window(t: &Times, now: u64) -> bool {
    now >= t.t0 && now < t.t1
}
