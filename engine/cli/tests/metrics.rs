//! The metrics endpoint against Prometheus's own tools: `promtool check metrics` on a page with
//! every family non-zero, `promtool check rules` and `promtool test rules` on the shipped alert
//! rules, `promtool check config` on the shipped scrape configuration, and a real `prometheus`
//! scraping a [`MetricsServer`] on loopback and seeing a gauge change.
//!
//! Then the wired server, on both backends: an in-process server with `metrics_listen` whose
//! page passes `promtool check metrics` and whose counters move as the protocol does (a 431, a
//! 1009, a slow consumer's 1008, messages and bytes), whose `/health` turns 503 when shutdown
//! begins; and the `ringside` binary with `--metrics-listen`, scraped by a real Prometheus that
//! sees `up == 1` and the connections gauge follow clients opening and closing.
//!
//! Debian's `prometheus` package (which brings `promtool`) is installed with apt-get the first
//! time when missing; an install that fails fails the tests with apt-get's output.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ringside::metrics::{family_names, render, BackendKind, MetricsServer, WorkerMetrics};
use ringside::{Backend, CloseCode, Handler, Message, SlowConsumer, WebSocket};
use ringside_tests::{read_some, Client, Seen, TestServer, WAIT};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
/// How long one apt-get step may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(600);
/// How long one promtool run may take.
const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// How long Prometheus may take to start and report the first scrape.
const FIRST_SCRAPE_LIMIT: Duration = Duration::from_secs(12);
/// How long a changed gauge may take to show (a 1 s scrape interval plus slack).
const CHANGE_LIMIT: Duration = Duration::from_secs(6);

#[test]
fn promtool_accepts_a_page_with_every_family_non_zero() {
    prometheus_installed();
    let workers = every_field_non_zero(3);
    let page = render(&workers);
    for family in family_names() {
        let non_zero = page.lines().filter(|l| !l.starts_with('#')).any(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            let in_family = name == family
                || name
                    .strip_prefix(family)
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s));
            in_family && value.parse::<f64>().unwrap() != 0.0
        });
        assert!(non_zero, "family {family} has no non-zero sample:\n{page}");
    }
    let out = run_bounded(Command::new(PROMTOOL).args(["check", "metrics"]), Some(page.as_bytes()));
    assert!(out.status.success(), "promtool rejects the page:\n{}\n{page}", text(&out));
    assert!(text(&out).trim().is_empty(), "promtool lint findings:\n{}", text(&out));
}

#[test]
fn promtool_accepts_the_rules_their_tests_and_the_scrape_config() {
    prometheus_installed();
    let dir = deploy_dir();
    let rules = run_bounded(
        Command::new(PROMTOOL).arg("check").arg("rules").arg(dir.join("rules.yml")),
        None,
    );
    assert!(rules.status.success(), "promtool check rules:\n{}", text(&rules));
    assert!(text(&rules).contains("SUCCESS: 8 rules found"), "{}", text(&rules));
    let tests = run_bounded(
        Command::new(PROMTOOL).arg("test").arg("rules").arg(dir.join("rules.test.yml")),
        None,
    );
    assert!(tests.status.success(), "promtool test rules:\n{}", text(&tests));
    let config = run_bounded(
        Command::new(PROMTOOL).arg("check").arg("config").arg(dir.join("prometheus.yml")),
        None,
    );
    assert!(config.status.success(), "promtool check config:\n{}", text(&config));
}

#[test]
fn prometheus_scrapes_the_endpoint_and_sees_a_gauge_change() {
    prometheus_installed();
    let workers = every_field_non_zero(2);
    workers[0].connections_open.set(3);
    let health = Arc::new(|| true);
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&workers), health)
        .expect("the metrics listener binds a loopback port");
    let prom = Prometheus::start(server.local_addr());

    let up = prom.wait_for("up{job=\"ringside\"}", "1", FIRST_SCRAPE_LIMIT);
    assert_eq!(up, "1", "Prometheus never scraped the endpoint\n{}", prom.log());
    let query = "ringside_connections_open{job=\"ringside\",worker=\"0\"}";
    let open = prom.wait_for(query, "3", CHANGE_LIMIT);
    assert_eq!(open, "3", "{}", prom.log());
    workers[0].connections_open.set(5);
    let open = prom.wait_for(query, "5", CHANGE_LIMIT);
    assert_eq!(open, "5", "the change never showed\n{}", prom.log());
    // The summed families arrive too, with their bounded label.
    let upgrades = prom.wait_for("ringside_upgrades_total{status=\"101\"}", "6", CHANGE_LIMIT);
    assert_eq!(upgrades, "6", "{}", prom.log());
}

/// Sets every counter and gauge of `n` workers to a value distinct from zero.
fn every_field_non_zero(n: usize) -> Arc<[WorkerMetrics]> {
    let workers = WorkerMetrics::for_workers(n);
    for (i, w) in workers.iter().enumerate() {
        let k = i as u64 + 1;
        w.set_backend(if i % 2 == 0 { BackendKind::IoUring } else { BackendKind::Epoll });
        w.connections_open.set(10 * k);
        w.connections_accepted.add(20 * k);
        for status in [101, 101, 101, 400, 401, 403, 404, 405, 426, 431, 500] {
            w.upgrade(status);
        }
        for code in [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1013, 4000] {
            w.closed(code);
        }
        w.messages_received.add(100 * k);
        w.messages_sent.add(200 * k);
        w.bytes_received.add(3000 * k);
        w.bytes_sent.add(6000 * k);
        w.pings_received.add(k);
        w.pongs_received.add(k);
        w.publishes_delivered.add(50 * k);
        w.publishes_dropped.add(k);
        w.publishes_conflated.add(2 * k);
        w.slow_consumers_closed.add(k);
        w.send_queued_bytes.set(4096 * k);
        w.input_buffered_bytes.set(512 * k);
        w.input_budget_bytes.set(1 << 26);
        w.output_buffered_bytes.set(8192 * k);
        w.output_budget_bytes.set(1 << 28);
        w.budget_refusals.add(k);
        w.accept_errors.add(k);
        for us in [5, 40, 300, 2_000, 80_000, 2_000_000] {
            w.loop_iteration.observe(Duration::from_micros(us));
        }
        w.uring_cqes.add(900 * k);
        w.uring_enters.add(300 * k);
        w.uring_enobufs_rearms.add(k);
        w.epoll_events.add(700 * k);
        w.epoll_waits.add(350 * k);
    }
    workers
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

/// A `prometheus` process scraping one target every second, with its data in a temporary
/// directory; killed and cleaned up on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir()
            .join(format!("ringside-prometheus-{}-{stamp}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ringside\n    scrape_timeout: 1s\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A free loopback port: bind, read it, release it for Prometheus.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, dir, addr }
    }

    /// Polls an instant query until its first result's value is `want` or `limit` passes;
    /// returns the last value seen ("" for none).
    fn wait_for(&self, query: &str, want: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(value) = self.query(query) {
                if value == want {
                    return value;
                }
                last = value;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        last
    }

    /// The value of the first series an instant query returns, if Prometheus answers.
    fn query(&self, query: &str) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = format!(
            "GET /api/v1/query?query={} HTTP/1.0\r\nHost: {}\r\n\r\n",
            percent_encode(query),
            self.addr
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        // {"status":"success","data":{"resultType":"vector","result":[{"metric":{..},"value":[1712.3,"3"]}]}}
        let value = answer.split("\"value\":[").nth(1)?;
        let value = value.split(',').nth(1)?;
        Some(value.split('"').nth(1)?.to_owned())
    }

    fn log(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("prometheus log (last lines):\n{}", tail.join("\n"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Installs Debian's `prometheus` (with `promtool`) once per test process when missing.
fn prometheus_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        if Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
            return Ok(());
        }
        install_step(Command::new("apt-get").arg("update"))?;
        install_step(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "prometheus"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
            Ok(())
        } else {
            Err(format!("apt-get installed prometheus but {PROMETHEUS} or {PROMTOOL} is missing"))
        }
    });
    if let Err(e) = result {
        panic!("Debian's prometheus package is missing and could not be installed:\n{e}");
    }
}

fn install_step(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    eprintln!("metrics: installing: {shown}");
    let out = run_bounded_for(cmd, None, INSTALL_LIMIT);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({}):\n{}", out.status, text(&out)))
    }
}

fn run_bounded(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    run_bounded_for(cmd, stdin, TOOL_LIMIT)
}

/// Runs `cmd` to completion or kills it at `limit` (then its status is not success).
fn run_bounded_for(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Threads feed and drain the pipes, so a child that writes much (apt-get) or does not read
    // cannot block on a full pipe while this thread watches the clock.
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait for the killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Echoes; a connection to `/sub` subscribes to topic `t` instead.
struct EchoOrSubscribe;

impl Handler for EchoOrSubscribe {
    type Conn = ();
    fn on_open(&mut self, ws: &mut WebSocket<'_>) {
        if ws.path() == "/sub" {
            ws.subscribe("t").unwrap();
        }
    }
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

/// The value of the sample `series` (name and labels exactly as written) on `page`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// GET `path` from `addr`: the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("the metrics port answers");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Fetches the page until `series` reaches at least `want` (counters are stored once per loop
/// iteration), or [`WAIT`] passes; returns the last page.
fn page_when(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{page}");
        if sample(&page, series).is_some_and(|v| v >= want) || Instant::now() > deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn backend_label(backend: Backend) -> &'static str {
    match backend {
        Backend::Epoll => "epoll",
        Backend::IoUring => "io_uring",
        other => panic!("no test for {other:?}"),
    }
}

ringside_tests::each_backend! {
    fn a_live_server_counts_what_the_protocol_does(backend) {
        prometheus_installed();
        let server = TestServer::start(
            backend,
            |b| {
                b.metrics_listen("127.0.0.1:0".parse().unwrap())
                    .max_message_size(4096)
                    .max_head_bytes(1024)
                    .send_high_water(128 << 10)
                    .send_limit(256 << 10)
                    .slow_consumer(SlowConsumer::Close)
            },
            || EchoOrSubscribe,
        );
        let metrics = server.handle().metrics_addr().expect("a metrics listener");
        assert_eq!(http_get(metrics, "/health"), (200, "ok\n".to_owned()));
        let label = backend_label(backend);

        // Messages and bytes, both ways.
        let mut c = Client::connect(server.addr).unwrap();
        for i in 0..10 {
            c.send_text(&format!("message {i}")).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Text(format!("message {i}")));
        }
        let page = page_when(metrics, "ringside_messages_received_total{worker=\"0\"}", 10.0);
        let at = |series: &str| sample(&page, series).unwrap_or_else(|| panic!("{series}:\n{page}"));
        assert_eq!(at("ringside_messages_received_total{worker=\"0\"}"), 10.0);
        assert_eq!(at("ringside_messages_sent_total{worker=\"0\"}"), 10.0);
        assert_eq!(at("ringside_connections_open{worker=\"0\"}"), 1.0);
        assert_eq!(at("ringside_connections_accepted_total{worker=\"0\"}"), 1.0);
        assert_eq!(at("ringside_upgrades_total{status=\"101\"}"), 1.0);
        // 10 frames of 15 bytes with a 6-byte header, after the upgrade request.
        assert!(at("ringside_received_bytes_total{worker=\"0\"}") > 10.0 * 21.0, "{page}");
        // 10 frames of 15 bytes with a 2-byte header, after the 101 answer.
        assert!(at("ringside_sent_bytes_total{worker=\"0\"}") > 10.0 * 17.0, "{page}");
        assert_eq!(at(&format!("ringside_backend_info{{worker=\"0\",backend=\"{label}\"}}")), 1.0);
        assert!(at("ringside_loop_iterations_total{worker=\"0\"}") > 0.0);
        let waits = if backend == Backend::Epoll {
            "ringside_epoll_waits_total{worker=\"0\"}"
        } else {
            "ringside_uring_enters_total{worker=\"0\"}"
        };
        assert!(at(waits) > 0.0, "{page}");

        // A request head over the limit: 431.
        let mut raw = TcpStream::connect_timeout(&server.addr, WAIT).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
        head.resize(2048, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        raw.write_all(&head).unwrap();
        let mut answer = [0u8; 12];
        let mut got = 0;
        while got < answer.len() {
            let n = read_some(&mut raw, &mut answer[got..]).unwrap();
            assert!(n > 0, "closed before an answer");
            got += n;
        }
        assert_eq!(&answer, b"HTTP/1.1 431");
        let page = page_when(metrics, "ringside_upgrades_total{status=\"431\"}", 1.0);
        assert_eq!(sample(&page, "ringside_upgrades_total{status=\"431\"}"), Some(1.0), "{page}");

        // A message over the limit: 1009.
        c.send_binary(&[7; 5000]).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(1009));
        let page = page_when(metrics, "ringside_closes_total{code=\"1009\"}", 1.0);
        assert_eq!(sample(&page, "ringside_closes_total{code=\"1009\"}"), Some(1.0), "{page}");

        // A subscriber that does not read falls past the send limit: 1008. Its close is
        // counted by code once it reads what was queued and answers the close.
        let mut slow = Client::connect_with(server.addr, "/sub", &[], &[]).unwrap();
        let payload = vec![b'p'; 16 << 10];
        let deadline = Instant::now() + WAIT;
        while server.handle().stats().slow_closed == 0 {
            assert!(Instant::now() < deadline, "never a slow consumer");
            for _ in 0..32 {
                server.handle().publish("t", Message::Binary(&payload));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let page = page_when(metrics, "ringside_slow_consumers_closed_total{worker=\"0\"}", 1.0);
        let at = |series: &str| sample(&page, series).unwrap_or_else(|| panic!("{series}:\n{page}"));
        assert_eq!(at("ringside_slow_consumers_closed_total{worker=\"0\"}"), 1.0);
        assert!(at("ringside_publishes_delivered_total{worker=\"0\"}") >= 1.0, "{page}");
        assert_eq!(slow.expect_close().unwrap(), Some(1008));
        let page = page_when(metrics, "ringside_closes_total{code=\"1008\"}", 1.0);
        assert_eq!(sample(&page, "ringside_closes_total{code=\"1008\"}"), Some(1.0), "{page}");

        // The live page passes promtool, lint included.
        let out = run_bounded(Command::new(PROMTOOL).args(["check", "metrics"]), Some(page.as_bytes()));
        assert!(out.status.success(), "promtool rejects the page:\n{}\n{page}", text(&out));
        assert!(text(&out).trim().is_empty(), "promtool lint findings:\n{}", text(&out));

        // Not ready from the moment shutdown begins, while the workers still drain a client
        // that does not answer the 1001; the listener is gone once they stopped.
        let _silent = Client::connect(server.addr).unwrap();
        let stopping = std::thread::spawn(move || server.shutdown());
        let deadline = Instant::now() + WAIT;
        let mut health = http_get(metrics, "/health");
        while health.0 == 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            health = http_get(metrics, "/health");
        }
        assert_eq!(health, (503, "not ready\n".to_owned()));
        assert!(!stopping.is_finished(), "503 already while the workers drain");
        stopping.join().unwrap().unwrap();
        assert!(TcpStream::connect(metrics).is_err(), "the metrics port is closed after shutdown");
    }
}

/// The `ringside` binary with `--metrics-listen`, its two addresses read from its stdout; killed
/// on drop if still running.
struct Binary {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Binary {
    fn start(backend: Backend) -> Binary {
        let flag = match backend {
            Backend::Epoll => "epoll",
            Backend::IoUring => "io-uring",
            other => panic!("no flag for {other:?}"),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringside"))
            .args(["--listen", "127.0.0.1:0", "--workers", "2", "--no-pin", "--backend", flag])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the ringside binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = |prefix: &str| -> SocketAddr {
            let line = rx.recv_timeout(WAIT).expect("a line from the binary");
            let addr = line.strip_prefix(prefix).unwrap_or_else(|| panic!("{line:?}"));
            addr.parse().expect("an address")
        };
        let addr = line("ringside: listening on ");
        let metrics = line("ringside: metrics on ");
        Binary { child, addr, metrics }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

ringside_tests::each_backend! {
    fn prometheus_scrapes_the_binary_and_follows_its_connections(backend) {
        prometheus_installed();
        let mut bin = Binary::start(backend);
        assert_eq!(http_get(bin.metrics, "/health"), (200, "ok\n".to_owned()));
        let prom = Prometheus::start(bin.metrics);
        let up = prom.wait_for("up{job=\"ringside\"}", "1", FIRST_SCRAPE_LIMIT);
        assert_eq!(up, "1", "Prometheus never scraped the binary\n{}", prom.log());
        let open = "sum(ringside_connections_open{job=\"ringside\"})";
        assert_eq!(prom.wait_for(open, "0", CHANGE_LIMIT), "0", "{}", prom.log());
        let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(bin.addr).unwrap()).collect();
        assert_eq!(prom.wait_for(open, "3", CHANGE_LIMIT), "3", "{}", prom.log());
        for mut c in clients.drain(1..) {
            c.conn.close(CloseCode::NORMAL, "").unwrap();
            c.flush().unwrap();
            assert_eq!(c.expect_close().unwrap(), Some(1000));
        }
        assert_eq!(prom.wait_for(open, "1", CHANGE_LIMIT), "1", "{}", prom.log());
        let closed = "sum(ringside_closes_total{job=\"ringside\",code=\"1000\"})";
        assert_eq!(prom.wait_for(closed, "2", CHANGE_LIMIT), "2", "{}", prom.log());
        let label = backend_label(backend);
        let info = format!("count(ringside_backend_info{{backend=\"{label}\"}})");
        assert_eq!(prom.wait_for(&info, "2", CHANGE_LIMIT), "2", "two workers\n{}", prom.log());
        drop(clients);

        let pid = libc::pid_t::try_from(bin.child.id()).unwrap();
        // SAFETY: kill(2) takes no pointers; the pid is our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = bin.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
        assert!(TcpStream::connect(bin.metrics).is_err(), "the metrics port closed with it");
    }
}
