//! `ringside-bench`: measurements that need a running server.
//!
//! - `idle`: userland memory per idle connection. Starts a Ringside echo server in a child
//!   process (this binary, `serve` subcommand), warms it up, opens N idle WebSocket connections
//!   and reports the server's RSS growth per connection, at N/2 and at N.
//! - `compare`: Ringside against peers, uWebSockets and the raw TCP echo limit (the comparison
//!   matrix).
//! - `scale`: one Ringside process holding 200,000 connections.
//! - `fanout`: the broadcast app against tokio-tungstenite + tokio::sync::broadcast and
//!   uWebSockets' pub/sub.
//! - `gateway`: the order-entry shape (orders to an engine thread, acks back through `Sender`)
//!   against plain echo and against tokio-tungstenite with mpsc channels.
//! - `cluster`: three broadcast nodes fanning a topic out over NATS, against one node.
//! - `compression`: permessage-deflate off, shared and dedicated on a market-data fan-out.
//! - `wss`: what TLS costs the server: echo and handshakes, ws against wss.
//! - `soak`: minutes of mixed attacks beside normal clients; no normal client may lose a
//!   message (not run in CI).
//! - `serve`, `soak-serve`: the servers `idle`, `gateway` and `soak` start (not meant to be
//!   run by hand).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

mod chart;
mod cluster;
mod compare;
mod compression;
mod fanout;
mod gateway;
mod procs;
mod scale;
mod soak;
mod uws;
mod wss;
use ringside::{Handler, Message, Server, WebSocket, Workers};
use ringside_proto::deflate::{DeflateOffer, DeflateParams};
use ringside_proto::handshake;
use ringside_proto::{OpCode, Role};

#[derive(Debug, Parser)]
#[command(name = "ringside-bench", about = "Ringside measurements that need a running server")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Server RSS per idle connection.
    Idle {
        /// Idle connections to hold.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Backend of the server under test.
        #[arg(long, value_enum, default_value = "io-uring")]
        backend: BackendArg,
        /// Serve with this permessage-deflate mode, have every client offer it (as browsers
        /// do) and exchange one 300-byte JSON message (compressed where agreed) before going
        /// idle. Without it, connections go idle right after the upgrade.
        #[arg(long, value_enum)]
        deflate: Option<DeflateArg>,
    },
    /// Ringside against peer servers, uWebSockets (with --uws-src) and the raw TCP echo limit:
    /// the whole matrix, open loop at equal load, connect rate, idle memory; writes
    /// docs/benchmarks.md and SVG charts.
    Compare {
        /// Runs per cell (servers alternate); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Warm-up seconds per run.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[command(flatten)]
        cpus: Cpus,
        /// Only contenders whose name contains one of these (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Only these rows of the matrix (0-based, comma-separated): 0: 10 x 1 KiB, 1: 10 x 16
        /// KiB, 2: 100 x 0 B, 3: 100 x 20 B, 4: 200 x 16 KiB, 5: 500 x 16 KiB, 6: 10,000 x 20
        /// B, 7: 100 x 20 B with 16 in flight, 8: 1000 x 20 B.
        #[arg(long, value_delimiter = ',')]
        rows: Vec<usize>,
        /// Skip the open-loop pass.
        #[arg(long)]
        no_open_loop: bool,
        /// Skip the connect rate and idle memory passes.
        #[arg(long)]
        no_connect_idle: bool,
        /// A quick run: the rows the bar against uWebSockets names (1, 3, 4, 5, 7, 8 unless
        /// --rows says otherwise), closed loop only (no open loop, connect rate or idle memory).
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        uws: UwsSrc,
        #[command(flatten)]
        out: Out,
    },
    /// One Ringside process holding N connections (200,000 by default) on io_uring.
    Scale {
        #[arg(long, default_value_t = 200_000)]
        conns: u64,
        /// Server workers; 0: the server's default, one per CPU of --server-cpus (each worker
        /// drives as many io_uring rings as its connections need).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Source addresses 127.0.0.1 .. 127.0.0.N for the load generator.
        #[arg(long, default_value_t = 10)]
        source_addrs: u32,
        /// Load generator processes (default: as the open-file limit requires).
        #[arg(long)]
        procs: Option<usize>,
        /// Connections per second the load generator opens at most (the target is 20,000 a
        /// second achieved; asking for more shows how fast the server takes them).
        #[arg(long, default_value_t = 25_000.0)]
        ramp_rate: f64,
        /// Connections of the active echo sample.
        #[arg(long, default_value_t = 1000)]
        sample: u64,
        /// Messages per second each sampled connection sends in the open-loop phase (after the
        /// closed-loop one); 0: closed loop only.
        #[arg(long, default_value_t = 10.0)]
        open_rate: f64,
        #[arg(long, default_value_t = 5.0)]
        hold_secs: f64,
        #[arg(long, default_value_t = 5.0)]
        sample_secs: f64,
        /// Heading for the figures (name the machine).
        #[arg(long, default_value = "2-core VM")]
        label: String,
        #[command(flatten)]
        cpus: Cpus,
        #[command(flatten)]
        out: Out,
    },
    /// Fan-out: Ringside's broadcast app against tokio-tungstenite + tokio::sync::broadcast
    /// and (with --uws-src) uWebSockets' pub/sub.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        subscribers: u64,
        /// Publishes per second in the latency runs.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Subscribers in the saturation runs.
        #[arg(long, default_value_t = 1000)]
        saturation_subscribers: u64,
        /// Publishes in flight at saturation.
        #[arg(long, default_value_t = 64)]
        window: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        cpus: Cpus,
        #[command(flatten)]
        uws: UwsSrc,
        #[command(flatten)]
        out: Out,
    },
    /// Order entry: orders to an engine thread and acks back through `Sender`, against plain
    /// echo with the same clients and sizes, and against tokio-tungstenite + mpsc channels.
    Gateway {
        /// Clients, each with one order in flight.
        #[arg(long, default_value_t = 100)]
        clients: u64,
        /// Bytes per order (and per ack).
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Warm-up seconds per run.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Runs per server (servers alternate); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only servers whose name contains one of these (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Also write the figures (round trips, errors, latency per server) as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// A sentence about the conditions (the machine, what else ran), put in the report.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        cpus: Cpus,
        #[command(flatten)]
        out: Out,
    },
    /// permessage-deflate off / shared / dedicated on a market-data fan-out (JSON quotes).
    Compression {
        #[arg(long, default_value_t = 1000)]
        subscribers: u64,
        /// Symbols the quotes are for.
        #[arg(long, default_value_t = 300)]
        symbols: u32,
        /// Publishes per second in the fixed-rate run.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Publishes in flight at saturation.
        #[arg(long, default_value_t = 16)]
        window: u64,
        /// A prebuilt uWebSockets pub/sub server with SHARED_COMPRESSOR
        /// (bench/peers/uws/build.sh SOURCES broadcast), instead of building one from
        /// --uws-src.
        #[arg(long, conflicts_with_all = ["uws_src", "no_uws"])]
        uws: Option<PathBuf>,
        #[command(flatten)]
        uws_src: UwsSrc,
        #[command(flatten)]
        cpus: Cpus,
        #[command(flatten)]
        out: Out,
    },
    /// Three broadcast nodes over NATS (the subscribers spread over them, one publisher on
    /// the first) against one node with the same subscribers: deliveries/s, local and
    /// cross-node latency, bus messages per publish, server CPU per delivery.
    Cluster {
        #[arg(long, default_value_t = 3000)]
        subscribers: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Publishes per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Backend of the nodes.
        #[arg(long, value_enum, default_value = "io-uring")]
        backend: BackendArg,
        /// Microseconds the client's reader polls without sleeping after its last event.
        #[arg(long, default_value_t = 2000)]
        spin_us: u64,
        /// CPUs for the nodes and nats-server (taskset list).
        #[arg(long, default_value = "0")]
        server_cpus: String,
        /// CPUs for this benchmark's client threads.
        #[arg(long, default_value = "1")]
        load_cpus: String,
        #[command(flatten)]
        out: Out,
    },
    /// What TLS costs the server: echo CPU per message and handshakes/s, ws against wss.
    Wss {
        /// Measured seconds per run.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Warm-up seconds per run.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Backend of the server under test.
        #[arg(long, value_enum, default_value = "io-uring")]
        backend: BackendArg,
        #[command(flatten)]
        cpus: Cpus,
        #[command(flatten)]
        out: Out,
    },
    /// Attacks (unfinished messages, non-reading subscribers, a pong flood, slowloris, a
    /// publish storm) beside normal echo and fan-out clients; reports RSS and latency every
    /// period and fails if a normal client lost a message.
    Soak {
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Seconds between report lines.
        #[arg(long, default_value_t = 10)]
        every: u64,
        #[arg(long, value_enum, default_value = "io-uring")]
        backend: BackendArg,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 2000)]
        non_readers: usize,
        #[arg(long, default_value_t = 2)]
        publishers: usize,
        #[arg(long, default_value_t = 20)]
        echo_clients: usize,
        #[arg(long, default_value_t = 20)]
        subscribers: usize,
        #[command(flatten)]
        out: Out,
    },
    /// Run the soak's server (used by `soak`).
    SoakServe {
        #[arg(long, value_enum)]
        backend: BackendArg,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Where to write the server's counters every second.
        #[arg(long)]
        stats: PathBuf,
    },
    /// Run an echo server, or the gateway (used by the other subcommands).
    Serve {
        #[arg(long, value_enum)]
        backend: BackendArg,
        /// What to serve.
        #[arg(long, value_enum, default_value = "echo")]
        app: ServeApp,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, value_enum, default_value = "off")]
        deflate: DeflateArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeflateArg {
    Off,
    Shared,
    Dedicated,
}

impl DeflateArg {
    fn flag(self) -> &'static str {
        match self {
            DeflateArg::Off => "off",
            DeflateArg::Shared => "shared",
            DeflateArg::Dedicated => "dedicated",
        }
    }
}

/// Where servers and the load generator run.
#[derive(Debug, clap::Args)]
struct Cpus {
    /// CPUs for the server under test (taskset list).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs for the load generator (taskset list).
    #[arg(long, default_value = "1")]
    load_cpus: String,
    /// Threads (workers) each server runs.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
}

/// Where uWebSockets' sources are, for the benchmarks that build its peers.
#[derive(Debug, clap::Args)]
struct UwsSrc {
    /// uWebSockets' sources: a tarball (or a directory) holding `uWebSockets/` and the
    /// `uSockets/` it pins; its peers (bench/peers/uws) are built from them with g++ into
    /// `uws/` beside the release binaries (g++ installed with apt-get when missing). Default:
    /// $RINGSIDE_UWS_SRC; without either the run goes on without uWebSockets and says so.
    #[arg(long)]
    uws_src: Option<PathBuf>,
    /// Leave uWebSockets out.
    #[arg(long)]
    no_uws: bool,
}

impl UwsSrc {
    /// The peer's binary, built if needed, or why it is not in the run.
    fn prepare(&self, peer: uws::Peer) -> Result<PathBuf, String> {
        if self.no_uws {
            return Err("left out (--no-uws)".into());
        }
        let result = uws::prepare(self.uws_src.as_deref(), peer);
        if let Err(why) = &result {
            eprintln!("running without uWebSockets: {why}");
        }
        result
    }
}

/// Where results go.
#[derive(Debug, clap::Args)]
struct Out {
    /// The markdown file the results are spliced into.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.md"))]
    doc: PathBuf,
    /// Don't build the release binaries first (they are already built).
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ServeApp {
    /// Echo every message.
    Echo,
    /// Forward every message as an order to an engine thread, which acks each burst of orders
    /// in one `Batch`.
    Gateway,
    /// The same, with a `Sender::send` per ack.
    GatewayEach,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    IoUring,
    Epoll,
}

impl BackendArg {
    fn backend(self) -> ringside::Backend {
        match self {
            BackendArg::IoUring => ringside::Backend::IoUring,
            BackendArg::Epoll => ringside::Backend::Epoll,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            BackendArg::IoUring => "io-uring",
            BackendArg::Epoll => "epoll",
        }
    }
}

struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

fn main() {
    let args = Args::parse();
    // The servers this binary runs in-process (`serve`, `soak-serve`) and the clients of `idle`,
    // `cluster` and the others hold thousands of descriptors; the library leaves the limit alone.
    if let Err(e) = ringside::raise_fd_limit() {
        eprintln!("ringside-bench: {e}");
    }
    let result = match args.command {
        Cmd::Serve { backend, app: ServeApp::Echo, listen, workers, deflate } => {
            serve(backend, listen, workers, deflate)
        }
        Cmd::Serve { backend, app: ServeApp::Gateway, listen, workers, .. } => {
            gateway::serve(backend.backend(), listen, workers, true)
        }
        Cmd::Serve { backend, app: ServeApp::GatewayEach, listen, workers, .. } => {
            gateway::serve(backend.backend(), listen, workers, false)
        }
        Cmd::Gateway { clients, size, secs, warmup, runs, only, json, note, cpus, out } => {
            prepare(&out).and_then(|()| {
                gateway::main(
                    gateway::Options {
                        clients,
                        size,
                        secs,
                        warmup,
                        runs: runs.max(1),
                        only,
                        server_cpus: cpus.server_cpus,
                        load_cpus: cpus.load_cpus,
                        server_threads: cpus.server_threads,
                        load_threads: cpus.load_threads,
                        doc: out.doc,
                        json,
                        note,
                    },
                    &command_line(),
                )
            })
        }
        Cmd::Idle { conns, backend, deflate } => idle(conns, backend, deflate),
        Cmd::Wss { secs, warmup, backend, cpus, out } => prepare(&out).and_then(|()| {
            let options = wss::Options {
                secs,
                warmup,
                backend: backend.flag(),
                server_cpus: cpus.server_cpus,
                load_cpus: cpus.load_cpus,
                doc: out.doc,
            };
            wss::main(&procs::bin_dir()?, &options)
        }),
        Cmd::SoakServe { backend, workers, stats } => soak::serve(backend.flag(), workers, &stats),
        Cmd::Soak {
            secs,
            every,
            backend,
            workers,
            non_readers,
            publishers,
            echo_clients,
            subscribers,
            out,
        } => prepare(&out).and_then(|()| {
            soak::main(soak::Options {
                secs,
                every: every.max(1),
                backend: backend.flag().to_owned(),
                workers: workers.max(1),
                non_readers,
                publishers,
                echo_clients,
                subscribers,
            })
        }),
        Cmd::Compare {
            runs,
            secs,
            warmup,
            cpus,
            only,
            mut rows,
            no_open_loop,
            no_connect_idle,
            quick,
            uws: uws_src,
            out,
        } => prepare(&out).and_then(|()| {
            if quick && rows.is_empty() {
                rows = compare::QUICK_ROWS.to_vec();
            }
            compare::main(
                compare::Options {
                    runs: runs.max(1),
                    warmup,
                    secs,
                    server_cpus: cpus.server_cpus,
                    load_cpus: cpus.load_cpus,
                    server_threads: cpus.server_threads,
                    load_threads: cpus.load_threads,
                    only,
                    rows,
                    skip_open_loop: no_open_loop || quick,
                    skip_connect_idle: no_connect_idle || quick,
                    uws: uws_src.prepare(uws::Peer::Echo),
                    doc: out.doc,
                },
                &command_line(),
            )
        }),
        Cmd::Scale {
            conns,
            workers,
            source_addrs,
            procs,
            ramp_rate,
            sample,
            open_rate,
            hold_secs,
            sample_secs,
            label,
            cpus,
            out,
        } => prepare(&out).and_then(|()| {
            scale::main(
                scale::Options {
                    conns,
                    workers,
                    source_addrs,
                    procs,
                    ramp_rate,
                    sample,
                    open_rate,
                    hold_secs,
                    sample_secs,
                    server_cpus: cpus.server_cpus,
                    load_cpus: cpus.load_cpus,
                    load_threads: cpus.load_threads,
                    doc: out.doc,
                    label,
                },
                &command_line(),
            )
        }),
        Cmd::Fanout {
            subscribers,
            rate,
            size,
            secs,
            saturation_subscribers,
            window,
            runs,
            cpus,
            uws: uws_src,
            out,
        } => prepare(&out).and_then(|()| {
            fanout::main(
                fanout::Options {
                    subscribers,
                    rate,
                    size,
                    secs,
                    saturation_subscribers,
                    window,
                    runs: runs.max(1),
                    server_cpus: cpus.server_cpus,
                    load_cpus: cpus.load_cpus,
                    server_threads: cpus.server_threads,
                    load_threads: cpus.load_threads,
                    uws: uws_src.prepare(uws::Peer::BroadcastPlain),
                    doc: out.doc,
                },
                &command_line(),
            )
        }),
        Cmd::Cluster {
            subscribers,
            nodes,
            rate,
            size,
            secs,
            warmup,
            backend,
            spin_us,
            server_cpus,
            load_cpus,
            out,
        } => prepare(&out).and_then(|()| {
            cluster::main(
                cluster::Options {
                    subscribers: subscribers.max(1),
                    nodes: nodes.max(2),
                    rate,
                    size: size.max(32),
                    secs,
                    warmup,
                    backend: backend.flag().to_owned(),
                    spin_us,
                    server_cpus,
                    load_cpus,
                    doc: out.doc,
                },
                &command_line(),
            )
        }),
        Cmd::Compression { subscribers, symbols, rate, secs, window, uws, uws_src, cpus, out } => {
            prepare(&out).and_then(|()| {
                let uws = match uws {
                    Some(bin) => Ok(bin),
                    None => uws_src.prepare(uws::Peer::Broadcast),
                };
                compression::main(
                    compression::Options {
                        subscribers,
                        symbols,
                        rate,
                        secs,
                        window,
                        server_cpus: cpus.server_cpus,
                        load_cpus: cpus.load_cpus,
                        load_threads: cpus.load_threads,
                        uws,
                        doc: out.doc,
                    },
                    &command_line(),
                )
            })
        }
    };
    if let Err(e) = result {
        eprintln!("ringside-bench: {e}");
        std::process::exit(1);
    }
}

fn serve(
    backend: BackendArg,
    listen: SocketAddr,
    workers: usize,
    deflate: DeflateArg,
) -> io::Result<()> {
    let server = Server::builder()
        .bind(listen)?
        .backend(backend.backend())
        .workers(Workers::Count(workers))
        .idle_timeout(Duration::from_secs(3600))
        .deflate(match deflate {
            DeflateArg::Off => ringside::Compression::Off,
            DeflateArg::Shared => ringside::Compression::Shared,
            DeflateArg::Dedicated => ringside::Compression::Dedicated,
        })
        // Room for every connection: the budget is not what this measures.
        .deflate_memory(usize::MAX / 2)
        .build(|| Echo)?;
    println!("listening on {}", server.local_addr());
    server.run()
}

/// Opens a WebSocket connection (handshake done) and leaves it idle.
fn open(addr: SocketAddr) -> io::Result<TcpStream> {
    open_offering(addr, None).map(|(stream, _)| stream)
}

/// Opens a connection offering permessage-deflate as `offer` says (none: no extension); returns
/// it with what the server agreed to.
fn open_offering(
    addr: SocketAddr,
    offer: Option<DeflateOffer>,
) -> io::Result<(TcpStream, Option<DeflateParams>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let key = handshake::generate_key();
    let mut req = Vec::with_capacity(256);
    let value = offer.map(|o| o.header_value());
    let headers: Vec<(&str, &str)> =
        value.iter().map(|v| ("Sec-WebSocket-Extensions", v.as_str())).collect();
    handshake::write_client_request(&addr.to_string(), "/", &key, &[], &headers, &mut req);
    stream.write_all(&req)?;
    let mut buf = [0u8; 512];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Err(io::Error::other("server closed during the handshake"));
        }
        len += n;
        match handshake::parse_response(&buf[..len], &key, &[]) {
            Ok(Some(accepted)) => {
                let agreed = match offer {
                    Some(o) => o
                        .accept(accepted.extensions.as_deref())
                        .map_err(|e| io::Error::other(e.to_string()))?,
                    None => None,
                };
                return Ok((stream, agreed));
            }
            Ok(None) if len < buf.len() => {}
            Ok(None) => return Err(io::Error::other("handshake response too long")),
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// Sends one 300-byte JSON text, compressed if `agreed`, and reads its echo whole.
fn exchange(stream: &mut TcpStream, agreed: Option<DeflateParams>) -> io::Result<()> {
    let mut text = String::from(r#"{"type":"tick","symbol":"ACME","bid":101.25,"ask":101.27,"#);
    while text.len() < 299 {
        text.push_str(r#""pad":"xxxxxxxx","#);
    }
    text.truncate(299);
    text.push('}');
    let mut frame = Vec::new();
    match agreed {
        Some(p) => p.deflater(Role::Client, 1).write_frame(
            OpCode::Text,
            Some(rand_key()),
            text.as_bytes(),
            &mut frame,
        ),
        None => ringside_proto::frame::write_frame(
            &mut frame,
            true,
            OpCode::Text,
            Some(rand_key()),
            text.as_bytes(),
        ),
    }
    stream.write_all(&frame)?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head[..2])?;
    let len = match head[1] & 0x7f {
        126 => {
            stream.read_exact(&mut head[2..4])?;
            usize::from(u16::from_be_bytes([head[2], head[3]]))
        }
        n => usize::from(n),
    };
    let compressed = head[0] & 0x40 != 0;
    if compressed != agreed.is_some() {
        return Err(io::Error::other(format!("echo compressed: {compressed}, agreed: {agreed:?}")));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)
}

/// Opens `n` connections, echoing one small message on each (so each used a receive buffer
/// and a send buffer once), then closes them: after this the server's pools and buffer ring
/// are as warm as they will get, and RSS growth from here on is per-connection state.
fn warm_up(addr: SocketAddr, n: usize) -> io::Result<()> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = open(addr)?;
        let mut frame = Vec::new();
        ringside_proto::frame::write_frame(
            &mut frame,
            true,
            ringside_proto::OpCode::Text,
            Some(rand_key()),
            b"warm up",
        );
        s.write_all(&frame)?;
        conns.push(s);
    }
    for s in &mut conns {
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf[..9])?;
    }
    drop(conns);
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

fn rand_key() -> [u8; 4] {
    let t = Instant::now().elapsed().subsec_nanos();
    t.to_le_bytes()
}

fn idle(conns: usize, backend: BackendArg, deflate: Option<DeflateArg>) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let mode = deflate.unwrap_or(DeflateArg::Off).flag();
    let args = ["serve", "--backend", backend.flag(), "--deflate", mode].map(String::from);
    let server = procs::ServerProcess::start("0", &exe, &args)?;
    let rss = || procs::rss(server.pid());
    let warm = (conns / 10).clamp(1, 1_000);
    warm_up(server.addr, warm)?;
    // With --deflate every connection offers the extension (browsers' default offer) and
    // exchanges one message; warm-up connections first, so the worker's shared compressor
    // exists before the baseline.
    let offer = deflate.map(|_| DeflateOffer::default());
    let open = |addr| -> io::Result<(TcpStream, bool)> {
        let (mut stream, agreed) = open_offering(addr, offer)?;
        if deflate.is_some() {
            exchange(&mut stream, agreed)?;
        }
        Ok((stream, agreed.is_some()))
    };
    if deflate.is_some() {
        let warm: Vec<_> = (0..warm).map(|_| open(server.addr)).collect::<io::Result<_>>()?;
        drop(warm);
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut agreed_count = 0;
    let base = rss()?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(conns);
    let mut half_rss = 0;
    for i in 0..conns {
        let (stream, agreed) = open(server.addr)?;
        agreed_count += usize::from(agreed);
        held.push(stream);
        if i + 1 == conns / 2 {
            std::thread::sleep(Duration::from_millis(500));
            half_rss = rss()?;
        }
    }
    let ramp = started.elapsed();
    if conns == 0 {
        // Only the fixed cost: what a worker holds with no client (buffers, pools, tables).
        println!(
            "backend {}: server RSS {:.1} MiB at start (after {warm} warm-up connection(s), none held)",
            backend.flag(),
            base as f64 / 1048576.0
        );
        return Ok(());
    }
    std::thread::sleep(Duration::from_secs(1));
    let full_rss = rss()?;
    let per_conn = (full_rss.saturating_sub(base)) as f64 / conns as f64;
    let slope = (full_rss.saturating_sub(half_rss)) as f64 / (conns - conns / 2) as f64;
    println!(
        "backend {}: {conns} idle connections opened in {:.2} s; server RSS {:.1} MiB after \
         warm-up ({warm} connections), {:.1} MiB at {}, {:.1} MiB at {conns}",
        backend.flag(),
        ramp.as_secs_f64(),
        base as f64 / 1048576.0,
        half_rss as f64 / 1048576.0,
        conns / 2,
        full_rss as f64 / 1048576.0,
    );
    println!(
        "userland memory per idle connection: {per_conn:.0} B (RSS delta / connections), \
         {slope:.0} B (slope from {} to {conns})",
        conns / 2
    );
    if let Some(mode) = deflate {
        println!(
            "permessage-deflate {}: agreed on {agreed_count} of {conns} connections, one \
             300-byte message exchanged on each",
            mode.flag()
        );
    }
    drop(held);
    Ok(())
}

/// Builds the release binaries unless told they are there.
fn prepare(out: &Out) -> io::Result<()> {
    if out.no_build {
        Ok(())
    } else {
        procs::build_release()
    }
}

/// How this run was started, for the report.
fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| if a.contains([' ', '"']) { format!("{a:?}") } else { a })
        .collect();
    format!("cargo run --release -p ringside-bench -- {}", args.join(" "))
}
