//! The `ringside` binary as an operator runs it: it prints the address it listens on, serves an
//! echo on the backend asked for, refuses bad flags with a message, and on SIGTERM closes every
//! client with 1001 and exits 0.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use ringside_tests::{assert_echoes, Client, Seen, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_ringside");

/// A running `ringside`; killed on drop if it is still running (a failed test).
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the binary on a free port with one unpinned worker and `extra` flags, and waits for
    /// its `listening on` line.
    fn start(backend: &str, extra: &[&str]) -> Server {
        Self::start_with_env(backend, extra, &[])
    }

    fn start_with_env(backend: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--no-pin", "--backend", backend])
            .args(if extra.contains(&"--workers") { &[][..] } else { &["--workers", "1"][..] })
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ringside binary starts");
        let (stderr, _) = drain(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Server { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), stderr };
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("no `listening on` line; stderr: {}", server.stderr.lock().unwrap())
        });
        let addr = line.strip_prefix("ringside: listening on ").unwrap_or_else(|| {
            panic!("unexpected first line {line:?}; stderr: {}", server.stderr.lock().unwrap())
        });
        server.addr = addr.parse().expect("an address");
        server
    }

    fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) takes no pointers; the pid is our own child, still unreaped (we hold
        // its `Child`), so it cannot name another process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit, at most `within`.
    fn wait(&mut self, within: Duration) -> ExitStatus {
        wait_exit(&mut self.child, within).unwrap_or_else(|| {
            panic!("still running after {within:?}; stderr: {}", self.stderr.lock().unwrap())
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Collects a pipe's text on a thread, so the child never blocks writing to it; the thread ends
/// when the pipe closes (the child exited).
fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        let mut buf = [0; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, reader)
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with `args` and `env` to its exit (within a few seconds): status and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the ringside binary starts");
    let (stderr, reader) = drain(child.stderr.take().unwrap());
    let Some(status) = wait_exit(&mut child, Duration::from_secs(5)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`ringside {}` did not exit; stderr: {}", args.join(" "), stderr.lock().unwrap());
    };
    reader.join().expect("the stderr reader");
    let text = stderr.lock().unwrap().clone();
    (status, text)
}

const ONE_WORKER: [&str; 5] = ["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"];

/// True (after saying so) when the io_uring backend cannot run here.
fn io_uring_missing() -> bool {
    match ringside::io_uring_available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIPPED: io_uring backend not available here: {why}");
            true
        }
    }
}

fn sigterm_closes_clients_with_1001_and_exits_0(backend: &str) {
    let mut server = Server::start(backend, &[]);
    let mut clients: Vec<Client> =
        (0..3).map(|_| Client::connect(server.addr).expect("handshake")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let text = format!("client {i}");
        c.send_text(&text).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text(text));
    }
    // One more that never finishes its handshake must not hold the shutdown up.
    let _half = TcpStream::connect_timeout(&server.addr, WAIT).unwrap();
    let started = Instant::now();
    server.terminate();
    for (i, c) in clients.iter_mut().enumerate() {
        // `expect_close` answers the close and sees the TCP close after it.
        assert_eq!(c.expect_close().unwrap(), Some(1001), "client {i}");
    }
    drop(clients);
    let status = server.wait(Duration::from_secs(4));
    eprintln!("exited after {:?}: {status}", started.elapsed());
    assert!(status.success(), "{status}; stderr: {}", server.stderr.lock().unwrap());
    assert!(server.stderr.lock().unwrap().contains("shut down"));
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0_epoll() {
    sigterm_closes_clients_with_1001_and_exits_0("epoll");
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0_io_uring() {
    if io_uring_missing() {
        return;
    }
    sigterm_closes_clients_with_1001_and_exits_0("io-uring");
}

fn sigterm_with_a_client_that_never_answers_exits_after_the_shutdown_timeout(backend: &str) {
    let mut server = Server::start(backend, &["--shutdown-timeout", "1"]);
    let mut deaf = Client::connect(server.addr).unwrap();
    deaf.send_text("hello").unwrap();
    assert_eq!(deaf.recv().unwrap(), Seen::Text("hello".into()));
    let started = Instant::now();
    server.terminate();
    // The client holds on to its socket and never reads: the server gives up on it.
    let status = server.wait(Duration::from_secs(5));
    eprintln!("exited after {:?}: {status}", started.elapsed());
    assert!(status.success(), "{status}; stderr: {}", server.stderr.lock().unwrap());
    // What it got: the 1001 close, then the connection went away.
    match deaf.recv() {
        Ok(Seen::Close(code, _)) => assert_eq!(code, Some(1001)),
        other => panic!("expected the 1001 close, got {other:?}"),
    }
}

#[test]
fn sigterm_with_an_unresponsive_client_exits_after_the_shutdown_timeout_epoll() {
    sigterm_with_a_client_that_never_answers_exits_after_the_shutdown_timeout("epoll");
}

#[test]
fn sigterm_with_an_unresponsive_client_exits_after_the_shutdown_timeout_io_uring() {
    if io_uring_missing() {
        return;
    }
    sigterm_with_a_client_that_never_answers_exits_after_the_shutdown_timeout("io-uring");
}

#[test]
fn serves_echo_on_epoll() {
    let server = Server::start("epoll", &[]);
    assert_echoes(server.addr);
    assert!(server.stderr.lock().unwrap().contains("backend epoll"));
}

#[test]
fn serves_echo_on_io_uring_or_refuses_clearly() {
    if io_uring_missing() {
        // Then asking for it must fail at start, saying why, not fall back quietly.
        let (status, stderr) =
            run_to_exit(&[&ONE_WORKER[..], &["--backend", "io-uring"]].concat(), &[]);
        assert!(!status.success(), "started without io_uring; stderr: {stderr}");
        assert!(stderr.contains("io_uring unavailable"), "stderr: {stderr}");
        return;
    }
    let server = Server::start("io-uring", &[]);
    assert_echoes(server.addr);
    assert!(server.stderr.lock().unwrap().contains("backend io_uring"));
}

/// `--app broadcast` speaks the pub/sub protocol of docs/broadcast.md, across two workers.
fn broadcast_app_speaks_the_pubsub_protocol(backend: &str) {
    let server = Server::start(backend, &["--app", "broadcast", "--workers", "2"]);
    let text = |c: &mut Client| match c.recv().unwrap() {
        Seen::Text(t) => t,
        other => panic!("{other:?}"),
    };
    let mut subs: Vec<Client> = (0..6).map(|_| Client::connect(server.addr).unwrap()).collect();
    for (i, c) in subs.iter_mut().enumerate() {
        let topic = if i % 2 == 0 { "even" } else { "odd" };
        c.send_text(&format!("sub {topic}")).unwrap();
        assert_eq!(text(c), format!("ok sub {topic}"));
    }
    let mut publisher = Client::connect(server.addr).unwrap();
    for bad in ["hello", "sub", "sub two words", "pub even", "unsub"] {
        publisher.send_text(bad).unwrap();
        assert!(text(&mut publisher).starts_with("error "), "{bad:?}");
    }
    for i in 0..50 {
        publisher.send_text(&format!("pub even e{i} with spaces")).unwrap();
        publisher.send_text(&format!("pub odd o{i}")).unwrap();
    }
    for (i, c) in subs.iter_mut().enumerate() {
        for n in 0..50 {
            let want = if i % 2 == 0 { format!("e{n} with spaces") } else { format!("o{n}") };
            assert_eq!(text(c), want, "subscriber {i}");
        }
    }
    subs[0].send_text("unsub even").unwrap();
    assert_eq!(text(&mut subs[0]), "ok unsub even");
    subs[0].send_text("sub odd").unwrap();
    assert_eq!(text(&mut subs[0]), "ok sub odd");
    publisher.send_text("pub even gone").unwrap();
    publisher.send_text("pub odd last").unwrap();
    assert_eq!(text(&mut subs[0]), "last", "unsubscribed from even");
    assert_eq!(text(&mut subs[2]), "gone");
}

#[test]
fn broadcast_app_speaks_the_pubsub_protocol_epoll() {
    broadcast_app_speaks_the_pubsub_protocol("epoll");
}

#[test]
fn broadcast_app_speaks_the_pubsub_protocol_io_uring() {
    if !io_uring_missing() {
        broadcast_app_speaks_the_pubsub_protocol("io-uring");
    }
}

#[test]
fn metrics_lines_count_the_connections() {
    let server = Server::start("epoll", &["--metrics", "1"]);
    let _clients: Vec<Client> = (0..3).map(|_| Client::connect(server.addr).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = "ringside: metrics: connections 3, delivered 0";
    while !server.stderr.lock().unwrap().contains(want) {
        assert!(Instant::now() < deadline, "no {want:?}: {}", server.stderr.lock().unwrap());
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    let (status, stderr) = run_to_exit(&["--backend", "kqueue"], &[]);
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("invalid value 'kqueue'") && stderr.contains("--backend"), "{stderr}");
    assert!(stderr.contains("epoll") && stderr.contains("io-uring"), "names the choices: {stderr}");
    let (status, stderr) = run_to_exit(&["--workers", "many", "--listen", "127.0.0.1:0"], &[]);
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("--workers: not a number: many"), "{stderr}");
    let (status, stderr) = run_to_exit(&["--listen", "not-an-address"], &[]);
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("not-an-address"), "{stderr}");
    let (status, stderr) = run_to_exit(&["--topic", "price.*=hurry"], &[]);
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("unknown policy \"hurry\""), "{stderr}");
    let (status, stderr) = run_to_exit(&["--no-such-flag"], &[]);
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn io_uring_switched_off_is_refused_when_asked_for_and_auto_falls_back() {
    // The probe's switch (RINGSIDE_NO_URING) stands in for a kernel without io_uring.
    let off = [("RINGSIDE_NO_URING", "1")];
    let args = [&ONE_WORKER[..], &["--backend", "io-uring"]].concat();
    let (status, stderr) = run_to_exit(&args, &off);
    assert!(!status.success(), "started without io_uring; stderr: {stderr}");
    assert!(stderr.contains("io_uring unavailable"), "says why: {stderr}");
    let server = Server::start_with_env("auto", &[], &off);
    assert_echoes(server.addr);
    let stderr = server.stderr.lock().unwrap().clone();
    assert!(stderr.contains("using epoll") && stderr.contains("backend epoll"), "{stderr}");
}
