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
        let mut child = Command::new(std::env::current_exe()?)
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
