//! One connection's state on its worker, and the `WebSocket` handle callbacks get.
//!
//! The protocol state (`ringside_proto`) and the I/O side (send queue, timers, flags) are kept
//! in separate fields so that a message borrowed from the protocol state and the handle that
//! writes to the send queue can live at the same time.

use std::sync::Arc;

use ringside_proto::frame::{self, OpCode};
use ringside_proto::{CloseCode, Connection, Error, Message};

use super::pubsub::{Publication, SubscribeError, Topics};
use super::queue::{Pool, SendQueue};
use super::Shared;
use crate::server::{Settings, SlowConsumer};

/// Identifies a connection within its server: worker index and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The worker that owns the connection.
    pub worker: u16,
    /// The slot on that worker (reused after the connection is gone).
    pub slot: u32,
}

/// Where a connection is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Waiting for the upgrade request; holds the part of it received so far.
    Handshake(Vec<u8>),
    /// Speaking WebSocket.
    Open(Box<Connection>),
    /// Nothing more is read or handled; waiting for the backend to release the socket.
    Done,
}

/// The I/O side of a connection.
#[derive(Debug, Default)]
pub(crate) struct Io {
    pub queue: SendQueue,
    /// Worker clock (wrapping milliseconds) when the connection was accepted, then (once open)
    /// when it last sent us anything.
    pub last_rx: u32,
    /// Worker clock when we started closing (0: not closing; set values have the low bit set).
    pub closing_since: u32,
    /// A close the handler asked for, applied once its callback returns.
    pub close_request: Option<(CloseCode, String)>,
    /// In the worker's dirty list (has bytes to flush this iteration).
    pub dirty: bool,
    /// `on_close` was called.
    pub close_reported: bool,
    /// The backend was asked to close the socket.
    pub close_requested: bool,
    /// The queue passed the high-water mark: reading paused, `on_drain` due when it falls back.
    pub over_high_water: bool,
    /// A ping for idleness is outstanding.
    pub idle_pinged: bool,
    /// The peer is gone (the backend reported a hang-up).
    pub hung_up: bool,
}

/// One slot of a worker's connection slab.
#[derive(Debug)]
pub(crate) struct Conn {
    pub phase: Phase,
    pub io: Io,
}

impl Conn {
    pub fn new(now: u32) -> Self {
        Conn { phase: Phase::Handshake(Vec::new()), io: Io { last_rx: now, ..Io::default() } }
    }
}

/// What a worker shares with the handles it gives out.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub worker: u16,
    pub settings: Settings,
    pub shared: Arc<Shared>,
    /// Connections with bytes to flush at the end of this iteration.
    pub dirty: Vec<usize>,
    /// Spare send queues, so idle connections hold none.
    pub pool: Pool,
    /// This worker's topics and subscriptions.
    pub topics: Topics,
    /// Publishes made in handler callbacks, delivered when the callback returns.
    pub outbox: Vec<Publication>,
    /// Counters, copied to the shared stats once per iteration.
    pub counts: Counts,
    pub now: u32,
}

/// A worker's counters (see `Stats`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub delivered: u64,
    pub dropped: u64,
    pub conflated: u64,
    pub slow_closed: u64,
}

impl Ctx {
    /// Marks `id` for flushing.
    pub fn mark_dirty(&mut self, id: usize, io: &mut Io) {
        if !io.dirty {
            io.dirty = true;
            self.dirty.push(id);
        }
    }
}

/// The handle a callback gets for its connection.
#[derive(Debug)]
pub struct WebSocket<'a> {
    pub(crate) id: usize,
    pub(crate) io: &'a mut Io,
    /// Whether data may still be sent (the protocol state is open and no close was asked).
    pub(crate) open: bool,
    pub(crate) ctx: &'a mut Ctx,
}

impl WebSocket<'_> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        ConnId { worker: self.ctx.worker, slot: self.id as u32 }
    }

    /// Queues a message; it leaves with everything else queued this loop iteration, in one send.
    /// `Err(Error::Closed)` once the connection is closing. Under the `drop` slow-consumer
    /// policy, a message that would pass the send limit is dropped and counted (`Ok(false)`).
    pub fn send(&mut self, msg: Message<'_>) -> Result<bool, Error> {
        let opcode = match msg {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        self.send_frame(opcode, msg.as_bytes())
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: &str) -> Result<bool, Error> {
        self.send(Message::Text(text))
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<bool, Error> {
        self.send(Message::Binary(data))
    }

    /// Queues a ping (at most 125 bytes of payload).
    pub fn ping(&mut self, payload: &[u8]) -> Result<bool, Error> {
        if payload.len() > 125 {
            return Err(Error::ControlTooLong);
        }
        self.send_frame(OpCode::Ping, payload)
    }

    fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) -> Result<bool, Error> {
        if !self.open {
            return Err(Error::Closed);
        }
        let header = frame::encode_header(true, opcode, None, payload.len() as u64);
        let len = header.as_bytes().len() + payload.len();
        if self.io.queue.len() + len > self.ctx.settings.send_limit {
            match self.ctx.settings.slow_consumer {
                SlowConsumer::Drop | SlowConsumer::Conflate => {
                    self.ctx.counts.dropped += 1;
                    return Ok(false);
                }
                SlowConsumer::Close => {
                    self.ctx.counts.slow_closed += 1;
                    // Queue nothing more: the close frame goes after what waits (memory stays
                    // bounded), and the close timeout drops TCP if the peer never reads it.
                    self.close(CloseCode::POLICY, "slow consumer");
                    return Ok(false);
                }
            }
        }
        self.io.queue.push_frame(&mut self.ctx.pool, header.as_bytes(), payload);
        self.ctx.mark_dirty(self.id, self.io);
        Ok(true)
    }

    /// Starts the close handshake with `code` and `reason` (cut to fit a close frame). Nothing
    /// more can be sent; `on_close` follows when the peer answers or the close timeout passes.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.open {
            self.open = false;
            self.io.close_request = Some((code, reason.to_owned()));
        }
    }

    /// Bytes queued for this connection and not yet sent.
    pub fn buffered_amount(&self) -> usize {
        self.io.queue.len()
    }

    /// Whether the connection can still send.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Sends `msg` to every open connection on every worker (this one included). The frame is
    /// encoded once; other workers get it through their channels.
    pub fn broadcast(&mut self, msg: Message<'_>) {
        self.ctx.shared.broadcast(Some(self.ctx.worker), msg);
    }

    /// Subscribes this connection to `topic`; `Ok(false)` if it already was. Subscriptions end
    /// when the connection closes.
    pub fn subscribe(&mut self, topic: &str) -> Result<bool, SubscribeError> {
        self.ctx.topics.subscribe(self.id, topic)
    }

    /// Unsubscribes from `topic`; `false` if it was not subscribed. Conflated messages of the
    /// topic still waiting for this connection are dropped.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        match self.ctx.topics.unsubscribe(self.id, topic) {
            Some(id) => {
                self.io.queue.unstage_topic(id);
                true
            }
            None => false,
        }
    }

    /// Whether this connection subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.ctx.topics.is_subscribed(self.id, topic)
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
        self.ctx.outbox.push(Publication::new(topic, key, msg));
    }
}
