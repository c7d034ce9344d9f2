//! What reaches many connections, or reaches a connection from elsewhere: broadcasts,
//! publishes (here and to the other workers), and the commands other threads send (addressed
//! sends and closes, deferred closures). Every slow-consumer decision goes through
//! `TopicPolicy::verdict`, with the limit lowered to the output budget's cap while the worker
//! is over budget.
//!
//! Fan-out work per loop iteration is bounded ([`WORK_PER_TURN`] deliveries, or
//! [`FANOUT_TIME`] of them, whichever comes first; a publish is never split): publishes past it
//! wait in order in `Core::deferred` for the next iterations (the loop then polls without
//! waiting), and a connection that publishes while some wait stops being read until they are
//! delivered; the same while another worker has a backlog of this one's batches. So a publish
//! storm cannot hold the loop away from handshakes and echoes for longer than one iteration's
//! worth of deliveries, nor pile up in a slower worker's inbox.

use std::any::Any;

use bytes::Bytes;

use super::Core;
use crate::api::{ConnId, Handler, SendStatus};
use crate::config::{SlowConsumer, TopicPolicy};
use crate::runtime::conn::{flag, Phase};
use crate::runtime::deflate::{self, Fanned};
use crate::runtime::handle::{lookup, Frame, Verdict};
use crate::runtime::pubsub::Publication;
use crate::runtime::Command;

/// Deliveries (subscribers visited, connections broadcast to) one loop iteration makes before
/// leaving the rest for the next: about 20 ms of copying in an optimised build. Smaller
/// bounds cork fewer publishes per send: 65,536 (or 5 ms) cost 40-60% more server CPU per
/// delivery at fan-out saturation.
pub(super) const WORK_PER_TURN: usize = 256 << 10;
/// The same bound in time: fan-out stops for the iteration once it has taken this long (checked
/// every [`CLOCK_EVERY`] deliveries). With replies flushed before bulk output, this is most of
/// what a fresh client waits per iteration behind a publish storm: 20 ms here put the p99 of a
/// connect, upgrade and echo under 5,000 non-reading subscribers at 45-104 ms, 8 ms at 30-63
/// ms. Fan-out at saturation (1,000 subscribers) measured the same with either: 5.2-5.4M
/// deliveries/s at 0.14 us of server CPU each.
const FANOUT_TIME: std::time::Duration = std::time::Duration::from_millis(8);
const CLOCK_EVERY: usize = 4096;
/// Publishes waiting past their iteration before the connections making them stop being read
/// (and below half of which they are read again): a few left over from a busy iteration are
/// normal, and pausing a publisher costs a cancel and a re-arm on io_uring.
pub(super) const DEFER_THROTTLE: usize = 256;
/// Commands another worker may have waiting before this one stops reading its publishers.
const REMOTE_BACKLOG: usize = 16;

impl<H: Handler> Core<H> {
    /// Starts counting an iteration's fan-out work.
    pub(super) fn start_turn(&mut self) {
        self.turn_work = 0;
        self.clock_check = CLOCK_EVERY;
        self.turn_started = None;
    }

    /// Whether this iteration has done its share of fan-out (see [`WORK_PER_TURN`]).
    /// None at all while earlier deliveries still wait for their flush (bulk output the
    /// last flush had no time for): what is queued but not flushed is neither sent nor a slow
    /// consumer's, so nothing else would bound it.
    pub(super) fn turn_full(&mut self) -> bool {
        if !self.bulk.is_empty() {
            return true;
        }
        if self.turn_work >= WORK_PER_TURN {
            return true;
        }
        // The iteration's fan-out starts at its first look here: the wait for events before it
        // is not fan-out time, and an iteration with no fan-out reads no clock for it.
        let started = *self.turn_started.get_or_insert_with(std::time::Instant::now);
        if self.turn_work >= self.clock_check {
            self.clock_check = self.turn_work + CLOCK_EVERY;
            if started.elapsed() >= FANOUT_TIME {
                self.turn_work = WORK_PER_TURN;
                return true;
            }
        }
        false
    }

    pub(super) fn apply(&mut self, command: Command) {
        match command {
            Command::Broadcast(frame) => {
                let policy = self.local.send_policy();
                self.turn_work += self.conns.len();
                let local = &mut self.local;
                let mut fanned = Fanned::new(&frame);
                let mut slow = std::mem::take(&mut self.slow);
                for (id, conn) in self.conns.iter_mut() {
                    if !conn.can_send() {
                        continue;
                    }
                    let send = conn.io.deflate;
                    let shared = fanned.for_shared(send, &mut local.deflate, &mut local.counts);
                    let len = shared.map_or(frame.len(), Bytes::len);
                    let limit = local.budget.limit_for(&conn.io.queue, policy.limit);
                    let policy = TopicPolicy { limit, ..policy };
                    match policy.verdict(conn.io.queue.len(), len) {
                        Verdict::Queue => {
                            let own;
                            let frame = match shared {
                                Some(shared) => shared,
                                None => {
                                    let counts = &mut local.counts;
                                    own = local.deflate.compress_frame(id, send, &frame, counts);
                                    own.as_ref().unwrap_or(&frame)
                                }
                            };
                            conn.io.queue.push_published(&mut local.pool, frame);
                            local.budget.pushed += frame.len();
                            local.counts.messages_out += 1;
                            local.mark_bulk(id, &mut conn.io);
                        }
                        Verdict::Drop => local.counts.dropped += 1,
                        Verdict::Close => slow.push(id),
                    }
                }
                self.close_slow(&mut slow);
                self.slow = slow;
            }
            Command::Publish(batch) => {
                for p in batch {
                    if self.deferred.is_empty() && !self.turn_full() {
                        self.deliver(&p);
                    } else {
                        // Delivered by a later iteration, still in order.
                        self.deferred.push_back((p, false));
                    }
                }
            }
            Command::Send(id, frame) => {
                let _ = self.send_to(id, Frame::Shared(&frame));
            }
            Command::Close(id, code, reason) => {
                if let Some(conn) = lookup(&mut self.conns, &mut self.local, id) {
                    if let Phase::Open(o) = &mut conn.phase {
                        if o.proto.is_open() && o.app.close_request.is_none() {
                            o.app.close_request = Some(Box::new((code, reason)));
                        }
                    }
                    self.after_event(id.slot as usize);
                }
            }
            Command::Defer(f) => f(self as &mut dyn Any),
            Command::Packed(frames, to) => {
                for (id, start, end) in to {
                    // Small frames: copied into the queue, so the buffer goes with this command.
                    let frame = frames.get(start as usize..end as usize).unwrap_or_default();
                    let _ = self.send_to(id, Frame::Parts(frame, &[]));
                }
            }
            Command::Batch(commands) => {
                for command in commands {
                    self.apply(command);
                }
            }
        }
    }

    /// Queues a frame for connection `id` (checked against its generation).
    fn send_to(&mut self, id: ConnId, frame: Frame<'_>) -> SendStatus {
        let Some(conn) = lookup(&mut self.conns, &mut self.local, id) else {
            return SendStatus::Closed;
        };
        if !conn.can_send() {
            return SendStatus::Closing;
        }
        let slot = id.slot as usize;
        let status = match frame {
            Frame::Shared(bytes) if conn.io.deflate.is_on() => {
                deflate::queue_frame(&mut self.local, slot, conn, bytes)
            }
            _ => {
                let Phase::Open(o) = &mut conn.phase else { return SendStatus::Closed };
                self.local.queue(slot, &mut conn.io, &mut o.app.close_request, frame)
            }
        };
        if status == SendStatus::Closing {
            self.after_event(slot);
        }
        status
    }

    /// Delivers the publishes handler callbacks made: here at once, to other workers with this
    /// iteration's batch, to other nodes through the bus (once each: publishes that arrive
    /// from the bus or another worker come as `Command::Publish` and never pass here).
    pub(super) fn drain_outbox(&mut self) {
        while !self.local.outbox.is_empty() {
            let mut outbox = std::mem::take(&mut self.local.outbox);
            for p in outbox.drain(..) {
                self.local.shared.publish_to_bus(&p);
                self.published += 1;
                if self.deferred.is_empty() && !self.turn_full() {
                    self.deliver_everywhere(&p);
                } else {
                    self.deferred.push_back((p, true));
                }
            }
            if self.local.outbox.is_empty() {
                // Keep the allocation for the next callback.
                self.local.outbox = outbox;
            }
        }
    }

    /// Whether another worker has more than [`REMOTE_BACKLOG`] commands waiting: this worker's
    /// publishers then wait too, so that a worker slower at fan-out (more subscribers, more
    /// of them stalled) does not accumulate batches without bound.
    pub(super) fn remote_backlogged(&self) -> bool {
        let me = usize::from(self.local.worker);
        let shared = &self.local.shared;
        (0..shared.workers()).any(|w| w != me && shared.backlog(w) > REMOTE_BACKLOG)
    }

    /// Delivers a publish made on this worker: here, and into each other worker's batch.
    pub(super) fn deliver_everywhere(&mut self, p: &Publication) {
        let me = usize::from(self.local.worker);
        self.deliver(p);
        for (worker, batch) in self.remote.iter_mut().enumerate() {
            if worker != me {
                batch.push(p.copied());
            }
        }
    }

    /// Delivers waiting publishes, oldest first, while this iteration's work allows.
    pub(super) fn drain_deferred(&mut self) {
        while !self.deferred.is_empty() && !self.turn_full() {
            let Some((p, here)) = self.deferred.pop_front() else { return };
            if here {
                self.deliver_everywhere(&p);
            } else {
                self.deliver(&p);
            }
        }
    }

    /// Hands `p` to this worker's subscribers of its topic, applying the topic's policy to each
    /// subscriber that is over the limit.
    fn deliver(&mut self, p: &Publication) {
        let local = &mut self.local;
        let Some((topic_id, topic)) = local.topics.find(&p.topic) else { return };
        let topic_policy = topic.policy;
        self.turn_work += topic.subscribers.len();
        let mut fanned = Fanned::new(&p.frame);
        let mut slow = std::mem::take(&mut self.slow);
        for &id in &topic.subscribers {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            if !conn.can_send() {
                continue;
            }
            // What this subscriber gets: the plain frame, or one compressed for everyone whose
            // server side keeps no context (`None`: its own compressor, which keeps context,
            // compresses the plain frame when it is queued).
            let send = conn.io.deflate;
            let shared = fanned.for_shared(send, &mut local.deflate, &mut local.counts);
            let len = shared.map_or(p.frame.len(), Bytes::len);
            let queue = &mut conn.io.queue;
            let limit = local.budget.limit_for(queue, topic_policy.limit);
            let policy = TopicPolicy { limit, ..topic_policy };
            let behind = queue.has_staged() || policy.verdict(queue.len(), len) != Verdict::Queue;
            if policy.slow_consumer == SlowConsumer::Conflate && behind {
                // Behind: wait in the stage (replacing an older message of the same key)
                // until what is in flight is sent; see `flush`. A connection with its own
                // compressor stages the plain frame, compressed as it leaves the stage.
                let staged = shared.unwrap_or(&p.frame).clone();
                if queue.stage(&mut local.pool, (topic_id, p.key), staged) {
                    local.counts.conflated += 1;
                } else {
                    local.budget.pushed += len;
                }
            } else {
                match policy.verdict(queue.len(), len) {
                    Verdict::Queue => {
                        let own;
                        let frame = match shared {
                            Some(shared) => shared,
                            None => {
                                let counts = &mut local.counts;
                                own = local.deflate.compress_frame(id, send, &p.frame, counts);
                                own.as_ref().unwrap_or(&p.frame)
                            }
                        };
                        queue.push_published(&mut local.pool, frame);
                        local.budget.pushed += len;
                        local.counts.delivered += 1;
                    }
                    Verdict::Drop => {
                        local.counts.dropped += 1;
                        continue;
                    }
                    Verdict::Close => {
                        slow.push(id);
                        continue;
                    }
                }
            }
            if !conn.io.has(flag::DIRTY) {
                // `Local::mark_bulk`, with `local.topics` borrowed.
                conn.io.set(flag::DIRTY, true);
                local.bulk.push(id);
            }
        }
        self.close_slow(&mut slow);
        self.slow = slow;
    }

    /// Closes (1008) the connections in `slow` and empties it.
    pub(super) fn close_slow(&mut self, slow: &mut Vec<usize>) {
        for id in slow.drain(..) {
            self.close_slow_consumer(id);
        }
    }

    /// Closes `id` with 1008 for falling behind: what it has pending is dropped (the close
    /// frame follows what is already in flight, whole frames only) and it leaves its topics
    /// at once, so that publishes neither queue for it nor visit it while it closes.
    pub(super) fn close_slow_consumer(&mut self, id: usize) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.io.queue.drop_pending();
        }
        self.local.topics.unsubscribe_all(id);
        self.local.counts.slow_closed += 1;
        self.close_with(id, ringside_proto::CloseCode::POLICY, "slow consumer");
    }

    /// Sends this iteration's publishes to the other workers, one batch each.
    pub(super) fn send_remote(&mut self) {
        for (worker, batch) in self.remote.iter_mut().enumerate() {
            if !batch.is_empty() {
                self.local.shared.send(worker, Command::Publish(std::mem::take(batch)));
            }
        }
    }
}
