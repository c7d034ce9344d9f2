//! What clients send, bounded: the worker's budget for buffered input, each connection's share
//! of a loop iteration, the deadline for finishing a message, and the rate of control frames.
//!
//! **The input budget.** Every byte held for a client's unfinished input is charged to its
//! worker: the partial upgrade request, the protocol state's buffers (the message being
//! assembled, at its capacity; a control payload; inflate state), and the bytes waiting in the
//! connection's stash. A connection's charge is counted again after each read it gets (a few
//! loads, no per-byte work) and released when it closes. A connection whose charge would grow
//! past what is left of its worker's share is refused: closed with 1013 (try again later), or
//! answered 503 during its upgrade. The asking connection pays, never one already holding
//! memory: the server does not take back what it let a client buffer, and a client within the
//! limits is only refused while others hold the budget. Between two counts a read may grow a
//! connection by at most one read's worth (or one doubling of its message buffer, capped at
//! the message size limit), which is freed at once if refused.
//!
//! **The share of a loop iteration.** Each connection may have at most `read_budget_frames`
//! frames handed to the handler and `read_budget_bytes` parsed per iteration. What it sent
//! beyond that waits in its stash (a copy, charged to the budget) and reading from it pauses
//! until the stash has been parsed in later iterations, in order, before anything newer. So a
//! flood on one connection costs the others at most one share per iteration, and the flooder's
//! excess waits in its own socket. The copy, rather than keeping the backend's buffer, keeps
//! io_uring's provided buffers cycling for everyone else.
//!
//! **Message deadline.** While a frame or a fragmented message is unfinished, the connection
//! carries the time it started; the 250 ms sweep closes it with 1008 past `message_timeout`.
//!
//! **Control frames.** Pings and pongs are counted per connection in one-second windows; past
//! `max_control_rate` the connection fails with 1008.

use ringside_proto::{CloseCode, Error};

use super::Core;
use crate::api::Handler;
use crate::config::Settings;
use crate::runtime::backend::Backend;
use crate::runtime::conn::{flag, Input, Phase, Stash};

/// The reason sent with a refusal for lack of input budget.
const BUSY: &str = "server busy: input buffers full, try again later";

/// A worker's input accounting.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    /// Bytes held for unfinished input: the sum of every connection's charge.
    pub held: usize,
    /// This worker's share of `max_buffered_input`.
    pub limit: usize,
    /// The loop iteration, for the per-connection shares.
    pub turn: u16,
    /// Connections with a stash (an id may be stale: its flag says).
    pub throttled: Vec<usize>,
    /// Connections refused for lack of budget, so far.
    pub refused: u64,
    frames: u16,
    bytes: u32,
    control_rate: u16,
}

impl Inputs {
    /// The accounting of one of `workers` workers.
    pub fn new(settings: &Settings, workers: usize) -> Self {
        // An equal share: workers share nothing on the read path (one counter each, no
        // atomics), and SO_REUSEPORT spreads connections evenly. Never less than one message
        // of the maximum size, or such a message could never be received.
        let share = settings.max_buffered_input / workers.max(1);
        let floor = usize::try_from(settings.max_message_size).unwrap_or(usize::MAX);
        Inputs {
            limit: share.max(floor),
            // `Settings::check` keeps these two within 16 bits.
            frames: u16::try_from(settings.read_budget_frames).unwrap_or(u16::MAX),
            bytes: u32::try_from(settings.read_budget_bytes).unwrap_or(u32::MAX),
            control_rate: u16::try_from(settings.max_control_rate).unwrap_or(u16::MAX),
            ..Inputs::default()
        }
    }

    /// Sets a connection's charge to `held` bytes; `false` (and nothing changed) when that
    /// growth would pass the limit. Shrinking always succeeds.
    pub fn charge(&mut self, charged: &mut u32, held: usize) -> bool {
        let held = u32::try_from(held).unwrap_or(u32::MAX);
        if held <= *charged {
            self.held -= (*charged - held) as usize;
        } else {
            let grow = (held - *charged) as usize;
            if self.held.saturating_add(grow) > self.limit {
                return false;
            }
            self.held += grow;
        }
        *charged = held;
        true
    }

    /// Bytes `input` may still have parsed in this iteration; `None` when its share is used.
    pub fn allowance(&self, input: &mut Input, turn: u16) -> Option<usize> {
        if input.turn != turn {
            input.turn = turn;
            input.frames = 0;
            input.bytes = 0;
        }
        if input.frames >= self.frames || input.bytes >= self.bytes {
            return None;
        }
        Some((self.bytes - input.bytes) as usize)
    }

    /// Counts a ping or pong at `now` (ms); `false` when it is over the rate.
    pub fn control_allowed(&self, input: &mut Input, now: u32) -> bool {
        if self.control_rate == 0 {
            return true;
        }
        if now.wrapping_sub(input.control_since) >= 1000 || input.controls == 0 {
            input.control_since = now;
            input.controls = 0;
        }
        input.controls = input.controls.saturating_add(1);
        input.controls <= self.control_rate
    }
}

impl Stash {
    /// Appends bytes behind those waiting, first dropping the parsed front once it is at
    /// least half the buffer (so the copies add up to a constant per byte).
    fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }
}

impl<H: Handler> Core<H> {
    /// Bytes of an upgrade request: the partial request is charged to the budget while it
    /// waits for the rest; past the budget the client gets 503.
    pub(super) fn on_handshake_input(&mut self, id: usize, data: &mut [u8]) {
        // Released first: the request may complete (or be refused) now.
        self.release_input(id);
        self.on_handshake_data(id, data);
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Handshake(pending) = &mut conn.phase else { return };
        if self.inputs.charge(&mut pending.charged, pending.buf.capacity()) {
            return;
        }
        self.inputs.refused += 1;
        log_refusal();
        let reply = Error::Refused(503).http_response().unwrap_or_default();
        conn.phase = Phase::Done;
        conn.io.queue.push(&mut self.local.pool, &reply);
        self.local.mark_dirty(id, &mut conn.io);
        conn.io.set(flag::CLOSE_REPORTED, true);
        self.request_close(id, false);
    }

    /// Bytes of an open connection's frame stream (from the backend, or pipelined behind the
    /// upgrade request): parsed within its share of this iteration, the rest stashed.
    pub(super) fn on_input(&mut self, id: usize, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Open(o) = &mut conn.phase else { return };
        if let Some(stash) = &mut o.input.stash {
            // Older bytes wait: these go behind them.
            stash.push(data);
        } else {
            let used = self.on_frames(id, data);
            if used < data.len() {
                self.stash(id, &data[used..]);
            }
        }
        self.settle_input(id);
    }

    /// Keeps bytes the connection's share did not cover, and pauses reading from it (done
    /// after the poll, in `resume_input`).
    fn stash(&mut self, id: usize, rest: &[u8]) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Open(o) = &mut conn.phase else { return };
        o.input.stash = Some(Box::new(Stash { buf: rest.to_vec(), pos: 0 }));
        if !conn.io.has(flag::THROTTLED) {
            conn.io.set(flag::THROTTLED, true);
            self.inputs.throttled.push(id);
        }
    }

    /// After bytes were parsed: the message clock, and the connection's charge (refusing the
    /// connection when its growth does not fit the budget).
    fn settle_input(&mut self, id: usize) {
        let now = self.local.now;
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Open(o) = &mut conn.phase else { return };
        let input = &mut o.input;
        if !o.proto.in_message() {
            input.message_since = 0;
        } else if input.message_since == 0 {
            input.message_since = now | 1;
        }
        let held = o.proto.buffered() + input.stash.as_ref().map_or(0, |s| s.buf.capacity());
        if self.inputs.charge(&mut input.charged, held) {
            return;
        }
        self.inputs.refused += 1;
        log_refusal();
        self.fail_input(id, CloseCode::TRY_AGAIN_LATER, BUSY);
    }

    /// Fails an open connection for a reason of the server's (budget, message deadline):
    /// the close frame goes out, its input buffers are freed and uncharged, `on_close` is
    /// told, and the socket closes once the frame is sent.
    pub(super) fn fail_input(&mut self, id: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Open(o) = &mut conn.phase else { return };
        o.proto.fail_with(code, reason);
        o.input.stash = None;
        o.input.message_since = 0;
        let held = o.proto.buffered();
        self.inputs.charge(&mut o.input.charged, held);
        self.after_event(id);
        self.report_close(id, code, reason);
    }

    /// Uncharges whatever the connection holds (its state is about to go).
    pub(super) fn release_input(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let charged = match &mut conn.phase {
            Phase::Handshake(p) => &mut p.charged,
            Phase::Open(o) => &mut o.input.charged,
            Phase::Done => return,
        };
        self.inputs.charge(charged, 0);
    }

    /// Once per iteration, after the poll: parses each throttled connection's stash within
    /// its share, pauses reading from those that still have some, resumes the others.
    pub(super) fn resume_input<B: Backend>(&mut self, backend: &mut B) {
        if self.inputs.throttled.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.inputs.throttled);
        let mut i = 0;
        while i < list.len() {
            if self.resume_one(list[i], backend) {
                i += 1;
            } else {
                list.swap_remove(i);
            }
        }
        list.append(&mut self.inputs.throttled);
        self.inputs.throttled = list;
    }

    /// One throttled connection's turn; `true` while it stays throttled.
    fn resume_one<B: Backend>(&mut self, id: usize, backend: &mut B) -> bool {
        let Some(conn) = self.conns.get_mut(id) else { return false };
        if !conn.io.has(flag::THROTTLED) {
            return false;
        }
        let stash = match &mut conn.phase {
            Phase::Open(o) => o.input.stash.take(),
            _ => None,
        };
        let Some(mut stash) = stash else {
            conn.io.set(flag::THROTTLED, false);
            return false;
        };
        let used = self.on_frames(id, &mut stash.buf[stash.pos..]);
        stash.pos += used;
        let Some(conn) = self.conns.get_mut(id) else { return false };
        let Phase::Open(o) = &mut conn.phase else { return false };
        let done = stash.pos == stash.buf.len();
        if !done {
            o.input.stash = Some(stash);
        }
        self.settle_input(id);
        let Some(conn) = self.conns.get_mut(id) else { return false };
        let waiting = matches!(&conn.phase, Phase::Open(o) if o.input.stash.is_some());
        if waiting {
            // Newly throttled connections are paused here; for the others it is a no-op.
            backend.set_reading(id, false);
            return true;
        }
        conn.io.set(flag::THROTTLED, false);
        if !conn.io.has(flag::OVER_HIGH_WATER | flag::CLOSE_REQUESTED) {
            backend.set_reading(id, true);
        }
        false
    }

    /// Parses all of a connection's stash, whatever its share: the peer hung up, and what it
    /// sent before (its close frame, say) still counts.
    pub(super) fn drain_input(&mut self, id: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(id) else { return };
            let Phase::Open(o) = &mut conn.phase else { return };
            let Some(mut stash) = o.input.stash.take() else { break };
            o.input.frames = 0;
            o.input.bytes = 0;
            let used = self.on_frames(id, &mut stash.buf[stash.pos..]);
            stash.pos += used;
            if stash.pos < stash.buf.len() {
                if let Some(Phase::Open(o)) = self.conns.get_mut(id).map(|c| &mut c.phase) {
                    o.input.stash = Some(stash);
                }
            }
        }
        self.settle_input(id);
    }
}

fn log_refusal() {
    let e = std::io::Error::other(
        "a connection was refused: the worker's share of --max-buffered-input is held",
    );
    crate::log_rate_limited("input budget", &e);
}
