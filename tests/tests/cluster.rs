//! A Ringside cluster on loopback: three node processes fanning topics out over a real bus
//! (`nats-server` or `redis-server`), behind a real HAProxy (`balance leastconn`, health checks;
//! see `ringside_tests::bus_support`). Subscribers connect through HAProxy, publishers straight
//! to one node. Checked: every subscriber on every node receives every publish exactly once and
//! in each publisher's order; the bus carries a publish once per interested node, not per
//! subscriber; interest follows subscribers; a bus restart loses publishes but is reported as
//! a gap and deliveries resume; a killed node's clients reconnect to the others, which keep
//! delivering.
//!
//! Each node is this test binary again, running only the test that started it with
//! `RINGSIDE_CLUSTER_NODE` set: a real process (killed with SIGKILL like a crashed host)
//! serving the `broadcast` protocol of docs/broadcast.md plus `who` (answered `node N`, so a
//! test knows where HAProxy put a client). It answers `stats` on its stdin with its counters
//! and shuts down when its stdin closes, so it never outlives the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ringside::{Backend, Handler, Message, Server, WebSocket, Workers};
use ringside_tests::bus_support::{wait_until, BusServer, Haproxy, Kind};
use ringside_tests::{each_backend, Client, Seen, WAIT};

/// Set in a node process: `INDEX BACKEND BUS_URL`.
const NODE: &str = "RINGSIDE_CLUSTER_NODE";
/// What a node prints before its address, and before its counters.
const LISTENING: &str = "NODE_LISTENING ";
const STATS: &str = "NODE_STATS ";
const NODES: usize = 3;
const TOPIC: &str = "cluster.t";
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

each_backend! {
    /// Two publishers on two nodes, nine subscribers spread by HAProxy: each subscriber gets
    /// both streams complete, each in order, nothing twice. The publishing nodes send each
    /// publish to the bus once, and every node takes each other node's publish once. When the
    /// subscribers leave, every node leaves the bus subject.
    fn delivery_over_nats(backend) {
        if node_process() {
            return;
        }
        delivery(Kind::Nats, backend);
    }
}

each_backend! {
    /// The same over Redis pub/sub.
    fn delivery_over_redis(backend) {
        if node_process() {
            return;
        }
        delivery(Kind::Redis, backend);
    }
}

fn delivery(kind: Kind, backend: Backend) {
    let started = Instant::now();
    let cluster = Cluster::start(kind, backend);
    let mut subs = cluster.subscribers(9);
    let mut per_node = [0; NODES];
    for (_, node) in &subs {
        per_node[*node] += 1;
    }
    assert!(per_node.iter().all(|&n| n > 0), "HAProxy left a node without clients: {per_node:?}");
    cluster.wait_bus_interest(NODES);

    const N: usize = 200;
    let mut a = Client::connect(cluster.nodes[0].addr).unwrap();
    let mut b = Client::connect(cluster.nodes[1].addr).unwrap();
    for i in 0..N {
        a.send_text(&format!("pub {TOPIC} a:{i}:")).unwrap();
        b.send_text(&format!("pub {TOPIC} b:{i}:")).unwrap();
    }
    for (c, node) in &mut subs {
        let (mut next_a, mut next_b) = (0, 0);
        while next_a < N || next_b < N {
            let text = text(c, *node);
            let (publisher, seq) = parse(&text);
            let next = if publisher == "a" { &mut next_a } else { &mut next_b };
            assert_eq!(seq, *next, "publisher {publisher} to a subscriber on node {node}");
            *next += 1;
        }
        assert_quiet(c, *node);
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        // Node 2 publishes nothing; nodes 0 and 1 once per publish, whatever their subscribers.
        let published = if i < 2 { N } else { 0 } as u64;
        let received = if i < 2 { N } else { 2 * N } as u64;
        // A publisher's counter moves after its write returns, maybe after the delivery.
        let deadline = Instant::now() + WAIT;
        let mut s = node.stats();
        while s["bus_published"] < published && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            s = node.stats();
        }
        assert_eq!(s["bus_published"], published, "node {i}: {s:?}");
        assert_eq!(s["bus_received"], received, "node {i}: {s:?}");
        assert_eq!((s["bus_gaps"], s["bus_lost"]), (0, 0), "node {i}: {s:?}");
    }

    // Interest follows subscribers: once they are gone, no node listens on the bus.
    drop(subs);
    cluster.wait_bus_interest(0);
    eprintln!("{kind:?} on {backend:?}: {:.1} s", started.elapsed().as_secs_f64());
}

each_backend! {
    /// nats-server is killed mid-stream and started again on the same port. While it is down
    /// the publishing node's backlog overflows (large publishes), so publishes are lost for
    /// the other nodes: they say so (a gap, in `Stats::bus_gaps` and in the log), deliveries
    /// resume once the nodes have reconnected, and no subscriber sees anything out of order.
    fn a_bus_restart_loses_publishes_reports_the_gap_and_deliveries_resume(backend) {
        if node_process() {
            return;
        }
        let mut cluster = Cluster::start(Kind::Nats, backend);
        let mut subs = cluster.subscribers(6);
        cluster.wait_bus_interest(NODES);
        let mut publisher = Client::connect(cluster.nodes[0].addr).unwrap();
        let mut seq = 0;
        let mut publish = |n: usize, pad: usize| {
            for _ in 0..n {
                publisher.send_text(&format!("pub {TOPIC} a:{seq}:{}", "x".repeat(pad))).unwrap();
                seq += 1;
            }
        };
        publish(50, 0);
        for (c, node) in &mut subs {
            for i in 0..50 {
                assert_eq!(parse(&text(c, *node)).1, i);
            }
        }

        cluster.bus.kill();
        wait_until(WAIT, "every node to notice the bus is gone", || {
            cluster.nodes.iter().all(|n| n.stats()["bus_connected"] == 0)
        });
        // 120 x 48 KiB: more than the 4 MiB a node holds for the bus while disconnected.
        publish(120, 48 << 10);
        // The publishing node must have handled them all before the bus is back (it reads a
        // publisher no faster than it delivers), or its backlog never overflows. Each of its local
        // subscribers counts each publish.
        let local = subs.iter().filter(|(_, node)| *node == 0).count() as u64 * (50 + 120);
        wait_until(WAIT, "the publishing node to handle every publish", || {
            cluster.nodes[0].stats()["delivered"] >= local
        });
        cluster.bus.restart();
        wait_until(WAIT, "every node to reconnect", || {
            cluster.nodes.iter().all(|n| n.stats()["bus_connected"] == 1)
        });
        cluster.wait_bus_interest(NODES);
        publish(50, 0);
        let last = 50 + 120 + 50 - 1;

        for (c, node) in &mut subs {
            let mut got = Vec::new();
            while got.last() != Some(&last) {
                got.push(parse(&text(c, *node)).1);
            }
            assert!(got.windows(2).all(|w| w[0] < w[1]), "node {node}: order {got:?}");
            // Everything published once the nodes were back arrives.
            assert!(got.ends_with(&(170..=last).collect::<Vec<_>>()), "node {node}: {got:?}");
            if *node == 0 {
                assert_eq!(got, (50..=last).collect::<Vec<_>>(), "local deliveries lose nothing");
            }
            assert_quiet(c, *node);
        }
        for i in 1..NODES {
            let s = cluster.nodes[i].stats();
            assert!(s["bus_gaps"] > 0 && s["bus_lost"] > 0, "node {i} reported no gap: {s:?}");
            assert!(s["bus_reconnects"] >= 1, "node {i}: {s:?}");
            let log = cluster.nodes[i].stderr();
            assert!(log.contains("the bus lost"), "node {i} logged no gap:\n{log}");
        }
    }
}

each_backend! {
    /// One node is killed (SIGKILL). HAProxy takes it out; its clients reconnect through
    /// HAProxy to the others and subscribe again; the other nodes' subscribers lose nothing.
    fn a_killed_nodes_clients_move_to_the_others_which_keep_delivering(backend) {
        if node_process() {
            return;
        }
        let mut cluster = Cluster::start(Kind::Nats, backend);
        let mut subs = cluster.subscribers(9);
        cluster.wait_bus_interest(NODES);
        let mut publisher = Client::connect(cluster.nodes[0].addr).unwrap();
        for i in 0..30 {
            publisher.send_text(&format!("pub {TOPIC} a:{i}:")).unwrap();
        }
        for (c, node) in &mut subs {
            for i in 0..30 {
                assert_eq!(parse(&text(c, *node)).1, i);
            }
        }
        let victim = 2;
        assert!(subs.iter().any(|(_, n)| *n == victim), "no client on node {victim}");
        cluster.nodes[victim].kill();
        cluster.proxy.wait_state(&format!("n{victim}"), "DOWN");
        let mut moved = 0;
        for (c, node) in &mut subs {
            if *node != victim {
                continue;
            }
            // The connection is gone with the node.
            assert_eq!(c.recv().unwrap(), Seen::Eof, "a client of the killed node");
            (*c, *node) = subscribe(cluster.proxy.addr);
            assert_ne!(*node, victim, "HAProxy sent a client to the dead node");
            moved += 1;
        }
        cluster.wait_bus_interest(NODES - 1);
        for i in 30..60 {
            publisher.send_text(&format!("pub {TOPIC} a:{i}:")).unwrap();
        }
        for (c, node) in &mut subs {
            for i in 30..60 {
                assert_eq!(parse(&text(c, *node)).1, i, "a subscriber on node {node}");
            }
            assert_quiet(c, *node);
        }
        eprintln!("{moved} clients moved off node {victim}");
    }
}

/// A bus, three nodes on it, and HAProxy in front of them.
struct Cluster {
    bus: BusServer,
    nodes: Vec<Node>,
    proxy: Haproxy,
}

impl Cluster {
    fn start(kind: Kind, backend: Backend) -> Cluster {
        let bus = BusServer::start(kind);
        let nodes: Vec<Node> = (0..NODES).map(|i| Node::spawn(i, backend, &bus.url())).collect();
        let proxy = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
        Cluster { bus, nodes, proxy }
    }

    /// `n` clients through HAProxy, each subscribed to [`TOPIC`], with the node each is on.
    fn subscribers(&self, n: usize) -> Vec<(Client, usize)> {
        (0..n).map(|_| subscribe(self.proxy.addr)).collect()
    }

    /// Waits until `nodes` nodes are subscribed to [`TOPIC`] on the bus (the subscription is
    /// asynchronous: a publish before it would not reach that node).
    fn wait_bus_interest(&self, nodes: usize) {
        let subject = ringside::bus::subject::subject(TOPIC).unwrap();
        self.bus.wait_subscribers(&subject, nodes, WAIT);
    }
}

/// A client through `proxy`, subscribed to [`TOPIC`], and the node it landed on.
fn subscribe(proxy: SocketAddr) -> (Client, usize) {
    let mut c = Client::connect(proxy).unwrap();
    c.send_text("who").unwrap();
    let node = match c.recv().unwrap() {
        Seen::Text(t) => t.strip_prefix("node ").and_then(|n| n.parse().ok()),
        _ => None,
    }
    .expect("`who` answered with the node");
    c.send_text(&format!("sub {TOPIC}")).unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Text(format!("ok sub {TOPIC}")));
    (c, node)
}

fn text(c: &mut Client, node: usize) -> String {
    match c.recv() {
        Ok(Seen::Text(t)) => t,
        other => panic!("a subscriber on node {node} expected a message, got {other:?}"),
    }
}

/// `PUBLISHER:SEQ:PADDING` into the publisher and the sequence number.
fn parse(text: &str) -> (&str, usize) {
    let mut parts = text.splitn(3, ':');
    let publisher = parts.next().unwrap();
    let seq = parts.next().and_then(|s| s.parse().ok());
    (publisher, seq.unwrap_or_else(|| panic!("not a test publish: {:.80}", text)))
}

/// Nothing more arrives (no duplicate after the last expected message).
fn assert_quiet(c: &mut Client, node: usize) {
    c.stream.set_read_timeout(Some(QUIET)).unwrap();
    match c.recv() {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a subscriber on node {node} got more than expected: {other:?}"),
    }
    c.stream.set_read_timeout(Some(WAIT)).unwrap();
}

/// A node process, killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
    stdin: Mutex<Option<ChildStdin>>,
    stats: Mutex<mpsc::Receiver<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Node {
    /// Starts node `index` (this binary, running the current test as a node).
    fn spawn(index: usize, backend: Backend, bus: &str) -> Node {
        let current = std::thread::current();
        let test = current.name().expect("libtest names the thread after the test");
        let backend = if backend == Backend::IoUring { "io_uring" } else { "epoll" };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(NODE, format!("{index} {backend} {bus}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a node process");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stats_tx, stats_rx) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            // Markers may follow text of the test harness's on the same line.
            for line in out.lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once(LISTENING) {
                    let _ = addr_tx.send(addr.trim().to_owned());
                } else if let Some((_, stats)) = line.split_once(STATS) {
                    let _ = stats_tx.send(stats.trim().to_owned());
                }
            }
        });
        let stdin = Mutex::new(child.stdin.take());
        let mut node = Node {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdin,
            stats: Mutex::new(stats_rx),
            stderr,
        };
        let addr = addr_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("node {index} did not start:\n{}", node.stderr()));
        node.addr = addr.parse().expect("an address");
        node
    }

    /// The node's counters: `Stats` and the bus's.
    fn stats(&self) -> HashMap<String, u64> {
        let rx = self.stats.lock().unwrap();
        while rx.try_recv().is_ok() {}
        let mut stdin = self.stdin.lock().unwrap();
        let stdin = stdin.as_mut().expect("the node runs");
        stdin.write_all(b"stats\n").and_then(|()| stdin.flush()).expect("ask for the stats");
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no stats:\n{}", self.stderr()));
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.parse().expect("a number")))
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: the node dies as a crashed host would, without closing anything.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin.lock().unwrap().take();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// In a node process: serves until stdin closes, then returns true. Elsewhere: false.
fn node_process() -> bool {
    let Ok(spec) = std::env::var(NODE) else { return false };
    let mut words = spec.splitn(3, ' ');
    let (Some(index), Some(backend), Some(bus)) = (words.next(), words.next(), words.next()) else {
        panic!("{NODE}={spec:?} is not `INDEX BACKEND BUS_URL`");
    };
    let index: usize = index.parse().expect("a node index");
    let backend = if backend == "io_uring" { Backend::IoUring } else { Backend::Epoll };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .try_init();
    let handle = Server::builder()
        .bind("127.0.0.1:0")
        .unwrap()
        .backend(backend)
        // Two workers: interest is counted per worker, publishes cross workers too.
        .workers(Workers::Count(2))
        .pin(false)
        .health_path("/health")
        .bus(bus)
        .shutdown_timeout(Duration::from_secs(1))
        .build(move || Broadcast { node: index })
        .expect("the node builds")
        .spawn()
        .expect("the node starts and connects to the bus");
    println!("{LISTENING}{}", handle.local_addr());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "stats" {
            let s = handle.stats();
            let b = handle.bus_stats().expect("the node has a bus");
            println!(
                "{STATS}connections={} delivered={} bus_gaps={} bus_lost={} bus_published={} \
                 bus_received={} bus_connected={} bus_reconnects={}",
                s.connections,
                s.delivered,
                s.bus_gaps,
                s.bus_lost,
                b.published,
                b.received,
                u8::from(b.connected),
                b.reconnects
            );
        }
    }
    handle.shutdown().expect("the node shuts down cleanly");
    true
}

/// docs/broadcast.md's protocol (`sub`, `unsub`, `pub`), and `who`.
struct Broadcast {
    node: usize,
}

impl Handler for Broadcast {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(line) = msg else { return };
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match verb {
            "who" => format!("node {}", self.node),
            "sub" => match ws.subscribe(rest) {
                Ok(_) => format!("ok sub {rest}"),
                Err(e) => format!("error {e}"),
            },
            "unsub" => {
                ws.unsubscribe(rest);
                format!("ok unsub {rest}")
            }
            "pub" => match rest.split_once(' ') {
                Some((topic, payload)) => {
                    ws.publish(topic, Message::Text(payload));
                    return;
                }
                None => "error pub takes a topic and a payload".to_owned(),
            },
            _ => format!("error unknown command {verb:?}"),
        };
        let _ = ws.send_text(&reply);
    }
}
