//! One worker: a pinned thread, its event loop, its connection slab and its timers. Generic over
//! the backend, which is chosen once, when the worker starts.
//!
//! One loop iteration: poll the backend (which calls back into the [`Core`] for every accept,
//! read, hang-up and completed send), apply cross-worker commands, flush every connection that
//! got bytes this iteration (one send each: corked), apply backpressure, and every 250 ms sweep
//! the slab for timeouts. The sweep is O(connections) (about a millisecond per 100,000
//! connections) and costs no bytes per connection beyond two timestamps, which is why it stands
//! in for a timer wheel. Timestamps are a wrapping millisecond clock in a `u32`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringside_proto::handshake::{self, HandshakeConfig};
use ringside_proto::{CloseCode, Config, Connection, Error, Event, Role};
use slab::Slab;

use super::backend::{Backend, Driver, SendQueue};
use super::conn::{Conn, Counts, Ctx, Phase, WebSocket};
use super::pubsub::{Publication, Topics};
use super::queue::Pool;
use super::{Command, Shared};
use crate::server::{Handler, Settings, SlowConsumer, TopicPolicy, Upgrade};

/// The worker's state that backends call into.
pub(crate) struct Core<H> {
    handler: H,
    conns: Slab<Conn>,
    ctx: Ctx,
    handshake: HandshakeConfig,
    proto: Config,
    /// Sockets to close after this iteration's flush: (id, hard).
    to_close: Vec<(usize, bool)>,
    /// Publishes for each other worker, sent once per iteration.
    remote: Vec<Vec<Publication>>,
    /// Scratch list of subscribers to close for falling behind.
    slow: Vec<usize>,
    /// The dirty list being flushed, swapped with `ctx.dirty` so neither allocates per iteration.
    flushing: Vec<usize>,
}

impl<H> std::fmt::Debug for Core<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("connections", &self.conns.len()).finish()
    }
}

impl<H: Handler> Core<H> {
    pub(crate) fn new(worker: u16, handler: H, settings: Settings, shared: Arc<Shared>) -> Self {
        let handshake = HandshakeConfig {
            max_head_bytes: settings.max_head_bytes,
            allowed_origins: (!settings.allowed_origins.is_empty())
                .then(|| settings.allowed_origins.clone()),
            require_origin: false,
            subprotocols: settings.subprotocols.clone(),
            ..HandshakeConfig::default()
        };
        let proto = Config {
            max_frame_size: settings.max_frame_size,
            max_message_size: settings.max_message_size,
            auto_pong: true,
        };
        let topics = Topics::new(
            settings.topic_rules.clone(),
            TopicPolicy { slow_consumer: settings.slow_consumer, limit: settings.send_limit },
            settings.max_subscriptions,
        );
        let remote = (0..shared.workers()).map(|_| Vec::new()).collect();
        Core {
            handler,
            conns: Slab::new(),
            ctx: Ctx {
                worker,
                settings,
                shared,
                dirty: Vec::new(),
                pool: Pool::default(),
                topics,
                outbox: Vec::new(),
                counts: Counts::default(),
                now: 0,
            },
            handshake,
            proto,
            to_close: Vec::new(),
            remote,
            slow: Vec::new(),
            flushing: Vec::new(),
        }
    }

    /// Bytes of the upgrade request.
    fn on_handshake_data(&mut self, id: usize, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Handshake(partial) = &mut conn.phase else { return };
        let whole: &mut [u8] = if partial.is_empty() {
            data
        } else {
            partial.extend_from_slice(data);
            partial
        };
        let (reply, head_len, accepted) = match handshake::parse_request(whole, &self.handshake) {
            Ok(None) => {
                if let Phase::Handshake(partial) = &mut conn.phase {
                    if partial.is_empty() {
                        partial.extend_from_slice(data);
                    }
                }
                return;
            }
            Ok(Some(req)) => {
                let head_len = req.head_len();
                match handshake::validate(&req, &self.handshake) {
                    Ok(accept) => match self.handler.on_upgrade(&req) {
                        Upgrade::Accept => {
                            let mut out = Vec::with_capacity(160);
                            accept.write_response(None, &mut out);
                            (out, head_len, true)
                        }
                        Upgrade::Reject(status) => {
                            (Error::Refused(status).http_response().unwrap_or_default(), 0, false)
                        }
                    },
                    Err(Error::NotUpgrade) if req.method() == "GET" && req.path() == "/health" => {
                        (HEALTH_OK.to_vec(), 0, false)
                    }
                    Err(e) => (e.http_response().unwrap_or_default(), 0, false),
                }
            }
            Err(e) => (e.http_response().unwrap_or_default(), 0, false),
        };
        // Bytes after the head are the first frames (a client may pipeline them).
        let rest =
            if accepted && head_len < whole.len() { whole[head_len..].to_vec() } else { vec![] };
        let conn = &mut self.conns[id];
        conn.io.queue.push(&mut self.ctx.pool, &reply);
        self.ctx.mark_dirty(id, &mut conn.io);
        if !accepted {
            conn.phase = Phase::Done;
            conn.io.close_reported = true;
            self.request_close(id, false);
            return;
        }
        conn.phase = Phase::Open(Box::new(Connection::new(Role::Server, self.proto)));
        self.callback(id, |h, ws| h.on_open(ws));
        if !rest.is_empty() {
            let mut rest = rest;
            self.on_frames(id, &mut rest);
        }
    }

    /// Bytes of the frame stream.
    fn on_frames(&mut self, id: usize, data: &mut [u8]) {
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get_mut(id) else { return };
            let Phase::Open(proto) = &mut conn.phase else { return };
            let open = proto.is_open() && conn.io.close_request.is_none();
            let mut ws = WebSocket { id, io: &mut conn.io, open, ctx: &mut self.ctx };
            let closed = match proto.read(&mut data[pos..]) {
                Ok((_, None)) => break,
                Ok((n, Some(event))) => {
                    pos += n;
                    match event {
                        Event::Message(msg) => {
                            self.handler.on_message(&mut ws, msg);
                            None
                        }
                        Event::Ping(_) | Event::Pong(_) => None,
                        Event::Close(frame) => Some(match frame {
                            Some(f) => (f.code, f.reason.to_owned()),
                            None => (CloseCode::NO_STATUS, String::new()),
                        }),
                    }
                }
                Err(e) => {
                    Some((e.close_code().unwrap_or(CloseCode::PROTOCOL_ERROR), e.to_string()))
                }
            };
            self.after_event(id);
            if let Some((code, reason)) = closed {
                self.report_close(id, code, &reason);
            }
        }
        self.after_event(id);
    }

    /// Moves the protocol's own output (pong, close echo, failure close) to the send queue,
    /// applies a close the handler asked for, and closes the socket once the protocol is done.
    fn after_event(&mut self, id: usize) {
        if !self.ctx.outbox.is_empty() {
            self.drain_outbox();
        }
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Open(proto) = &mut conn.phase else { return };
        if let Some((code, reason)) = conn.io.close_request.take() {
            if proto.close(code, &reason).is_ok() && conn.io.closing_since == 0 {
                conn.io.closing_since = self.ctx.now | 1;
            }
        }
        if !proto.output().is_empty() {
            conn.io.queue.push(&mut self.ctx.pool, proto.output());
            proto.consume_output(usize::MAX);
            self.ctx.mark_dirty(id, &mut conn.io);
        }
        if proto.is_closed() && !conn.io.close_requested {
            // RFC 6455 7.1.1: after the close handshake (or a failure) the server closes TCP.
            self.request_close(id, false);
        }
    }

    /// Calls `on_close` once.
    fn report_close(&mut self, id: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.io.close_reported || !matches!(conn.phase, Phase::Open(_)) {
            return;
        }
        conn.io.close_reported = true;
        let mut ws = WebSocket { id, io: &mut conn.io, open: false, ctx: &mut self.ctx };
        self.handler.on_close(&mut ws, code, reason);
        self.ctx.topics.unsubscribe_all(id);
        if !self.ctx.outbox.is_empty() {
            self.drain_outbox();
        }
    }

    /// Runs a handler callback with the connection's handle, then applies what it asked.
    fn callback(&mut self, id: usize, f: impl FnOnce(&mut H, &mut WebSocket<'_>)) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let open = match &conn.phase {
            Phase::Open(proto) => proto.is_open() && conn.io.close_request.is_none(),
            _ => false,
        };
        let mut ws = WebSocket { id, io: &mut conn.io, open, ctx: &mut self.ctx };
        f(&mut self.handler, &mut ws);
        self.after_event(id);
    }

    fn request_close(&mut self, id: usize, hard: bool) {
        if let Some(conn) = self.conns.get_mut(id) {
            if !conn.io.close_requested || hard {
                conn.io.close_requested = true;
                if conn.io.closing_since == 0 {
                    conn.io.closing_since = self.ctx.now | 1;
                }
                self.to_close.push((id, hard));
            }
        }
    }

    /// Starts the close handshake on `id` from the worker itself (timeouts, shutdown).
    fn close_with(&mut self, id: usize, code: CloseCode, reason: &str) {
        self.callback(id, |_, ws| ws.close(code, reason));
    }

    /// Once a second: handshake, idle and close timeouts.
    fn sweep(&mut self) {
        let s = &self.ctx.settings;
        let now = self.ctx.now;
        let ms = |d: std::time::Duration| d.as_millis().clamp(1, u128::from(u32::MAX / 2)) as u32;
        let handshake = ms(s.handshake_timeout);
        let idle = ms(s.idle_timeout);
        let close = ms(s.close_timeout);
        let ping_idle = s.ping_idle;
        let mut expired = Vec::new();
        for (id, conn) in &self.conns {
            let io = &conn.io;
            // For a connection still in its handshake, `last_rx` is the time of accept: the
            // whole request must arrive within the timeout, however it trickles (slowloris).
            let since_rx = now.wrapping_sub(io.last_rx);
            let action = if io.closing_since != 0 {
                (now.wrapping_sub(io.closing_since) >= close).then_some(Sweep::Drop)
            } else {
                match &conn.phase {
                    Phase::Handshake(_) => (since_rx >= handshake).then_some(Sweep::Drop),
                    Phase::Open(_) if since_rx >= idle => Some(Sweep::Idle),
                    Phase::Open(_) if ping_idle && since_rx >= idle / 2 && !io.idle_pinged => {
                        Some(Sweep::Ping)
                    }
                    _ => None,
                }
            };
            if let Some(action) = action {
                expired.push((id, action));
            }
        }
        for (id, action) in expired {
            match action {
                Sweep::Drop => {
                    self.report_close(id, CloseCode::ABNORMAL, "timed out");
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.phase = Phase::Done;
                    }
                    self.request_close(id, true);
                }
                Sweep::Idle => self.close_with(id, CloseCode::NORMAL, "idle timeout"),
                Sweep::Ping => {
                    self.callback(id, |_, ws| {
                        let _ = ws.ping(b"");
                    });
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.io.idle_pinged = true;
                    }
                }
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Broadcast(frame) => {
                let limit = self.ctx.settings.send_limit;
                let policy = self.ctx.settings.slow_consumer;
                let mut slow = std::mem::take(&mut self.slow);
                for (id, conn) in self.conns.iter_mut() {
                    let Phase::Open(proto) = &conn.phase else { continue };
                    if !proto.is_open() || conn.io.close_request.is_some() {
                        continue;
                    }
                    if conn.io.queue.len() + frame.len() > limit {
                        match policy {
                            SlowConsumer::Drop | SlowConsumer::Conflate => {
                                self.ctx.counts.dropped += 1
                            }
                            SlowConsumer::Close => slow.push(id),
                        }
                        continue;
                    }
                    conn.io.queue.push_published(&mut self.ctx.pool, &frame);
                    self.ctx.mark_dirty(id, &mut conn.io);
                }
                self.close_slow(&mut slow);
                self.slow = slow;
            }
            Command::Publish(batch) => {
                for p in &batch {
                    self.deliver(p);
                }
            }
        }
    }

    /// Delivers the publishes handler callbacks made: here at once, to other workers with this
    /// iteration's batch.
    fn drain_outbox(&mut self) {
        let me = usize::from(self.ctx.worker);
        while !self.ctx.outbox.is_empty() {
            let mut outbox = std::mem::take(&mut self.ctx.outbox);
            for p in outbox.drain(..) {
                self.deliver(&p);
                for (worker, batch) in self.remote.iter_mut().enumerate() {
                    if worker != me {
                        batch.push(p.copied());
                    }
                }
            }
            if self.ctx.outbox.is_empty() {
                // Keep the allocation for the next callback.
                self.ctx.outbox = outbox;
            }
        }
    }

    /// Hands `p` to this worker's subscribers of its topic, applying the topic's policy to each
    /// subscriber that is over the limit.
    fn deliver(&mut self, p: &Publication) {
        let Ctx { topics, pool, dirty, counts, .. } = &mut self.ctx;
        let Some((topic_id, topic)) = topics.find(&p.topic) else { return };
        let policy = topic.policy;
        let len = p.frame.len();
        let mut slow = std::mem::take(&mut self.slow);
        for &id in &topic.subscribers {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            let Phase::Open(proto) = &conn.phase else { continue };
            if !proto.is_open() || conn.io.close_request.is_some() {
                continue;
            }
            let queue = &mut conn.io.queue;
            if policy.conflates() && (queue.has_staged() || !policy.fits(queue.len(), len)) {
                // Behind: wait in the stage (replacing an older message of the same key)
                // until what is in flight is sent; see `flush`.
                if queue.stage(pool, (topic_id, p.key), p.frame.clone()) {
                    counts.conflated += 1;
                }
            } else if policy.fits(queue.len(), len) {
                queue.push_published(pool, &p.frame);
                counts.delivered += 1;
            } else {
                match policy.slow_consumer {
                    SlowConsumer::Close => slow.push(id),
                    SlowConsumer::Drop | SlowConsumer::Conflate => counts.dropped += 1,
                }
                continue;
            }
            if !conn.io.dirty {
                conn.io.dirty = true;
                dirty.push(id);
            }
        }
        self.close_slow(&mut slow);
        self.slow = slow;
    }

    /// Closes (1008) the connections in `slow` and empties it.
    fn close_slow(&mut self, slow: &mut Vec<usize>) {
        for id in slow.drain(..) {
            self.ctx.counts.slow_closed += 1;
            self.close_with(id, CloseCode::POLICY, "slow consumer");
        }
    }

    /// Sends this iteration's publishes to the other workers, one batch each.
    fn send_remote(&mut self) {
        for (worker, batch) in self.remote.iter_mut().enumerate() {
            if !batch.is_empty() {
                self.ctx.shared.send(worker, Command::Publish(std::mem::take(batch)));
            }
        }
    }

    /// Copies this worker's counters to the shared stats.
    fn publish_stats(&self) {
        let stats = &self.ctx.shared.stats[usize::from(self.ctx.worker)];
        let c = self.ctx.counts;
        stats.connections.store(self.conns.len() as u64, Ordering::Relaxed);
        stats.delivered.store(c.delivered, Ordering::Relaxed);
        stats.dropped.store(c.dropped, Ordering::Relaxed);
        stats.conflated.store(c.conflated, Ordering::Relaxed);
        stats.slow_closed.store(c.slow_closed, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
enum Sweep {
    Drop,
    Idle,
    Ping,
}

const HEALTH_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

impl<H: Handler> Driver for Core<H> {
    fn on_accept(&mut self) -> Option<usize> {
        if self.conns.len() >= self.ctx.settings.max_connections_per_worker
            || self.ctx.shared.is_shutting_down()
        {
            return None;
        }
        Some(self.conns.insert(Conn::new(self.ctx.now)))
    }

    fn on_data(&mut self, id: usize, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        match conn.phase {
            Phase::Handshake(_) => self.on_handshake_data(id, data),
            Phase::Open(_) => {
                conn.io.last_rx = self.ctx.now;
                conn.io.idle_pinged = false;
                self.on_frames(id, data);
            }
            Phase::Done => {}
        }
    }

    fn on_hangup(&mut self, id: usize) {
        // EOF may be a half-close after the peer's close frame: what is queued (the close echo)
        // is still sent; the graceful close below sends it before closing the socket.
        self.report_close(id, CloseCode::ABNORMAL, "");
        if let Some(conn) = self.conns.get_mut(id) {
            conn.io.hung_up = true;
            conn.phase = Phase::Done;
        }
        self.request_close(id, false);
    }

    fn queue(&mut self, id: usize) -> Option<&mut SendQueue> {
        self.conns.get_mut(id).map(|c| &mut c.io.queue)
    }

    fn on_sent(&mut self, id: usize) {
        // The flush at the end of the iteration sends what is pending and handles the
        // high-water mark (resume reading, on_drain).
        if let Some(conn) = self.conns.get_mut(id) {
            self.ctx.mark_dirty(id, &mut conn.io);
        }
    }

    fn on_released(&mut self, id: usize) {
        if self.conns.contains(id) {
            let mut conn = self.conns.remove(id);
            self.ctx.topics.unsubscribe_all(id);
            conn.io.queue.discard();
            conn.io.queue.recycle(&mut self.ctx.pool);
        }
    }
}

/// How often the timeout sweep runs, milliseconds.
const SWEEP_MS: u32 = 250;

/// Runs a worker's loop until shutdown completes.
pub(crate) fn run<H: Handler, B: Backend>(
    core: &mut Core<H>,
    backend: &mut B,
    inbox: &Receiver<Command>,
) -> io::Result<()> {
    let started = Instant::now();
    let clock = || started.elapsed().as_millis() as u32;
    let mut next_sweep = 0u32;
    let mut shutdown_deadline: Option<u32> = None;
    loop {
        core.ctx.now = clock();
        let timeout = if core.ctx.dirty.is_empty() && core.to_close.is_empty() {
            Duration::from_millis(250)
        } else {
            Duration::ZERO
        };
        backend
            .poll(core, timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("{} poll: {e}", backend.name())))?;
        core.ctx.shared.woken(usize::from(core.ctx.worker));
        while let Ok(command) = inbox.try_recv() {
            core.apply(command);
        }
        core.send_remote();
        flush(core, backend);
        core.publish_stats();
        core.ctx.now = clock();
        if core.ctx.now.wrapping_sub(next_sweep) < u32::MAX / 2 {
            next_sweep = core.ctx.now.wrapping_add(SWEEP_MS);
            core.sweep();
        }
        if core.ctx.shared.is_shutting_down() {
            let now = core.ctx.now;
            let deadline = *shutdown_deadline.get_or_insert_with(|| {
                backend.stop_accepting();
                let ids: Vec<usize> = core.conns.iter().map(|(id, _)| id).collect();
                for id in ids {
                    match core.conns[id].phase {
                        Phase::Open(_) => {
                            core.close_with(id, CloseCode::GOING_AWAY, "server shutting down")
                        }
                        _ => core.request_close(id, true),
                    }
                }
                let timeout =
                    core.ctx.settings.shutdown_timeout.as_millis().min(u32::MAX as u128 / 2);
                now.wrapping_add(timeout as u32)
            });
            if core.conns.is_empty() {
                return Ok(());
            }
            if now.wrapping_sub(deadline) < u32::MAX / 2 {
                let ids: Vec<usize> = core.conns.iter().map(|(id, _)| id).collect();
                for id in ids {
                    core.report_close(id, CloseCode::ABNORMAL, "shutdown timeout");
                    core.request_close(id, true);
                }
                flush(core, backend);
                backend.poll(core, Duration::ZERO)?;
                return Ok(());
            }
        }
    }
}

/// Sends what each dirty connection queued this iteration, applies backpressure, closes.
fn flush<H: Handler, B: Backend>(core: &mut Core<H>, backend: &mut B) {
    let high_water = core.ctx.settings.send_high_water;
    // Callbacks below (on_drain) may mark connections dirty again: those go to the next flush.
    let mut dirty = std::mem::take(&mut core.flushing);
    std::mem::swap(&mut dirty, &mut core.ctx.dirty);
    for id in dirty.drain(..) {
        let Some(conn) = core.conns.get_mut(id) else { continue };
        conn.io.dirty = false;
        let queue = &mut conn.io.queue;
        if queue.has_staged() && queue.in_flight().is_none() {
            // Caught up: the latest conflated messages go out with this send.
            queue.unstage(&mut core.ctx.pool, usize::MAX);
        }
        backend.flush(id, queue);
        let queued = conn.io.queue.len();
        if queued > high_water && !conn.io.over_high_water {
            conn.io.over_high_water = true;
            backend.set_reading(id, false);
        } else if conn.io.over_high_water && queued <= high_water {
            conn.io.over_high_water = false;
            backend.set_reading(id, true);
            core.callback(id, |h, ws| h.on_drain(ws));
        }
        if let Some(conn) = core.conns.get_mut(id) {
            conn.io.queue.recycle(&mut core.ctx.pool);
        }
    }
    core.flushing = dirty;
    for (id, hard) in std::mem::take(&mut core.to_close) {
        backend.close(id, hard);
    }
}
