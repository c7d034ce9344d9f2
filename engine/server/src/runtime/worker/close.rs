//! Closing: report a close to the handler once, ask the backend to close the socket, the
//! handshake, idle and close timeouts (the sweep), and the graceful shutdown.

use std::io;

use ringside_proto::CloseCode;

use super::{flush, Core};
use crate::api::Handler;
use crate::runtime::backend::Backend;
use crate::runtime::conn::{flag, Phase};
use crate::runtime::handle::WebSocket;

#[derive(Debug, Clone, Copy)]
enum Sweep {
    Drop,
    Idle,
    Ping,
    /// A message started longer than `message_timeout` ago and has not finished.
    Message,
}

impl<H: Handler> Core<H> {
    /// Calls `on_close` once, then drops the connection's state and subscriptions.
    pub(super) fn report_close(&mut self, id: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.io.has(flag::CLOSE_REPORTED) {
            return;
        }
        let Phase::Open(o) = &mut conn.phase else { return };
        conn.io.set(flag::CLOSE_REPORTED, true);
        self.local.metrics.closed(code.0);
        let mut ws = WebSocket {
            slot: id,
            io: &mut conn.io,
            app: &mut o.app,
            open: false,
            local: &mut self.local,
        };
        self.handler.on_close(&mut ws, code, reason);
        self.local.topics.unsubscribe_all(id);
        if !self.local.outbox.is_empty() {
            self.drain_outbox();
        }
    }

    pub(super) fn request_close(&mut self, id: usize, hard: bool) {
        if let Some(conn) = self.conns.get_mut(id) {
            if !conn.io.has(flag::CLOSE_REQUESTED) || hard {
                conn.io.set(flag::CLOSE_REQUESTED, true);
                if conn.io.closing_since == 0 {
                    conn.io.closing_since = self.local.now | 1;
                }
                self.to_close.push((id, hard));
            }
        }
    }

    /// Starts the close handshake on `id` from the worker itself (timeouts, shutdown, slow
    /// consumers).
    pub(super) fn close_with(&mut self, id: usize, code: CloseCode, reason: &str) {
        self.callback(id, |_, ws| ws.close(code, reason));
    }

    /// Drops a connection that timed out: `on_close` (1006), then a hard close.
    pub(super) fn drop_conn(&mut self, id: usize, reason: &str) {
        self.report_close(id, CloseCode::ABNORMAL, reason);
        self.release_input(id);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.phase = Phase::Done;
        }
        self.request_close(id, true);
    }

    /// Every 250 ms: handshake, idle, message and close timeouts.
    pub(super) fn sweep(&mut self) {
        let s = &self.local.settings;
        let now = self.local.now;
        let ms = |d: std::time::Duration| d.as_millis().clamp(1, u128::from(u32::MAX / 2)) as u32;
        let handshake = ms(s.handshake_timeout);
        let idle = ms(s.idle_timeout);
        let close = ms(s.close_timeout);
        let message = ms(s.message_timeout);
        let ping_idle = s.ping_idle;
        let mut expired = Vec::new();
        // The send-queue gauge is summed here, in a walk over every connection that happens
        // anyway, rather than kept exact on every push and completion.
        let mut queued = 0u64;
        for (id, conn) in &self.conns {
            let io = &conn.io;
            queued += io.queue.len() as u64;
            // For a connection still in its handshake, `last_rx` is the time of accept: the
            // whole request must arrive within the timeout, however it trickles (slowloris).
            let since_rx = now.wrapping_sub(io.last_rx);
            // Set timestamps carry a low bit that is not time: without it, one set in this
            // millisecond at an even `now` would be one ahead of `now` and look 49 days old.
            let action = if io.closing_since != 0 {
                (now.wrapping_sub(io.closing_since & !1) >= close).then_some(Sweep::Drop)
            } else {
                match &conn.phase {
                    Phase::Handshake(_) => (since_rx >= handshake).then_some(Sweep::Drop),
                    // Not while the server itself holds the rest back (reading paused).
                    Phase::Open(o)
                        if o.input.message_since != 0
                            && !io.has(flag::OVER_HIGH_WATER | flag::THROTTLED)
                            && now.wrapping_sub(o.input.message_since & !1) >= message =>
                    {
                        Some(Sweep::Message)
                    }
                    Phase::Open(_) if since_rx >= idle => Some(Sweep::Idle),
                    Phase::Open(_)
                        if ping_idle && since_rx >= idle / 2 && !io.has(flag::IDLE_PINGED) =>
                    {
                        Some(Sweep::Ping)
                    }
                    _ => None,
                }
            };
            if let Some(action) = action {
                expired.push((id, action));
            }
        }
        self.local.metrics.send_queued_bytes.set(queued);
        for (id, action) in expired {
            match action {
                Sweep::Drop => self.drop_conn(id, "timed out"),
                Sweep::Idle => self.close_with(id, CloseCode::NORMAL, "idle timeout"),
                Sweep::Message => self.fail_input(id, CloseCode::POLICY, "message timeout"),
                Sweep::Ping => {
                    self.callback(id, |_, ws| {
                        let _ = ws.ping(b"");
                    });
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.io.set(flag::IDLE_PINGED, true);
                    }
                }
            }
        }
    }

    /// One step of the graceful shutdown: the first call stops accepting and closes every
    /// connection with 1001; `true` once every connection is gone or the timeout passed.
    pub(super) fn shutdown_step<B: Backend>(&mut self, backend: &mut B) -> io::Result<bool> {
        let now = self.local.now_ms;
        let deadline = match self.shutdown_deadline {
            Some(d) => d,
            None => {
                backend.stop_accepting();
                let ids: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
                for id in ids {
                    match self.conns[id].phase {
                        Phase::Open(_) => {
                            self.close_with(id, CloseCode::GOING_AWAY, "server shutting down")
                        }
                        _ => self.request_close(id, true),
                    }
                }
                let timeout = self.local.settings.shutdown_timeout.as_millis() as u64;
                *self.shutdown_deadline.insert(now.saturating_add(timeout))
            }
        };
        if self.conns.is_empty() {
            return Ok(true);
        }
        if now >= deadline {
            let ids: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
            for id in ids {
                self.report_close(id, CloseCode::ABNORMAL, "shutdown timeout");
                self.request_close(id, true);
            }
            flush(self, backend);
            backend.poll(self, std::time::Duration::ZERO)?;
            return Ok(true);
        }
        Ok(false)
    }
}
