//! The output side under abuse, over real TCP on both backends: thousands of subscribers that
//! never read while a publisher sends flat out (the output budget holds, fresh clients are
//! answered, memory goes back after), conflated publishes on one key to non-readers (memory
//! flat), socket send buffers capped, and connections with thousands of subscriptions closing
//! at once.
//!
//! The server runs in this process, so its memory is this process's resident set. The tests
//! of this file run one at a time (each holds [`serial`]) so that neither their memory nor
//! their descriptors (5,000 connections use 10,000 on epoll) add up. The figures each prints
//! (`--nocapture`) are the ones docs/benchmarks.md quotes. Timings come from an unoptimised
//! build on whatever machine runs the tests (ours: a 2-core VM shared with other builds), so
//! the latency bounds leave room for that; each states what it would be without the fix.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringside::{Backend, Builder, Handler, Message, SlowConsumer, TopicPolicy, WebSocket};
use ringside_proto::{frame, handshake, OpCode};
use ringside_tests::{each_backend, Client, Seen, TestServer, WAIT};
use socket2::{Domain, Socket, Type};

/// The output budget the tests configure (the default is sized for the machine).
const BUDGET: usize = 64 << 20;
/// What the process may hold beyond the budget while it is enforced: connection state (5,000
/// connections), the publications in flight between threads, allocator slack, the test's own
/// clients.
const OVERHEAD: u64 = 48 << 20;

/// One test at a time in this binary.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `sub T` (counted, no answer), `subn PREFIX N` (answers `ok N`), `pub T PAYLOAD`,
/// `kpub T KEY PAYLOAD`; anything else is echoed.
struct Hub {
    subscribed: Arc<AtomicUsize>,
}

impl Handler for Hub {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(line) = msg else { return };
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("sub"), Some(t), None, None) => {
                ws.subscribe(t).unwrap();
                self.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            (Some("subn"), Some(prefix), Some(n), None) => {
                let n: usize = n.parse().unwrap();
                for i in 0..n {
                    ws.subscribe(&format!("{prefix}{i}")).unwrap();
                }
                let _ = ws.send_text(&format!("ok {n}"));
            }
            (Some("pub"), Some(t), Some(first), rest) => {
                let payload = rest.map_or_else(|| first.to_owned(), |r| format!("{first} {r}"));
                ws.publish(t, Message::Text(&payload));
            }
            (Some("kpub"), Some(t), Some(key), Some(payload)) => {
                ws.publish_keyed(t, key.parse().unwrap(), Message::Text(payload));
            }
            _ => {
                let _ = ws.send(msg);
            }
        }
    }
}

/// A server with a small io_uring buffer pool (whose pages would otherwise count as growth),
/// and the count of `sub` commands it handled.
fn start(
    backend: Backend,
    configure: impl FnOnce(Builder) -> Builder,
) -> (TestServer, Arc<AtomicUsize>) {
    let subscribed = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&subscribed);
    let server = TestServer::start(
        backend,
        |b| configure(b.recv_buffers(256)),
        move || Hub { subscribed: Arc::clone(&count) },
    );
    (server, subscribed)
}

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS");
    kib << 10
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// A masked client text frame.
fn text_frame(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_frame(&mut out, true, OpCode::Text, Some([7, 7, 7, 7]), text.as_bytes());
    out
}

/// A client that sends its upgrade request and `first` (frames) and never reads a byte: a
/// 4 KiB receive buffer, no userland buffer at all.
fn deaf(addr: SocketAddr, first: &[u8]) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4 << 10).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut stream: TcpStream = socket.into();
    let mut req = Vec::new();
    handshake::write_client_request(
        &addr.to_string(),
        "/",
        &handshake::generate_key(),
        &[],
        &[],
        &mut req,
    );
    req.extend_from_slice(first);
    stream.write_all(&req).unwrap();
    stream
}

/// Waits (bounded by `within`) until `ok` holds.
fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10));
    }
}

/// A fresh client connects, upgrades and gets an echo: how long that took.
fn probe(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut c = Client::connect(addr).expect("a fresh client is accepted");
    c.send_text("still there?").unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Text("still there?".into()));
    started.elapsed()
}

/// Publishes `line(i)` flat out from a client until `stop`, in batches of 64 frames per
/// write; returns how many.
fn publisher(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    line: impl Fn(u64) -> String + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut c = Client::connect(addr).unwrap();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                c.conn.send_text(&line(sent)).unwrap();
                sent += 1;
            }
            if c.flush().is_err() {
                break;
            }
        }
        sent
    })
}

/// The `q`-quantile of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

each_backend! {
    fn five_thousand_non_readers_stay_within_the_budget_and_fresh_clients_are_answered(backend) {
        let _serial = serial();
        const SUBSCRIBERS: usize = 5_000;
        // Default flags but the budget, and small socket buffers: unoptimised, the server fans
        // out about 400,000 messages a second here, so with the default 256 KiB per socket
        // the crowd would take all of the test's 5 s to fill the kernel's buffers before the
        // budget had anything to do.
        let (server, subscribed) =
            start(backend, |b| b.max_buffered_output(BUDGET).socket_send_buffer(16 << 10));
        let addr = server.addr;
        let base = rss();
        let sub = text_frame("sub busy");
        let mut crowd = Vec::with_capacity(SUBSCRIBERS);
        for i in 0..SUBSCRIBERS {
            crowd.push(deaf(addr, &sub));
            if i % 500 == 499 {
                // Keep within the listen backlog.
                wait_until("subscriptions", WAIT, || subscribed.load(Ordering::Relaxed) > i - 100);
            }
        }
        wait_until("every subscription", WAIT, || subscribed.load(Ordering::Relaxed) == SUBSCRIBERS);
        let connected = rss();
        let stop = Arc::new(AtomicBool::new(false));
        let pad = "x".repeat(490);
        let publishing = publisher(addr, Arc::clone(&stop), move |i| format!("pub busy {i:08} {pad}"));
        let started = Instant::now();
        let mut latencies = Vec::new();
        let mut peak = 0;
        let mut most_buffered = 0;
        while started.elapsed() < Duration::from_secs(5) {
            peak = peak.max(rss());
            most_buffered = most_buffered.max(server.handle().stats().buffered_output);
            latencies.push(probe(addr));
            sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        let published = publishing.join().unwrap();
        let stats = server.handle().stats();
        let (p50, p99, worst) = (
            quantile(&mut latencies, 0.5),
            quantile(&mut latencies, 0.99),
            quantile(&mut latencies, 1.0),
        );
        eprintln!(
            "{backend:?}: {SUBSCRIBERS} non-readers, {published} publishes of 500 B: RSS {:.0} MiB \
             before, {:.0} MiB connected, {:.0} MiB peak (budget {} MiB); most buffered output \
             counted {:.0} MiB; fresh client connect+upgrade+echo p50 {p50:?} p99 {p99:?} max \
             {worst:?} over {} probes; {stats:?}",
            mib(base), mib(connected), mib(peak), BUDGET >> 20, mib(most_buffered), latencies.len(),
        );
        assert!(published > 2_000, "the publisher was held back: {published}");
        assert!(
            peak <= base + BUDGET as u64 + OVERHEAD,
            "RSS {:.0} MiB past the budget ({} MiB) and overhead ({} MiB) over {:.0} MiB",
            mib(peak), BUDGET >> 20, OVERHEAD >> 20, mib(base)
        );
        assert!(most_buffered <= BUDGET as u64 + (1 << 20), "{most_buffered}");
        assert!(stats.slow_closed >= SUBSCRIBERS as u64, "every non-reader closed: {stats:?}");
        // The goal is 100 ms, which an optimised build meets (docs/benchmarks.md, "Abuse:
        // output"). This build is unoptimised and shares a 2-core machine with the publisher,
        // the probe and, on ours, other builds: reading the publisher's flood alone costs it
        // about 40 ms per io_uring poll (up to the whole buffer ring, 8 MiB of `pub` commands,
        // at about 2.5 us each), and a probe needs two or three iterations. Measured here: p50
        // 36-137 ms and max 120-220 ms on a quiet machine, p50 96-264 ms and max 236-486 ms
        // with other builds running (load 7). Hence 300 ms for the median and 1 s for the
        // slowest. Before the budget, fresh clients waited 10 s and more.
        assert!(p50 < Duration::from_millis(300), "fresh clients waited {p50:?} (median)");
        assert!(worst < Duration::from_secs(1), "a fresh client waited {worst:?}");
        // Memory goes back once the spike has passed.
        drop(crowd);
        wait_until("the crowd to be gone", WAIT, || server.handle().stats().connections == 0);
        let mut after = rss();
        // The server gives memory back once it has been quiet for 3 s, at most every 10 s in a
        // process (and the other backend's run of this test may just have done so).
        // On io_uring the receive ring may also still hold grown chunks: it retires them after
        // 5 quiet seconds, but the buffers of theirs lent to the kernel come back only with
        // traffic, and none comes here (at most its ceiling: 8 chunks of 256 x 32 KiB).
        let ring: u64 = if backend == Backend::IoUring { 64 << 20 } else { 0 };
        let allowed = connected + (16 << 20) + ring;
        let deadline = Instant::now() + Duration::from_secs(15);
        while after > allowed && Instant::now() < deadline {
            sleep(Duration::from_millis(100));
            after = rss();
        }
        eprintln!("{backend:?}: RSS {:.0} MiB after the crowd left", mib(after));
        assert!(after <= allowed, "RSS stayed at {:.0} MiB", mib(after));
    }
}

each_backend! {
    fn conflated_publishes_on_one_key_leave_memory_flat(backend) {
        let _serial = serial();
        let policy = TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: 64 << 10 };
        let (server, subscribed) = start(backend, |b| b.topic("price.*", policy));
        let addr = server.addr;
        let sub = text_frame("sub price.x");
        let crowd: Vec<TcpStream> = (0..20).map(|_| deaf(addr, &sub)).collect();
        wait_until("subscriptions", WAIT, || subscribed.load(Ordering::Relaxed) == 20);
        let stop = Arc::new(AtomicBool::new(false));
        let publishing = publisher(addr, Arc::clone(&stop), |_| "kpub price.x 0 1.23456".to_owned());
        // Past the start (queues filled to the topic's limit), memory must stay where it is.
        sleep(Duration::from_secs(2));
        let (settled, from) = (rss(), server.handle().stats().conflated);
        let mut most = settled;
        for _ in 0..40 {
            sleep(Duration::from_millis(100));
            most = most.max(rss());
        }
        let conflated = server.handle().stats().conflated - from;
        stop.store(true, Ordering::Relaxed);
        let published = publishing.join().unwrap();
        eprintln!(
            "{backend:?}: 20 non-reading subscribers of one key, {published} publishes, \
             {conflated} conflated in 4 s: RSS {:.1} MiB after 2 s, at most {:.1} MiB after",
            mib(settled), mib(most)
        );
        // Each conflation used to leave a 48-byte slot behind: a million of them is 48 MB. The
        // allowance is for the io_uring buffer ring (8 MiB here), whose pages the kernel
        // touches as it cycles through them.
        assert!(conflated >= 1_000_000, "too few conflations to tell: {conflated}");
        assert!(most <= settled + (24 << 20), "grew {:.1} MiB", mib(most - settled));
        drop(crowd);
    }
}

/// Server-side sockets on `port` and their send buffers, from `ss -tmn` (`tb`: the socket's
/// SO_SNDBUF as the kernel holds it).
fn send_buffers(port: u16) -> Vec<u64> {
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established", "sport", "=", &format!(":{port}")])
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("skmem:(")
        .skip(1)
        .filter_map(|s| {
            s.split([',', ')']).find_map(|f| f.strip_prefix("tb")).map(|v| v.parse().unwrap())
        })
        .collect()
}

each_backend! {
    fn socket_send_buffers_are_capped(backend) {
        let _serial = serial();
        let (server, subscribed) = start(backend, |b| b.socket_send_buffer(32 << 10));
        let sub = text_frame("sub big");
        let crowd: Vec<TcpStream> = (0..8).map(|_| deaf(server.addr, &sub)).collect();
        wait_until("subscriptions", WAIT, || subscribed.load(Ordering::Relaxed) == 8);
        // Push a few megabytes at them: autotuning would grow an uncapped buffer.
        let mut c = Client::connect(server.addr).unwrap();
        let chunk = format!("pub big {}", "z".repeat(60_000));
        for _ in 0..64 {
            c.send_text(&chunk).unwrap();
        }
        sleep(Duration::from_millis(300));
        let buffers = send_buffers(server.addr.port());
        eprintln!("{backend:?}: server send buffers {buffers:?}");
        assert!(buffers.len() >= 8, "{buffers:?}");
        // Linux doubles the 32 KiB asked for; the kernel default would be 16 KiB growing to
        // net.ipv4.tcp_wmem's maximum.
        assert!(buffers.iter().all(|&b| b == 64 << 10), "{buffers:?}");
        drop(crowd);
    }
}

each_backend! {
    fn connections_with_thousands_of_subscriptions_close_at_once_without_stalling(backend) {
        let _serial = serial();
        const CONNS: usize = 200;
        const TOPICS: usize = 4096;
        let (server, _) = start(backend, |b| b);
        let addr = server.addr;
        let mut heavy = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let mut c = Client::connect(addr).unwrap();
            c.send_text(&format!("subn shared. {TOPICS}")).unwrap();
            heavy.push(c);
        }
        for c in &mut heavy {
            assert_eq!(c.recv().unwrap(), Seen::Text(format!("ok {TOPICS}")));
        }
        let streams: Vec<TcpStream> = heavy.into_iter().map(|c| c.stream).collect();
        let started = Instant::now();
        drop(streams); // all close at once: 819,200 subscriptions to remove
        let mut latencies = Vec::new();
        // The last probe's own connection may still be closing.
        while server.handle().stats().connections > 1 {
            assert!(started.elapsed() < Duration::from_secs(20), "{:?}", server.handle().stats());
            latencies.push(probe(addr));
            sleep(Duration::from_millis(10));
        }
        let took = started.elapsed();
        let worst = latencies.iter().max().copied().unwrap_or_default();
        eprintln!(
            "{backend:?}: {CONNS} connections x {TOPICS} subscriptions closed in {took:?}; \
             {} probes meanwhile, slowest {worst:?}",
            latencies.len()
        );
        // O(subscriptions): about a microsecond each unoptimised. The linear back-reference
        // search this replaced cost up to 4,096 steps per removal: tens of seconds here.
        assert!(took < Duration::from_secs(5), "closing took {took:?}");
    }
}
