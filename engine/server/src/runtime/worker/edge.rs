//! The deployment edge on a worker: the PROXY protocol header in front of the upgrade request,
//! the client's address behind trusted proxies, and the access log.
//!
//! Whose word is taken: a PROXY header is believed from a TCP peer in the trusted list (from
//! anyone when the list is empty and the header is required: a listener only the proxy can
//! reach). The request's sender is then the header's source, else the TCP peer; forwarding
//! headers are read only when that sender is a trusted proxy. So a TCP load balancer that relays
//! a client's bytes with a PROXY header does not lend its trust to the client's own
//! `X-Forwarded-For`, while an HTTP proxy behind it (its address in the header, and trusted)
//! still names the client.

use std::net::SocketAddr;

use ringside_proto::edge::{proxy, resolve, ProxyError, Source};
use ringside_proto::handshake::Request;
use tracing::Level;

use super::Core;
use crate::api::Handler;
use crate::config::{ProxyProtocol, Settings};
use crate::runtime::conn::{flag, Phase};

/// Target of the access log events.
const ACCESS: &str = "ringside::access";
/// Target of the edge's debug events (refused PROXY headers, ignored forwarding headers).
const EDGE: &str = "ringside::edge";

/// Where the PROXY stage leaves a connection's bytes.
#[derive(Debug)]
pub(super) enum ProxyStage {
    /// Nothing more to do with this read: the header is incomplete, or the connection was
    /// refused.
    Wait,
    /// No header (any more): the request starts this many bytes into the read.
    Rest(usize),
    /// The header ended inside bytes that were buffered: these are the request's first bytes.
    Moved(Vec<u8>),
}

/// A trusted proxy sent the request but named no usable client (no configured forwarding
/// header, or one the walk could not finish): the address to use if that is accepted, the last
/// trusted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unnamed(pub SocketAddr);

impl<H: Handler> Core<H> {
    /// Whether to take a connection from `peer`: not when every connection must carry a PROXY
    /// header and `peer` may not send one (it could never be served).
    pub(super) fn admit(&self, peer: SocketAddr) -> bool {
        let s = &self.local.settings;
        let refused = s.proxy_protocol == ProxyProtocol::Required
            && !s.trusted_proxies.is_empty()
            && !s.trusted_proxies.contains(peer.ip());
        if refused {
            tracing::debug!(target: EDGE, %peer, "not a trusted proxy; PROXY protocol required, closing");
        }
        !refused
    }

    /// Marks a new connection as expecting a PROXY header, if the settings say so.
    pub(super) fn expect_proxy(&mut self, id: usize) {
        if self.local.settings.proxy_protocol == ProxyProtocol::Off {
            return;
        }
        if let Some(Phase::Handshake(pending)) = self.conns.get_mut(id).map(|c| &mut c.phase) {
            pending.awaiting_proxy = true;
        }
    }

    /// Reads the PROXY header from the connection's first bytes (buffering a partial one) and
    /// says where the request starts. A connection whose bytes are not a header it may send is
    /// closed without an answer.
    pub(super) fn proxy_stage(&mut self, id: usize, data: &[u8]) -> ProxyStage {
        let settings = &self.local.settings;
        let Some(conn) = self.conns.get_mut(id) else { return ProxyStage::Wait };
        let Phase::Handshake(pending) = &mut conn.phase else { return ProxyStage::Wait };
        if !pending.awaiting_proxy {
            return ProxyStage::Rest(0);
        }
        let buffered = !pending.buf.is_empty();
        if buffered {
            pending.buf.extend_from_slice(data);
        }
        let bytes: &[u8] = if buffered { &pending.buf } else { data };
        let peer = pending.peer;
        let trusted = &settings.trusted_proxies;
        match proxy::parse(bytes) {
            Ok(None) => {
                if !buffered {
                    pending.buf.extend_from_slice(data);
                }
                return ProxyStage::Wait;
            }
            Ok(Some((header, n))) if trusted.is_empty() || trusted.contains(peer.ip()) => {
                pending.awaiting_proxy = false;
                // LOCAL (a health check) and UNKNOWN name nobody: the TCP peer stands.
                pending.proxied = header.source;
                return if buffered {
                    let rest = pending.buf.split_off(n);
                    pending.buf = Vec::new();
                    ProxyStage::Moved(rest)
                } else {
                    ProxyStage::Rest(n)
                };
            }
            Ok(Some((header, _))) => {
                tracing::debug!(
                    target: EDGE,
                    %peer,
                    source = ?header.source,
                    "PROXY header from a peer that is not a trusted proxy, closing"
                );
            }
            Err(ProxyError::NotProxy) if settings.proxy_protocol == ProxyProtocol::Optional => {
                pending.awaiting_proxy = false;
                return if buffered {
                    ProxyStage::Moved(std::mem::take(&mut pending.buf))
                } else {
                    ProxyStage::Rest(0)
                };
            }
            Err(error) => {
                tracing::debug!(target: EDGE, %peer, %error, "bad PROXY header, closing");
            }
        }
        pending.buf = Vec::new();
        conn.phase = Phase::Done;
        conn.io.set(flag::CLOSE_REPORTED, true);
        self.request_close(id, false);
        ProxyStage::Wait
    }
}

/// The client's address for a request sent by `sender` (the PROXY header's source, else the
/// TCP peer): `sender` itself unless it is a trusted proxy that names the client in one of the
/// configured forwarding headers. `Err` when `sender` is a trusted proxy that named nobody
/// usable (`require_forwarded` refuses those).
pub(super) fn client_addr(
    settings: &Settings,
    sender: SocketAddr,
    req: &Request<'_>,
) -> Result<SocketAddr, Unnamed> {
    let trusted = &settings.trusted_proxies;
    let order = &settings.forwarded_headers;
    if trusted.is_empty() {
        return Ok(sender);
    }
    let r = resolve(sender.ip(), trusted, req.headers(), order);
    if !r.peer_trusted {
        if tracing::enabled!(target: EDGE, Level::DEBUG)
            && req.headers().any(|(n, _)| order.iter().any(|h| h.name().eq_ignore_ascii_case(n)))
        {
            tracing::debug!(
                target: EDGE,
                peer = %sender,
                "forwarding headers from a peer that is not a trusted proxy ignored"
            );
        }
        return Ok(sender);
    }
    if let Some(problem) = r.problem {
        tracing::debug!(
            target: EDGE,
            peer = %sender,
            header = ?r.header.map(|h| h.name()),
            ?problem,
            client = %r.addr,
            "forwarding header not walked to the end; using the last trusted address"
        );
    }
    let addr = match r.source {
        Source::Header(_) => SocketAddr::new(r.addr, r.port.unwrap_or(0)),
        _ => sender,
    };
    if r.header.is_none() || r.problem.is_some() {
        return Err(Unnamed(addr));
    }
    Ok(addr)
}

/// The body of the 400 a trusted proxy gets when it names no client and that is required.
pub(super) fn unnamed_response(settings: &Settings) -> Vec<u8> {
    let names: Vec<&str> = settings.forwarded_headers.iter().map(|h| h.name()).collect();
    let body = format!(
        "the proxy named no client: expected a well-formed {} header\n",
        names.join(" or ")
    );
    let mut out = Vec::new();
    let no_headers: &[(&str, &str)] = &[];
    // A fixed status and no caller headers: nothing to refuse.
    let _ = ringside_proto::handshake::write_refusal(400, no_headers, body.as_bytes(), &mut out);
    out
}

/// One access log event for an answered request: `reply` is what was sent (its status line
/// gives the status), `req` the request when it parsed.
pub(super) fn access_log(
    client: SocketAddr,
    tcp_peer: SocketAddr,
    req: Option<&Request<'_>>,
    protocol: Option<&str>,
    reply: &[u8],
) {
    let status = reply
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    let path = req.map_or("-", |r| r.path());
    let user_agent = req.and_then(|r| r.header("user-agent"));
    let user_agent = user_agent.as_deref().map(String::from_utf8_lossy);
    tracing::info!(
        target: ACCESS,
        %client,
        peer = %tcp_peer,
        // Tokens and a checked request target: nothing to quote.
        path = %path,
        status,
        protocol = %protocol.unwrap_or("-"),
        // A string field: quoted and escaped in text logs, a plain string in JSON ones.
        user_agent = user_agent.as_deref().unwrap_or("-"),
        "access"
    );
}
