//! The frame stream of an open connection: parse messages in place and hand them to the
//! handler, then move what the protocol and the handler produced into the send queue.

use ringside_proto::{CloseCode, Event};

use super::Core;
use crate::api::Handler;
use crate::runtime::conn::{flag, Phase};
use crate::runtime::handle::WebSocket;

impl<H: Handler> Core<H> {
    /// Bytes of the frame stream, parsed within the connection's share of this loop iteration
    /// (see `input`): returns how many were consumed; the caller keeps the rest for the next
    /// iteration. Everything is consumed once the protocol stops reading (closed or failed).
    pub(super) fn on_frames(&mut self, id: usize, data: &mut [u8]) -> usize {
        let mut pos = 0;
        let (turn, now) = (self.inputs.turn, self.local.now);
        loop {
            let Some(conn) = self.conns.get_mut(id) else { return data.len() };
            let open = conn.can_send();
            let Phase::Open(o) = &mut conn.phase else { return data.len() };
            if o.proto.is_closed() {
                pos = data.len();
                break;
            }
            let Some(allowance) = self.inputs.allowance(&mut o.input, turn) else { break };
            let end = data.len().min(pos.saturating_add(allowance));
            let mut ws = WebSocket {
                slot: id,
                io: &mut conn.io,
                app: &mut o.app,
                open,
                local: &mut self.local,
            };
            let mut refuse = None;
            let closed = match o.proto.read(&mut data[pos..end]) {
                Ok((n, None)) => {
                    // All of `data[pos..end]`: the end of the data, or of the allowance.
                    pos += n;
                    o.input.bytes = o.input.bytes.saturating_add(n as u32);
                    if pos == data.len() {
                        break;
                    }
                    continue;
                }
                Ok((n, Some(event))) => {
                    pos += n;
                    o.input.bytes = o.input.bytes.saturating_add(n as u32);
                    o.input.frames = o.input.frames.saturating_add(1);
                    match event {
                        Event::Message(msg) => {
                            o.input.message_since = 0;
                            ws.local.counts.messages_in += 1;
                            self.handler.on_message(&mut ws, msg);
                            None
                        }
                        Event::Ping(_) | Event::Pong(_)
                            if !self.inputs.control_allowed(&mut o.input, now) =>
                        {
                            refuse = Some("too many pings and pongs per second");
                            None
                        }
                        Event::Ping(payload) => {
                            ws.local.counts.pings += 1;
                            self.handler.on_ping(&mut ws, payload);
                            None
                        }
                        Event::Pong(payload) => {
                            ws.local.counts.pongs += 1;
                            self.handler.on_pong(&mut ws, payload);
                            None
                        }
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
            let closed = match refuse {
                Some(reason) => {
                    o.proto.fail_with(CloseCode::POLICY, reason);
                    Some((CloseCode::POLICY, reason.to_owned()))
                }
                None => closed,
            };
            self.after_event(id);
            if let Some((code, reason)) = closed {
                self.report_close(id, code, &reason);
            }
        }
        self.after_event(id);
        pos
    }

    /// Moves the protocol's own output (pong, close echo, failure close) to the send queue,
    /// applies a close the handler asked for, delivers what it published, and closes the
    /// socket once the protocol is done.
    pub(super) fn after_event(&mut self, id: usize) {
        if !self.local.outbox.is_empty() {
            self.drain_outbox();
        }
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Open(o) = &mut conn.phase else { return };
        if let Some((code, reason)) = o.app.close_request.take().map(|r| *r) {
            if o.proto.close(code, &reason).is_ok() && conn.io.closing_since == 0 {
                conn.io.closing_since = self.local.now | 1;
            }
        }
        if !o.proto.output().is_empty() {
            // Taken, not drained: the protocol's output buffer (pongs, closes) goes with it, so
            // a connection that answered a ping once holds nothing for it while idle.
            conn.io.queue.push(&mut self.local.pool, &o.proto.take_output());
            self.local.mark_dirty(id, &mut conn.io);
        }
        if o.proto.is_closed() && !conn.io.has(flag::CLOSE_REQUESTED) {
            // RFC 6455 7.1.1: after the close handshake (or a failure) the server closes TCP.
            self.request_close(id, false);
        }
    }

    /// Applies what a [`Ctx`](crate::Ctx) did to connections outside their own callbacks.
    pub(super) fn after_ctx(&mut self) {
        while let Some(id) = self.local.touched.pop() {
            self.after_event(id);
        }
        if !self.local.outbox.is_empty() {
            self.drain_outbox();
        }
    }
}
