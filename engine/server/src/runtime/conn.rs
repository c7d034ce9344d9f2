//! One connection's state on its worker.
//!
//! A slab entry is small on purpose (idle connections dominate real deployments): the phase is
//! one boxed pointer, the I/O side a few words. The protocol state, the application's
//! connection data and what the upgrade request said live in one box made at the upgrade.
//!
//! The protocol state and the I/O side (send queue, clocks, flags) are separate fields so that
//! a message borrowed from the protocol state and the handle that writes to the send queue can
//! live at the same time.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use ringside_proto::{CloseCode, Connection};

use super::deflate::SendDeflate;
use super::queue::SendQueue;

/// Where a connection is in its life.
#[derive(Debug)]
pub(crate) enum Phase<C> {
    /// Waiting for the upgrade request.
    Handshake(Box<Pending>),
    /// Speaking WebSocket.
    Open(Box<Open<C>>),
    /// Nothing more is read or handled; waiting for the backend to release the socket.
    Done,
}

/// A connection before its upgrade completes.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The part of the request received so far (empty while every read held a whole head).
    pub buf: Vec<u8>,
    pub peer: SocketAddr,
    /// A PROXY protocol header is still expected before the request.
    pub awaiting_proxy: bool,
    /// The client a PROXY header named: the request's sender, when a proxy relays it.
    pub proxied: Option<SocketAddr>,
    /// Bytes of the worker's input budget `buf` holds, as last counted (see `worker::input`).
    pub charged: u32,
}

/// A close the handler asked for: code and reason, boxed (one pointer while there is none, the
/// usual case: an idle connection's open box is what every connection pays for).
pub(crate) type CloseRequest = Option<Box<(CloseCode, Box<str>)>>;

/// An open connection: the protocol state, and what its handle may touch while a message
/// borrowed from the protocol state is alive.
#[derive(Debug)]
pub(crate) struct Open<C> {
    pub proto: Connection,
    pub app: App<C>,
    pub input: Input,
}

/// What the worker keeps about an open connection's input: its share of the worker's input
/// budget and of each loop iteration, and its clocks for unfinished messages and control
/// frames (see `worker::input`). 32 bytes, in the box, not in the slab entry.
#[derive(Debug, Default)]
pub(crate) struct Input {
    /// Bytes received but not parsed yet, because the connection used up its share of a loop
    /// iteration: parsed before anything newer, in the next iterations. Only while throttled.
    pub stash: Option<Box<Stash>>,
    /// Bytes of the worker's input budget this connection holds, as last counted (saturated at
    /// 4 GiB: one connection's input is bounded far below that by the message size limit).
    pub charged: u32,
    /// Worker clock when the message being received started (0: none; set values have the low
    /// bit set).
    pub message_since: u32,
    /// Bytes parsed in the loop iteration `turn` (wrapping: an iteration 65,536 back that
    /// reads as this one only costs a share).
    pub bytes: u32,
    /// Start of the current one-second window of control frames.
    pub control_since: u32,
    pub turn: u16,
    /// Frames handed to the handler in iteration `turn`.
    pub frames: u16,
    /// Pings and pongs in the window.
    pub controls: u16,
}

/// Bytes waiting to be parsed: `buf[pos..]`.
#[derive(Debug, Default)]
pub(crate) struct Stash {
    pub buf: Vec<u8>,
    pub pos: usize,
}

/// The application's side of an open connection: 24 bytes with `C = ()`, since every
/// connection pays for it. What most connections do not have (an IPv6 or proxied client, a
/// request target other than `/`) lives in one optional box.
#[derive(Debug)]
pub(crate) struct App<C> {
    pub data: C,
    /// The client's address when it is IPv4 and there is no `extra` naming another.
    peer_v4: SocketAddrV4,
    /// Index of the chosen subprotocol in the settings (`u8::MAX`: none).
    pub protocol: u8,
    extra: Option<Box<Extra>>,
    /// A close the handler asked for, applied once its callback returns.
    pub close_request: CloseRequest,
}

/// What an open connection knows about its upgrade beyond an IPv4 client asking for `/`.
#[derive(Debug)]
struct Extra {
    /// The client's address (behind trusted proxies, the one they named).
    peer: SocketAddr,
    /// The TCP peer (a proxy's address, behind one).
    tcp_peer: SocketAddr,
    /// The request target (path and query).
    target: Box<str>,
}

impl<C> App<C> {
    /// `peer`: the client (behind trusted proxies, the one they named); `tcp_peer`: the other
    /// end of the TCP connection; `target`: the request target.
    pub fn new(
        data: C,
        peer: SocketAddr,
        tcp_peer: SocketAddr,
        target: &str,
        protocol: u8,
    ) -> Self {
        let (peer_v4, extra) = match peer {
            SocketAddr::V4(v4) if tcp_peer == peer && target == "/" => (v4, None),
            _ => (
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                Some(Box::new(Extra { peer, tcp_peer, target: target.into() })),
            ),
        };
        App { data, peer_v4, protocol, extra, close_request: None }
    }

    /// The client's address: the TCP peer's, unless a trusted proxy named another.
    pub fn peer(&self) -> SocketAddr {
        self.extra.as_ref().map_or(SocketAddr::V4(self.peer_v4), |e| e.peer)
    }

    /// The other end of the TCP connection.
    pub fn tcp_peer(&self) -> SocketAddr {
        self.extra.as_ref().map_or(SocketAddr::V4(self.peer_v4), |e| e.tcp_peer)
    }

    /// The request target: path and query.
    pub fn target(&self) -> &str {
        self.extra.as_ref().map_or("/", |e| &e.target)
    }
}

/// Flag bits of [`Io::flags`].
pub(crate) mod flag {
    /// In the worker's dirty list (has bytes to flush this iteration).
    pub const DIRTY: u8 = 1;
    /// `on_close` was called (or never will be: the upgrade was refused).
    pub const CLOSE_REPORTED: u8 = 1 << 1;
    /// The backend was asked to close the socket.
    pub const CLOSE_REQUESTED: u8 = 1 << 2;
    /// The queue passed the high-water mark: reading paused, `on_drain` due when it falls back.
    pub const OVER_HIGH_WATER: u8 = 1 << 3;
    /// A ping for idleness is outstanding.
    pub const IDLE_PINGED: u8 = 1 << 4;
    /// The peer is gone (the backend reported a hang-up).
    pub const HUNG_UP: u8 = 1 << 5;
    /// Used up its share of a loop iteration: bytes wait in its stash, reading is paused.
    pub const THROTTLED: u8 = 1 << 6;
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
    /// The slot's generation (see `ConnId`).
    pub generation: u32,
    pub flags: u8,
    /// How sends are compressed (permessage-deflate), if they are.
    pub deflate: SendDeflate,
}

impl Io {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }
}

/// One slot of a worker's connection slab.
#[derive(Debug)]
pub(crate) struct Conn<C> {
    pub phase: Phase<C>,
    pub io: Io,
}

impl<C> Conn<C> {
    pub fn new(now: u32, generation: u32, peer: SocketAddr) -> Self {
        Conn {
            phase: Phase::Handshake(Box::new(Pending {
                buf: Vec::new(),
                peer,
                awaiting_proxy: false,
                proxied: None,
                charged: 0,
            })),
            io: Io { last_rx: now, generation, ..Io::default() },
        }
    }

    /// Whether the handler may still send on it (open, no close sent or asked for).
    pub fn can_send(&self) -> bool {
        match &self.phase {
            Phase::Open(open) => open.proto.is_open() && open.app.close_request.is_none(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slab entry is what every idle connection pays for; keep an eye on it.
    #[test]
    fn an_idle_slot_stays_small() {
        assert!(std::mem::size_of::<Conn<()>>() <= 40, "{}", std::mem::size_of::<Conn<()>>());
        // The open box: protocol state, application side and input bookkeeping. 152 bytes is
        // a 160-byte heap chunk; one byte more costs 16.
        assert!(std::mem::size_of::<Open<()>>() <= 152, "{}", std::mem::size_of::<Open<()>>());
        assert_eq!(std::mem::size_of::<App<()>>(), 24);
    }

    #[test]
    fn the_app_side_keeps_what_it_was_given() {
        let v4: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let v6: SocketAddr = "[::1]:5000".parse().unwrap();
        let plain = App::new((), v4, v4, "/", 0);
        assert_eq!((plain.peer(), plain.tcp_peer(), plain.target()), (v4, v4, "/"));
        assert!(plain.extra.is_none());
        let proxied = App::new((), v4, v6, "/a?b=c", u8::MAX);
        assert_eq!((proxied.peer(), proxied.tcp_peer(), proxied.target()), (v4, v6, "/a?b=c"));
        let six = App::new((), v6, v6, "/", 1);
        assert_eq!((six.peer(), six.tcp_peer(), six.target()), (v6, v6, "/"));
    }
}
