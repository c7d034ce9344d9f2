//! The metrics and health endpoint: a plain thread with a blocking `TcpListener`, one request at
//! a time.
//!
//! `GET /metrics` renders the page at that moment; `GET /health` asks the health function. It is
//! deliberately not part of the worker loops: a scrape never delays a WebSocket message, and a
//! stalled worker still gets scraped (its counters stop moving, which is what shows it). Scrapers
//! are few and slow (one request a second at most), so serving them one after another is enough;
//! each request is bounded in size ([`MAX_REQUEST_BYTES`]) and in time ([`REQUEST_DEADLINE`]),
//! so a client that sends slowly or not at all holds the thread for a bounded time only.
//!
//! It is not a general HTTP server: no keep-alive (every answer closes the connection), no
//! request bodies, no TLS. Bind it to loopback or a management network.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::counters::WorkerMetrics;
use super::exposition::{render, CONTENT_TYPE};

/// The longest request head accepted; longer ones get 431. Scrapers send a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long one request may take to arrive; a slower client gets 408 and is dropped.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long writing one answer may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest single blocking read, so a stop request is seen while a client dawdles.
const READ_SLICE: Duration = Duration::from_millis(100);
/// Pause after a failed accept (EMFILE and the like) so the thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The readiness answer for `/health`: true when the server accepts and serves connections.
pub type HealthFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// A running metrics endpoint. Dropping it stops the thread and closes the listener.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// A second handle on the listening socket, to shut it down from the dropping thread.
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer").field("local_addr", &self.local_addr).finish()
    }
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` (the page for `workers`) and `GET /health`
    /// (200 while `health` returns true, 503 otherwise) on a thread of its own. Port 0 picks a
    /// free port: see [`local_addr`](Self::local_addr).
    ///
    /// Fails when `addr` cannot be bound (in use: pick another `--metrics-listen` port) or the
    /// thread cannot be started.
    pub fn start(
        addr: SocketAddr,
        workers: Arc<[WorkerMetrics]>,
        health: HealthFn,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let serving = listener.try_clone()?;
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ringside-metrics".into())
                .spawn(move || serve(&serving, &stop, &workers, &health))?
        };
        Ok(MetricsServer { local_addr, stop, listener, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket wakes a thread blocked in accept(2)
        // (EINVAL), which then sees the stop flag.
        let _ = SockRef::from(&self.listener).shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool, workers: &[WorkerMetrics], health: &HealthFn) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A failed request (reset, timeout) concerns only that client.
                let _ = handle(stream, stop, workers, health);
            }
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::log_rate_limited("metrics accept", &e);
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
}

/// A parsed request line, or the status that answers a bad one.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    route: Result<Route, u16>,
    head_only: bool,
}

fn handle(
    mut stream: TcpStream,
    stop: &AtomicBool,
    workers: &[WorkerMetrics],
    health: &HealthFn,
) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let request = match read_head(&mut stream, stop)? {
        Head::Complete(head) => parse(&head),
        Head::TooLarge => Request { route: Err(431), head_only: false },
        Head::TimedOut => Request { route: Err(408), head_only: false },
        Head::Closed => return Ok(()),
    };
    let (status, content_type, body) = match request.route {
        Ok(Route::Metrics) => (200, CONTENT_TYPE, render(workers)),
        Ok(Route::Health) => {
            // A panicking health function means "not ready", not a dead metrics thread.
            if catch_unwind(AssertUnwindSafe(|| health())).unwrap_or(false) {
                (200, "text/plain; charset=utf-8", "ok\n".to_owned())
            } else {
                (503, "text/plain; charset=utf-8", "not ready\n".to_owned())
            }
        }
        Err(status) => (status, "text/plain; charset=utf-8", format!("{}\n", reason(status))),
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !request.head_only {
        out.push_str(&body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()?;
    // Half-close and drain briefly so unread request bytes do not turn the close into a reset
    // that could discard the answer before the client reads it.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(READ_SLICE));
    let mut sink = [0u8; 512];
    for _ in 0..8 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}

/// How reading a request head ended.
#[derive(Debug)]
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    TimedOut,
    /// The client closed or reset before sending a whole head, or the server is stopping.
    Closed,
}

/// Reads up to the blank line ending the head, within [`MAX_REQUEST_BYTES`] and
/// [`REQUEST_DEADLINE`].
fn read_head(stream: &mut TcpStream, stop: &AtomicBool) -> io::Result<Head> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Head::Closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Head::TimedOut);
        }
        stream.set_read_timeout(Some(left.min(READ_SLICE)))?;
        let room = MAX_REQUEST_BYTES + 1 - head.len();
        let want = room.min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Ok(Head::Closed),
            Ok(n) => {
                // The end marker may straddle two reads: search from 3 bytes back.
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                    head.truncate(from + end);
                    return Ok(Head::Complete(head));
                }
                if head.len() > MAX_REQUEST_BYTES {
                    return Ok(Head::TooLarge);
                }
            }
            Err(e)
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(Head::Closed),
        }
    }
}

/// Parses the request line of `head` (headers are ignored: nothing here depends on them).
fn parse(head: &[u8]) -> Request {
    let bad = Request { route: Err(400), head_only: false };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)) else {
        return bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || method.is_empty() || !target.starts_with('/')
    {
        return bad;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        _ => return Request { route: Err(404), head_only: method == "HEAD" },
    };
    match method {
        "GET" => Request { route: Ok(route), head_only: false },
        "HEAD" => Request { route: Ok(route), head_only: true },
        _ => Request { route: Err(405), head_only: false },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn start(ready: Arc<AtomicBool>) -> (MetricsServer, Arc<[WorkerMetrics]>) {
        let workers = WorkerMetrics::for_workers(2);
        let health: HealthFn = Arc::new(move || ready.load(Ordering::SeqCst));
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&workers), health)
                .expect("binds a loopback port");
        (server, workers)
    }

    /// Sends `request` raw and returns the whole answer.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
    }

    #[test]
    fn serves_metrics_and_health() {
        let ready = Arc::new(AtomicBool::new(true));
        let (server, workers) = start(Arc::clone(&ready));
        workers[1].connections_open.set(7);
        let page = get(server.local_addr(), "/metrics");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(page.contains("\nringside_connections_open{worker=\"1\"} 7\n"));
        let (head, body) = page.split_once("\r\n\r\n").unwrap();
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(len, body.len());

        let ok = get(server.local_addr(), "/health?verbose=1");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"), "{ok}");
        ready.store(false, Ordering::SeqCst);
        let down = get(server.local_addr(), "/health");
        assert!(down.starts_with("HTTP/1.1 503 "), "{down}");
    }

    #[test]
    fn answers_bad_requests_with_their_status() {
        let (server, _) = start(Arc::new(AtomicBool::new(true)));
        let addr = server.local_addr();
        assert!(get(addr, "/").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, "/metricsx").starts_with("HTTP/1.1 404 "));
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("\r\nAllow: GET, HEAD\r\n"));
        let head = exchange(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"), "{head}");
        for junk in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let answer = exchange(addr, junk);
            assert!(answer.starts_with("HTTP/1.1 400 "), "{junk:?} -> {answer}");
        }
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST_BYTES + 100, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        assert!(exchange(addr, &huge).starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn a_silent_client_is_dropped_and_others_are_served_after_it() {
        let (server, _) = start(Arc::new(AtomicBool::new(true)));
        let addr = server.local_addr();
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).unwrap();
        silent.write_all(b"GET /metr").unwrap();
        // Served after the silent one's deadline at the latest.
        let answer = get(addr, "/health");
        assert!(answer.starts_with("HTTP/1.1 200 "));
        assert!(started.elapsed() < REQUEST_DEADLINE + Duration::from_secs(2));
        silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = silent.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    }

    #[test]
    fn a_panicking_health_function_reads_as_not_ready() {
        let health: HealthFn = Arc::new(|| panic!("health check failed"));
        let server = MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            WorkerMetrics::for_workers(1),
            health,
        )
        .unwrap();
        assert!(get(server.local_addr(), "/health").starts_with("HTTP/1.1 503 "));
        assert!(get(server.local_addr(), "/metrics").starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn drop_stops_the_thread_and_frees_the_port() {
        let (server, _) = start(Arc::new(AtomicBool::new(true)));
        let addr = server.local_addr();
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(1), "stopped in {:?}", started.elapsed());
        assert!(TcpStream::connect(addr).is_err(), "nothing listens any more");
    }

    #[test]
    fn drop_while_a_client_dawdles_is_bounded() {
        let (server, _) = start(Arc::new(AtomicBool::new(true)));
        let mut slow = TcpStream::connect(server.local_addr()).unwrap();
        slow.write_all(b"GET /").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(1), "stopped in {:?}", started.elapsed());
    }

    #[test]
    fn bind_failure_is_an_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::start(addr, WorkerMetrics::for_workers(1), Arc::new(|| true));
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn request_lines() {
        let ok = |r| Request { route: Ok(r), head_only: false };
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x"), ok(Route::Metrics));
        assert_eq!(parse(b"GET /health HTTP/1.0"), ok(Route::Health));
        assert_eq!(parse(b"GET /metrics?name[]=x HTTP/1.1"), ok(Route::Metrics));
        assert_eq!(parse(b"PUT /health HTTP/1.1").route, Err(405));
        assert_eq!(parse(b"GET /nope HTTP/1.1").route, Err(404));
        assert_eq!(parse(b"").route, Err(400));
        assert_eq!(parse(b"GET /metrics HTTP/1.1 extra").route, Err(400));
    }
}
