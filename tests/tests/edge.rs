//! The client's address behind real proxies: nginx as an HTTP reverse proxy (`X-Forwarded-For`)
//! and HAProxy in TCP mode (`send-proxy`, `send-proxy-v2`), from Debian's packages, in front of
//! an in-process server on every backend; and what a client that reaches the server directly
//! can and cannot claim about itself.
//!
//! The proxies are installed here, once per test process, when missing (`apt-get update`, then
//! `apt-get install -y nginx haproxy`); a failed install fails the tests that need them. Each
//! test starts its own proxy in the foreground with its config, pid and logs in a fresh
//! directory, on a free loopback port, and kills it when done. Clients bind a 127.0.0.x source
//! address of their own before connecting, so the address the handler reports is known.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringside::proto::edge::proxy::{ProxyHeader, Version};
use ringside::{Handler, Message, ProxyProtocol, Upgrade, Upgrading, WebSocket};
use ringside_tests::{each_backend, read_some, Client, Seen, TestServer, WAIT};

/// How long one package-manager step may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(600);
const NGINX: &str = "/usr/sbin/nginx";
const HAPROXY: &str = "/usr/sbin/haproxy";

each_backend! {
    fn nginx_forwards_the_client_address(backend) {
        proxies_installed();
        let server = whoami_server(backend, |b| {
            b.trusted_proxies("127.0.0.1/32".parse().unwrap())
        });
        let nginx = Daemon::nginx(server.addr);
        // The client claims to be 6.6.6.6; nginx appends the address it really came from.
        let mut c = connect_from([127, 0, 0, 7], nginx.addr, &[("X-Forwarded-For", "6.6.6.6")]);
        let me = whoami(&mut c);
        assert_eq!(me.client, "127.0.0.7:0", "{me:?}\n{}", nginx.logs());
        assert!(me.tcp.starts_with("127.0.0.1:"), "the TCP peer is nginx: {me:?}");
        assert_eq!((me.protocol.as_str(), me.auth.as_str()), ("chat", "Bearer t0ken"), "{me:?}");
        // The same server reached directly by an untrusted client: its own address.
        let mut direct = connect_from([127, 0, 0, 7], server.addr, &[("X-Forwarded-For", "6.6.6.6")]);
        let local = direct.stream.local_addr().unwrap().to_string();
        assert_eq!(whoami(&mut direct).client, local);
        drop((c, direct, nginx));
        server.shutdown().expect("clean shutdown");
    }
}

each_backend! {
    fn haproxy_sends_the_client_address_in_a_proxy_header(backend) {
        proxies_installed();
        for option in ["send-proxy", "send-proxy-v2"] {
            let server = whoami_server(backend, |b| {
                b.trusted_proxies("127.0.0.1/32".parse().unwrap())
                    .proxy_protocol(ProxyProtocol::Required)
            });
            let haproxy = Daemon::haproxy(server.addr, option);
            let mut c = connect_from([127, 0, 0, 8], haproxy.addr, &[]);
            let local = c.stream.local_addr().unwrap().to_string();
            let me = whoami(&mut c);
            assert_eq!(me.client, local, "{option}: {me:?}\n{}", haproxy.logs());
            assert!(me.tcp.starts_with("127.0.0.1:"), "{option}: the TCP peer is HAProxy: {me:?}");
            assert_eq!((me.protocol.as_str(), me.auth.as_str()), ("chat", "Bearer t0ken"));
            // Around the proxy, straight to the server: not a trusted proxy, closed at once.
            assert_closed_unanswered(raw_from([127, 0, 0, 8], server.addr), &request());
            drop((c, haproxy));
            server.shutdown().expect("clean shutdown");
        }
    }
}

each_backend! {
    fn headers_from_an_untrusted_peer_are_ignored(backend) {
        let server = whoami_server(backend, |b| {
            b.trusted_proxies("10.0.0.0/8".parse().unwrap())
                .forwarded_headers(ringside::ForwardedHeader::parse_list(
                    "x-forwarded-for,forwarded,x-real-ip",
                ).unwrap())
        });
        let spoof = [
            ("X-Forwarded-For", "10.1.1.1, 1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
        ];
        let mut c = connect_from([127, 0, 0, 9], server.addr, &spoof);
        let local = c.stream.local_addr().unwrap().to_string();
        let me = whoami(&mut c);
        assert_eq!((me.client.as_str(), me.tcp.as_str()), (local.as_str(), local.as_str()));
    }
}

each_backend! {
    fn a_proxy_header_from_an_untrusted_peer_is_refused(backend) {
        let header = proxy_header(Version::V1, "192.0.2.1:1111");
        let with_header = [header.clone(), request()].concat();
        // Required: closed at accept.
        let server = whoami_server(backend, |b| {
            b.trusted_proxies("10.0.0.0/8".parse().unwrap())
                .proxy_protocol(ProxyProtocol::Required)
        });
        assert_closed_unanswered(raw_from([127, 0, 0, 9], server.addr), &with_header);
        drop(server);
        // Optional: a header is refused, a plain request is served with the peer's address.
        let server = whoami_server(backend, |b| {
            b.trusted_proxies("10.0.0.0/8".parse().unwrap())
                .proxy_protocol(ProxyProtocol::Optional)
        });
        assert_closed_unanswered(raw_from([127, 0, 0, 9], server.addr), &with_header);
        let mut c = connect_from([127, 0, 0, 9], server.addr, &[]);
        let local = c.stream.local_addr().unwrap().to_string();
        assert_eq!(whoami(&mut c).client, local);
    }
}

each_backend! {
    fn a_missing_proxy_header_closes_the_connection(backend) {
        let server = whoami_server(backend, |b| {
            b.trusted_proxies("127.0.0.0/8".parse().unwrap())
                .proxy_protocol(ProxyProtocol::Required)
        });
        assert_closed_unanswered(raw_from([127, 0, 0, 1], server.addr), &request());
        let mut garbled = proxy_header(Version::V1, "192.0.2.1:1111");
        garbled[7] = b'X'; // PROXY TXP4
        assert_closed_unanswered(raw_from([127, 0, 0, 1], server.addr), &garbled);
    }
}

each_backend! {
    fn a_proxy_header_split_over_several_reads_works(backend) {
        let server = whoami_server(backend, |b| {
            b.trusted_proxies("127.0.0.0/8".parse().unwrap())
                .proxy_protocol(ProxyProtocol::Required)
        });
        for (version, source) in [(Version::V1, "192.0.2.44:1234"), (Version::V2, "[2001:db8::44]:80")]
        {
            let header = proxy_header(version, source);
            let mut stream = raw_from([127, 0, 0, 1], server.addr);
            stream.set_nodelay(true).unwrap();
            // Pieces apart in time arrive in separate reads.
            for piece in [&header[..3], &header[3..13], &header[13..]] {
                stream.write_all(piece).unwrap();
                sleep(Duration::from_millis(30));
            }
            let mut c = Client::handshake(stream, "test", "/", &["chat"], &[], &[])
                .expect("the upgrade after a split header");
            assert_eq!(whoami(&mut c).client, source, "{version:?}");
        }
    }
}

/// What the handler said about a connection.
#[derive(Debug)]
struct Me {
    client: String,
    tcp: String,
    protocol: String,
    auth: String,
}

/// Answers `whoami` with what it knows of the connection.
struct Whoami;

impl Handler for Whoami {
    type Conn = String;

    fn on_upgrade(&mut self, req: &Upgrading<'_>) -> Upgrade<String> {
        let auth = req.header("authorization").map(|v| String::from_utf8_lossy(&v).into_owned());
        Upgrade::Accept(auth.unwrap_or_default())
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, String>, msg: Message<'_>) {
        if msg == Message::Text("whoami") {
            let reply = format!(
                "{}|{}|{}|{}",
                ws.peer_addr(),
                ws.tcp_peer_addr(),
                ws.protocol().unwrap_or("-"),
                ws.data()
            );
            let _ = ws.send_text(&reply);
        }
    }
}

fn whoami_server(
    backend: ringside::Backend,
    configure: impl FnOnce(ringside::Builder) -> ringside::Builder,
) -> TestServer {
    TestServer::start(backend, |b| configure(b.subprotocols(vec!["chat".into()])), || Whoami)
}

fn whoami(c: &mut Client) -> Me {
    c.send_text("whoami").unwrap();
    let Seen::Text(text) = c.recv().unwrap() else { panic!("no answer to whoami") };
    let parts: Vec<&str> = text.splitn(4, '|').collect();
    let [client, tcp, protocol, auth] = parts[..] else { panic!("{text}") };
    Me { client: client.into(), tcp: tcp.into(), protocol: protocol.into(), auth: auth.into() }
}

/// A TCP connection to `to` from the local address `ip` (any port).
fn raw_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 0);
    socket.bind(&local.into()).expect("bind a 127.0.0.x source address");
    socket.connect_timeout(&to.into(), WAIT).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream
}

/// An upgraded client from `ip`, offering `chat` with an `Authorization` header and `extra`.
fn connect_from(ip: [u8; 4], to: SocketAddr, extra: &[(&str, &str)]) -> Client {
    let mut headers = vec![("Authorization", "Bearer t0ken")];
    headers.extend_from_slice(extra);
    Client::handshake(raw_from(ip, to), &to.to_string(), "/", &["chat"], &headers, &[])
        .expect("upgrade")
}

fn request() -> Vec<u8> {
    let mut out = Vec::new();
    let key = ringside::proto::handshake::generate_key();
    ringside::proto::handshake::write_client_request("test", "/", &key, &[], &[], &mut out);
    out
}

fn proxy_header(version: Version, source: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let to: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    ProxyHeader::new(version, source.parse().unwrap(), to).encode(&mut out);
    out
}

/// Sends `bytes` (a refused peer may find the socket closed already) and expects the server to
/// close without sending a byte.
fn assert_closed_unanswered(mut stream: TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    let deadline = Instant::now() + WAIT;
    loop {
        match read_some(&mut stream, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close within {WAIT:?}: {e}"),
        }
        assert!(Instant::now() < deadline, "still open");
    }
    assert!(got.is_empty(), "answered: {}", String::from_utf8_lossy(&got));
}

/// nginx and HAProxy at their Debian paths, installed once per process if missing.
fn proxies_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        if Path::new(NGINX).exists() && Path::new(HAPROXY).exists() {
            return Ok(());
        }
        install_step(Command::new("apt-get").arg("update"))?;
        install_step(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "nginx", "haproxy"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        match [NGINX, HAPROXY].iter().find(|p| !Path::new(p).exists()) {
            Some(missing) => {
                Err(format!("apt-get installed the proxies but {missing} is not there"))
            }
            None => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("nginx and haproxy are missing and could not be installed:\n{e}");
    }
}

/// One install command, killed past [`INSTALL_LIMIT`]; its output becomes the error.
fn install_step(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    eprintln!("edge: installing: {shown}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    // The output is read after the exit: apt's is small enough for the pipe buffers' worth
    // that matters here, and a stuck child is killed at the limit either way.
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || read_all(stdout));
    let err = std::thread::spawn(move || read_all(stderr));
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if started.elapsed() > INSTALL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => {
            eprintln!("edge: done in {:.1} s: {shown}", started.elapsed().as_secs_f64());
            Ok(())
        }
        other => Err(format!("{shown}: {other:?}\n--- stdout:\n{out}--- stderr:\n{err}")),
    }
}

fn read_all(mut r: impl Read) -> String {
    let mut s = Vec::new();
    let _ = r.read_to_end(&mut s);
    String::from_utf8_lossy(&s).into_owned()
}

/// A proxy running in the foreground for one test, its files in a directory of its own; killed
/// and cleaned up on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Daemon {
    /// nginx as a WebSocket reverse proxy to `upstream`, as docs/deployment.md configures it.
    fn nginx(upstream: SocketAddr) -> Daemon {
        let dir = temp_dir("nginx");
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log {d}/access.log;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://{upstream};\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n\
                   proxy_set_header Connection \"upgrade\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_read_timeout 1h;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new(NGINX);
        cmd.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf"));
        cmd.arg("-e").arg(dir.join("error.log"));
        Daemon::start(cmd, dir, port)
    }

    /// HAProxy in TCP mode to `upstream`, the server line with `option` (`send-proxy`,
    /// `send-proxy-v2`).
    fn haproxy(upstream: SocketAddr, option: &str) -> Daemon {
        let dir = temp_dir("haproxy");
        let port = free_port();
        let conf = format!(
            "global\n\
             \x20 pidfile {d}/haproxy.pid\n\
             \x20 nbthread 1\n\
             defaults\n\
             \x20 mode tcp\n\
             \x20 timeout connect 5s\n\
             \x20 timeout client 1h\n\
             \x20 timeout server 1h\n\
             frontend websocket\n\
             \x20 bind 127.0.0.1:{port}\n\
             \x20 default_backend ringside\n\
             backend ringside\n\
             \x20 server ringside1 {upstream} {option}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
        let mut cmd = Command::new(HAPROXY);
        cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
        Daemon::start(cmd, dir, port)
    }

    /// Starts `cmd` (its output into files in `dir`) and waits until `port` accepts.
    fn start(mut cmd: Command, dir: PathBuf, port: u16) -> Daemon {
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let err = std::fs::File::create(dir.join("stderr")).unwrap();
        let child = cmd
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut daemon = Daemon { child, dir, addr };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("{cmd:?} exited: {status}\n{}", daemon.logs());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return daemon;
            }
            assert!(Instant::now() < deadline, "{cmd:?} not listening\n{}", daemon.logs());
            sleep(Duration::from_millis(20));
        }
    }

    /// Everything the proxy wrote: stdout, stderr and log files.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["stdout", "stderr", "error.log", "access.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.join(name)) {
                out.push_str(&format!("--- {name}:\n{text}"));
            }
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new empty directory under the system's temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringside-edge-{}-{what}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nothing listens on (the kernel's pick, released for the proxy to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
