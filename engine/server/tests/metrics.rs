//! The metrics endpoint against Prometheus's own tools: `promtool check metrics` on a page with
//! every family non-zero, `promtool check rules` and `promtool test rules` on the shipped alert
//! rules, `promtool check config` on the shipped scrape configuration, and a real `prometheus`
//! scraping a [`MetricsServer`] on loopback and seeing a gauge change.
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
