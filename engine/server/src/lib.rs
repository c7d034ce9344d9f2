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

/// Raises this process's soft open-file limit (RLIMIT_NOFILE) to its hard limit and returns the
/// soft limit now in force. The library never changes process limits on its own: call this at
/// start, before [`Builder::build`], in a program that serves many connections. epoll needs one
/// descriptor per connection, and each io_uring worker sizes its direct-descriptor table from the
/// soft limit when the server is built. An unlimited hard limit is taken as `fs.nr_open`, the
/// most the kernel lets a process open.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one `rlimit` into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut target = limit.rlim_max;
    if target == libc::RLIM_INFINITY {
        // setrlimit refuses a soft limit above fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")?;
        target = nr_open.trim().parse().map_err(|_| {
            std::io::Error::other(format!("/proc/sys/fs/nr_open is not a number: {nr_open:?}"))
        })?;
    }
    if limit.rlim_cur < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit(2) reads one `rlimit` from a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let error = std::io::Error::last_os_error();
            let why = format!(
                "raising the open-file limit from {} to {target}: {error}; set it before starting \
                 (ulimit -n, LimitNOFILE= in a systemd unit)",
                limit.rlim_cur
            );
            return Err(std::io::Error::new(error.kind(), why));
        }
        limit.rlim_cur = target;
    }
    Ok(limit.rlim_cur)
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
