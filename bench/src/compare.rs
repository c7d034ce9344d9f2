//! `ringside-bench compare`: Ringside (io_uring and epoll) against peer servers built on
//! crates.io libraries, against uWebSockets (C++, `bench/peers/uws`, built from its sources when
//! they are given) and against the raw TCP echo limit, in one run, on one machine.
//!
//! Every server runs pinned to the same CPUs (`--server-cpus`, default 0), the load generator on
//! the others (`--load-cpus`, default 1). Each cell of the matrix is the median of `--runs`
//! runs, the servers taking turns in a rotating order. Each cell reports the server's CPU time
//! per message (from /proc/PID/stat over the measured window), throughput and latency; then the
//! matrix is run again open loop at a fixed rate every server sustains, then connect rate and idle
//! memory. The results go to docs/benchmarks.md (between `compare` markers) with SVG charts.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::chart;
use crate::procs::{self, errors, geomean, median, num, ServerProcess};

/// What a contender is, for the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ringside,
    /// A WebSocket server on a crates.io library.
    Peer,
    /// uWebSockets' echo (C++): the bar Ringside's server CPU per message is held to.
    Uws,
    /// The raw TCP echo: no WebSocket work at all.
    Limit,
}

/// A server in the comparison.
#[derive(Debug, Clone)]
pub struct Contender {
    pub name: &'static str,
    pub class: Class,
    /// The binary: a name in the release directory, or an absolute path.
    bin: PathBuf,
    args: Vec<String>,
    /// Replies are our own masked frames (the raw echo).
    raw: bool,
}

impl Contender {
    pub fn start(&self, bins: &Path, cpus: &str) -> io::Result<ServerProcess> {
        ServerProcess::start(cpus, &bins.join(&self.bin), &self.args)
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Every contender, each told to use `threads` threads (workers); uWebSockets (one thread
/// only) when `uws` is its echo binary.
pub fn contenders(threads: usize, uws: Option<&Path>) -> Vec<Contender> {
    let t = threads.to_string();
    let ringside = |backend: &str| {
        let mut a = strings(&["--listen", "127.0.0.1:0", "--backend", backend, "--no-pin"]);
        a.extend(strings(&["--workers", &t, "--idle-timeout", "3600", "--no-idle-ping"]));
        a
    };
    let peer = |extra: &[&str]| {
        let mut a = strings(&["--listen", "127.0.0.1:0", "--threads", &t]);
        a.extend(strings(extra));
        a
    };
    let mut all = vec![
        Contender {
            name: "ringside io_uring",
            class: Class::Ringside,
            bin: "ringside".into(),
            args: ringside("io-uring"),
            raw: false,
        },
        Contender {
            name: "ringside epoll",
            class: Class::Ringside,
            bin: "ringside".into(),
            args: ringside("epoll"),
            raw: false,
        },
        Contender {
            name: "tokio-tungstenite",
            class: Class::Peer,
            bin: "peer-tungstenite".into(),
            args: peer(&[]),
            raw: false,
        },
        Contender {
            name: "fastwebsockets",
            class: Class::Peer,
            bin: "peer-fastwebsockets".into(),
            args: peer(&[]),
            raw: false,
        },
        Contender {
            name: "tokio-websockets",
            class: Class::Peer,
            bin: "peer-tokio-websockets".into(),
            args: peer(&[]),
            raw: false,
        },
        Contender {
            name: "raw echo epoll",
            class: Class::Limit,
            bin: "raw-echo".into(),
            args: strings(&["--listen", "127.0.0.1:0", "--backend", "epoll"]),
            raw: true,
        },
        Contender {
            name: "raw echo io_uring",
            class: Class::Limit,
            bin: "raw-echo".into(),
            args: strings(&["--listen", "127.0.0.1:0", "--backend", "io-uring"]),
            raw: true,
        },
    ];
    if let Some(bin) = uws {
        // Beside the Rust peers, before the limits: the charts keep the order.
        all.insert(
            5,
            Contender {
                name: "uWebSockets",
                class: Class::Uws,
                bin: bin.to_path_buf(),
                args: strings(&["0"]),
                raw: false,
            },
        );
    }
    all
}

/// One row of the matrix: connections, payload bytes, messages in flight per connection.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub conns: u64,
    pub size: usize,
    pub inflight: usize,
}

impl Row {
    fn label(&self) -> String {
        let size = if self.size >= 1024 && self.size % 1024 == 0 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        let conns = if self.conns >= 10_000 {
            format!("{},{:03}", self.conns / 1000, self.conns % 1000)
        } else {
            self.conns.to_string()
        };
        if self.inflight > 1 {
            format!("{conns} x {size}, {} in flight", self.inflight)
        } else {
            format!("{conns} x {size}")
        }
    }
}

/// The comparison matrix: connections x message sizes x messages in flight. `--rows` takes
/// indices into it, so new rows go at the end.
pub const MATRIX: [Row; 9] = [
    Row { conns: 10, size: 1024, inflight: 1 },
    Row { conns: 10, size: 16 << 10, inflight: 1 },
    Row { conns: 100, size: 0, inflight: 1 },
    Row { conns: 100, size: 20, inflight: 1 },
    Row { conns: 200, size: 16 << 10, inflight: 1 },
    Row { conns: 500, size: 16 << 10, inflight: 1 },
    Row { conns: 10_000, size: 20, inflight: 1 },
    Row { conns: 100, size: 20, inflight: 16 },
    Row { conns: 1000, size: 20, inflight: 1 },
];

/// The rows of `--quick`: those the bar against uWebSockets and the raw echo names (100 x 20 B
/// with 1 and 16 in flight, 10, 200 and 500 x 16 KiB, 1000 x 20 B).
pub const QUICK_ROWS: [usize; 6] = [1, 3, 4, 5, 7, 8];

/// How the comparison runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub warmup: f64,
    pub secs: f64,
    pub server_cpus: String,
    pub load_cpus: String,
    pub server_threads: usize,
    pub load_threads: usize,
    /// Only the contenders whose name contains one of these (all if empty).
    pub only: Vec<String>,
    /// Only these rows of the matrix (indices; all if empty).
    pub rows: Vec<usize>,
    pub skip_open_loop: bool,
    /// Skip the connect rate and idle memory passes.
    pub skip_connect_idle: bool,
    /// uWebSockets' echo binary, or why it is not in the run.
    pub uws: Result<PathBuf, String>,
    pub doc: PathBuf,
}

impl Options {
    /// The uWebSockets binary to run, or why there is none (it runs one thread only).
    fn uws(&self) -> Result<&Path, String> {
        let bin = self.uws.as_deref().map_err(Clone::clone)?;
        if self.server_threads != 1 {
            return Err(format!(
                "uWebSockets' echo peer runs one thread; this run gives servers {}",
                self.server_threads
            ));
        }
        Ok(bin)
    }
}

/// One measured cell (medians over the runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cell {
    pub msgs_per_s: f64,
    pub cpu_us: f64,
    pub p50: f64,
    pub p99: f64,
    pub server_util: f64,
    pub load_util: f64,
    pub errors: u64,
}

impl Cell {
    fn median_of(runs: &[Value]) -> Cell {
        let m = |path: &str| median(&runs.iter().map(|r| num(r, path)).collect::<Vec<_>>());
        Cell {
            msgs_per_s: m("msgs_per_s"),
            cpu_us: m("server.cpu_us_per_msg"),
            p50: m("latency_us.p50"),
            p99: m("latency_us.p99"),
            server_util: m("server.cpu_util"),
            load_util: m("loadgen.cpu_util"),
            errors: runs.iter().map(errors).sum(),
        }
    }
}

/// Results of the whole comparison.
#[derive(Debug, Default)]
pub struct Results {
    pub names: Vec<&'static str>,
    pub classes: Vec<Class>,
    pub rows: Vec<Row>,
    /// closed[row][contender]
    pub closed: Vec<Vec<Cell>>,
    /// The open-loop rate of each row, and open[row][contender].
    pub rates: Vec<f64>,
    pub open: Vec<Vec<Cell>>,
    /// Per contender: handshakes/s, connect p50, p99 (µs); NaN where not measured.
    pub connect: Vec<(f64, f64, f64)>,
    /// Per contender: idle RSS per connection at 10,000 (bytes).
    pub idle: Vec<f64>,
    pub failures: Vec<String>,
}

fn echo_args(row: &Row, addr: &str, pid: u32, c: &Contender, o: &Options) -> Vec<String> {
    let mut a = vec!["echo".to_owned(), "--url".into(), format!("ws://{addr}/")];
    a.extend(common_args(row, pid, c, o));
    a.extend(["--inflight".into(), row.inflight.to_string()]);
    a
}

fn common_args(row: &Row, pid: u32, c: &Contender, o: &Options) -> Vec<String> {
    let mut a = vec![
        "--conns".to_owned(),
        row.conns.to_string(),
        "--size".into(),
        row.size.to_string(),
        "--warmup".into(),
        o.warmup.to_string(),
        "--duration".into(),
        o.secs.to_string(),
        "--server-pid".into(),
        pid.to_string(),
        "--threads".into(),
        o.load_threads.to_string(),
    ];
    if c.raw {
        a.push("--raw-echo".into());
    }
    a
}

/// Bound on one load generator run: warm-up, window, setup of 10,000 connections, teardown.
fn limit(o: &Options) -> Duration {
    Duration::from_secs_f64(o.warmup + o.secs + 60.0)
}

/// Runs `scenario` (built by `args`) once per run per contender, rotating the order each run,
/// and returns the reports: reports[contender][run].
fn each_contender(
    cs: &[Contender],
    o: &Options,
    what: &str,
    failures: &mut Vec<String>,
    args: impl Fn(&Contender, &str, u32) -> Option<Vec<String>>,
) -> Vec<Vec<Value>> {
    let bins = procs::bin_dir().expect("the binary directory");
    let mut reports = vec![Vec::new(); cs.len()];
    for run in 0..o.runs {
        for k in 0..cs.len() {
            let i = (k + run) % cs.len();
            let c = &cs[i];
            let result = c.start(&bins, &o.server_cpus).and_then(|mut server| {
                let Some(args) = args(c, &server.addr.to_string(), server.pid()) else {
                    return Ok(None);
                };
                let report = procs::load(&bins, &o.load_cpus, &args, limit(o))?;
                if !server.alive() {
                    return Err(io::Error::other("the server died during the run"));
                }
                Ok(Some(report))
            });
            match result {
                Ok(Some(r)) => {
                    eprintln!("  {what} run {} {:<18} {}", run + 1, c.name, brief(&r));
                    reports[i].push(r);
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("  {what} run {} {:<18} FAILED: {e}", run + 1, c.name);
                    failures.push(format!("{what}, {}: {e}", c.name));
                }
            }
        }
    }
    reports
}

fn brief(r: &Value) -> String {
    format!(
        "{:>10.0} msg/s {:>6.2} us/msg server CPU ({:>3.0}% busy), p50 {:>6.0} us, p99 {:>7.0} \
         us, load gen {:>3.0}% busy, {} errors",
        num(r, "msgs_per_s"),
        num(r, "server.cpu_us_per_msg"),
        100.0 * num(r, "server.cpu_util"),
        num(r, "latency_us.p50"),
        num(r, "latency_us.p99"),
        100.0 * num(r, "loadgen.cpu_util"),
        errors(r)
    )
}

/// Runs everything and returns the results.
pub fn run(o: &Options) -> Results {
    let cs: Vec<Contender> = contenders(o.server_threads, o.uws().ok())
        .into_iter()
        .filter(|c| o.only.is_empty() || o.only.iter().any(|n| c.name.contains(n.as_str())))
        .collect();
    let rows: Vec<Row> = MATRIX
        .iter()
        .enumerate()
        .filter(|(i, _)| o.rows.is_empty() || o.rows.contains(i))
        .map(|(_, r)| *r)
        .collect();
    let mut res = Results {
        names: cs.iter().map(|c| c.name).collect(),
        classes: cs.iter().map(|c| c.class).collect(),
        rows: rows.clone(),
        ..Results::default()
    };
    let mut failures = Vec::new();
    for row in &rows {
        eprintln!("closed loop: {}", row.label());
        let reports = each_contender(&cs, o, "closed", &mut failures, |c, addr, pid| {
            Some(echo_args(row, addr, pid, c, o))
        });
        res.closed.push(reports.iter().map(|r| Cell::median_of(r)).collect());
    }
    if !o.skip_open_loop {
        for (r, row) in rows.iter().enumerate() {
            // A rate every WebSocket server sustained closed loop: half the slowest one's.
            let slowest = res.closed[r]
                .iter()
                .zip(&cs)
                .filter(|(cell, c)| c.class != Class::Limit && cell.msgs_per_s.is_finite())
                .map(|(cell, _)| cell.msgs_per_s)
                .fold(f64::INFINITY, f64::min);
            let rate =
                if slowest.is_finite() { (slowest / 2.0).max(100.0).round() } else { 1000.0 };
            res.rates.push(rate);
            eprintln!("open loop at {rate:.0} msg/s: {}", row.label());
            let reports = each_contender(&cs, o, "open", &mut failures, |c, addr, pid| {
                let mut a = vec!["rate".to_owned(), "--url".into(), format!("ws://{addr}/")];
                a.extend(common_args(row, pid, c, o));
                a.extend(["--rate".into(), rate.to_string()]);
                Some(a)
            });
            res.open.push(reports.iter().map(|r| Cell::median_of(r)).collect());
        }
    }
    if o.skip_connect_idle {
        res.connect = vec![(f64::NAN, f64::NAN, f64::NAN); cs.len()];
        res.idle = vec![f64::NAN; cs.len()];
        res.failures = failures;
        return res;
    }
    eprintln!("connect rate");
    let reports = each_contender(&cs, o, "connect", &mut failures, |c, addr, pid| {
        (c.class != Class::Limit).then(|| {
            strings(&["connect", "--url", &format!("ws://{addr}/"), "--concurrency", "32"])
                .into_iter()
                .chain(strings(&["--warmup", &o.warmup.to_string()]))
                .chain(strings(&["--duration", &o.secs.to_string(), "--server-pid"]))
                .chain([pid.to_string()])
                .collect()
        })
    });
    res.connect = reports
        .iter()
        .map(|r| {
            let m = |p: &str| median(&r.iter().map(|v| num(v, p)).collect::<Vec<_>>());
            (m("handshakes_per_s"), m("connect_latency_us.p50"), m("connect_latency_us.p99"))
        })
        .collect();
    eprintln!("idle memory at 10,000 connections");
    let once = Options { runs: 1, ..o.clone() };
    let reports = each_contender(&cs, &once, "idle", &mut failures, |c, addr, pid| {
        (c.class != Class::Limit).then(|| {
            strings(&["hold", "--url", &format!("ws://{addr}/"), "--conns", "10000"])
                .into_iter()
                .chain(strings(&["--hold-secs", "2", "--sample", "100", "--sample-secs", "1"]))
                .chain(["--server-pid".to_owned(), pid.to_string()])
                .collect()
        })
    });
    res.idle = reports
        .iter()
        .map(|r| median(&r.iter().map(|v| num(v, "rss_per_conn")).collect::<Vec<_>>()))
        .collect();
    res.failures = failures;
    res
}

/// The bar: best Ringside server CPU per message at most this times uWebSockets'.
const BAR_UWS: f64 = 1.00;
/// The bar: best Ringside server CPU per message at most this times the best raw echo's.
const BAR_RAW: f64 = 1.02;
/// The bar: io_uring's server CPU per message at most this times epoll's.
const BAR_BACKENDS: f64 = 1.05;

/// One row measured against the bar (server CPU per message, closed loop; NaN where a side is
/// missing from the run).
#[derive(Debug, Clone, Copy)]
struct AgainstBar {
    ringside: f64,
    uws: f64,
    raw: f64,
    /// Best Ringside / uWebSockets.
    vs_uws: f64,
    /// Best Ringside / best raw echo.
    vs_raw: f64,
    /// Ringside io_uring / Ringside epoll.
    uring_vs_epoll: f64,
    /// Best Ringside throughput / uWebSockets'.
    tput_vs_uws: f64,
}

impl AgainstBar {
    fn of(cells: &[Cell], res: &Results) -> AgainstBar {
        let cpu = |i: Option<usize>| i.map_or(f64::NAN, |i| cells[i].cpu_us);
        let ringside = best(cells, &res.classes, Class::Ringside, |c| c.cpu_us);
        let uws = best(cells, &res.classes, Class::Uws, |c| c.cpu_us);
        let raw = best(cells, &res.classes, Class::Limit, |c| c.cpu_us);
        let named = |name: &str| cpu(res.names.iter().position(|n| *n == name));
        let neg = |c: &Cell| -c.msgs_per_s;
        let tput = |i: Option<usize>| i.map_or(f64::NAN, |i| cells[i].msgs_per_s);
        AgainstBar {
            ringside: cpu(ringside),
            uws: cpu(uws),
            raw: cpu(raw),
            vs_uws: cpu(ringside) / cpu(uws),
            vs_raw: cpu(ringside) / cpu(raw),
            uring_vs_epoll: named("ringside io_uring") / named("ringside epoll"),
            tput_vs_uws: tput(best(cells, &res.classes, Class::Ringside, neg))
                / tput(best(cells, &res.classes, Class::Uws, neg)),
        }
    }

    /// What this row misses of the bar, e.g. "1.08x uWS", three digits so 1.003 does not read
    /// as 1.00.
    fn misses(&self) -> Vec<String> {
        let mut m = Vec::new();
        if self.vs_uws > BAR_UWS {
            m.push(format!("{:.3}x uWS", self.vs_uws));
        }
        if self.vs_raw > BAR_RAW {
            m.push(format!("{:.3}x raw echo", self.vs_raw));
        }
        if self.uring_vs_epoll > BAR_BACKENDS {
            m.push(format!("io_uring {:.3}x epoll", self.uring_vs_epoll));
        }
        m
    }
}

/// Index of the best (lowest CPU per message) contender of `class` in a row.
fn best(
    cells: &[Cell],
    classes: &[Class],
    class: Class,
    key: impl Fn(&Cell) -> f64,
) -> Option<usize> {
    (0..cells.len())
        .filter(|&i| classes[i] == class && key(&cells[i]).is_finite())
        .min_by(|&a, &b| key(&cells[a]).total_cmp(&key(&cells[b])))
}

fn fmt_rate(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

/// The markdown section for docs/benchmarks.md.
pub fn render(res: &Results, o: &Options, command: &str) -> String {
    let mut md = String::new();
    let n = res.names.len();
    let header = |md: &mut String, first: &str, last: &str| {
        let _ = write!(md, "| {first} |");
        for name in &res.names {
            let _ = write!(md, " {name} |");
        }
        let _ = writeln!(md, " {last} |");
        let _ = writeln!(md, "|---|{}---|", "---|".repeat(n));
    };
    let _ = writeln!(md, "## Peer comparison\n");
    let _ = writeln!(
        md,
        "Machine: {}. Date: {}. Servers pinned to CPU(s) {} with {} thread(s)/worker(s) each, \
         the load generator (`ringside-load`, {} thread(s)) on CPU(s) {}. Each cell is the median \
         of {} runs of {} s after a {} s warm-up; the servers take turns in a rotating order. \
         Server CPU per message is user+system time from /proc/PID/stat over the measured \
         window divided by the messages echoed in it.\n",
        procs::machine(),
        procs::today(),
        o.server_cpus,
        o.server_threads,
        o.load_threads,
        o.load_cpus,
        o.runs,
        o.secs,
        o.warmup
    );
    let _ = writeln!(md, "```sh\n{command}\n```\n");
    let _ = writeln!(
        md,
        "The raw echo rows are the limit: a TCP echo that answers the upgrade and returns the \
         bytes it gets, with no WebSocket work at all.\n"
    );
    let _ = writeln!(md, "![server CPU per message](img/compare-cpu.svg)\n");
    let _ = writeln!(md, "### Server CPU per message, closed loop (µs, lower is better)\n");
    header(&mut md, "connections x payload", "best Ringside / best peer");
    let mut cpu_ratios = Vec::new();
    for (r, row) in res.rows.iter().enumerate() {
        let cells = &res.closed[r];
        let _ = write!(md, "| {} |", row.label());
        for c in cells {
            let _ = write!(md, " {} |", fmt(c.cpu_us, 2));
        }
        let ratio = match (
            best(cells, &res.classes, Class::Ringside, |c| c.cpu_us),
            best(cells, &res.classes, Class::Peer, |c| c.cpu_us),
        ) {
            (Some(a), Some(b)) => cells[a].cpu_us / cells[b].cpu_us,
            _ => f64::NAN,
        };
        cpu_ratios.push(ratio);
        let _ = writeln!(md, " {} |", fmt(ratio, 2));
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "![throughput](img/compare-throughput.svg)\n");
    let _ = writeln!(md, "### Throughput, closed loop (messages/s, higher is better)\n");
    header(&mut md, "connections x payload", "best Ringside / best peer");
    let mut tput_ratios = Vec::new();
    for (r, row) in res.rows.iter().enumerate() {
        let cells = &res.closed[r];
        let _ = write!(md, "| {} |", row.label());
        for c in cells {
            let _ = write!(md, " {} |", fmt_rate(c.msgs_per_s));
        }
        let neg = |c: &Cell| -c.msgs_per_s;
        let ratio = match (
            best(cells, &res.classes, Class::Ringside, neg),
            best(cells, &res.classes, Class::Peer, neg),
        ) {
            (Some(a), Some(b)) => cells[a].msgs_per_s / cells[b].msgs_per_s,
            _ => f64::NAN,
        };
        tput_ratios.push(ratio);
        let _ = writeln!(md, " {} |", fmt(ratio, 2));
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "### Latency, closed loop (p50 / p99, µs)\n");
    header(&mut md, "connections x payload", "");
    for (r, row) in res.rows.iter().enumerate() {
        let _ = write!(md, "| {} |", row.label());
        for c in &res.closed[r] {
            let _ = write!(md, " {} / {} |", fmt(c.p50, 0), fmt(c.p99, 0));
        }
        let _ = writeln!(md, " |");
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "### Who was busy (server CPU / load generator CPU, % of one core per thread)\n\nA \
         load generator near 100% means the row measured it, not the server: compare server CPU \
         per message there.\n"
    );
    header(&mut md, "connections x payload", "");
    for (r, row) in res.rows.iter().enumerate() {
        let _ = write!(md, "| {} |", row.label());
        for c in &res.closed[r] {
            let _ = write!(
                md,
                " {} / {} |",
                fmt(100.0 * c.server_util, 0),
                fmt(100.0 * c.load_util / o.load_threads.max(1) as f64, 0)
            );
        }
        let _ = writeln!(md, " |");
    }
    let _ = writeln!(md);
    let bars: Vec<AgainstBar> = res.closed.iter().map(|cells| AgainstBar::of(cells, res)).collect();
    let _ = writeln!(
        md,
        "### Against uWebSockets and the raw echo (server CPU per message, closed loop)\n\nThe \
         bar: the best Ringside backend at most {BAR_UWS:.2}x uWebSockets' server CPU per \
         message and at most {BAR_RAW:.2}x the best raw echo's on every row, io_uring at most \
         {BAR_BACKENDS:.2}x epoll. uWebSockets {}.\n",
        match o.uws() {
            Ok(_) => "is its echo example's handler (`ws->send(message, opCode)`) with \
                      compression off, no idle timeout and one thread \
                      (`bench/peers/uws/echo.cpp`, built from its sources by \
                      `bench/peers/uws/build.sh`)"
                .to_owned(),
            Err(why) => format!("is not in this run: {why}"),
        }
    );
    let _ = writeln!(
        md,
        "| connections x payload | best Ringside (µs) | uWebSockets (µs) | best Ringside / uWS \
         | best raw echo (µs) | best Ringside / best raw echo | io_uring / epoll | throughput, \
         best Ringside / uWS | over the bar |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (row, b) in res.rows.iter().zip(&bars) {
        let misses = b.misses();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label(),
            fmt(b.ringside, 2),
            fmt(b.uws, 2),
            fmt(b.vs_uws, 2),
            fmt(b.raw, 2),
            fmt(b.vs_raw, 2),
            fmt(b.uring_vs_epoll, 2),
            fmt(b.tput_vs_uws, 2),
            if misses.is_empty() { "-".to_owned() } else { format!("**{}**", misses.join(", ")) }
        );
    }
    let _ = writeln!(md);
    let mut p99_worse = Vec::new();
    if !res.open.is_empty() {
        let _ = writeln!(
            md,
            "### Open loop at equal load (server CPU µs per message, p50 / p99 µs)\n\nThe rate \
             of each row is half of what the slowest WebSocket server reached closed loop, so \
             every server sustains it; latency is measured from each message's intended send \
             time (coordinated omission corrected).\n"
        );
        header(&mut md, "connections x payload @ rate", "best Ringside p99 / best peer p99");
        for (r, row) in res.rows.iter().enumerate() {
            let cells = &res.open[r];
            let _ = write!(md, "| {} @ {}/s |", row.label(), fmt_rate(res.rates[r]));
            for c in cells {
                let _ =
                    write!(md, " {}: {} / {} |", fmt(c.cpu_us, 2), fmt(c.p50, 0), fmt(c.p99, 0));
            }
            let ratio = match (
                best(cells, &res.classes, Class::Ringside, |c| c.p99),
                best(cells, &res.classes, Class::Peer, |c| c.p99),
            ) {
                (Some(a), Some(b)) => cells[a].p99 / cells[b].p99,
                _ => f64::NAN,
            };
            if ratio > 1.0 {
                // Three digits: a ratio of 1.003 must not read as 1.00.
                p99_worse.push(format!("{} ({ratio:.3})", row.label()));
            }
            let _ = writeln!(md, " {} |", fmt(ratio, 2));
        }
        let _ = writeln!(md);
    }
    if !o.skip_connect_idle {
        connect_and_idle(&mut md, res, &header);
    }
    // The verdict against the bar.
    let _ = writeln!(md, "### Against the bar\n");
    let over = |what: &str, pick: fn(&AgainstBar) -> f64, bar: f64| {
        let rows: Vec<String> = res
            .rows
            .iter()
            .zip(&bars)
            .filter(|(_, b)| pick(b) > bar)
            .map(|(row, b)| format!("{} ({:.3})", row.label(), pick(b)))
            .collect();
        let measured = bars.iter().filter(|b| pick(b).is_finite()).count();
        if measured == 0 {
            format!("- {what} (the bar: {bar:.2}): not measured in this run.")
        } else if rows.is_empty() {
            format!("- {what} (the bar: {bar:.2}): no row over it ({measured} rows).")
        } else {
            format!(
                "- {what} (the bar: {bar:.2}): **over it on {} of {measured} rows**: {}.",
                rows.len(),
                rows.join(", ")
            )
        }
    };
    let _ = writeln!(
        md,
        "{}",
        over("Server CPU per message, best Ringside / uWebSockets", |b| b.vs_uws, BAR_UWS)
    );
    let _ = writeln!(
        md,
        "{}",
        over("Server CPU per message, best Ringside / best raw echo", |b| b.vs_raw, BAR_RAW)
    );
    let _ = writeln!(
        md,
        "{}",
        over("Server CPU per message, io_uring / epoll", |b| b.uring_vs_epoll, BAR_BACKENDS)
    );
    let g = geomean(&cpu_ratios);
    let worst = cpu_ratios.iter().copied().filter(|x| x.is_finite()).fold(f64::NAN, f64::max);
    let _ = writeln!(
        md,
        "- Server CPU per message, best Ringside backend / best Rust peer of each row: geometric \
         mean **{}** (the bar: at most {:.2}), worst row {} (the bar: no row above 1).",
        fmt(g, 2),
        1.0 / 1.3,
        fmt(worst, 2)
    );
    let lowest = tput_ratios.iter().copied().filter(|x| x.is_finite()).fold(f64::NAN, f64::min);
    let _ = writeln!(
        md,
        "- Throughput, best Ringside / best peer: lowest row {} (the bar: at least 1 on every \
         row, 1.2 where the load generator is not the limit).",
        fmt(lowest, 2)
    );
    if let Some(r) = res.rows.iter().position(|row| row.inflight > 1) {
        let cells = &res.closed[r];
        let neg = |c: &Cell| -c.msgs_per_s;
        if let (Some(a), Some(l)) = (
            best(cells, &res.classes, Class::Ringside, neg),
            best(cells, &res.classes, Class::Limit, neg),
        ) {
            let _ = writeln!(
                md,
                "- Pipelined ({}): Ringside {} of the raw echo limit's throughput (the bar: 0.9); \
                 server CPU per message {} of it.",
                res.rows[r].label(),
                fmt(cells[a].msgs_per_s / cells[l].msgs_per_s, 2),
                fmt(cells[a].cpu_us / cells[l].cpu_us, 2)
            );
        }
    }
    if !res.open.is_empty() {
        let _ = writeln!(
            md,
            "- Open loop at equal load: Ringside's best p99 is {}.",
            if p99_worse.is_empty() {
                "no worse than the best peer's on every row".to_owned()
            } else {
                format!("**worse** than the best peer's on {}", p99_worse.join(", "))
            }
        );
    }
    // The load generator's ceiling: the most it reached against any server in this run.
    let ceiling = res
        .closed
        .iter()
        .flat_map(|cells| cells.iter().map(|c| c.msgs_per_s))
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "- The load generator's ceiling in this run: {} messages/s (its best row, against the \
         fastest target); every figure above is at or below it by construction, and the busy \
         table shows where it, not the server, set the pace.",
        fmt_rate(ceiling)
    );
    let mut errored = Vec::new();
    for (r, row) in res.rows.iter().enumerate() {
        for (i, c) in res.closed[r].iter().chain(res.open.get(r).into_iter().flatten()).enumerate()
        {
            if c.errors > 0 {
                errored.push(format!("{} ({}): {}", row.label(), res.names[i % n], c.errors));
            }
        }
    }
    let _ = writeln!(
        md,
        "- Load generator errors (refused, reset, handshake, timeout, closed, protocol): {}.",
        if errored.is_empty() { "none".to_owned() } else { errored.join("; ") }
    );
    if !res.failures.is_empty() {
        let _ = writeln!(md, "\nRuns that failed (not in the medians):\n");
        for f in &res.failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

/// The connect rate and idle memory table.
fn connect_and_idle(md: &mut String, res: &Results, header: &dyn Fn(&mut String, &str, &str)) {
    let _ = writeln!(md, "### Connect rate and idle memory\n");
    header(md, "", "");
    let _ = write!(md, "| handshakes/s (connect, upgrade, close; 32 at a time) |");
    for (h, _, _) in &res.connect {
        let _ = write!(md, " {} |", fmt_rate(*h));
    }
    let _ = writeln!(md, " |");
    let _ = write!(md, "| connect latency p50 / p99 (µs) |");
    for (_, p50, p99) in &res.connect {
        let _ = write!(md, " {} / {} |", fmt(*p50, 0), fmt(*p99, 0));
    }
    let _ = writeln!(md, " |");
    let _ = write!(md, "| server RSS per idle connection at 10,000 (bytes) |");
    for b in &res.idle {
        let _ = write!(md, " {} |", fmt(*b, 0));
    }
    let _ = writeln!(md, " |\n");
}

/// Runs the comparison, prints it, writes it into the doc and the charts beside it.
pub fn main(o: Options, command: &str) -> io::Result<()> {
    let res = run(&o);
    let md = render(&res, &o, command);
    println!("{md}");
    let img = o.doc.parent().unwrap_or(Path::new(".")).join("img");
    std::fs::create_dir_all(&img)?;
    let labels: Vec<String> = res.rows.iter().map(Row::label).collect();
    let cpu: Vec<Vec<f64>> =
        res.closed.iter().map(|r| r.iter().map(|c| c.cpu_us).collect()).collect();
    let tput: Vec<Vec<f64>> =
        res.closed.iter().map(|r| r.iter().map(|c| c.msgs_per_s / 1e3).collect()).collect();
    chart::grouped_bars(
        &img.join("compare-cpu.svg"),
        "Server CPU per message (us), closed loop: lower is better",
        &labels,
        &res.names,
        &cpu,
    )?;
    chart::grouped_bars(
        &img.join("compare-throughput.svg"),
        "Throughput (thousands of messages/s), closed loop: higher is better",
        &labels,
        &res.names,
        &tput,
    )?;
    procs::splice_doc(&o.doc, "compare", &md)?;
    eprintln!("wrote {} and {}", o.doc.display(), img.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(cpu_us: f64, msgs_per_s: f64) -> Cell {
        Cell { cpu_us, msgs_per_s, ..Cell::default() }
    }

    fn options() -> Options {
        Options {
            runs: 1,
            warmup: 0.0,
            secs: 1.0,
            server_cpus: "0".into(),
            load_cpus: "1".into(),
            server_threads: 1,
            load_threads: 1,
            only: Vec::new(),
            rows: Vec::new(),
            skip_open_loop: true,
            skip_connect_idle: true,
            uws: Ok(PathBuf::from("/uws/uws-echo")),
            doc: PathBuf::from("/dev/null"),
        }
    }

    /// Two rows: the first misses only the io_uring / epoll bar, the second the uWS and raw
    /// echo bars.
    fn results() -> Results {
        Results {
            names: vec!["ringside io_uring", "ringside epoll", "uWebSockets", "raw echo epoll"],
            classes: vec![Class::Ringside, Class::Ringside, Class::Uws, Class::Limit],
            rows: vec![
                Row { conns: 10, size: 16 << 10, inflight: 1 },
                Row { conns: 1000, size: 20, inflight: 1 },
            ],
            closed: vec![
                vec![cell(1.10, 90.0), cell(1.00, 100.0), cell(1.00, 100.0), cell(1.00, 100.0)],
                vec![cell(1.20, 80.0), cell(1.20, 80.0), cell(1.00, 100.0), cell(1.10, 90.0)],
            ],
            ..Results::default()
        }
    }

    #[test]
    fn rows_over_the_bar_are_named_with_their_ratios() {
        let res = results();
        let first = AgainstBar::of(&res.closed[0], &res);
        assert_eq!(first.misses(), ["io_uring 1.100x epoll"]);
        assert!((first.tput_vs_uws - 1.0).abs() < 1e-12);
        let second = AgainstBar::of(&res.closed[1], &res);
        assert_eq!(second.misses(), ["1.200x uWS", "1.091x raw echo"]);
        let md = render(&res, &options(), "cargo run");
        assert!(
            md.contains(concat!(
                "best Ringside / uWebSockets (the bar: 1.00): **over it on 1 of 2 rows**: ",
                "1000 x 20 B (1.200)"
            )),
            "{md}"
        );
        assert!(
            md.contains(
                "io_uring / epoll (the bar: 1.05): **over it on 1 of 2 rows**: 10 x 16 KiB (1.100)"
            ),
            "{md}"
        );
        assert!(!md.contains("Connect rate"), "connect and idle were skipped: {md}");
    }

    #[test]
    fn a_run_without_uws_says_why() {
        let mut res = results();
        for row in &mut res.closed {
            row[2] = Cell { cpu_us: f64::NAN, msgs_per_s: f64::NAN, ..Cell::default() };
        }
        let o = Options { uws: Err("no sources given".into()), ..options() };
        let md = render(&res, &o, "cargo run");
        assert!(md.contains("uWebSockets is not in this run: no sources given"), "{md}");
        assert!(md.contains("best Ringside / uWebSockets (the bar: 1.00): not measured"), "{md}");
        let two_threads = Options { server_threads: 2, ..options() };
        assert!(two_threads.uws().unwrap_err().contains("one thread"));
    }
}
