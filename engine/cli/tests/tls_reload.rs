//! The `ringside` binary serving wss: SIGHUP reloads the certificate files, a new connection
//! gets the new certificate while an open one keeps echoing on its session, and the reload is
//! logged. A reload that fails (a broken key) is logged and the old certificate stays.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringside::Message;
use ringside_tests::tls::{TestPki, TlsClient};
use ringside_tests::{Seen, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_ringside");

/// A running `ringside`; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(backend: &str, cert: &std::path::Path, key: &std::path::Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--no-pin", "--workers", "1", "--backend", backend])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
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
        Server { child, addr: addr.parse().expect("an address"), stderr }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) takes no pointers; the pid is our own unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits (bounded) until stderr contains `text`.
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in: {}", self.stderr.lock().unwrap());
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

fn sighup_reloads(backend: &str) {
    let pki = TestPki::new();
    let first = pki.server_cert("first");
    let second = pki.server_cert("second");
    let (cert, key) = (pki.dir().join("live.pem"), pki.dir().join("live.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let server = Server::start(backend, &cert, &key);
    let mut old = TlsClient::connect(server.addr, pki.client_config()).unwrap();
    assert_eq!(old.server_cert().as_deref(), Some(&first.der[..]));

    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("TLS certificate reloaded");
    let mut new = TlsClient::connect(server.addr, pki.client_config()).unwrap();
    assert_eq!(new.server_cert().as_deref(), Some(&second.der[..]), "the new certificate");
    for c in [&mut old, &mut new] {
        c.send(Message::Text("after the reload")).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("after the reload".into()));
    }

    // A broken key: logged, and the second certificate stays.
    std::fs::write(&key, b"not a key").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("certificate reload failed");
    let c = TlsClient::connect(server.addr, pki.client_config()).unwrap();
    assert_eq!(c.server_cert().as_deref(), Some(&second.der[..]));
    old.close().unwrap();
    new.close().unwrap();
}

#[test]
fn sighup_reloads_the_certificate_epoll() {
    sighup_reloads("epoll");
}

#[test]
fn sighup_reloads_the_certificate_io_uring() {
    if ringside_tests::skip_without_io_uring() {
        return;
    }
    sighup_reloads("io-uring");
}
