//! The real binary against real servers started in this process (a Ringside echo server, a
//! small pub/sub server on the Ringside API, a raw TCP echo, servers that refuse): each
//! scenario runs for about a second and its JSON report is checked. Every run is bounded.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringside::{
    Backend, Handler, Message, Server, ServerHandle, Upgrade, Upgrading, WebSocket, Workers,
};
use ringside_proto::handshake::{parse_request, validate, HandshakeConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ringside-load");

/// A server for one test, shut down on drop.
struct Running {
    addr: SocketAddr,
    handle: Option<ServerHandle>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown();
        }
    }
}

fn serve<H: Handler, F: Fn() -> H + Send + Sync + 'static>(factory: F) -> Running {
    serve_with(factory, |b| b)
}

fn serve_with<H: Handler, F: Fn() -> H + Send + Sync + 'static>(
    factory: F,
    configure: impl FnOnce(ringside::Builder) -> ringside::Builder,
) -> Running {
    let running = configure(Server::builder())
        .bind("127.0.0.1:0")
        .unwrap()
        .workers(Workers::Count(1))
        .pin(false)
        .backend(Backend::Epoll)
        .shutdown_timeout(Duration::from_secs(2))
        .build(factory)
        .expect("server builds");
    let addr = running.local_addr();
    Running { addr, handle: Some(running.spawn().expect("server starts")) }
}

struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

/// The fan-out protocol on one topic: with every client subscribed to the same topic,
/// broadcasting to every connection is delivering to every subscriber.
struct PubSub;

impl Handler for PubSub {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            let _ = ws.send_text("error binary");
            return;
        };
        if let Some(topic) = text.strip_prefix("sub ") {
            let _ = ws.send_text(&format!("ok sub {topic}"));
        } else if let Some(rest) = text.strip_prefix("pub ") {
            match rest.split_once(' ') {
                Some((_topic, payload)) => ws.broadcast(Message::Text(payload)),
                None => {
                    let _ = ws.send_text("error pub takes a topic and a payload");
                }
            }
        } else {
            let _ = ws.send_text("error unknown command");
        }
    }
}

/// Refuses every upgrade with 403.
struct Refuse;

impl Handler for Refuse {
    type Conn = ();
    fn on_upgrade(&mut self, _request: &Upgrading<'_>) -> Upgrade<()> {
        Upgrade::Reject(403)
    }
    fn on_message(&mut self, _ws: &mut WebSocket<'_>, _msg: Message<'_>) {}
}

/// A raw echo (answers the upgrade, then returns our masked frames verbatim), one thread per
/// connection.
fn raw_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 << 10];
                let mut head = Vec::new();
                let cfg = HandshakeConfig::default();
                let rest = loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    if let Ok(Some(req)) = parse_request(&head, &cfg) {
                        let mut response = Vec::new();
                        validate(&req, &cfg).unwrap().write_response(None, &mut response);
                        if s.write_all(&response).is_err() {
                            return;
                        }
                        break head[req.head_len()..].to_vec();
                    }
                };
                if s.write_all(&rest).is_err() {
                    return;
                }
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

struct Outcome {
    ok: bool,
    report: Value,
    stderr: String,
}

/// Runs the binary with `args`, `--json` and `--quiet`, killing it past `limit`.
fn load(args: &[&str], limit: Duration) -> Outcome {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir();
    let json = dir.join(format!("ringside-load-{}-{n}.json", std::process::id()));
    let err = dir.join(format!("ringside-load-{}-{n}.err", std::process::id()));
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("the binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&err);
    Outcome { ok: status.success(), report, stderr }
}

fn run_ok(args: &[&str]) -> Value {
    let out = load(args, Duration::from_secs(9));
    assert!(out.ok, "{args:?} failed: {}", out.stderr);
    assert!(out.report.is_object(), "no JSON report: {}", out.stderr);
    out.report
}

const ERROR_KINDS: [&str; 8] = [
    "refused",
    "reset",
    "handshake",
    "timeout",
    "closed",
    "protocol",
    "other",
    "addr_not_available",
];

fn assert_no_errors(r: &Value) {
    for kind in ERROR_KINDS {
        assert_eq!(r["errors"][kind], 0, "{kind} errors: {}", r["errors"]);
    }
}

fn assert_ordered(l: &Value) {
    let v: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| l[*k].as_f64().unwrap_or_else(|| panic!("{k} missing in {l}")))
        .collect();
    assert!(v[0] > 0.0, "{l}");
    assert!(v.windows(2).all(|w| w[0] <= w[1]), "percentiles out of order: {l}");
    assert!(l["mean"].as_f64().unwrap() > 0.0);
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

#[test]
fn echo_counts_replies_and_measures_both_sides() {
    let server = serve(|| Echo);
    let pid = std::process::id().to_string();
    let u = url(server.addr);
    let r = run_ok(&[
        "echo",
        "--url",
        &u,
        "--conns",
        "20",
        "--inflight",
        "2",
        "--size",
        "300",
        "--warmup",
        "0.3",
        "--duration",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["scenario"], "echo");
    assert_eq!((r["conns"].as_u64(), r["inflight"].as_u64()), (Some(20), Some(2)));
    assert!(r["messages"].as_u64().unwrap() > 100, "{r}");
    assert!(r["msgs_per_s"].as_f64().unwrap() > 100.0);
    let mb = r["mb_per_s"].as_f64().unwrap();
    let expect = r["msgs_per_s"].as_f64().unwrap() * 300.0 / 1e6;
    assert!((mb - expect).abs() <= 0.01 * expect + 0.001, "{mb} vs {expect}");
    assert_ordered(&r["latency_us"]);
    assert_no_errors(&r);
    assert_eq!(r["close"]["clean"], 20);
    assert!(r["server"]["cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{}", r["server"]);
    assert!(r["server"]["rss_bytes"].as_u64().unwrap() > 0);
    assert!(r["loadgen"]["cpu_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (r["loadgen"]["threads"].as_u64(), r["loadgen"]["procs"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn rate_keeps_to_its_schedule_over_threads() {
    let server = serve(|| Echo);
    let u = url(server.addr);
    let r = run_ok(&[
        "rate",
        "--url",
        &u,
        "--conns",
        "10",
        "--rate",
        "1000",
        "--threads",
        "2",
        "--warmup",
        "0.3",
        "--duration",
        "1",
    ]);
    let achieved = r["achieved_rate"].as_f64().unwrap();
    assert!((achieved - 1000.0).abs() < 50.0, "achieved {achieved}: {r}");
    let messages = r["messages"].as_u64().unwrap();
    assert!((900..=1100).contains(&messages), "{messages} replies in 1 s at 1000/s");
    assert_eq!(r["target_rate"], 1000.0);
    assert!(r["max_behind_us"].as_f64().is_some());
    assert!(r["behind_us"]["p50"].as_f64().is_some(), "{}", r["behind_us"]);
    assert!(r["kept_up"].is_boolean());
    assert_ordered(&r["latency_us"]);
    assert_no_errors(&r);
    assert_eq!(r["loadgen"]["threads"], 2);
}

#[test]
fn connect_loops_connect_upgrade_close() {
    let server = serve(|| Echo);
    let u = url(server.addr);
    let r = run_ok(&[
        "connect",
        "--url",
        &u,
        "--concurrency",
        "4",
        "--warmup",
        "0.2",
        "--duration",
        "1",
    ]);
    assert!(r["handshakes"].as_u64().unwrap() > 10, "{r}");
    assert!(r["handshakes_per_s"].as_f64().unwrap() > 10.0);
    assert!(r["cycles"].as_u64().unwrap() > 10);
    assert_ordered(&r["connect_latency_us"]);
    assert_no_errors(&r);
    assert_eq!(r["loadgen"]["source_addrs"], 16);
}

#[test]
fn hold_spreads_over_processes_and_source_addresses() {
    let server = serve(|| Echo);
    let pid = std::process::id().to_string();
    let u = url(server.addr);
    let r = run_ok(&[
        "hold",
        "--url",
        &u,
        "--conns",
        "300",
        "--procs",
        "2",
        "--source-addrs",
        "2",
        "--hold-secs",
        "0.5",
        "--ping-interval",
        "0.2",
        "--sample",
        "20",
        "--sample-secs",
        "0.7",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["held"], 300, "{r}");
    assert_eq!(
        (r["loadgen"]["procs"].as_u64(), r["loadgen"]["source_addrs"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(r["closed_clean"], 300);
    assert!(r["pings"].as_u64().unwrap() >= 300, "{r}");
    assert_eq!(r["pings"], r["pongs"]);
    assert!(r["messages"].as_u64().unwrap() > 20);
    assert_ordered(&r["sample_latency_us"]);
    assert!(r["rss_before"].as_u64().is_some() && r["rss_held"].as_u64().is_some());
    assert!(r["sockstat_held"]["tcp_inuse"].as_u64().unwrap() >= 600, "{}", r["sockstat_held"]);
    assert!(r["ramp_rate"].as_f64().unwrap() > 0.0);
    assert_no_errors(&r);
}

#[test]
fn fanout_delivers_every_publish_in_order_across_processes() {
    let server = serve(|| PubSub);
    let pid = std::process::id().to_string();
    let u = url(server.addr);
    let r = run_ok(&[
        "fanout",
        "--url",
        &u,
        "--subscribers",
        "30",
        "--topics",
        "1",
        "--publishers",
        "1",
        "--rate",
        "0",
        "--window",
        "8",
        "--procs",
        "2",
        "--warmup",
        "0.3",
        "--duration",
        "1",
        "--drain-secs",
        "0.5",
        "--server-pid",
        &pid,
    ]);
    let deliveries = r["deliveries"].as_u64().unwrap();
    assert!(r["publishes"].as_u64().unwrap() > 10, "{r}");
    // 30 subscribers and the publisher itself (saturation mode) on the one topic.
    assert_eq!(r["expected_deliveries"].as_u64().unwrap(), 31 * r["publishes"].as_u64().unwrap());
    assert_eq!(deliveries, r["expected_deliveries"].as_u64().unwrap(), "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["reordered"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0), Some(0))
    );
    assert_ordered(&r["latency_us"]);
    assert!(r["server"]["cpu_us_per_delivery"].as_f64().is_some());
    assert_no_errors(&r);
}

#[test]
fn fanout_inflates_compressed_deliveries_and_counts_wire_bytes() {
    for mode in [ringside::Compression::Shared, ringside::Compression::Dedicated] {
        let server = serve_with(|| PubSub, |b| b.deflate(mode));
        let pid = std::process::id().to_string();
        let u = url(server.addr);
        let args = [
            "fanout",
            "--url",
            &u,
            "--subscribers",
            "20",
            "--rate",
            "0",
            "--window",
            "4",
            "--size",
            "300",
            "--warmup",
            "0.2",
            "--duration",
            "0.6",
            "--drain-secs",
            "0.5",
            "--server-pid",
            &pid,
            "--deflate",
        ];
        let r = run_ok(&args);
        assert!(r["publishes"].as_u64().unwrap() > 5, "{mode:?}: {r}");
        assert_eq!(r["deliveries"], r["expected_deliveries"], "{mode:?}: {r}");
        assert_eq!(r["lost"].as_u64(), Some(0), "{mode:?}: {r}");
        let payload = r["payload_bytes_per_msg"].as_f64().unwrap();
        let wire = r["wire_bytes_per_msg"].as_f64().unwrap();
        assert!(payload >= 300.0, "{mode:?}: {r}");
        // The padding compresses: the frames are much smaller than their payloads.
        assert!(wire < payload / 2.0, "{mode:?}: wire {wire} for {payload} of payload");
        assert_no_errors(&r);
    }
    // Without --deflate nothing is compressed, the frame header is all that is added.
    let server = serve_with(|| PubSub, |b| b.deflate(ringside::Compression::Shared));
    let u = url(server.addr);
    let r = run_ok(&[
        "fanout",
        "--url",
        &u,
        "--subscribers",
        "5",
        "--rate",
        "0",
        "--window",
        "4",
        "--size",
        "300",
        "--warmup",
        "0.2",
        "--duration",
        "0.4",
        "--drain-secs",
        "0.3",
    ]);
    let payload = r["payload_bytes_per_msg"].as_f64().unwrap();
    assert_eq!(r["wire_bytes_per_msg"].as_f64().unwrap(), payload + 4.0, "{r}");
}

#[test]
fn raw_echo_mode_reads_our_own_masked_frames() {
    let addr = raw_echo();
    let u = url(addr);
    let r = run_ok(&[
        "echo",
        "--url",
        &u,
        "--raw-echo",
        "--conns",
        "5",
        "--inflight",
        "4",
        "--size",
        "70000",
        "--warmup",
        "0.2",
        "--duration",
        "0.6",
    ]);
    assert!(r["messages"].as_u64().unwrap() > 10, "{r}");
    assert_ordered(&r["latency_us"]);
    assert_no_errors(&r);
    // Without --raw-echo the echoed masked frames are protocol errors.
    let out = load(
        &["echo", "--url", &u, "--conns", "2", "--warmup", "0", "--duration", "0.3"],
        Duration::from_secs(9),
    );
    assert!(out.ok, "{}", out.stderr);
    let e = &out.report["errors"];
    assert_eq!(e["protocol"], 2, "{e}");
    assert!(e["samples"].to_string().contains("masking"), "{e}");
}

#[test]
fn errors_are_counted_by_kind_not_hidden() {
    // Nothing listening: every connection refused, and still a report.
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let u = url(free);
    let r = run_ok(&["echo", "--url", &u, "--conns", "3", "--warmup", "0", "--duration", "0.2"]);
    assert_eq!(r["errors"]["refused"], 3, "{}", r["errors"]);
    assert_eq!((r["setup"]["opened"].as_u64(), r["setup"]["failed"].as_u64()), (Some(0), Some(3)));
    assert_eq!(r["messages"], 0);
    assert!(!r["warnings"].as_array().unwrap().is_empty());

    // A server refusing the upgrade: handshake errors with the status in the sample.
    let server = serve(|| Refuse);
    let u = url(server.addr);
    let r = run_ok(&[
        "connect",
        "--url",
        &u,
        "--concurrency",
        "2",
        "--warmup",
        "0",
        "--duration",
        "0.3",
    ]);
    assert!(r["errors"]["handshake"].as_u64().unwrap() >= 2, "{}", r["errors"]);
    assert!(r["errors"]["samples"].to_string().contains("403"), "{}", r["errors"]);
    assert_eq!(r["handshakes"], 0);
}

#[test]
fn targets_outside_loopback_are_refused() {
    let out =
        load(&["echo", "--target", "10.1.2.3:80", "--duration", "0.1"], Duration::from_secs(5));
    assert!(!out.ok);
    assert!(out.stderr.contains("--allow-remote"), "{}", out.stderr);
    let out = load(&["fanout", "--size", "8"], Duration::from_secs(5));
    assert!(!out.ok && out.stderr.contains("--size"), "{}", out.stderr);
}
