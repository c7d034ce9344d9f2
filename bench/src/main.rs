//! `ringside-bench`: measurements that need a running server.
//!
//! - `idle`: userland memory per idle connection. Starts a Ringside echo server in a child
//!   process (this binary, `serve` subcommand), warms it up, opens N idle WebSocket connections
//!   and reports the server's RSS growth per connection, at N/2 and at N.
//! - `serve`: the echo server the other subcommands start (not meant to be run by hand).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use ringside::{Handler, Message, Server, WebSocket, Workers};
use ringside_proto::handshake;

#[derive(Debug, Parser)]
#[command(name = "ringside-bench", about = "Ringside measurements that need a running server")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Server RSS per idle connection.
    Idle {
        /// Idle connections to hold.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Backend of the server under test.
        #[arg(long, value_enum, default_value = "io-uring")]
        backend: BackendArg,
    },
    /// Server CPU per echoed message: a closed-loop echo load (C connections, K messages of S
    /// bytes in flight each) against a server pinned to CPU 0, the client pinned to CPU 1.
    Echo {
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 20)]
        size: usize,
        /// Seconds measured (after a 1 s warm-up).
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Runs per backend (servers alternate); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Run an echo server (used by the other subcommands).
    Serve {
        #[arg(long, value_enum)]
        backend: BackendArg,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    IoUring,
    Epoll,
}

impl BackendArg {
    fn flag(self) -> &'static str {
        match self {
            BackendArg::IoUring => "io-uring",
            BackendArg::Epoll => "epoll",
        }
    }
}

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

fn main() {
    let args = Args::parse();
    let result = match args.command {
        Cmd::Serve { backend, listen, workers } => serve(backend, listen, workers),
        Cmd::Idle { conns, backend } => idle(conns, backend),
        Cmd::Echo { conns, inflight, size, secs, runs } => echo(conns, inflight, size, secs, runs),
    };
    if let Err(e) = result {
        eprintln!("ringside-bench: {e}");
        std::process::exit(1);
    }
}

fn serve(backend: BackendArg, listen: SocketAddr, workers: usize) -> io::Result<()> {
    let server = Server::builder()
        .bind(listen)?
        .backend(match backend {
            BackendArg::IoUring => ringside::Backend::IoUring,
            BackendArg::Epoll => ringside::Backend::Epoll,
        })
        .workers(Workers::Count(workers))
        .idle_timeout(Duration::from_secs(3600))
        .build(|| Echo)?;
    println!("listening on {}", server.local_addr());
    server.run()
}

/// A child server process, stopped on drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(backend: BackendArg) -> io::Result<Self> {
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg("0")
            .arg(std::env::current_exe()?)
            .args(["serve", "--backend", backend.flag()])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| io::Error::other(format!("server did not start: {line:?}")))?;
        Ok(ServerProcess { child, addr })
    }

    /// User + system CPU time the server used so far, from /proc/PID/stat.
    fn cpu(&self) -> io::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces) start past the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after the name.
        // SAFETY: sysconf(3) has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / hz))
    }

    /// Resident set size in bytes, from /proc.
    fn rss(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid we spawned; at worst it names an exited child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a WebSocket connection (handshake done) and leaves it idle.
fn open(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let key = handshake::generate_key();
    let mut req = Vec::with_capacity(256);
    handshake::write_client_request(&addr.to_string(), "/", &key, &[], &[], &mut req);
    stream.write_all(&req)?;
    let mut buf = [0u8; 512];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Err(io::Error::other("server closed during the handshake"));
        }
        len += n;
        match handshake::parse_response(&buf[..len], &key, &[]) {
            Ok(Some(_)) => return Ok(stream),
            Ok(None) if len < buf.len() => {}
            Ok(None) => return Err(io::Error::other("handshake response too long")),
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// Opens `n` connections, echoing one small message on each (so each used a receive buffer
/// and a send buffer once), then closes them: after this the server's pools and buffer ring
/// are as warm as they will get, and RSS growth from here on is per-connection state.
fn warm_up(addr: SocketAddr, n: usize) -> io::Result<()> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = open(addr)?;
        let mut frame = Vec::new();
        ringside_proto::frame::write_frame(
            &mut frame,
            true,
            ringside_proto::OpCode::Text,
            Some(rand_key()),
            b"warm up",
        );
        s.write_all(&frame)?;
        conns.push(s);
    }
    for s in &mut conns {
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf[..9])?;
    }
    drop(conns);
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

fn rand_key() -> [u8; 4] {
    let t = Instant::now().elapsed().subsec_nanos();
    t.to_le_bytes()
}

fn idle(conns: usize, backend: BackendArg) -> io::Result<()> {
    let server = ServerProcess::start(backend)?;
    let warm = (conns / 10).clamp(1, 1_000);
    warm_up(server.addr, warm)?;
    let base = server.rss()?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(conns);
    let mut half_rss = 0;
    for i in 0..conns {
        held.push(open(server.addr)?);
        if i + 1 == conns / 2 {
            std::thread::sleep(Duration::from_millis(500));
            half_rss = server.rss()?;
        }
    }
    let ramp = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let full_rss = server.rss()?;
    let per_conn = (full_rss.saturating_sub(base)) as f64 / conns as f64;
    let slope = (full_rss.saturating_sub(half_rss)) as f64 / (conns - conns / 2) as f64;
    println!(
        "backend {}: {conns} idle connections opened in {:.2} s; server RSS {:.1} MiB after \
         warm-up ({warm} connections), {:.1} MiB at {}, {:.1} MiB at {conns}",
        backend.flag(),
        ramp.as_secs_f64(),
        base as f64 / 1048576.0,
        half_rss as f64 / 1048576.0,
        conns / 2,
        full_rss as f64 / 1048576.0,
    );
    println!(
        "userland memory per idle connection: {per_conn:.0} B (RSS delta / connections), \
         {slope:.0} B (slope from {} to {conns})",
        conns / 2
    );
    drop(held);
    Ok(())
}

/// One closed-loop echo run: returns (messages per second, server CPU microseconds per message).
fn echo_run(
    backend: BackendArg,
    conns: usize,
    inflight: usize,
    size: usize,
    secs: u64,
) -> io::Result<(f64, f64)> {
    use mio::net::TcpStream as MioStream;
    use mio::{Events, Interest, Poll, Token};

    let server = ServerProcess::start(backend)?;
    if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.get(1).copied()) {
        core_affinity::set_for_current(core);
    }
    let mut frame = Vec::new();
    ringside_proto::frame::write_frame(
        &mut frame,
        true,
        ringside_proto::OpCode::Binary,
        Some([1, 2, 3, 4]),
        &vec![b'x'; size],
    );
    let reply_len = size + if size < 126 { 2 } else { 4 };
    let mut poll = Poll::new()?;
    let mut streams = Vec::with_capacity(conns);
    for i in 0..conns {
        let s = open(server.addr)?;
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        let mut s = MioStream::from_std(s);
        poll.registry().register(&mut s, Token(i), Interest::READABLE)?;
        streams.push(s);
    }
    // Unread reply bytes per connection; replies are counted, not parsed (the server only echoes).
    let mut pending = vec![0usize; conns];
    let burst: Vec<u8> = frame.repeat(inflight);
    for s in &mut streams {
        write_fully(s, &burst)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::with_capacity(frame.len() * inflight);
    let warm_until = Instant::now() + Duration::from_secs(1);
    let mut measuring: Option<(Instant, Duration, u64)> = None;
    let mut echoed: u64 = 0;
    loop {
        let now = Instant::now();
        if measuring.is_none() && now >= warm_until {
            measuring = Some((now, server.cpu()?, echoed));
        }
        if let Some((start, _, _)) = measuring {
            if now.duration_since(start) >= Duration::from_secs(secs) {
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            loop {
                match streams[i].read(&mut buf) {
                    Ok(0) => return Err(io::Error::other("server closed a connection")),
                    Ok(n) => {
                        pending[i] += n;
                        let done = pending[i] / reply_len;
                        pending[i] %= reply_len;
                        echoed += done as u64;
                        // One write for every reply this read completed: keeps K in flight.
                        out.clear();
                        for _ in 0..done {
                            out.extend_from_slice(&frame);
                        }
                        write_fully(&mut streams[i], &out)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let (start, cpu0, count0) = measuring.expect("measured");
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = server.cpu()?.saturating_sub(cpu0).as_secs_f64();
    let msgs = (echoed - count0) as f64;
    Ok((msgs / elapsed, cpu * 1e6 / msgs.max(1.0)))
}

/// `write_all` on a non-blocking socket: waits out `WouldBlock` (the server is reading).
fn write_fully(stream: &mut impl Write, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn echo(conns: usize, inflight: usize, size: usize, secs: u64, runs: usize) -> io::Result<()> {
    let backends = [BackendArg::IoUring, BackendArg::Epoll];
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); backends.len()];
    for run in 0..runs.max(1) {
        for (b, backend) in backends.iter().enumerate() {
            let r = echo_run(*backend, conns, inflight, size, secs)?;
            eprintln!(
                "run {}: {:>8}: {:>10.0} msg/s, {:.2} us server CPU per message",
                run + 1,
                backend.flag(),
                r.0,
                r.1
            );
            results[b].push(r);
        }
    }
    println!("echo: {conns} connections x {inflight} in flight x {size} B, {secs} s per run, median of {runs}:");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut cpu = Vec::new();
    for (b, backend) in backends.iter().enumerate() {
        let rate = median(results[b].iter().map(|r| r.0).collect());
        let per = median(results[b].iter().map(|r| r.1).collect());
        cpu.push(per);
        println!("  {:>8}: {rate:>10.0} msg/s, {per:.2} us server CPU per message", backend.flag());
    }
    println!("  io_uring / epoll server CPU per message: {:.2}", cpu[0] / cpu[1]);
    Ok(())
}
