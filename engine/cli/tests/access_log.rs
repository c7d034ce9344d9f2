//! The `ringside` binary behind a trusted proxy: with `--trusted-proxies` and `--access-log` its
//! stderr has one line per upgrade naming the client a trusted peer's `X-Forwarded-For` or
//! `Forwarded` gave, and the TCP peer's own address for a peer that is not trusted.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringside_tests::{Client, Seen, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_ringside");

/// A running `ringside` whose stderr is collected; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(backend: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin", "--backend", backend])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ringside binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("no `listening on` line; stderr: {}", stderr.lock().unwrap())
        });
        let addr = line.strip_prefix("ringside: listening on ").expect("the address line");
        Server { child, addr: addr.parse().unwrap(), stderr }
    }

    /// Waits (bounded) until stderr has a line containing every one of `parts`; returns it.
    fn log_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.stderr.lock().unwrap().clone();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no line with {parts:?} in stderr:\n{text}");
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Upgrades from the local address `ip` with `headers`, checks the echo, and returns the
/// client's own address.
fn upgrade_from(ip: [u8; 4], to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 0).into()).unwrap();
    socket.connect_timeout(&to.into(), WAIT).unwrap();
    let stream: TcpStream = socket.into();
    let local = stream.local_addr().unwrap().to_string();
    let mut c = Client::handshake(stream, "test", path, &[], headers, &[]).expect("upgrade");
    c.send_text("hi").unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Text("hi".into()));
    local
}

fn access_log_names_the_client(backend: &str) {
    let server = Server::start(
        backend,
        &[
            "--trusted-proxies",
            "127.0.0.1/32,::1",
            "--forwarded-headers",
            "x-forwarded-for,forwarded",
            "--access-log",
        ],
    );
    let ua = ("User-Agent", "edge-test/1");
    // From the trusted proxy's address: the header names the client.
    upgrade_from(
        [127, 0, 0, 1],
        server.addr,
        "/a",
        &[("X-Forwarded-For", "6.6.6.6, 198.51.100.7"), ua],
    );
    let line = server.log_line(&["access", "path=/a "]);
    assert!(line.contains("client=198.51.100.7:0 peer=127.0.0.1:"), "{line}");
    assert!(line.contains("status=101") && line.contains("user_agent=\"edge-test/1\""), "{line}");
    upgrade_from([127, 0, 0, 1], server.addr, "/b", &[("Forwarded", "for=\"[2001:db8::5]:4711\"")]);
    let line = server.log_line(&["access", "path=/b "]);
    assert!(line.contains("client=[2001:db8::5]:4711 peer=127.0.0.1:"), "{line}");
    // From an address that is not trusted: the header is ignored.
    let local =
        upgrade_from([127, 0, 0, 7], server.addr, "/c", &[("X-Forwarded-For", "198.51.100.7")]);
    let line = server.log_line(&["access", "path=/c "]);
    assert!(line.contains(&format!("client={local} peer={local} ")), "{line}");
    // The startup line says whom it trusts.
    server.log_line(&["trusted proxies [127.0.0.1/32,::1/128]", "x-forwarded-for,forwarded"]);
}

#[test]
fn access_log_names_the_client_epoll() {
    access_log_names_the_client("epoll");
}

#[test]
fn access_log_names_the_client_io_uring() {
    if let Err(why) = ringside::io_uring_available() {
        eprintln!("SKIPPED: io_uring backend not available here: {why}");
        return;
    }
    access_log_names_the_client("io-uring");
}

#[test]
fn no_access_log_without_the_flag() {
    let server = Server::start("epoll", &["--trusted-proxies", "127.0.0.1/32"]);
    upgrade_from([127, 0, 0, 1], server.addr, "/", &[("X-Forwarded-For", "198.51.100.7")]);
    // The echo answered, so the upgrade (and any log line of it) is done.
    let text = server.stderr.lock().unwrap().clone();
    assert!(!text.contains("access"), "{text}");
}
