//! `ringside-bench fanout`: publish-to-receive latency at a fixed publish rate, and deliveries
//! per second at saturation, for Ringside's broadcast app (io_uring and epoll), a peer built on
//! tokio-tungstenite with `tokio::sync::broadcast` and, when its sources are given, uWebSockets'
//! own pub/sub (`bench/peers/uws/broadcast.cpp`, no compression), in one run with the same
//! pinning.
//!
//! uWebSockets writes a subscriber's published messages every event-loop iteration, at most 32
//! per write, so at saturation each write carries the few publishes of one iteration and its
//! deliveries per second say more about that batching than about its cost; the fixed-rate run,
//! where every server delivers the same messages, is the fair comparison of server CPU per
//! delivery and latency.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::procs::{self, errors, median, num, ServerProcess};

#[derive(Debug, Clone)]
pub struct Options {
    pub subscribers: u64,
    pub rate: f64,
    pub size: usize,
    pub secs: f64,
    /// Subscribers in the saturation runs.
    pub saturation_subscribers: u64,
    pub window: u64,
    pub runs: usize,
    pub server_cpus: String,
    pub load_cpus: String,
    pub server_threads: usize,
    pub load_threads: usize,
    /// uWebSockets' broadcast binary (`uws-broadcast-plain`), or why it is not in the run.
    pub uws: Result<PathBuf, String>,
    pub doc: PathBuf,
}

impl Options {
    /// The uWebSockets binary to run, or why there is none (it runs one thread only).
    fn uws(&self) -> Result<&Path, String> {
        let bin = self.uws.as_deref().map_err(Clone::clone)?;
        if self.server_threads != 1 {
            return Err(format!(
                "uWebSockets' broadcast peer runs one thread; this run gives servers {}",
                self.server_threads
            ));
        }
        Ok(bin)
    }
}

struct Fanner {
    name: &'static str,
    /// A name in the release directory, or an absolute path.
    bin: PathBuf,
    args: Vec<String>,
}

/// The name uWebSockets goes by in the tables.
const UWS: &str = "uWebSockets pub/sub";

/// The servers: Ringside io_uring, epoll, the tokio-tungstenite peer, then uWebSockets (when
/// `uws` is its binary).
fn fanners(threads: usize, uws: Option<&Path>) -> Vec<Fanner> {
    let t = threads.to_string();
    let ringside = |backend: &str| -> Vec<String> {
        ["--listen", "127.0.0.1:0", "--app", "broadcast", "--backend", backend, "--no-pin"]
            .iter()
            .chain(&["--workers", &t, "--idle-timeout", "3600", "--no-idle-ping"])
            .map(|s| (*s).to_owned())
            .collect()
    };
    let mut all = vec![
        Fanner { name: "ringside io_uring", bin: "ringside".into(), args: ringside("io-uring") },
        Fanner { name: "ringside epoll", bin: "ringside".into(), args: ringside("epoll") },
        Fanner {
            name: "tokio-tungstenite + broadcast",
            bin: "peer-tungstenite".into(),
            args: ["--listen", "127.0.0.1:0", "--app", "broadcast", "--threads", &t]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        },
    ];
    if let Some(bin) = uws {
        all.push(Fanner {
            name: UWS,
            bin: bin.to_path_buf(),
            args: vec!["0".into(), "plain".into()],
        });
    }
    all
}

fn run_one(bins: &Path, f: &Fanner, o: &Options, subscribers: u64, rate: f64) -> io::Result<Value> {
    let mut server = ServerProcess::start(&o.server_cpus, &bins.join(&f.bin), &f.args)?;
    let args: Vec<String> = [
        "fanout",
        "--url",
        &format!("ws://{}/", server.addr),
        "--subscribers",
        &subscribers.to_string(),
        "--topics",
        "1",
        "--publishers",
        "1",
        "--rate",
        &rate.to_string(),
        "--window",
        &o.window.to_string(),
        "--size",
        &o.size.to_string(),
        "--duration",
        &o.secs.to_string(),
        "--server-pid",
        &server.pid().to_string(),
        "--threads",
        &o.load_threads.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let report = procs::load(bins, &o.load_cpus, &args, Duration::from_secs_f64(o.secs + 120.0))?;
    if !server.alive() {
        return Err(io::Error::other("the server died during the run"));
    }
    Ok(report)
}

/// reports[fanner][run] for one configuration, servers taking turns.
fn measure(o: &Options, subscribers: u64, rate: f64, what: &str) -> (Vec<Vec<Value>>, Vec<String>) {
    let bins = procs::bin_dir().expect("binary directory");
    let fs = fanners(o.server_threads, o.uws().ok());
    let mut reports = vec![Vec::new(); fs.len()];
    let mut failures = Vec::new();
    for run in 0..o.runs {
        for k in 0..fs.len() {
            let i = (k + run) % fs.len();
            match run_one(&bins, &fs[i], o, subscribers, rate) {
                Ok(r) => {
                    eprintln!(
                        "  {what} run {} {:<30} {:>10.0} deliveries/s, p50 {:>7.0} us, p99 {:>8.0} \
                         us, lost {}, reordered {}, {} errors",
                        run + 1,
                        fs[i].name,
                        num(&r, "deliveries_per_s"),
                        num(&r, "latency_us.p50"),
                        num(&r, "latency_us.p99"),
                        num(&r, "lost"),
                        num(&r, "reordered"),
                        errors(&r)
                    );
                    reports[i].push(r);
                }
                Err(e) => {
                    eprintln!("  {what} run {} {} FAILED: {e}", run + 1, fs[i].name);
                    failures.push(format!("{what}, {}: {e}", fs[i].name));
                }
            }
        }
    }
    (reports, failures)
}

/// Ringside's backends beside uWebSockets, fixed rate and saturation, with Ringside / uWS
/// ratios.
fn against_uws(
    md: &mut String,
    o: &Options,
    names: &[&str],
    fixed: &[Vec<Value>],
    sat: &[Vec<Value>],
) {
    let _ = writeln!(md, "\n### Against uWebSockets\n");
    let Some(u) = names.iter().position(|n| *n == UWS) else {
        let why = o.uws().err().unwrap_or_default();
        let _ = writeln!(md, "uWebSockets is not in this run: {why}.");
        return;
    };
    let _ = writeln!(
        md,
        "uWebSockets' own pub/sub (`ws->subscribe`, `App::publish`, no compression, one \
         thread: `bench/peers/uws/broadcast.cpp`). At a fixed rate every server delivers the \
         same {} deliveries/s, so server CPU per delivery and latency compare like for like. \
         uWebSockets writes each subscriber's published messages every event-loop iteration, at \
         most 32 per write (its TopicTree), so at saturation a write carries the few publishes \
         of one iteration: its deliveries per second there measure that batching as much as \
         its cost.\n",
        o.subscribers as f64 * o.rate
    );
    let _ = writeln!(
        md,
        "| server | fixed: server CPU µs / delivery | fixed: p50 / p99 (µs) | saturation: \
         deliveries/s | saturation: server CPU µs / delivery | saturation: p99 (µs) \
         |\n|---|---|---|---|---|---|"
    );
    let cell = |r: &[Value], path: &str, digits: usize| {
        let x = m(r, path);
        if x.is_finite() {
            format!("{x:.digits$}")
        } else {
            "-".into()
        }
    };
    let ratio = |i: usize, path: &str, set: &[Vec<Value>]| {
        let x = m(&set[i], path) / m(&set[u], path);
        if x.is_finite() {
            format!("{x:.2}")
        } else {
            "-".into()
        }
    };
    for (i, name) in names.iter().enumerate() {
        if !name.starts_with("ringside") && i != u {
            continue;
        }
        let _ = writeln!(
            md,
            "| {name} | {} | {} / {} | {} | {} | {} |",
            cell(&fixed[i], "server.cpu_us_per_delivery", 3),
            cell(&fixed[i], "latency_us.p50", 0),
            cell(&fixed[i], "latency_us.p99", 0),
            cell(&sat[i], "deliveries_per_s", 0),
            cell(&sat[i], "server.cpu_us_per_delivery", 3),
            cell(&sat[i], "latency_us.p99", 0),
        );
    }
    for (i, name) in names.iter().enumerate().filter(|(_, n)| n.starts_with("ringside")) {
        let _ = writeln!(
            md,
            "| {name} / uWS | {} | {} / {} | {} | {} | {} |",
            ratio(i, "server.cpu_us_per_delivery", fixed),
            ratio(i, "latency_us.p50", fixed),
            ratio(i, "latency_us.p99", fixed),
            ratio(i, "deliveries_per_s", sat),
            ratio(i, "server.cpu_us_per_delivery", sat),
            ratio(i, "latency_us.p99", sat),
        );
    }
}

fn m(reports: &[Value], path: &str) -> f64 {
    median(&reports.iter().map(|r| num(r, path)).collect::<Vec<_>>())
}

fn sum(reports: &[Value], path: &str) -> f64 {
    reports.iter().map(|r| num(r, path)).filter(|x| x.is_finite()).sum()
}

pub fn main(o: Options, command: &str) -> io::Result<()> {
    eprintln!(
        "fan-out latency: {} subscribers, {} publishes/s of {} B",
        o.subscribers, o.rate, o.size
    );
    let (fixed, mut failures) = measure(&o, o.subscribers, o.rate, "fixed rate");
    eprintln!("fan-out saturation: {} subscribers", o.saturation_subscribers);
    let (sat, f2) = measure(&o, o.saturation_subscribers, 0.0, "saturation");
    failures.extend(f2);
    let names: Vec<&str> = fanners(o.server_threads, o.uws().ok()).iter().map(|f| f.name).collect();
    let mut md = String::new();
    let _ = writeln!(md, "## Fan-out\n");
    let _ = writeln!(
        md,
        "Machine: {}. Date: {}. Servers on CPU(s) {} ({} worker/thread), `ringside-load fanout` \
         on CPU(s) {}; one publisher, one topic, the `broadcast` text protocol \
         (docs/broadcast.md). Medians of {} runs of {} s, servers taking turns. Latency is from \
         the publisher's send time (CLOCK_MONOTONIC in the payload) to the subscriber's receive \
         time.\n",
        procs::machine(),
        procs::today(),
        o.server_cpus,
        o.server_threads,
        o.load_cpus,
        o.runs,
        o.secs
    );
    let _ = writeln!(md, "```sh\n{command}\n```\n");
    let _ = writeln!(
        md,
        "### {} subscribers, {} publishes/s of {} B ({} deliveries/s)\n",
        o.subscribers,
        o.rate,
        o.size,
        o.subscribers as f64 * o.rate
    );
    let _ = writeln!(
        md,
        "| server | deliveries/s | p50 | p90 | p99 | p99.9 | max (µs) | lost | reordered | \
         server CPU µs / delivery |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (name, r) in names.iter().zip(&fixed) {
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.3} |",
            m(r, "deliveries_per_s"),
            m(r, "latency_us.p50"),
            m(r, "latency_us.p90"),
            m(r, "latency_us.p99"),
            m(r, "latency_us.p999"),
            m(r, "latency_us.max"),
            sum(r, "lost"),
            sum(r, "reordered"),
            m(r, "server.cpu_us_per_delivery"),
        );
    }
    let _ = writeln!(
        md,
        "\n### Saturation: {} subscribers, the publisher keeping {} publishes in flight\n",
        o.saturation_subscribers, o.window
    );
    let _ = writeln!(
        md,
        "| server | deliveries/s | p50 | p99 (µs) | lost | server CPU µs / delivery | server \
         busy |\n|---|---|---|---|---|---|---|"
    );
    let rates: Vec<f64> = sat.iter().map(|r| m(r, "deliveries_per_s")).collect();
    for (name, r) in names.iter().zip(&sat) {
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.0} | {} | {:.3} | {:.0}% |",
            m(r, "deliveries_per_s"),
            m(r, "latency_us.p50"),
            m(r, "latency_us.p99"),
            sum(r, "lost"),
            m(r, "server.cpu_us_per_delivery"),
            100.0 * m(r, "server.cpu_util"),
        );
    }
    let best = rates[..2].iter().copied().filter(|x| x.is_finite()).fold(f64::NAN, f64::max);
    let _ = writeln!(
        md,
        "\nRingside's best backend / the tokio-tungstenite peer at saturation: **{:.2}x** \
         deliveries/s.",
        best / rates[2]
    );
    against_uws(&mut md, &o, &names, &fixed, &sat);
    if !failures.is_empty() {
        let _ = writeln!(md, "\nRuns that failed (not in the medians):\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    println!("{md}");
    procs::splice_doc(&o.doc, "fanout", &md)?;
    eprintln!("wrote {}", o.doc.display());
    Ok(())
}
