//! Real bus servers for the tests: `nats-server` and `redis-server` from Debian's packages.
//!
//! Each test starts its own server on free loopback ports. The server runs under `timeout -s
//! KILL` in a process group of its own, so it dies with the test's [`BusServer`] (kill on
//! drop), and within [`SERVER_LIFETIME`] even if the test process is killed first. Missing
//! servers are installed once per test process with `apt-get update` and `apt-get install -y
//! nats-server redis-server`; an install that fails fails every test that needs it, with the
//! installer's output. Nothing is skipped.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use ringside_bus::{BusHandle, BusStats, Delivery, Event, Options};

/// A server outlives no test by more than this.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(90);
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

/// Generates one test per bus from one body: `fn name(kind) { ... }`.
macro_rules! each_bus {
    ($(fn $name:ident($kind:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($kind: $crate::harness::Kind) $body
            #[test]
            fn nats() {
                body($crate::harness::Kind::Nats)
            }
            #[test]
            fn redis() {
                body($crate::harness::Kind::Redis)
            }
        }
    )*};
}

/// A running bus server; killed when dropped.
#[derive(Debug)]
pub struct BusServer {
    pub kind: Kind,
    pub port: u16,
    /// NATS's HTTP monitoring port.
    monitor_port: u16,
    password: Option<String>,
    /// More lines for nats.conf.
    nats_conf: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl BusServer {
    pub fn start(kind: Kind) -> BusServer {
        Self::start_with(kind, None)
    }

    /// A server that wants `password` (NATS: user `ringside`).
    pub fn start_with(kind: Kind, password: Option<&str>) -> BusServer {
        Self::start_full(kind, password, "")
    }

    /// A NATS server with `conf` added to its configuration file.
    pub fn nats_with_conf(conf: &str) -> BusServer {
        Self::start_full(Kind::Nats, None, conf)
    }

    fn start_full(kind: Kind, password: Option<&str>, nats_conf: &str) -> BusServer {
        ensure_installed();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringside-bus-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's temp dir");
        let mut server = BusServer {
            kind,
            port: 0,
            monitor_port: 0,
            password: password.map(str::to_owned),
            nats_conf: nats_conf.to_owned(),
            dir,
            child: None,
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

    /// The URL a node connects with (with the password, if the server wants one).
    pub fn url(&self) -> String {
        match (self.kind, &self.password) {
            (Kind::Nats, None) => format!("nats://127.0.0.1:{}", self.port),
            (Kind::Nats, Some(p)) => format!("nats://ringside:{p}@127.0.0.1:{}", self.port),
            (Kind::Redis, None) => format!("redis://127.0.0.1:{}", self.port),
            (Kind::Redis, Some(p)) => format!("redis://:{p}@127.0.0.1:{}", self.port),
        }
    }

    /// The same URL without credentials.
    pub fn bare_url(&self) -> String {
        let scheme = if self.kind == Kind::Nats { "nats" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, as a crash) and waits until its port is free.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The group id is the child's pid (process_group(0)): this reaches the server too.
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_until(START_LIMIT, "the killed server's port to close", || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err()
        });
    }

    /// Stops the server (SIGSTOP): its sockets stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("the server runs");
        let group = format!("-{}", child.id());
        let status = Command::new("kill").args([sig, "--", &group]).status();
        assert!(status.as_ref().is_ok_and(|s| s.success()), "kill {sig} {group}: {status:?}");
    }

    /// Starts the server again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.launch() {
            panic!("{:?} did not restart on port {}:\n{log}", self.kind, self.port);
        }
    }

    /// How many subscriptions the server has on `subject`, by its own account.
    pub fn subscribers(&self, subject: &str) -> usize {
        match self.kind {
            Kind::Nats => self.nats_subjects().iter().filter(|s| *s == subject).count(),
            Kind::Redis => {
                let out = self.redis_cli(&["PUBSUB", "NUMSUB", subject]);
                let lines: Vec<&str> = out.lines().collect();
                assert_eq!(lines.first().copied(), Some(subject), "PUBSUB NUMSUB said {out:?}");
                lines.get(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out:?}"))
            }
        }
    }

    /// Every subject with a subscription on the server, sorted, with duplicates (one entry
    /// per subscription on NATS, per channel on Redis).
    pub fn subjects(&self) -> Vec<String> {
        let mut subjects = match self.kind {
            Kind::Nats => self.nats_subjects(),
            Kind::Redis => {
                let out = self.redis_cli(&["PUBSUB", "CHANNELS"]);
                // An empty list prints as an empty line.
                out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
            }
        };
        subjects.sort();
        subjects
    }

    /// Waits until `subject` has `n` subscriptions on the server.
    pub fn wait_subscribers(&self, subject: &str, n: usize) {
        wait_until(Duration::from_secs(5), &format!("{n} subscriptions on {subject}"), || {
            self.subscribers(subject) == n
        });
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Starts the server on its ports; the server's log if it does not come up.
    fn launch(&mut self) -> Result<(), String> {
        let bin = match self.kind {
            Kind::Nats => binary("nats-server"),
            Kind::Redis => binary("redis-server"),
        }
        .expect("installed above");
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", &SERVER_LIFETIME.as_secs().to_string()]).arg(bin);
        match self.kind {
            Kind::Nats => {
                let conf = self.dir.join("nats.conf");
                let mut text = format!(
                    "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n",
                    self.port, self.monitor_port
                );
                text += &self.nats_conf;
                if let Some(p) = &self.password {
                    text += &format!("authorization {{ user: ringside, password: {p} }}\n");
                }
                std::fs::write(&conf, text).expect("write nats.conf");
                cmd.arg("-c").arg(conf);
            }
            Kind::Redis => {
                let port = self.port.to_string();
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly"]);
                cmd.args(["no", "--daemonize", "no", "--logfile", ""]);
                if let Some(p) = &self.password {
                    cmd.args(["--requirepass", p]);
                }
            }
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("open the server log");
        let child = {
            use std::os::unix::process::CommandExt;
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log handle"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
        };
        self.child = Some(child);
        let ports = match self.kind {
            Kind::Nats => vec![self.port, self.monitor_port],
            Kind::Redis => vec![self.port],
        };
        let started = Instant::now();
        while !ports.iter().all(|&p| TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START_LIMIT {
                if let Some(mut child) = self.child.take() {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", child.id())])
                        .status();
                    let _ = child.wait();
                }
                return Err(format!("{exited:?} after {:?}:\n{}", started.elapsed(), self.log()));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn nats_subjects(&self) -> Vec<String> {
        let body = http_get(self.monitor_port, "/connz?subs=1");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/connz is not JSON ({e}): {body}"));
        let conns = json["connections"].as_array().cloned().unwrap_or_default();
        conns
            .iter()
            .flat_map(|c| c["subscriptions_list"].as_array().cloned().unwrap_or_default())
            .map(|s| s.as_str().expect("subjects are strings").to_owned())
            .collect()
    }

    fn redis_cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("redis-cli prints UTF-8 here")
    }
}

impl Drop for BusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ =
                Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP forwarder to a server, whose links the test can cut: one node loses its connection
/// while the others keep theirs.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

#[derive(Debug, Default)]
struct ProxyState {
    cut: AtomicBool,
    stop: AtomicBool,
    links: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(ProxyState::default());
        let st = Arc::clone(&state);
        thread::spawn(move || {
            for client in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if st.cut.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed at once
                }
                let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)) else {
                    continue;
                };
                let mut links = st.links.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
                links.extend([client, server]);
            }
        });
        Proxy { port, state }
    }

    /// Closes every link and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for link in self.state.links.lock().unwrap().drain(..) {
            let _ = link.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    pub fn url(&self, kind: Kind) -> String {
        let scheme = if kind == Kind::Nats { "nats" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

/// A node: a bus handle and the events its sink received.
#[derive(Debug)]
pub struct Node {
    pub bus: BusHandle,
    pub events: Receiver<Event>,
}

impl Node {
    pub fn connect(url: &str) -> Node {
        Self::connect_with(url, Options::default())
    }

    pub fn connect_with(url: &str, options: Options) -> Node {
        let (tx, events) = unbounded();
        let bus = ringside_bus::connect_with(url, options, move |e| {
            let _ = tx.send(e);
        })
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        // `connect` returns once connected, and says so first.
        match events.try_recv() {
            Ok(Event::Connected { reconnects: 0 }) => {}
            other => panic!("the first event is not Connected: {other:?}"),
        }
        Node { bus, events }
    }

    /// The next event that `pick` accepts within `limit`, skipping others.
    pub fn next<T>(&self, limit: Duration, mut pick: impl FnMut(Event) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        loop {
            let event = self.events.recv_deadline(deadline).ok()?;
            if let Some(t) = pick(event) {
                return Some(t);
            }
        }
    }

    /// The next delivery within `limit`, skipping connection events (but not gaps: a gap where
    /// none was expected fails the test).
    pub fn delivery(&self, limit: Duration) -> Option<Delivery> {
        self.next(limit, |e| match e {
            Event::Delivery(d) => Some(d),
            Event::Gap(g) => panic!("unexpected gap {g:?}"),
            _ => None,
        })
    }

    /// The counters once `done` holds for them. The publisher's counters move after its
    /// write returns, which can be after the receiver already has the message.
    pub fn stats_when(&self, done: impl Fn(&BusStats) -> bool) -> BusStats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = self.bus.stats();
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "the counters never got there: {stats:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every event within `limit` (for "nothing else came").
    pub fn drain(&self, limit: Duration) -> Vec<Event> {
        let deadline = Instant::now() + limit;
        std::iter::from_fn(|| self.events.recv_deadline(deadline).ok()).collect()
    }
}

/// Polls `done` every 10 ms until it holds, or fails the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A random loopback port that nothing listens on, below Linux's ephemeral range (32768 and
/// up by default), so that no client's outgoing connection takes it before the server binds it.
fn free_port() -> u16 {
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

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to monitoring");
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

/// `nats-server`, `redis-server` and `redis-cli`, installed with apt-get once per process if
/// missing; panics with the installer's output if that fails.
fn ensure_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let missing: Vec<&str> = ["nats-server", "redis-server", "redis-cli"]
            .into_iter()
            .filter(|b| binary(b).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("bus tests: {missing:?} missing; installing nats-server and redis-server");
        // Other test processes may be installing their own packages: wait for apt's lock.
        let wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"];
        install_step(Command::new("apt-get").args(wait_for_lock).arg("update"))?;
        install_step(
            Command::new("apt-get")
                .args(wait_for_lock)
                .args(["install", "-y", "--no-install-recommends", "nats-server", "redis-server"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        match ["nats-server", "redis-server", "redis-cli"].into_iter().find(|b| binary(b).is_none())
        {
            Some(b) => Err(format!("apt-get succeeded but {b} is still not on the PATH")),
            None => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("the bus servers are missing and could not be installed:\n{e}");
    }
}

/// One install command, bounded by [`INSTALL_LIMIT`]; its output becomes the error.
fn install_step(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    eprintln!("bus tests: running {shown}");
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
            eprintln!("bus tests: done in {:.1} s: {shown}", started.elapsed().as_secs_f64());
            Ok(())
        }
        _ => Err(format!("{shown}: {status:?}\n--- stdout:\n{out}--- stderr:\n{err}---")),
    }
}
