//! Ringside: a thread-per-core WebSocket server engine on io_uring and epoll.
//!
//! ```no_run
//! use ringside::{Handler, Message, Server, WebSocket};
//!
//! struct Echo;
//! impl Handler for Echo {
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
//! [`WebSocket`] handle for its connection. The protocol core is re-exported as [`proto`].

pub mod metrics;
mod runtime;
mod server;

pub use ringside_proto as proto;
pub use ringside_proto::handshake::Request;
pub use ringside_proto::{CloseCode, Error, Message};
pub use runtime::conn::ConnId;
pub use runtime::pubsub::{SubscribeError, MAX_TOPIC_LEN};
pub use server::{
    Backend, Builder, Handler, Publisher, Running, Server, ServerHandle, Settings, SlowConsumer,
    Stats, TopicPolicy, TopicRule, Upgrade, WebSocket, Workers,
};

/// Whether the io_uring backend can run here (the same probe `Backend::Auto` uses), and why not.
pub fn io_uring_available() -> Result<(), String> {
    runtime::probe_uring(&Settings::default())
}

/// Logs an error at most once a second per kind, so a flood (EMFILE on every accept) does not
/// flood the log.
pub(crate) fn log_rate_limited(what: &'static str, error: &std::io::Error) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        eprintln!("ringside: {what}: {error}");
    }
}
