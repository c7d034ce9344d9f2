//! The public configuration: every tunable with its default, the policies, and the one place
//! that refuses a configuration that cannot work. A leaf module: the runtime reads it, it reads
//! nothing of the runtime.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringside_proto::edge::{ForwardedHeader, TrustedProxies};

/// How many workers (event loops, one thread each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per online CPU.
    PerCore,
    /// Exactly this many (at least 1).
    Count(usize),
}

/// The I/O backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring when the kernel has every operation it needs, else epoll (logged).
    Auto,
    /// io_uring; fails to start if the kernel lacks it.
    IoUring,
    /// epoll through mio.
    Epoll,
}

/// What happens to a connection whose send queue passes the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close it with 1008 (policy violation). For streams where a gap is worse than a reconnect.
    Close,
    /// Drop the message for that connection, and count it.
    Drop,
    /// On topics: keep only the latest message per key for that connection (a message still
    /// waiting is replaced by the newer one with the same key), so a lagging subscriber gets the
    /// latest price or state, never a stale backlog. Memory stays bounded by the number of keys.
    /// For messages that are not publishes, the same as `Drop`.
    Conflate,
}

/// permessage-deflate (RFC 7692): whether and how the server compresses what it sends. What
/// clients send compressed is inflated in every mode but `Off`, within `max_message_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Offers are declined: every connection talks uncompressed.
    Off,
    /// Every message is compressed with a fresh context (the server answers
    /// `server_no_context_takeover`, and asks the client for `client_no_context_takeover`), by
    /// one compressor per worker: a connection holds no compression memory while idle, and a
    /// publish is compressed once per worker for all its subscribers.
    Shared,
    /// Each connection has its own compressor that keeps context between messages (better
    /// ratios for streams of similar messages), with a window of `deflate_window` bits, and
    /// clients may keep context too: a few hundred KiB per connection (docs/tuning.md), within
    /// `deflate_memory`. Publishes are compressed per subscriber.
    Dedicated,
}

/// How a topic treats a subscriber that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    /// What happens to a publish that does not fit under `limit`.
    pub slow_consumer: SlowConsumer,
    /// Queued bytes (of everything the connection has queued) above which the policy applies.
    pub limit: usize,
}

/// A per-topic policy: for topics named `pattern`, or starting with it if it ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// A topic name, or a prefix followed by `*`.
    pub pattern: String,
    /// The policy for those topics.
    pub policy: TopicPolicy,
}

/// Whether connections start with a PROXY protocol header (HAProxy's `send-proxy`,
/// `send-proxy-v2`; nginx stream's `proxy_protocol on`; cloud load balancers), versions 1 and 2.
///
/// When the header is read, it must arrive (whole, possibly over several reads) before the
/// upgrade request and within the handshake timeout. A connection whose first bytes are not a
/// valid header, or whose header comes from a TCP peer that is not in
/// [`Settings::trusted_proxies`] while that list is non-empty, is closed without an answer (the
/// protocol's rule: a prober learns nothing). A header's source address and port become the
/// client's; a `LOCAL` header (the proxy's health check) or `UNKNOWN` keeps the TCP peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProxyProtocol {
    /// No header is read: bytes that look like one are a malformed request (400).
    #[default]
    Off,
    /// Every connection from a trusted proxy may start with a header; one without is served as
    /// if it came straight from that proxy. Connections from other peers are read as HTTP, and
    /// closed if they start with a header. Needs a non-empty trusted list (the only way to tell
    /// whose header to believe).
    Optional,
    /// Every connection must start with a header. With a non-empty trusted list, connections
    /// from other peers are closed at accept; with an empty one, every peer's header is believed
    /// (for a listener only the proxy can reach).
    Required,
}

/// The certificate chain and private key a TLS (wss) server presents, in PEM.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsIdentity {
    /// Files read at start and again at each reload (`ServerHandle::reload_tls`, SIGHUP in the
    /// binary): replace them on disk, then reload.
    Files {
        /// The certificate chain: the server's certificate first, then intermediates.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// PEM bytes held in memory (a secret store, a test).
    Pem {
        /// The certificate chain.
        cert: Vec<u8>,
        /// The private key.
        key: Vec<u8>,
    },
}

impl TlsIdentity {
    /// The chain and key in the files `cert` and `key`.
    pub fn files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsIdentity::Files { cert: cert.into(), key: key.into() }
    }

    /// The chain and key from PEM bytes.
    pub fn pem(cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        TlsIdentity::Pem { cert: cert.into(), key: key.into() }
    }
}

// Never prints key material.
impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsIdentity::Files { cert, key } => {
                f.debug_struct("Files").field("cert", cert).field("key", key).finish()
            }
            TlsIdentity::Pem { cert, .. } => f
                .debug_struct("Pem")
                .field("cert", &format_args!("{} bytes", cert.len()))
                .field("key", &format_args!("(redacted)"))
                .finish(),
        }
    }
}

/// Every tunable, with its default. Build one with `Settings::default()` and struct update
/// syntax (`..Settings::default()`, so new fields do not break you), or through the builder;
/// [`Settings::check`] says what cannot work.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on. Default 127.0.0.1:9001.
    pub listen: SocketAddr,
    /// Share the port with other processes (SO_REUSEPORT across processes). Off: starting on a
    /// port another process already listens on fails with "address in use". Default off.
    pub reuse_port: bool,
    /// Worker count. Default one per CPU.
    pub workers: Workers,
    /// I/O backend. Default auto.
    pub backend: Backend,
    /// Pin worker i to CPU i (mod CPU count). Default on.
    pub pin: bool,
    /// Largest message accepted (1009 beyond). Default 1 MiB, as Python `websockets`: the
    /// most one connection can make the server hold for an unfinished message.
    pub max_message_size: u64,
    /// Largest frame accepted (1009 beyond). Default 1 MiB.
    pub max_frame_size: u64,
    /// Largest request head (431 beyond). Default 8 KiB.
    pub max_head_bytes: usize,
    /// Close connections silent for this long (a ping goes out at half of it if `ping_idle`).
    /// Default 120 s.
    pub idle_timeout: Duration,
    /// Ping idle connections at half the idle timeout, so live peers stay open. Default on.
    pub ping_idle: bool,
    /// A client must complete its upgrade request within this (slowloris). Default 10 s.
    pub handshake_timeout: Duration,
    /// After our close frame, wait this long for the peer's before dropping TCP. Default 5 s.
    pub close_timeout: Duration,
    /// Queued bytes above which `on_drain` is armed and reading pauses. Default 1 MiB.
    pub send_high_water: usize,
    /// Queued bytes above which the slow-consumer policy applies. Default 4 MiB: room for the
    /// echo of a maximum-size message (1 MiB and its header) with some queued before it. Keep
    /// it above `max_message_size` where messages are echoed or forwarded whole.
    pub send_limit: usize,
    /// The slow-consumer policy. Default close (1008).
    pub slow_consumer: SlowConsumer,
    /// Per-topic policies, first match wins; other topics use `slow_consumer` and `send_limit`.
    pub topic_rules: Vec<TopicRule>,
    /// Most topics one connection may subscribe to. Default 4096.
    pub max_subscriptions: usize,
    /// Origins allowed to connect (exact match, case-insensitive); empty: any. Default empty.
    pub allowed_origins: Vec<String>,
    /// Subprotocols, in the server's order of preference. Default none.
    pub subprotocols: Vec<String>,
    /// A path answered `200 ok` to a plain GET (a load balancer's health check), or none.
    /// Default none.
    pub health_path: Option<String>,
    /// The period of [`Handler::on_tick`](crate::Handler::on_tick) on every worker (a game
    /// loop's 33 ms), or none. Millisecond resolution. Default none.
    pub tick: Option<Duration>,
    /// io_uring submission queue entries (the completion queue gets 4x). Default 4096.
    pub ring_entries: u32,
    /// io_uring provided receive buffers per worker at start (8 MiB at the default size);
    /// the worker grows this up to 8 times on demand and shrinks back when usage stays low.
    /// Default 256.
    pub recv_buffers: u32,
    /// Size of each io_uring receive buffer (epoll's shared one is at least 64 KiB). Default
    /// 32 KiB: a 16 KiB message with its header arrives in one buffer and is parsed in place.
    pub recv_buffer_size: usize,
    /// On shutdown, wait this long for clients to answer our 1001 close. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Most connections one worker holds (further accepts are refused). Default 1,000,000.
    pub max_connections_per_worker: usize,
    /// The proxies whose forwarding headers and PROXY headers are believed (IPv4 and IPv6
    /// ranges). Default empty: nobody's, every client is its TCP peer.
    pub trusted_proxies: TrustedProxies,
    /// The forwarding headers read from a trusted proxy, in order: the first one the request
    /// carries is walked from the right past trusted hops (`ringside_proto::edge::resolve`).
    /// Default `x-forwarded-for` alone: a header the proxy passes through untouched is whatever
    /// the client wrote, and with several listed a proxy that sets only a later one would let a
    /// client's own copy of an earlier one decide. List others only if every trusted proxy sets
    /// them.
    pub forwarded_headers: Vec<ForwardedHeader>,
    /// Refuse (400) an upgrade from a trusted proxy that names no usable client: none of
    /// `forwarded_headers`, or one the walk could not finish (malformed, `unknown`, too long).
    /// Off: such a request is served with the last trusted address (logged at debug).
    /// Default off.
    pub require_forwarded: bool,
    /// Whether connections start with a PROXY protocol header. Default off.
    pub proxy_protocol: ProxyProtocol,
    /// One `info` event per upgrade attempt on target `ringside::access` (client, TCP peer,
    /// path, status, subprotocol, user agent). Default off.
    pub access_log: bool,
    /// Bytes the whole server may hold for clients' unfinished input: partial upgrade requests,
    /// partial frames, messages being assembled, control payloads, inflate state, bytes waiting
    /// for their turn. Each worker gets an equal share (never less than `max_message_size`). A
    /// connection whose input would take its worker past its share is closed with 1013 (try
    /// again later), or answered 503 during its upgrade. Default 256 MiB.
    pub max_buffered_input: usize,
    /// A message (or frame) that has started must finish within this, or the connection is
    /// closed with 1008. Checked every 250 ms. Default 30 s.
    pub message_timeout: Duration,
    /// Most frames (messages and control frames) handed to the handler per connection per
    /// loop iteration (1 to 65,535); the rest wait for the next iteration, reading paused.
    /// Default 64.
    pub read_budget_frames: u32,
    /// Most bytes parsed per connection per loop iteration, likewise. Default 256 KiB.
    pub read_budget_bytes: usize,
    /// Most pings and pongs a connection may send per second (1008 beyond), up to 65,535; 0:
    /// no limit. Default 1000.
    pub max_control_rate: u32,
    /// A message bus (`nats://host:port` or `redis://host:port`) that carries topic publishes
    /// to the other nodes of a cluster and theirs to this one (docs/cluster.md). Default none:
    /// topics stay within this process.
    pub bus: Option<String>,
    /// permessage-deflate. Default off.
    pub deflate: Compression,
    /// The window of a dedicated compressor, bits (9..=15): 9 holds about 245 KiB per
    /// connection, 15 about 371 KiB (docs/tuning.md). A client's smaller limit wins. Default 15.
    pub deflate_window: u8,
    /// Messages with a payload shorter than this many bytes are sent uncompressed (the
    /// extension allows any message uncompressed): compressing a few bytes costs more CPU than
    /// it saves on the wire. Default 128.
    pub deflate_threshold: usize,
    /// Per worker, the bytes of deflate state that connections may hold between messages
    /// (dedicated compressors, and inflaters of clients that keep context). Once spent, new
    /// connections are answered without the extension (never refused) until some close.
    /// Shared mode with no client context holds none per connection. Default 128 MiB.
    pub deflate_memory: usize,
    /// Serve TLS (wss) with this certificate and key (TLS 1.2 and 1.3, ALPN `http/1.1`); none:
    /// plain ws. Default none.
    pub tls: Option<TlsIdentity>,
    /// Where to serve the Prometheus `/metrics` and the readiness `/health` (a thread of its
    /// own, plain HTTP), or none. Default none.
    pub metrics_listen: Option<SocketAddr>,
    /// Most bytes of queued output the whole server holds: send queues, conflation stages and
    /// the socket send buffers of connections that stopped reading. Each worker gets an equal
    /// share; past it, the slow-consumer policy applies to the connections holding the most
    /// (close 1008, drop what they have pending, or for conflating subscribers stage
    /// further publishes), and connections that still hold too much are closed. Default: a
    /// quarter of the memory the process may use (the cgroup limit, else physical memory),
    /// but no more than half of the kernel's TCP memory pressure threshold
    /// (`net.ipv4.tcp_mem`), and at least 64 MiB: one publisher and a crowd of
    /// non-readers must fit in the machine, and in the kernel's TCP memory.
    pub max_buffered_output: usize,
    /// SO_SNDBUF for accepted sockets (Linux doubles it); 0 leaves the kernel's default
    /// (autotuned up to `net.ipv4.tcp_wmem`'s third value, 4 MiB on most systems). A
    /// connection whose sends wait on a full socket buffer counts that buffer against
    /// `max_buffered_output`. Default 128 KiB (256 KiB in the kernel): about 20 MB/s per
    /// connection at 100 ms round trip, and at most 256 KiB of kernel memory per non-reader.
    pub socket_send_buffer: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            reuse_port: false,
            workers: Workers::PerCore,
            backend: Backend::Auto,
            pin: true,
            max_message_size: 1 << 20,
            max_frame_size: 1 << 20,
            max_head_bytes: 8 << 10,
            idle_timeout: Duration::from_secs(120),
            ping_idle: true,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            send_high_water: 1 << 20,
            send_limit: 4 << 20,
            slow_consumer: SlowConsumer::Close,
            topic_rules: Vec::new(),
            max_subscriptions: 4096,
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            health_path: None,
            tick: None,
            bus: None,
            ring_entries: 4096,
            recv_buffers: 256,
            recv_buffer_size: 32 << 10,
            shutdown_timeout: Duration::from_secs(5),
            max_connections_per_worker: 1_000_000,
            trusted_proxies: TrustedProxies::default(),
            forwarded_headers: vec![ForwardedHeader::XForwardedFor],
            require_forwarded: false,
            proxy_protocol: ProxyProtocol::Off,
            access_log: false,
            max_buffered_input: 256 << 20,
            message_timeout: Duration::from_secs(30),
            read_budget_frames: 64,
            read_budget_bytes: 256 << 10,
            max_control_rate: 1000,
            deflate: Compression::Off,
            deflate_window: 15,
            deflate_threshold: 128,
            deflate_memory: 128 << 20,
            tls: None,
            metrics_listen: None,
            max_buffered_output: default_output_budget(),
            socket_send_buffer: 128 << 10,
        }
    }
}

/// The default of [`Settings::max_buffered_output`]: a quarter of the memory this process may
/// use, capped at half the kernel's TCP memory pressure threshold, at least 64 MiB.
fn default_output_budget() -> usize {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    // SAFETY: sysconf(3) takes no pointers.
    let (pages, page) =
        unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let page = usize::try_from(page).unwrap_or(4096);
    let mut memory = usize::try_from(pages).unwrap_or(0).saturating_mul(page);
    if let Some(limit) =
        read("/sys/fs/cgroup/memory.max").and_then(|s| s.trim().parse::<usize>().ok())
    {
        memory = if memory == 0 { limit } else { memory.min(limit) };
    }
    let mut budget = if memory == 0 { 1 << 30 } else { memory / 4 };
    if let Some(pressure) = read("/proc/sys/net/ipv4/tcp_mem")
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()))
    {
        budget = budget.min(pressure.saturating_mul(page) / 2);
    }
    budget.max(64 << 20)
}

/// A setting that cannot work, found before anything starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field of [`Settings`] (and builder method) at fault.
    pub setting: &'static str,
    /// The `ringside` binary's flag for it.
    pub flag: &'static str,
    /// What is wrong and what would work.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.flag, self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Refuses a configuration that cannot work, naming the setting and its flag. The builder
    /// and the binary both call this before binding anything.
    pub fn check(&self) -> Result<(), ConfigError> {
        let err = |setting, flag, reason: String| Err(ConfigError { setting, flag, reason });
        if let Workers::Count(0) = self.workers {
            return err("workers", "--workers", "must be at least 1 (or auto)".into());
        }
        if let Workers::Count(n) = self.workers {
            if n > usize::from(u16::MAX) {
                return err("workers", "--workers", format!("{n} is more than 65535"));
            }
        }
        if self.max_message_size == 0 {
            return err("max_message_size", "--max-message-size", "must be at least 1".into());
        }
        if self.max_frame_size == 0 {
            return err("max_frame_size", "--max-frame-size", "must be at least 1".into());
        }
        if self.max_head_bytes < 256 {
            let why = format!(
                "{} bytes cannot hold an upgrade request; use 256 or more",
                self.max_head_bytes
            );
            return err("max_head_bytes", "--max-head-bytes", why);
        }
        if self.send_limit == 0 {
            return err("send_limit", "--send-limit", "must be at least 1".into());
        }
        if self.send_high_water > self.send_limit {
            let why = format!(
                "the high-water mark ({}) is above the send limit ({}): reading would never \
                 pause before the slow-consumer policy applies",
                self.send_high_water, self.send_limit
            );
            return err("send_high_water", "--send-high-water", why);
        }
        if (self.max_buffered_input as u64) < self.max_message_size {
            let why = format!(
                "{} bytes cannot hold one message of the maximum size ({}); raise it or lower \
                 --max-message-size",
                self.max_buffered_input, self.max_message_size
            );
            return err("max_buffered_input", "--max-buffered-input", why);
        }
        if self.read_budget_frames == 0 || self.read_budget_frames > 65_535 {
            let why = format!("{} is outside 1 to 65535", self.read_budget_frames);
            return err("read_budget_frames", "--read-budget-frames", why);
        }
        if self.max_control_rate > 65_535 {
            let why =
                format!("{} is more than 65535 (0 turns the limit off)", self.max_control_rate);
            return err("max_control_rate", "--max-control-rate", why);
        }
        if self.read_budget_bytes == 0 {
            return err("read_budget_bytes", "--read-budget-bytes", "must be at least 1".into());
        }
        for (setting, flag, d) in [
            ("idle_timeout", "--idle-timeout", self.idle_timeout),
            ("handshake_timeout", "--handshake-timeout", self.handshake_timeout),
            ("close_timeout", "--close-timeout", self.close_timeout),
            ("message_timeout", "--message-timeout", self.message_timeout),
        ] {
            if d.is_zero() {
                return err(setting, flag, "must be more than zero".into());
            }
        }
        if self.tick.is_some_and(|t| t < Duration::from_millis(1)) {
            return err("tick", "--tick-ms", "the tick period is at least 1 ms".into());
        }
        if self.ring_entries == 0 || !self.ring_entries.is_power_of_two() {
            let why = format!("{} is not a power of two", self.ring_entries);
            return err("ring_entries", "--ring-entries", why);
        }
        if self.recv_buffers == 0
            || !self.recv_buffers.is_power_of_two()
            || self.recv_buffers > 32768
        {
            let why = format!("{} is not a power of two from 1 to 32768", self.recv_buffers);
            return err("recv_buffers", "--recv-buffers", why);
        }
        if self.recv_buffer_size < 512 || self.recv_buffer_size > (1 << 30) {
            let why = format!("{} is outside 512 bytes to 1 GiB", self.recv_buffer_size);
            return err("recv_buffer_size", "--recv-buffer-size", why);
        }
        if self.max_connections_per_worker == 0 {
            let why = "must be at least 1".into();
            return err("max_connections_per_worker", "--max-connections-per-worker", why);
        }
        if self.max_buffered_output < 1 << 20 {
            let why = format!(
                "{} bytes cannot hold one connection's output; use 1 MiB or more",
                self.max_buffered_output
            );
            return err("max_buffered_output", "--max-buffered-output", why);
        }
        if self.socket_send_buffer != 0 && !(4096..=(1 << 30)).contains(&self.socket_send_buffer) {
            let why = format!(
                "{} is outside 4 KiB to 1 GiB (0 leaves the kernel's default)",
                self.socket_send_buffer
            );
            return err("socket_send_buffer", "--socket-send-buffer", why);
        }
        if self.max_subscriptions == 0 {
            return err("max_subscriptions", "--max-subscriptions", "must be at least 1".into());
        }
        for rule in &self.topic_rules {
            if rule.pattern.is_empty() || rule.policy.limit == 0 {
                let why = format!("rule {:?} has an empty pattern or a zero limit", rule.pattern);
                return err("topic_rules", "--topic", why);
            }
        }
        for p in &self.subprotocols {
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_graphic() && !b"(),/:;<=>?@[\\]{}\"".contains(&b))
            {
                let why = format!("{p:?} is not an HTTP token");
                return err("subprotocols", "--subprotocols", why);
            }
        }
        if self.proxy_protocol == ProxyProtocol::Optional && self.trusted_proxies.is_empty() {
            let why = "optional PROXY headers need --trusted-proxies: with nobody trusted, any \
                       client could name any address (use required behind a proxy only it can \
                       reach)"
                .into();
            return err("proxy_protocol", "--proxy-protocol", why);
        }
        if self.require_forwarded && self.trusted_proxies.is_empty() {
            let why =
                "nothing to require without --trusted-proxies: no peer's headers are read".into();
            return err("require_forwarded", "--require-forwarded", why);
        }
        if self.require_forwarded && self.forwarded_headers.is_empty() {
            let why = "no header can satisfy it: --forwarded-headers is empty".into();
            return err("require_forwarded", "--require-forwarded", why);
        }
        if !(9..=15).contains(&self.deflate_window) {
            let why = format!("{} is outside 9 to 15 (bits)", self.deflate_window);
            return err("deflate_window", "--deflate-window", why);
        }
        match &self.tls {
            Some(TlsIdentity::Files { cert, key })
                if cert.as_os_str().is_empty() || key.as_os_str().is_empty() =>
            {
                let why = "both a certificate file and a key file are needed".into();
                return err("tls", "--tls-cert/--tls-key", why);
            }
            Some(TlsIdentity::Pem { cert, key }) if cert.is_empty() || key.is_empty() => {
                let why = "both a certificate chain and a key are needed (empty PEM)".into();
                return err("tls", "--tls-cert/--tls-key", why);
            }
            _ => {}
        }
        if let Some(addr) = self.metrics_listen {
            if addr.port() != 0
                && addr.port() == self.listen.port()
                && addr.ip() == self.listen.ip()
            {
                let why = format!("{addr} is also the WebSocket address; pick another port");
                return err("metrics_listen", "--metrics-listen", why);
            }
        }
        if let Some(path) = &self.health_path {
            if !path.starts_with('/') {
                let why = format!("{path:?} does not start with '/'");
                return err("health_path", "--health-path", why);
            }
        }
        if let Some(url) = &self.bus {
            if let Err(e) = ringside_bus::check_url(url) {
                return err("bus", "--bus", e.to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass() {
        Settings::default().check().unwrap();
    }

    #[test]
    fn edge_settings_that_work_pass() {
        let trusted: TrustedProxies = "127.0.0.1/32,fd00::/8".parse().unwrap();
        for proxy_protocol in [ProxyProtocol::Off, ProxyProtocol::Optional, ProxyProtocol::Required]
        {
            let s = Settings {
                trusted_proxies: trusted.clone(),
                require_forwarded: true,
                proxy_protocol,
                ..Settings::default()
            };
            s.check().unwrap();
        }
        // Required with nobody trusted: every peer's header is believed (a private listener).
        Settings { proxy_protocol: ProxyProtocol::Required, ..Settings::default() }
            .check()
            .unwrap();
    }

    #[test]
    fn the_default_output_budget_fits_the_machine() {
        let budget = default_output_budget();
        assert!(budget >= 64 << 20, "{budget}");
        // SAFETY: sysconf(3) takes no pointers.
        let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) } as usize;
        assert!(budget <= (pages * 4096 / 4).max(64 << 20), "{budget}");
    }

    #[test]
    fn each_bad_setting_is_named() {
        let base = Settings::default;
        let cases: Vec<(Settings, &str)> = vec![
            (Settings { workers: Workers::Count(0), ..base() }, "--workers"),
            (Settings { max_message_size: 0, ..base() }, "--max-message-size"),
            (Settings { max_frame_size: 0, ..base() }, "--max-frame-size"),
            (Settings { max_head_bytes: 10, ..base() }, "--max-head-bytes"),
            (Settings { send_limit: 0, ..base() }, "--send-limit"),
            (Settings { send_limit: 10, send_high_water: 100, ..base() }, "--send-high-water"),
            (Settings { idle_timeout: Duration::ZERO, ..base() }, "--idle-timeout"),
            (Settings { message_timeout: Duration::ZERO, ..base() }, "--message-timeout"),
            (Settings { max_buffered_input: 1000, ..base() }, "--max-buffered-input"),
            (Settings { read_budget_frames: 0, ..base() }, "--read-budget-frames"),
            (Settings { read_budget_frames: 70_000, ..base() }, "--read-budget-frames"),
            (Settings { max_control_rate: 70_000, ..base() }, "--max-control-rate"),
            (Settings { read_budget_bytes: 0, ..base() }, "--read-budget-bytes"),
            (Settings { tick: Some(Duration::from_micros(10)), ..base() }, "--tick-ms"),
            (Settings { ring_entries: 1000, ..base() }, "--ring-entries"),
            (Settings { recv_buffers: 0, ..base() }, "--recv-buffers"),
            (Settings { recv_buffer_size: 0, ..base() }, "--recv-buffer-size"),
            (Settings { max_connections_per_worker: 0, ..base() }, "--max-connections-per-worker"),
            (Settings { max_buffered_output: 1000, ..base() }, "--max-buffered-output"),
            (Settings { socket_send_buffer: 100, ..base() }, "--socket-send-buffer"),
            (Settings { subprotocols: vec!["a b".into()], ..base() }, "--subprotocols"),
            (Settings { health_path: Some("health".into()), ..base() }, "--health-path"),
            (Settings { proxy_protocol: ProxyProtocol::Optional, ..base() }, "--proxy-protocol"),
            (Settings { require_forwarded: true, ..base() }, "--require-forwarded"),
            (
                Settings {
                    require_forwarded: true,
                    trusted_proxies: "10.0.0.0/8".parse().unwrap(),
                    forwarded_headers: Vec::new(),
                    ..base()
                },
                "--require-forwarded",
            ),
            (Settings { bus: Some("amqp://127.0.0.1".into()), ..base() }, "--bus"),
            (Settings { bus: Some("nats://127.0.0.1:99999".into()), ..base() }, "--bus"),
            (Settings { deflate_window: 8, ..base() }, "--deflate-window"),
            (Settings { deflate_window: 16, ..base() }, "--deflate-window"),
            (
                Settings { tls: Some(TlsIdentity::files("", "key.pem")), ..base() },
                "--tls-cert/--tls-key",
            ),
            (
                Settings { tls: Some(TlsIdentity::pem(b"x".to_vec(), vec![])), ..base() },
                "--tls-cert/--tls-key",
            ),
            (Settings { metrics_listen: Some(base().listen), ..base() }, "--metrics-listen"),
        ];
        for (settings, flag) in cases {
            let e = settings.check().expect_err(flag);
            assert_eq!(e.flag, flag, "{e}");
            assert!(e.to_string().starts_with(flag), "{e}");
        }
    }

    #[test]
    fn a_tls_key_never_shows_in_debug_output() {
        let id = TlsIdentity::pem(b"CERT".to_vec(), b"SECRET-KEY".to_vec());
        let shown = format!("{:?}", Settings { tls: Some(id), ..Settings::default() });
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
