//! The handles callbacks get: [`WebSocket`] for one connection, [`Ctx`] for the whole worker
//! (its tick, deferred closures), and [`Local`], the worker state both write into.
//!
//! A send never touches the socket: it copies the frame into the connection's send queue and
//! marks the connection dirty; the worker flushes every dirty connection once at the end of the
//! loop iteration (corked).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringside_proto::frame::{self, OpCode};
use ringside_proto::{CloseCode, Message};
use slab::Slab;

use super::budget::Budget;
use super::conn::{flag, App, Conn, Io, Phase};
use super::deflate::WorkerDeflate;
use super::pubsub::{Publication, SubscribeError, Topics};
use super::queue::Pool;
use super::worker::timers::Timers;
use super::Shared;
use crate::api::{ConnId, Error, SendStatus};
use crate::config::{Settings, SlowConsumer, TopicPolicy};
use crate::metrics::WorkerMetricsRef;
use crate::server::Sender;

/// A worker's state that handles write into: everything but the connections and the handler.
#[derive(Debug)]
pub(crate) struct Local {
    pub worker: u16,
    pub settings: Settings,
    pub shared: Arc<Shared>,
    /// Connections with replies to flush at the end of this iteration: handshake answers,
    /// echoes, pongs, addressed sends. All of them are flushed every iteration.
    pub dirty: Vec<usize>,
    /// Connections with bulk output to flush: fan-out deliveries and the rest of a send the
    /// socket took only part of. Flushed after the replies, for a bounded time per iteration
    /// (see `worker::flush`).
    pub bulk: Vec<usize>,
    /// Spare send queues, so idle connections hold none.
    pub pool: Pool,
    /// Queued output held, against this worker's share of `max_buffered_output`.
    pub budget: Budget,
    /// This worker's topics and subscriptions.
    pub topics: Topics,
    /// Publishes made in handler callbacks, delivered when the callback returns.
    pub outbox: Vec<Publication>,
    /// Connections a [`Ctx`] asked to close (outside their own callbacks): the worker applies
    /// the close when the tick or deferred closure returns.
    pub touched: Vec<usize>,
    pub timers: Timers,
    /// Counters, copied to the shared stats once per iteration.
    pub counts: Counts,
    /// This worker's Prometheus counters: what `counts` holds is stored there once per
    /// iteration; rarer events (upgrades, closes, the loop histogram) are written directly.
    pub metrics: WorkerMetricsRef,
    /// The worker clock: milliseconds since it started, and the same wrapped into a `u32` for
    /// the per-connection timestamps.
    pub now_ms: u64,
    pub now: u32,
    /// permessage-deflate: compressors, the memory budget, what connections hold.
    pub deflate: WorkerDeflate,
    /// The receive buffer of the read being handled, which replies to its connection may
    /// borrow from.
    pub rx: Rx,
}

/// The receive buffer of the read being handled (`Driver::on_data`): a large payload that lies
/// in it and is sent back on the same connection is queued by reference, not copied
/// ([`SendQueue::push_borrowed`](super::queue::SendQueue::push_borrowed)). The backend writes
/// it through right after the read, from where it arrived, and the worker settles the queue
/// before the read's handling ends (copying what the socket did not take), unless the backend
/// keeps the buffer for a send that still reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rx {
    slot: usize,
    start: usize,
    end: usize,
    /// Something was queued by reference.
    pub used: bool,
}

impl Rx {
    /// No read is being handled.
    pub const NONE: Rx = Rx { slot: usize::MAX, start: 0, end: 0, used: false };

    /// `data`, read from connection `slot`.
    pub fn over(slot: usize, data: &[u8]) -> Rx {
        let start = data.as_ptr() as usize;
        Rx { slot, start, end: start + data.len(), used: false }
    }

    /// Whether `payload`, sent to `slot`, may be queued by reference: large enough to be
    /// written through, and inside this read's buffer.
    fn lends(&self, slot: usize, payload: &[u8]) -> bool {
        let at = payload.as_ptr() as usize;
        slot == self.slot
            && payload.len() >= super::worker::WRITE_THROUGH_MIN
            && at >= self.start
            && at + payload.len() <= self.end
    }
}

/// A worker's counters (see `Stats`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub delivered: u64,
    pub dropped: u64,
    pub conflated: u64,
    pub slow_closed: u64,
    pub stale: u64,
    pub accept_errors: u64,
    pub compressed_shared: u64,
    pub compressed_per_conn: u64,
    pub deflate_declined: u64,
    /// Connections the backend accepted (handed to `on_accept`, refused ones included).
    pub accepted: u64,
    /// Data messages received (whole, after reassembly).
    pub messages_in: u64,
    /// Data messages queued by sends and broadcasts (publishes are `delivered`, conflated
    /// ones `unstaged`).
    pub messages_out: u64,
    /// Conflated publishes moved from the stage into the send queue.
    pub unstaged: u64,
    /// Bytes the backend delivered from sockets.
    pub bytes_in: u64,
    pub pings: u64,
    pub pongs: u64,
}

/// What the slow-consumer policy says about `len` more bytes on a queue holding `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Queue,
    Drop,
    Close,
}

impl TopicPolicy {
    /// The one place the slow-consumer decision is made (sends, broadcasts and publishes).
    /// Conflation of publishes happens before this is asked (see `fanout`); for anything else
    /// `Conflate` drops.
    pub(crate) fn verdict(&self, queued: usize, len: usize) -> Verdict {
        if queued + len <= self.limit {
            Verdict::Queue
        } else {
            match self.slow_consumer {
                SlowConsumer::Close => Verdict::Close,
                SlowConsumer::Drop | SlowConsumer::Conflate => Verdict::Drop,
            }
        }
    }
}

impl Local {
    /// Marks `id` for flushing this iteration, before any bulk output.
    pub fn mark_dirty(&mut self, id: usize, io: &mut Io) {
        if !io.has(flag::URGENT) {
            io.set(flag::URGENT | flag::DIRTY, true);
            self.dirty.push(id);
        }
    }

    /// Marks `id` for flushing with the bulk output (unless it is marked already).
    pub fn mark_bulk(&mut self, id: usize, io: &mut Io) {
        if !io.has(flag::DIRTY) {
            io.set(flag::DIRTY, true);
            self.bulk.push(id);
        }
    }

    /// The policy for what is not a publish.
    pub fn send_policy(&self) -> TopicPolicy {
        TopicPolicy { slow_consumer: self.settings.slow_consumer, limit: self.settings.send_limit }
    }

    pub fn id(&self, slot: usize, io: &Io) -> ConnId {
        ConnId { worker: self.worker, slot: slot as u32, generation: io.generation }
    }

    /// Queues a frame for one connection that may send, under the send limit and policy.
    /// `frame` is either a header and payload to copy, or a whole encoded frame to share.
    pub fn queue(
        &mut self,
        slot: usize,
        io: &mut Io,
        close_request: &mut super::conn::CloseRequest,
        frame: Frame<'_>,
    ) -> SendStatus {
        let len = frame.len();
        let mut policy = self.send_policy();
        policy.limit = self.budget.limit_for(&io.queue, policy.limit);
        match policy.verdict(io.queue.len(), len) {
            Verdict::Queue => {}
            Verdict::Drop => {
                self.counts.dropped += 1;
                return SendStatus::Dropped;
            }
            Verdict::Close => {
                self.counts.slow_closed += 1;
                // Queue nothing more: the close frame goes after what waits (memory stays
                // bounded), and the close timeout drops TCP if the peer never reads it.
                *close_request = Some(Box::new((CloseCode::POLICY, "slow consumer".into())));
                return SendStatus::Closing;
            }
        }
        // Counted as a message whatever it is: `WebSocket::ping` takes its pings back out, so
        // the per-message path pays one add.
        self.counts.messages_out += 1;
        match frame {
            Frame::Parts(header, payload)
                if self.rx.lends(slot, payload) && io.queue.in_flight().is_none() =>
            {
                self.rx.used = true;
                // SAFETY: the payload lies in the receive buffer of the read being handled,
                // which the backend keeps unchanged until the worker settles this queue at the
                // end of that read (`Driver::on_data`), or for as long as a send it started
                // then still reads it.
                unsafe { io.queue.push_borrowed(&mut self.pool, header, payload) };
            }
            Frame::Parts(header, payload) => io.queue.push_frame(&mut self.pool, header, payload),
            Frame::Shared(bytes) => io.queue.push_published(&mut self.pool, bytes),
        }
        self.budget.pushed += len;
        self.mark_dirty(slot, io);
        if io.queue.len() > self.settings.send_high_water {
            SendStatus::Backpressure
        } else {
            SendStatus::Queued
        }
    }

    /// Arms a timer for connection `slot`.
    pub fn set_timer(&mut self, slot: usize, io: &Io, after: Duration, token: u64) {
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2).min(u64::MAX / 2);
        self.timers.push(self.now_ms + after, slot as u32, io.generation, token);
    }
}

/// A frame on its way into a send queue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Frame<'a> {
    /// A header and a payload, copied into the queue.
    Parts(&'a [u8], &'a [u8]),
    /// A whole encoded frame, shared (or copied when small).
    Shared(&'a Bytes),
}

impl Frame<'_> {
    fn len(&self) -> usize {
        match self {
            Frame::Parts(h, p) => h.len() + p.len(),
            Frame::Shared(b) => b.len(),
        }
    }
}

/// The handle a callback gets for its connection.
pub struct WebSocket<'a, C = ()> {
    pub(crate) slot: usize,
    pub(crate) io: &'a mut Io,
    pub(crate) app: &'a mut App<C>,
    /// Whether data may still be sent (the protocol state is open and no close was asked).
    pub(crate) open: bool,
    pub(crate) local: &'a mut Local,
}

impl<C> std::fmt::Debug for WebSocket<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket").field("id", &self.id()).field("open", &self.open).finish()
    }
}

impl<'a, C> WebSocket<'a, C> {
    /// This connection's id: keep it to send to the connection later, from any thread.
    pub fn id(&self) -> ConnId {
        self.local.id(self.slot, self.io)
    }

    /// The connection's state (made by `on_upgrade`).
    pub fn data(&self) -> &C {
        &self.app.data
    }

    /// The connection's state, to change.
    pub fn data_mut(&mut self) -> &mut C {
        &mut self.app.data
    }

    /// The client's address: the TCP peer's, unless a trusted proxy named the client (see
    /// [`Upgrading::peer_addr`](crate::Upgrading::peer_addr)).
    pub fn peer_addr(&self) -> SocketAddr {
        self.app.peer()
    }

    /// The address of the TCP connection's other end (the proxy, behind one).
    pub fn tcp_peer_addr(&self) -> SocketAddr {
        self.app.tcp_peer()
    }

    /// The path of the upgrade request, without the query.
    pub fn path(&self) -> &str {
        let target = self.app.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The query of the upgrade request (after `?`), if it had one.
    pub fn query(&self) -> Option<&str> {
        self.app.target().split_once('?').map(|(_, q)| q)
    }

    /// The subprotocol chosen at the upgrade, if any.
    pub fn protocol(&self) -> Option<&str> {
        let p = usize::from(self.app.protocol);
        self.local.settings.subprotocols.get(p).map(String::as_str)
    }

    /// Queues a message; it leaves with everything else queued this loop iteration, in one send.
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        let opcode = match msg {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        self.send_frame(opcode, msg.as_bytes())
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.send(Message::Text(text))
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.send(Message::Binary(data))
    }

    /// Queues a ping (at most 125 bytes of payload); the answer arrives in `on_pong`.
    pub fn ping(&mut self, payload: &[u8]) -> Result<SendStatus, Error> {
        if payload.len() > 125 {
            return Err(Error::ControlTooLong);
        }
        let status = self.send_frame(OpCode::Ping, payload);
        if matches!(status, SendStatus::Queued | SendStatus::Backpressure) {
            // A ping is not a message (see `Local::queue`).
            self.local.counts.messages_out -= 1;
        }
        Ok(status)
    }

    fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) -> SendStatus {
        if !self.open {
            return SendStatus::Closing;
        }
        if self.io.deflate.is_on() && !opcode.is_control() {
            return self.send_deflated(opcode, payload);
        }
        let header = frame::encode_header(true, opcode, None, payload.len() as u64);
        let frame = Frame::Parts(header.as_bytes(), payload);
        let status = self.local.queue(self.slot, self.io, &mut self.app.close_request, frame);
        if status == SendStatus::Closing {
            self.open = false;
        }
        status
    }

    /// Starts the close handshake with `code` and `reason` (cut to fit a close frame). Nothing
    /// more can be sent; `on_close` follows when the peer answers or the close timeout passes.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.open {
            self.open = false;
            self.app.close_request = Some(Box::new((code, reason.into())));
        }
    }

    /// Calls [`Handler::on_timer`](crate::Handler::on_timer) with `token` after `after`
    /// (millisecond resolution; the worker checks timers once per loop iteration, so one fires
    /// up to an iteration late, never early). A connection may have many timers; closing it
    /// cancels them all.
    pub fn set_timer(&mut self, after: Duration, token: u64) {
        self.local.set_timer(self.slot, self.io, after, token);
    }

    /// Bytes queued for this connection and not yet sent.
    pub fn buffered_amount(&self) -> usize {
        self.io.queue.len()
    }

    /// Whether the connection can still send.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The worker this connection lives on.
    pub fn worker(&self) -> usize {
        usize::from(self.local.worker)
    }

    /// A handle for sending to any connection from any thread.
    pub fn sender(&self) -> Sender {
        Sender::new(Arc::clone(&self.local.shared))
    }

    /// Sends `msg` to every open connection on every worker (this one included). The frame is
    /// encoded once; other workers get it through their channels.
    pub fn broadcast(&mut self, msg: Message<'_>) {
        self.local.shared.broadcast(msg);
    }

    /// Subscribes this connection to `topic`; `Ok(false)` if it already was. Subscriptions end
    /// when the connection closes.
    pub fn subscribe(&mut self, topic: &str) -> Result<bool, SubscribeError> {
        self.local.topics.subscribe(self.slot, topic)
    }

    /// Unsubscribes from `topic`; `false` if it was not subscribed. Conflated messages of the
    /// topic still waiting for this connection are dropped.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        match self.local.topics.unsubscribe(self.slot, topic) {
            Some(id) => {
                self.io.queue.unstage_topic(id);
                true
            }
            None => false,
        }
    }

    /// Whether this connection subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.local.topics.is_subscribed(self.slot, topic)
    }

    /// Publishes `msg` to every subscriber of `topic` on every worker, this connection included
    /// if it subscribes. Encoded once; delivered when this callback returns, and in publish
    /// order to each subscriber. Works on a closing connection too (it only needs the worker).
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) {
        self.publish_keyed(topic, 0, msg);
    }

    /// Publishes with a conflation key: on a topic whose policy is `Conflate`, a subscriber that
    /// lags gets only the latest message for each key.
    pub fn publish_keyed(&mut self, topic: &str, key: u64, msg: Message<'_>) {
        self.local.outbox.push(Publication::new(topic, key, msg));
    }
}

/// The worker's context for [`Handler::on_tick`](crate::Handler::on_tick) and deferred
/// closures: send to, close and look up any connection of this worker, publish.
pub struct Ctx<'a, C> {
    pub(crate) conns: &'a mut Slab<Conn<C>>,
    pub(crate) local: &'a mut Local,
}

impl<C> std::fmt::Debug for Ctx<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("worker", &self.local.worker)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl<C> Ctx<'_, C> {
    /// This worker's index.
    pub fn worker(&self) -> usize {
        usize::from(self.local.worker)
    }

    /// Milliseconds since the worker started (its clock for timers and ticks).
    pub fn now_ms(&self) -> u64 {
        self.local.now_ms
    }

    /// Open connections on this worker.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Calls `f` with the handle of connection `id`, if it is open and on this worker; what
    /// `f` asks (sends, a close) is applied when it returns, as after any callback.
    pub fn with<R>(&mut self, id: ConnId, f: impl FnOnce(&mut WebSocket<'_, C>) -> R) -> Option<R> {
        let local = &mut *self.local;
        let conn = lookup(self.conns, local, id)?;
        let open = conn.can_send();
        let Phase::Open(o) = &mut conn.phase else { return None };
        let mut ws =
            WebSocket { slot: id.slot as usize, io: &mut conn.io, app: &mut o.app, open, local };
        let r = f(&mut ws);
        self.local.touched.push(id.slot as usize);
        Some(r)
    }

    /// Queues `msg` for connection `id`.
    pub fn send(&mut self, id: ConnId, msg: Message<'_>) -> SendStatus {
        self.with(id, |ws| ws.send(msg)).unwrap_or(SendStatus::Closed)
    }

    /// Starts closing connection `id`; `false` if it is gone (or the id is stale).
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) -> bool {
        self.with(id, |ws| ws.close(code, reason)).is_some()
    }

    /// The state of connection `id`, if it is open on this worker.
    pub fn data_mut(&mut self, id: ConnId) -> Option<&mut C> {
        match &mut lookup(self.conns, self.local, id)?.phase {
            Phase::Open(o) => Some(&mut o.app.data),
            _ => None,
        }
    }

    /// Publishes `msg` to every subscriber of `topic` on every worker.
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) {
        self.local.outbox.push(Publication::new(topic, 0, msg));
    }

    /// Publishes with a conflation key.
    pub fn publish_keyed(&mut self, topic: &str, key: u64, msg: Message<'_>) {
        self.local.outbox.push(Publication::new(topic, key, msg));
    }

    /// A handle for sending to any connection from any thread.
    pub fn sender(&self) -> Sender {
        Sender::new(Arc::clone(&self.local.shared))
    }
}

/// The connection `id` names, if it is still the one that id was given for.
pub(crate) fn lookup<'c, C>(
    conns: &'c mut Slab<Conn<C>>,
    local: &mut Local,
    id: ConnId,
) -> Option<&'c mut Conn<C>> {
    let found = (id.worker == local.worker)
        .then(|| conns.get_mut(id.slot as usize))
        .flatten()
        .filter(|c| c.io.generation == id.generation && matches!(c.phase, Phase::Open(_)));
    if found.is_none() {
        local.counts.stale += 1;
    }
    found
}
