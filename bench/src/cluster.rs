//! `ringside-bench cluster`: topics fanned out across Ringside nodes over NATS, against one node
//! serving the same subscribers.
//!
//! Two runs with the same clients: (1) three `ringside --app broadcast --bus nats://...`
//! processes on one `nats-server` (from Debian's package, installed when missing), the
//! subscribers spread evenly over the nodes by connecting to them directly, the publisher on
//! node 0; (2) one node, no bus, every subscriber on it. One publisher sends at a fixed rate
//! (open loop: each payload carries its intended send time, so a stalled server shows as
//! latency, not as a slower publisher). Reported: deliveries per second, publish-to-receive
//! latency for subscribers on the publisher's node (local) and on the others (cross-node, one
//! bus hop more), losses and order, the bus messages per publish from NATS's `/varz`
//! (`in_msgs`, `out_msgs`: one in per publish, one out per interested node, whatever the
//! subscriber count), and server CPU per delivery from /proc.
//!
//! The client is one thread of this process: a publisher thread and one mio loop reading every
//! subscriber, checking each stream's order.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use ringside_proto::{handshake, OpCode};
use ringside_tests::bus_support::{BusServer, Kind};

use crate::procs::{self, ServerProcess};

const TOPIC: &str = "bench";
/// How long the receiver keeps reading after the window, for the window's last publishes.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Options {
    pub subscribers: usize,
    pub nodes: usize,
    pub rate: f64,
    pub size: usize,
    pub secs: f64,
    pub warmup: f64,
    pub backend: String,
    /// Microseconds the reader polls without sleeping after its last event (see `receive`).
    pub spin_us: u64,
    pub server_cpus: String,
    pub load_cpus: String,
    pub doc: PathBuf,
}

/// What one run measured.
#[derive(Debug, Default)]
struct Outcome {
    publishes: u64,
    deliveries: u64,
    expected: u64,
    lost: u64,
    reordered: u64,
    /// Latency in µs, subscribers on the publisher's node / on the others.
    local: Vec<u32>,
    cross: Vec<u32>,
    /// CPU seconds in the window: every node together, and the bus server.
    server_cpu: f64,
    bus_cpu: f64,
    /// This process (the client) over the window.
    client_cpu: f64,
    /// NATS messages in and out over the whole run, and the publishes made in it (the
    /// window's edges would cut publishes in flight).
    bus_in: u64,
    bus_out: u64,
    all_publishes: u64,
    window: f64,
}

pub fn main(o: Options, command: &str) -> io::Result<()> {
    if !(o.rate > 0.0 && o.secs > 0.0 && o.warmup >= 0.0) {
        let why = "--rate and --secs must be more than 0, --warmup at least 0";
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    raise_fd_limit();
    // Before pinning: the machine's CPU count, not this process's share.
    let machine = procs::machine();
    // The client's threads (this one and the publisher it starts) on the load CPUs.
    pin_self(&o.load_cpus)?;
    let bins = procs::bin_dir()?;
    let lifetime = Duration::from_secs_f64(o.warmup + o.secs + 300.0);
    let node_args = |bus: Option<&str>| -> Vec<String> {
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--app", "broadcast"]
            .iter()
            .chain(&["--backend", &o.backend, "--no-pin", "--workers", "1"])
            .chain(&["--idle-timeout", "3600", "--no-idle-ping"])
            .map(|s| (*s).to_owned())
            .collect();
        if let Some(url) = bus {
            args.extend(["--bus".to_owned(), url.to_owned()]);
        }
        args
    };

    eprintln!(
        "cluster: {} nodes on NATS, {} subscribers, {} publishes/s of {} B",
        o.nodes, o.subscribers, o.rate, o.size
    );
    let bus = BusServer::start_for(Kind::Nats, lifetime);
    // The bus is part of the servers' side.
    if let Some(pid) = bus.pid() {
        let pinned = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &o.server_cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !pinned.success() {
            return Err(io::Error::other(format!("taskset -p {pid}: {pinned}")));
        }
    }
    let nodes = (0..o.nodes)
        .map(|_| {
            ServerProcess::start(
                &o.server_cpus,
                &bins.join("ringside"),
                &node_args(Some(&bus.url())),
            )
        })
        .collect::<io::Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let pids: Vec<u32> = nodes.iter().map(ServerProcess::pid).collect();
    let cluster = run(&o, &addrs, &pids, Some(&bus))?;
    drop(nodes);
    drop(bus);
    print_outcome("cluster", &cluster);

    eprintln!("single node: {} subscribers, {} publishes/s", o.subscribers, o.rate);
    let node = ServerProcess::start(&o.server_cpus, &bins.join("ringside"), &node_args(None))?;
    let single = run(&o, &[node.addr], &[node.pid()], None)?;
    drop(node);
    print_outcome("single node", &single);

    let md = report(&o, command, &machine, &cluster, &single);
    println!("{md}");
    procs::splice_doc(&o.doc, "cluster", &md)?;
    eprintln!("wrote {}", o.doc.display());
    Ok(())
}

fn print_outcome(what: &str, r: &Outcome) {
    eprintln!(
        "  {what}: {:.0} deliveries/s, local p50 {} p99 {} µs, cross-node p50 {} p99 {} µs, \
         lost {}, reordered {}, server CPU {:.3} µs/delivery, bus in/out per publish {:.2}/{:.2}, \
         client busy {:.0}%",
        r.deliveries as f64 / r.window,
        pct(&r.local, 0.50),
        pct(&r.local, 0.99),
        pct(&r.cross, 0.50),
        pct(&r.cross, 0.99),
        r.lost,
        r.reordered,
        r.server_cpu * 1e6 / r.deliveries.max(1) as f64,
        r.bus_in as f64 / r.all_publishes.max(1) as f64,
        r.bus_out as f64 / r.all_publishes.max(1) as f64,
        100.0 * r.client_cpu / r.window,
    );
}

/// One run: subscriber `i` on `addrs[i % len]`, the publisher on `addrs[0]`.
fn run(
    o: &Options,
    addrs: &[SocketAddr],
    pids: &[u32],
    bus: Option<&BusServer>,
) -> io::Result<Outcome> {
    let sub = format!("sub {TOPIC}");
    let mut subs = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        let node = i % addrs.len();
        let mut s = connect(addrs[node])?;
        send_text(&mut s, &sub)?;
        subs.push((s, node));
    }
    // Every subscription is answered before anyone publishes.
    for (s, _) in &mut subs {
        let mut got = Vec::new();
        let ack = format!("ok sub {TOPIC}");
        while parse_frame(&got).is_none() {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other("a node closed a subscriber during setup"));
            }
            got.extend_from_slice(&buf[..n]);
        }
        let (payload, _) = parse_frame(&got).expect("checked");
        if payload != ack.as_bytes() {
            return Err(io::Error::other(format!(
                "{:?} answered the subscribe",
                String::from_utf8_lossy(payload)
            )));
        }
    }
    if let Some(bus) = bus {
        // The nodes subscribe on the bus asynchronously; a publish before that would miss them.
        let subject = ringside::bus::subject::subject(TOPIC).expect("a valid topic");
        bus.wait_subscribers(&subject, addrs.len(), Duration::from_secs(10));
    }
    let publisher = connect(addrs[0])?;
    let bus_before = bus.map_or((0, 0), BusServer::nats_messages);

    let epoch = Instant::now();
    let window = (Duration::from_secs_f64(o.warmup), Duration::from_secs_f64(o.warmup + o.secs));
    let published = Arc::new(AtomicU64::new(0));
    let all = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pub_thread = {
        let (published, all, stop) = (Arc::clone(&published), Arc::clone(&all), Arc::clone(&stop));
        let (rate, size) = (o.rate, o.size);
        std::thread::spawn(move || {
            publish(publisher, epoch, window, rate, size, [&published, &all], &stop)
        })
    };
    let result = receive(o, subs, epoch, window, pids, bus);
    stop.store(true, Ordering::Relaxed);
    pub_thread.join().map_err(|_| io::Error::other("the publisher panicked"))??;
    let mut out = result?;
    // Every publish has been delivered (or counted lost) by the end of the drain.
    let bus_after = bus.map_or((0, 0), BusServer::nats_messages);
    (out.bus_in, out.bus_out) = (bus_after.0 - bus_before.0, bus_after.1 - bus_before.1);
    out.all_publishes = all.load(Ordering::Relaxed);
    out.publishes = published.load(Ordering::Relaxed);
    out.expected = out.publishes * o.subscribers as u64;
    out.lost = out.expected.saturating_sub(out.deliveries);
    Ok(out)
}

/// Publishes `rate` per second until the window ends; counts those stamped in the window, and
/// all of them.
fn publish(
    mut s: TcpStream,
    epoch: Instant,
    window: (Duration, Duration),
    rate: f64,
    size: usize,
    [published, all]: [&AtomicU64; 2],
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut text = String::with_capacity(size + 64);
    for n in 0u64.. {
        let due = Duration::from_secs_f64(n as f64 / rate);
        if due >= window.1 || stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(wait) = due.checked_sub(epoch.elapsed()) {
            std::thread::sleep(wait);
        }
        text.clear();
        let _ = write!(text, "pub {TOPIC} {n}:{}:", due.as_nanos());
        while text.len() < size + 5 + TOPIC.len() {
            text.push('x');
        }
        send_text(&mut s, &text)?;
        all.fetch_add(1, Ordering::Relaxed);
        if due >= window.0 {
            published.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// One subscriber's stream.
struct Sub {
    stream: MioStream,
    node: usize,
    buf: Vec<u8>,
    end: usize,
    next: u64,
}

/// Reads every subscriber until the window and the drain are over.
fn receive(
    o: &Options,
    subs: Vec<(TcpStream, usize)>,
    epoch: Instant,
    window: (Duration, Duration),
    pids: &[u32],
    bus: Option<&BusServer>,
) -> io::Result<Outcome> {
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(subs.len());
    for (i, (s, node)) in subs.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        let mut stream = MioStream::from_std(s);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE)?;
        conns.push(Sub { stream, node, buf: vec![0; 16 << 10], end: 0, next: 0 });
    }
    let mut out = Outcome { window: o.secs, ..Outcome::default() };
    let mut events = Events::with_capacity(1024);
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let bus_pid = bus.and_then(BusServer::pid);
    let mut start: Option<(f64, f64, f64)> = None;
    let mut end: Option<(f64, f64, f64)> = None;
    let me = std::process::id();
    let mut last_event = Duration::ZERO;
    let sample = || (cpu(pids), bus_pid.map_or(0.0, cpu_seconds), cpu_seconds(me));
    loop {
        let now = epoch.elapsed();
        if start.is_none() && now >= window.0 {
            start = Some(sample());
        }
        if end.is_none() && now >= window.1 {
            end = Some(sample());
        }
        if now >= window.1 + DRAIN {
            break;
        }
        // Spinning a while after the last event before blocking: over loopback, a sleeping
        // reader makes each of the servers' sends pay for waking it (an inter-processor
        // interrupt), which a client on another host would not cost them.
        let spinning = epoch.elapsed() < last_event + Duration::from_micros(o.spin_us);
        let timeout = if spinning { Duration::ZERO } else { Duration::from_millis(10) };
        poll.poll(&mut events, Some(timeout))?;
        if !events.is_empty() {
            last_event = epoch.elapsed();
        }
        for event in &events {
            let c = &mut conns[event.token().0];
            loop {
                if c.end == c.buf.len() {
                    c.buf.resize(c.buf.len() * 2, 0);
                }
                match c.stream.read(&mut c.buf[c.end..]) {
                    Ok(0) => return Err(io::Error::other("a node closed a subscriber")),
                    Ok(n) => c.end += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let received = epoch.elapsed();
            let mut at = 0;
            while let Some((payload, len)) = parse_frame(&c.buf[at..c.end]) {
                at += len;
                let Some((seq, sent)) = fields(payload) else {
                    return Err(io::Error::other(format!(
                        "an unexpected message: {:?}",
                        String::from_utf8_lossy(&payload[..payload.len().min(60)])
                    )));
                };
                if seq < c.next {
                    out.reordered += 1;
                }
                c.next = c.next.max(seq + 1);
                let sent = Duration::from_nanos(sent);
                if sent >= window.0 && sent < window.1 {
                    out.deliveries += 1;
                    let us = received.saturating_sub(sent).as_micros().min(u128::from(u32::MAX));
                    if c.node == 0 { &mut out.local } else { &mut out.cross }.push(us as u32);
                }
            }
            c.buf.copy_within(at..c.end, 0);
            c.end -= at;
        }
    }
    let (Some(s), Some(e)) = (start, end) else {
        return Err(io::Error::other("the run ended before its window"));
    };
    out.server_cpu = e.0 - s.0;
    out.bus_cpu = e.1 - s.1;
    out.client_cpu = e.2 - s.2;
    out.local.sort_unstable();
    out.cross.sort_unstable();
    Ok(out)
}

/// A blocking WebSocket connection to `addr`, handshake done.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let key = handshake::generate_key();
    let mut req = Vec::with_capacity(256);
    handshake::write_client_request(&addr.to_string(), "/", &key, &[], &[], &mut req);
    s.write_all(&req)?;
    let mut buf = [0u8; 512];
    let mut len = 0;
    loop {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Err(io::Error::other("the node closed during the handshake"));
        }
        len += n;
        match handshake::parse_response(&buf[..len], &key, &[]) {
            // The node sends nothing after the 101 until asked.
            Ok(Some(_)) => return Ok(s),
            Ok(None) if len < buf.len() => {}
            Ok(None) => return Err(io::Error::other("handshake response too long")),
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

fn send_text(s: &mut TcpStream, text: &str) -> io::Result<()> {
    let mut frame = Vec::with_capacity(text.len() + 14);
    ringside_proto::frame::write_frame(
        &mut frame,
        true,
        OpCode::Text,
        Some([1, 2, 3, 4]),
        text.as_bytes(),
    );
    s.write_all(&frame)
}

/// One unmasked server frame at the start of `b`: its payload and its whole length.
fn parse_frame(b: &[u8]) -> Option<(&[u8], usize)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    debug_assert_eq!(b0 & 0x0f, 1, "the broadcast app sends text");
    let (len, head) = match b1 & 0x7f {
        126 => (usize::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)), 4),
        127 => (usize::try_from(u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)).ok()?, 10),
        n => (usize::from(n), 2),
    };
    Some((b.get(head..head + len)?, head + len))
}

/// `SEQ:SENT_NS:` at the start of a payload.
fn fields(payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(3, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// User plus system CPU seconds of `pid`, from /proc (0 if it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, fields)) = stat.rsplit_once(')') else { return 0.0 };
    let ticks: u64 =
        fields.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on every Linux architecture we run on.
    ticks as f64 / 100.0
}

/// The value below which `q` of `sorted` lies (0 if empty).
fn pct(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Pins the calling thread (and the threads it starts later) to `cpus`, a taskset-style list
/// (`1`, `0,1`, `0-3`).
fn pin_self(cpus: &str) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad CPU list {cpus:?}"));
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for part in cpus.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) =
            (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        for cpu in a..=b.min(1023) {
            // SAFETY: `cpu` is below CPU_SETSIZE (1024), and `set` is a live cpu_set_t.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of a live set.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// 3,000 subscribers need more descriptors than the usual soft limit of 1,024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one live `rlimit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn report(
    o: &Options,
    command: &str,
    machine: &str,
    cluster: &Outcome,
    single: &Outcome,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Cluster\n");
    let _ = writeln!(
        md,
        "Machine: {} (a 2-core VM shared with other work: builds ran beside this, so figures \
         are noisy). Date: {}. {} `ringside --app broadcast --bus nats://...` nodes ({} \
         backend, 1 worker each) and `nats-server` {}; the nodes on CPU(s) {}, this benchmark's \
         client (one publisher thread, one thread reading every subscriber, polling {} µs \
         after its last event before it sleeps) on CPU(s) {}. {} \
         subscribers of one topic, spread evenly over the nodes (connected directly); one \
         publisher on node 0 at {} publishes/s of {} B, open loop, measured for {} s after {} s \
         of warm-up. Then the same clients against one node with no bus. Latency is from the \
         intended send time to the subscriber's read; local means a subscriber on the \
         publisher's node, cross-node one on another node (one bus hop more).\n",
        machine,
        procs::today(),
        o.nodes,
        o.backend,
        nats_version(),
        o.server_cpus,
        o.spin_us,
        o.load_cpus,
        o.subscribers,
        o.rate,
        o.size,
        o.secs,
        o.warmup,
    );
    let _ = writeln!(md, "```sh\n{command}\n```\n");
    let _ = writeln!(
        md,
        "| run | deliveries/s | lost | reordered | local p50 / p99 (µs) | cross-node p50 / p99 \
         (µs) | server CPU µs / delivery | bus CPU µs / publish | client busy |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for (name, r) in [("3 nodes over NATS", cluster), ("1 node", single)] {
        let cross = if r.cross.is_empty() {
            "-".to_owned()
        } else {
            format!("{} / {}", pct(&r.cross, 0.5), pct(&r.cross, 0.99))
        };
        let bus = if name == "1 node" {
            "-".to_owned()
        } else {
            format!("{:.1}", r.bus_cpu * 1e6 / r.publishes.max(1) as f64)
        };
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {} | {} | {} / {} | {cross} | {:.3} | {bus} | {:.0}% |",
            r.deliveries as f64 / r.window,
            r.lost,
            r.reordered,
            pct(&r.local, 0.5),
            pct(&r.local, 0.99),
            r.server_cpu * 1e6 / r.deliveries.max(1) as f64,
            100.0 * r.client_cpu / r.window,
        );
    }
    let per = |n: u64| n as f64 / cluster.all_publishes.max(1) as f64;
    let _ = writeln!(
        md,
        "\nBus messages per publish (NATS `/varz` over the whole run, warm-up included): **{:.2} \
         in, {:.2} out** \
         ({} publishes, {} nodes interested besides the publisher's; {} subscribers): one \
         message per interested node, not per subscriber. Server CPU per delivery, 3 nodes / 1 \
         node: **{:.2}x**.",
        per(cluster.bus_in),
        per(cluster.bus_out),
        cluster.all_publishes,
        o.nodes - 1,
        o.subscribers,
        (cluster.server_cpu / cluster.deliveries.max(1) as f64)
            / (single.server_cpu / single.deliveries.max(1) as f64),
    );
    md
}

fn nats_version() -> String {
    std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(
            || "(version unknown)".into(),
            |v| v.trim().trim_start_matches("nats-server: ").to_owned(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_fields() {
        let mut f = Vec::new();
        ringside_proto::frame::write_frame(&mut f, true, OpCode::Text, None, b"12:345:xx");
        assert_eq!(parse_frame(&f), Some((&b"12:345:xx"[..], f.len())));
        assert_eq!(parse_frame(&f[..f.len() - 1]), None, "a partial frame");
        let mut long = Vec::new();
        ringside_proto::frame::write_frame(&mut long, true, OpCode::Text, None, &[b'7'; 300]);
        assert_eq!(parse_frame(&long).map(|(p, n)| (p.len(), n)), Some((300, 304)));
        assert_eq!(fields(b"12:345:xx"), Some((12, 345)));
        assert_eq!(fields(b"ok sub bench"), None);
        assert_eq!(pct(&[1, 2, 3, 4], 0.5), 3);
        assert_eq!(pct(&[], 0.99), 0);
    }
}
