//! The `ringside` binary: a WebSocket server with every tunable as a flag, running a demo app.
//!
//! `--app echo` (default) sends every message back; `--app broadcast` is a pub/sub server
//! speaking a small text protocol (docs/broadcast.md): `sub <topic>`, `unsub <topic>`,
//! `pub <topic> <payload>`.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ringside::{
    Backend, Compression, Handler, Message, Server, Settings, SlowConsumer, TlsIdentity,
    TopicPolicy, TopicRule, WebSocket, Workers,
};
use ringside::{ForwardedHeader, ProxyProtocol, TrustedProxies};

#[derive(Debug, Parser)]
#[command(
    name = "ringside",
    version,
    about = "A thread-per-core WebSocket server on io_uring and epoll"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Worker threads: a number, or "auto" for one per CPU.
    #[arg(long, default_value = "auto")]
    workers: String,
    /// I/O backend; auto probes io_uring and falls back to epoll.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Don't pin worker i to CPU i.
    #[arg(long)]
    no_pin: bool,
    /// The demo application.
    #[arg(long, value_enum, default_value = "echo")]
    app: App,
    /// Largest message accepted, bytes (close 1009 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_message_size: u64,
    /// Largest frame accepted, bytes (close 1009 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_frame_size: u64,
    /// Largest upgrade request head, bytes (431 beyond).
    #[arg(long, default_value_t = 8 << 10)]
    max_head_bytes: usize,
    /// Close connections silent this long, seconds.
    #[arg(long, default_value_t = 120)]
    idle_timeout: u64,
    /// Don't ping connections silent for half the idle timeout.
    #[arg(long)]
    no_idle_ping: bool,
    /// Seconds a client has to complete its upgrade request.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds to wait for the peer's close frame after ours.
    #[arg(long, default_value_t = 5)]
    close_timeout: u64,
    /// Queued bytes per connection above which reading pauses and on_drain is armed.
    #[arg(long, default_value_t = 1 << 20)]
    send_high_water: usize,
    /// Queued bytes per connection above which the slow-consumer policy applies (keep it
    /// above --max-message-size to echo or forward a message of that size).
    #[arg(long, default_value_t = 4 << 20)]
    send_limit: usize,
    /// What to do with a connection over the send limit (conflate: on topics, keep only the
    /// latest message per key; elsewhere the same as drop).
    #[arg(long, value_enum, default_value = "close")]
    slow_consumer: SlowArg,
    /// A per-topic policy, PATTERN=POLICY[:LIMIT] (PATTERN is a topic name or a prefix ending
    /// in `*`; LIMIT in bytes, default the send limit). Repeatable; the first match wins.
    /// Example: --topic 'price.*=conflate:65536'.
    #[arg(long = "topic", value_parser = parse_topic_rule)]
    topics: Vec<TopicRule>,
    /// Most topics one connection may subscribe to.
    #[arg(long, default_value_t = 4096)]
    max_subscriptions: usize,
    /// io_uring submission queue entries per worker.
    #[arg(long, default_value_t = 4096)]
    ring_entries: u32,
    /// io_uring provided receive buffers per worker at start (grown up to 8x on demand).
    #[arg(long, default_value_t = 256)]
    recv_buffers: u32,
    /// Receive buffer size, bytes (epoll's one shared buffer is at least 64 KiB).
    #[arg(long, default_value_t = 32 << 10)]
    recv_buffer_size: usize,
    /// Origins allowed to connect, comma-separated (exact match); empty: any.
    #[arg(long, value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Subprotocols in order of preference, comma-separated.
    #[arg(long, value_delimiter = ',')]
    subprotocols: Vec<String>,
    /// Seconds to wait for clients to answer the 1001 close on shutdown.
    #[arg(long, default_value_t = 5)]
    shutdown_timeout: u64,
    /// Most connections per worker.
    #[arg(long, default_value_t = 1_000_000)]
    max_connections_per_worker: usize,
    /// Bytes the server may hold for clients' unfinished input, all workers together (each
    /// gets an equal share); a connection that would pass it is closed with 1013.
    #[arg(long, default_value_t = 256 << 20)]
    max_buffered_input: usize,
    /// Seconds a started message has to finish (close 1008 beyond).
    #[arg(long, default_value_t = 30)]
    message_timeout: u64,
    /// Most frames handed to the application per connection per loop iteration.
    #[arg(long, default_value_t = 64)]
    read_budget_frames: u32,
    /// Most bytes parsed per connection per loop iteration.
    #[arg(long, default_value_t = 256 << 10)]
    read_budget_bytes: usize,
    /// Most pings and pongs per connection per second (close 1008 beyond); 0: no limit.
    #[arg(long, default_value_t = 1000)]
    max_control_rate: u32,
    /// Most bytes of queued output the server holds (send queues, conflation stages, socket
    /// buffers of connections that stopped reading), shared equally by the workers; past it
    /// the largest holders get their slow-consumer policy. Default: a quarter of the memory
    /// (cgroup limit or physical), at most half of net.ipv4.tcp_mem's pressure threshold.
    #[arg(long)]
    max_buffered_output: Option<usize>,
    /// SO_SNDBUF of accepted sockets, bytes (the kernel doubles it); 0: the kernel's default.
    #[arg(long, default_value_t = 128 << 10)]
    socket_send_buffer: usize,
    /// Share the port with other processes already listening on it (SO_REUSEPORT); without
    /// it, a port in use is an error.
    #[arg(long)]
    reuse_port: bool,
    /// Answer `200 ok` to a plain GET of this path (load balancers' health checks); "" for none.
    #[arg(long, default_value = "/health")]
    health_path: String,
    /// Serve wss: the certificate chain (PEM: the server's certificate first, then
    /// intermediates). Needs --tls-key. SIGHUP reloads both files; open connections keep their
    /// session, new ones get the new certificate.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Log format on stderr: text or json (one object per line). Levels come from RUST_LOG
    /// (default info), e.g. RUST_LOG=ringside=debug.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Fan topics out across nodes over this message bus: nats://host:port or
    /// redis://host:port (user:password@ before the host if it wants one). See docs/cluster.md.
    #[arg(long)]
    bus: Option<String>,
    /// permessage-deflate: off; shared (one compressor per worker, fresh context per message,
    /// no compression memory per idle connection); dedicated (a compressor per connection that
    /// keeps context: better ratios, a few hundred KiB each).
    #[arg(long, value_enum, default_value = "off")]
    deflate: DeflateArg,
    /// Window of a dedicated compressor, bits (9 to 15): about 245 KiB per connection at 9,
    /// 371 KiB at 15.
    #[arg(long, default_value_t = 15)]
    deflate_window: u8,
    /// Send messages shorter than this many bytes uncompressed.
    #[arg(long, default_value_t = 128)]
    deflate_threshold: usize,
    /// Per worker, bytes of deflate state connections may hold between messages (dedicated
    /// compressors, inflaters of clients that keep context); past it, new connections are
    /// served without compression.
    #[arg(long, default_value_t = 128 << 20)]
    deflate_memory: usize,
    /// Print a line of counters (connections, publishes delivered, dropped, conflated,
    /// slow consumers closed) to stderr every this many seconds; 0: never.
    #[arg(long, default_value_t = 0)]
    metrics: u64,
    /// Serve Prometheus metrics (GET /metrics) and readiness (GET /health) on this address,
    /// e.g. 127.0.0.1:9180; off when absent. No authentication: bind loopback or a management
    /// network.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Proxies whose forwarding headers and PROXY headers are believed, comma-separated
    /// addresses or ranges, IPv4 and IPv6: 127.0.0.1/32,10.0.0.0/8,fd00::/8. Empty: nobody.
    #[arg(long, default_value = "", value_parser = TrustedProxies::parse_list)]
    trusted_proxies: TrustedProxies,
    /// Forwarding headers read from a trusted proxy, in order (the first present is used):
    /// x-forwarded-for, forwarded, x-real-ip. List only headers every trusted proxy sets.
    #[arg(long, default_value = "x-forwarded-for", value_parser = parse_header_order)]
    forwarded_headers: HeaderOrder,
    /// Answer 400 to a trusted proxy's upgrade request that names no usable client.
    #[arg(long)]
    require_forwarded: bool,
    /// PROXY protocol (v1 and v2) header before each request: off, optional (trusted proxies
    /// may send one) or required (every connection; with --trusted-proxies, only from them).
    #[arg(long, value_enum, default_value = "off")]
    proxy_protocol: ProxyArg,
    /// Log one line per upgrade attempt (target ringside::access): client, TCP peer, path,
    /// status, subprotocol, user agent.
    #[arg(long)]
    access_log: bool,
}

/// `--forwarded-headers`, parsed whole (clap would split a plain `Vec`).
#[derive(Debug, Clone)]
struct HeaderOrder(Vec<ForwardedHeader>);

fn parse_header_order(s: &str) -> Result<HeaderOrder, String> {
    ForwardedHeader::parse_list(s).map(HeaderOrder).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProxyArg {
    Off,
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the log subscriber: RUST_LOG's filter (default info) on stderr.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeflateArg {
    Off,
    Shared,
    Dedicated,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SlowArg {
    Close,
    Drop,
    Conflate,
}

impl From<SlowArg> for SlowConsumer {
    fn from(arg: SlowArg) -> Self {
        match arg {
            SlowArg::Close => SlowConsumer::Close,
            SlowArg::Drop => SlowConsumer::Drop,
            SlowArg::Conflate => SlowConsumer::Conflate,
        }
    }
}

/// `PATTERN=POLICY[:LIMIT]`; the limit is filled in from `--send-limit` later when absent (0).
fn parse_topic_rule(arg: &str) -> Result<TopicRule, String> {
    let (pattern, policy) =
        arg.split_once('=').ok_or("expected PATTERN=POLICY[:LIMIT], e.g. 'price.*=conflate'")?;
    if pattern.is_empty() {
        return Err("empty topic pattern".into());
    }
    let (policy, limit) = match policy.split_once(':') {
        Some((p, l)) => (p, l.parse::<usize>().map_err(|_| format!("bad limit {l:?}"))?),
        None => (policy, 0),
    };
    let slow = SlowArg::from_str(policy, true)
        .map_err(|_| format!("unknown policy {policy:?} (close, drop or conflate)"))?;
    Ok(TopicRule {
        pattern: pattern.to_owned(),
        policy: TopicPolicy { slow_consumer: slow.into(), limit },
    })
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum App {
    Echo,
    Broadcast,
}

struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

/// The `broadcast` app: pub/sub over a text protocol (docs/broadcast.md).
struct Broadcast;

impl Handler for Broadcast {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(line) = msg else {
            let _ = ws.send_text("error binary messages are not part of this protocol");
            return;
        };
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match verb {
            "sub" | "unsub" if rest.is_empty() || rest.contains(' ') => {
                format!("error {verb} takes one topic")
            }
            "sub" => match ws.subscribe(rest) {
                Ok(_) => format!("ok sub {rest}"),
                Err(e) => format!("error {e}"),
            },
            "unsub" => {
                ws.unsubscribe(rest);
                format!("ok unsub {rest}")
            }
            "pub" => match rest.split_once(' ') {
                Some((topic, payload)) if !topic.is_empty() => {
                    ws.publish(topic, Message::Text(payload));
                    return;
                }
                _ => "error pub takes a topic and a payload".to_owned(),
            },
            _ => "error unknown command (sub, unsub, pub)".to_owned(),
        };
        let _ = ws.send_text(&reply);
    }
}

fn main() {
    let args = Args::parse();
    init_logs(args.log_format);
    if let Err(e) = run(args) {
        eprintln!("ringside: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    let workers = match args.workers.as_str() {
        "auto" => Workers::PerCore,
        n => Workers::Count(n.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("--workers: not a number: {n}"))
        })?),
    };
    let settings = Settings {
        listen: args.listen,
        workers,
        backend: match args.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::IoUring => Backend::IoUring,
            BackendArg::Epoll => Backend::Epoll,
        },
        pin: !args.no_pin,
        max_message_size: args.max_message_size,
        max_frame_size: args.max_frame_size,
        max_head_bytes: args.max_head_bytes,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        ping_idle: !args.no_idle_ping,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        close_timeout: Duration::from_secs(args.close_timeout),
        send_high_water: args.send_high_water,
        send_limit: args.send_limit,
        slow_consumer: args.slow_consumer.into(),
        topic_rules: args
            .topics
            .into_iter()
            .map(|mut rule| {
                if rule.policy.limit == 0 {
                    rule.policy.limit = args.send_limit;
                }
                rule
            })
            .collect(),
        max_subscriptions: args.max_subscriptions,
        allowed_origins: args.allowed_origins,
        subprotocols: args.subprotocols,
        ring_entries: args.ring_entries,
        recv_buffers: args.recv_buffers,
        recv_buffer_size: args.recv_buffer_size,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        max_connections_per_worker: args.max_connections_per_worker,
        max_buffered_input: args.max_buffered_input,
        message_timeout: Duration::from_secs(args.message_timeout),
        read_budget_frames: args.read_budget_frames,
        read_budget_bytes: args.read_budget_bytes,
        max_control_rate: args.max_control_rate,
        max_buffered_output: args
            .max_buffered_output
            .unwrap_or_else(|| Settings::default().max_buffered_output),
        socket_send_buffer: args.socket_send_buffer,
        reuse_port: args.reuse_port,
        health_path: (!args.health_path.is_empty()).then(|| args.health_path.clone()),
        trusted_proxies: args.trusted_proxies.clone(),
        forwarded_headers: args.forwarded_headers.0.clone(),
        require_forwarded: args.require_forwarded,
        proxy_protocol: match args.proxy_protocol {
            ProxyArg::Off => ProxyProtocol::Off,
            ProxyArg::Optional => ProxyProtocol::Optional,
            ProxyArg::Required => ProxyProtocol::Required,
        },
        access_log: args.access_log,
        bus: args.bus.clone(),
        deflate: match args.deflate {
            DeflateArg::Off => Compression::Off,
            DeflateArg::Shared => Compression::Shared,
            DeflateArg::Dedicated => Compression::Dedicated,
        },
        deflate_window: args.deflate_window,
        deflate_threshold: args.deflate_threshold,
        deflate_memory: args.deflate_memory,
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity::files(cert, key)),
            _ => None,
        },
        metrics_listen: args.metrics_listen,
        ..Settings::default()
    };
    settings.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Before building: each io_uring worker sizes its direct-descriptor table from this limit.
    let fd_limit = match ringside::raise_fd_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    let builder = Server::builder().settings(settings.clone());
    match args.app {
        App::Echo => serve(builder.build(|| Echo)?, &settings, fd_limit, "echo", args.metrics),
        App::Broadcast => {
            serve(builder.build(|| Broadcast)?, &settings, fd_limit, "broadcast", args.metrics)
        }
    }
}

fn serve<H: Handler, F: Fn() -> H + Send + Sync + 'static>(
    server: ringside::Running<H, F>,
    s: &Settings,
    fd_limit: Option<u64>,
    app: &str,
    metrics_secs: u64,
) -> io::Result<()> {
    let workers = match s.workers {
        Workers::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    };
    let backend = server.backend_name();
    tracing::info!(
        "app {app}, backend {backend}, {workers} worker(s), {}, pinning {}, \
         max message {} B, max frame {} B, send limit {} B ({:?} when over), idle timeout {} s, \
         deflate {:?}, output budget {} B, socket send buffer {} B, open-file limit {}",
        if s.tls.is_some() { "TLS (wss)" } else { "plain ws" },
        if s.pin { "on" } else { "off" },
        s.max_message_size,
        s.max_frame_size,
        s.send_limit,
        s.slow_consumer,
        s.idle_timeout.as_secs(),
        s.deflate,
        s.max_buffered_output,
        s.socket_send_buffer,
        fd_limit.map_or_else(|| "not raised".to_owned(), |n| n.to_string()),
    );
    if !s.trusted_proxies.is_empty() || s.proxy_protocol != ProxyProtocol::Off {
        let headers: Vec<&str> = s.forwarded_headers.iter().map(|h| h.name()).collect();
        eprintln!(
            "ringside: trusted proxies [{}], forwarding headers [{}], PROXY protocol {:?}",
            s.trusted_proxies,
            headers.join(","),
            s.proxy_protocol,
        );
    }
    if let Some(fd_limit) = fd_limit.filter(|&n| backend == "epoll" && n < 100_000) {
        tracing::warn!(
            "epoll uses one process fd per connection; this process can hold at most about \
             {fd_limit} connections (io_uring's direct descriptors do not count)"
        );
    }
    if (s.send_limit as u64) < s.max_message_size.saturating_add(14) {
        eprintln!(
            "ringside: warning: --send-limit ({} B) is below --max-message-size ({} B) plus a \
             frame header: sending back or forwarding a message of the maximum size closes the \
             connection with 1008 (slow consumer)",
            s.send_limit, s.max_message_size
        );
    }
    // Catch the signals before announcing the address: a script that reads the line and
    // signals at once must get a graceful shutdown, not the default action.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    // SIGHUP reloads the certificate (with TLS); without TLS it keeps its default action.
    let reload = Arc::new(AtomicBool::new(false));
    if s.tls.is_some() {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
    }
    let addr = server.local_addr();
    let handle = server.spawn()?;
    tracing::info!("listening on {addr}");
    if let Some(metrics) = handle.metrics_addr() {
        tracing::info!("metrics on http://{metrics}/metrics, readiness on http://{metrics}/health");
    }
    // Tests and scripts read the bound address from this line.
    println!("ringside: listening on {addr}");
    if let Some(metrics) = handle.metrics_addr() {
        // And the metrics address from this one (port 0 picks a free port).
        println!("ringside: metrics on {metrics}");
    }
    let every = Duration::from_secs(metrics_secs);
    let mut next_metrics = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) && !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        if reload.swap(false, Ordering::Relaxed) {
            // Success is logged by the library; the old certificate stays on failure.
            if let Err(e) = handle.reload_tls() {
                tracing::error!(error = %e, "certificate reload failed; serving the previous one");
            }
        }
        if metrics_secs > 0 && Instant::now() >= next_metrics {
            next_metrics += every;
            let m = handle.stats();
            eprintln!(
                "ringside: metrics: connections {}, delivered {}, dropped {}, conflated {}, \
                 slow consumers closed {}, bus gaps {} (lost {}), compressed shared {}, \
                 compressed per connection {}, deflate declined {}, deflate memory {} B, \
                 buffered output {} B",
                m.connections,
                m.delivered,
                m.dropped,
                m.conflated,
                m.slow_closed,
                m.bus_gaps,
                m.bus_lost,
                m.compressed_shared,
                m.compressed_per_conn,
                m.deflate_declined,
                m.deflate_memory,
                m.buffered_output
            );
        }
    }
    tracing::info!("shutting down");
    handle.shutdown()?;
    tracing::info!("shut down");
    Ok(())
}
