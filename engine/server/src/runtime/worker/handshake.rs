//! The opening handshake: collect the request head, let the protocol core check it and the
//! handler decide, answer 101 (or the error's status), and open the connection.
//!
//! A head that arrives in pieces is searched for its end once per byte, not re-parsed per read:
//! the parser runs once, when the blank line is there (or the head passed the size limit).

use ringside_proto::handshake::{self, write_refusal, FieldError};
use ringside_proto::{Connection, Error, Role};

use super::edge::{self, ProxyStage, Unnamed};
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
    /// Bytes of the upgrade request (after the PROXY header, when one is expected).
    pub(super) fn on_handshake_data(&mut self, id: usize, data: &mut [u8]) {
        let data = match self.proxy_stage(id, data) {
            ProxyStage::Wait => return,
            ProxyStage::Rest(skip) => &mut data[skip..],
            // The header ended inside buffered bytes: the rest is a fresh start (once: the
            // stage is over).
            ProxyStage::Moved(mut rest) => return self.on_handshake_data(id, &mut rest),
        };
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
        let tcp_peer = pending.peer;
        // Who sent the request: the client a trusted PROXY header named, else the TCP peer.
        let sender = pending.proxied.unwrap_or(tcp_peer);
        let crate::runtime::handle::Local { settings, deflate: worker_deflate, counts, .. } =
            &mut self.local;
        let settings = &*settings;
        // permessage-deflate as agreed (within the worker's budget) and how sends compress.
        let mut deflate = None;
        let mut client = sender;
        let (reply, head_len, accepted) = match handshake::parse_request(whole, &self.handshake) {
            Ok(Some(req)) => {
                let head_len = req.head_len();
                // Resolved for every request that parsed: the access log names the client of
                // a refused one too.
                let named = edge::client_addr(settings, sender, &req);
                let (Ok(addr) | Err(Unnamed(addr))) = named;
                client = addr;
                let (reply, accepted, protocol) = match handshake::validate(&req, &self.handshake) {
                    Ok(mut accept) => match named {
                        Err(_) if settings.require_forwarded => {
                            (edge::unnamed_response(settings), None, None)
                        }
                        _ => {
                            let upgrading = Upgrading {
                                request: &req,
                                peer: client,
                                tcp_peer,
                                protocol: accept.protocol,
                            };
                            let (reply, app) = match self.handler.on_upgrade(&upgrading) {
                                Upgrade::Accept(data) => {
                                    let send =
                                        worker_deflate.admit(id, &mut accept.deflate, counts);
                                    deflate = accept.deflate.as_ref().map(|n| (n.params, send));
                                    let mut out = Vec::with_capacity(160);
                                    accept.write_response(None, &mut out);
                                    (out, Some(data))
                                }
                                Upgrade::AcceptWith(data, headers) => {
                                    let send =
                                        worker_deflate.admit(id, &mut accept.deflate, counts);
                                    deflate = accept.deflate.as_ref().map(|n| (n.params, send));
                                    let mut out = Vec::with_capacity(256);
                                    match accept.write_response_with(None, &headers, &mut out) {
                                        Ok(()) => (out, Some(data)),
                                        Err(e) => (handler_fault(&e), None),
                                    }
                                }
                                Upgrade::Reject(status) => {
                                    let e = Error::Refused(status);
                                    (e.http_response().unwrap_or_default(), None)
                                }
                                Upgrade::RejectWith(r) => {
                                    let mut out = Vec::new();
                                    match write_refusal(r.status, &r.headers, &r.body, &mut out) {
                                        Ok(()) => (out, None),
                                        Err(e) => (handler_fault(&e), None),
                                    }
                                }
                            };
                            let app = app.map(|data| {
                                let protocol = accept
                                    .protocol
                                    .and_then(|p| {
                                        self.handshake.subprotocols.iter().position(|s| s == p)
                                    })
                                    .map_or(u8::MAX, |i| i.min(254) as u8);
                                App::new(data, client, tcp_peer, req.target(), protocol)
                            });
                            (reply, app, accept.protocol)
                        }
                    },
                    Err(Error::NotUpgrade)
                        if req.method() == "GET"
                            && settings.health_path.as_deref() == Some(req.path()) =>
                    {
                        (HEALTH_OK.to_vec(), None, None)
                    }
                    Err(e) => (e.http_response().unwrap_or_default(), None, None),
                };
                if settings.access_log {
                    edge::access_log(client, tcp_peer, Some(&req), protocol, &reply);
                }
                (reply, head_len, accepted)
            }
            unparsed => {
                let e = match unparsed {
                    // A blank line is there, so the parser cannot want more: refuse rather than
                    // wait.
                    Ok(_) => Error::MalformedRequest("incomplete request head"),
                    Err(e) => e,
                };
                let reply = e.http_response().unwrap_or_default();
                if settings.access_log {
                    edge::access_log(client, tcp_peer, None, None, &reply);
                }
                (reply, 0, None)
            }
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
        let mut proto = Connection::new(Role::Server, self.proto);
        if let Some((params, send)) = deflate {
            // The worker compresses sends itself (`runtime::deflate`); the core inflates.
            proto.enable_deflate(params, None);
            conn.io.deflate = send;
        }
        conn.phase = Phase::Open(Box::new(Open { proto, app, input: Default::default() }));
        self.callback(id, |h, ws| h.on_open(ws));
        if !rest.is_empty() {
            let mut rest = rest;
            self.on_input(id, &mut rest);
        }
    }
}

/// The 500 for a handler's response that cannot be written, and the error log that says why.
fn handler_fault(e: &FieldError) -> Vec<u8> {
    tracing::error!(target: "ringside", error = %e, "on_upgrade returned an invalid response; answered 500");
    let mut out = Vec::new();
    let no_headers: &[(&str, &str)] = &[];
    let _ = write_refusal(500, no_headers, b"internal error\n", &mut out);
    out
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
