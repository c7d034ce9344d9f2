//! `connect`: each connector loops TCP connect, upgrade, close (our close 1000, the server's
//! close frame, its FIN), then starts over. Latency is from the TCP connect start to the parsed
//! 101. A connector whose attempt failed waits 1 ms before the next one, so a refusing server
//! is counted, not hammered in a busy loop.

use std::collections::VecDeque;

use super::{finish, in_window, setup, wait_go, IDLE_POLL_NS};
use crate::cli::ConnectArgs;
use crate::driver::{Behavior, Driver, End};
use crate::part::{Setup, ThreadCtx, Times};
use crate::reader::Frame;
use crate::stats::Tally;
use crate::sys::now_ns;

const RETRY_NS: u64 = 1_000_000;

#[derive(Debug)]
struct Connect {
    times: Times,
    running: bool,
    /// Connections started, for rotating source addresses.
    started: u64,
    base: u64,
    total: u64,
    retry: VecDeque<(usize, u64)>,
    handshakes: u64,
    tally: Tally,
}

impl Connect {
    fn start(&mut self, d: &mut Driver, id: usize, now: u64) {
        // Global index: successive connections of a connector walk the source addresses.
        let g = self.base + id as u64 + self.started * self.total;
        self.started += 1;
        d.connect(id, g, now);
    }
}

impl Behavior for Connect {
    const CAPTURE: bool = false;

    fn on_open(&mut self, d: &mut Driver, id: usize, now: u64) {
        self.handshakes += 1;
        if in_window(&self.times, now) {
            self.tally.handshakes += 1;
            // `messages` of connect are its handshakes, so msgs_per_s and the server's CPU per
            // message read as per handshake.
            self.tally.messages += 1;
            let took = now.saturating_sub(d.conns[id].started_ns).max(1);
            self.tally.latency.saturating_record(took);
        }
        d.begin_close(id, now);
    }

    fn on_message(&mut self, _d: &mut Driver, _id: usize, _f: Frame<'_>, _now: u64) {}

    fn on_end(&mut self, d: &mut Driver, id: usize, end: End, now: u64) {
        if end == End::Clean && in_window(&self.times, now) {
            self.tally.cycles += 1;
        }
        if !self.running || now >= self.times.t1 {
            return;
        }
        if end == End::Failed {
            self.retry.push_back((id, now + RETRY_NS));
        } else {
            self.start(d, id, now);
        }
    }
}

pub fn run(_a: &ConnectArgs, mut ctx: ThreadCtx) -> Result<Tally, String> {
    let n = (ctx.range.end - ctx.range.start) as usize;
    let mut d = Driver::new(ctx.cfg.clone(), n, ctx.seed).map_err(|e| format!("epoll: {e}"))?;
    let never = Times { start: u64::MAX, t0: u64::MAX, t1: u64::MAX, stop: u64::MAX };
    let mut b = Connect {
        times: never,
        running: false,
        started: 0,
        base: ctx.range.start,
        total: ctx.total,
        retry: VecDeque::new(),
        handshakes: 0,
        tally: Tally::default(),
    };
    let handshakes = |b: &Connect| b.handshakes;
    // Nothing to set up: connectors start at go.
    ctx.range = ctx.range.start..ctx.range.start;
    let set: Setup = setup(&mut d, &mut b, &mut ctx, handshakes, |_, _| true)?;
    let times = wait_go(&mut d, &mut b, &mut ctx, handshakes)?;
    b.times = times;
    b.running = true;
    let now = now_ns();
    for id in 0..n {
        b.start(&mut d, id, now);
    }
    loop {
        let now = now_ns();
        if now >= times.t1 {
            break;
        }
        while let Some(&(id, at)) = b.retry.front() {
            if at > now {
                break;
            }
            b.retry.pop_front();
            b.start(&mut d, id, now);
        }
        ctx.ctl.publish(now, d.open, b.handshakes, d.errors.total());
        let next = b.retry.front().map_or(IDLE_POLL_NS, |&(_, at)| at.saturating_sub(now));
        d.poll(&mut b, next.min(IDLE_POLL_NS).min(times.t1 - now))
            .map_err(|e| format!("epoll: {e}"))?;
    }
    b.running = false;
    // Let the cycles in progress finish their close (bounded by the close timeout).
    let close = super::close_all(&mut d, &mut b, &mut ctx, handshakes)?;
    finish(&d, set, close, &mut b.tally);
    Ok(b.tally)
}
