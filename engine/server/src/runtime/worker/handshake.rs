//! The opening handshake: collect the request head, let the protocol core check it and the
//! handler decide, answer 101 (or the error's status), and open the connection.
//!
//! A head that arrives in pieces is searched for its end once per byte, not re-parsed per read:
//! the parser runs once, when the blank line is there (or the head passed the size limit).

use ringside_proto::handshake;
use ringside_proto::{Connection, Error, Role};

use super::Core;
use crate::api::{Handler, Upgrade, Upgrading};
use crate::runtime::conn::{flag, App, Open, Phase};

const HEALTH_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

/// Where the blank line ending a head is in `buf` (the index after it), searching from
/// `from` (a previous search's end; the terminator may straddle it).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|i| start + i + 4)
}

impl<H: Handler> Core<H> {
    /// Bytes of the upgrade request.
    pub(super) fn on_handshake_data(&mut self, id: usize, data: &mut [u8]) {
        let max = self.handshake.max_head_bytes;
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Handshake(pending) = &mut conn.phase else { return };
        let whole: &mut [u8] = if pending.buf.is_empty() && head_end(data, 0).is_some() {
            data
        } else {
            let from = pending.buf.len();
            pending.buf.extend_from_slice(data);
            match head_end(&pending.buf, from) {
                Some(_) => &mut pending.buf,
                None if pending.buf.len() < max => return,
                // Over the limit without an end: the parser says 431.
                None => &mut pending.buf,
            }
        };
        let peer = pending.peer;
        let (reply, head_len, accepted) = match handshake::parse_request(whole, &self.handshake) {
            // A blank line is there, so the parser cannot want more: refuse rather than wait.
            Ok(None) => {
                let e = Error::MalformedRequest("incomplete request head");
                (e.http_response().unwrap_or_default(), 0, None)
            }
            Ok(Some(req)) => {
                let head_len = req.head_len();
                match handshake::validate(&req, &self.handshake) {
                    Ok(accept) => {
                        let upgrading =
                            Upgrading { request: &req, peer, protocol: accept.protocol };
                        match self.handler.on_upgrade(&upgrading) {
                            Upgrade::Accept(data) => {
                                let mut out = Vec::with_capacity(160);
                                accept.write_response(None, &mut out);
                                let protocol = accept
                                    .protocol
                                    .and_then(|p| {
                                        self.handshake.subprotocols.iter().position(|s| s == p)
                                    })
                                    .map_or(u8::MAX, |i| i.min(254) as u8);
                                let target = req.target();
                                let app = App {
                                    data,
                                    peer,
                                    target: (target != "/").then(|| target.into()),
                                    protocol,
                                    close_request: None,
                                };
                                (out, head_len, Some(app))
                            }
                            Upgrade::Reject(status) => {
                                let e = Error::Refused(status);
                                (e.http_response().unwrap_or_default(), 0, None)
                            }
                        }
                    }
                    Err(Error::NotUpgrade)
                        if req.method() == "GET"
                            && self.local.settings.health_path.as_deref() == Some(req.path()) =>
                    {
                        (HEALTH_OK.to_vec(), 0, None)
                    }
                    Err(e) => (e.http_response().unwrap_or_default(), 0, None),
                }
            }
            Err(e) => (e.http_response().unwrap_or_default(), 0, None),
        };
        if accepted.is_some() {
            self.local.metrics.upgrade(101);
        } else if reply != HEALTH_OK {
            // A health check is not an upgrade request: not counted.
            self.local.metrics.upgrade(status_of(&reply));
        }
        // Bytes after the head are the first frames (a client may pipeline them).
        let rest = match &accepted {
            Some(_) if head_len < whole.len() => whole[head_len..].to_vec(),
            _ => Vec::new(),
        };
        let conn = &mut self.conns[id];
        conn.io.queue.push(&mut self.local.pool, &reply);
        self.local.mark_dirty(id, &mut conn.io);
        let Some(app) = accepted else {
            conn.phase = Phase::Done;
            conn.io.set(flag::CLOSE_REPORTED, true);
            self.request_close(id, false);
            return;
        };
        let proto = Connection::new(Role::Server, self.proto);
        conn.phase = Phase::Open(Box::new(Open { proto, app }));
        self.callback(id, |h, ws| h.on_open(ws));
        if !rest.is_empty() {
            let mut rest = rest;
            self.on_frames(id, &mut rest);
        }
    }
}

/// The status of an HTTP response (`HTTP/1.1 NNN ...`); 0 when there is none.
fn status_of(reply: &[u8]) -> u16 {
    reply
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{head_end, status_of};

    #[test]
    fn status_of_reads_the_status_line() {
        assert_eq!(status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), 431);
        assert_eq!(status_of(b"HTTP/1.1 101 Switching Protocols\r\n"), 101);
        assert_eq!(status_of(b"HTTP/1.1 4x1"), 0);
        assert_eq!(status_of(b""), 0);
    }

    #[test]
    fn head_end_finds_the_blank_line_across_every_split() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        let end = head_end(head, 0).unwrap();
        assert_eq!(&head[end..], b"rest");
        for split in 0..head.len() {
            // Searched up to `split` before, then the whole: same answer.
            let early = head_end(&head[..split], 0);
            let later = head_end(head, split);
            assert_eq!(early.or(later), Some(end), "split {split}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
    }
}
