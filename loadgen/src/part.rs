//! One process's share of a run (a "part"): its threads, and the phase barrier with the parent.
//!
//! The parent sends [`ToPart`] commands and hears [`FromPart`] reports: in the same process
//! over channels, with a child process as one JSON object per line on its stdin and stdout. The
//! sequence is always: the part sets up (connects, subscribes) and reports `Ready`; the parent
//! takes its readings and sends `Go` with the phase times as absolute CLOCK_MONOTONIC
//! nanoseconds (one clock for every process on the host); the part runs to the end and reports
//! `Done` with its tally, histogram included. Every wait here is bounded.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::Scenario;
use crate::driver::Config;
use crate::plan::{self, Ports};
use crate::stats::Tally;
use crate::sys::{self, now_ns, secs_ns};
use crate::target::Target;

/// What one process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartSpec {
    pub scenario: Scenario,
    pub target: Target,
    pub index: usize,
    /// Global connection indexes of this part.
    pub range: Range<u64>,
    /// Connections over all parts.
    pub total: u64,
    pub threads: usize,
    /// CPU for each of this part's threads (empty: unpinned).
    pub cpus: Vec<usize>,
    pub source_addrs: Vec<Ipv4Addr>,
    pub ports: Option<Ports>,
    /// Connections per second for this part while setting up (0: unbounded).
    pub ramp_rate: f64,
    /// Handshakes in progress at once in this part.
    pub max_pending: usize,
    /// The parent's pid: a child dies with it.
    pub parent_pid: u32,
}

/// Phase times, CLOCK_MONOTONIC ns. What happens between them is the scenario's: traffic (or
/// holding) from `start`, the measured window `[t0, t1)`, reading until `stop`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Times {
    pub start: u64,
    pub t0: u64,
    pub t1: u64,
    pub stop: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToPart {
    Go(Times),
    Abort,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromPart {
    Ready(Setup),
    Progress(Progress),
    Done(Box<Tally>),
    Failed(String),
    /// The part's process or thread is gone (the parent's own note, never sent by a part).
    Exited,
}

/// Setup results.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Setup {
    pub opened: u64,
    pub failed: u64,
    pub ramp_start_ns: u64,
    pub ramp_end_ns: u64,
}

/// Live counters for the progress line.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub open: u64,
    /// Replies or deliveries received so far (all phases).
    pub messages: u64,
    pub errors: u64,
}

/// What a part's threads and its main thread share.
#[derive(Debug)]
pub struct Shared {
    ready: AtomicUsize,
    go: AtomicBool,
    abort: AtomicBool,
    times: [AtomicU64; 4],
    live: Vec<Live>,
}

#[derive(Debug, Default)]
struct Live {
    open: AtomicU64,
    messages: AtomicU64,
    errors: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    ramp_start: AtomicU64,
    ramp_end: AtomicU64,
}

/// A thread's handle on [`Shared`].
#[derive(Debug)]
pub struct Ctl {
    shared: Arc<Shared>,
    me: usize,
    next_publish: u64,
}

/// Live counters are stored this often (plain stores, so the hot path does no atomic RMW).
const PUBLISH_NS: u64 = 100_000_000;

impl Ctl {
    /// Stores this thread's live counters if the last store is older than 100 ms.
    #[inline]
    pub fn publish(&mut self, now: u64, open: usize, messages: u64, errors: u64) {
        if now < self.next_publish {
            return;
        }
        self.next_publish = now + PUBLISH_NS;
        let l = &self.shared.live[self.me];
        l.open.store(open as u64, Ordering::Relaxed);
        l.messages.store(messages, Ordering::Relaxed);
        l.errors.store(errors, Ordering::Relaxed);
    }

    /// Reports this thread's setup done.
    pub fn ready(&self, s: Setup) {
        let l = &self.shared.live[self.me];
        l.opened.store(s.opened, Ordering::Relaxed);
        l.failed.store(s.failed, Ordering::Relaxed);
        l.ramp_start.store(s.ramp_start_ns, Ordering::Relaxed);
        l.ramp_end.store(s.ramp_end_ns, Ordering::Relaxed);
        self.shared.ready.fetch_add(1, Ordering::Release);
    }

    /// The phase times once the parent said go.
    pub fn go(&self) -> Option<Times> {
        if !self.shared.go.load(Ordering::Acquire) {
            return None;
        }
        let t = |i: usize| self.shared.times[i].load(Ordering::Relaxed);
        Some(Times { start: t(0), t0: t(1), t1: t(2), stop: t(3) })
    }

    pub fn aborted(&self) -> bool {
        self.shared.abort.load(Ordering::Relaxed)
    }
}

/// A thread's share of the part.
#[derive(Debug)]
pub struct ThreadCtx {
    pub scenario: Scenario,
    pub cfg: Config,
    /// Global connection indexes of this thread.
    pub range: Range<u64>,
    pub total: u64,
    pub ramp_rate: f64,
    pub max_pending: usize,
    pub seed: u64,
    /// Setup must be done by then (CLOCK_MONOTONIC ns).
    pub setup_deadline: u64,
    pub ctl: Ctl,
}

/// How long setup of `n` connections may take: the ramp at `rate` per second, twice over, plus
/// the connect timeout twice and a margin for subscriptions.
pub fn setup_bound_ns(n: u64, rate: f64, connect_timeout: f64) -> u64 {
    let n = n as f64;
    let ramp = if rate > 0.0 { 2.0 * n / rate } else { n / 2_000.0 };
    secs_ns(ramp + 2.0 * connect_timeout + 30.0)
}

/// Runs one part: its threads, the barrier, the result. Reports go to `emit`; commands come on
/// `commands`. Returns when `Done` or `Failed` was emitted.
pub fn run(spec: PartSpec, commands: Receiver<ToPart>, emit: impl Fn(FromPart)) {
    match run_inner(&spec, &commands, &emit) {
        Ok(tally) => emit(FromPart::Done(Box::new(tally))),
        Err(e) => emit(FromPart::Failed(format!("part {}: {e}", spec.index))),
    }
}

fn run_inner(
    spec: &PartSpec,
    commands: &Receiver<ToPart>,
    emit: &impl Fn(FromPart),
) -> Result<Tally, String> {
    let threads = spec.threads.max(1);
    let shared = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        times: Default::default(),
        live: (0..threads).map(|_| Live::default()).collect(),
    });
    let common = spec.scenario.common();
    let cfg = Config {
        target: spec.target.clone(),
        raw: common.raw_echo,
        deflate: common.deflate,
        connect_timeout_ns: secs_ns(common.connect_timeout),
        close_timeout_ns: secs_ns(common.close_timeout),
        spin_ns: common.spin_us.saturating_mul(1000),
        source_addrs: spec.source_addrs.clone(),
        ports: spec.ports,
    };
    let setup_deadline = now_ns()
        + setup_bound_ns(spec.range.end - spec.range.start, spec.ramp_rate, common.connect_timeout);
    let ranges = plan::split(spec.range.clone(), threads);
    let part_len = (spec.range.end - spec.range.start).max(1) as f64;
    let (done_tx, done_rx) = mpsc::channel::<Result<Tally, String>>();
    let mut handles = Vec::new();
    for (t, range) in ranges.into_iter().enumerate() {
        let share = (range.end - range.start) as f64 / part_len;
        let ctx = ThreadCtx {
            scenario: spec.scenario.clone(),
            cfg: cfg.clone(),
            range,
            total: spec.total,
            ramp_rate: spec.ramp_rate * share,
            max_pending: (spec.max_pending / threads).max(1),
            seed: now_ns() ^ ((spec.index as u64) << 40) ^ ((t as u64) << 20) ^ 0x5bd1_e995,
            setup_deadline,
            ctl: Ctl { shared: shared.clone(), me: t, next_publish: 0 },
        };
        let cpu = spec.cpus.get(t).copied();
        let done = done_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("load-{}-{t}", spec.index))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if !sys::pin_to(cpu) {
                        let _ = done.send(Err(format!("cannot pin a thread to CPU {cpu}")));
                        return;
                    }
                }
                sys::tight_timers();
                let _ = done.send(crate::scenario::run_thread(ctx));
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(handle);
    }
    drop(done_tx);
    let abort = |why: String| {
        shared.abort.store(true, Ordering::Relaxed);
        why
    };
    let progress = || {
        let mut p = Progress::default();
        for l in &shared.live {
            p.open += l.open.load(Ordering::Relaxed);
            p.messages += l.messages.load(Ordering::Relaxed);
            p.errors += l.errors.load(Ordering::Relaxed);
        }
        p
    };
    let mut results = Vec::new();
    // Setup: until every thread is ready.
    let mut next_progress = now_ns();
    while shared.ready.load(Ordering::Acquire) < threads {
        match done_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(t)) => results.push(t),
            Ok(Err(e)) => return Err(abort(e)),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(abort("a load thread ended during setup".into()))
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Ok(ToPart::Abort) = commands.try_recv() {
            return Err(abort("aborted by the parent".into()));
        }
        let now = now_ns();
        if now > setup_deadline + secs_ns(5.0) {
            return Err(abort("setup did not finish in time".into()));
        }
        if now >= next_progress {
            emit(FromPart::Progress(progress()));
            next_progress = now + 1_000_000_000;
        }
    }
    let mut setup = Setup::default();
    for l in &shared.live {
        let start = l.ramp_start.load(Ordering::Relaxed);
        setup.opened += l.opened.load(Ordering::Relaxed);
        setup.failed += l.failed.load(Ordering::Relaxed);
        if start != 0 && (setup.ramp_start_ns == 0 || start < setup.ramp_start_ns) {
            setup.ramp_start_ns = start;
        }
        setup.ramp_end_ns = setup.ramp_end_ns.max(l.ramp_end.load(Ordering::Relaxed));
    }
    emit(FromPart::Ready(setup));
    // The barrier: wait for go (the parent bounds its own waits; this bound is a backstop).
    let times = match commands.recv_timeout(Duration::from_secs(900)) {
        Ok(ToPart::Go(t)) => t,
        Ok(ToPart::Abort) | Err(_) => return Err(abort("no go from the parent".into())),
    };
    for (i, v) in [times.start, times.t0, times.t1, times.stop].into_iter().enumerate() {
        shared.times[i].store(v, Ordering::Relaxed);
    }
    shared.go.store(true, Ordering::Release);
    // CPU of this whole process over exactly the measured window.
    let mut cpu = [0.0f64; 2];
    for (i, at) in [times.t0, times.t1].into_iter().enumerate() {
        loop {
            let now = now_ns();
            if now >= at {
                break;
            }
            sys::sleep_until(at.min(now + 1_000_000_000));
            emit(FromPart::Progress(progress()));
            if let Ok(ToPart::Abort) = commands.try_recv() {
                return Err(abort("aborted by the parent".into()));
            }
        }
        cpu[i] = sys::self_cpu_s();
    }
    let close = secs_ns(common.close_timeout);
    let closes = (spec.range.end - spec.range.start) / spec.max_pending.max(1) as u64;
    let deadline = times.stop.max(times.t1) + 2 * close + secs_ns(30.0) + closes * 1_000_000;
    while results.len() < threads {
        let left = deadline.saturating_sub(now_ns());
        match done_rx.recv_timeout(Duration::from_nanos(left.min(1_000_000_000))) {
            Ok(Ok(t)) => results.push(t),
            Ok(Err(e)) => return Err(abort(e)),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(abort("a load thread died (panicked?)".into()))
            }
            Err(RecvTimeoutError::Timeout) if left == 0 => {
                return Err(abort("load threads did not finish in time".into()))
            }
            Err(RecvTimeoutError::Timeout) => emit(FromPart::Progress(progress())),
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let mut tally = Tally::default();
    for t in &results {
        tally.merge(t);
    }
    tally.cpu_s = cpu[1] - cpu[0];
    Ok(tally)
}
