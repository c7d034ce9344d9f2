//! `echo` (closed loop: every reply sends the next message on its connection, K in flight) and
//! `rate` (open loop: messages go out on a fixed schedule whatever the replies do). Both check
//! that each reply is the message sent (opcode and length) and time it from a per-connection
//! FIFO of send times: the actual send time for echo, the intended one for rate, so a server
//! stall shows up in rate's latency instead of silently slowing the schedule (coordinated
//! omission).

use std::collections::VecDeque;

use ringside_proto::OpCode;

use super::{close_all, finish, in_window, poll_until, setup, wait_go, IDLE_POLL_NS};
use crate::cli::{EchoArgs, RateArgs};
use crate::driver::{Behavior, Driver, End};
use crate::part::{ThreadCtx, Times};
use crate::reader::Frame;
use crate::stats::{Kind, Tally};
use crate::sys::now_ns;

/// Rate: a connection whose unsent bytes pass this skips its sends (counted) instead of
/// buffering without bound when the server stops reading.
const BACKLOG_CAP: usize = 64 << 20;

/// Rate: most sends per loop turn, so a late schedule still leaves time to read.
const SENDS_PER_TURN: usize = 4_096;

#[derive(Debug)]
pub struct Echo {
    opcode: OpCode,
    payload: Vec<u8>,
    size: u64,
    /// Per slot: (intended) send times of the messages in flight, oldest first.
    fifo: Vec<VecDeque<u64>>,
    times: Times,
    closed_loop: bool,
    sending: bool,
    received: u64,
    pub tally: Tally,
}

impl Echo {
    /// `times` stays "never" until go, so nothing counts before the window.
    fn new(text: bool, size: usize, slots: usize, inflight: usize, closed_loop: bool) -> Echo {
        Echo {
            opcode: if text { OpCode::Text } else { OpCode::Binary },
            payload: vec![b'x'; size],
            size: size as u64,
            fifo: (0..slots).map(|_| VecDeque::with_capacity(inflight)).collect(),
            times: Times { start: u64::MAX, t0: u64::MAX, t1: u64::MAX, stop: u64::MAX },
            closed_loop,
            sending: false,
            received: 0,
            tally: Tally::default(),
        }
    }

    /// Sends one message on `id`, stamped `stamp` (now, or the intended time).
    #[inline]
    fn send(&mut self, d: &mut Driver, id: usize, stamp: u64) {
        d.send_frame(id, self.opcode, &self.payload);
        self.fifo[id].push_back(stamp);
        if in_window(&self.times, stamp) {
            self.tally.sent += 1;
        }
    }
}

impl Behavior for Echo {
    const CAPTURE: bool = false;

    fn on_open(&mut self, _d: &mut Driver, _id: usize, _now: u64) {}

    #[inline]
    fn on_message(&mut self, d: &mut Driver, id: usize, f: Frame<'_>, now: u64) {
        if f.opcode != self.opcode || f.len != self.size {
            if f.opcode == OpCode::Pong {
                return; // An unsolicited pong is allowed (RFC 6455 section 5.5.3).
            }
            let (op, size) = (self.opcode, self.size);
            d.fail(id, Kind::Protocol, || {
                format!("a reply is {:?} of {} bytes; sent {op:?} of {size}", f.opcode, f.len)
            });
            return;
        }
        let Some(sent) = self.fifo[id].pop_front() else {
            d.fail(id, Kind::Protocol, || "a reply to a message never sent".into());
            return;
        };
        self.received += 1;
        if in_window(&self.times, now) {
            self.tally.messages += 1;
            self.tally.bytes += self.size;
            self.tally.latency.saturating_record(now.saturating_sub(sent).max(1));
        }
        if self.closed_loop && self.sending && now < self.times.t1 && d.is_open(id) {
            self.send(d, id, now);
        }
    }

    fn on_end(&mut self, _d: &mut Driver, id: usize, _end: End, _now: u64) {
        self.fifo[id].clear();
    }
}

fn received(b: &Echo) -> u64 {
    b.received
}

pub fn run_echo(a: &EchoArgs, mut ctx: ThreadCtx) -> Result<Tally, String> {
    let n = (ctx.range.end - ctx.range.start) as usize;
    let mut d = Driver::new(ctx.cfg.clone(), n, ctx.seed).map_err(|e| format!("epoll: {e}"))?;
    let mut b = Echo::new(a.text, a.size, n, a.inflight, true);
    let set = setup(&mut d, &mut b, &mut ctx, received, |_, _| true)?;
    let times = wait_go(&mut d, &mut b, &mut ctx, received)?;
    b.times = times;
    b.sending = true;
    let now = now_ns();
    for id in 0..n {
        if d.is_open(id) {
            for _ in 0..a.inflight {
                b.send(&mut d, id, now);
            }
        }
    }
    poll_until(&mut d, &mut b, &mut ctx, times.t1, &received)?;
    b.sending = false;
    let close = close_all(&mut d, &mut b, &mut ctx, received)?;
    finish(&d, set, close, &mut b.tally);
    Ok(b.tally)
}

/// The open-loop schedule of one thread. Over the whole run, message `j` of connection `g` is
/// due at `start + (g + j * total) / rate`: every connection sends at rate/total, and the
/// connections are staggered evenly across processes and threads.
#[derive(Debug)]
struct Schedule {
    base: u64,
    slots: u64,
    total: u64,
    ns_per_msg: f64,
    start: u64,
    j: u64,
    k: u64,
}

impl Schedule {
    #[inline]
    fn due(&self) -> u64 {
        let index = (self.base + self.k) as f64 + self.j as f64 * self.total as f64;
        self.start + (index * self.ns_per_msg) as u64
    }

    fn advance(&mut self) {
        self.k += 1;
        if self.k == self.slots {
            self.k = 0;
            self.j += 1;
        }
    }

    /// Sends what is due by `now`; returns when the next send is due (`now` if it is behind
    /// and stopped for this turn, `u64::MAX` when the window is over).
    fn tick(&mut self, b: &mut Echo, d: &mut Driver, now: u64) -> u64 {
        if self.slots == 0 {
            return u64::MAX;
        }
        for _ in 0..SENDS_PER_TURN {
            let intended = self.due();
            if intended >= b.times.t1 {
                return u64::MAX;
            }
            if intended > now {
                return intended;
            }
            let id = self.k as usize;
            if d.is_open(id) {
                if d.unsent(id) > BACKLOG_CAP {
                    if in_window(&b.times, intended) {
                        b.tally.dropped_sends += 1;
                    }
                } else {
                    b.send(d, id, intended);
                    if in_window(&b.times, intended) {
                        b.tally.late(now, intended);
                    }
                }
            }
            self.advance();
        }
        now
    }
}

pub fn run_rate(a: &RateArgs, mut ctx: ThreadCtx) -> Result<Tally, String> {
    let n = (ctx.range.end - ctx.range.start) as usize;
    let mut d = Driver::new(ctx.cfg.clone(), n, ctx.seed).map_err(|e| format!("epoll: {e}"))?;
    let mut b = Echo::new(a.text, a.size, n, 4, false);
    let set = setup(&mut d, &mut b, &mut ctx, received, |_, _| true)?;
    let times = wait_go(&mut d, &mut b, &mut ctx, received)?;
    b.times = times;
    let mut schedule = Schedule {
        base: ctx.range.start,
        slots: n as u64,
        total: ctx.total,
        ns_per_msg: 1e9 / a.rate,
        start: times.start,
        j: 0,
        k: 0,
    };
    loop {
        let now = now_ns();
        if now >= times.t1 {
            break;
        }
        let next = schedule.tick(&mut b, &mut d, now);
        ctx.ctl.publish(now, d.open, b.received, d.errors.total());
        let wait = next.min(times.t1).saturating_sub(now).min(IDLE_POLL_NS);
        d.poll(&mut b, wait).map_err(|e| format!("epoll: {e}"))?;
    }
    let close = close_all(&mut d, &mut b, &mut ctx, received)?;
    finish(&d, set, close, &mut b.tally);
    Ok(b.tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_staggers_connections_across_parts() {
        // Two parts of 2 connections each, 4 total, 1000 msg/s: every 1 ms one message, the
        // parts' connections interleaved 0,1 | 2,3.
        let mk =
            |base| Schedule { base, slots: 2, total: 4, ns_per_msg: 1e6, start: 0, j: 0, k: 0 };
        let mut all = Vec::new();
        for base in [0, 2] {
            let mut s = mk(base);
            for _ in 0..6 {
                all.push(s.due());
                s.advance();
            }
        }
        all.sort();
        let expect: Vec<u64> = (0..12).map(|i| i * 1_000_000).collect();
        assert_eq!(all, expect);
    }
}
