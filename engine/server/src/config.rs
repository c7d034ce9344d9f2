//! The public configuration: every tunable with its default, the policies, and the one place
//! that refuses a configuration that cannot work. A leaf module: the runtime reads it, it reads
//! nothing of the runtime.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

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
    /// Largest message accepted (1009 beyond). Default 16 MiB.
    pub max_message_size: u64,
    /// Largest frame accepted (1009 beyond). Default 16 MiB.
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
    /// Queued bytes above which the slow-consumer policy applies. Default 16 MiB.
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
    /// io_uring provided receive buffers per worker. Default 2048.
    pub recv_buffers: u32,
    /// Size of each io_uring receive buffer (epoll's shared one is at least 64 KiB). Default
    /// 32 KiB: a 16 KiB message with its header arrives in one buffer and is parsed in place.
    pub recv_buffer_size: usize,
    /// On shutdown, wait this long for clients to answer our 1001 close. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Most connections one worker holds (further accepts are refused). Default 1,000,000.
    pub max_connections_per_worker: usize,
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
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            max_head_bytes: 8 << 10,
            idle_timeout: Duration::from_secs(120),
            ping_idle: true,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            send_high_water: 1 << 20,
            send_limit: 16 << 20,
            slow_consumer: SlowConsumer::Close,
            topic_rules: Vec::new(),
            max_subscriptions: 4096,
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            health_path: None,
            tick: None,
            ring_entries: 4096,
            recv_buffers: 2048,
            recv_buffer_size: 32 << 10,
            shutdown_timeout: Duration::from_secs(5),
            max_connections_per_worker: 1_000_000,
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
        for (setting, flag, d) in [
            ("idle_timeout", "--idle-timeout", self.idle_timeout),
            ("handshake_timeout", "--handshake-timeout", self.handshake_timeout),
            ("close_timeout", "--close-timeout", self.close_timeout),
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
        if let Some(path) = &self.health_path {
            if !path.starts_with('/') {
                let why = format!("{path:?} does not start with '/'");
                return err("health_path", "--health-path", why);
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
            (Settings { tick: Some(Duration::from_micros(10)), ..base() }, "--tick-ms"),
            (Settings { ring_entries: 1000, ..base() }, "--ring-entries"),
            (Settings { recv_buffers: 0, ..base() }, "--recv-buffers"),
            (Settings { recv_buffer_size: 0, ..base() }, "--recv-buffer-size"),
            (Settings { max_connections_per_worker: 0, ..base() }, "--max-connections-per-worker"),
            (Settings { max_buffered_output: 1000, ..base() }, "--max-buffered-output"),
            (Settings { socket_send_buffer: 100, ..base() }, "--socket-send-buffer"),
            (Settings { subprotocols: vec!["a b".into()], ..base() }, "--subprotocols"),
            (Settings { health_path: Some("health".into()), ..base() }, "--health-path"),
        ];
        for (settings, flag) in cases {
            let e = settings.check().expect_err(flag);
            assert_eq!(e.flag, flag, "{e}");
            assert!(e.to_string().starts_with(flag), "{e}");
        }
    }
}
