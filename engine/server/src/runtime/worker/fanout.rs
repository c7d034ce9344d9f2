//! What reaches many connections, or reaches a connection from elsewhere: broadcasts,
//! publishes (here and to the other workers), and the commands other threads send (addressed
//! sends and closes, deferred closures). Every slow-consumer decision goes through
//! `TopicPolicy::verdict`.

use std::any::Any;

use bytes::Bytes;

use super::Core;
use crate::api::{ConnId, Handler, SendStatus};
use crate::config::SlowConsumer;
use crate::runtime::conn::Phase;
use crate::runtime::deflate::{self, Fanned};
use crate::runtime::handle::{lookup, Frame, Verdict};
use crate::runtime::pubsub::Publication;
use crate::runtime::Command;

impl<H: Handler> Core<H> {
    pub(super) fn apply(&mut self, command: Command) {
        match command {
            Command::Broadcast(frame) => {
                let policy = self.local.send_policy();
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
                            local.counts.messages_out += 1;
                            local.mark_dirty(id, &mut conn.io);
                        }
                        Verdict::Drop => local.counts.dropped += 1,
                        Verdict::Close => slow.push(id),
                    }
                }
                self.close_slow(&mut slow);
                self.slow = slow;
            }
            Command::Publish(batch) => {
                for p in &batch {
                    self.deliver(p);
                }
            }
            Command::Send(id, frame) => {
                let _ = self.send_to(id, Frame::Shared(&frame));
            }
            Command::Close(id, code, reason) => {
                if let Some(conn) = lookup(&mut self.conns, &mut self.local, id) {
                    if let Phase::Open(o) = &mut conn.phase {
                        if o.proto.is_open() && o.app.close_request.is_none() {
                            o.app.close_request = Some((code, reason));
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
        let me = usize::from(self.local.worker);
        while !self.local.outbox.is_empty() {
            let mut outbox = std::mem::take(&mut self.local.outbox);
            for p in outbox.drain(..) {
                self.local.shared.publish_to_bus(&p);
                self.deliver(&p);
                for (worker, batch) in self.remote.iter_mut().enumerate() {
                    if worker != me {
                        batch.push(p.copied());
                    }
                }
            }
            if self.local.outbox.is_empty() {
                // Keep the allocation for the next callback.
                self.local.outbox = outbox;
            }
        }
    }

    /// Hands `p` to this worker's subscribers of its topic, applying the topic's policy to each
    /// subscriber that is over the limit.
    fn deliver(&mut self, p: &Publication) {
        let local = &mut self.local;
        let Some((topic_id, topic)) = local.topics.find(&p.topic) else { return };
        let policy = topic.policy;
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
            let behind = queue.has_staged() || policy.verdict(queue.len(), len) != Verdict::Queue;
            if policy.slow_consumer == SlowConsumer::Conflate && behind {
                // Behind: wait in the stage (replacing an older message of the same key)
                // until what is in flight is sent; see `flush`. A connection with its own
                // compressor stages the plain frame, compressed as it leaves the stage.
                let staged = shared.unwrap_or(&p.frame).clone();
                if queue.stage(&mut local.pool, (topic_id, p.key), staged) {
                    local.counts.conflated += 1;
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
            if !conn.io.has(crate::runtime::conn::flag::DIRTY) {
                conn.io.set(crate::runtime::conn::flag::DIRTY, true);
                local.dirty.push(id);
            }
        }
        self.close_slow(&mut slow);
        self.slow = slow;
    }

    /// Closes (1008) the connections in `slow` and empties it.
    fn close_slow(&mut self, slow: &mut Vec<usize>) {
        for id in slow.drain(..) {
            self.local.counts.slow_closed += 1;
            self.close_with(id, ringside_proto::CloseCode::POLICY, "slow consumer");
        }
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
