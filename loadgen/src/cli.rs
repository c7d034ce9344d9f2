//! Command-line flags (clap derive). The scenario structs are also what the parent sends a child
//! process (as JSON), so a child runs with exactly the parent's settings.

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "ringside-load",
    version,
    about = "A WebSocket load generator: closed-loop echo, open-loop rate, connect rate, \
             connection scale and pub/sub fan-out. Talks to 127.0.0.0/8 only unless --allow-remote."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Closed loop: C connections, K messages of S bytes in flight on each.
    Echo(EchoArgs),
    /// Open loop at a fixed total message rate; latency from the intended send time.
    Rate(RateArgs),
    /// Connectors looping connect, upgrade, close: handshakes per second.
    Connect(ConnectArgs),
    /// Ramp to N idle connections, hold them, sample echo latency, close them all.
    Hold(HoldArgs),
    /// Pub/sub fan-out over the `sub`/`pub` text protocol.
    Fanout(FanoutArgs),
    /// A child process's share of a run (started by the parent, not by hand).
    #[command(hide = true)]
    Child {
        /// The part to run, as JSON.
        #[arg(long)]
        spec: String,
    },
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Common {
    /// Server URL (ws:// only).
    #[arg(long)]
    pub url: Option<String>,
    /// Server address host:port (instead of --url).
    #[arg(long, conflicts_with = "url")]
    pub target: Option<String>,
    /// Request path with --target.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Event-loop threads per process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin threads to these CPUs (comma-separated), round-robin over all threads of all processes.
    #[arg(long, value_delimiter = ',')]
    pub pin_cpus: Vec<usize>,
    /// Source addresses 127.0.0.1 .. 127.0.0.N to spread connections over (default: one per
    /// 25,000 connections).
    #[arg(long)]
    pub source_addrs: Option<u32>,
    /// Let the kernel pick local ports (IP_BIND_ADDRESS_NO_PORT) instead of assigning each
    /// connection its own; the kernel's search slows down badly past ~100k connections.
    #[arg(long)]
    pub kernel_ports: bool,
    /// Child processes (default: enough that each stays under the open-file limit).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Write the JSON report here (`-` for stdout; the human summary then goes to stderr).
    #[arg(long)]
    pub json: Option<String>,
    /// The server's pid: read its CPU time and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The target answers the upgrade, then echoes every byte verbatim (bench/peers `raw-echo`):
    /// replies are parsed as our own masked frames.
    #[arg(long)]
    pub raw_echo: bool,
    /// Warm-up seconds before the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds a connection may take from TCP connect to the parsed 101.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds a clean close (our close frame, the server's, its FIN) may take.
    #[arg(long, default_value_t = 5.0)]
    pub close_timeout: f64,
    /// Connections opened per second while setting up (0: as fast as --max-pending allows;
    /// hold defaults to 20,000).
    #[arg(long)]
    pub ramp_rate: Option<f64>,
    /// Most handshakes in progress at once, over all threads and processes.
    #[arg(long, default_value_t = 1000)]
    pub max_pending: usize,
    /// Microseconds each thread polls without sleeping after its last event before it blocks
    /// (0: block at once). Over loopback a sleeping receiver makes every send of the server pay
    /// for waking it (an inter-processor interrupt); a real client is on another host.
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// Offer permessage-deflate (`permessage-deflate; client_max_window_bits`, as browsers do)
    /// and inflate the messages the server compresses; what we send stays uncompressed. Reports
    /// then count wire bytes per delivery (`wire_bytes_per_msg`) beside the payload bytes.
    #[arg(long)]
    pub deflate: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Allow targets outside 127.0.0.0/8.
    #[arg(long)]
    pub allow_remote: bool,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub conns: u64,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 20)]
    pub size: usize,
    /// Text messages (default binary).
    #[arg(long)]
    pub text: bool,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct RateArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub conns: u64,
    /// Total messages per second over all connections.
    #[arg(long)]
    pub rate: f64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 20)]
    pub size: usize,
    /// Text messages (default binary).
    #[arg(long)]
    pub text: bool,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connectors, each looping connect, upgrade, close.
    #[arg(long, default_value_t = 10)]
    pub concurrency: u64,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub conns: u64,
    /// Seconds to hold them idle before sampling.
    #[arg(long, default_value_t = 5.0)]
    pub hold_secs: f64,
    /// Each held connection pings this often and must get its pong.
    #[arg(long)]
    pub ping_interval: Option<f64>,
    /// Held connections that measure echo latency (1 in flight) while all are held.
    #[arg(long, default_value_t = 1000)]
    pub sample: u64,
    /// Seconds of sampling, in each of the two phases.
    #[arg(long, default_value_t = 3.0)]
    pub sample_secs: f64,
    /// Messages per second each sampled connection sends in the open-loop phase that follows
    /// the closed-loop one (sent on schedule whether or not the echoes are back; latency from
    /// the scheduled time). 0: no open-loop phase.
    #[arg(long, default_value_t = 10.0)]
    pub open_rate: f64,
    /// Payload bytes of the sample echoes.
    #[arg(long, default_value_t = 20)]
    pub size: usize,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u64,
    /// Topics: subscriber i subscribes to t<i % topics>.
    #[arg(long, default_value_t = 1)]
    pub topics: u64,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: u64,
    /// Total publishes per second (0: saturation, each publisher keeps --window in flight).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// With --rate 0: most of a publisher's own publishes not yet received back.
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Payload bytes (the text fields padded to this).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds after the window to keep reading deliveries of publishes made in it.
    #[arg(long, default_value_t = 2.0)]
    pub drain_secs: f64,
    /// Payloads are market-data ticks: after the sequence fields, a JSON quote for one of this
    /// many symbols (prices walking randomly, about 150 bytes in all) instead of `x` padding,
    /// so that compression meets realistic data. 0: padding. --size is then a minimum.
    #[arg(long, default_value_t = 0)]
    pub ticks: u32,
}

/// One scenario with its flags: what a part runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Scenario {
    Echo(EchoArgs),
    Rate(RateArgs),
    Connect(ConnectArgs),
    Hold(HoldArgs),
    Fanout(FanoutArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Echo(_) => "echo",
            Scenario::Rate(_) => "rate",
            Scenario::Connect(_) => "connect",
            Scenario::Hold(_) => "hold",
            Scenario::Fanout(_) => "fanout",
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Scenario::Echo(a) => &a.common,
            Scenario::Rate(a) => &a.common,
            Scenario::Connect(a) => &a.common,
            Scenario::Hold(a) => &a.common,
            Scenario::Fanout(a) => &a.common,
        }
    }

    /// Sockets the whole run holds at once: what is split over processes and source addresses.
    pub fn sockets(&self) -> u64 {
        match self {
            Scenario::Echo(a) => a.conns,
            Scenario::Rate(a) => a.conns,
            Scenario::Connect(a) => a.concurrency,
            Scenario::Hold(a) => a.conns,
            Scenario::Fanout(a) => a.publishers + a.subscribers,
        }
    }

    /// Connections opened per second during setup, over the whole run (0: unbounded).
    pub fn ramp_rate(&self) -> f64 {
        let default = if matches!(self, Scenario::Hold(_)) { 20_000.0 } else { 0.0 };
        self.common().ramp_rate.unwrap_or(default)
    }

    /// Checks that need no network, with what to change.
    pub fn validate(&self) -> Result<(), String> {
        let c = self.common();
        if c.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if c.duration.is_nan() || c.duration <= 0.0 || c.warmup.is_nan() || c.warmup < 0.0 {
            return Err("--duration must be > 0 and --warmup >= 0".into());
        }
        if c.raw_echo && !matches!(self, Scenario::Echo(_) | Scenario::Rate(_)) {
            return Err("--raw-echo applies to echo and rate only (the other scenarios need a \
                        WebSocket server)"
                .into());
        }
        if c.max_pending == 0 {
            return Err("--max-pending must be at least 1".into());
        }
        let size = match self {
            Scenario::Echo(a) => {
                if a.inflight == 0 {
                    return Err("--inflight must be at least 1".into());
                }
                a.size
            }
            Scenario::Rate(a) => {
                if a.rate.is_nan() || a.rate <= 0.0 {
                    return Err("--rate must be > 0 messages per second".into());
                }
                a.size
            }
            Scenario::Hold(a) => a.size,
            Scenario::Fanout(a) => {
                if a.topics == 0 || a.publishers == 0 {
                    return Err("--topics and --publishers must be at least 1".into());
                }
                if a.rate < 0.0 || (a.rate == 0.0 && a.window == 0) {
                    return Err("--rate must be >= 0; with --rate 0, --window >= 1".into());
                }
                if a.size < crate::scenario::fanout::MIN_SIZE {
                    return Err(format!(
                        "--size must be at least {} for the publisher, topic, sequence and \
                         timestamp fields",
                        crate::scenario::fanout::MIN_SIZE
                    ));
                }
                a.size
            }
            Scenario::Connect(_) => 0,
        };
        if size > 16 << 20 {
            return Err("--size is at most 16 MiB".into());
        }
        if self.sockets() == 0 {
            return Err("nothing to connect: the connection count is 0".into());
        }
        Ok(())
    }
}
