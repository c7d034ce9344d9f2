//! `ringside-bench compression`: permessage-deflate on a market-data stream. One publisher sends
//! JSON quotes (about 150 bytes, a few hundred symbols: `ringside-load fanout --ticks`) on one
//! topic to N subscribers that offer permessage-deflate as browsers do; Ringside's broadcast app
//! serves them with compression off, shared and dedicated. Per mode: deliveries per second and
//! server CPU per delivery at a fixed publish rate and at saturation, payload and wire bytes per
//! delivery (the compression ratio), and server RSS per connection.
//!
//! With `--uws-src` (uWebSockets' sources, built into `uws-broadcast` by
//! `bench/peers/uws/build.sh`) or `--uws PATH` (a prebuilt one), a uWebSockets build of the
//! same protocol runs too, with its SHARED_COMPRESSOR, twice: publishing with
//! `App::publish(.., compress = true)` (compressed per subscriber) and with
//! `Loop::prepareMessage` + `App::publishPrepared` (compressed once per publish).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::procs::{self, errors, num, ServerProcess};

#[derive(Debug, Clone)]
pub struct Options {
    pub subscribers: u64,
    pub symbols: u32,
    /// Publishes per second in the fixed-rate run.
    pub rate: f64,
    pub secs: f64,
    /// Publishes in flight at saturation.
    pub window: u64,
    pub server_cpus: String,
    pub load_cpus: String,
    pub load_threads: usize,
    /// A uWebSockets pub/sub server binary to compare with (SHARED_COMPRESSOR), or why there
    /// is none.
    pub uws: Result<PathBuf, String>,
    pub doc: PathBuf,
}

struct Contender {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
}

fn contenders(bins: &Path, o: &Options) -> Vec<Contender> {
    let ringside = |mode: &str| Contender {
        name: format!("ringside io_uring, deflate {mode}"),
        bin: bins.join("ringside"),
        args: [
            "--listen",
            "127.0.0.1:0",
            "--app",
            "broadcast",
            "--backend",
            "io-uring",
            "--workers",
            "1",
            "--no-pin",
            "--idle-timeout",
            "3600",
            "--no-idle-ping",
            "--deflate",
            mode,
            // Room for every subscriber's compressor: the budget is not what this measures.
            "--deflate-memory",
            "4294967296",
        ]
        .map(String::from)
        .to_vec(),
    };
    let mut all = vec![ringside("off"), ringside("shared"), ringside("dedicated")];
    if let Ok(uws) = &o.uws {
        all.push(Contender {
            name: "uWebSockets SHARED_COMPRESSOR, publish".into(),
            bin: uws.clone(),
            args: vec!["0".into()],
        });
        all.push(Contender {
            name: "uWebSockets SHARED_COMPRESSOR, prepareMessage + publishPrepared".into(),
            bin: uws.clone(),
            args: vec!["0".into(), "prepared".into()],
        });
    }
    all
}

/// One run: a fresh server, `ringside-load fanout` against it; the report and the server's
/// RSS before any connection.
fn run_one(bins: &Path, c: &Contender, o: &Options, rate: f64) -> io::Result<(Value, u64)> {
    let mut server = ServerProcess::start(&o.server_cpus, &c.bin, &c.args)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = procs::rss(server.pid())?;
    let args: Vec<String> = [
        "fanout",
        "--url",
        &format!("ws://{}/", server.addr),
        "--subscribers",
        &o.subscribers.to_string(),
        "--topics",
        "1",
        "--publishers",
        "1",
        "--rate",
        &rate.to_string(),
        "--window",
        &o.window.to_string(),
        "--size",
        "48",
        "--ticks",
        &o.symbols.to_string(),
        "--deflate",
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
    Ok((report, rss0))
}

pub fn main(o: Options, command: &str) -> io::Result<()> {
    let bins = procs::bin_dir()?;
    let cs = contenders(&bins, &o);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for c in &cs {
        let mut row = Vec::new();
        for (what, rate) in [("fixed rate", o.rate), ("saturation", 0.0)] {
            match run_one(&bins, c, &o, rate) {
                Ok((r, rss0)) => {
                    eprintln!(
                        "  {:<36} {what}: {:>9.0} deliveries/s, {:.3} us server CPU per \
                         delivery, {:.1} -> {:.1} bytes per delivery, {} errors",
                        c.name,
                        num(&r, "deliveries_per_s"),
                        num(&r, "server.cpu_us_per_delivery"),
                        num(&r, "payload_bytes_per_msg"),
                        num(&r, "wire_bytes_per_msg"),
                        errors(&r)
                    );
                    row.push(Some((r, rss0)));
                }
                Err(e) => {
                    eprintln!("  {} {what} FAILED: {e}", c.name);
                    failures.push(format!("{} ({what}): {e}", c.name));
                    row.push(None);
                }
            }
        }
        rows.push(row);
    }
    let mut md = String::new();
    let _ = writeln!(md, "## Compression\n");
    let _ = writeln!(
        md,
        "Machine: {}. Date: {}. One run of {} s per cell. The server on CPU(s) {} (one worker), \
         `ringside-load fanout --ticks {} --deflate` on CPU(s) {} ({} thread(s)): one \
         publisher sends JSON quotes (about 150 bytes, {} symbols, prices walking) on one topic \
         to {} subscribers, each offering `permessage-deflate; client_max_window_bits` as \
         browsers do and inflating what comes compressed. The fixed-rate run publishes {}/s \
         ({} deliveries/s); saturation keeps {} publishes in flight. Bytes per delivery are \
         payload bytes and, on the wire, frame header plus (compressed) payload. RSS per \
         connection: the server's RSS at the end of the measured window less its RSS before any \
         connection, over the {} connections.\n",
        procs::machine(),
        procs::today(),
        o.secs,
        o.server_cpus,
        o.symbols,
        o.load_cpus,
        o.load_threads,
        o.symbols,
        o.subscribers,
        o.rate,
        o.rate * o.subscribers as f64,
        o.window,
        o.subscribers + 1,
    );
    let _ = writeln!(md, "```sh\n{command}\n```\n");
    if let Err(why) = &o.uws {
        let _ = writeln!(md, "uWebSockets is not in this run: {why}.\n");
    }
    let _ = writeln!(
        md,
        "| server | deliveries/s (fixed) | server CPU µs / delivery (fixed) | p50 / p99 latency \
         (µs, fixed) | deliveries/s (saturation) | server CPU µs / delivery (saturation) | \
         server / load generator busy (saturation) | payload B / delivery | wire B / delivery | \
         ratio | RSS / connection |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (c, row) in cs.iter().zip(&rows) {
        let get = |i: usize, path: &str| row[i].as_ref().map_or(f64::NAN, |(r, _)| num(r, path));
        let rss = row[0].as_ref().map_or(f64::NAN, |(r, rss0)| {
            (num(r, "server.rss_bytes") - *rss0 as f64) / (o.subscribers + 1) as f64
        });
        let payload = get(0, "payload_bytes_per_msg");
        let wire = get(0, "wire_bytes_per_msg");
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.3} | {:.0} / {:.0} | {:.0} | {:.3} | {:.0}% / {:.0}% | {:.1} | \
             {:.1} | {:.2} | {:.0} B |",
            c.name,
            get(0, "deliveries_per_s"),
            get(0, "server.cpu_us_per_delivery"),
            get(0, "latency_us.p50"),
            get(0, "latency_us.p99"),
            get(1, "deliveries_per_s"),
            get(1, "server.cpu_us_per_delivery"),
            100.0 * get(1, "server.cpu_util"),
            100.0 * get(1, "loadgen.cpu_util"),
            payload,
            wire,
            payload / wire,
            rss,
        );
    }
    let errors: Vec<String> = cs
        .iter()
        .zip(&rows)
        .flat_map(|(c, row)| {
            row.iter().flatten().filter(|(r, _)| errors(r) > 0 || num(r, "lost") > 0.0).map(
                move |(r, _)| {
                    format!(
                        "{}: {} errors, {} lost, warnings {}",
                        c.name,
                        errors(r),
                        num(r, "lost"),
                        r["warnings"]
                    )
                },
            )
        })
        .collect();
    if !errors.is_empty() || !failures.is_empty() {
        let _ = writeln!(md, "\nErrors and failed runs:\n");
        for f in errors.iter().chain(&failures) {
            let _ = writeln!(md, "- {f}");
        }
    }
    println!("{md}");
    procs::splice_doc(&o.doc, "compression", &md)?;
    eprintln!("wrote {}", o.doc.display());
    Ok(())
}
