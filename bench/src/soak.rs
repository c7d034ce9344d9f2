//! `ringside-bench soak`: a server under mixed abuse for minutes, with normal clients beside the
//! attackers. It checks that no normal client loses a message and reports, every period, the
//! server's resident memory and the latency normal clients see.
//!
//! The server is this binary's `soak-serve` (an echo server that also speaks `sub TOPIC` and
//! `pub TOPIC PAYLOAD`), in a child process with default settings, so its memory is its own.
//! Attackers, each in its own threads, reconnecting whenever the server drops them:
//!
//! - unfinished messages: announce a 1 MiB message, send 1 KiB of it, hold;
//! - non-reading subscribers of the busy topic (4 KiB receive buffers, never read);
//! - a pong flood: unsolicited pongs, flat out;
//! - slowloris: upgrade requests trickled a byte a second;
//! - a publish storm: publishers sending 500-byte messages on the busy topic, flat out.
//!
//! Normal clients: echo clients (a numbered message every 50 ms each, answer checked), fan-out
//! subscribers of a quiet topic (a numbered publish every 20 ms, every number checked, in
//! order), and a fresh client every 200 ms (connect, upgrade, one echo). A normal client
//! losing, reordering or not receiving a message within 10 s is a loss; the run fails on any.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use ringside::{Handler, Message, Server, WebSocket, Workers};
use ringside_proto::frame::{self, OpCode};
use ringside_proto::{handshake, Config, Connection, Event, Role};

use crate::procs::{self, ServerProcess};

/// How long a normal client waits for any answer before counting a loss.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Options {
    pub secs: u64,
    /// Seconds between report lines.
    pub every: u64,
    pub backend: String,
    pub workers: usize,
    pub non_readers: usize,
    pub publishers: usize,
    pub echo_clients: usize,
    pub subscribers: usize,
}

/// The soak server's handler: `sub T` (answered `ok sub T`), `pub T PAYLOAD`, else echo.
struct Soak;

impl Handler for Soak {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        if let Message::Text(line) = msg {
            if let Some(topic) = line.strip_prefix("sub ") {
                let reply = match ws.subscribe(topic) {
                    Ok(_) => format!("ok sub {topic}"),
                    Err(e) => format!("error {e}"),
                };
                let _ = ws.send_text(&reply);
                return;
            }
            if let Some((topic, payload)) =
                line.strip_prefix("pub ").and_then(|rest| rest.split_once(' '))
            {
                ws.publish(topic, Message::Text(payload));
                return;
            }
        }
        let _ = ws.send(msg);
    }
}

/// Runs the soak server (the `soak-serve` subcommand) until SIGTERM (which ends the process at
/// once: the soak does not measure shutdown), writing its counters to `stats` every second.
pub fn serve(backend: &str, workers: usize, stats: &std::path::Path) -> io::Result<()> {
    let backend = match backend {
        "epoll" => ringside::Backend::Epoll,
        _ => ringside::Backend::IoUring,
    };
    let server = Server::builder()
        .bind("127.0.0.1:0")?
        .backend(backend)
        .workers(Workers::Count(workers))
        .pin(false)
        .build(|| Soak)?;
    println!("listening on {}", server.local_addr());
    let handle = server.spawn()?;
    loop {
        sleep(Duration::from_secs(1));
        let s = handle.stats();
        let line = format!(
            "{} {} {} {} {}\n",
            s.connections, s.buffered_output, s.slow_closed, s.dropped, s.delivered
        );
        std::fs::write(stats, line)?;
    }
}

/// The soak server's counters, as `serve` last wrote them: connections, bytes of buffered
/// output, slow consumers closed.
fn server_stats(path: &std::path::Path) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<u64> = text.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    (
        v.first().copied().unwrap_or(0),
        v.get(1).copied().unwrap_or(0),
        v.get(2).copied().unwrap_or(0),
    )
}

/// The soak server's settings that matter here (it runs with the defaults).
fn server_settings_line(b: &ringside::Builder) -> String {
    let s = b.current();
    format!(
        "soak server: send limit {} B, output budget {} B, socket send buffer {} B",
        s.send_limit, s.max_buffered_output, s.socket_send_buffer
    )
}

/// A blocking WebSocket client on the protocol core.
struct Ws {
    stream: TcpStream,
    conn: Connection,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A connected socket, with a small receive buffer when asked.
fn connect(addr: SocketAddr, recv_buffer: Option<usize>) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.connect_timeout(&addr.into(), ANSWER_WITHIN)?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(ANSWER_WITHIN))?;
    stream.set_write_timeout(Some(ANSWER_WITHIN))?;
    Ok(stream)
}

/// The upgrade request for `addr`, with `first` (frames) pipelined after it.
fn request(addr: SocketAddr, first: &[u8]) -> (Vec<u8>, [u8; 24]) {
    let key = handshake::generate_key();
    let mut req = Vec::new();
    handshake::write_client_request(&addr.to_string(), "/", &key, &[], &[], &mut req);
    req.extend_from_slice(first);
    (req, key)
}

/// A masked client frame.
fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_frame(&mut out, fin, opcode, Some([1, 2, 3, 4]), payload);
    out
}

impl Ws {
    /// Connects and upgrades.
    fn open(addr: SocketAddr) -> io::Result<Ws> {
        let mut stream = connect(addr, None)?;
        let (req, key) = request(addr, &[]);
        stream.write_all(&req)?;
        let mut buf = vec![0; 64 << 10];
        let mut end = 0;
        loop {
            let n = stream.read(&mut buf[end..])?;
            if n == 0 {
                return Err(io::Error::other("closed during the upgrade"));
            }
            end += n;
            match handshake::parse_response(&buf[..end], &key, &[]) {
                Ok(Some(ok)) => {
                    let config = Config {
                        max_frame_size: 1 << 30,
                        max_message_size: 1 << 30,
                        auto_pong: true,
                    };
                    let conn = Connection::new(Role::Client, config);
                    return Ok(Ws { stream, conn, buf, start: ok.head_len, end });
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }

    fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.conn.send_text(text).map_err(io::Error::other)?;
        let out = self.conn.take_output();
        self.stream.write_all(&out)
    }

    /// The next text message (pings are answered on the way), or an error on timeout/close.
    fn recv_text(&mut self) -> io::Result<String> {
        loop {
            if self.start < self.end {
                let (n, event) = self
                    .conn
                    .read(&mut self.buf[self.start..self.end])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.start += n;
                let text = match event {
                    Some(Event::Message(Message::Text(t))) => Some(t.to_owned()),
                    Some(Event::Close(_)) => {
                        return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "closed"))
                    }
                    _ => None,
                };
                let out = self.conn.take_output();
                if !out.is_empty() {
                    self.stream.write_all(&out)?;
                }
                if let Some(t) = text {
                    return Ok(t);
                }
                continue;
            }
            // A timeout leaves the buffer consumed (read first, then reset the window).
            let n = self.stream.read(&mut self.buf)?;
            self.start = 0;
            self.end = n;
            if self.end == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
            }
        }
    }

    fn subscribe(&mut self, topic: &str) -> io::Result<()> {
        self.send_text(&format!("sub {topic}"))?;
        let reply = self.recv_text()?;
        if reply != format!("ok sub {topic}") {
            return Err(io::Error::other(format!("subscribe answered {reply:?}")));
        }
        Ok(())
    }
}

/// What the run saw, shared by every thread.
#[derive(Default)]
struct Seen {
    /// Normal clients' losses (missing, late past ANSWER_WITHIN, out of order), with why.
    losses: Mutex<Vec<String>>,
    /// Latencies in this period, microseconds: echo round trips and fresh clients.
    echo_us: Mutex<Vec<u64>>,
    fresh_us: Mutex<Vec<u64>>,
    /// Counters.
    echoes: AtomicU64,
    fanned: AtomicU64,
    attack_reconnects: AtomicU64,
    storm: AtomicU64,
}

impl Seen {
    fn lose(&self, why: String) {
        let mut losses = self.losses.lock().unwrap();
        if losses.len() < 100 {
            losses.push(why);
        }
    }
}

fn quantiles(v: &mut [u64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    (q(0.5), q(0.99), q(1.0))
}

/// Runs the soak and prints its report; an error if a normal client lost a message.
pub fn main(o: Options) -> io::Result<()> {
    let bins = procs::bin_dir()?;
    let stats = std::env::temp_dir().join(format!("ringside-soak-{}.stats", std::process::id()));
    let args: Vec<String> = [
        "soak-serve",
        "--backend",
        &o.backend,
        "--workers",
        &o.workers.to_string(),
        "--stats",
        &stats.to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let cpus = format!("0-{}", std::thread::available_parallelism().map_or(1, |n| n.get()) - 1);
    let mut server = ServerProcess::start(&cpus, &bins.join("ringside-bench"), &args)?;
    let addr = server.addr;
    let pid = server.pid();
    println!(
        "soak: {} backend, {} worker(s), {} s; machine: {}; {}",
        o.backend,
        o.workers,
        o.secs,
        procs::machine(),
        server_settings_line(&Server::builder()),
    );
    println!(
        "attackers: {} non-reading subscribers, {} storm publishers, 1 pong flood, 50 \
         unfinished messages, 50 slowloris; normal: {} echo clients, {} fan-out subscribers, \
         a fresh client every 200 ms",
        o.non_readers, o.publishers, o.echo_clients, o.subscribers
    );
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(o.secs);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let spawn = |threads: &mut Vec<JoinHandle<()>>, f: Box<dyn FnOnce() + Send>| {
        threads.push(std::thread::spawn(f));
    };
    // Normal fan-out first, so that its subscribers are in before the storm.
    let quiet = Arc::new(AtomicU64::new(0));
    for _ in 0..o.subscribers {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let mut sub = Ws::open(addr)?;
        sub.subscribe("quiet")?;
        spawn(&mut threads, Box::new(move || fan_out_subscriber(sub, &seen, &stop)));
    }
    {
        let (seen, stop, quiet) = (Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&quiet));
        let publisher = Ws::open(addr)?;
        spawn(&mut threads, Box::new(move || quiet_publisher(publisher, &seen, &stop, &quiet)));
    }
    for _ in 0..o.echo_clients {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let c = Ws::open(addr)?;
        spawn(&mut threads, Box::new(move || echo_client(c, &seen, &stop)));
    }
    {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        spawn(&mut threads, Box::new(move || fresh_clients(addr, &seen, &stop)));
    }
    // The attackers.
    for part in 0..4 {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let n = o.non_readers / 4 + usize::from(part < o.non_readers % 4);
        spawn(&mut threads, Box::new(move || non_readers(addr, n, &seen, &stop)));
    }
    for _ in 0..o.publishers {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        spawn(&mut threads, Box::new(move || storm(addr, &seen, &stop)));
    }
    {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        spawn(&mut threads, Box::new(move || pong_flood(addr, &seen, &stop)));
    }
    {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        spawn(&mut threads, Box::new(move || unfinished(addr, 50, &seen, &stop)));
    }
    {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        spawn(&mut threads, Box::new(move || slowloris(addr, 50, &seen, &stop)));
    }
    println!(
        "{:>5} {:>8} {:>7} {:>9} {:>8} {:>9} {:>24} {:>24} {:>9} {:>8} {:>9} {:>10} {:>6}",
        "t s",
        "RSS MiB",
        "conns",
        "buffered",
        "slow",
        "echoes",
        "echo p50/p99/max ms",
        "fresh p50/p99/max ms",
        "fanned",
        "quiet",
        "storm",
        "reconnects",
        "losses"
    );
    println!("(buffered: MiB of output the server counts against its budget; slow: slow consumers closed)");
    let started = Instant::now();
    let mut peak = 0;
    let mut all_echo = Vec::new();
    let mut all_fresh = Vec::new();
    while Instant::now() < deadline {
        sleep(Duration::from_secs(o.every).min(deadline - Instant::now()));
        if !server.alive() {
            stop.store(true, Ordering::Relaxed);
            return Err(io::Error::other("the server process died"));
        }
        let rss = procs::rss(pid)?;
        peak = peak.max(rss);
        let mut echo = std::mem::take(&mut *seen.echo_us.lock().unwrap());
        let mut fresh = std::mem::take(&mut *seen.fresh_us.lock().unwrap());
        all_echo.extend_from_slice(&echo);
        all_fresh.extend_from_slice(&fresh);
        let (e50, e99, emax) = quantiles(&mut echo);
        let (f50, f99, fmax) = quantiles(&mut fresh);
        let (conns, buffered, slow) = server_stats(&stats);
        println!(
            "{:>5} {:>8.1} {:>7} {:>9.1} {:>8} {:>9} {:>24} {:>24} {:>9} {:>8} {:>9} {:>10} {:>6}",
            started.elapsed().as_secs(),
            rss as f64 / 1048576.0,
            conns,
            buffered as f64 / 1048576.0,
            slow,
            seen.echoes.load(Ordering::Relaxed),
            format!("{e50:.1}/{e99:.1}/{emax:.1}"),
            format!("{f50:.1}/{f99:.1}/{fmax:.1}"),
            seen.fanned.load(Ordering::Relaxed),
            quiet.load(Ordering::Relaxed),
            seen.storm.load(Ordering::Relaxed),
            seen.attack_reconnects.load(Ordering::Relaxed),
            seen.losses.lock().unwrap().len(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Every client gone: what does the server keep once it has been quiet (it gives memory
    // back after 3 quiet seconds)?
    sleep(Duration::from_secs(5));
    let after = procs::rss(pid)?;
    let _ = std::fs::remove_file(&stats);
    let (e50, e99, emax) = quantiles(&mut all_echo);
    let (f50, f99, fmax) = quantiles(&mut all_fresh);
    println!(
        "summary: {} s; server RSS peak {:.1} MiB, {:.1} MiB 5 s after every client left; echo \
         round trip p50/p99/max {e50:.1}/{e99:.1}/{emax:.1} ms over {} echoes; fresh client \
         (connect, upgrade, echo) p50/p99/max {f50:.1}/{f99:.1}/{fmax:.1} ms over {}; {} \
         quiet publishes, each to {} subscribers ({} received); {} storm publishes; {} \
         attacker reconnects",
        o.secs,
        peak as f64 / 1048576.0,
        after as f64 / 1048576.0,
        all_echo.len(),
        all_fresh.len(),
        quiet.load(Ordering::Relaxed),
        o.subscribers,
        seen.fanned.load(Ordering::Relaxed),
        seen.storm.load(Ordering::Relaxed),
        seen.attack_reconnects.load(Ordering::Relaxed),
    );
    let losses = seen.losses.lock().unwrap().clone();
    if losses.is_empty() {
        println!("no normal client lost a message");
        Ok(())
    } else {
        for l in &losses {
            println!("loss: {l}");
        }
        Err(io::Error::other(format!("{} normal-client losses", losses.len())))
    }
}

/// Reads the quiet topic and checks every number arrives, in order.
fn fan_out_subscriber(mut sub: Ws, seen: &Seen, stop: &AtomicBool) {
    let mut next = 0u64;
    sub.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match sub.recv_text() {
            Ok(t) => {
                let n: u64 = t.strip_prefix("q ").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
                if n != next {
                    seen.lose(format!("fan-out subscriber expected q {next}, got {t:?}"));
                    return;
                }
                next += 1;
                last = Instant::now();
                seen.fanned.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if last.elapsed() > ANSWER_WITHIN {
                    seen.lose(format!("fan-out subscriber got nothing for 10 s after q {next}"));
                    return;
                }
            }
            Err(e) => {
                seen.lose(format!("fan-out subscriber dropped after q {next}: {e}"));
                return;
            }
        }
    }
}

/// Publishes `q N` on the quiet topic every 20 ms.
fn quiet_publisher(mut p: Ws, seen: &Seen, stop: &AtomicBool, count: &AtomicU64) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = p.send_text(&format!("pub quiet q {n}")) {
            seen.lose(format!("the quiet publisher failed at q {n}: {e}"));
            return;
        }
        n += 1;
        count.store(n, Ordering::Relaxed);
        sleep(Duration::from_millis(20));
    }
}

/// A numbered message every 50 ms, each answered by its echo.
fn echo_client(mut c: Ws, seen: &Seen, stop: &AtomicBool) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let text = format!("echo {n}");
        let sent = Instant::now();
        let result = c.send_text(&text).and_then(|()| c.recv_text());
        match result {
            Ok(t) if t == text => {
                seen.echo_us.lock().unwrap().push(sent.elapsed().as_micros() as u64);
                seen.echoes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(t) => {
                seen.lose(format!("echo client sent {text:?}, got {t:?}"));
                return;
            }
            Err(e) => {
                seen.lose(format!("echo client lost {text:?}: {e}"));
                return;
            }
        }
        n += 1;
        sleep(Duration::from_millis(50));
    }
}

/// A fresh client every 200 ms: connect, upgrade, one echo.
fn fresh_clients(addr: SocketAddr, seen: &Seen, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = Ws::open(addr).and_then(|mut c| {
            c.send_text("fresh")?;
            c.recv_text()
        });
        match result {
            Ok(t) if t == "fresh" => {
                seen.fresh_us.lock().unwrap().push(started.elapsed().as_micros() as u64)
            }
            Ok(t) => seen.lose(format!("a fresh client got {t:?}")),
            Err(e) => seen.lose(format!("a fresh client was not served: {e}")),
        }
        sleep(Duration::from_millis(200));
    }
}

/// Whether the server has closed `s` (its FIN or reset arrived): the TCP state, since a
/// client that never reads would see the EOF only after everything queued before it.
fn peer_gone(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `info`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // 1: TCP_ESTABLISHED.
    r != 0 || info.tcpi_state != 1
}

/// `n` subscribers of the busy topic that never read; each one the server drops is replaced.
fn non_readers(addr: SocketAddr, n: usize, seen: &Seen, stop: &AtomicBool) {
    let sub = client_frame(true, OpCode::Text, b"sub busy");
    let mut held: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Drop the ones the server closed (a readable EOF or reset shows in a peek).
        held.retain(|s| !peer_gone(s));
        while held.len() < n && !stop.load(Ordering::Relaxed) {
            match connect(addr, Some(4 << 10)) {
                Ok(mut s) => {
                    let (req, _) = request(addr, &sub);
                    if s.write_all(&req).is_ok() {
                        held.push(s);
                        seen.attack_reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => sleep(Duration::from_millis(100)),
            }
        }
        sleep(Duration::from_millis(500));
    }
}

/// Publishes 500-byte messages on the busy topic flat out.
fn storm(addr: SocketAddr, seen: &Seen, stop: &AtomicBool) {
    let payload = "s".repeat(490);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut p) = Ws::open(addr) else {
            sleep(Duration::from_millis(100));
            continue;
        };
        let mut batch = Vec::new();
        'publishing: while !stop.load(Ordering::Relaxed) {
            batch.clear();
            for i in 0..64u64 {
                if p.conn.send_text(&format!("pub busy {i:08} {payload}")).is_err() {
                    break 'publishing;
                }
            }
            batch.extend_from_slice(&p.conn.take_output());
            if p.stream.write_all(&batch).is_err() {
                break;
            }
            seen.storm.fetch_add(64, Ordering::Relaxed);
        }
        seen.attack_reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unsolicited pongs flat out, reading (and discarding) whatever the server sends.
fn pong_flood(addr: SocketAddr, seen: &Seen, stop: &AtomicBool) {
    let pongs: Vec<u8> = (0..256).flat_map(|_| client_frame(true, OpCode::Pong, b"pong")).collect();
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = Ws::open(addr) else {
            sleep(Duration::from_millis(100));
            continue;
        };
        c.stream.set_nonblocking(true).ok();
        let mut sink = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            match c.stream.write(&pongs) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sleep(Duration::from_millis(1)),
                Err(_) => break,
            }
            while let Ok(n @ 1..) = c.stream.read(&mut sink) {
                let _ = n;
            }
        }
        seen.attack_reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// `n` connections that announce a 1 MiB message, send 1 KiB of it and hold.
fn unfinished(addr: SocketAddr, n: usize, seen: &Seen, stop: &AtomicBool) {
    let mut start = Vec::new();
    let header = frame::encode_header(true, OpCode::Binary, Some([9, 9, 9, 9]), 1 << 20);
    start.extend_from_slice(header.as_bytes());
    start.extend_from_slice(&[0x55; 1024]);
    let mut held: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        held.retain(|s| !peer_gone(s));
        while held.len() < n && !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = connect(addr, None) else {
                sleep(Duration::from_millis(100));
                break;
            };
            let (req, _) = request(addr, &start);
            if s.write_all(&req).is_ok() {
                held.push(s);
                seen.attack_reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        sleep(Duration::from_millis(500));
    }
}

/// `n` connections trickling their upgrade request, a byte a second.
fn slowloris(addr: SocketAddr, n: usize, seen: &Seen, stop: &AtomicBool) {
    let (req, _) = request(addr, &[]);
    let mut held: Vec<(TcpStream, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        held.retain_mut(|(s, sent)| {
            let ok = s.write_all(&req[*sent..*sent + 1]).is_ok();
            *sent = (*sent + 1).min(req.len() - 2);
            ok
        });
        while held.len() < n {
            let Ok(s) = connect(addr, None) else { break };
            held.push((s, 0));
            seen.attack_reconnects.fetch_add(1, Ordering::Relaxed);
        }
        sleep(Duration::from_secs(1));
    }
}
