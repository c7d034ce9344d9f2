//! `ringside-bench fanout`: publish-to-receive latency at a fixed publish rate, and deliveries
//! per second at saturation, for Ringside's broadcast app (io_uring and epoll) and a peer built
//! on tokio-tungstenite with `tokio::sync::broadcast`, in one run with the same pinning.

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
    pub doc: PathBuf,
}

struct Fanner {
    name: &'static str,
    bin: &'static str,
    args: Vec<String>,
}

fn fanners(threads: usize) -> Vec<Fanner> {
    let t = threads.to_string();
    let ringside = |backend: &str| -> Vec<String> {
        ["--listen", "127.0.0.1:0", "--app", "broadcast", "--backend", backend, "--no-pin"]
            .iter()
            .chain(&["--workers", &t, "--idle-timeout", "3600", "--no-idle-ping"])
            .map(|s| (*s).to_owned())
            .collect()
    };
    vec![
        Fanner { name: "ringside io_uring", bin: "ringside", args: ringside("io-uring") },
        Fanner { name: "ringside epoll", bin: "ringside", args: ringside("epoll") },
        Fanner {
            name: "tokio-tungstenite + broadcast",
            bin: "peer-tungstenite",
            args: ["--listen", "127.0.0.1:0", "--app", "broadcast", "--threads", &t]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        },
    ]
}

fn run_one(bins: &Path, f: &Fanner, o: &Options, subscribers: u64, rate: f64) -> io::Result<Value> {
    let mut server = ServerProcess::start(&o.server_cpus, &bins.join(f.bin), &f.args)?;
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
    let fs = fanners(o.server_threads);
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
    let names: Vec<&str> = fanners(o.server_threads).iter().map(|f| f.name).collect();
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
