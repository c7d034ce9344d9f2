//! `hold`: ramp to N connections, hold them idle (optionally each pinging every interval and
//! expecting its pong), then measure echo latency on an evenly spread sample of them while all
//! stay open, then close them all cleanly.
//!
//! The sample runs two phases. Closed loop: each sampled connection keeps one echo in flight,
//! so the sample runs as fast as the server and this client allow, and its latency is the
//! sample size divided by that throughput (it measures throughput as much as latency). Open
//! loop: each sampled connection sends `--open-rate` messages a second on a fixed schedule,
//! whether or not earlier echoes are back, and latency runs from the scheduled send time (a
//! late client or a stalled server shows up in it instead of slowing the schedule down): what
//! a deployment holding N mostly idle connections, a few of them active, sees.
//!
//! The parent reads the server's RSS and the kernel's socket memory around the ramp; this side
//! only holds, pings, samples and closes.

use std::collections::VecDeque;

use ringside_proto::OpCode;

use super::{close_all, finish, in_window, setup, wait_go, IDLE_POLL_NS};
use crate::cli::{Common, HoldArgs};
use crate::driver::{Behavior, Driver, End};
use crate::part::{ThreadCtx, Times};
use crate::reader::Frame;
use crate::stats::{Kind, Tally};
use crate::sys::{now_ns, secs_ns};

/// Seconds of sample traffic before the sample window: the warm-up, at most 1 s.
pub fn sample_warmup_s(c: &Common) -> f64 {
    c.warmup.min(1.0)
}

/// Seconds between the closed-loop window's end and the open-loop window's start: the closed
/// loop's last echoes come back, and the open schedule gets going.
const OPEN_SETTLE_S: f64 = 0.5;

/// The open-loop phase: messages scheduled from `t1` (the closed-loop window's end), measured
/// in `[start, end)`, the same length as the closed-loop window.
pub fn open_window(a: &HoldArgs, t1: u64) -> (u64, u64) {
    let start = t1 + secs_ns(OPEN_SETTLE_S);
    (start, start + secs_ns(a.sample_secs))
}

/// Whether connection `g` of `total` is one of the `sample` spread evenly over them.
pub fn is_sampled(g: u64, total: u64, sample: u64) -> bool {
    let (g, total, sample) = (u128::from(g), u128::from(total.max(1)), u128::from(sample));
    (g + 1) * sample / total > g * sample / total
}

#[derive(Debug)]
struct Hold {
    times: Times,
    sampled: Vec<bool>,
    /// Sample send time of the message in flight (0: none).
    in_flight: Vec<u64>,
    ping_out: Vec<bool>,
    /// Per connection, the scheduled send times of its open-loop messages in flight (echoes
    /// come back in order).
    open: Vec<VecDeque<u64>>,
    /// The open-loop window.
    open_t0: u64,
    open_t1: u64,
    payload: Vec<u8>,
    sampling: bool,
    received: u64,
    tally: Tally,
}

impl Hold {
    fn send(&mut self, d: &mut Driver, id: usize, now: u64) {
        d.send_frame(id, OpCode::Binary, &self.payload);
        self.in_flight[id] = now;
    }
}

impl Behavior for Hold {
    const CAPTURE: bool = false;

    fn on_open(&mut self, _d: &mut Driver, _id: usize, _now: u64) {}

    fn on_message(&mut self, d: &mut Driver, id: usize, f: Frame<'_>, now: u64) {
        if f.opcode == OpCode::Pong {
            if std::mem::take(&mut self.ping_out[id]) {
                self.tally.pongs += 1;
            }
            return;
        }
        let closed = self.in_flight[id];
        let sent = if closed != 0 { closed } else { self.open[id].front().copied().unwrap_or(0) };
        let size = self.payload.len() as u64;
        if sent == 0 || f.opcode != OpCode::Binary || f.len != size {
            d.fail(id, Kind::Protocol, || {
                format!(
                    "an unexpected {:?} message of {} bytes on a held connection",
                    f.opcode, f.len
                )
            });
            return;
        }
        self.received += 1;
        if closed == 0 {
            self.open[id].pop_front();
            if sent >= self.open_t0 && sent < self.open_t1 {
                self.tally.open_received += 1;
                self.tally.open_latency.saturating_record(now.saturating_sub(sent).max(1));
            }
            return;
        }
        self.in_flight[id] = 0;
        if in_window(&self.times, now) {
            self.tally.messages += 1;
            self.tally.bytes += size;
            self.tally.latency.saturating_record(now.saturating_sub(sent).max(1));
        }
        if self.sampling && now < self.times.t1 && d.is_open(id) {
            self.send(d, id, now);
        }
    }

    fn on_end(&mut self, _d: &mut Driver, id: usize, _end: End, _now: u64) {
        self.in_flight[id] = 0;
        self.ping_out[id] = false;
        self.open[id].clear();
    }
}

fn received(b: &Hold) -> u64 {
    b.received
}

pub fn run(a: &HoldArgs, mut ctx: ThreadCtx) -> Result<Tally, String> {
    let n = (ctx.range.end - ctx.range.start) as usize;
    let mut d = Driver::new(ctx.cfg.clone(), n, ctx.seed).map_err(|e| format!("epoll: {e}"))?;
    let sample = a.sample.min(ctx.total);
    let mut b = Hold {
        times: Times { start: u64::MAX, t0: u64::MAX, t1: u64::MAX, stop: u64::MAX },
        sampled: (ctx.range.clone()).map(|g| is_sampled(g, ctx.total, sample)).collect(),
        in_flight: vec![0; n],
        ping_out: vec![false; n],
        open: vec![VecDeque::new(); n],
        open_t0: u64::MAX,
        open_t1: u64::MAX,
        payload: vec![b'x'; a.size],
        sampling: false,
        received: 0,
        tally: Tally::default(),
    };
    let set = setup(&mut d, &mut b, &mut ctx, received, |_, _| true)?;
    let times = wait_go(&mut d, &mut b, &mut ctx, received)?;
    b.times = times;
    let hold_end = times.t0.saturating_sub(secs_ns(sample_warmup_s(&a.common)));
    let ping_every = a.ping_interval.filter(|&s| s > 0.0).map(secs_ns);
    let mut pings_sent: u64 = 0;
    // The open-loop schedule: message m of this thread is due at `t1 + m * gap`, on sampled
    // connection m % (sampled here), so each sends `open_rate` a second, staggered.
    let open_ids: Vec<usize> = (0..n).filter(|&id| b.sampled[id]).collect();
    let open_on = a.open_rate > 0.0 && !open_ids.is_empty();
    let gap_ns = if open_on { 1e9 / (a.open_rate * open_ids.len() as f64) } else { 0.0 };
    let (open_t0, open_t1) = open_window(a, times.t1);
    (b.open_t0, b.open_t1) = (open_t0, open_t1);
    let end = if open_on { open_t1 } else { times.t1 };
    let mut open_sent: u64 = 0;
    loop {
        let now = now_ns();
        if now >= end {
            break;
        }
        if !b.sampling && now >= hold_end {
            b.sampling = true;
            for id in 0..n {
                if b.sampled[id] && d.is_open(id) {
                    b.send(&mut d, id, now);
                }
            }
        }
        let mut next = if b.sampling { IDLE_POLL_NS } else { hold_end - now };
        if open_on && now >= times.t1 {
            let due = |m: u64| times.t1 + (m as f64 * gap_ns) as u64;
            while due(open_sent) <= now && due(open_sent) < open_t1 {
                let (id, at) =
                    (open_ids[(open_sent % open_ids.len() as u64) as usize], due(open_sent));
                open_sent += 1;
                if !d.is_open(id) {
                    continue;
                }
                d.send_frame(id, OpCode::Binary, &b.payload);
                b.open[id].push_back(at);
                if at >= open_t0 {
                    b.tally.open_sent += 1;
                    b.tally.late(now, at);
                }
            }
            next = next.min(due(open_sent).saturating_sub(now));
        }
        if let (Some(every), true) = (ping_every, n > 0) {
            // Ping m of this thread is due at start + m * every / n, on slot m % n: each
            // connection pings once per interval, staggered.
            let due = |m: u64| times.start + (m as f64 * every as f64 / n as f64) as u64;
            while due(pings_sent) <= now {
                let id = (pings_sent % n as u64) as usize;
                pings_sent += 1;
                if !d.is_open(id) {
                    continue;
                }
                if b.ping_out[id] {
                    d.errors.count(Kind::Timeout, || {
                        "no pong within --ping-interval of a ping".to_string()
                    });
                }
                d.send_frame(id, OpCode::Ping, b"lg");
                b.ping_out[id] = true;
                b.tally.pings += 1;
            }
            next = next.min(due(pings_sent).saturating_sub(now));
        }
        ctx.ctl.publish(now, d.open, b.received, d.errors.total());
        let wait = next.min(IDLE_POLL_NS).min(end - now);
        d.poll(&mut b, wait).map_err(|e| format!("epoll: {e}"))?;
    }
    b.sampling = false;
    let close = close_all(&mut d, &mut b, &mut ctx, received)?;
    finish(&d, set, close, &mut b.tally);
    Ok(b.tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_exact_and_spread() {
        for (total, sample) in [(200_000u64, 1000u64), (300, 1000), (7, 3), (10, 0)] {
            let picked: Vec<u64> = (0..total).filter(|&g| is_sampled(g, total, sample)).collect();
            assert_eq!(picked.len() as u64, sample.min(total), "{total} {sample}");
            if sample > 0 && sample < total {
                let gap = total / sample;
                assert!(picked.windows(2).all(|w| w[1] - w[0] >= gap && w[1] - w[0] <= gap + 1));
            }
        }
    }
}
