//! Abusive input over real TCP, on every backend: a thousand clients each holding most of a
//! maximum-size message and never finishing it, a flood of unsolicited pongs, a frame trickled
//! a byte at a time, and (the other side of the limits) a maximum-size message echoed with the
//! default settings. The server must keep its memory within its input budget, keep serving
//! everyone else promptly, and close the abusers with the codes the docs promise.
//!
//! Figures the tests print (`--nocapture`) are in docs/benchmarks.md ("Abuse: input").

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringside::{Backend, CloseCode};
use ringside_tests::{each_backend, raw_frame, Client, Echo, Seen, TestServer, WAIT};

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const PONG: u8 = 0xA;

/// The default limits the tests rely on (docs/tuning.md): 1 MiB messages, 256 MiB of input.
const MAX_MESSAGE: usize = 1 << 20;
const BUDGET: u64 = 256 << 20;

/// Held by the tests that load the machine (a thousand clients writing a GiB) and by those that
/// measure latency, so that on a 2-core machine neither runs beside the other: the latency
/// measured is the server's, not the scheduler's.
static MACHINE: Mutex<()> = Mutex::new(());

fn machine() -> MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- a thousand unfinished messages -----------------------------------------------------------

/// Clients that each send all but the last 4 KiB of a maximum-size message.
const HOLDERS: usize = 1000;
/// How much more than the input budget the server process may grow by: a thousand
/// connections' state (a few hundred KiB) and the allocator's slack, the buffers of refused
/// connections and of grown messages that glibc keeps after they are freed (36-40 MiB
/// measured). Without the budget the growth is a GiB.
const SLACK: u64 = 64 << 20;
/// On io_uring, also the receive-buffer ring's ceiling: it starts at 8 MiB (mapped, resident only
/// once filled) and a thousand clients writing at once starve it into growing, up to eight
/// chunks of 256 x 32 KiB: 64 MiB. A fixed cost per worker, not per held message, and given
/// back when quiet.
const RECV_RING_CEILING: u64 = 64 << 20;
/// How long a fresh client may wait for its echo while the thousand hold their messages.
const FRESH_ECHO_WITHIN: Duration = Duration::from_millis(100);
const CHILD: &str = "RINGSIDE_TESTS_ABUSE_CHILD";
const LISTENING: &str = "listening on ";

each_backend! {
    /// The server runs in a child process (this test binary again, running only this test) so
    /// its resident memory is its own, not shared with the clients or with other tests.
    fn a_thousand_unfinished_messages_stay_within_the_budget(backend) {
        if std::env::var_os(CHILD).is_some() {
            return serve_until_stdin_closes(backend);
        }
        let _machine = machine();
        let child = Child::spawn(backend, "a_thousand_unfinished_messages_stay_within_the_budget");
        let addr = child.addr;
        let base = child.rss();
        let t0 = Instant::now();
        let mut clients = Vec::with_capacity(HOLDERS);
        for i in 0..HOLDERS {
            clients.push(Client::connect(addr).unwrap_or_else(|e| panic!("client {i}: {e}")));
        }
        let payload = vec![0x5a; MAX_MESSAGE];
        let frame = Arc::new(raw_frame(FIN | BINARY, &payload));
        let unfinished = frame.len() - (4 << 10);
        // Four writers; a write to a refused client may fail: its answer is read below.
        let started = Instant::now();
        let mut streams: Vec<Vec<TcpStream>> = (0..4).map(|_| Vec::new()).collect();
        for (i, c) in clients.iter().enumerate() {
            streams[i % 4].push(c.stream.try_clone().unwrap());
        }
        let writers: Vec<_> = streams
            .into_iter()
            .map(|mine| {
                let frame = Arc::clone(&frame);
                std::thread::spawn(move || {
                    for mut s in mine {
                        let _ = s.write_all(&frame[..unfinished]);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        eprintln!("{HOLDERS} x {} KiB written in {:?}", unfinished >> 10, started.elapsed());
        // The server has read everything once it stops using CPU.
        child.wait_until_idle(Duration::from_secs(30));
        let rss = child.rss();
        eprintln!("connected, written and parsed in {:?}", t0.elapsed());
        // Who was refused (1013) and who still holds a message.
        let (mut refused, mut holding, mut other) = (0, Vec::new(), Vec::new());
        for (i, c) in clients.iter_mut().enumerate() {
            c.stream.set_nonblocking(true).unwrap();
            let mut head = [0u8; 4];
            match c.stream.read(&mut head) {
                Ok(4) if head[0] == 0x88 && u16::from_be_bytes([head[2], head[3]]) == 1013 => {
                    refused += 1
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => holding.push(i),
                r => other.push(format!("{r:?} {head:?}")),
            }
        }
        let growth = rss.saturating_sub(base);
        eprintln!(
            "server RSS {} MiB before, {} MiB with {} holding and {refused} refused: grew {} MiB \
             (budget {} MiB + slack {} MiB, + {} MiB of receive ring on io_uring)",
            base >> 20,
            rss >> 20,
            holding.len(),
            growth >> 20,
            BUDGET >> 20,
            SLACK >> 20,
            RECV_RING_CEILING >> 20
        );
        assert!(other.is_empty(), "neither held nor refused with 1013: {other:?}");
        let ring = if backend == Backend::IoUring { RECV_RING_CEILING } else { 0 };
        assert!(growth < BUDGET + SLACK + ring, "the server grew by {} MiB", growth >> 20);
        // Each holder costs 1 MiB (its buffer's capacity, capped at the message limit): the
        // budget is used, and not passed.
        let fits = (BUDGET as usize) / MAX_MESSAGE;
        assert!(holding.len() <= fits, "{} connections hold a 1 MiB message each", holding.len());
        assert!(holding.len() >= fits * 3 / 4, "only {} could hold a message", holding.len());

        // A fresh client is served at once: whole messages need no buffer.
        let mut c = Client::connect(addr).unwrap();
        let mut worst = Duration::ZERO;
        for i in 0..20 {
            let text = format!("fresh {i}");
            let t = Instant::now();
            c.send_text(&text).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Text(text));
            worst = worst.max(t.elapsed());
        }
        eprintln!("fresh client's slowest of 20 echoes: {worst:?}");
        assert!(worst < FRESH_ECHO_WITHIN, "{worst:?}");
        // Those holding still finish their messages, echoed intact.
        for &i in holding.iter().take(3) {
            let c = &mut clients[i];
            c.stream.set_nonblocking(false).unwrap();
            c.send_raw(&frame[unfinished..]).unwrap();
            assert!(c.recv().unwrap() == Seen::Binary(payload.clone()), "a held message");
        }
        drop((c, clients));
        let t = Instant::now();
        child.finish();
        eprintln!("server shut down in {:?}; whole test {:?}", t.elapsed(), t0.elapsed());
    }
}

/// The child's side: a server with the default settings until the parent closes stdin.
fn serve_until_stdin_closes(backend: Backend) {
    // Defaults, but for the close timeout: a refused client that has not read its close frame
    // when the test looks (seconds later, on a busy machine) must not have been reset.
    let server = TestServer::start(backend, |b| b.close_timeout(Duration::from_secs(60)), || Echo);
    println!("{LISTENING}{}", server.addr);
    io::stdout().flush().unwrap();
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    server.shutdown().unwrap();
}

/// The server's process, killed if the test fails before `finish`.
struct Child {
    process: std::process::Child,
    addr: SocketAddr,
}

impl Child {
    fn spawn(backend: Backend, test: &str) -> Child {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let name = match backend {
            Backend::Epoll => "epoll",
            _ => "io_uring",
        };
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args([&format!("{test}::{name}"), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = BufReader::new(process.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                // Not at the start of the line: the test harness wrote the test's name there.
                if let Some((_, addr)) = line.split_once(LISTENING) {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("the server process did not start");
        Child { process, addr }
    }

    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))
            .expect("/proc/PID/status");
        let line = status.lines().find(|l| l.starts_with(field)).expect("the field");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap();
        kib << 10
    }

    /// The server's resident set, bytes.
    fn rss(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    /// CPU time used so far (user and system), in clock ticks of 10 ms.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())).unwrap();
        let (_, fields) = stat.rsplit_once(')').unwrap();
        fields.split_whitespace().skip(11).take(2).map(|t| t.parse::<u64>().unwrap()).sum()
    }

    /// Waits until the server used no CPU for half a second.
    fn wait_until_idle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = self.cpu_ticks();
        loop {
            sleep(Duration::from_millis(500));
            let now = self.cpu_ticks();
            if now == last {
                return;
            }
            assert!(Instant::now() < deadline, "the server stayed busy");
            last = now;
        }
    }

    /// Closes the child's stdin and expects it to shut down cleanly.
    fn finish(mut self) {
        drop(self.process.stdin.take());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the server process did not exit");
            sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "server process: {status}");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

// ---- a flood of pongs ---------------------------------------------------------------------------

/// Echoes another client sends while one connection floods.
const ECHOES: usize = 200;
/// The 99th percentile those echoes must stay under.
const P99_WITHIN: Duration = Duration::from_millis(10);

/// Writes empty pongs to `stream` until `stop`, counting the bytes written.
fn flood_pongs(mut stream: TcpStream, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) {
    let pongs: Vec<u8> = (0..(64 << 10) / 6).flat_map(|_| raw_frame(FIN | PONG, b"")).collect();
    stream.set_write_timeout(Some(Duration::from_millis(50))).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match stream.write(&pongs) {
            Ok(n) => {
                written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

each_backend! {
    fn a_pong_flood_does_not_hold_up_other_clients(backend) {
        // No rate limit here: the flood goes on for the whole measurement, and only each
        // connection's share of a loop iteration keeps it from holding the worker.
        let _machine = machine();
        let server = TestServer::start(backend, |b| b.max_control_rate(0), || Echo);
        let flooder = Client::connect(server.addr).unwrap();
        let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let flood = {
            let (stream, stop, written) =
                (flooder.stream.try_clone().unwrap(), Arc::clone(&stop), Arc::clone(&written));
            std::thread::spawn(move || flood_pongs(stream, stop, written))
        };
        let mut c = Client::connect(server.addr).unwrap();
        // Let the flood fill the pipes first.
        while written.load(Ordering::Relaxed) < 4 << 20 {
            sleep(Duration::from_millis(10));
        }
        let mut times = Vec::with_capacity(ECHOES);
        for i in 0..ECHOES {
            let text = format!("echo {i}");
            let t = Instant::now();
            c.send_text(&text).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Text(text));
            times.push(t.elapsed());
        }
        let flooded = written.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
        times.sort();
        let (p50, p99, max) = (times[ECHOES / 2], times[ECHOES * 99 / 100], times[ECHOES - 1]);
        eprintln!(
            "echo during a pong flood ({} MiB of pongs written): p50 {p50:?}, p99 {p99:?}, \
             max {max:?}",
            flooded >> 20
        );
        assert!(p99 < P99_WITHIN, "p99 {p99:?}");
        drop(flooder);
    }
}

each_backend! {
    fn a_pong_flood_is_closed_with_1008_past_the_control_rate(backend) {
        let server = TestServer::echo(backend);
        let mut flooder = Client::connect(server.addr).unwrap();
        let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let flood = {
            let (stream, stop, written) =
                (flooder.stream.try_clone().unwrap(), Arc::clone(&stop), Arc::clone(&written));
            std::thread::spawn(move || flood_pongs(stream, stop, written))
        };
        let started = Instant::now();
        let seen = flooder.recv().unwrap();
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
        eprintln!("pong flood closed after {took:?}: {seen:?}");
        assert_eq!(seen, Seen::Close(Some(1008), "too many pings and pongs per second".into()));
        // A thousand pongs a second are fine.
        let mut c = Client::connect(server.addr).unwrap();
        let batch = raw_frame(FIN | PONG, b"").repeat(90);
        for _ in 0..10 {
            c.send_raw(&batch).unwrap();
            sleep(Duration::from_millis(100));
        }
        c.send_text("still open").unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("still open".into()));
    }
}

// ---- a trickled frame ----------------------------------------------------------------------------

const MESSAGE_TIMEOUT: Duration = Duration::from_millis(600);

each_backend! {
    fn a_frame_trickled_past_the_message_timeout_is_closed_with_1008(backend) {
        let server =
            TestServer::start(backend, |b| b.message_timeout(MESSAGE_TIMEOUT), || Echo);
        let mut c = Client::connect(server.addr).unwrap();
        let frame = raw_frame(FIN | TEXT, &[b'a'; 100]);
        c.stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let started = Instant::now();
        let mut sent = 0;
        let seen = loop {
            assert!(sent < frame.len() - 1, "the whole frame went out a byte at a time");
            assert!(started.elapsed() < WAIT, "never closed");
            c.send_raw(&frame[sent..sent + 1]).unwrap();
            sent += 1;
            match c.recv() {
                Ok(seen) => break seen,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("{e}"),
            }
        };
        let took = started.elapsed();
        eprintln!("trickled frame closed after {took:?} ({sent} bytes sent)");
        assert_eq!(seen, Seen::Close(Some(1008), "message timeout".into()));
        // Checked every 250 ms; the margin is for a loaded machine.
        // (Less a few ms: the worker's clock counts whole milliseconds.)
        assert!(took >= MESSAGE_TIMEOUT - Duration::from_millis(5), "closed early: {took:?}");
        assert!(took < MESSAGE_TIMEOUT + Duration::from_secs(1), "closed late: {took:?}");
    }
}

// ---- the limits themselves ---------------------------------------------------------------------

each_backend! {
    fn a_max_size_message_is_echoed_with_the_defaults(backend) {
        let server = TestServer::echo(backend);
        let mut c = Client::connect(server.addr).unwrap();
        let payload: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
        c.send_binary(&payload).unwrap();
        assert!(c.recv().unwrap() == Seen::Binary(payload), "the echo of a 1 MiB message");
        let text = "x".repeat(MAX_MESSAGE);
        c.send_text(&text).unwrap();
        assert!(c.recv().unwrap() == Seen::Text(text), "the echo of a 1 MiB text");
        // One byte more is over the limit.
        c.send_binary(&vec![1; MAX_MESSAGE + 1]).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(CloseCode::MESSAGE_TOO_BIG.0));
    }
}
