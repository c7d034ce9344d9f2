//! `ringside-bench gateway`: what the order-entry shape costs. Each order goes from a worker to
//! an engine thread over a channel and its ack comes back to the connection from that thread;
//! the same clients and message sizes run against plain echo, so the difference is the
//! cross-thread hop. The usual Rust way is measured beside it: a tokio-tungstenite server whose
//! connection tasks forward orders over an mpsc channel to an engine thread and get acks back
//! through an mpsc channel per connection (`peer-tungstenite-gateway`), with the
//! tokio-tungstenite echo as its own baseline.
//!
//! The engine does the same on both sides: it answers each order with an ack that restates it
//! (the same bytes, so `ringside-load echo` checks every answer's opcode and length and times
//! it). Ringside's engine gathers the acks of each burst of orders (what waits in its channel)
//! in a `Batch` and hands them over at once (`serve --app gateway`); the `gateway-each` variant
//! calls `Sender::send` per ack, to show what the batch saves. Clients authenticate at the
//! upgrade with `?token=bench`. This module also holds the Ringside servers under test.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringside::{
    Backend, ConnId, Handler, Message, Sender, Server, Upgrade, Upgrading, WebSocket, Workers,
};
use serde_json::{json, Value};

use crate::procs::{self, errors, median, num, ServerProcess};

/// The token the bench servers accept.
pub const TOKEN: &str = "bench";

// ---------------------------------------------------------------------------------------------
// The Ringside server under test.

/// A session: the orders this connection sent (kept in the connection's data).
#[derive(Debug, Default)]
pub struct Session {
    pub orders: u64,
}

/// Bytes of an order held inline: a parsed order (symbol, side, quantity, price, client id)
/// fits in a fixed-size struct, so the usual order costs no allocation on its way.
const INLINE: usize = 64;

/// An order on its way to the engine.
#[derive(Debug)]
struct Order {
    conn: ConnId,
    text: bool,
    payload: Payload,
}

#[derive(Debug)]
enum Payload {
    Inline(u8, [u8; INLINE]),
    Heap(Vec<u8>),
}

impl Payload {
    fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Payload::Inline(bytes.len() as u8, inline)
        } else {
            Payload::Heap(bytes.to_vec())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Inline(len, bytes) => &bytes[..usize::from(*len)],
            Payload::Heap(bytes) => bytes,
        }
    }
}

/// The handler: authenticates, counts, forwards.
#[derive(Debug)]
struct Entry {
    engine: crossbeam_channel::Sender<Order>,
}

impl Handler for Entry {
    type Conn = Session;

    fn on_upgrade(&mut self, request: &Upgrading<'_>) -> Upgrade<Session> {
        if authorized(request) {
            Upgrade::Accept(Session::default())
        } else {
            Upgrade::Reject(401)
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Session>, msg: Message<'_>) {
        ws.data_mut().orders += 1;
        let order = Order {
            conn: ws.id(),
            text: matches!(msg, Message::Text(_)),
            payload: Payload::new(msg.as_bytes()),
        };
        let _ = self.engine.send(order);
    }
}

/// `Authorization: Bearer bench` or `?token=bench`.
fn authorized(request: &Upgrading<'_>) -> bool {
    let bearer = format!("Bearer {TOKEN}");
    request.header_values("authorization").any(|v| v == bearer.as_bytes())
        || request
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.strip_prefix("token=") == Some(TOKEN)))
}

/// Orders an engine answers before it hands the answers over, at most: bounds the delay a
/// steady stream could add to the first ack of a burst.
const BURST: usize = 1024;

/// The ack of an order: the order restated.
fn ack(order: &Order) -> Message<'_> {
    match order.text {
        // The payload came from a text message: valid UTF-8.
        true => Message::Text(std::str::from_utf8(order.payload.bytes()).unwrap_or_default()),
        false => Message::Binary(order.payload.bytes()),
    }
}

/// The engine thread: an ack per order through the server's `Sender`; with `batched`, each
/// burst of orders (what waits in the channel) is answered in one `Batch`.
fn engine(orders: &crossbeam_channel::Receiver<Order>, sender: &Sender, batched: bool) {
    if !batched {
        while let Ok(order) = orders.recv() {
            let _ = sender.send(order.conn, ack(&order));
        }
        return;
    }
    let mut acks = sender.batch();
    while let Ok(first) = orders.recv() {
        let mut next = Some(first);
        let mut answered = 0;
        while let Some(order) = next {
            acks.send(order.conn, ack(&order));
            answered += 1;
            next = if answered < BURST { orders.try_recv().ok() } else { None };
        }
        acks.flush();
    }
}

/// Runs the gateway server until SIGTERM or SIGINT (`ringside-bench serve --app gateway`, or
/// `gateway-each` for a `Sender::send` per ack).
pub fn serve(
    backend: Backend,
    listen: SocketAddr,
    workers: usize,
    batched: bool,
) -> io::Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&stop))?;
    }
    let (to_engine, orders) = crossbeam_channel::unbounded();
    let server = Server::builder()
        .bind(listen)?
        .backend(backend)
        .workers(Workers::Count(workers))
        .pin(false)
        .idle_timeout(Duration::from_secs(3600))
        .build(move || Entry { engine: to_engine.clone() })?;
    println!("listening on {}", server.local_addr());
    let handle = server.spawn()?;
    let sender = handle.sender();
    // The engine ends when every handler (and with it every channel sender) is gone.
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine(&orders, &sender, batched))?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = handle.shutdown();
    drop(engine); // detached: the process exits next
    result
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Debug, Clone)]
pub struct Options {
    pub clients: u64,
    pub size: usize,
    pub secs: f64,
    pub warmup: f64,
    pub runs: usize,
    pub only: Vec<String>,
    pub server_cpus: String,
    pub load_cpus: String,
    pub server_threads: usize,
    pub load_threads: usize,
    pub doc: PathBuf,
    pub json: Option<PathBuf>,
    pub note: String,
}

/// A server in the run; `baseline` is the index of its echo row.
struct Contender {
    name: &'static str,
    bin: &'static str,
    args: Vec<String>,
    baseline: Option<usize>,
}

fn contenders(threads: usize) -> Vec<Contender> {
    let t = threads.to_string();
    let ours = |app: &str, backend: &str| -> Vec<String> {
        ["serve", "--app", app, "--backend", backend, "--workers", &t, "--listen", "127.0.0.1:0"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    let peer: Vec<String> =
        ["--listen", "127.0.0.1:0", "--threads", &t].iter().map(|s| (*s).to_owned()).collect();
    vec![
        Contender {
            name: "ringside io_uring echo",
            bin: "ringside-bench",
            args: ours("echo", "io-uring"),
            baseline: None,
        },
        Contender {
            name: "ringside io_uring gateway",
            bin: "ringside-bench",
            args: ours("gateway", "io-uring"),
            baseline: Some(0),
        },
        Contender {
            name: "ringside io_uring gateway, send per ack",
            bin: "ringside-bench",
            args: ours("gateway-each", "io-uring"),
            baseline: Some(0),
        },
        Contender {
            name: "ringside epoll echo",
            bin: "ringside-bench",
            args: ours("echo", "epoll"),
            baseline: None,
        },
        Contender {
            name: "ringside epoll gateway",
            bin: "ringside-bench",
            args: ours("gateway", "epoll"),
            baseline: Some(3),
        },
        Contender {
            name: "ringside epoll gateway, send per ack",
            bin: "ringside-bench",
            args: ours("gateway-each", "epoll"),
            baseline: Some(3),
        },
        Contender {
            name: "tokio-tungstenite echo",
            bin: "peer-tungstenite",
            args: peer.clone(),
            baseline: None,
        },
        Contender {
            name: "tokio-tungstenite + mpsc gateway",
            bin: "peer-tungstenite-gateway",
            args: peer,
            baseline: Some(6),
        },
    ]
}

fn load_args(o: &Options, addr: SocketAddr, pid: u32) -> Vec<String> {
    let mut a: Vec<String> = ["echo", "--text", "--url"].iter().map(|s| (*s).to_owned()).collect();
    a.push(format!("ws://{addr}/?token={TOKEN}"));
    for (flag, value) in [
        ("--conns", o.clients.to_string()),
        ("--inflight", "1".into()),
        ("--size", o.size.to_string()),
        ("--warmup", o.warmup.to_string()),
        ("--duration", o.secs.to_string()),
        ("--server-pid", pid.to_string()),
        ("--threads", o.load_threads.to_string()),
    ] {
        a.push(flag.into());
        a.push(value);
    }
    a
}

/// One server's medians.
#[derive(Debug, Clone, Copy)]
struct Row {
    round_trips: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    /// The lowest and highest run.
    cpu_range: (f64, f64),
    busy: f64,
    errors: u64,
    runs: usize,
}

impl Row {
    fn of(reports: &[Value]) -> Row {
        let m = |path: &str| median(&reports.iter().map(|r| num(r, path)).collect::<Vec<_>>());
        let cpu = reports.iter().map(|r| num(r, "server.cpu_us_per_msg")).filter(|x| x.is_finite());
        let cpu_range =
            cpu.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
        Row {
            cpu_range,
            round_trips: m("msgs_per_s"),
            p50: m("latency_us.p50"),
            p99: m("latency_us.p99"),
            cpu_us: m("server.cpu_us_per_msg"),
            busy: m("server.cpu_util"),
            errors: reports.iter().map(errors).sum(),
            runs: reports.len(),
        }
    }
}

fn run_one(bins: &Path, c: &Contender, o: &Options) -> io::Result<Value> {
    let mut server = ServerProcess::start(&o.server_cpus, &bins.join(c.bin), &c.args)?;
    let args = load_args(o, server.addr, server.pid());
    let limit = Duration::from_secs_f64(o.warmup + o.secs + 60.0);
    let report = procs::load(bins, &o.load_cpus, &args, limit)?;
    if !server.alive() {
        return Err(io::Error::other("the server died during the run"));
    }
    Ok(report)
}

pub fn main(o: Options, command: &str) -> io::Result<()> {
    let bins = procs::bin_dir()?;
    let all = contenders(o.server_threads);
    let picked: Vec<usize> = (0..all.len())
        .filter(|&i| o.only.is_empty() || o.only.iter().any(|n| all[i].name.contains(n.as_str())))
        .collect();
    eprintln!(
        "gateway: {} clients, one order of {} B in flight each, {} run(s) of {} s",
        o.clients, o.size, o.runs, o.secs
    );
    let mut reports: Vec<Vec<Value>> = vec![Vec::new(); all.len()];
    let mut failures = Vec::new();
    for run in 0..o.runs {
        for k in 0..picked.len() {
            let i = picked[(k + run) % picked.len()];
            match run_one(&bins, &all[i], &o) {
                Ok(r) => {
                    eprintln!(
                        "  run {} {:<40} {:>9.0} round trips/s, p50 {:>6.0} us, p99 {:>6.0} us, \
                         {:>5.2} us server CPU each ({:>3.0}% busy), {} errors",
                        run + 1,
                        all[i].name,
                        num(&r, "msgs_per_s"),
                        num(&r, "latency_us.p50"),
                        num(&r, "latency_us.p99"),
                        num(&r, "server.cpu_us_per_msg"),
                        100.0 * num(&r, "server.cpu_util"),
                        errors(&r)
                    );
                    reports[i].push(r);
                }
                Err(e) => {
                    eprintln!("  run {} {} FAILED: {e}", run + 1, all[i].name);
                    failures.push(format!("{}: {e}", all[i].name));
                }
            }
        }
    }
    let rows: Vec<Option<Row>> =
        reports.iter().map(|r| (!r.is_empty()).then(|| Row::of(r))).collect();
    let md = render(&o, command, &all, &rows, &failures);
    println!("{md}");
    procs::splice_doc(&o.doc, "gateway", &md)?;
    eprintln!("wrote {}", o.doc.display());
    if let Some(path) = &o.json {
        let report = json_report(&o, command, &all, &rows, &reports, &failures);
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    let errors: u64 = rows.iter().flatten().map(|r| r.errors).sum();
    if errors > 0 || !failures.is_empty() {
        return Err(io::Error::other(format!(
            "{errors} errors and {} failed runs: see above",
            failures.len()
        )));
    }
    Ok(())
}

/// Server CPU per round trip of `row` over its echo baseline.
fn hop(all: &[Contender], rows: &[Option<Row>], i: usize) -> Option<f64> {
    let base = rows[all[i].baseline?]?;
    Some(rows[i]?.cpu_us - base.cpu_us)
}

fn render(
    o: &Options,
    command: &str,
    all: &[Contender],
    rows: &[Option<Row>],
    failures: &[String],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Gateway\n");
    let _ = writeln!(
        md,
        "Machine: {}. Date: {}. Servers on CPU(s) {} ({} worker/thread, plus the engine thread), \
         `ringside-load echo --text` on CPU(s) {}. {} clients, each with one order of {} B in \
         flight (closed loop), authenticated at the upgrade (`?token=`). Medians of {} runs of \
         {} s after {} s of warm-up, servers taking turns. Server CPU is user+system time of the \
         whole process (engine thread included) from /proc/PID/stat over the window, per round \
         trip.{}\n",
        procs::machine(),
        procs::today(),
        o.server_cpus,
        o.server_threads,
        o.load_cpus,
        o.clients,
        o.size,
        o.runs,
        o.secs,
        o.warmup,
        if o.note.is_empty() { String::new() } else { format!(" {}", o.note) },
    );
    let _ = writeln!(md, "```sh\n{command}\n```\n");
    let _ = writeln!(
        md,
        "| server | round trips/s | p50 (µs) | p99 (µs) | server CPU µs / round trip (runs' \
         range) | over its echo (µs) | server busy | errors |\n|---|---|---|---|---|---|---|---|"
    );
    for (i, c) in all.iter().enumerate() {
        let Some(r) = rows[i] else { continue };
        let over = hop(all, rows, i).map_or("".to_owned(), |h| format!("{h:+.2}"));
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} ({:.2}-{:.2}) | {over} | {:.0}% | {} |",
            c.name,
            r.round_trips,
            r.p50,
            r.p99,
            r.cpu_us,
            r.cpu_range.0,
            r.cpu_range.1,
            100.0 * r.busy,
            r.errors
        );
    }
    let _ = writeln!(md);
    for (i, c) in all.iter().enumerate() {
        if let Some(h) = hop(all, rows, i) {
            let verdict = if c.bin == "ringside-bench" {
                if h < 1.0 {
                    " (under the 1 µs bar)"
                } else {
                    " (**over** the 1 µs bar)"
                }
            } else {
                ""
            };
            let _ = writeln!(
                md,
                "- {}: the hop costs {h:.2} µs of server CPU per order{verdict}.",
                c.name
            );
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "\nRuns that failed (not in the medians):\n");
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

fn json_report(
    o: &Options,
    command: &str,
    all: &[Contender],
    rows: &[Option<Row>],
    reports: &[Vec<Value>],
    failures: &[String],
) -> Value {
    let servers: Vec<Value> = all
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let r = rows[i]?;
            Some(json!({
                "name": c.name,
                "runs": r.runs,
                "round_trips_per_s": r.round_trips,
                "round_trips": reports[i].iter().map(|v| num(v, "messages")).collect::<Vec<_>>(),
                "errors": r.errors,
                "latency_us": { "p50": r.p50, "p99": r.p99 },
                "server_cpu_us_per_round_trip": r.cpu_us,
                "server_cpu_us_per_round_trip_range": [r.cpu_range.0, r.cpu_range.1],
                "server_cpu_util": r.busy,
                "hop_cpu_us_over_echo": hop(all, rows, i),
                "reports": reports[i],
            }))
        })
        .collect();
    json!({
        "date": procs::today(),
        "machine": procs::machine(),
        "command": command,
        "note": o.note,
        "clients": o.clients,
        "size": o.size,
        "secs": o.secs,
        "warmup": o.warmup,
        "server_cpus": o.server_cpus,
        "load_cpus": o.load_cpus,
        "servers": servers,
        "failures": failures,
    })
}
