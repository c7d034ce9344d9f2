//! Topics over real TCP, on both backends: per-topic order, delivery across workers and from a
//! publisher thread, unsubscribe and close in the middle of a stream, and each slow-consumer
//! policy (close, drop, conflate) against a subscriber that stops reading.
//!
//! The server runs a small text protocol (the `ringside --app broadcast` one, plus `kpub` for
//! keyed publishes and `who` for the worker a connection is on).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringside::{Handler, Message, SlowConsumer, TopicPolicy, WebSocket, Workers};
use ringside_tests::{each_backend, Client, Seen, TestServer, WAIT};
use socket2::{Domain, Socket, Type};

/// `sub T`, `unsub T` (answered `ok ...`), `pub T PAYLOAD`, `kpub T KEY PAYLOAD`, `who`.
struct PubSub;

impl Handler for PubSub {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(line) = msg else { return };
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("sub"), Some(t), None, None) => {
                ws.subscribe(t).unwrap();
                let _ = ws.send_text(&format!("ok sub {t}"));
            }
            (Some("unsub"), Some(t), None, None) => {
                assert!(ws.unsubscribe(t));
                let _ = ws.send_text(&format!("ok unsub {t}"));
            }
            (Some("pub"), Some(t), Some(first), rest) => {
                let payload = match rest {
                    Some(rest) => format!("{first} {rest}"),
                    None => first.to_owned(),
                };
                ws.publish(t, Message::Text(&payload));
            }
            (Some("kpub"), Some(t), Some(key), Some(payload)) => {
                ws.publish_keyed(t, key.parse().unwrap(), Message::Text(payload));
            }
            (Some("who"), None, None, None) => {
                let _ = ws.send_text(&format!("worker {}", ws.id().worker()));
            }
            _ => panic!("bad test command {line:?}"),
        }
    }
}

fn start(
    backend: ringside::Backend,
    configure: impl FnOnce(ringside::Builder) -> ringside::Builder,
) -> TestServer {
    TestServer::start(backend, configure, || PubSub)
}

fn subscriber(addr: SocketAddr, topics: &[&str]) -> Client {
    let mut c = Client::connect(addr).unwrap();
    subscribe(&mut c, topics);
    c
}

fn subscribe(c: &mut Client, topics: &[&str]) {
    for t in topics {
        c.send_text(&format!("sub {t}")).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text(format!("ok sub {t}")));
    }
}

fn text(c: &mut Client) -> String {
    match c.recv().unwrap() {
        Seen::Text(t) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// A client whose kernel buffers are small, so that not reading is felt after kilobytes.
fn slow_subscriber(addr: SocketAddr, topics: &[&str]) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(8 << 10).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let stream: TcpStream = socket.into();
    let mut c = Client::handshake(stream, &addr.to_string(), "/", &[], &[], &[]).unwrap();
    subscribe(&mut c, topics);
    c
}

/// Sends `pub` commands in batches (one write each), so thousands go out quickly.
fn publish_many(c: &mut Client, lines: impl Iterator<Item = String>) {
    let mut n = 0;
    for line in lines {
        c.conn.send_text(&line).unwrap();
        n += 1;
        if n % 64 == 0 {
            c.flush().unwrap();
        }
    }
    c.flush().unwrap();
}

each_backend! {
    fn each_subscriber_gets_a_topics_messages_in_publish_order(backend) {
        let server = start(backend, |b| b);
        let mut subs: Vec<Client> = (0..3).map(|_| subscriber(server.addr, &["a"])).collect();
        let mut other = subscriber(server.addr, &["b"]);
        let mut publisher = Client::connect(server.addr).unwrap();
        // Small publishes are copied into each subscriber's queue, large ones (over 512 bytes)
        // queued by reference: mixed, they must still arrive in publish order.
        let pad = "z".repeat(2000);
        let payload = |i: usize| if i % 7 == 3 { format!("{i} {pad}") } else { i.to_string() };
        publish_many(&mut publisher, (0..500).map(|i| format!("pub a {}", payload(i))));
        publisher.send_text("pub b done").unwrap();
        for s in &mut subs {
            for i in 0..500 {
                assert_eq!(text(s), payload(i));
            }
        }
        assert_eq!(text(&mut other), "done", "only topic b reaches b's subscriber");
        wait_stats(&server, |s| s.delivered == 3 * 500 + 1);
    }
}

each_backend! {
    fn publishes_reach_subscribers_on_every_worker_and_from_a_publisher_thread(backend) {
        let server = start(backend, |b| b.workers(Workers::Count(2)));
        // The kernel spreads connections over the two listeners: open until both have some.
        let mut subs = Vec::new();
        let mut workers = HashMap::new();
        for _ in 0..64 {
            let mut c = subscriber(server.addr, &["t"]);
            c.send_text("who").unwrap();
            *workers.entry(text(&mut c)).or_insert(0) += 1;
            subs.push(c);
            if workers.len() == 2 && subs.len() >= 4 {
                break;
            }
        }
        assert_eq!(workers.len(), 2, "64 connections all landed on one worker: {workers:?}");
        // From a connection (whichever worker it is on)...
        let mut publisher = Client::connect(server.addr).unwrap();
        publish_many(&mut publisher, (0..200).map(|i| format!("pub t c{i}")));
        for s in &mut subs {
            for i in 0..200 {
                assert_eq!(text(s), format!("c{i}"));
            }
        }
        // ...and from a thread that is not a worker.
        let publisher = server.handle().publisher();
        std::thread::spawn(move || {
            for i in 0..200 {
                publisher.publish("t", Message::Text(&format!("p{i}")));
            }
        })
        .join()
        .unwrap();
        for s in &mut subs {
            for i in 0..200 {
                assert_eq!(text(s), format!("p{i}"));
            }
        }
    }
}

each_backend! {
    fn unsubscribe_and_close_mid_stream(backend) {
        let server = start(backend, |b| b);
        let mut leaving = subscriber(server.addr, &["a", "b"]);
        let closing = subscriber(server.addr, &["a"]);
        let mut staying = subscriber(server.addr, &["a"]);
        let mut publisher = Client::connect(server.addr).unwrap();
        publish_many(&mut publisher, (0..100).map(|i| format!("pub a {i}")));
        // The unsubscribe lands somewhere in the stream: what came before its reply is a
        // prefix, in order; after it nothing more of `a` arrives.
        leaving.send_text("unsub a").unwrap();
        drop(closing); // goes away without reading or closing
        let mut expect = 0;
        loop {
            match text(&mut leaving).as_str() {
                "ok unsub a" => break,
                n => {
                    assert_eq!(n, expect.to_string());
                    expect += 1;
                }
            }
        }
        publish_many(&mut publisher, (100..200).map(|i| format!("pub a {i}")));
        publisher.send_text("pub b end").unwrap();
        assert_eq!(text(&mut leaving), "end", "nothing of `a` after the unsubscribe");
        for i in 0..200 {
            assert_eq!(text(&mut staying), i.to_string());
        }
        // The closed subscriber's slot is gone from the topic: a new connection reusing it
        // gets nothing it did not subscribe to.
        wait_stats(&server, |s| s.connections == 3);
        let mut fresh = subscriber(server.addr, &["b"]);
        publisher.send_text("pub a again").unwrap();
        publisher.send_text("pub b second").unwrap();
        assert_eq!(text(&mut fresh), "second");
        assert_eq!(text(&mut staying), "again");
    }
}

/// Waits (bounded) until the server's counters (updated once per loop iteration) satisfy `ok`.
fn wait_stats(server: &TestServer, ok: impl Fn(&ringside::Stats) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok(&server.handle().stats()) {
        assert!(Instant::now() < deadline, "{:?}", server.handle().stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes per write in `flood`: 32 KiB, well under the 128 KiB limit of the slow tests, so
/// a subscriber that keeps reading never passes it.
const FLOOD_BATCH: usize = 32;

/// A 1 KiB payload for message `i`.
fn big(i: usize) -> String {
    format!("{i:08} {}", "x".repeat(1015))
}

/// Publishes 1 KiB messages while `slow` is not read, until `done` says the server has reacted
/// (bounded), and checks a fast subscriber gets every one in order meanwhile.
fn flood(server: &TestServer, fast: &mut Client, done: impl Fn(&ringside::Stats) -> bool) -> usize {
    let mut publisher = Client::connect(server.addr).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while !done(&server.handle().stats()) {
        assert!(
            started.elapsed() < WAIT,
            "no reaction after {sent}: {:?}",
            server.handle().stats()
        );
        let batch = sent..sent + FLOOD_BATCH;
        publish_many(&mut publisher, batch.clone().map(|i| format!("pub a {}", big(i))));
        for i in batch {
            assert_eq!(text(fast), big(i), "the fast subscriber is not held back");
        }
        sent += FLOOD_BATCH;
    }
    sent
}

each_backend! {
    fn slow_subscriber_is_closed_under_the_close_policy(backend) {
        let policy = TopicPolicy { slow_consumer: SlowConsumer::Close, limit: 128 << 10 };
        let server = start(backend, |b| b.topic("a", policy).close_timeout(Duration::from_secs(1)));
        let mut slow = slow_subscriber(server.addr, &["a"]);
        let mut fast = subscriber(server.addr, &["a"]);
        let sent = flood(&server, &mut fast, |s| s.slow_closed == 1);
        // What reached it: whole messages in order, then 1008 (or TCP's end, if even the close
        // frame could not be sent before the close timeout).
        let mut next = 0;
        loop {
            match slow.recv() {
                Ok(Seen::Text(t)) => {
                    assert_eq!(t, big(next));
                    next += 1;
                }
                Ok(Seen::Close(code, _)) => {
                    assert_eq!(code, Some(1008));
                    break;
                }
                Ok(Seen::Eof) => break,
                Ok(other) => panic!("{other:?}"),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("after {next}: {e}"),
            }
        }
        assert!(next < sent, "closed before it got everything ({next} of {sent})");
    }
}

each_backend! {
    fn slow_subscriber_misses_messages_under_the_drop_policy_and_stays(backend) {
        let policy = TopicPolicy { slow_consumer: SlowConsumer::Drop, limit: 128 << 10 };
        let server = start(backend, |b| b.topic("a", policy));
        let mut slow = slow_subscriber(server.addr, &["a"]);
        let mut fast = subscriber(server.addr, &["a"]);
        let sent = flood(&server, &mut fast, |s| s.dropped >= 200);
        // It gets what fitted, in order, and the rest is dropped: it never read, so its queue
        // stayed full from the first drop on.
        slow.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut got = 0;
        loop {
            match slow.recv() {
                Ok(Seen::Text(t)) => {
                    assert_eq!(t[..8].parse::<usize>().unwrap(), got, "in order");
                    got += 1;
                }
                Ok(other) => panic!("{other:?}"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("{e}"),
            }
        }
        slow.stream.set_read_timeout(Some(WAIT)).unwrap();
        assert!(got < sent, "nothing was dropped ({got} of {sent} received)");
        let mut publisher = Client::connect(server.addr).unwrap();
        publisher.send_text("pub a last").unwrap();
        assert_eq!(text(&mut fast), "last");
        assert_eq!(text(&mut slow), "last", "still subscribed after the drops");
        assert_eq!(server.handle().stats().slow_closed, 0);
    }
}

each_backend! {
    fn conflation_gives_a_lagging_subscriber_the_latest_value_per_key(backend) {
        let policy = TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: 16 << 10 };
        let server = start(backend, |b| b.topic("px", policy));
        let mut slow = slow_subscriber(server.addr, &["px"]);
        let mut fast = subscriber(server.addr, &["px"]);
        let mut publisher = Client::connect(server.addr).unwrap();
        const KEYS: usize = 10;
        // 10 MiB in all: well past what the kernel's socket buffers absorb (a few MiB).
        const ROUNDS: usize = 1000;
        let pad = "y".repeat(1000);
        let line = |round: usize, key: usize| format!("kpub px {key} {key} {round:05} {pad}");
        let value = |round: usize, key: usize| format!("{key} {round:05} {pad}");
        for round in 0..ROUNDS {
            publish_many(&mut publisher, (0..KEYS).map(|key| line(round, key)));
            for key in 0..KEYS {
                assert_eq!(text(&mut fast), value(round, key), "the fast one gets every value");
            }
        }
        wait_stats(&server, |s| s.conflated > 0);
        // The slow one: per key, rounds only ever increase, and the last it sees of every key
        // is the final round, with far fewer messages than were published.
        let mut latest = [None::<usize>; KEYS];
        let mut got = 0;
        while latest.iter().any(|r| *r != Some(ROUNDS - 1)) {
            let t = text(&mut slow);
            let (key, rest) = t.split_once(' ').unwrap();
            let key: usize = key.parse().unwrap();
            let round: usize = rest[..5].parse().unwrap();
            if let Some(prev) = latest[key] {
                assert!(round > prev, "key {key}: round {round} after {prev}");
            }
            latest[key] = Some(round);
            got += 1;
            assert!(got <= KEYS * ROUNDS);
        }
        assert!(got < KEYS * ROUNDS / 2, "conflation should have saved most: got {got}");
    }
}
