//! One worker: a pinned thread, its event loop, its connection slab, its timers. Generic over
//! the backend, which is chosen once, when the worker starts.
//!
//! One loop iteration ([`turn`]): poll the backend (which calls back into the [`Core`] for every
//! accept, read, hang-up and completed send), apply commands from other threads (sends,
//! closes, deferred closures, publishes), fire due timers and the tick, flush every connection
//! that got bytes this iteration (one send each: corked), apply backpressure, and every 250 ms
//! sweep the slab for handshake, idle and close timeouts. The sweep is O(connections) (about a
//! millisecond per 100,000 connections) and costs no bytes per connection beyond two
//! timestamps; application timers live in a heap instead (see `timers`).
//!
//! Each behaviour has its own file: `handshake` (the upgrade), `frames` (messages and the
//! protocol's output), `close` (closing, timeouts, shutdown), `timers` (application timers and
//! the tick), `fanout` (broadcasts, publishes, commands from other threads), `edge` (the PROXY
//! header, the client's address behind trusted proxies, the access log), `input` (the budget
//! for buffered input, each connection's share of an iteration, message deadlines).
//!
//! The clock is injected: [`turn`] reads the time the caller set, so tests drive a worker with
//! a fake backend and a fake clock, without sockets or sleeps.

mod close;
mod edge;
mod fanout;
mod frames;
mod handshake;
mod input;
mod output;
pub(crate) mod timers;
mod tls;

#[cfg(test)]
mod edge_tests;
#[cfg(test)]
mod input_tests;
#[cfg(test)]
mod output_tests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringside_proto::handshake::HandshakeConfig;
use ringside_proto::Config;
use slab::Slab;

use super::backend::{Backend, Driver, SendQueue};
use super::budget::Budget;
use super::conn::{flag, Conn, Phase};
use super::deflate::{self, WorkerDeflate};
use super::handle::{Counts, Local, Rx, WebSocket};
use super::pubsub::{Publication, Topics};
use super::queue::Pool;
use super::tls::Layer;
use super::{Command, Shared};
use crate::api::Handler;
use crate::config::{Settings, TopicPolicy};

/// How often the timeout sweep runs, milliseconds.
const SWEEP_MS: u64 = 250;
/// Replies at least this large leave right after the read that caused them (write-through),
/// not with the corked flush at the end of the iteration: by then a busy iteration has pushed
/// them out of the cache, and the kernel's copy into the socket reads them from memory
/// (measured: see "Write-through" in docs/architecture.md). Smaller ones stay corked, where
/// one send carries everything an iteration queued. A reply's payload this large that lies in
/// the receive buffer is not even copied into the queue (see `handle::Rx`).
pub(crate) const WRITE_THROUGH_MIN: usize = 4096;

/// The worker's state that backends call into.
pub(crate) struct Core<H: Handler> {
    handler: H,
    conns: Slab<Conn<H::Conn>>,
    local: Local,
    handshake: HandshakeConfig,
    proto: Config,
    /// Sockets to close after this iteration's flush: (id, hard).
    to_close: Vec<(usize, bool)>,
    /// Publishes for each other worker, sent once per iteration.
    remote: Vec<Vec<Publication>>,
    /// Scratch list of subscribers to close for falling behind.
    slow: Vec<usize>,
    /// The dirty list being flushed, swapped with `local.dirty` so neither allocates per
    /// iteration.
    flushing: Vec<usize>,
    /// Bulk output not flushed yet (see [`flush`]): the oldest first.
    bulk: Vec<usize>,
    /// Publishes past this iteration's fan-out work, in order: (publication, made here, so
    /// also for the other workers).
    deferred: VecDeque<(Publication, bool)>,
    /// Deliveries made this iteration (see `fanout::WORK_PER_TURN`), when the clock is next
    /// looked at, and when the iteration's fan-out started (read at its first delivery, so
    /// an iteration without fan-out reads no clock for it).
    turn_work: usize,
    clock_check: usize,
    turn_started: Option<Instant>,
    /// When the last iteration ended: the clock the next one starts at (one read for both).
    turn_ended: Instant,
    /// Commands were left in the inbox at the last iteration.
    inbox_left: bool,
    /// The output budget was swept between commands this iteration.
    swept: bool,
    /// Connections not read while their publishes wait in `deferred` (or in other workers'
    /// inboxes).
    throttled: Vec<usize>,
    /// Publishes made on this worker so far.
    published: u64,
    /// Connections whose send was in flight at the last flush: still in flight at the next
    /// means stalled (see `budget`). Looked at without flushing them again.
    watch: Vec<usize>,
    /// Scratch list of (charge, id) for the output budget's sweep.
    holders: Vec<(usize, usize)>,
    /// The generation given to the next accepted connection.
    generation: u32,
    next_sweep: u64,
    /// The next tick (ms), when ticking.
    next_tick: Option<u64>,
    shutdown_deadline: Option<u64>,
    /// The input budget and the per-iteration shares (see `input`).
    inputs: input::Inputs,
    /// The TLS sessions, when serving wss.
    tls: Option<Layer>,
}

impl<H: Handler> std::fmt::Debug for Core<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("connections", &self.conns.len()).finish()
    }
}

impl<H: Handler> Core<H> {
    pub(crate) fn new(worker: u16, handler: H, settings: Settings, shared: Arc<Shared>) -> Self {
        let mut handshake = HandshakeConfig {
            max_head_bytes: settings.max_head_bytes,
            allowed_origins: (!settings.allowed_origins.is_empty())
                .then(|| settings.allowed_origins.clone()),
            require_origin: false,
            subprotocols: settings.subprotocols.clone(),
            ..HandshakeConfig::default()
        };
        handshake.deflate = deflate::handshake_config(&settings);
        let proto = Config {
            max_frame_size: settings.max_frame_size,
            max_message_size: settings.max_message_size,
            auto_pong: true,
        };
        let topics = Topics::new(
            settings.topic_rules.clone(),
            TopicPolicy { slow_consumer: settings.slow_consumer, limit: settings.send_limit },
            settings.max_subscriptions,
            shared.bus.clone(),
        );
        let remote = (0..shared.workers()).map(|_| Vec::new()).collect();
        let budget = Budget::new(
            settings.max_buffered_output / shared.workers().max(1),
            super::budget::socket_charge(settings.socket_send_buffer),
        );
        let next_tick = settings.tick.map(|t| t.as_millis() as u64);
        let inputs = input::Inputs::new(&settings, shared.workers());
        let deflate = WorkerDeflate::new(&settings);
        let tls = shared.tls.clone().map(Layer::new);
        let metrics = super::metrics_ref(&shared, usize::from(worker));
        Core {
            handler,
            conns: Slab::new(),
            local: Local {
                worker,
                settings,
                shared,
                dirty: Vec::new(),
                bulk: Vec::new(),
                pool: Pool::default(),
                budget,
                topics,
                outbox: Vec::new(),
                touched: Vec::new(),
                timers: timers::Timers::default(),
                counts: Counts::default(),
                metrics,
                now_ms: 0,
                now: 0,
                deflate,
                rx: Rx::NONE,
            },
            handshake,
            proto,
            to_close: Vec::new(),
            remote,
            slow: Vec::new(),
            flushing: Vec::new(),
            bulk: Vec::new(),
            deferred: VecDeque::new(),
            turn_work: 0,
            clock_check: 0,
            turn_started: None,
            turn_ended: Instant::now(),
            inbox_left: false,
            swept: false,
            throttled: Vec::new(),
            published: 0,
            watch: Vec::new(),
            holders: Vec::new(),
            generation: 0,
            next_sweep: 0,
            next_tick,
            shutdown_deadline: None,
            inputs,
            tls,
        }
    }

    /// Sets the worker clock (milliseconds since it started).
    pub(crate) fn set_now(&mut self, ms: u64) {
        self.local.now_ms = ms;
        self.local.now = ms as u32;
    }

    /// Runs a handler callback with the connection's handle, then applies what it asked.
    /// Only open connections get callbacks.
    fn callback(&mut self, id: usize, f: impl FnOnce(&mut H, &mut WebSocket<'_, H::Conn>)) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let open = conn.can_send();
        let Phase::Open(o) = &mut conn.phase else { return };
        let mut ws =
            WebSocket { slot: id, io: &mut conn.io, app: &mut o.app, open, local: &mut self.local };
        f(&mut self.handler, &mut ws);
        self.after_event(id);
    }

    /// Copies this worker's counters to the shared stats.
    fn publish_stats(&self) {
        let stats = &self.local.shared.stats[usize::from(self.local.worker)];
        let c = self.local.counts;
        stats.connections.store(self.conns.len() as u64, Ordering::Relaxed);
        stats.delivered.store(c.delivered, Ordering::Relaxed);
        stats.dropped.store(c.dropped, Ordering::Relaxed);
        stats.conflated.store(c.conflated, Ordering::Relaxed);
        stats.slow_closed.store(c.slow_closed, Ordering::Relaxed);
        stats.stale.store(c.stale, Ordering::Relaxed);
        stats.accept_errors.store(c.accept_errors, Ordering::Relaxed);
        stats.compressed_shared.store(c.compressed_shared, Ordering::Relaxed);
        stats.compressed_per_conn.store(c.compressed_per_conn, Ordering::Relaxed);
        stats.deflate_declined.store(c.deflate_declined, Ordering::Relaxed);
        stats.deflate_memory.store(self.local.deflate.in_use() as u64, Ordering::Relaxed);
        let m = &self.local.metrics;
        m.connections_open.set(self.conns.len() as u64);
        m.connections_accepted.set_total(c.accepted);
        m.messages_received.set_total(c.messages_in);
        m.messages_sent.set_total(c.messages_out + c.delivered + c.unstaged);
        m.bytes_received.set_total(c.bytes_in);
        m.pings_received.set_total(c.pings);
        m.pongs_received.set_total(c.pongs);
        m.publishes_delivered.set_total(c.delivered);
        m.publishes_dropped.set_total(c.dropped);
        m.publishes_conflated.set_total(c.conflated);
        m.slow_consumers_closed.set_total(c.slow_closed);
        m.accept_errors.set_total(c.accept_errors);
        let buffered = self.local.budget.held + self.local.budget.pushed;
        stats.buffered_output.store(buffered as u64, Ordering::Relaxed);
    }

    /// Leaks (never frees) every send queue with bytes in flight: the backend could not confirm
    /// the kernel is done with them.
    fn leak_in_flight(&mut self) {
        for (_, conn) in self.conns.iter_mut() {
            if conn.io.queue.is_lent() {
                std::mem::forget(std::mem::take(&mut conn.io.queue));
            }
        }
    }

    /// How long the next poll may wait: until the next sweep, timer or tick, or not at all
    /// when there is work left.
    fn poll_timeout(&self) -> Duration {
        if !self.local.dirty.is_empty()
            || !self.local.bulk.is_empty()
            || !self.bulk.is_empty()
            || !self.to_close.is_empty()
            || !self.inputs.throttled.is_empty()
            || !self.deferred.is_empty()
            || self.inbox_left
        {
            return Duration::ZERO;
        }
        let now = self.local.now_ms;
        let mut at = self.next_sweep;
        if let Some(t) = self.local.timers.next() {
            at = at.min(t);
        }
        if let Some(t) = self.next_tick {
            at = at.min(t);
        }
        Duration::from_millis(at.saturating_sub(now).min(SWEEP_MS))
    }
}

impl<H: Handler> Driver for Core<H> {
    fn on_accept(&mut self, peer: Option<std::net::SocketAddr>) -> Option<usize> {
        self.local.counts.accepted += 1;
        if self.conns.len() >= self.local.settings.max_connections_per_worker
            || self.local.shared.is_shutting_down()
        {
            return None;
        }
        self.generation = self.generation.wrapping_add(1);
        let peer = peer.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        if !self.admit(peer) {
            return None;
        }
        let id = self.conns.insert(Conn::new(self.local.now, self.generation, peer));
        self.expect_proxy(id);
        if let Some(tls) = &mut self.tls {
            if let Err(e) = tls.accept(id) {
                tracing::warn!(error = %e, "cannot start a TLS session; refusing the connection");
                self.conns.remove(id);
                return None;
            }
        }
        Some(id)
    }

    fn on_data(
        &mut self,
        id: usize,
        data: &mut [u8],
        lend: bool,
        send: &mut dyn FnMut(usize, &mut SendQueue),
    ) -> bool {
        self.local.counts.bytes_in += data.len() as u64;
        if self.tls.as_mut().is_some_and(|tls| tls.conn(id).is_some()) {
            // Plaintext is sealed into records in the flush: nothing is written through.
            self.on_tls_data(id, data);
            return false;
        }
        // Replies to `id` may borrow from `data` until it is settled below.
        if lend {
            self.local.rx = Rx::over(id, data);
        }
        self.on_plain(id, data);
        let borrowed = std::mem::replace(&mut self.local.rx, Rx::NONE).used;
        let Some(conn) = self.conns.get_mut(id) else { return false };
        let queue = &mut conn.io.queue;
        // Only a queue with nothing in flight: one waiting on the peer waits for the flush.
        if queue.len() >= WRITE_THROUGH_MIN && queue.in_flight().is_none() {
            send(id, queue);
        }
        borrowed && queue.settle()
    }

    fn on_hangup(&mut self, id: usize) {
        // EOF may be a half-close after the peer's close frame: what is queued (the close echo)
        // is still sent; the graceful close below sends it before closing the socket.
        // Bytes that waited for their turn came before the hang-up: they are parsed first.
        self.drain_input(id);
        self.report_close(id, ringside_proto::CloseCode::ABNORMAL, "");
        self.release_input(id);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.io.set(flag::HUNG_UP, true);
            conn.phase = Phase::Done;
        }
        self.request_close(id, false);
    }

    fn queue(&mut self, id: usize) -> Option<&mut SendQueue> {
        // A TLS connection's backend side is its ciphertext queue.
        if let Some(conn) = self.tls.as_mut().and_then(|tls| tls.conn(id)) {
            return Some(&mut conn.out);
        }
        self.conns.get_mut(id).map(|c| &mut c.io.queue)
    }

    fn on_sent(&mut self, id: usize) {
        // The flush at the end of the iteration sends what is pending and handles the
        // high-water mark (resume reading, on_drain): with the bulk output, since what was
        // waiting for the socket is the rest of earlier output.
        if let Some(conn) = self.conns.get_mut(id) {
            self.local.mark_bulk(id, &mut conn.io);
        }
    }

    fn on_released(&mut self, id: usize) {
        if self.conns.contains(id) {
            self.release_input(id);
            let mut conn = self.conns.remove(id);
            self.local.topics.unsubscribe_all(id);
            self.local.deflate.release(id);
            self.local.budget.release(&mut conn.io.queue);
            // The id may be reused: the next connection in it has published nothing.
            self.throttled.retain(|&t| t != id);
            conn.io.queue.discard();
            conn.io.queue.recycle(&mut self.local.pool);
        }
        if let Some(tls) = &mut self.tls {
            tls.release(id, &mut self.local.pool);
        }
    }
}

impl<H: Handler> Core<H> {
    /// Plaintext bytes of `id` (a plain connection's, or a TLS connection's decrypted).
    fn on_plain(&mut self, id: usize, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        match conn.phase {
            Phase::Handshake(_) => self.on_handshake_input(id, data),
            Phase::Open(_) => {
                conn.io.last_rx = self.local.now;
                conn.io.set(flag::IDLE_PINGED, false);
                let (waiting, published) = (self.deferred.len(), self.published);
                self.on_input(id, data);
                // Published while earlier deliveries still wait: for another worker, or for
                // this one's flush (bulk output left over from the last iterations).
                let backlog = || {
                    self.published > published
                        && (!self.bulk.is_empty() || self.remote_backlogged())
                };
                let deferred = self.deferred.len() > waiting.max(fanout::DEFER_THROTTLE);
                if (deferred || backlog()) && !self.throttled.contains(&id) {
                    // It published well past this iteration's fan-out work: read no more from
                    // it until its publishes are delivered (flush pauses it).
                    self.throttled.push(id);
                }
            }
            Phase::Done => {}
        }
    }
}

/// Runs a worker's loop until shutdown completes, on the real clock.
pub(crate) fn run<H: Handler, B: Backend>(
    core: &mut Core<H>,
    backend: &mut B,
    inbox: &Receiver<Command>,
) -> io::Result<()> {
    let started = Instant::now();
    core.turn_ended = started;
    let result = loop {
        // The clock the last iteration ended at: the loop reads it twice per iteration (after
        // the wait and at the end), not more.
        core.set_now(core.turn_ended.saturating_duration_since(started).as_millis() as u64);
        match turn(core, backend, inbox) {
            Ok(false) => {}
            Ok(true) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if !backend.quiesce() {
        core.leak_in_flight();
    }
    result
}

/// One loop iteration at the clock the caller set ([`Core::set_now`]); `true` when the worker
/// has finished (shutdown complete).
pub(crate) fn turn<H: Handler, B: Backend>(
    core: &mut Core<H>,
    backend: &mut B,
    inbox: &Receiver<Command>,
) -> io::Result<bool> {
    core.inputs.turn = core.inputs.turn.wrapping_add(1);
    core.start_turn();
    core.swept = false;
    core.drain_deferred();
    let timeout = core.poll_timeout();
    backend
        .poll(core, timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("{} poll: {e}", backend.name())))?;
    // Busy time only: the wait above is idle.
    let busy = Instant::now();
    core.local.counts.accept_errors = backend.accept_errors();
    core.resume_input(backend);
    core.local.shared.woken(usize::from(core.local.worker));
    core.take_commands(inbox);
    core.fire_timers();
    core.send_remote();
    flush(core, backend);
    core.publish_stats();
    if core.local.now_ms >= core.next_sweep {
        core.next_sweep = core.local.now_ms + SWEEP_MS;
        core.sweep();
        core.give_back_memory();
    }
    core.turn_ended = Instant::now();
    core.local.metrics.loop_iteration.observe(core.turn_ended.saturating_duration_since(busy));
    if core.local.shared.is_shutting_down() {
        return core.shutdown_step(backend);
    }
    Ok(false)
}

/// How long one iteration spends flushing bulk output (fan-out deliveries, the rest of
/// partial sends) before leaving the rest for the next: replies, handshakes and accepts are
/// never behind more than this. Flushing 5,000 subscribers that each got a publish is 5,000
/// sends, 25-60 ms here; in one piece it held every fresh client's handshake and echo that
/// long, two or three times over.
const BULK_FLUSH_TIME: Duration = Duration::from_millis(8);
/// Bulk flushes between looks at the clock.
const BULK_CLOCK_EVERY: usize = 64;

/// Sends what each dirty connection queued, applies backpressure, settles the output budget,
/// closes. Replies first, all of them; then bulk output, oldest first, for at most
/// [`BULK_FLUSH_TIME`]: what is left waits for the next iteration (which polls without
/// waiting), counted against the budget meanwhile.
fn flush<H: Handler, B: Backend>(core: &mut Core<H>, backend: &mut B) {
    core.pause_throttled(backend);
    core.look_at_watched();
    // Callbacks below (on_drain) may mark connections dirty again: those go to the next flush.
    let mut dirty = std::mem::take(&mut core.flushing);
    std::mem::swap(&mut dirty, &mut core.local.dirty);
    for id in dirty.drain(..) {
        let Some(conn) = core.conns.get_mut(id) else { continue };
        conn.io.set(flag::URGENT | flag::DIRTY, false);
        flush_one(core, backend, id);
    }
    core.flushing = dirty;
    let mut bulk = std::mem::take(&mut core.bulk);
    bulk.append(&mut core.local.bulk);
    // The clock is read only when there is bulk output (most iterations have none).
    let started = (!bulk.is_empty()).then(Instant::now);
    let mut done = 0;
    while done < bulk.len() {
        if done % BULK_CLOCK_EVERY == BULK_CLOCK_EVERY - 1
            && started.is_some_and(|t| t.elapsed() > BULK_FLUSH_TIME)
        {
            break;
        }
        let id = bulk[done];
        done += 1;
        let Some(conn) = core.conns.get_mut(id) else { continue };
        if !conn.io.has(flag::DIRTY) {
            // Flushed already, as a reply.
            continue;
        }
        conn.io.set(flag::DIRTY, false);
        flush_one(core, backend, id);
    }
    // What waits is counted now, not when it is flushed: the budget's sweep below sees it.
    for &id in &bulk[done..] {
        if let Some(conn) = core.conns.get_mut(id) {
            core.local.budget.settle(&mut conn.io.queue, &mut core.local.pool);
        }
    }
    bulk.drain(..done);
    core.bulk = bulk;
    core.local.budget.settled();
    if core.local.budget.over() {
        core.enforce_budget();
    }
    for (id, hard) in std::mem::take(&mut core.to_close) {
        if !hard {
            // Bulk output still waiting for its turn goes before the close.
            if let Some(conn) = core.conns.get_mut(id).filter(|c| c.io.has(flag::DIRTY)) {
                conn.io.set(flag::URGENT | flag::DIRTY, false);
                flush_one(core, backend, id);
            }
            core.seal_for_close(id, backend);
        }
        backend.close(id, hard);
    }
}

/// Flushes one connection: hands its queue to the backend, watches for a stalled send,
/// applies the high-water mark (pause reading, `on_drain`), settles its budget charge.
fn flush_one<H: Handler, B: Backend>(core: &mut Core<H>, backend: &mut B, id: usize) {
    let high_water = core.local.settings.send_high_water;
    let Some(conn) = core.conns.get_mut(id) else { return };
    let waited = conn.io.queue.in_flight().is_some();
    if conn.io.queue.has_staged() && !waited {
        // Caught up: the latest conflated messages go out with this send.
        deflate::unstage(id, conn, &mut core.local);
    }
    let queued = match core.tls.as_mut().and_then(|tls| tls.conn(id)) {
        Some(tls) => {
            let closing = conn.io.has(flag::CLOSE_REQUESTED);
            tls::flush(id, tls, &mut conn.io.queue, &mut core.local.pool, closing, backend)
        }
        None => {
            let queue = &mut conn.io.queue;
            backend.flush(id, queue);
            let flying = queue.in_flight().is_some();
            queue.set_stalled(waited && flying);
            if flying && !waited {
                // Look again next iteration: still in flight then means stalled (see
                // `budget`).
                core.watch.push(id);
            }
            queue.len()
        }
    };
    let over = conn.io.has(flag::OVER_HIGH_WATER);
    if queued > high_water && !over {
        conn.io.set(flag::OVER_HIGH_WATER, true);
        backend.set_reading(id, false);
    } else if over && queued <= high_water {
        conn.io.set(flag::OVER_HIGH_WATER, false);
        if !conn.io.has(flag::THROTTLED) && !core.throttled.contains(&id) {
            backend.set_reading(id, true);
        }
        core.callback(id, |h, ws| h.on_drain(ws));
    }
    if let Some(conn) = core.conns.get_mut(id) {
        core.local.budget.settle(&mut conn.io.queue, &mut core.local.pool);
    }
}
