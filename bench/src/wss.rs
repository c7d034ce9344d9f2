//! `ringside-bench wss`: what TLS costs the server. The `ringside` echo binary runs pinned
//! twice, plain (ws) and with a certificate (wss, an EC P-256 key made by `openssl` for the
//! run), and the same clients drive both in one run: closed-loop echo at 100 connections x
//! 20 B and 10 x 16 KiB (server CPU per message from /proc/PID/stat, messages/s), and
//! handshakes (TCP connect, full TLS handshake without resumption, upgrade; the client then
//! drops the connection) per second with their server CPU.
//!
//! The clients are this process's own: one mio loop pinned to the load CPUs, rustls's buffered
//! client over each socket, the protocol core for frames. `ringside-load` speaks plain ws only.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ringside_proto::handshake;
use ringside_proto::{Config, Connection, Event, Role};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::procs::{self, ServerProcess};

/// What `wss` runs.
#[derive(Debug)]
pub struct Options {
    pub secs: f64,
    pub warmup: f64,
    pub backend: &'static str,
    pub server_cpus: String,
    pub load_cpus: String,
    pub doc: PathBuf,
}

/// One echo row of the table.
const ROWS: [(usize, usize); 2] = [(100, 20), (10, 16 << 10)];
/// Connections handshaking at once in the handshake runs.
const HANDSHAKERS: usize = 16;

/// Figures of one run against one server.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    /// Messages echoed (or handshakes completed) per second.
    rate: f64,
    /// Server CPU microseconds per message (or handshake).
    cpu_us: f64,
    /// Share of one CPU the server used.
    util: f64,
}

pub fn main(bins: &Path, o: &Options) -> io::Result<()> {
    let dir = std::env::temp_dir().join(format!("ringside-bench-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(bins, o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(bins: &Path, o: &Options, dir: &Path) -> io::Result<()> {
    let (cert, key, ca) = make_pki(dir)?;
    let client = client_config(&ca)?;
    // Before pinning: the machine's CPU count, not this thread's.
    let machine = procs::machine();
    let load_cpus: Vec<usize> = o.load_cpus.split(',').filter_map(|c| c.parse().ok()).collect();
    if let Some(&cpu) = load_cpus.first() {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let base = |tls: bool| {
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--backend".into(), o.backend.into(), "--idle-timeout".into(), "600".into()]);
        if tls {
            args.extend(["--tls-cert".into(), path(&cert), "--tls-key".into(), path(&key)]);
        }
        args
    };
    let mut results: HashMap<(bool, &str), Figures> = HashMap::new();
    let names = ["100 x 20 B", "10 x 16 KiB"];
    let mut idle_bytes = Vec::new();
    for tls in [false, true] {
        let server = ServerProcess::start(&o.server_cpus, &bins.join("ringside"), &base(tls))?;
        let cfg = tls.then(|| Arc::clone(&client));
        for (&(conns, size), name) in ROWS.iter().zip(names) {
            let f = echo(server.addr, server.pid(), cfg.clone(), conns, size, o)?;
            eprintln!("{} {name}: {f:?}", if tls { "wss" } else { "ws" });
            results.insert((tls, name), f);
        }
        let f = handshakes(server.addr, server.pid(), cfg.clone(), o)?;
        eprintln!("{} handshakes: {f:?}", if tls { "wss" } else { "ws" });
        results.insert((tls, "handshakes"), f);
        let bytes = idle(server.addr, server.pid(), cfg)?;
        eprintln!("{} idle: {bytes:.0} B per connection", if tls { "wss" } else { "ws" });
        idle_bytes.push(bytes);
    }
    let mut md = String::new();
    let _ = writeln!(md, "## wss: what TLS costs the server ({})\n", o.backend);
    let _ = writeln!(
        md,
        "Command: `cargo run --release -p ringside-bench -- wss --backend {} --secs {}`. \
         Machine: {}, shared and noisy (other builds were running). \
         Date: {}. The `ringside` echo binary, one {} worker pinned to CPU {}, plain and then \
         with TLS (rustls 0.23, ring; EC P-256 certificate, TLS 1.3, X25519, AES-128-GCM or \
         ChaCha20 as negotiated); the bench's own clients (one mio loop, rustls) on CPU {}. \
         Closed-loop echo, one message in flight per connection; {} s measured after {} s \
         warm-up. Server CPU is user+system time from /proc/PID/stat over the measured \
         window. Handshakes: {HANDSHAKERS} clients at once, each connecting, completing a \
         full TLS handshake (no resumption) and the upgrade, then dropping the connection. \
         The rates depend on the one client loop (which does TLS too) and on the noise; \
         \"server busy\" says how loaded the server was. The server's CPU per message (or \
         handshake) is the figure to compare.\n",
        o.backend,
        o.secs,
        machine,
        procs::today(),
        o.backend,
        o.server_cpus,
        o.load_cpus,
        o.secs,
        o.warmup,
    );
    let _ = writeln!(
        md,
        "| load | ws msg/s | wss msg/s | ws µs/msg | wss µs/msg | wss / ws CPU | ws server busy | \
         wss server busy |\n|---|---|---|---|---|---|---|---|"
    );
    for name in names.into_iter().chain(["handshakes"]) {
        let (p, t) = (results[&(false, name)], results[&(true, name)]);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2}x | {:.0}% | {:.0}% |",
            if name == "handshakes" { "connect + upgrade (per handshake)" } else { name },
            p.rate,
            t.rate,
            p.cpu_us,
            t.cpu_us,
            t.cpu_us / p.cpu_us,
            100.0 * p.util,
            100.0 * t.util,
        );
    }
    let _ = writeln!(
        md,
        "\nServer memory per idle connection ({IDLE} connections open after the upgrade, RSS \
         growth divided by {IDLE}): ws {:.0} B, wss {:.0} B.",
        idle_bytes[0], idle_bytes[1]
    );
    println!("{md}");
    procs::splice_doc(&o.doc, &format!("wss-{}", o.backend), &md)?;
    eprintln!("wrote {}", o.doc.display());
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A CA and a server certificate for 127.0.0.1 in `dir`: (cert, key, CA cert).
fn make_pki(dir: &Path) -> io::Result<(PathBuf, PathBuf, PathBuf)> {
    let openssl = |args: &[&str]| -> io::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().map_err(|e| {
            io::Error::new(e.kind(), format!("wss needs `openssl` (apt-get install openssl): {e}"))
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let run = |line: &str| openssl(&line.split(' ').collect::<Vec<_>>());
    run(&format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-CA"))?;
    run(&format!("req {ec} -keyout s.key -out s.csr -subj /CN=localhost"))?;
    std::fs::write(dir.join("s.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    run("x509 -req -in s.csr -CA ca.pem -CAkey ca.key -set_serial 2 -days 2 -out s.pem \
         -extfile s.ext")?;
    Ok((dir.join("s.pem"), dir.join("s.key"), dir.join("ca.pem")))
}

fn client_config(ca: &Path) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(ca).map_err(io::Error::other)?;
    roots.add(ca).map_err(io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every handshake a full one: what a crowd of new clients costs.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// User + system CPU seconds of `pid`.
fn cpu_secs(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| io::Error::other("stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf(3) takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // After the command: state is field 0, utime 11, stime 12.
    Ok((ticks(11) + ticks(12)) / hz)
}

/// One client connection: the socket, TLS when asked, the frame state.
struct Peer {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    ws: Connection,
    /// Plaintext received and not yet parsed.
    inbuf: Vec<u8>,
    /// Bytes for the socket (plain) not yet written.
    outbuf: Vec<u8>,
    key: [u8; 24],
    open: bool,
}

impl Peer {
    fn connect(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> io::Result<Peer> {
        let sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        let tls = match tls {
            Some(c) => Some(
                ClientConnection::new(Arc::clone(c), ServerName::from(addr.ip()))
                    .map_err(io::Error::other)?,
            ),
            None => None,
        };
        let config = Config { max_frame_size: 1 << 24, max_message_size: 1 << 24, auto_pong: true };
        let key = handshake::generate_key();
        let mut peer = Peer {
            sock,
            tls,
            ws: Connection::new(Role::Client, config),
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            key,
            open: false,
        };
        let mut req = Vec::new();
        handshake::write_client_request(&addr.to_string(), "/", &peer.key, &[], &[], &mut req);
        peer.send_plain(&req)?;
        Ok(peer)
    }

    fn send_plain(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => {
                tls.writer().write_all(bytes)?;
            }
            None => self.outbuf.extend_from_slice(bytes),
        }
        self.write_out()
    }

    /// Writes what is waiting, as far as the socket takes it.
    fn write_out(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        while !self.outbuf.is_empty() {
            match self.sock.write(&self.outbuf) {
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads everything the socket has into `inbuf` (decrypted); `false` at EOF.
    fn read_in(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        loop {
            let n = match &mut self.tls {
                Some(tls) => match tls.read_tls(&mut self.sock) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        let state = tls.process_new_packets().map_err(io::Error::other)?;
                        let ready = state.plaintext_bytes_to_read();
                        let start = self.inbuf.len();
                        self.inbuf.resize(start + ready, 0);
                        tls.reader().read_exact(&mut self.inbuf[start..])?;
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
                None => match self.sock.read(scratch) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        self.inbuf.extend_from_slice(&scratch[..n]);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
            };
            let _ = n;
        }
        // Handshake records (TLS) may want an answer.
        self.write_out()?;
        Ok(true)
    }

    /// Parses `inbuf`: the 101, then messages; returns how many messages arrived.
    fn parse(&mut self) -> io::Result<usize> {
        let mut start = 0;
        if !self.open {
            match handshake::parse_response(&self.inbuf, &self.key, &[]) {
                Ok(Some(accepted)) => {
                    self.open = true;
                    start = accepted.head_len;
                }
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        let mut messages = 0;
        loop {
            let (n, event) = self
                .ws
                .read(&mut self.inbuf[start..])
                .map_err(|e| io::Error::other(e.to_string()))?;
            start += n;
            match event {
                Some(Event::Message(_)) => messages += 1,
                Some(_) => {}
                None => break,
            }
        }
        self.inbuf.drain(..start);
        Ok(messages)
    }

    fn send_message(&mut self, payload: &[u8]) -> io::Result<()> {
        self.ws.send_binary(payload).map_err(|e| io::Error::other(e.to_string()))?;
        let out = self.ws.take_output();
        self.send_plain(&out)
    }
}

/// Idle connections held for the memory figure.
const IDLE: usize = 2000;

/// Server RSS growth per idle connection, over [`IDLE`] connections past the upgrade.
fn idle(addr: SocketAddr, pid: u32, tls: Option<Arc<ClientConfig>>) -> io::Result<f64> {
    let before = procs::rss(pid)?;
    let mut poll = Poll::new()?;
    let mut peers = Vec::with_capacity(IDLE);
    let mut scratch = vec![0; 64 << 10];
    let mut events = Events::with_capacity(1024);
    let mut open = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while open < IDLE {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("only {open} of {IDLE} idle connections opened")));
        }
        // Keep at most 64 handshakes going at once.
        while peers.len() < IDLE && peers.len() < open + 64 {
            let mut p = Peer::connect(addr, tls.as_ref())?;
            let token = Token(peers.len());
            poll.registry().register(
                &mut p.sock,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            peers.push(p);
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let p: &mut Peer = &mut peers[ev.token().0];
            if p.open {
                continue;
            }
            if !p.read_in(&mut scratch)? {
                return Err(io::Error::other("the server closed an idle connection"));
            }
            p.parse()?;
            if p.open {
                open += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = procs::rss(pid)?;
    Ok(after.saturating_sub(before) as f64 / IDLE as f64)
}

/// Closed-loop echo over `conns` connections of `size`-byte messages.
fn echo(
    addr: SocketAddr,
    pid: u32,
    tls: Option<Arc<ClientConfig>>,
    conns: usize,
    size: usize,
    o: &Options,
) -> io::Result<Figures> {
    let mut poll = Poll::new()?;
    let mut peers = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut p = Peer::connect(addr, tls.as_ref())?;
        poll.registry().register(&mut p.sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        peers.push(p);
    }
    let payload = vec![0x5a; size];
    let mut scratch = vec![0; 256 << 10];
    let mut events = Events::with_capacity(1024);
    let started = Instant::now();
    let warm_end = started + Duration::from_secs_f64(o.warmup);
    let end = warm_end + Duration::from_secs_f64(o.secs);
    let (mut counted, mut cpu0, mut t0) = (0u64, None, warm_end);
    while Instant::now() < end {
        if cpu0.is_none() && Instant::now() >= warm_end {
            cpu0 = Some(cpu_secs(pid)?);
            t0 = Instant::now();
            counted = 0;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let p = &mut peers[ev.token().0];
            let was_open = p.open;
            if !p.read_in(&mut scratch)? {
                return Err(io::Error::other("the server closed a connection"));
            }
            let got = p.parse()?;
            counted += got as u64;
            if (p.open && !was_open) || got > 0 {
                p.send_message(&payload)?;
            } else {
                p.write_out()?;
            }
        }
    }
    let cpu = cpu_secs(pid)? - cpu0.unwrap_or(0.0);
    let secs = t0.elapsed().as_secs_f64();
    Ok(Figures {
        rate: counted as f64 / secs,
        cpu_us: cpu * 1e6 / counted.max(1) as f64,
        util: cpu / secs,
    })
}

/// Connect + (TLS) + upgrade, [`HANDSHAKERS`] at once, for the measured window.
fn handshakes(
    addr: SocketAddr,
    pid: u32,
    tls: Option<Arc<ClientConfig>>,
    o: &Options,
) -> io::Result<Figures> {
    let mut poll = Poll::new()?;
    let mut slots: Vec<Option<Peer>> = (0..HANDSHAKERS).map(|_| None).collect();
    let mut scratch = vec![0; 64 << 10];
    let mut events = Events::with_capacity(256);
    let started = Instant::now();
    let warm_end = started + Duration::from_secs_f64(o.warmup);
    let end = warm_end + Duration::from_secs_f64(o.secs);
    let (mut done, mut cpu0, mut t0) = (0u64, None, warm_end);
    let start = |slots: &mut Vec<Option<Peer>>, i: usize, poll: &mut Poll| -> io::Result<()> {
        let mut p = Peer::connect(addr, tls.as_ref())?;
        poll.registry().register(&mut p.sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        slots[i] = Some(p);
        Ok(())
    };
    for i in 0..HANDSHAKERS {
        start(&mut slots, i, &mut poll)?;
    }
    while Instant::now() < end {
        if cpu0.is_none() && Instant::now() >= warm_end {
            cpu0 = Some(cpu_secs(pid)?);
            t0 = Instant::now();
            done = 0;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(p) = slots[i].as_mut() else { continue };
            if !p.read_in(&mut scratch)? {
                return Err(io::Error::other("the server closed a handshaking connection"));
            }
            p.parse()?;
            if p.open {
                if let Some(mut p) = slots[i].take() {
                    poll.registry().deregister(&mut p.sock)?;
                }
                done += 1;
                start(&mut slots, i, &mut poll)?;
            } else {
                p.write_out()?;
            }
        }
    }
    let cpu = cpu_secs(pid)? - cpu0.unwrap_or(0.0);
    let secs = t0.elapsed().as_secs_f64();
    Ok(Figures {
        rate: done as f64 / secs,
        cpu_us: cpu * 1e6 / done.max(1) as f64,
        util: cpu / secs,
    })
}
