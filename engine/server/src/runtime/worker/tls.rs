//! The worker's side of TLS: decrypt what a TLS connection's socket gave and pass the
//! plaintext on as a plain connection's bytes, close on a failed session (after its alert),
//! and end a graceful close with close_notify. Sealing the plaintext queued in an iteration
//! happens in the flush (`super::flush`); the sessions themselves are in `runtime::tls`.

use ringside_proto::CloseCode;

use super::Core;
use crate::api::Handler;
use crate::runtime::backend::{Backend, SendQueue};
use crate::runtime::conn::{flag, Phase};
use crate::runtime::queue::Pool;
use crate::runtime::tls::TlsConn;

/// The flush of one TLS connection: seals what the iteration queued (`plain`) into one batch
/// of records and hands them to the backend; returns the bytes still queued (plaintext and
/// ciphertext), for the high-water mark.
///
/// Sealing waits while ciphertext is in flight (the socket is behind), so a backlog stays
/// plaintext in `plain`, where the send limit, the slow-consumer policy and conflation work as
/// for plain ws; the backend's completion marks the connection dirty again. A closing
/// connection seals everything: nothing else will follow, and the backend must have it all
/// before it shuts the write side.
pub(super) fn flush<B: Backend>(
    id: usize,
    tls: &mut TlsConn,
    plain: &mut SendQueue,
    pool: &mut Pool,
    closing: bool,
    backend: &mut B,
) -> usize {
    // Twice at most: a backend that sends at once (epoll) may finish what was in flight in
    // this flush, and reports no completion for it, so what waited goes now.
    for _ in 0..2 {
        let caught_up = tls.out.in_flight().is_none();
        if caught_up && plain.has_staged() {
            // The latest conflated messages go out with this send.
            plain.unstage(pool, usize::MAX);
        }
        if caught_up || closing {
            tls.seal(plain, pool);
        }
        backend.flush(id, &mut tls.out);
        if plain.is_empty() || tls.out.in_flight().is_some() {
            break;
        }
    }
    tls.out.recycle(pool);
    plain.len() + tls.out.len()
}

impl<H: Handler> Core<H> {
    /// Ciphertext from `id`'s socket.
    pub(super) fn on_tls_data(&mut self, id: usize, data: &[u8]) {
        let Some(layer) = &mut self.tls else { return };
        let mut plain = std::mem::take(&mut layer.plain);
        let Some(tls) = layer.conn(id) else { return };
        let result = tls.decrypt(data, &mut plain, &mut self.local.pool);
        let answer = !tls.out.is_empty();
        if answer {
            // Handshake records or an alert to send.
            if let Some(conn) = self.conns.get_mut(id) {
                self.local.mark_dirty(id, &mut conn.io);
            }
        }
        match result {
            Ok(()) if !plain.is_empty() => self.on_plain(id, &mut plain),
            Ok(()) => {}
            Err(e) => self.tls_failed(id, &e),
        }
        if let Some(layer) = &mut self.tls {
            layer.put_plain(plain);
        }
    }

    /// The session failed (not TLS at all, a bad record, a handshake the client cannot
    /// finish): send the alert, if any, and close. An open connection's handler hears 1006.
    fn tls_failed(&mut self, id: usize, error: &str) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let peer = match &conn.phase {
            Phase::Handshake(p) => Some(p.peer),
            Phase::Open(o) => Some(o.app.peer()),
            Phase::Done => None,
        };
        tracing::debug!(target: "ringside", ?peer, error, "TLS failed; closing the connection");
        if matches!(conn.phase, Phase::Open(_)) {
            self.report_close(id, CloseCode::ABNORMAL, "TLS error");
        }
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.phase = Phase::Done;
        conn.io.set(flag::CLOSE_REPORTED, true);
        self.local.mark_dirty(id, &mut conn.io);
        self.request_close(id, false);
    }

    /// Before a graceful close of a TLS connection: seal what is still queued (also behind a
    /// send in flight: nothing else will follow) and add close_notify, so the backend sends
    /// them all before it shuts the write side.
    pub(super) fn seal_for_close<B: Backend>(&mut self, id: usize, backend: &mut B) {
        let Some(layer) = &mut self.tls else { return };
        let Some(tls) = layer.conn(id) else { return };
        let Some(conn) = self.conns.get_mut(id) else { return };
        tls.seal(&mut conn.io.queue, &mut self.local.pool);
        tls.close_notify(&mut self.local.pool);
        backend.flush(id, &mut tls.out);
    }
}
