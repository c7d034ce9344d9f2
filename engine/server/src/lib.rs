//! Ringside: a thread-per-core WebSocket server engine on io_uring and epoll.
//!
//! ```no_run
//! use ringside::{Handler, Message, Server, WebSocket};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type Conn = ();
//!     fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
//!         let _ = ws.send(msg);
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     Server::builder().bind("127.0.0.1:9001")?.build(|| Echo)?.run()
//! }
//! ```
//!
//! One [`Handler`] per worker, called on the worker's thread; every callback gets a
//! [`WebSocket`] handle for its connection, with the connection's own state
//! ([`Handler::Conn`]). Other threads reach connections through a [`Sender`]. The protocol core
//! is re-exported as [`proto`].
//!
//! Layering: `config` (settings, policies) and `api` (the handler trait, ids, send results,
//! errors) are leaves; `runtime` (workers, backends, the handles) uses them; `server` (the
//! builder and the handles of a running server) sits on top. Logs go through `tracing`.

mod api;
mod config;
pub mod metrics;
mod runtime;
mod server;
mod signal;

pub use api::{ConnId, Error, Handler, Response, SendStatus, Stats, Upgrade, Upgrading};
pub use config::ProxyProtocol;
pub use config::{
    Backend, Compression, ConfigError, Settings, SlowConsumer, TlsIdentity, TopicPolicy, TopicRule,
    Workers,
};
pub use ringside_bus as bus;
pub use ringside_proto as proto;
pub use ringside_proto::edge::{ForwardedHeader, TrustedProxies};
pub use ringside_proto::handshake::Request;
pub use ringside_proto::{CloseCode, Message};
pub use runtime::handle::{Ctx, WebSocket};
pub use runtime::pubsub::{SubscribeError, MAX_TOPIC_LEN};
pub use server::{Batch, Builder, Encoded, Publisher, Running, Sender, Server, ServerHandle};

/// Whether the io_uring backend can run here (the same probe `Backend::Auto` uses), and why not.
pub fn io_uring_available() -> Result<(), String> {
    runtime::probe_uring(&Settings::default())
}

/// Logs an error at most once a second per kind, so a flood (EMFILE on every accept) does not
/// flood the log, and one kind does not hide another.
pub(crate) fn log_rate_limited(what: &'static str, error: &std::io::Error) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;
    // Only reached on errors, never on the hot path: a lock is fine here.
    static LAST: Mutex<Option<HashMap<&'static str, Instant>>> = Mutex::new(None);
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let seen = last
        .get_or_insert_with(HashMap::new)
        .entry(what)
        .or_insert(now - std::time::Duration::from_secs(2));
    if now.duration_since(*seen) >= std::time::Duration::from_secs(1) {
        *seen = now;
        tracing::warn!(target: "ringside", kind = what, %error, "{what}: {error}");
    }
}
