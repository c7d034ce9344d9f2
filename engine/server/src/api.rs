//! What an application implements and the small types its callbacks trade in: the [`Handler`]
//! trait, the answer to an upgrade, connection ids, send results and the server's error type.
//! The handles callbacks receive ([`WebSocket`], [`Ctx`]) live with the worker state they borrow.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;

use ringside_proto::handshake::Request;
use ringside_proto::{CloseCode, Message};

use crate::runtime::handle::{Ctx, WebSocket};

/// An application: one instance per worker, called on that worker's thread. Callbacks must not
/// block; work that blocks belongs on the application's own threads, which answer through a
/// [`Sender`](crate::Sender).
pub trait Handler: Sized + 'static {
    /// Per-connection state: made by [`on_upgrade`](Handler::on_upgrade), reachable as
    /// [`WebSocket::data`] in every callback, dropped after `on_close`. `()` costs nothing;
    /// put a large state in a `Box`.
    type Conn: Default + 'static;

    /// Decides on an upgrade request that passed every RFC check (auth, path, origin beyond the
    /// allow-list) and makes the connection's state. Default: accept with `Conn::default()`.
    fn on_upgrade(&mut self, request: &Upgrading<'_>) -> Upgrade<Self::Conn> {
        let _ = request;
        Upgrade::Accept(Self::Conn::default())
    }
    /// A connection is open.
    fn on_open(&mut self, ws: &mut WebSocket<'_, Self::Conn>) {
        let _ = ws;
    }
    /// A complete message arrived. `msg` borrows the receive buffer: copy what you keep.
    fn on_message(&mut self, ws: &mut WebSocket<'_, Self::Conn>, msg: Message<'_>);
    /// A ping arrived (the pong is already queued).
    fn on_ping(&mut self, ws: &mut WebSocket<'_, Self::Conn>, payload: &[u8]) {
        let _ = (ws, payload);
    }
    /// A pong arrived: the answer to [`WebSocket::ping`], or an unsolicited heartbeat.
    fn on_pong(&mut self, ws: &mut WebSocket<'_, Self::Conn>, payload: &[u8]) {
        let _ = (ws, payload);
    }
    /// The connection's send queue fell back under the high-water mark after passing it.
    fn on_drain(&mut self, ws: &mut WebSocket<'_, Self::Conn>) {
        let _ = ws;
    }
    /// A timer set with [`WebSocket::set_timer`] expired. Never called after `on_close`.
    fn on_timer(&mut self, ws: &mut WebSocket<'_, Self::Conn>, token: u64) {
        let _ = (ws, token);
    }
    /// The worker's tick, every [`Settings::tick`](crate::Settings::tick): a game loop.
    fn on_tick(&mut self, ctx: &mut Ctx<'_, Self::Conn>) {
        let _ = ctx;
    }
    /// The connection is closed: `code` is the peer's close code, 1005 when its close frame had
    /// none, 1006 when it went away without one, or the code we failed it with. Nothing can be
    /// sent any more; the connection's state is dropped when this returns.
    fn on_close(&mut self, ws: &mut WebSocket<'_, Self::Conn>, code: CloseCode, reason: &str) {
        let _ = (ws, code, reason);
    }
}

/// An upgrade request as the handler sees it: the parsed request (through `Deref`: path, query,
/// headers, cookies) and where it came from.
#[derive(Debug)]
pub struct Upgrading<'a> {
    pub(crate) request: &'a Request<'a>,
    pub(crate) peer: SocketAddr,
    pub(crate) tcp_peer: SocketAddr,
    pub(crate) protocol: Option<&'a str>,
}

impl<'a> Upgrading<'a> {
    /// The client's address: the TCP peer's, unless a trusted proxy named the client (a PROXY
    /// protocol header, or a forwarding header walked past the trusted proxies; see
    /// [`Settings::trusted_proxies`](crate::Settings::trusted_proxies)). The port is the
    /// client's when the proxy gave it, else 0.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The address of the TCP connection's other end (the proxy, behind one).
    pub fn tcp_peer_addr(&self) -> SocketAddr {
        self.tcp_peer
    }

    /// The subprotocol the server chose from the client's offer, if any.
    pub fn protocol(&self) -> Option<&'a str> {
        self.protocol
    }

    /// The parsed request.
    pub fn request(&self) -> &'a Request<'a> {
        self.request
    }
}

impl<'a> Deref for Upgrading<'a> {
    type Target = Request<'a>;

    fn deref(&self) -> &Request<'a> {
        self.request
    }
}

/// The handler's answer to an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upgrade<C> {
    /// Complete the handshake; the value becomes the connection's state.
    Accept(C),
    /// Refuse with this HTTP status (kept within 400..=599), e.g. 401 or 404.
    Reject(u16),
    /// Complete the handshake with these headers added to the `101` response (a session
    /// cookie: `("Set-Cookie", "sid=...; HttpOnly; Secure")`). A header that is not valid HTTP
    /// (CR, LF or another control character in a value; a name that is not a token) or that
    /// the handshake writes itself (`Upgrade`, `Connection`, `Sec-WebSocket-*`,
    /// `Content-Length`) fails the upgrade with 500 and an error in the log.
    AcceptWith(C, Vec<(String, String)>),
    /// Refuse with a response of the handler's making: a 401 with `WWW-Authenticate`, a 403
    /// with a reason. An invalid one is answered 500 instead, with an error in the log.
    RejectWith(Response),
}

/// An HTTP response refusing an upgrade: a status in 300..=599 (not 304), headers and a body.
///
/// ```
/// # use ringside::Response;
/// let r = Response::new(401)
///     .header("WWW-Authenticate", "Bearer realm=\"chat\"")
///     .body("a token is needed\n");
/// assert_eq!(r.status(), 401);
/// ```
///
/// The server adds `Content-Length`, `Connection: close` and, for a body without a
/// `Content-Type` header, `text/plain; charset=utf-8`; it checks names and values when it writes
/// the response (see [`Upgrade::AcceptWith`] for what fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and no body.
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header (repeat the call for several with the same name).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
}

/// Identifies a connection within its server: worker, slot and generation. A slot is reused
/// after its connection is gone, with a new generation, so an id kept past its connection's
/// end never reaches another connection: using it is a no-op that reports
/// [`SendStatus::Closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) worker: u16,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    /// The worker that owns the connection.
    pub fn worker(&self) -> usize {
        usize::from(self.worker)
    }

    /// The slot on that worker.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The slot's generation when the connection opened.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.worker, self.slot, self.generation)
    }
}

/// What became of a message handed to `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a send can be dropped or refused"]
pub enum SendStatus {
    /// Queued; it leaves with everything else queued this loop iteration. From another thread
    /// ([`Sender::send`](crate::Sender::send)): handed to the connection's worker, which
    /// applies the same rules when it runs the command.
    Queued,
    /// Queued, but the connection's queue is over the high-water mark: slow down until
    /// [`Handler::on_drain`].
    Backpressure,
    /// Not queued: it would have passed the send limit and the policy is `drop` (counted).
    Dropped,
    /// Not queued: the connection is closing (a close was sent or asked for, or it fell behind
    /// under the `close` policy).
    Closing,
    /// Not queued: the connection is gone (or the id is stale: its slot serves another
    /// connection now), or the server has stopped.
    Closed,
}

impl SendStatus {
    /// Whether the message was queued.
    pub fn is_queued(self) -> bool {
        matches!(self, SendStatus::Queued | SendStatus::Backpressure)
    }
}

/// The server's errors. Protocol errors stay inside the protocol crate; what reaches the
/// application is one of these.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting cannot work (nothing was started).
    Config(crate::ConfigError),
    /// The operating system refused (bind, the io_uring setup, a thread).
    Io(std::io::Error),
    /// A control frame's payload is over 125 bytes.
    ControlTooLong,
    /// [`Sender::defer`](crate::Sender::defer) was given a closure for another handler type.
    WrongHandler,
    /// No such worker.
    NoWorker(usize),
    /// The server has stopped.
    Stopped,
    /// The TLS certificate or key could not be loaded (unreadable file, no certificate in the
    /// PEM, a key that does not match), or TLS is not configured. At a reload the server
    /// keeps serving the previous certificate.
    Tls(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "invalid setting: {e}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::ControlTooLong => f.write_str("control frame payloads are at most 125 bytes"),
            Error::WrongHandler => f.write_str("the closure is for another handler type"),
            Error::NoWorker(w) => write!(f, "no worker {w}"),
            Error::Stopped => f.write_str("the server has stopped"),
            Error::Tls(why) => write!(f, "TLS: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<crate::ConfigError> for Error {
    fn from(e: crate::ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Config(e) => std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// What the workers counted, summed (updated once per loop iteration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Open connections.
    pub connections: u64,
    /// Publishes delivered into subscribers' queues.
    pub delivered: u64,
    /// Messages dropped under the `drop` policy (sends and publishes).
    pub dropped: u64,
    /// Staged publishes replaced by a newer one with the same key (`conflate`).
    pub conflated: u64,
    /// Connections closed with 1008 for falling behind.
    pub slow_closed: u64,
    /// Sends, closes and lookups for a connection that was gone (a stale [`ConnId`]).
    pub stale: u64,
    /// Accepts that failed for lack of file descriptors or memory (EMFILE, ENFILE, ENOBUFS);
    /// accepting resumes by itself once descriptors are free.
    pub accept_errors: u64,
    /// Gaps the bus reported: times publishes from another node on a topic went missing (a
    /// bus outage, a backlog that overflowed). Zero without a bus.
    pub bus_gaps: u64,
    /// Publishes from other nodes lost in those gaps.
    pub bus_lost: u64,
    /// permessage-deflate: publishes and broadcasts compressed once on a worker for all its
    /// connections whose server side keeps no context (each such compression serves many).
    pub compressed_shared: u64,
    /// permessage-deflate: publishes, broadcasts and [`Sender`](crate::Sender) messages
    /// compressed for one connection, by its own compressor (it keeps context).
    pub compressed_per_conn: u64,
    /// Upgrades answered without permessage-deflate although it was offered and agreeable,
    /// because the worker's deflate memory budget (`deflate_memory`) was spent.
    pub deflate_declined: u64,
    /// Bytes of the deflate memory budget held by open connections now, all workers.
    pub deflate_memory: u64,
    /// Bytes of queued output held now (send queues, conflation stages, and the socket
    /// buffers of connections whose sends wait), counted against `max_buffered_output`.
    pub buffered_output: u64,
}
