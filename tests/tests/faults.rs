//! Misbehaving clients over real TCP, on every backend: resets mid-frame, consumers too slow for
//! what the server sends, producers the server must stop reading from, slowloris, silence, and a
//! burst of short connections. After each, the server must still serve a new connection, and
//! (the server runs in this process) its memory and descriptors must stay bounded.
//!
//! Tests in this binary run in parallel, so memory and descriptor checks leave room for the
//! others: they catch growth with the load (tens of MiB, hundreds of descriptors), not noise.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringside::{
    Backend, Builder, CloseCode, Handler, Message, SlowConsumer, Upgrade, Upgrading, WebSocket,
};
use ringside_proto::{Config, Connection, Role};
use ringside_tests::{
    assert_echoes, each_backend, raw_frame, read_some, Client, Echo, Seen, TestServer, WAIT,
};
use socket2::{Domain, SockRef, Socket, Type};

const FIN: u8 = 0x80;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;

/// Most the server process may grow while one fault test runs.
const MAX_RSS_GROWTH: u64 = 64 << 20;

/// Close codes the handler saw, shared with the test.
#[derive(Debug, Clone, Default)]
struct Closes(Arc<Mutex<Vec<u16>>>);

impl Closes {
    fn push(&self, code: CloseCode) {
        self.0.lock().unwrap().push(code.0);
    }

    /// Waits until `n` closes were reported, and returns them.
    fn wait_for(&self, n: usize, within: Duration) -> Vec<u16> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.0.lock().unwrap().clone();
            if seen.len() >= n || Instant::now() > deadline {
                return seen;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

/// Echoes; on a connection whose path is `/flood`, sends [`FLOOD`] 64 KiB messages on open; on
/// the text `burst`, answers with [`BURST`] of them. Records every close.
#[derive(Debug)]
struct Noisy {
    closes: Closes,
    flood_next: bool,
}

const CHUNK: usize = 64 << 10;
const FLOOD: usize = 100;
const BURST: usize = 4;

impl Handler for Noisy {
    type Conn = ();
    fn on_upgrade(&mut self, request: &Upgrading<'_>) -> Upgrade<()> {
        // on_open for this connection follows right after, on this thread.
        self.flood_next = request.path() == "/flood";
        Upgrade::Accept(())
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_>) {
        if std::mem::take(&mut self.flood_next) {
            let chunk = vec![0xab; CHUNK];
            for _ in 0..FLOOD {
                let _ = ws.send_binary(&chunk);
            }
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        if msg == Message::Text("burst") {
            let chunk = vec![0xcd; CHUNK];
            for _ in 0..BURST {
                let _ = ws.send_binary(&chunk);
            }
        } else {
            let _ = ws.send(msg);
        }
    }

    fn on_close(&mut self, _: &mut WebSocket<'_>, code: CloseCode, _: &str) {
        self.closes.push(code);
    }
}

fn noisy_server(
    backend: Backend,
    configure: impl FnOnce(Builder) -> Builder,
) -> (TestServer, Closes) {
    let closes = Closes::default();
    let log = closes.clone();
    let server =
        start(backend, configure, move || Noisy { closes: log.clone(), flood_next: false });
    (server, closes)
}

/// io_uring receive buffers per server. The default pool (4096 of 16 KiB) is 64 MiB that the
/// kernel touches buffer by buffer as they cycle: resident memory the RSS checks would mistake
/// for growth with the load, in every test running alongside.
const RECV_BUFFERS: u32 = 256;

/// A test server with a small receive-buffer pool, after `configure`.
fn start<H, F>(
    backend: Backend,
    configure: impl FnOnce(Builder) -> Builder,
    factory: F,
) -> TestServer
where
    H: Handler,
    F: Fn() -> H + Send + Sync + 'static,
{
    TestServer::start(backend, |b| configure(b.recv_buffers(RECV_BUFFERS)), factory)
}

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 =
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS value");
    kib << 10
}

fn assert_rss_bounded(before: u64, what: &str) {
    let after = rss();
    let growth = after.saturating_sub(before);
    eprintln!("{what}: RSS {} MiB -> {} MiB", before >> 20, after >> 20);
    assert!(growth < MAX_RSS_GROWTH, "{what}: the process grew by {} MiB", growth >> 20);
}

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// A connected stream with small kernel buffers, so that a peer that does not read is felt
/// after kilobytes rather than megabytes.
fn small_buffer_stream(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    socket.set_send_buffer_size(16 << 10).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    socket.into()
}

/// Resets the connection (RST, not FIN): SO_LINGER 0, then close.
fn abort(stream: TcpStream) {
    SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

// ---- resets --------------------------------------------------------------------------------

each_backend! {
    fn reset_mid_frame_leaves_the_server_serving(backend) {
        let (server, closes) = noisy_server(backend, |b| b);
        let addr = server.addr;
        // Half an upgrade request: the handler never heard of this one.
        let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr").unwrap();
        sleep(Duration::from_millis(20));
        abort(s);
        let big = raw_frame(FIN | BINARY, &vec![9; 64 << 10]);
        let cases: [(&str, Vec<u8>); 4] = [
            ("one byte of a header", big[..1].to_vec()),
            ("a header without its payload", big[..10].to_vec()),
            ("half a 64 KiB payload", big[..32 << 10].to_vec()),
            (
                "inside a fragmented message",
                [raw_frame(TEXT, b"frag1"), raw_frame(CONT, b"frag2")].concat(),
            ),
        ];
        for (i, (what, bytes)) in cases.iter().enumerate() {
            let mut c = Client::connect(addr).unwrap();
            c.send_raw(bytes).unwrap();
            sleep(Duration::from_millis(20));
            abort(c.stream);
            // The server notices, reports 1006 (gone without a close frame), and still serves.
            let seen = closes.wait_for(i + 1, WAIT);
            assert_eq!(seen.len(), i + 1, "{what}: no on_close");
            assert_eq!(seen[i], 1006, "{what}");
            assert_echoes(addr);
            assert_eq!(closes.wait_for(i + 2, WAIT).len(), i + 2);
            closes.0.lock().unwrap().pop(); // assert_echoes' own close
        }
    }
}

// ---- slow consumers ------------------------------------------------------------------------

each_backend! {
    fn flood_on_open_over_the_send_limit_closes_with_1008(backend) {
        let before = rss();
        let (server, _) = noisy_server(backend, |b| {
            b.send_limit(1 << 20)
                .slow_consumer(SlowConsumer::Close)
                .close_timeout(Duration::from_secs(1))
        });
        let mut c = Client::connect_with(server.addr, "/flood", &[], &[]).unwrap();
        // Not reading for a while: what the server queued waits in the kernel and its queue.
        sleep(Duration::from_millis(300));
        assert_echoes(server.addr);
        let mut messages = 0;
        let code = loop {
            match c.recv().unwrap() {
                Seen::Binary(b) => {
                    assert_eq!(b.len(), CHUNK);
                    messages += 1;
                }
                Seen::Close(code, _) => break code,
                other => panic!("after {messages} messages: {other:?}"),
            }
        };
        assert_eq!(code, Some(1008), "slow consumer");
        // 1 MiB holds 15 of them with their headers; nothing past the limit was queued.
        assert!((1..=16).contains(&messages), "{messages} messages before the close");
        assert_eq!(c.recv().unwrap(), Seen::Eof);
        assert_rss_bounded(before, "flood on open");
        assert_echoes(server.addr);
    }
}

each_backend! {
    fn client_that_never_reads_is_closed_and_others_are_served(backend) {
        let before = rss();
        let (server, closes) = noisy_server(backend, |b| {
            // High water at the limit: reading never pauses, so the queue meets the limit.
            b.send_limit(1 << 20)
                .send_high_water(1 << 20)
                .slow_consumer(SlowConsumer::Close)
                .close_timeout(Duration::from_secs(1))
        });
        let addr = server.addr;
        let stream = small_buffer_stream(addr);
        let mut slow = Client::handshake(stream, &addr.to_string(), "/", &[], &[], &[]).unwrap();
        slow.stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut healthy = Client::connect(addr).unwrap();
        let burst = raw_frame(FIN | TEXT, b"burst");
        let started = Instant::now();
        let mut sent = 0;
        // Each request asks for 256 KiB; the slow client never reads. The server must give up
        // on it: close it (1008) and, since it cannot even send that, drop it after the close
        // timeout, which the client sees as a failed write.
        let gone = loop {
            assert!(started.elapsed() < Duration::from_secs(15), "still open after {sent} bursts");
            match slow.send_raw(&burst) {
                Ok(()) => sent += 1,
                Err(e) if is_timeout(&e) => {}
                Err(_) => break started.elapsed(),
            }
            if sent % 10 == 0 {
                healthy.send_raw(&burst).unwrap();
                for _ in 0..BURST {
                    assert_eq!(healthy.recv().unwrap(), Seen::Binary(vec![0xcd; CHUNK]));
                }
            }
            sleep(Duration::from_millis(10));
        };
        eprintln!("slow consumer dropped after {sent} bursts, {gone:?}");
        // Whatever reached the client: whole messages, then the 1008 close or the TCP close.
        let mut messages = 0;
        loop {
            match slow.recv() {
                Ok(Seen::Binary(b)) => {
                    assert_eq!(b.len(), CHUNK);
                    messages += 1;
                    assert!(messages <= sent * BURST, "more messages than asked for");
                }
                Ok(Seen::Close(code, _)) => {
                    assert_eq!(code, Some(1008));
                    break;
                }
                Ok(Seen::Eof) => break,
                Ok(other) => panic!("{other:?}"),
                // A reset can also surface mid-frame.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("after {messages} messages: {e}"),
            }
        }
        assert!(closes.wait_for(1, WAIT).len() == 1, "the handler saw the slow client go");
        assert_rss_bounded(before, "slow consumer");
        round_trip_burst(&mut healthy);
        assert_echoes(addr);
    }
}

fn round_trip_burst(c: &mut Client) {
    c.send_text("burst").unwrap();
    for _ in 0..BURST {
        assert_eq!(c.recv().unwrap(), Seen::Binary(vec![0xcd; CHUNK]));
    }
}

// ---- backpressure --------------------------------------------------------------------------

each_backend! {
    fn server_stops_reading_from_a_client_that_does_not_read(backend) {
        let before = rss();
        let drains = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&drains);
        let server = start(backend, |b| b.send_high_water(256 << 10), move || {
            CountDrains(Arc::clone(&counter))
        });
        let addr = server.addr;
        let stream = small_buffer_stream(addr);
        let mut c = Client::handshake(stream, &addr.to_string(), "/", &[], &[], &[]).unwrap();
        let payload: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        let frame = raw_frame(FIN | BINARY, &payload);
        let mut writer = c.stream.try_clone().unwrap();
        writer.set_write_timeout(Some(Duration::from_millis(250))).unwrap();
        // Write up to 50 MiB without reading: the echo server queues the replies, passes its
        // high-water mark and stops reading; then the kernel buffers fill and writes stall.
        const TOTAL: usize = 50 << 20;
        let mut written = 0usize;
        let mut stalls = 0;
        let started = Instant::now();
        while written < TOTAL && stalls < 4 {
            assert!(started.elapsed() < Duration::from_secs(20), "neither stalled nor done");
            let at = written % frame.len();
            match writer.write(&frame[at..]) {
                Ok(0) => panic!("write returned 0"),
                Ok(n) => {
                    written += n;
                    stalls = 0;
                }
                Err(e) if is_timeout(&e) => stalls += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("after {written} bytes: {e}"),
            }
        }
        eprintln!("writes stalled after {} KiB", written >> 10);
        assert!(written < TOTAL, "the server read all 50 MiB without its replies being read");
        assert_rss_bounded(before, "backpressure");
        // Others are unaffected meanwhile.
        assert_echoes(addr);
        // Reading again resumes the flow: finish the partial frame on another thread, and every
        // echo arrives intact.
        let rest = frame[written % frame.len()..].to_vec();
        let frames = written.div_ceil(frame.len());
        writer.set_write_timeout(Some(WAIT)).unwrap();
        let finish = std::thread::spawn(move || writer.write_all(&rest));
        for i in 0..frames {
            assert!(c.recv().unwrap() == Seen::Binary(payload.clone()), "echo {i} of {frames}");
        }
        finish.join().unwrap().unwrap();
        // The queue fell back under the high-water mark: the handler was told.
        assert!(drains.load(Ordering::Relaxed) >= 1, "on_drain was never called");
        c.send_text("done").unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("done".into()));
        assert_echoes(addr);
    }
}

/// Echoes and counts `on_drain` calls.
#[derive(Debug)]
struct CountDrains(Arc<AtomicUsize>);

impl Handler for CountDrains {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }

    fn on_drain(&mut self, _: &mut WebSocket<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

each_backend! {
    fn half_closed_client_still_gets_its_replies(backend) {
        let server = start(backend, |b| b, || Echo);
        for i in 0..5 {
            let mut c = Client::connect(server.addr).unwrap();
            // A message, then the client's FIN: it stops writing, not reading.
            c.send_text("last words").unwrap();
            c.stream.shutdown(Shutdown::Write).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Text("last words".into()), "try {i}");
        }
        assert_echoes(server.addr);
    }
}

// ---- timeouts ------------------------------------------------------------------------------

/// Whether the server closed `s` (EOF or reset) within `within`, reading what it sends.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0; 1024];
    while Instant::now() < deadline {
        match read_some(s, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return true,
        }
    }
    false
}

each_backend! {
    fn silent_half_request_is_dropped_at_the_handshake_timeout(backend) {
        let server =
            start(backend, |b| b.handshake_timeout(Duration::from_secs(1)), || Echo);
        let mut s = TcpStream::connect_timeout(&server.addr, WAIT).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(4)), "still open after 4 s");
        eprintln!("dropped after {:?}", started.elapsed());
        // A connection that says nothing at all, likewise.
        let mut s = TcpStream::connect_timeout(&server.addr, WAIT).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(4)), "silent: still open after 4 s");
        assert_echoes(server.addr);
    }
}

each_backend! {
    fn slowloris_trickling_the_head_is_dropped_at_the_handshake_timeout(backend) {
        // 2 s, not 1: the worker's clock counts whole seconds, so with a 1 s timeout any byte
        // that lands before a second boundary looks a second old at the next sweep, and the bug
        // hides behind the rounding.
        let server =
            start(backend, |b| b.handshake_timeout(Duration::from_secs(2)), || Echo);
        let mut s = TcpStream::connect_timeout(&server.addr, WAIT).unwrap();
        s.set_nodelay(true).unwrap();
        // A head that would take a minute at this pace, under the head size limit.
        let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_vec();
        head.extend_from_slice(&[b'a'; 300]);
        let started = Instant::now();
        let mut closed = false;
        for byte in head.chunks(1) {
            if s.write_all(byte).is_err() || closed_within(&mut s, Duration::from_millis(200)) {
                closed = true;
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let after = started.elapsed();
        assert!(closed, "a client trickling its head was still connected after {after:?}");
        eprintln!("trickling client dropped after {after:?}");
        assert_echoes(server.addr);
    }
}

/// A client that does not answer pings.
fn deaf_client(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr).unwrap();
    c.conn = Connection::new(
        Role::Client,
        Config { max_frame_size: 1 << 20, max_message_size: 1 << 20, auto_pong: false },
    );
    c
}

each_backend! {
    fn idle_client_is_pinged_then_closed(backend) {
        let server = start(
            backend,
            |b| {
                b.idle_timeout(Duration::from_secs(2))
                    .ping_idle(true)
                    .close_timeout(Duration::from_secs(1))
            },
            || Echo,
        );
        let mut c = deaf_client(server.addr);
        let started = Instant::now();
        assert_eq!(c.recv().unwrap(), Seen::Ping(vec![]), "a ping at half the idle timeout");
        let pinged = started.elapsed();
        match c.recv().unwrap() {
            Seen::Close(code, reason) => {
                assert_eq!(code, Some(1000), "{reason}");
            }
            other => panic!("expected the idle close, got {other:?}"),
        }
        let closed = started.elapsed();
        eprintln!("pinged after {pinged:?}, closed after {closed:?}");
        // The worker counts whole seconds: a 2 s timeout fires 1-2 s after the last byte.
        assert!(pinged >= Duration::from_millis(400), "pinged too early: {pinged:?}");
        assert!(closed >= Duration::from_millis(900), "closed too early: {closed:?}");
        assert!(closed < Duration::from_secs(5), "closed too late: {closed:?}");
        // The client answered the close (`recv` flushes the reply): TCP closes.
        assert_eq!(c.recv().unwrap(), Seen::Eof);
        assert_echoes(server.addr);
    }
}

each_backend! {
    fn idle_client_answering_pings_stays_open(backend) {
        let server = start(
            backend,
            |b| b.idle_timeout(Duration::from_secs(2)).ping_idle(true),
            || Echo,
        );
        let mut c = Client::connect(server.addr).unwrap();
        let started = Instant::now();
        let mut pings = 0;
        // Two and a half idle timeouts long, sending nothing but the pongs `recv` answers with.
        while started.elapsed() < Duration::from_secs(5) {
            match c.recv().unwrap() {
                Seen::Ping(_) => pings += 1,
                other => panic!("after {pings} pings, {:?}: {other:?}", started.elapsed()),
            }
        }
        assert!(pings >= 2, "{pings} pings");
        c.send_text("still here").unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("still here".into()));
    }
}

// ---- many connections ----------------------------------------------------------------------

each_backend! {
    fn burst_of_1000_connections_opened_and_closed(backend) {
        let before_rss = rss();
        let before_fds = open_fds();
        let server = start(backend, |b| b, || Echo);
        let addr = server.addr;
        const THREADS: usize = 4;
        const EACH: usize = 250;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let mut c = Client::connect(addr)
                            .unwrap_or_else(|e| panic!("thread {t}, connection {i}: {e}"));
                        match i % 3 {
                            // The close handshake.
                            0 => {
                                c.conn.close(CloseCode::NORMAL, "").unwrap();
                                c.flush().unwrap();
                                assert_eq!(c.expect_close().unwrap(), Some(1000));
                            }
                            // A message, then TCP close without a close frame.
                            1 => {
                                c.send_text("hi").unwrap();
                                assert_eq!(c.recv().unwrap(), Seen::Text("hi".into()));
                            }
                            // Straight after the handshake, a reset.
                            _ => abort(c.stream),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_echoes(addr);
        // Every socket is released: the server's descriptors come back to where they were.
        let deadline = Instant::now() + WAIT;
        let mut fds = open_fds();
        while fds > before_fds + 100 && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
            fds = open_fds();
        }
        assert!(fds <= before_fds + 100, "{before_fds} descriptors before, {fds} after");
        assert_rss_bounded(before_rss, "1000 connections");
    }
}

// ---- out of descriptors --------------------------------------------------------------------

/// Set in the child process that serves for `accept_resumes_after_fd_exhaustion`.
/// What the child says once accepting has failed for lack of descriptors.
const ACCEPT_FAILED: &str = "accept failed: too many open files";
const FD_CHILD: &str = "RINGSIDE_TESTS_FD_CHILD";
/// The child's open-file limit, soft and hard. io_uring sizes each ring's direct-descriptor
/// table by it (and the child holds every descriptor left, so no second ring can be set up),
/// so both backends run out after a few dozen connections.
const FD_LIMIT: usize = 64;
/// How soon accepting must resume once descriptors are free.
const RESUME_WITHIN: Duration = Duration::from_secs(1);
/// How long the test holds the server out of descriptors to see what CPU it uses meanwhile.
const HOLD: Duration = Duration::from_millis(500);
/// What the child prints before its address.
const LISTENING: &str = "listening on ";

each_backend! {
    /// Twice as many clients as the server has descriptors connect and send their upgrade
    /// request. The server runs out (and says so); then each answered client hangs up, which
    /// must let the waiting ones in, with no new connection arriving to announce them. Last, a
    /// fresh client is served. The server runs in a child process (this test binary again,
    /// running only this test) under a low RLIMIT_NOFILE, which would otherwise starve every
    /// test running beside it.
    fn accept_resumes_after_fd_exhaustion(backend) {
        if std::env::var_os(FD_CHILD).is_some() {
            return serve_with_few_descriptors(backend);
        }
        let child = FdChild::spawn(backend);
        let addr = child.addr;
        let mut waiting = Vec::new();
        for _ in 0..2 * FD_LIMIT {
            let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
            let mut request = Vec::new();
            let key = ringside_proto::handshake::generate_key();
            ringside_proto::handshake::write_client_request("a", "/", &key, &[], &[], &mut request);
            s.write_all(&request).unwrap();
            s.set_nonblocking(true).unwrap();
            waiting.push((s, Vec::new()));
        }
        child.wait_for_stderr(ACCEPT_FAILED, WAIT);
        // Out of descriptors with clients waiting, the server retries now and then: it does
        // not spin.
        let (cpu_before, held) = (child.cpu_time(), Instant::now());
        sleep(HOLD);
        let (cpu, held) = (child.cpu_time() - cpu_before, held.elapsed());
        eprintln!("server CPU while out of descriptors: {cpu:?} in {held:?}");
        assert!(cpu < held / 4, "the server used {cpu:?} of CPU in {held:?}");

        // Each answered client hangs up at once, freeing a descriptor for one that waits.
        let (mut answered, mut refused) = (0, 0);
        let mut progress = Instant::now();
        let mut buf = [0; 1024];
        while !waiting.is_empty() {
            let before = waiting.len();
            waiting.retain_mut(|(s, got): &mut (TcpStream, Vec<u8>)| match s.read(&mut buf) {
                Ok(0) => {
                    refused += 1;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    refused += 1;
                    false
                }
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    let done = got.windows(4).any(|w| w == b"\r\n\r\n");
                    if done {
                        let head = String::from_utf8_lossy(got);
                        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
                        answered += 1;
                    }
                    !done
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) => panic!("{e}"),
            });
            if waiting.len() < before {
                progress = Instant::now();
            }
            assert!(
                progress.elapsed() < RESUME_WITHIN,
                "accepting stalled: {} clients still wait, {answered} answered, {refused} \
                 refused; server said: {}",
                waiting.len(),
                child.stderr()
            );
            sleep(Duration::from_millis(2));
        }
        eprintln!("{answered} clients answered, {refused} turned away");
        assert!(answered > FD_LIMIT / 2, "{answered} answered");
        // Left in the listen queue (io_uring arms an accept only where its table has a free
        // slot), every client is served in the end.
        assert_eq!(refused, 0);

        // Everyone is gone: a fresh client is served within the second (a refused one would try
        // again, as a client would; none should be refused).
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            match Client::connect(addr) {
                Ok(mut c) => {
                    c.send_text("back").unwrap();
                    assert_eq!(c.recv().unwrap(), Seen::Text("back".into()));
                    break;
                }
                Err(e) => {
                    assert!(started.elapsed() < RESUME_WITHIN, "no fresh client served: {e}");
                    sleep(Duration::from_millis(10));
                }
            }
        }
        let took = started.elapsed();
        eprintln!("fresh client served after {took:?} ({tries} tries)");
        assert!(took < RESUME_WITHIN, "{took:?}");
        child.finish();
    }
}

/// The child's side: check the limit took, serve, and stop when the parent closes stdin.
fn serve_with_few_descriptors(backend: Backend) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let values: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(values, [FD_LIMIT.to_string(), FD_LIMIT.to_string()], "{line}");
    let server = start(backend, |b| b, || Echo);
    // io_uring sets up another ring (one descriptor, and a table of FD_LIMIT more connections)
    // whenever its tables are full: with every descriptor held, it runs out at the first table
    // as epoll runs out of descriptors.
    let _held = (backend != Backend::Epoll).then(hold_every_free_descriptor);
    println!("{LISTENING}{}", server.addr);
    io::stdout().flush().unwrap();
    // Bounded by the parent, which closes stdin when done and kills us if it fails.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        let _ = done_tx.send(());
    });
    // The library logs through `tracing` (no subscriber here): report the counter the parent
    // waits for, once it moves.
    let mut said = false;
    while done.recv_timeout(Duration::from_millis(10)).is_err() {
        if !said && server.handle().stats().accept_errors > 0 {
            said = true;
            eprintln!("{ACCEPT_FAILED}");
        }
    }
    server.shutdown().unwrap();
}

/// Opens /dev/null until the open-file limit refuses; the files keep the descriptors taken.
fn hold_every_free_descriptor() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        held.push(file);
        assert!(held.len() <= FD_LIMIT, "the open-file limit did not take");
    }
    held
}

/// The server's process, killed if the test fails before `finish`.
struct FdChild {
    process: std::process::Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl FdChild {
    fn spawn(backend: Backend) -> FdChild {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let name = match backend {
            Backend::Epoll => "epoll",
            _ => "io_uring",
        };
        let test = format!("accept_resumes_after_fd_exhaustion::{name}");
        // `ulimit -n` sets the soft and the hard limit, so nothing can raise it again.
        let mut process = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
            .arg(std::env::current_exe().unwrap())
            .args([&test, "--exact", "--nocapture", "--test-threads=1"])
            .env(FD_CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = process.stderr.take().unwrap();
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                eprint!("[server] {text}");
                log.lock().unwrap().push_str(&text);
            }
        });
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
        let mut child = FdChild { process, addr: ([127, 0, 0, 1], 0).into(), stderr };
        child.addr = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the server process did not start: {}", child.stderr()));
        child
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// CPU time the server process has used, user and system, from `/proc/<pid>/stat` (in
    /// clock ticks of 10 ms: USER_HZ is 100 on every Linux architecture we run on).
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces: state
        // is the first, utime the 12th and stime the 13th.
        let (_, fields) = stat.rsplit_once(')').unwrap();
        let ticks: u64 =
            fields.split_whitespace().skip(11).take(2).map(|t| t.parse::<u64>().unwrap()).sum();
        Duration::from_millis(ticks * 10)
    }

    fn wait_for_stderr(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr().contains(text) {
            assert!(Instant::now() < deadline, "the server never said {text:?}: {}", self.stderr());
            sleep(Duration::from_millis(10));
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
        assert!(status.success(), "server process: {status}; {}", self.stderr());
    }
}

impl Drop for FdChild {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
