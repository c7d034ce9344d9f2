//! The report: one JSON object (the names the benchmark harness parses are fixed; see the
//! README) and a human summary built from it, errors always printed, warnings loud.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::cli::{Common, Scenario};
use crate::orchestrate::opt;
use crate::part::{Setup, Times};
use crate::plan::Plan;
use crate::stats::{latency_json, Tally};
use crate::target::Target;

/// What the parent read from /proc around the run.
#[derive(Debug, Default)]
pub struct Readings {
    pub rss_before: Option<u64>,
    pub rss_held: Option<u64>,
    pub sockstat_before: Value,
    pub sockstat_held: Value,
    pub server: Option<ServerReading>,
}

#[derive(Debug)]
pub struct ServerReading {
    pub pid: u32,
    /// CPU seconds over exactly the measured window.
    pub cpu_s: f64,
    /// Seconds its threads waited, runnable, for a CPU over the window (None: no schedstats).
    pub run_delay_s: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// A load generator thread busier than this over the window was probably the bottleneck.
const SATURATED: f64 = 0.9;

fn per(n: f64, d: f64) -> Value {
    if d > 0.0 && n.is_finite() {
        json!((n / d * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn secs(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}

pub fn build(
    scenario: &Scenario,
    target: &Target,
    plan: &Plan,
    t: &Tally,
    times: &Times,
    setup: &Setup,
    r: &Readings,
) -> Value {
    let window = secs(times.t0, times.t1);
    let messages = t.messages as f64;
    let (inflight, size) = match scenario {
        Scenario::Echo(a) => (json!(a.inflight), json!(a.size)),
        Scenario::Rate(a) => (Value::Null, json!(a.size)),
        Scenario::Connect(_) => (Value::Null, Value::Null),
        Scenario::Hold(a) => (json!(1), json!(a.size)),
        Scenario::Fanout(a) => (Value::Null, json!(a.size)),
    };
    let mut warnings: Vec<String> = Vec::new();
    let threads = t.threads.max(1);
    let util = t.cpu_s / window;
    if util / threads as f64 > SATURATED {
        warnings.push(format!(
            "the load generator's {threads} thread(s) were {:.0}% busy over the window: it was \
             probably the limit, not the server (give it more --threads/--procs on free cores)",
            100.0 * util / threads as f64
        ));
    }
    if t.errors.total() > 0 {
        warnings.push(format!("{} errors (see `errors`)", t.errors.total()));
    }
    let server = r.server.as_ref().map(|s| {
        let mut v = json!({
            "pid": s.pid,
            "cpu_s": (s.cpu_s * 1000.0).round() / 1000.0,
            "cpu_us_per_msg": per(s.cpu_s * 1e6, messages),
            "cpu_util": per(s.cpu_s, window),
            "run_delay_util": s.run_delay_s.map_or(Value::Null, |d| per(d, window)),
            "rss_bytes": opt(s.rss_bytes),
        });
        if matches!(scenario, Scenario::Fanout(_)) {
            v["cpu_us_per_delivery"] = per(s.cpu_s * 1e6, messages);
        }
        v
    });
    let mut out = json!({
        "scenario": scenario.name(),
        "target": format!("ws://{}{}", target.addr, target.path),
        "conns": scenario.sockets(),
        "inflight": inflight,
        "size": size,
        "duration_s": window,
        "messages": t.messages,
        "msgs_per_s": per(messages, window),
        "mb_per_s": per(t.bytes as f64 / 1e6, window),
        "mb_per_s_basis": "payload bytes received, one direction (double it for both ways)",
        "latency_us": latency_json(&t.latency),
        "errors": t.errors,
        "server": server,
        "loadgen": {
            "cpu_s": (t.cpu_s * 1000.0).round() / 1000.0,
            "cpu_util": per(t.cpu_s, window),
            "cpu_util_per_thread": per(t.cpu_s, window * threads as f64),
            "cpu_us_per_msg": per(t.cpu_s * 1e6, messages),
            "threads": t.threads,
            "procs": plan.parts.len(),
            "source_addrs": plan.source_addrs.len(),
        },
        "setup": {
            "opened": setup.opened,
            "failed": setup.failed,
            "ramp_s": secs(setup.ramp_start_ns, setup.ramp_end_ns),
        },
        "close": {
            "clean": t.close_clean,
            "unclean": t.close_unclean,
            "close_s": secs(t.close_start_ns, t.close_end_ns),
        },
    });
    let o = out.as_object_mut().expect("an object");
    match scenario {
        Scenario::Echo(_) => {}
        Scenario::Rate(a) => {
            let achieved = t.sent as f64 / window;
            let behind_us = t.max_behind_ns as f64 / 1e3;
            let p99_us = t.behind.value_at_quantile(0.99) as f64 / 1e3;
            // Kept up: the rate was met and 99% of sends left within 1 ms of their time. The
            // latency is measured from the intended time either way, so lateness is never
            // hidden; this only says whether the schedule itself held.
            let kept_up = achieved >= 0.99 * a.rate && p99_us < 1000.0 && t.dropped_sends == 0;
            if !kept_up {
                warnings.push(format!(
                    "THE SENDER DID NOT KEEP UP: {achieved:.0} of {} msg/s sent, 1% of sends \
                     over {:.2} ms late (worst {:.1} ms), {} sends dropped on backlogged \
                     connections",
                    a.rate,
                    p99_us / 1e3,
                    behind_us / 1e3,
                    t.dropped_sends
                ));
            } else if behind_us >= 1000.0 {
                warnings.push(format!(
                    "the sender kept its schedule but some sends went out up to {:.1} ms late \
                     (a scheduling hiccup on the load generator's core?)",
                    behind_us / 1e3
                ));
            }
            o.insert("target_rate".into(), json!(a.rate));
            o.insert("achieved_rate".into(), per(t.sent as f64, window));
            o.insert("max_behind_us".into(), json!(behind_us));
            o.insert("behind_us".into(), latency_json(&t.behind));
            o.insert("dropped_sends".into(), json!(t.dropped_sends));
            o.insert("kept_up".into(), json!(kept_up));
        }
        Scenario::Connect(_) => {
            o.insert("handshakes".into(), json!(t.handshakes));
            o.insert("handshakes_per_s".into(), per(t.handshakes as f64, window));
            o.insert("connect_latency_us".into(), latency_json(&t.latency));
            o.insert("cycles".into(), json!(t.cycles));
            o.insert("cycles_per_s".into(), per(t.cycles as f64, window));
            if let Some(s) = o.get_mut("server").and_then(Value::as_object_mut) {
                s.insert(
                    "cpu_us_per_handshake".into(),
                    per(r.server_cpu() * 1e6, t.handshakes as f64),
                );
            }
        }
        Scenario::Hold(a) => {
            let held = setup.opened;
            let ramp_s = secs(setup.ramp_start_ns, setup.ramp_end_ns);
            let rss_per_conn = match (r.rss_before, r.rss_held) {
                (Some(b), Some(h)) if held > 0 => json!((h as f64 - b as f64) / held as f64),
                _ => Value::Null,
            };
            if held < a.conns {
                warnings.push(format!("only {held} of {} connections opened", a.conns));
            }
            o.insert("held".into(), json!(held));
            o.insert("ramp_s".into(), json!(ramp_s));
            o.insert("ramp_rate".into(), per(held as f64, ramp_s));
            o.insert("rss_before".into(), opt(r.rss_before));
            o.insert("rss_held".into(), opt(r.rss_held));
            o.insert("rss_per_conn".into(), rss_per_conn);
            o.insert("sockstat_before".into(), r.sockstat_before.clone());
            o.insert("sockstat_held".into(), r.sockstat_held.clone());
            o.insert("sample".into(), json!(a.sample.min(a.conns)));
            o.insert("sample_latency_us".into(), latency_json(&t.latency));
            o.insert("open_rate".into(), json!(a.open_rate));
            o.insert("open_sent".into(), json!(t.open_sent));
            o.insert("open_received".into(), json!(t.open_received));
            o.insert("open_latency_us".into(), latency_json(&t.open_latency));
            o.insert("open_behind_max_us".into(), json!(t.max_behind_ns as f64 / 1e3));
            o.insert("close_s".into(), json!(secs(t.close_start_ns, t.close_end_ns)));
            o.insert("closed_clean".into(), json!(t.close_clean));
            o.insert("closed_unclean".into(), json!(t.close_unclean));
            o.insert("pings".into(), json!(t.pings));
            o.insert("pongs".into(), json!(t.pongs));
        }
        Scenario::Fanout(a) => {
            let undelivered = t.expected.saturating_sub(t.messages);
            if undelivered > 0 || t.lost > 0 || t.reordered > 0 || t.duplicates > 0 {
                warnings.push(format!(
                    "deliveries missing or out of order: {undelivered} undelivered of {} \
                     expected, {} lost (gaps), {} reordered, {} duplicates",
                    t.expected, t.lost, t.reordered, t.duplicates
                ));
            }
            o.insert("subscribers".into(), json!(a.subscribers));
            o.insert("topics".into(), json!(a.topics));
            o.insert("publishers".into(), json!(a.publishers));
            o.insert("target_rate".into(), json!(a.rate));
            o.insert("publishes".into(), json!(t.publishes));
            o.insert("publishes_per_s".into(), per(t.publishes as f64, window));
            o.insert("deliveries".into(), json!(t.messages));
            o.insert("expected_deliveries".into(), json!(t.expected));
            o.insert("undelivered".into(), json!(undelivered));
            o.insert("deliveries_per_s".into(), per(messages, window));
            o.insert("lost".into(), json!(t.lost));
            o.insert("reordered".into(), json!(t.reordered));
            o.insert("duplicates".into(), json!(t.duplicates));
            o.insert("max_behind_us".into(), json!(t.max_behind_ns as f64 / 1e3));
            o.insert("behind_us".into(), latency_json(&t.behind));
            let per_msg = |b: u64| {
                if t.messages > 0 {
                    json!(b as f64 / t.messages as f64)
                } else {
                    Value::Null
                }
            };
            o.insert("payload_bytes_per_msg".into(), per_msg(t.bytes));
            o.insert("wire_bytes_per_msg".into(), per_msg(t.wire_bytes));
            o.insert("deflate".into(), json!(a.common.deflate));
        }
    }
    o.insert("warnings".into(), json!(warnings));
    out
}

impl Readings {
    fn server_cpu(&self) -> f64 {
        self.server.as_ref().map_or(0.0, |s| s.cpu_s)
    }
}

/// The human summary.
pub fn summary(v: &Value) -> String {
    let mut s = String::new();
    let f = |x: &Value| x.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let n = |x: &Value| x.as_u64().map_or("-".to_string(), |x| x.to_string());
    let lat = |s: &mut String, name: &str, l: &Value| {
        let _ = writeln!(
            s,
            "{name} (us): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  ({} samples)",
            f(&l["p50"]),
            f(&l["p90"]),
            f(&l["p99"]),
            f(&l["p999"]),
            f(&l["max"]),
            f(&l["mean"]),
            n(&l["count"])
        );
    };
    let lg = &v["loadgen"];
    let _ = writeln!(
        s,
        "ringside-load {} -> {}: {} connections, {} proc(s) x {} thread(s), {} source address(es)",
        v["scenario"].as_str().unwrap_or("?"),
        v["target"].as_str().unwrap_or("?"),
        n(&v["conns"]),
        n(&lg["procs"]),
        (lg["threads"].as_u64().unwrap_or(0)) / lg["procs"].as_u64().unwrap_or(1).max(1),
        n(&lg["source_addrs"]),
    );
    let _ = writeln!(
        s,
        "window {:.2} s: {} messages, {} msg/s, {} MB/s (payload received, one direction)",
        v["duration_s"].as_f64().unwrap_or(0.0),
        n(&v["messages"]),
        f(&v["msgs_per_s"]),
        f(&v["mb_per_s"]),
    );
    match v["scenario"].as_str() {
        Some("rate") => {
            let _ = writeln!(
                s,
                "rate: target {} msg/s, achieved {} msg/s; sends late by p50 {} p99 {} max {} us; \
                 {} dropped",
                f(&v["target_rate"]),
                f(&v["achieved_rate"]),
                f(&v["behind_us"]["p50"]),
                f(&v["behind_us"]["p99"]),
                f(&v["max_behind_us"]),
                n(&v["dropped_sends"])
            );
        }
        Some("connect") => {
            let _ = writeln!(
                s,
                "connect: {} handshakes ({} /s), {} full cycles ({} /s)",
                n(&v["handshakes"]),
                f(&v["handshakes_per_s"]),
                n(&v["cycles"]),
                f(&v["cycles_per_s"])
            );
        }
        Some("hold") => {
            let _ = writeln!(
                s,
                "hold: {} held, ramp {:.2} s ({} conn/s); server RSS {} -> {} bytes ({} B per \
                 connection); pings {} pongs {}",
                n(&v["held"]),
                v["ramp_s"].as_f64().unwrap_or(0.0),
                f(&v["ramp_rate"]),
                n(&v["rss_before"]),
                n(&v["rss_held"]),
                f(&v["rss_per_conn"]),
                n(&v["pings"]),
                n(&v["pongs"])
            );
            let k = |w: &str, key: &str| n(&v[w][key]);
            let _ = writeln!(
                s,
                "kernel: TCP inuse {} -> {}, TCP mem {} -> {} bytes, MemAvailable {} -> {} bytes",
                k("sockstat_before", "tcp_inuse"),
                k("sockstat_held", "tcp_inuse"),
                k("sockstat_before", "tcp_mem_bytes"),
                k("sockstat_held", "tcp_mem_bytes"),
                k("sockstat_before", "mem_available_bytes"),
                k("sockstat_held", "mem_available_bytes")
            );
        }
        Some("fanout") => {
            let _ = writeln!(
                s,
                "fanout: {} publishes ({} /s), {} of {} expected deliveries ({} /s), lost {}, \
                 reordered {}, duplicates {}",
                n(&v["publishes"]),
                f(&v["publishes_per_s"]),
                n(&v["deliveries"]),
                n(&v["expected_deliveries"]),
                f(&v["deliveries_per_s"]),
                n(&v["lost"]),
                n(&v["reordered"]),
                n(&v["duplicates"])
            );
            let _ = writeln!(
                s,
                "fanout: {} payload bytes per delivery, {} bytes on the wire (headers included{})",
                f(&v["payload_bytes_per_msg"]),
                f(&v["wire_bytes_per_msg"]),
                if v["deflate"] == json!(true) { ", permessage-deflate offered" } else { "" }
            );
        }
        _ => {}
    }
    let name = match v["scenario"].as_str() {
        Some("connect") => "connect latency",
        Some("hold") => "sample latency",
        Some("fanout") => "publish-to-delivery latency",
        Some("rate") => "latency from intended send",
        _ => "latency",
    };
    lat(&mut s, name, &v["latency_us"]);
    if v["open_latency_us"]["count"].as_u64().unwrap_or(0) > 0 {
        lat(&mut s, "open-loop sample latency", &v["open_latency_us"]);
    }
    if let Some(sv) = v["server"].as_object() {
        let _ = writeln!(
            s,
            "server pid {}: {} CPU s in the window ({} cores), {} us CPU per {}{}, RSS {} bytes",
            n(&sv["pid"]),
            f(&sv["cpu_s"]),
            sv["cpu_util"].as_f64().map_or("-".into(), |x| format!("{x:.2}")),
            sv["cpu_us_per_msg"].as_f64().map_or("-".into(), |x| format!("{x:.3}")),
            if v["scenario"] == "connect" { "handshake" } else { "message" },
            sv.get("cpu_us_per_delivery").map_or(String::new(), |x| format!(
                " ({} per delivery)",
                x.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
            )),
            n(&sv["rss_bytes"])
        );
    } else {
        let _ = writeln!(s, "server: not measured (pass --server-pid)");
    }
    let _ = writeln!(
        s,
        "load generator: {} CPU s in the window ({} cores, {} per thread), {} us CPU per message",
        f(&lg["cpu_s"]),
        lg["cpu_util"].as_f64().map_or("-".into(), |x| format!("{x:.2}")),
        lg["cpu_util_per_thread"].as_f64().map_or("-".into(), |x| format!("{x:.2}")),
        lg["cpu_us_per_msg"].as_f64().map_or("-".into(), |x| format!("{x:.3}")),
    );
    let _ = writeln!(
        s,
        "setup: {} opened, {} failed, {:.2} s; close: {} clean, {} unclean, {:.2} s",
        n(&v["setup"]["opened"]),
        n(&v["setup"]["failed"]),
        v["setup"]["ramp_s"].as_f64().unwrap_or(0.0),
        n(&v["close"]["clean"]),
        n(&v["close"]["unclean"]),
        v["close"]["close_s"].as_f64().unwrap_or(0.0),
    );
    let e = &v["errors"];
    let _ = writeln!(
        s,
        "errors: refused {}  reset {}  handshake {}  timeout {}  closed {}  protocol {}  \
         addr_not_available {}  other {}",
        n(&e["refused"]),
        n(&e["reset"]),
        n(&e["handshake"]),
        n(&e["timeout"]),
        n(&e["closed"]),
        n(&e["protocol"]),
        n(&e["addr_not_available"]),
        n(&e["other"]),
    );
    if let Some(codes) = e["close_codes"].as_object().filter(|c| !c.is_empty()) {
        let list: Vec<String> = codes.iter().map(|(k, c)| format!("{k}: {c}")).collect();
        let _ = writeln!(s, "  unexpected close codes: {}", list.join(", "));
    }
    for sample in e["samples"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "  e.g. {}", sample.as_str().unwrap_or(""));
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "WARNING: {}", w.as_str().unwrap_or(""));
    }
    s
}

/// Prints the summary (stdout, or stderr when the JSON goes to stdout) and writes the JSON.
pub fn emit(report: &Value, common: &Common) -> Result<(), String> {
    let text = summary(report);
    let json = serde_json::to_string_pretty(report).expect("reports serialize");
    match common.json.as_deref() {
        Some("-") => {
            eprint!("{text}");
            println!("{json}");
        }
        Some(path) => {
            print!("{text}");
            std::fs::write(path, json + "\n")
                .map_err(|e| format!("cannot write the JSON report to {path}: {e}"))?;
        }
        None => print!("{text}"),
    }
    Ok(())
}
