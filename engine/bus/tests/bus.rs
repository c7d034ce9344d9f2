//! Two nodes (two bus handles) against a real `nats-server` and a real `redis-server`: every
//! test body runs on both. The server's own view (NATS monitoring `/connz?subs=1`, Redis
//! `PUBSUB`) checks what the nodes subscribed.

#[macro_use]
mod harness;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringside_bus::{subject, BusError, Event, Options};

use crate::harness::{wait_until, BusServer, Kind, Node, Proxy};

/// Long enough for anything on loopback; a test waits this only when something is broken.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" is watched for.
const QUIET: Duration = Duration::from_millis(200);

fn frame(text: &str) -> Bytes {
    // An unmasked text frame, as the server encodes one (payloads here stay under 126 bytes).
    let mut f = vec![0x81, text.len() as u8];
    f.extend_from_slice(text.as_bytes());
    Bytes::from(f)
}

each_bus! {
    fn publish_reaches_the_other_node_once_in_order_and_never_echoes(kind) {
        let server = BusServer::start(kind);
        let a = Node::connect(&server.url());
        let b = Node::connect(&server.url());
        assert_ne!(a.bus.node_id(), b.bus.node_id());
        let topic: Arc<str> = "game.42".into();
        let subj = subject::subject(&topic).unwrap();
        // `a` subscribes too: its own publishes must still not come back to it.
        a.bus.interest_added(&topic).unwrap();
        b.bus.interest_added(&topic).unwrap();
        server.wait_subscribers(&subj, 2);

        for i in 0..100u64 {
            a.bus.publish(Arc::clone(&topic), frame(&format!("m{i}")), i % 3).unwrap();
        }
        for i in 0..100u64 {
            let d = b.delivery(WAIT).unwrap_or_else(|| panic!("message {i} did not arrive"));
            assert_eq!(&*d.topic, "game.42");
            assert_eq!(d.frame, frame(&format!("m{i}")));
            assert_eq!((d.seq, d.key, d.origin), (i + 1, i % 3, a.bus.node_id()));
        }
        let extra = b.drain(QUIET);
        assert!(extra.is_empty(), "delivered more than once: {extra:?}");
        // The other direction, so that `a` has something to receive.
        b.bus.publish(Arc::clone(&topic), frame("back"), 0).unwrap();
        let d = a.delivery(WAIT).expect("b's publish reaches a");
        assert_eq!((d.frame, d.origin), (frame("back"), b.bus.node_id()));
        let echoed = a.drain(QUIET);
        assert!(echoed.is_empty(), "a got its own publishes: {echoed:?}");

        let sa = a.stats_when(|s| s.published == 100);
        let sb = b.stats_when(|s| s.published == 1);
        assert_eq!((sa.published, sa.received, sa.dropped), (100, 1, 0));
        assert_eq!((sb.published, sb.received, sb.gaps), (1, 100, 0));
        match kind {
            // Redis sends a publisher's messages to its own subscriber socket: filtered.
            Kind::Redis => assert_eq!(sa.own_filtered, 100),
            // NATS is asked not to echo them at all.
            Kind::Nats => assert_eq!(sa.own_filtered, 0),
        }
        assert!(sa.connected && sb.connected);

        a.bus.shutdown();
        assert_eq!(a.bus.publish(topic, frame("late"), 0), Err(BusError::Closed));
        assert!(!a.bus.stats().connected);
        server.wait_subscribers(&subj, 1);
    }

    fn a_burst_of_publishes_leaves_in_few_writes(kind) {
        let server = BusServer::start(kind);
        let a = Node::connect(&server.url());
        let b = Node::connect(&server.url());
        let topic: Arc<str> = "burst".into();
        b.bus.interest_added(&topic).unwrap();
        server.wait_subscribers(&subject::subject(&topic).unwrap(), 1);
        let before = a.bus.stats();
        const N: u64 = 2000;
        for i in 0..N {
            a.bus.publish(Arc::clone(&topic), frame("x"), i).unwrap();
        }
        for i in 0..N {
            assert_eq!(b.delivery(WAIT).map(|d| d.seq), Some(i + 1));
        }
        let after = a.stats_when(|s| s.published - before.published == N);
        let writes = after.flushes - before.flushes;
        assert_eq!(after.published - before.published, N);
        // The publish loop outruns the bus thread by far (a channel send against a socket
        // write), so publishes pile up and leave together; one write each would be N.
        assert!(writes <= N / 10, "{N} publishes took {writes} writes");
        println!("{kind:?}: {N} publishes in {writes} writes");
    }

    fn the_bus_carries_a_topic_only_while_a_local_subscriber_wants_it(kind) {
        let server = BusServer::start(kind);
        let a = Node::connect(&server.url());
        let b = Node::connect(&server.url());
        let s = |t: &str| subject::subject(t).unwrap();
        assert_eq!(server.subjects(), Vec::<String>::new(), "nothing wanted, nothing subscribed");

        // Two workers want x, one wants y.
        a.bus.interest_added("x").unwrap();
        a.bus.interest_added("x").unwrap();
        a.bus.interest_added("y").unwrap();
        server.wait_subscribers(&s("y"), 1);
        assert_eq!(server.subjects(), [s("x"), s("y")], "one bus subscription per topic");
        assert_eq!(a.bus.stats().subscriptions, 2);

        // One worker's last subscriber of x leaves: the other still wants it. The bus thread
        // handles commands in order, so once `mark` shows up, the removal has been handled.
        a.bus.interest_removed("x");
        a.bus.interest_added("mark").unwrap();
        server.wait_subscribers(&s("mark"), 1);
        assert_eq!(server.subscribers(&s("x")), 1, "x still has a local subscriber");

        // The second leaves: the node unsubscribes on the bus. Extra removes change nothing.
        a.bus.interest_removed("x");
        a.bus.interest_removed("x");
        a.bus.interest_removed("never-added");
        server.wait_subscribers(&s("x"), 0);
        assert_eq!(server.subjects(), [s("mark"), s("y")]);
        assert_eq!(a.bus.stats().subscriptions, 2);

        // b publishes on x (nobody wants it) and then on y: a gets y and nothing of x (b's
        // publishes reach the server in order, so x would have arrived first).
        b.bus.publish("x".into(), frame("unwanted"), 0).unwrap();
        b.bus.publish("y".into(), frame("wanted"), 0).unwrap();
        let d = a.delivery(WAIT).expect("y arrives");
        assert_eq!((&*d.topic, d.frame), ("y", frame("wanted")));
        assert!(a.drain(QUIET).is_empty());

        // Interest again: subscribed again, and deliveries resume.
        a.bus.interest_added("x").unwrap();
        server.wait_subscribers(&s("x"), 1);
        b.bus.publish("x".into(), frame("wanted now"), 0).unwrap();
        let d = a.delivery(WAIT).expect("x arrives");
        assert_eq!((&*d.topic, d.frame), ("x", frame("wanted now")));
    }

    fn a_bus_restart_mid_stream_reconnects_resubscribes_and_reports_the_gap(kind) {
        let mut server = BusServer::start(kind);
        // No backlog: what is published while the bus is down is lost, as in a long outage.
        let mut options = Options::default();
        options.backlog_bytes = 0;
        let a = Node::connect_with(&server.url(), options);
        let b = Node::connect(&server.url());
        let topic: Arc<str> = "stream".into();
        let subj = subject::subject(&topic).unwrap();
        b.bus.interest_added(&topic).unwrap();
        server.wait_subscribers(&subj, 1);

        // A publisher thread, one publish per millisecond, until told to stop.
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let publisher = {
            let bus = a.bus.clone();
            let topic = Arc::clone(&topic);
            thread::spawn(move || {
                let mut n = 0u64;
                let started = Instant::now();
                while stop_rx.try_recv().is_err() && started.elapsed() < 3 * WAIT {
                    n += 1;
                    bus.publish(Arc::clone(&topic), frame(&format!("{n}")), 0).unwrap();
                    thread::sleep(Duration::from_millis(1));
                }
                n
            })
        };

        let mut seen = Seen::default();
        while seen.seqs.len() < 20 {
            b.next(WAIT, |e| seen.record(e)).expect("the stream flows before the restart");
        }

        server.kill();
        a.next(WAIT, |e| matches!(e, Event::Disconnected { .. }).then_some(()))
            .expect("a notices the bus is gone");
        b.next(WAIT, |e| match e {
            Event::Disconnected { .. } => Some(()),
            other => {
                seen.record(other);
                None
            }
        })
        .expect("b notices the bus is gone");
        // b records whatever was in flight; a's publishes meanwhile are dropped.
        while b.next(QUIET, |e| seen.record(e)).is_some() {}
        let before_restart = seen.last();
        // Interest changes while the bus is down take effect on the new connection.
        b.bus.interest_added("added-while-down").unwrap();
        b.bus.interest_added("removed-while-down").unwrap();
        b.bus.interest_removed("removed-while-down");
        server.restart();

        wait_until(WAIT, "both nodes to reconnect", || {
            a.bus.stats().reconnects >= 1 && b.bus.stats().reconnects >= 1
        });
        let resubscribed = [subject::subject("added-while-down").unwrap(), subj];
        wait_until(WAIT, "b to subscribe again", || server.subjects() == resubscribed);
        while seen.last() - before_restart < 20 {
            b.next(WAIT, |e| seen.record(e)).expect("the stream flows again after the restart");
        }
        stop_tx.send(()).unwrap();
        let published = publisher.join().unwrap();
        while seen.last() < published {
            b.next(WAIT, |e| seen.record(e)).expect("the last publish arrives");
        }
        let Seen { seqs, gaps } = seen;

        // Strictly increasing: in order, nothing twice.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order: {seqs:?}");
        // Every sequence number from the first to the last is either delivered or reported lost.
        let lost: u64 = gaps.iter().map(|(e, r)| r - e).sum();
        assert_eq!(seqs.len() as u64 + lost, published - seqs[0] + 1, "gaps {gaps:?}");
        assert!(!gaps.is_empty(), "the outage lost publishes, and b said so");
        let (sa, sb) = (a.bus.stats(), b.bus.stats());
        assert_eq!((sb.gaps, sb.lost), (gaps.len() as u64, lost));
        assert!(sa.dropped > 0, "a dropped what it published while disconnected: {sa:?}");
        assert!(sa.connected && sb.connected);
        println!("{kind:?}: {published} published, {} delivered, gaps {gaps:?}", seqs.len());
    }

    fn publishes_while_disconnected_wait_in_a_bounded_backlog(kind) {
        let server = BusServer::start(kind);
        // a reaches the bus through a proxy that the test cuts; b stays connected throughout.
        let proxy = Proxy::start(server.port);
        let mut options = Options::default();
        options.backlog_bytes = 5 * frame("00").len();
        let a = Node::connect_with(&proxy.url(kind), options);
        let b = Node::connect(&server.url());
        let topic: Arc<str> = "held".into();
        b.bus.interest_added(&topic).unwrap();
        server.wait_subscribers(&subject::subject(&topic).unwrap(), 1);
        let publish = |n: u64| a.bus.publish(Arc::clone(&topic), frame(&format!("{n:02}")), n);

        publish(1).unwrap();
        assert_eq!(b.delivery(WAIT).map(|d| d.seq), Some(1));
        // Three publishes fit the backlog: all arrive after the reconnect, no gap.
        proxy.cut();
        a.next(WAIT, |e| matches!(e, Event::Disconnected { .. }).then_some(()))
            .expect("a notices the cut");
        (2..=4).try_for_each(publish).unwrap();
        proxy.restore();
        for seq in 2..=4 {
            assert_eq!(b.delivery(WAIT).map(|d| (d.seq, d.key)), Some((seq, seq)));
        }
        assert_eq!(a.bus.stats().dropped, 0);

        // Twelve do not: the newest five arrive, after a gap event for the seven dropped.
        proxy.cut();
        a.next(WAIT, |e| matches!(e, Event::Disconnected { .. }).then_some(()))
            .expect("a notices the second cut");
        (5..=16).try_for_each(publish).unwrap();
        proxy.restore();
        let gap = b.next(WAIT, |e| match e {
            Event::Gap(g) => Some(g),
            Event::Delivery(d) => panic!("a delivery before the gap: {d:?}"),
            _ => None,
        });
        let gap = gap.expect("the gap is reported");
        assert_eq!((gap.expected, gap.received, gap.lost()), (5, 12, 7));
        assert_eq!(gap.origin, a.bus.node_id());
        for seq in 12..=16 {
            assert_eq!(b.delivery(WAIT).map(|d| d.seq), Some(seq));
        }
        let sa = a.stats_when(|s| s.reconnects == 2);
        let sb = b.bus.stats();
        assert_eq!((sa.dropped, sa.published, sa.reconnects), (7, 9, 2));
        assert_eq!((sb.received, sb.gaps, sb.lost), (9, 1, 7));
    }

    fn a_frozen_bus_is_detected_by_pings(kind) {
        let server = BusServer::start(kind);
        let mut options = Options::default();
        options.ping_interval = Duration::from_millis(100);
        options.connect_timeout = Duration::from_millis(300);
        let a = Node::connect_with(&server.url(), options);
        let b = Node::connect(&server.url());
        b.bus.interest_added("t").unwrap();
        server.wait_subscribers(&subject::subject("t").unwrap(), 1);
        a.bus.publish("t".into(), frame("before"), 0).unwrap();
        assert_eq!(b.delivery(WAIT).map(|d| d.frame), Some(frame("before")));
        // Answered pings keep an idle link up.
        assert!(a.drain(Duration::from_millis(500)).is_empty());

        // Frozen: its sockets stay open, but nothing answers. Only the pings can tell.
        server.freeze();
        let started = Instant::now();
        let reason = a.next(WAIT, |e| match e {
            Event::Disconnected { reason } => Some(reason),
            _ => None,
        });
        let reason = reason.expect("the silent bus is noticed");
        assert!(reason.contains("did not answer pings"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        // Reconnecting to a frozen server fails too: TCP connects, the handshake times out.
        wait_until(WAIT, "a failed attempt", || a.bus.stats().connect_failures >= 1);
        assert!(!a.bus.stats().connected);
        server.thaw();
        wait_until(WAIT, "a to reconnect", || a.bus.stats().connected);
        a.bus.publish("t".into(), frame("after"), 0).unwrap();
        assert_eq!(b.delivery(WAIT).map(|d| (d.frame, d.seq)), Some((frame("after"), 2)));
    }

    fn odd_topic_names_round_trip_through_the_server(kind) {
        let server = BusServer::start(kind);
        let a = Node::connect(&server.url());
        let b = Node::connect(&server.url());
        let longest = "*".repeat(subject::MAX_TOPIC_LEN);
        let topics = [
            "a b", "*", ">", "a.>", "..", ".", "x.", "100%", "%41", "é.ü", "tab\there",
            "line\r\nbreak", "ringside.x", "MSG x 1 2", "$SYS", &longest,
        ];
        for t in topics {
            b.bus.interest_added(t).unwrap();
        }
        let mut expected: Vec<String> = topics.iter().map(|t| subject::subject(t).unwrap()).collect();
        expected.sort();
        wait_until(WAIT, "every odd topic subscribed", || server.subjects() == expected);
        // The server's names map back to the topics.
        let mut back: Vec<String> =
            server.subjects().iter().map(|s| subject::topic(s).expect("canonical")).collect();
        back.sort();
        let mut want: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        want.sort();
        assert_eq!(back, want);

        for (i, t) in topics.iter().enumerate() {
            a.bus.publish((*t).into(), frame(&i.to_string()), 0).unwrap();
        }
        for (i, t) in topics.iter().enumerate() {
            let d = b.delivery(WAIT).unwrap_or_else(|| panic!("{t:?} did not arrive"));
            assert_eq!((&*d.topic, d.frame), (*t, frame(&i.to_string())));
        }
        assert!(b.drain(QUIET).is_empty(), "one delivery per topic");
        // Longer than a topic may be: refused at the handle, with no subscription made.
        assert_eq!(b.bus.interest_added(&format!("{longest}x")), Err(BusError::BadTopic));
        assert_eq!(b.bus.interest_added(""), Err(BusError::BadTopic));
        assert_eq!(a.bus.publish("".into(), frame("x"), 0), Err(BusError::BadTopic));
    }

    fn credentials_come_from_the_url(kind) {
        let server = BusServer::start_with(kind, Some("s3cret"));
        let err = ringside_bus::connect(&server.bare_url(), |_| {}).unwrap_err();
        assert!(matches!(err, BusError::Connect(_)), "{err}");
        let hint = if kind == Kind::Nats { "credentials go in the URL" } else { "in the URL" };
        assert!(err.to_string().contains(hint), "{err}");
        let a = Node::connect(&server.url());
        let b = Node::connect(&server.url());
        b.bus.interest_added("t").unwrap();
        server.wait_subscribers(&subject::subject("t").unwrap(), 1);
        a.bus.publish("t".into(), frame("authenticated"), 0).unwrap();
        assert_eq!(b.delivery(WAIT).map(|d| d.frame), Some(frame("authenticated")));
    }

    fn oversized_publishes_are_refused_and_counted(kind) {
        let server = BusServer::start(kind);
        let mut options = Options::default();
        options.max_payload = 1000;
        let a = Node::connect_with(&server.url(), options);
        let big = Bytes::from(vec![0u8; 1000]);
        let err = a.bus.publish("t".into(), big, 0).unwrap_err();
        assert_eq!(err, BusError::TooLarge { len: 1028, max: 1000 });
        assert_eq!(a.bus.stats().oversized, 1);
    }
}

/// What a node saw of one publisher's stream, in order.
#[derive(Debug, Default)]
struct Seen {
    seqs: Vec<u64>,
    /// (expected, received) per gap event.
    gaps: Vec<(u64, u64)>,
}

impl Seen {
    /// Records a delivery (`Some`) or a gap (`None`, as are connection events).
    fn record(&mut self, e: Event) -> Option<()> {
        match e {
            Event::Delivery(d) => {
                assert_eq!(d.frame, frame(&d.seq.to_string()), "payload matches its sequence");
                self.seqs.push(d.seq);
                Some(())
            }
            Event::Gap(g) => {
                assert_eq!(g.expected, self.last() + 1, "the gap starts right after the last");
                self.gaps.push((g.expected, g.received));
                None
            }
            _ => None,
        }
    }

    fn last(&self) -> u64 {
        self.seqs.last().copied().unwrap_or(0)
    }
}

/// NATS pings its clients (every 100 ms here) and drops those that do not answer twice: an idle
/// node answers and stays connected.
#[test]
fn nats_server_pings_are_answered() {
    let server = BusServer::nats_with_conf("ping_interval: \"100ms\"\nping_max: 2\n");
    let a = Node::connect(&server.url());
    let events = a.drain(Duration::from_millis(1000));
    assert!(events.is_empty(), "{events:?}\n{}", server.log());
    let stats = a.bus.stats();
    assert!(stats.connected && stats.reconnects == 0, "{stats:?}");
}

/// Bad URLs, nobody listening, and the wrong protocol at the address: each a clear error, fast.
#[test]
fn connect_errors_say_what_is_wrong() {
    let nats = BusServer::start(Kind::Nats);
    let redis = BusServer::start(Kind::Redis);
    let mut quick = Options::default();
    quick.connect_timeout = Duration::from_millis(500);
    let connect = |url: &str| {
        let started = Instant::now();
        let err = ringside_bus::connect_with(url, quick.clone(), |_| {}).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{url}: took {:?}", started.elapsed());
        err.to_string()
    };
    assert!(connect("http://127.0.0.1:1").contains("unknown scheme"));
    // A port nothing listens on (the killed server's).
    let mut gone = BusServer::start(Kind::Nats);
    gone.kill();
    let refused = connect(&gone.bare_url());
    assert!(refused.contains("cannot connect") && refused.contains("refused"), "{refused}");
    let redis_at_nats = connect(&format!("redis://127.0.0.1:{}", nats.port));
    assert!(redis_at_nats.contains("is this a Redis server?"), "{redis_at_nats}");
    let nats_at_redis = connect(&format!("nats://127.0.0.1:{}", redis.port));
    assert!(nats_at_redis.contains("is this a NATS server?"), "{nats_at_redis}");
}
