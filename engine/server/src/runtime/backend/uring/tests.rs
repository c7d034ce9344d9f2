//! Tests of a backend alone, driven by a recording [`Driver`]: the contract tests run on both
//! backends (`contract!`), the rest on io_uring's own machinery; then end-to-end tests through
//! the public builder, run once per backend so both behave alike: a real server on 127.0.0.1,
//! std sockets and the protocol crate as the client. Every read has a timeout, so a hang fails
//! instead of stalling the suite.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringside_proto::handshake::{generate_key, parse_response, write_client_request};
use ringside_proto::{CloseCode, Config, Connection, Event, Message, Role};

use super::super::epoll::Epoll;
use super::super::{Backend as _, Driver, SendQueue, Waker};
use super::accept::SLOTS;
use super::{Accept, Uring};
use crate::runtime::queue::Pool;
use crate::{Backend, Builder, Handler, Server, ServerHandle, Settings, WebSocket, Workers};

const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Records what the backend reports; ids are handed out in order.
#[derive(Default)]
struct Recorder {
    next: usize,
    events: Vec<String>,
    data: Vec<u8>,
    queues: Vec<SendQueue>,
    /// The peer address reported for each id.
    peers: Vec<Option<SocketAddr>>,
    released: usize,
}

impl Driver for Recorder {
    fn on_accept(&mut self, peer: Option<SocketAddr>) -> Option<usize> {
        self.next += 1;
        self.queues.push(SendQueue::default());
        self.peers.push(peer);
        self.events.push(format!("accept {}", self.next - 1));
        Some(self.next - 1)
    }
    fn on_data(
        &mut self,
        _id: usize,
        data: &mut [u8],
        _lend: bool,
        _send: &mut dyn FnMut(usize, &mut SendQueue),
    ) -> bool {
        self.data.extend_from_slice(data);
        false
    }
    fn on_hangup(&mut self, id: usize) {
        self.events.push(format!("hangup {id}"));
    }
    fn queue(&mut self, id: usize) -> Option<&mut SendQueue> {
        self.queues.get_mut(id)
    }
    fn on_sent(&mut self, id: usize) {
        self.events.push(format!("sent {id}"));
    }
    fn on_released(&mut self, id: usize) {
        self.released += 1;
        self.events.push(format!("released {id}"));
    }
}

/// A backend the contract tests run on: made on a listener, or skipped (said out loud).
trait Bare: super::super::Backend + Sized {
    fn make(listener: std::net::TcpListener, settings: &Settings) -> Option<Self>;
}

impl Bare for Uring {
    fn make(listener: std::net::TcpListener, settings: &Settings) -> Option<Self> {
        if let Err(why) = crate::runtime::probe_uring(&Settings::default()) {
            eprintln!("SKIPPED: io_uring unavailable: {why}");
            return None;
        }
        Some(Uring::new(listener, Waker::new().unwrap(), settings).unwrap())
    }
}

impl Bare for Epoll {
    fn make(listener: std::net::TcpListener, settings: &Settings) -> Option<Self> {
        Some(Epoll::new(listener, Waker::new().unwrap(), settings.recv_buffer_size).unwrap())
    }
}

/// Runs each contract test (a function generic over [`Bare`]) on both backends.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn epoll() {
                super::$name::<super::Epoll>()
            }
            #[test]
            fn io_uring() {
                super::$name::<super::Uring>()
            }
        })*
    };
}

contract!(
    graceful_close_sends_then_shuts_down_and_releases_after_the_peer_closes,
    peer_reset_is_one_hangup_then_release_after_close,
    half_closed_peer_still_gets_what_is_queued,
    hard_close_resets_a_peer_that_keeps_the_connection_open,
    paused_connection_gets_no_data_until_resumed,
    reports_each_peer_address,
    reports_an_ipv6_peer_address,
    hundred_concurrent_connects_each_get_their_own_address,
);

/// A bare backend on a fresh listener on 127.0.0.1; `None` (said out loud) if it cannot run
/// here.
fn bare<B: Bare>() -> Option<(B, SocketAddr)> {
    bare_with(small(), "127.0.0.1:0".parse().unwrap())
}

/// The io_uring backend alone.
fn bare_uring() -> Option<(Uring, SocketAddr)> {
    bare::<Uring>()
}

fn small() -> Settings {
    Settings { recv_buffers: 8, recv_buffer_size: 4096, ..Settings::default() }
}

/// A bare backend on a fresh listener bound to `addr`, with the server's listen backlog (a
/// burst of connects overflowing a short accept queue gets SYNs dropped and even resets).
fn bare_with<B: Bare>(settings: Settings, addr: SocketAddr) -> Option<(B, SocketAddr)> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(65535).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = std::net::TcpListener::from(socket);
    let addr = listener.local_addr().unwrap();
    Some((B::make(listener, &settings)?, addr))
}

/// A client connected to `to` from `from` (bound first, any port).
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// The events every backend must report, in order: `sent` is left out, since only a completion
/// backend reports a send that finished at once (epoll writes in `flush`).
fn contract_events(driver: &Recorder) -> Vec<&str> {
    driver.events.iter().map(String::as_str).filter(|e| !e.starts_with("sent")).collect()
}

/// Polls until `done` holds (bounded).
fn poll_until<B: super::super::Backend>(
    ring: &mut B,
    driver: &mut Recorder,
    mut done: impl FnMut(&Recorder) -> bool,
) {
    let deadline = Instant::now() + READ_TIMEOUT;
    while !done(driver) {
        assert!(Instant::now() < deadline, "timed out; events so far: {:?}", driver.events);
        ring.poll(driver, Duration::from_millis(10)).unwrap();
    }
}

#[test]
fn debug_shows_the_ring_flags_obtained() {
    let Some((ring, _)) = bare_uring() else { return };
    let shown = format!("{ring:?}");
    eprintln!("{shown}");
    assert!(shown.contains("ring_flags"), "{shown}");
    assert_eq!(ring.name(), "io_uring");
}

#[test]
fn a_starved_buffer_ring_grows_and_loses_nothing() {
    // Four 4 KiB buffers for 48 connections that all send before the worker looks: recvs find
    // the ring empty (ENOBUFS), the ring lends every buffer, then allocates more.
    let settings = Settings { recv_buffers: 4, recv_buffer_size: 4096, ..Settings::default() };
    let Some((mut ring, addr)) = bare_with::<Uring>(settings, "127.0.0.1:0".parse().unwrap())
    else {
        return;
    };
    let mut driver = Recorder::default();
    let mut clients: Vec<TcpStream> = (0..48).map(|_| TcpStream::connect(addr).unwrap()).collect();
    poll_until(&mut ring, &mut driver, |d| d.next == 48);
    let payload = vec![7u8; 3000];
    for round in 0..4 {
        for client in &mut clients {
            client.write_all(&payload).unwrap();
        }
        let want = (round + 1) * 48 * payload.len();
        poll_until(&mut ring, &mut driver, |d| d.data.len() >= want);
        assert_eq!(driver.data.len(), want, "every byte, once");
    }
    let stats = ring.rings[0].bufs.stats();
    eprintln!("{:?} after {} ENOBUFS", ring.rings[0].bufs, ring.stats.enobufs);
    assert!(ring.stats.enobufs > 0, "the ring never ran dry: the test proves nothing");
    assert!(stats.grown >= 1, "{stats:?}");
    assert!(ring.rings[0].bufs.allocated() > 4 * 4096);
    assert!(driver.data.iter().all(|&b| b == 7));
}

fn graceful_close_sends_then_shuts_down_and_releases_after_the_peer_closes<B: Bare>() {
    let Some((mut ring, addr)) = bare::<B>() else { return };
    let mut driver = Recorder::default();
    let mut peer = TcpStream::connect(addr).unwrap();
    peer.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    peer.write_all(b"ping").unwrap();
    poll_until(&mut ring, &mut driver, |d| d.data == b"ping");
    driver.queues[0].push(&mut Pool::default(), b"pong");
    ring.flush(0, &mut driver.queues[0]);
    ring.close(0, false);
    // Sent (a completion backend reports it; epoll may write at once), then the shutdown
    // queued behind it goes in with the next poll.
    poll_until(&mut ring, &mut driver, |d| d.queues[0].is_empty());
    ring.poll(&mut driver, Duration::ZERO).unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"pong", "the bytes, then our FIN");
    assert!(!driver.events.iter().any(|e| e.starts_with("released")), "not before the peer's FIN");
    drop(peer);
    poll_until(&mut ring, &mut driver, |d| d.events.contains(&"released 0".to_string()));
    assert_eq!(contract_events(&driver), ["accept 0", "released 0"], "no hang-up after close");
}

fn peer_reset_is_one_hangup_then_release_after_close<B: Bare>() {
    let Some((mut ring, addr)) = bare::<B>() else { return };
    let mut driver = Recorder::default();
    let peer = TcpStream::connect(addr).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    drop(peer);
    poll_until(&mut ring, &mut driver, |d| d.events.contains(&"hangup 0".to_string()));
    ring.close(0, false);
    ring.close(0, true); // the worker's second, hard call must be harmless
    poll_until(&mut ring, &mut driver, |d| d.events.contains(&"released 0".to_string()));
    assert_eq!(driver.events, ["accept 0", "hangup 0", "released 0"]);
}

fn half_closed_peer_still_gets_what_is_queued<B: Bare>() {
    let Some((mut ring, addr)) = bare::<B>() else { return };
    let mut driver = Recorder::default();
    let mut peer = TcpStream::connect(addr).unwrap();
    peer.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    peer.write_all(b"bye").unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.events.contains(&"hangup 0".to_string()));
    assert_eq!(driver.data, b"bye");
    // As the worker does after the hang-up: flush the reply, then close gracefully.
    driver.queues[0].push(&mut Pool::default(), b"see you");
    ring.flush(0, &mut driver.queues[0]);
    ring.close(0, false);
    poll_until(&mut ring, &mut driver, |d| d.events.contains(&"released 0".to_string()));
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"see you");
    assert_eq!(contract_events(&driver), ["accept 0", "hangup 0", "released 0"]);
}

fn hard_close_resets_a_peer_that_keeps_the_connection_open<B: Bare>() {
    let Some((mut ring, addr)) = bare::<B>() else { return };
    let mut driver = Recorder::default();
    let mut peer = TcpStream::connect(addr).unwrap();
    peer.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    ring.set_reading(0, false);
    peer.write_all(&[7; 10_000]).unwrap();
    ring.close(0, true);
    poll_until(&mut ring, &mut driver, |d| d.events.contains(&"released 0".to_string()));
    let mut byte = [0; 1];
    match peer.read(&mut byte) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset (SO_LINGER 0), got {other:?}"),
    }
}

fn paused_connection_gets_no_data_until_resumed<B: Bare>() {
    let Some((mut ring, addr)) = bare::<B>() else { return };
    let mut driver = Recorder::default();
    let mut peer = TcpStream::connect(addr).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    ring.set_reading(0, false);
    // Let the cancel land before anything arrives.
    for _ in 0..5 {
        ring.poll(&mut driver, Duration::from_millis(10)).unwrap();
    }
    peer.write_all(b"held back").unwrap();
    for _ in 0..10 {
        ring.poll(&mut driver, Duration::from_millis(10)).unwrap();
    }
    assert!(driver.data.is_empty(), "paused, yet got {:?}", driver.data);
    ring.set_reading(0, true);
    poll_until(&mut ring, &mut driver, |d| d.data == b"held back");
}

fn reports_each_peer_address<B: Bare>() {
    let Some((mut ring, addr)) = bare::<B>() else { return };
    let mut driver = Recorder::default();
    let first = TcpStream::connect(addr).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    let second = connect_from(Ipv4Addr::new(127, 0, 0, 2).into(), addr);
    poll_until(&mut ring, &mut driver, |d| d.next == 2);
    assert_eq!(driver.peers[0], Some(first.local_addr().unwrap()));
    assert_eq!(driver.peers[1], Some(second.local_addr().unwrap()));
    assert_eq!(second.local_addr().unwrap().ip(), Ipv4Addr::new(127, 0, 0, 2));
}

fn reports_an_ipv6_peer_address<B: Bare>() {
    let loopback: SocketAddr = "[::1]:0".parse().unwrap();
    if std::net::TcpListener::bind(loopback).is_err() {
        eprintln!("SKIPPED: no IPv6 loopback here");
        return;
    }
    let Some((mut ring, addr)) = bare_with::<B>(small(), loopback) else { return };
    let mut driver = Recorder::default();
    let client = TcpStream::connect(addr).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    assert_eq!(driver.peers[0], Some(client.local_addr().unwrap()));
}

fn hundred_concurrent_connects_each_get_their_own_address<B: Bare>() {
    let Some((mut ring, addr)) = bare::<B>() else { return };
    let mut driver = Recorder::default();
    // Four threads connect at once from four addresses, more connections than accept slots.
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 0, 1 + t).into();
                (0..25).map(|_| connect_from(from, addr)).collect::<Vec<_>>()
            })
        })
        .collect();
    poll_until(&mut ring, &mut driver, |d| d.next == 100);
    // The clients stay open until compared: a closed one's port could be reused.
    let clients: Vec<TcpStream> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let expected: HashSet<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    let reported: HashSet<SocketAddr> = driver.peers.iter().map(|p| p.unwrap()).collect();
    assert_eq!(expected.len(), 100);
    assert_eq!(reported, expected, "each connection's own address, none repeated");
}

/// Connects clients until the 64-slot direct-descriptor table (the only ring: the connection cap
/// is 0) is full, and one more, which waits in the listen queue: no accept is armed without a
/// free slot, so none fails and nobody is turned away. Returns the clients, the waiting one last.
fn fill_the_descriptor_table(
    ring: &mut Uring,
    driver: &mut Recorder,
    addr: SocketAddr,
) -> Vec<TcpStream> {
    assert_eq!(ring.rings.len(), 1);
    assert_eq!(ring.rings[0].files, 64);
    let mut clients: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
    poll_until(ring, driver, |d| d.next == 64);
    clients.push(TcpStream::connect(addr).unwrap());
    for _ in 0..5 {
        ring.poll(driver, Duration::from_millis(10)).unwrap();
    }
    assert_eq!(driver.next, 64, "no accept without a free slot");
    assert_eq!(ring.accept, Accept::Armed);
    assert!(!ring.accepts.any_in_flight(), "{ring:?}");
    assert_eq!((ring.rings.len(), ring.rings[0].used), (1, 64), "no ring past the cap");
    assert_eq!(ring.accept_errors(), 0);
    clients
}

#[test]
fn accepts_wait_for_a_free_slot_and_every_one_comes_back() {
    // A table of 64 direct descriptors (the cap's 0 plus the 64 kept for refusals).
    let settings = Settings { max_connections_per_worker: 0, ..small() };
    let Some((mut ring, addr)) = bare_with::<Uring>(settings, "127.0.0.1:0".parse().unwrap())
    else {
        return;
    };
    let mut driver = Recorder::default();
    let clients = fill_the_descriptor_table(&mut ring, &mut driver, addr);
    // 25 slots free: the waiting client and 8 late ones take 9, and all 16 accepts go back in.
    for id in 0..25 {
        ring.close(id, true);
    }
    poll_until(&mut ring, &mut driver, |d| d.released == 25);
    let late: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    poll_until(&mut ring, &mut driver, |d| d.next == 73);
    assert_eq!(driver.peers[64], Some(clients[64].local_addr().unwrap()), "the one that waited");
    let expected: HashSet<SocketAddr> = late.iter().map(|c| c.local_addr().unwrap()).collect();
    let reported: HashSet<SocketAddr> = driver.peers[65..].iter().map(|p| p.unwrap()).collect();
    assert_eq!(reported, expected);
    let deadline = Instant::now() + READ_TIMEOUT;
    while ring.accept != Accept::Armed || ring.accepts.busy().count() != SLOTS {
        assert!(Instant::now() < deadline, "accept slots not re-armed: {ring:?}");
        ring.poll(&mut driver, Duration::from_millis(10)).unwrap();
    }
    assert_eq!(ring.rings[0].used, 64 - 25 + 9 + SLOTS as u32);
    assert_eq!(ring.accept_errors(), 0);
}

#[test]
fn stop_accepting_while_waiting_for_a_free_slot_stops_at_once() {
    let settings = Settings { max_connections_per_worker: 0, ..small() };
    let Some((mut ring, addr)) = bare_with::<Uring>(settings, "127.0.0.1:0".parse().unwrap())
    else {
        return;
    };
    let mut driver = Recorder::default();
    let _clients = fill_the_descriptor_table(&mut ring, &mut driver, addr);
    ring.stop_accepting();
    assert_eq!(ring.accept, Accept::Stopped, "no accept in any ring to wait for");
    assert!(ring.listener.is_none());
    // Slots coming free must not arm anything.
    for id in 0..4 {
        ring.close(id, true);
    }
    poll_until(&mut ring, &mut driver, |d| d.released == 4);
    assert!(!ring.accepts.any_in_flight());
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    assert_eq!(driver.next, 64);
}

#[test]
fn stop_accepting_while_backing_off_waits_for_every_slot() {
    let Some((mut ring, addr)) = bare_uring() else { return };
    let mut driver = Recorder::default();
    ring.poll(&mut driver, Duration::ZERO).unwrap();
    // What an accept failing for want of memory or descriptors does.
    ring.back_off_accepts();
    assert_eq!(ring.accept, Accept::Retrying);
    // One slot completes meanwhile: its connection is handed over, the slot stays out.
    let _client = TcpStream::connect(addr).unwrap();
    poll_until(&mut ring, &mut driver, |d| d.next == 1);
    assert_eq!(ring.accepts.busy().count(), SLOTS - 1);
    ring.stop_accepting();
    assert_eq!(ring.accept, Accept::Stopping);
    let deadline = Instant::now() + READ_TIMEOUT;
    while ring.accept != Accept::Stopped {
        assert!(Instant::now() < deadline, "still stopping: {ring:?}");
        ring.poll(&mut driver, Duration::from_millis(10)).unwrap();
    }
    assert!(!ring.accepts.any_in_flight());
    assert!(ring.listener.is_none());
    // Long past the retry timer: it must not have re-armed anything.
    for _ in 0..5 {
        ring.poll(&mut driver, Duration::from_millis(10)).unwrap();
    }
    assert!(!ring.accepts.any_in_flight());
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    assert_eq!(driver.next, 1);
}

#[test]
fn stop_accepting_closes_the_listener() {
    let Some((mut ring, addr)) = bare_uring() else { return };
    let mut driver = Recorder::default();
    ring.stop_accepting();
    poll_until(&mut ring, &mut driver, |_| true);
    let deadline = Instant::now() + READ_TIMEOUT;
    // The listener closes once the cancel completes.
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        ring.poll(&mut driver, Duration::from_millis(10)).unwrap();
    }
    assert_eq!(driver.next, 0, "no connection handed out after stop_accepting");
    assert_eq!(ring.accept, Accept::Stopped);
    assert!(!ring.accepts.any_in_flight(), "every slot reported before the listener closed");
}

/// Echoes every byte back on the connection it came from; ids are never reused.
#[derive(Default)]
struct Echoer {
    queues: Vec<SendQueue>,
    pool: Pool,
    /// Connections with bytes to flush after the poll.
    dirty: Vec<usize>,
    hung_up: Vec<usize>,
    released: usize,
    received: usize,
    /// Echo from the receive buffer itself when nothing is in flight, sent at once (the
    /// worker's write-through of a borrowed echo); otherwise copied and flushed after the poll.
    borrow: bool,
    /// Reads echoed by reference, and how many of them a send still held after the read.
    borrowed: usize,
    held: usize,
}

impl Driver for Echoer {
    fn on_accept(&mut self, _peer: Option<SocketAddr>) -> Option<usize> {
        self.queues.push(SendQueue::default());
        Some(self.queues.len() - 1)
    }
    fn on_data(
        &mut self,
        id: usize,
        data: &mut [u8],
        lend: bool,
        send: &mut dyn FnMut(usize, &mut SendQueue),
    ) -> bool {
        self.received += data.len();
        let queue = &mut self.queues[id];
        if !self.borrow || !lend || queue.in_flight().is_some() {
            queue.push(&mut self.pool, data);
            self.dirty.push(id);
            return false;
        }
        // SAFETY: settled below, before returning; what a send still holds, the backend keeps.
        unsafe { queue.push_borrowed(&mut self.pool, &[], data) };
        send(id, queue);
        self.borrowed += 1;
        let held = queue.settle();
        self.held += usize::from(held);
        if !queue.is_empty() {
            self.dirty.push(id);
        }
        held
    }
    fn on_hangup(&mut self, id: usize) {
        self.hung_up.push(id);
    }
    fn queue(&mut self, id: usize) -> Option<&mut SendQueue> {
        self.queues.get_mut(id)
    }
    fn on_sent(&mut self, id: usize) {
        // Bytes that arrived while the last send was in flight.
        self.dirty.push(id);
    }
    fn on_released(&mut self, _id: usize) {
        self.released += 1;
    }
}

/// One poll, then what the poll made the echo queue goes out.
fn poll_echo(ring: &mut Uring, echo: &mut Echoer, timeout: Duration) {
    ring.poll(echo, timeout).unwrap();
    for id in std::mem::take(&mut echo.dirty) {
        ring.flush(id, &mut echo.queues[id]);
    }
}

/// Each client sends its own line and reads it back, while the test thread polls (bounded).
fn echo_round(ring: &mut Uring, echo: &mut Echoer, clients: &mut [TcpStream], round: usize) {
    let lines: Vec<String> =
        (0..clients.len()).map(|i| format!("round {round} client {i}\n")).collect();
    let total = echo.received + lines.iter().map(String::len).sum::<usize>();
    for (client, line) in clients.iter_mut().zip(&lines) {
        client.write_all(line.as_bytes()).unwrap();
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    while echo.received < total || echo.queues.iter().any(|q| !q.is_empty()) {
        assert!(Instant::now() < deadline, "echo stalled: {ring:?}");
        poll_echo(ring, echo, Duration::from_millis(10));
    }
    for (client, line) in clients.iter_mut().zip(&lines) {
        let mut got = vec![0; line.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, line.as_bytes());
    }
}

#[test]
fn an_echo_sent_from_its_receive_buffer_keeps_the_buffer_until_the_send_is_over() {
    let Some((mut ring, addr)) = bare_uring() else { return };
    let mut echo = Echoer { borrow: true, ..Echoer::default() };
    let client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    // 4 MiB through 4 KiB receive buffers, written and read by two threads: the echo's sends
    // wait on the client's window, holding their receive buffers, while more arrives.
    const TOTAL: usize = 4 << 20;
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 31 % 253) as u8).collect();
    let mut writer = client.try_clone().unwrap();
    let sent = data.clone();
    let writing = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut reader = client.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut got = vec![0; TOTAL];
        reader.read_exact(&mut got).map(|_| got)
    });
    let deadline = Instant::now() + READ_TIMEOUT;
    while echo.received < TOTAL || echo.queues.iter().any(|q| !q.is_empty()) {
        assert!(Instant::now() < deadline, "echo stalled: {ring:?}");
        poll_echo(&mut ring, &mut echo, Duration::from_millis(10));
    }
    writing.join().unwrap();
    let got = reading.join().unwrap().unwrap();
    assert!(got == data, "the echo, byte for byte");
    assert!(echo.borrowed > 0 && echo.held > 0, "{} borrowed, {} held", echo.borrowed, echo.held);
    assert!(ring.held.is_empty(), "every held buffer is back");
    assert!(ring.conns.iter().all(|c| !c.has(super::HELD)));
    assert!(ring.rings.iter().all(|r| r.bufs.ours() == 0), "no buffer left out of the ring");

    // With no room for held buffers, nothing borrows: the echo is copied.
    ring.max_held = 0;
    let before = (echo.borrowed, echo.received);
    let mut c = client.try_clone().unwrap();
    c.write_all(b"copied").unwrap();
    while echo.received < before.1 + 6 || echo.queues.iter().any(|q| !q.is_empty()) {
        assert!(Instant::now() < deadline, "echo stalled: {ring:?}");
        poll_echo(&mut ring, &mut echo, Duration::from_millis(10));
    }
    let mut got = [0; 6];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"copied");
    assert_eq!(echo.borrowed, before.0, "no read lent once the bound is reached");
}

#[test]
fn several_rings_on_one_thread_hold_and_echo_every_connection() {
    if let Err(why) = crate::runtime::probe_uring(&Settings::default()) {
        eprintln!("SKIPPED: io_uring unavailable: {why}");
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    // Four direct descriptors per ring: 30 connections need at least 8 rings.
    let mut ring =
        Uring::with_files_per_ring(listener, Waker::new().unwrap(), &small(), 4).unwrap();
    let mut echo = Echoer::default();
    let mut clients: Vec<TcpStream> = (0..30)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
            c
        })
        .collect();
    let deadline = Instant::now() + READ_TIMEOUT;
    while echo.queues.len() < clients.len() {
        assert!(Instant::now() < deadline, "accepted {}: {ring:?}", echo.queues.len());
        poll_echo(&mut ring, &mut echo, Duration::from_millis(10));
    }
    let spread = |ring: &Uring| {
        let live = ring.conns.iter().filter(|c| c.has(super::LIVE));
        live.map(|c| c.ring()).collect::<HashSet<usize>>()
    };
    assert!(spread(&ring).len() >= 8, "{:?}: {ring:?}", spread(&ring));
    for r in &ring.rings {
        assert!(r.files == 4 && r.used <= 4, "{ring:?}");
    }
    for round in 0..3 {
        echo_round(&mut ring, &mut echo, &mut clients, round);
    }

    // Data on a connection of the newest ring wakes a wait in the primary at once.
    let last = (0..echo.queues.len()).max_by_key(|&id| ring.conns[id].ring()).unwrap();
    assert!(ring.conns[last].ring() > 0);
    let mut writer = clients[last].try_clone().unwrap();
    let wrote = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        writer.write_all(b"wake\n").unwrap();
    });
    let before = echo.received;
    let started = Instant::now();
    while echo.received == before {
        assert!(started.elapsed() < READ_TIMEOUT, "the data never arrived: {ring:?}");
        poll_echo(&mut ring, &mut echo, Duration::from_secs(10));
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "woken after {waited:?}");
    wrote.join().unwrap();
    while !echo.queues[last].is_empty() {
        assert!(started.elapsed() < READ_TIMEOUT, "the echo never left: {ring:?}");
        poll_echo(&mut ring, &mut echo, Duration::from_millis(10));
    }
    let mut got = [0; 5];
    clients[last].read_exact(&mut got).unwrap();
    assert_eq!(&got, b"wake\n");

    // Half the clients leave: their slots come free and the next clients take them, with no
    // new ring; everyone still echoes.
    let rings = ring.rings.len();
    for client in clients.drain(..15) {
        drop(client);
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    while echo.released < 15 {
        assert!(Instant::now() < deadline, "released {}: {ring:?}", echo.released);
        for id in std::mem::take(&mut echo.hung_up) {
            ring.close(id, false);
        }
        poll_echo(&mut ring, &mut echo, Duration::from_millis(10));
    }
    let accepted = echo.queues.len();
    for _ in 0..15 {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        clients.push(c);
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    while echo.queues.len() < accepted + 15 {
        assert!(Instant::now() < deadline, "accepted {}: {ring:?}", echo.queues.len());
        poll_echo(&mut ring, &mut echo, Duration::from_millis(10));
    }
    assert_eq!(ring.rings.len(), rings, "freed slots reused: {ring:?}");
    echo_round(&mut ring, &mut echo, &mut clients, 3);
    assert!(echo.hung_up.is_empty());
    assert_eq!(ring.accept_errors(), 0);
}

#[test]
fn waker_ends_the_wait_from_another_thread() {
    let Some((mut ring, _)) = bare_uring() else { return };
    let mut driver = Recorder::default();
    let waker = ring.waker.clone();
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake();
    });
    ring.poll(&mut driver, Duration::from_secs(10)).unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    // And again: the multishot poll stays armed, the eventfd was reset.
    let waker = ring.waker.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake();
    });
    let started = Instant::now();
    ring.poll(&mut driver, Duration::from_secs(10)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Connect rate through the bare backend: client threads connect and close at once, the ring
/// accepts and closes. Reports connections per second and the polling thread's CPU time per
/// connection (the accept, close and release work run there). Run it alone, in release:
/// `cargo test -p ringside --lib --release -- --ignored accept_rate --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn accept_rate() {
    const CONNECTIONS: usize = 5000;
    const CLIENTS: usize = 4;
    let Some((mut ring, addr)) = bare_uring() else { return };
    let mut driver = Recorder::default();
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..CONNECTIONS / CLIENTS {
                    let stream = TcpStream::connect(addr).unwrap();
                    // Close with a reset: no TIME_WAIT to exhaust the ports over repeated runs.
                    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut closed = 0;
    while driver.released < CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "{} of {CONNECTIONS} released, {} accepted; {ring:?}",
            driver.released,
            driver.next
        );
        ring.poll(&mut driver, Duration::from_millis(10)).unwrap();
        for id in closed..driver.next {
            ring.close(id, true);
        }
        closed = driver.next;
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu() - cpu_before;
    for client in clients {
        client.join().unwrap();
    }
    eprintln!(
        "{CONNECTIONS} connections from {CLIENTS} threads in {elapsed:?}: {:.0}/s, \
         {:.1} µs of the polling thread's CPU each",
        CONNECTIONS as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / CONNECTIONS as f64,
    );
    assert!(driver.peers.iter().all(Option::is_some), "every peer address reported");
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Echoes every message; counts closes by code.
#[derive(Clone, Default)]
struct Echo {
    closes: Arc<Mutex<Vec<u16>>>,
}

impl Handler for Echo {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }

    fn on_close(&mut self, _ws: &mut WebSocket<'_>, code: CloseCode, _reason: &str) {
        self.closes.lock().unwrap().push(code.0);
    }
}

fn builder(backend: Backend) -> Builder {
    Server::builder()
        .bind("127.0.0.1:0")
        .unwrap()
        .backend(backend)
        .workers(Workers::Count(1))
        .pin(false)
}

/// Starts `echo` on `backend`; `None` (said out loud) if io_uring cannot run here.
fn start(
    backend: Backend,
    tune: impl FnOnce(Builder) -> Builder,
    echo: Echo,
) -> Option<ServerHandle> {
    if backend == Backend::IoUring {
        if let Err(why) = crate::runtime::probe_uring(&Settings::default()) {
            eprintln!("SKIPPED: io_uring unavailable: {why}");
            return None;
        }
    }
    let handle = tune(builder(backend)).build(move || echo.clone()).unwrap().spawn().unwrap();
    assert_eq!(handle.backend(), if backend == Backend::IoUring { "io_uring" } else { "epoll" });
    Some(handle)
}

/// What the client got, owned.
#[derive(Debug, PartialEq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
    Eof,
}

struct Client {
    stream: TcpStream,
    ws: Connection,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let key = generate_key();
        let mut request = Vec::new();
        write_client_request(&addr.to_string(), "/", &key, &[], &[], &mut request);
        stream.write_all(&request).unwrap();
        let mut buf = vec![0; 64 << 10];
        let mut end = 0;
        let head_len = loop {
            let n = stream.read(&mut buf[end..]).expect("handshake response");
            assert!(n > 0, "server closed during the handshake");
            end += n;
            if let Some(accepted) = parse_response(&buf[..end], &key, &[]).unwrap() {
                break accepted.head_len;
            }
        };
        Client {
            stream,
            ws: Connection::new(Role::Client, Config::default()),
            buf,
            start: head_len,
            end,
        }
    }

    fn send_text(&mut self, text: &str) {
        self.ws.send_text(text).unwrap();
        let out = self.ws.take_output();
        self.stream.write_all(&out).unwrap();
    }

    fn close(&mut self, code: CloseCode) {
        self.ws.close(code, "").unwrap();
        let out = self.ws.take_output();
        self.stream.write_all(&out).unwrap();
    }

    /// The next message, close frame or EOF; answers what the protocol answers (the close echo).
    fn next(&mut self) -> io::Result<Got> {
        loop {
            while self.start < self.end {
                let (n, got) = match self.ws.read(&mut self.buf[self.start..self.end]) {
                    Ok((n, event)) => (n, event.and_then(own)),
                    Err(e) => panic!("bad frames from the server: {e}"),
                };
                self.start += n;
                let reply = self.ws.take_output();
                if !reply.is_empty() {
                    let _ = self.stream.write_all(&reply);
                }
                if let Some(got) = got {
                    return Ok(got);
                }
            }
            self.start = 0;
            self.end = 0;
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                return Ok(Got::Eof);
            }
            self.end = n;
        }
    }
}

fn own(event: Event<'_>) -> Option<Got> {
    match event {
        Event::Message(Message::Text(t)) => Some(Got::Text(t.to_owned())),
        Event::Message(Message::Binary(b)) => Some(Got::Binary(b.to_vec())),
        Event::Close(frame) => Some(Got::Close(frame.map(|f| f.code.0))),
        Event::Ping(_) | Event::Pong(_) => None,
    }
}

/// Waits (bounded) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + READ_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Shuts down and checks it was prompt: every connection was released.
fn shut(handle: ServerHandle) {
    let started = Instant::now();
    handle.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
}

fn big_text(len: usize) -> String {
    (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

fn echoes_small_and_large_messages(backend: Backend) {
    let Some(handle) = start(backend, |b| b, Echo::default()) else { return };
    let mut client = Client::connect(handle.local_addr());
    client.send_text("hello");
    assert_eq!(client.next().unwrap(), Got::Text("hello".into()));
    // Past the 1 MiB high-water mark: the server pauses reading while it sends it back.
    let big = big_text(1 << 20);
    client.send_text(&big);
    assert_eq!(client.next().unwrap(), Got::Text(big));
    for i in 0..50 {
        client.send_text(&format!("message {i}"));
    }
    for i in 0..50 {
        assert_eq!(client.next().unwrap(), Got::Text(format!("message {i}")));
    }
    drop(client);
    shut(handle);
}

fn serves_200_connections_at_once(backend: Backend) {
    let Some(handle) = start(backend, |b| b, Echo::default()) else { return };
    let mut clients: Vec<Client> = (0..200).map(|_| Client::connect(handle.local_addr())).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send_text(&format!("client {i}"));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.next().unwrap(), Got::Text(format!("client {i}")));
    }
    drop(clients);
    shut(handle);
}

fn client_gone_mid_message_is_a_hangup(backend: Backend) {
    let echo = Echo::default();
    let Some(handle) = start(backend, |b| b, echo.clone()) else { return };
    let mut client = Client::connect(handle.local_addr());
    client.ws.send_text(&big_text(100_000)).unwrap();
    let frame = client.ws.take_output();
    client.stream.write_all(&frame[..50_000]).unwrap();
    drop(client);
    eventually("the hang-up", || echo.closes.lock().unwrap().contains(&1006));
    // The server still serves.
    let mut other = Client::connect(handle.local_addr());
    other.send_text("still here");
    assert_eq!(other.next().unwrap(), Got::Text("still here".into()));
    drop(other);
    shut(handle);
}

fn close_handshake_then_eof(backend: Backend) {
    let echo = Echo::default();
    let Some(handle) = start(backend, |b| b, echo.clone()) else { return };
    let mut client = Client::connect(handle.local_addr());
    client.send_text("before");
    assert_eq!(client.next().unwrap(), Got::Text("before".into()));
    client.close(CloseCode::NORMAL);
    assert_eq!(client.next().unwrap(), Got::Close(Some(1000)));
    assert_eq!(client.next().unwrap(), Got::Eof, "the server closes TCP after the handshake");
    assert_eq!(*echo.closes.lock().unwrap(), vec![1000]);
    // The server waits for our FIN (up to its close timeout): give it.
    drop(client);
    shut(handle);
}

fn shutdown_sends_going_away(backend: Backend) {
    let Some(handle) = start(backend, |b| b, Echo::default()) else { return };
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(handle.local_addr())).collect();
    for client in &mut clients {
        client.send_text("hi");
        assert_eq!(client.next().unwrap(), Got::Text("hi".into()));
    }
    let stopping = std::thread::spawn(move || shut(handle));
    for client in &mut clients {
        // `next` answers the close frame, as a client would.
        assert_eq!(client.next().unwrap(), Got::Close(Some(1001)));
        assert_eq!(client.next().unwrap(), Got::Eof);
    }
    // The server waits for our FIN after the close handshake (up to its shutdown timeout).
    drop(clients);
    stopping.join().unwrap();
}

fn refuses_past_the_connection_cap(backend: Backend) {
    let Some(handle) = start(backend, |b| b.max_connections_per_worker(1), Echo::default()) else {
        return;
    };
    let mut first = Client::connect(handle.local_addr());
    let mut second = TcpStream::connect(handle.local_addr()).unwrap();
    second.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut byte = [0; 1];
    // Closed without a byte: EOF, or a reset if our upgrade request raced the close.
    assert!(matches!(second.read(&mut byte), Ok(0) | Err(_)));
    first.send_text("first is fine");
    assert_eq!(first.next().unwrap(), Got::Text("first is fine".into()));
    drop(first);
    shut(handle);
}

fn backpressure_pauses_and_resumes(backend: Backend) {
    let tune = |b: Builder| b.send_high_water(64 << 10).send_limit(64 << 20);
    let Some(handle) = start(backend, tune, Echo::default()) else { return };
    let client = Client::connect(handle.local_addr());
    // Write 8 MiB of 32 KiB messages without reading: the server's queue passes the high-water
    // mark, it stops reading, TCP fills up, the writer blocks until the reader drains.
    let mut writer = client.stream.try_clone().unwrap();
    let mut ws = Connection::new(Role::Client, Config::default());
    let message = big_text(32 << 10);
    let sender = std::thread::spawn(move || {
        for _ in 0..256 {
            ws.send_text(&message).unwrap();
            writer.write_all(&ws.take_output()).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut client = client;
    let expected = big_text(32 << 10);
    for _ in 0..256 {
        assert_eq!(client.next().unwrap(), Got::Text(expected.clone()));
    }
    sender.join().unwrap();
    drop(client);
    shut(handle);
}

fn tiny_buffer_ring_still_delivers_everything(backend: Backend) {
    // Two 4 KiB receive buffers for 16 busy connections: recvs find the ring empty (ENOBUFS)
    // and must be re-armed without losing or reordering a byte.
    let tune = |b: Builder| b.recv_buffers(2).recv_buffer_size(4096);
    let Some(handle) = start(backend, tune, Echo::default()) else { return };
    let addr = handle.local_addr();
    let workers: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for round in 0..8 {
                    let text = format!("{i}:{round}:{}", big_text(20_000 + i * 100));
                    client.send_text(&text);
                    assert_eq!(client.next().unwrap(), Got::Text(text));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    shut(handle);
}

fn unresponsive_peer_is_dropped_after_close_timeout(backend: Backend) {
    let tune = |b: Builder| {
        b.idle_timeout(Duration::from_secs(1))
            .ping_idle(false)
            .close_timeout(Duration::from_secs(1))
    };
    let echo = Echo::default();
    let Some(handle) = start(backend, tune, echo.clone()) else { return };
    let mut client = Client::connect(handle.local_addr());
    let mut raw = [0u8; 256];
    // The idle timeout sends close 1000; we never answer, so the close timeout drops TCP.
    let n = client.stream.read(&mut raw).unwrap();
    assert!(n >= 4 && raw[0] == 0x88, "expected a close frame, got {:?}", &raw[..n]);
    match client.stream.read(&mut raw) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection dropped, got {other:?}"),
    }
    eventually("on_close", || !echo.closes.lock().unwrap().is_empty());
    shut(handle);
}

fn broadcast_wakes_the_worker(backend: Backend) {
    let Some(handle) = start(backend, |b| b, Echo::default()) else { return };
    let mut client = Client::connect(handle.local_addr());
    client.send_text("open");
    assert_eq!(client.next().unwrap(), Got::Text("open".into()));
    // From another thread: only the waker can end the worker's wait.
    handle.broadcast(Message::Text("to all"));
    assert_eq!(client.next().unwrap(), Got::Text("to all".into()));
    drop(client);
    shut(handle);
}

fn many_short_connections(backend: Backend) {
    let Some(handle) = start(backend, |b| b, Echo::default()) else { return };
    for i in 0..300 {
        let mut client = Client::connect(handle.local_addr());
        client.send_text(&format!("{i}"));
        assert_eq!(client.next().unwrap(), Got::Text(format!("{i}")));
        if i % 2 == 0 {
            client.close(CloseCode::NORMAL);
            assert_eq!(client.next().unwrap(), Got::Close(Some(1000)));
        }
    }
    shut(handle);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod io_uring {
            $(#[test] fn $name() { super::$name(crate::Backend::IoUring) })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name(crate::Backend::Epoll) })*
        }
    };
}

on_both_backends!(
    echoes_small_and_large_messages,
    serves_200_connections_at_once,
    client_gone_mid_message_is_a_hangup,
    close_handshake_then_eof,
    shutdown_sends_going_away,
    refuses_past_the_connection_cap,
    backpressure_pauses_and_resumes,
    tiny_buffer_ring_still_delivers_everything,
    unresponsive_peer_is_dropped_after_close_timeout,
    broadcast_wakes_the_worker,
    many_short_connections,
);
