//! Real servers around a Ringside cluster, for tests and benchmarks: a message bus
//! (`nats-server` or `redis-server`) and an HAProxy load balancer, from Debian's packages.
//!
//! Each runs under `timeout -s KILL` in a process group of its own, so it dies with its owner
//! (kill on drop) and within its lifetime even if the owning process is killed first.
//! Missing packages are installed once per process with `apt-get update` and `apt-get install
//! -y`; an install that fails fails whatever needs it, with the installer's output. Nothing is
//! skipped.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// A test's server outlives it by at most this.
pub const TEST_LIFETIME: Duration = Duration::from_secs(120);
/// How long a server may take to accept connections (or to free its port after a kill).
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long one package-manager step may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(600);

/// Which bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nats,
    Redis,
}

/// A running bus server; killed when dropped.
#[derive(Debug)]
pub struct BusServer {
    pub kind: Kind,
    pub port: u16,
    /// NATS's HTTP monitoring port (`/varz`, `/connz`).
    pub monitor_port: u16,
    lifetime: Duration,
    process: Process,
}

impl BusServer {
    /// A server on free loopback ports, living at most [`TEST_LIFETIME`].
    pub fn start(kind: Kind) -> BusServer {
        Self::start_for(kind, TEST_LIFETIME)
    }

    /// A server living at most `lifetime`.
    pub fn start_for(kind: Kind, lifetime: Duration) -> BusServer {
        ensure_installed();
        let mut server = BusServer {
            kind,
            port: 0,
            monitor_port: 0,
            lifetime,
            process: Process::new(match kind {
                Kind::Nats => "nats",
                Kind::Redis => "redis",
            }),
        };
        // Another test may take a port between the probe and the server's bind: new ports then.
        let mut tries = 0;
        loop {
            (server.port, server.monitor_port) = (free_port(), free_port());
            match server.launch() {
                Ok(()) => return server,
                Err(log) if tries < 5 && log.to_lowercase().contains("address already in use") => {
                    tries += 1;
                }
                Err(log) => panic!("{kind:?} did not start:\n{log}"),
            }
        }
    }

    /// The URL a node connects with.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL, as a crash) and waits until its port is free.
    pub fn kill(&mut self) {
        self.process.kill();
        wait_until(START_LIMIT, "the killed bus server's port to close", || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err()
        });
    }

    /// Starts the server again on the same ports (after [`BusServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.launch() {
            panic!("{:?} did not restart on port {}:\n{log}", self.kind, self.port);
        }
    }

    /// How many subscriptions the server has on `subject` (one per subscribed node).
    pub fn subscribers(&self, subject: &str) -> usize {
        match self.kind {
            Kind::Nats => {
                let body = http_get(self.monitor_port, "/connz?subs=1");
                let json: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("/connz is not JSON ({e}): {body}"));
                let conns = json["connections"].as_array().cloned().unwrap_or_default();
                conns
                    .iter()
                    .flat_map(|c| c["subscriptions_list"].as_array().cloned().unwrap_or_default())
                    .filter(|s| s.as_str() == Some(subject))
                    .count()
            }
            Kind::Redis => {
                let out = self.redis_cli(&["PUBSUB", "NUMSUB", subject]);
                let lines: Vec<&str> = out.lines().collect();
                assert_eq!(lines.first().copied(), Some(subject), "PUBSUB NUMSUB said {out:?}");
                lines.get(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out:?}"))
            }
        }
    }

    /// Waits (at most `limit`) until `subject` has `n` subscriptions on the server.
    pub fn wait_subscribers(&self, subject: &str, n: usize, limit: Duration) {
        wait_until(limit, &format!("{n} bus subscriptions on {subject}"), || {
            self.subscribers(subject) == n
        });
    }

    /// NATS's message counters since it started: (`in_msgs`, `out_msgs`) from `/varz`.
    pub fn nats_messages(&self) -> (u64, u64) {
        assert_eq!(self.kind, Kind::Nats, "/varz is NATS's");
        let body = http_get(self.monitor_port, "/varz");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/varz is not JSON ({e}): {body}"));
        let get = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("/varz has no {k}"));
        (get("in_msgs"), get("out_msgs"))
    }

    /// The server's pid, for CPU readings.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.process.log()
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut args: Vec<String> = Vec::new();
        let bin = match self.kind {
            Kind::Nats => {
                let conf = self.process.dir.join("nats.conf");
                let text = format!(
                    "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n",
                    self.port, self.monitor_port
                );
                std::fs::write(&conf, text).expect("write nats.conf");
                args.extend(["-c".into(), conf.display().to_string()]);
                "nats-server"
            }
            Kind::Redis => {
                for a in ["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""] {
                    args.push(a.to_owned());
                }
                for a in ["--appendonly", "no", "--daemonize", "no", "--logfile", ""] {
                    args.push(a.to_owned());
                }
                "redis-server"
            }
        };
        let ports = match self.kind {
            Kind::Nats => vec![self.port, self.monitor_port],
            Kind::Redis => vec![self.port],
        };
        self.process.launch(bin, &args, &ports, self.lifetime)
    }

    fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("redis-cli prints UTF-8 here")
    }
}

/// HAProxy in front of some WebSocket servers: `balance leastconn`, HTTP mode (the upgrade is
/// seen, then the connection is a tunnel with `timeout tunnel 1h`), health checks of
/// `GET /health` every 100 ms (a dead server is out after one failed check), and a failed
/// connect retried on another server. Killed when dropped.
#[derive(Debug)]
pub struct Haproxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    stats_port: u16,
    process: Process,
}

impl Haproxy {
    /// Starts in front of `servers` (named `n0`, `n1`, ... in that order) and waits until it
    /// sees them all up.
    pub fn start(servers: &[SocketAddr]) -> Haproxy {
        Self::start_for(servers, TEST_LIFETIME)
    }

    /// The same, living at most `lifetime`.
    pub fn start_for(servers: &[SocketAddr], lifetime: Duration) -> Haproxy {
        ensure_installed();
        let mut tries = 0;
        loop {
            let (port, stats_port) = (free_port(), free_port());
            let mut proxy = Haproxy {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                stats_port,
                process: Process::new("haproxy"),
            };
            let conf = proxy.process.dir.join("haproxy.cfg");
            std::fs::write(&conf, config(port, stats_port, servers)).expect("write haproxy.cfg");
            let args = ["-f".to_owned(), conf.display().to_string(), "-db".to_owned()];
            match proxy.process.launch("haproxy", &args, &[port, stats_port], lifetime) {
                Ok(()) => {
                    proxy.wait_states(servers.len(), "UP");
                    return proxy;
                }
                Err(log) if tries < 5 && log.to_lowercase().contains("address already in use") => {
                    tries += 1;
                }
                Err(log) => panic!("haproxy did not start:\n{log}"),
            }
        }
    }

    /// Each server's name and state (`UP`, `DOWN`, ...), from the statistics page.
    pub fn states(&self) -> Vec<(String, String)> {
        let csv = http_get(self.stats_port, "/stats;csv");
        csv.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                // pxname, svname, ..., status is the 18th column.
                let (&proxy, &server) = (fields.first()?, fields.get(1)?);
                let status = fields.get(17)?;
                (proxy == "nodes" && server != "BACKEND")
                    .then(|| (server.to_owned(), status.to_string()))
            })
            .collect()
    }

    /// Waits until server `name` is in `state`.
    pub fn wait_state(&self, name: &str, state: &str) {
        self.wait_for(&format!("{name} {state}"), |states| {
            states.iter().any(|(n, s)| n == name && s.starts_with(state))
        });
    }

    fn wait_states(&self, n: usize, state: &str) {
        self.wait_for(&format!("{n} servers {state}"), |states| {
            states.len() == n && states.iter().all(|(_, s)| s.starts_with(state))
        });
    }

    fn wait_for(&self, what: &str, done: impl Fn(&[(String, String)]) -> bool) {
        let started = Instant::now();
        loop {
            let states = self.states();
            if done(&states) {
                return;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "haproxy did not see {what} within {START_LIMIT:?}: {states:?}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// The configuration [`Haproxy`] runs.
fn config(port: u16, stats_port: u16, servers: &[SocketAddr]) -> String {
    let mut c = format!(
        "# No maxconn: HAProxy derives it from the open-file limit (two descriptors a client).
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A WebSocket is a tunnel once upgraded: this, not the client/server timeouts, applies.
    timeout tunnel 1h
    # A connect that fails is retried, on another server.
    retries 3
    option redispatch 1

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats

frontend ws
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance leastconn
    # HTTP/1.1 with a Host header: Ringside reads every request as a WebSocket upgrade
    # request first, and answers HAProxy's default HTTP/1.0 check without Host with 400.
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host ringside
    default-server check inter 100ms fall 1 rise 1
"
    );
    for (i, s) in servers.iter().enumerate() {
        c += &format!("    server n{i} {s}\n");
    }
    c
}

/// A child process in a process group of its own, logging to a file in its own directory.
#[derive(Debug)]
struct Process {
    name: &'static str,
    dir: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn new(name: &'static str) -> Process {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringside-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's temp dir");
        Process { name, dir, child: None }
    }

    /// Starts `bin args` under `timeout -s KILL lifetime` and waits until every port in `ports`
    /// accepts; the log if it does not come up.
    fn launch(
        &mut self,
        bin: &str,
        args: &[String],
        ports: &[u16],
        lifetime: Duration,
    ) -> Result<(), String> {
        use std::os::unix::process::CommandExt;

        let path = binary(bin).expect("installed above");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("open the server log");
        let child = Command::new("timeout")
            .args(["-s", "KILL", &lifetime.as_secs().max(1).to_string()])
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", path.display()));
        self.child = Some(child);
        let started = Instant::now();
        while !ports.iter().all(|&p| TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START_LIMIT {
                self.kill();
                return Err(format!(
                    "{} {exited:?} after {:?}:\n{}",
                    self.name,
                    started.elapsed(),
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The server's pid: `timeout` runs it as a child, in `timeout`'s process group.
    fn pid(&self) -> Option<u32> {
        let group = self.child.as_ref()?.id();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the command name (in parentheses, maybe with spaces): state, ppid, pgrp.
            let (_, fields) = stat.rsplit_once(')')?;
            let pgrp: u32 = fields.split_whitespace().nth(2)?.parse().ok()?;
            (pgrp == group && pid != group).then_some(pid)
        })
    }

    /// SIGKILL to the whole group (the group id is `timeout`'s pid: `process_group(0)`).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `done` every 10 ms until it holds, or panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A random loopback port that nothing listens on, below Linux's ephemeral range (32768 and
/// up by default), so that no client's outgoing connection takes it before the server binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};

    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// The body of `GET path` on a loopback port (HTTP/1.0, so the server closes when done).
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect for an HTTP GET");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send the request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "GET {path}: {head}");
    body.to_owned()
}

/// Where `name` is installed, if it is.
fn binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The programs this module runs and the Debian packages they come in.
const PROGRAMS: [(&str, &str); 4] = [
    ("nats-server", "nats-server"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("haproxy", "haproxy"),
];

/// Installs whatever of [`PROGRAMS`] is missing with apt-get, once per process; panics with the
/// installer's output if that fails.
fn ensure_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    // One installer at a time in this process; others wait for its result.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let result = DONE.get_or_init(|| {
        let missing: Vec<&str> =
            PROGRAMS.iter().filter(|(bin, _)| binary(bin).is_none()).map(|(_, p)| *p).collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("cluster tests: installing {missing:?}");
        // Other test processes may be installing their own packages: wait for apt's lock.
        let wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"];
        install_step(Command::new("apt-get").args(wait_for_lock).arg("update"))?;
        install_step(
            Command::new("apt-get")
                .args(wait_for_lock)
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        match PROGRAMS.iter().find(|(bin, _)| binary(bin).is_none()) {
            Some((bin, _)) => Err(format!("apt-get succeeded but {bin} is still not on the PATH")),
            None => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("nats-server, redis-server or haproxy is missing and could not be installed:\n{e}");
    }
}

/// One install command, bounded by [`INSTALL_LIMIT`]; its output becomes the error.
fn install_step(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    eprintln!("cluster tests: running {shown}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut out = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut out);
            }
            out
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < INSTALL_LIMIT => {
                thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => {
            eprintln!("cluster tests: done in {:.1} s: {shown}", started.elapsed().as_secs_f64());
            Ok(())
        }
        _ => Err(format!("{shown}: {status:?}\n--- stdout:\n{out}--- stderr:\n{err}---")),
    }
}
