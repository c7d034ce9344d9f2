//! `ringside-bench scale`: one Ringside process holds N concurrent WebSocket connections
//! (200,000 by default), measured while it holds them, then closes them all.
//!
//! The server runs on io_uring with one worker per CPU it may run on (the server's default). A
//! ring's fixed-file table is capped at RLIMIT_NOFILE (20,000 here), so each worker drives as
//! many rings as its connections need, adding one when its tables are full. The load generator
//! spreads over child processes (each under its own open-file limit) and source addresses
//! 127.0.0.x (about 28,000 ephemeral ports per address pair).

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::procs::{self, errors, num, ServerProcess};

#[derive(Debug, Clone)]
pub struct Options {
    pub conns: u64,
    /// Server workers; 0: the server's default, one per CPU it may run on.
    pub workers: usize,
    pub source_addrs: u32,
    pub procs: Option<usize>,
    pub ramp_rate: f64,
    pub sample: u64,
    /// Messages per second per sampled connection in the open-loop phase (0: none).
    pub open_rate: f64,
    pub hold_secs: f64,
    pub sample_secs: f64,
    pub server_cpus: String,
    pub load_cpus: String,
    pub load_threads: usize,
    /// Where the figures go, and the heading they go under.
    pub doc: PathBuf,
    pub label: String,
}

pub fn main(o: Options, command: &str) -> io::Result<()> {
    let bins = procs::bin_dir()?;
    let workers = if o.workers == 0 { cpus_in(&o.server_cpus) } else { o.workers };
    let per_worker = (o.conns as usize).div_ceil(workers);
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "io-uring",
        "--no-pin",
        "--idle-timeout",
        "3600",
        "--no-idle-ping",
        "--handshake-timeout",
        "60",
        // Idle connections hold no receive buffer; a small ring per worker suffices.
        "--recv-buffers",
        "1024",
        "--recv-buffer-size",
        "4096",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(
        (o.workers != 0)
            .then(|| ["--workers".to_owned(), workers.to_string()])
            .into_iter()
            .flatten(),
    )
    .collect();
    eprintln!(
        "scale: {} connections on {workers} io_uring workers (~{per_worker} each, in rings of \
         up to the open-file limit), {} source addresses",
        o.conns, o.source_addrs
    );
    let mut server = ServerProcess::start(&o.server_cpus, &bins.join("ringside"), &args)?;
    let mut load: Vec<String> = [
        "hold",
        "--url",
        &format!("ws://{}/", server.addr),
        "--conns",
        &o.conns.to_string(),
        "--source-addrs",
        &o.source_addrs.to_string(),
        "--ramp-rate",
        &o.ramp_rate.to_string(),
        "--sample",
        &o.sample.to_string(),
        "--hold-secs",
        &o.hold_secs.to_string(),
        "--sample-secs",
        &o.sample_secs.to_string(),
        "--open-rate",
        &o.open_rate.to_string(),
        "--server-pid",
        &server.pid().to_string(),
        "--threads",
        &o.load_threads.to_string(),
        "--connect-timeout",
        "30",
        "--close-timeout",
        "30",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(p) = o.procs {
        load.extend(["--procs".to_owned(), p.to_string()]);
    }
    let limit = Duration::from_secs_f64(
        o.conns as f64 / o.ramp_rate.max(1.0) * 3.0 + o.hold_secs + 2.0 * o.sample_secs + 300.0,
    );
    let report = procs::load(&bins, &o.load_cpus, &load, limit)?;
    let alive = server.alive();
    drop(server);
    let md = render(&report, &o, workers, command, alive);
    println!("{md}");
    procs::splice_doc(&o.doc, &format!("scale {}", o.label), &md)?;
    eprintln!("wrote {}", o.doc.display());
    if num(&report, "held") < o.conns as f64 || errors(&report) > 0 {
        return Err(io::Error::other(format!(
            "held {} of {} connections with {} errors",
            num(&report, "held"),
            o.conns,
            errors(&report)
        )));
    }
    Ok(())
}

fn kib(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} MiB", x / 1048576.0)
    } else {
        "-".into()
    }
}

fn render(r: &Value, o: &Options, workers: usize, command: &str, alive: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### Scale: {} connections ({})\n", o.conns, o.label);
    let _ = writeln!(
        md,
        "Machine: {}. Date: {}. One Ringside process, io_uring, {workers} worker(s) on CPU(s) \
         {} (each driving as many rings as its connections need); `ringside-load hold` on \
         CPU(s) {} over {} source addresses.\n",
        procs::machine(),
        procs::today(),
        o.server_cpus,
        o.load_cpus,
        o.source_addrs
    );
    let _ = writeln!(md, "```sh\n{command}\n```\n");
    let sock = |k: &str, f: &str| r.get(k).and_then(|s| s.get(f)).cloned().unwrap_or(Value::Null);
    let rows: Vec<(&str, String)> = vec![
        ("connections held", format!("{}", num(r, "held"))),
        ("errors (refused, reset, handshake, timeout, closed, protocol, other)", {
            let e = r.get("errors").cloned().unwrap_or(Value::Null);
            format!("{} ({e})", errors(r))
        }),
        ("ramp", format!("{:.1} s, {:.0} connections/s", num(r, "ramp_s"), num(r, "ramp_rate"))),
        (
            "server RSS before / while holding",
            format!("{} / {}", kib(num(r, "rss_before")), kib(num(r, "rss_held"))),
        ),
        ("server RSS per connection", format!("{:.0} B", num(r, "rss_per_conn"))),
        (
            "kernel: TCP sockets in use, TCP memory, MemAvailable (before / held)",
            format!(
                "{} / {} sockets; {} / {}; {} / {}",
                sock("sockstat_before", "tcp_inuse"),
                sock("sockstat_held", "tcp_inuse"),
                kib(sock("sockstat_before", "tcp_mem_bytes").as_f64().unwrap_or(f64::NAN)),
                kib(sock("sockstat_held", "tcp_mem_bytes").as_f64().unwrap_or(f64::NAN)),
                kib(sock("sockstat_before", "mem_available_bytes").as_f64().unwrap_or(f64::NAN)),
                kib(sock("sockstat_held", "mem_available_bytes").as_f64().unwrap_or(f64::NAN))
            ),
        ),
        (
            "echo, closed loop: each sampled connection keeps one message in flight",
            format!(
                "{} connections, {:.0} echoes/s: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, \
                 max {:.0} us",
                o.sample,
                num(r, "sample_latency_us.count") / o.sample_secs,
                num(r, "sample_latency_us.p50"),
                num(r, "sample_latency_us.p99"),
                num(r, "sample_latency_us.p999"),
                num(r, "sample_latency_us.max")
            ),
        ),
        (
            "echo, open loop: each sampled connection sends on a fixed schedule",
            if o.open_rate > 0.0 {
                format!(
                    "{} connections x {} messages/s ({} sent, {} echoed in the window): p50 \
                     {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us (from the scheduled \
                     send; the client sent up to {:.0} us late)",
                    o.sample,
                    o.open_rate,
                    num(r, "open_sent"),
                    num(r, "open_received"),
                    num(r, "open_latency_us.p50"),
                    num(r, "open_latency_us.p99"),
                    num(r, "open_latency_us.p999"),
                    num(r, "open_latency_us.max"),
                    num(r, "open_behind_max_us")
                )
            } else {
                "not run (--open-rate 0)".to_owned()
            },
        ),
        (
            "CPU in the closed-loop window (100% = one core)",
            format!(
                "server {:.0}% busy, its threads {:.0}% runnable but waiting for a CPU; load \
                 generator ({} processes) {:.0}% busy",
                100.0 * num(r, "server.cpu_util"),
                100.0 * num(r, "server.run_delay_util"),
                num(r, "loadgen.procs"),
                100.0 * num(r, "loadgen.cpu_util")
            ),
        ),
        (
            "clean close of all",
            format!("{} closed cleanly in {:.1} s", num(r, "closed_clean"), num(r, "close_s")),
        ),
        ("server still running at the end", alive.to_string()),
    ];
    let _ = writeln!(md, "| | |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    md.push('\n');
    md.push_str(&verdict(r, o));
    md
}

/// The ramp the scale target asks for, connections per second.
const RAMP_TARGET: f64 = 20_000.0;
/// The echo p99 the scale target asks for, microseconds.
const P99_TARGET_US: f64 = 5_000.0;

/// "Against the target": every connection held without an error, the ramp at or above
/// [`RAMP_TARGET`], and the open-loop echo p99 at or under [`P99_TARGET_US`]; the closed loop's
/// latency is set against the floor Little's law puts under it.
fn verdict(r: &Value, o: &Options) -> String {
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let held = num(r, "held");
    let errs = errors(r);
    let ramp = num(r, "ramp_rate");
    let open_p99 = num(r, "open_latency_us.p99");
    let closed_rate = num(r, "sample_latency_us.count") / o.sample_secs;
    // One message in flight per sampled connection: the mean round trip is the sample over the
    // echo rate, whatever the server does.
    let floor_ms = o.sample as f64 / closed_rate.max(1.0) * 1e3;
    let mut md = String::from("Against the target:\n\n");
    let _ = writeln!(
        md,
        "- {} connections held with {errs} errors: {}",
        held,
        mark(held >= o.conns as f64 && errs == 0)
    );
    let _ = writeln!(
        md,
        "- ramp {ramp:.0} connections/s (target at least {RAMP_TARGET:.0}): {}",
        mark(ramp >= RAMP_TARGET)
    );
    if o.open_rate > 0.0 {
        let _ = writeln!(
            md,
            "- echo p99 with {} of them active ({} messages/s each, open loop) {:.2} ms (target \
             at most {:.0} ms): {}",
            o.sample,
            o.open_rate,
            open_p99 / 1e3,
            P99_TARGET_US / 1e3,
            mark(open_p99 <= P99_TARGET_US && num(r, "open_received") > 0.0)
        );
    } else {
        md.push_str("- open-loop echo p99: not run (--open-rate 0)\n");
    }
    let _ = writeln!(
        md,
        "- closed loop (a throughput measure): p99 {:.1} ms; with one message in flight on each \
         of {} connections at {closed_rate:.0} echoes/s the mean round trip cannot be under \
         {floor_ms:.1} ms (Little's law), p50 {:.1} ms",
        num(r, "sample_latency_us.p99") / 1e3,
        o.sample,
        num(r, "sample_latency_us.p50") / 1e3
    );
    md
}

/// CPUs in a taskset list such as `0`, `0-3` or `0,2-3` (the server's default worker count when
/// it runs pinned to them); 1 when the list cannot be read.
fn cpus_in(list: &str) -> usize {
    let count: usize = list
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum();
    count.max(1)
}

#[cfg(test)]
mod tests {
    use super::{cpus_in, verdict, Options};

    fn options() -> Options {
        Options {
            conns: 200_000,
            workers: 0,
            source_addrs: 10,
            procs: None,
            ramp_rate: 25_000.0,
            sample: 1000,
            open_rate: 10.0,
            hold_secs: 5.0,
            sample_secs: 5.0,
            server_cpus: "0".into(),
            load_cpus: "1".into(),
            load_threads: 1,
            doc: "/dev/null".into(),
            label: "test".into(),
        }
    }

    #[test]
    fn the_verdict_marks_each_target_from_the_report() {
        let good = serde_json::json!({
            "held": 200000, "errors": {"refused": 0, "timeout": 0}, "ramp_rate": 24000.0,
            "open_received": 50000, "open_latency_us": {"p99": 2700.0},
            "sample_latency_us": {"count": 500000, "p50": 9800.0, "p99": 22000.0},
        });
        let v = verdict(&good, &options());
        assert_eq!(v.matches("**not met**").count(), 0, "{v}");
        assert_eq!(v.matches(": met").count(), 3, "{v}");
        // 1,000 in flight at 100,000 echoes/s: a mean round trip of at least 10 ms.
        assert!(v.contains("cannot be under 10.0 ms"), "{v}");

        let bad = serde_json::json!({
            "held": 199990, "errors": {"refused": 0, "timeout": 10}, "ramp_rate": 19900.0,
            "open_received": 50000, "open_latency_us": {"p99": 5001.0},
            "sample_latency_us": {"count": 500000, "p50": 9800.0, "p99": 22000.0},
        });
        let v = verdict(&bad, &options());
        assert_eq!(v.matches("**not met**").count(), 3, "{v}");
        // Nothing measured is not a pass.
        let v = verdict(&serde_json::json!({}), &options());
        assert_eq!(v.matches("**not met**").count(), 3, "{v}");
    }

    #[test]
    fn counts_the_cpus_of_a_taskset_list() {
        assert_eq!(cpus_in("0"), 1);
        assert_eq!(cpus_in("0-3"), 4);
        assert_eq!(cpus_in("0,2-3"), 3);
        assert_eq!(cpus_in("junk"), 1);
    }
}
