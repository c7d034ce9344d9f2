//! Socket-free tests of the worker's output under pressure: conflation bounded by keys however
//! many messages are published, the output budget against non-reading subscribers, and
//! fan-out work bounded per loop iteration. They drive the worker through the fake backend of
//! `tests` (whose peers read only what the test lets them).

use ringside_proto::{Message, OpCode};

use std::time::Duration;

use super::tests::{peer, Ev, Rig};
use crate::api::Handler;
use crate::config::{Settings, SlowConsumer, TopicPolicy, TopicRule};
use crate::runtime::handle::WebSocket;

/// `sub T` subscribes, `pub T PAYLOAD` publishes, anything else is echoed.
#[derive(Default)]
struct Hub;

impl Handler for Hub {
    type Conn = ();

    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(line) = msg else { return };
        if let Some(topic) = line.strip_prefix("sub ") {
            ws.subscribe(topic).unwrap();
        } else if let Some((topic, payload)) =
            line.strip_prefix("pub ").and_then(|rest| rest.split_once(' '))
        {
            ws.publish(topic, Message::Text(payload));
        } else {
            let _ = ws.send(msg);
        }
    }
}

/// Bytes held for `ids`: their queues (with stages) and the worker's pool.
fn held<H: Handler>(rig: &Rig<H>, ids: &[usize]) -> usize {
    let queues: usize = ids.iter().map(|&id| rig.core.conns[id].io.queue.footprint()).sum();
    queues + rig.core.local.pool.bytes()
}

/// Turns until the worker has applied every command and delivered every publish.
fn settle<H: Handler>(rig: &mut Rig<H>) {
    for _ in 0..10_000 {
        rig.turn();
        if rig.inbox.is_empty() && rig.core.deferred.is_empty() {
            return;
        }
    }
    panic!("the worker never caught up");
}

#[test]
fn conflation_holds_one_frame_per_key_whatever_the_publish_rate() {
    let rules = vec![TopicRule {
        pattern: "price.*".into(),
        policy: TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: 64 << 10 },
    }];
    let mut rig = Rig::new(Settings { topic_rules: rules, ..Settings::default() }, Hub);
    let subs: Vec<usize> = (0..3).map(|i| rig.open(peer(10 + i), "/")).collect();
    for &id in &subs {
        rig.core.local.topics.subscribe(id, "price.x").unwrap();
        rig.fake.window.insert(id, 0); // never reads
    }
    let sender = rig.sender();
    let publish = |rig: &mut Rig<Hub>, from: u64, to: u64| {
        for batch in (from..to).step_by(10_000) {
            for i in batch..(batch + 10_000).min(to) {
                sender.publish_keyed("price.x", 0, Message::Text(&format!("1.{i:08}")));
            }
            settle(rig);
        }
    };
    // Fill the queues to the topic's limit and start staging.
    publish(&mut rig, 0, 20_000);
    let steady = held(&rig, &subs);
    let staged: Vec<usize> =
        subs.iter().map(|&id| rig.core.conns[id].io.queue.staged_len()).collect();
    let queued: Vec<usize> = subs.iter().map(|&id| rig.core.conns[id].io.queue.len()).collect();
    publish(&mut rig, 20_000, 1_000_000);
    for (n, &id) in subs.iter().enumerate() {
        let queue = &rig.core.conns[id].io.queue;
        assert_eq!(queue.staged_len(), staged[n], "one frame staged, the latest");
        assert_eq!(queue.len(), queued[n], "nothing more queued than the topic's limit");
        // The limit, plus the staged frame moved in before the first send.
        assert!(queue.len() <= (64 << 10) + 16, "{}", queue.len());
    }
    assert_eq!(held(&rig, &subs), steady, "a million more publishes, not one byte more held");
    let counts = rig.core.local.counts;
    assert!(counts.conflated > 3 * 900_000, "{counts:?}");
    // The subscriber that catches up gets what was queued, then only the latest.
    rig.fake.window.insert(subs[0], usize::MAX);
    rig.turn();
    rig.turn();
    let got = rig.received(subs[0]);
    assert_eq!(got.last().map(String::as_str), Some("1.00999999"));
    assert!(got.len() < 6_000, "{}", got.len());
}

#[test]
fn non_readers_are_held_to_the_budget_and_closed_while_readers_lose_nothing() {
    let settings = Settings { max_buffered_output: 4 << 20, ..Settings::default() };
    let mut rig = Rig::new(settings, Hub);
    let limit = rig.core.local.budget.limit;
    let reader = rig.open(peer(2), "/");
    rig.core.local.topics.subscribe(reader, "busy").unwrap();
    let deaf: Vec<usize> = (0..50).map(|i| rig.open(peer(20 + i), "/")).collect();
    for &id in &deaf {
        rig.core.local.topics.subscribe(id, "busy").unwrap();
        rig.fake.window.insert(id, 0);
    }
    let sender = rig.sender();
    let payload = |i: usize| format!("{i:06}{}", "x".repeat(494));
    for batch in 0..40 {
        for i in batch * 100..(batch + 1) * 100 {
            sender.publish("busy", Message::Text(&payload(i)));
        }
        settle(&mut rig);
        let budget = &rig.core.local.budget;
        assert!(budget.held + budget.pushed <= limit, "{} over {limit}", budget.held);
    }
    let counts = rig.core.local.counts;
    assert_eq!(counts.slow_closed, 50, "every non-reader closed: {counts:?}");
    let got = rig.received(reader);
    assert_eq!(got.len(), 4_000, "the reader lost nothing");
    assert!(got.iter().enumerate().all(|(i, m)| *m == payload(i)), "in order");
    rig.advance(6_000); // the close timeout releases what was in flight
    assert_eq!(rig.core.local.budget.held, 0);
}

#[test]
fn the_drop_policy_sheds_pending_messages_and_keeps_the_connections() {
    let settings = Settings {
        max_buffered_output: 4 << 20,
        slow_consumer: SlowConsumer::Drop,
        ..Settings::default()
    };
    let mut rig = Rig::new(settings, Hub);
    let limit = rig.core.local.budget.limit;
    let deaf: Vec<usize> = (0..6).map(|i| rig.open(peer(40 + i), "/")).collect();
    for &id in &deaf {
        rig.core.local.topics.subscribe(id, "busy").unwrap();
        rig.fake.window.insert(id, 0);
    }
    let sender = rig.sender();
    let big = "y".repeat(2000);
    for _ in 0..30 {
        for _ in 0..100 {
            sender.publish("busy", Message::Text(&big));
        }
        settle(&mut rig);
        let budget = &rig.core.local.budget;
        assert!(budget.held + budget.pushed <= limit, "{} over {limit}", budget.held);
    }
    let counts = rig.core.local.counts;
    assert_eq!(counts.slow_closed, 0, "{counts:?}");
    assert!(counts.dropped > 0, "{counts:?}");
    assert!(deaf.iter().all(|&id| rig.core.conns[id].can_send()), "all still open");
}

#[test]
fn a_publish_storm_is_spread_over_iterations_and_pauses_its_publisher() {
    // The read budget would spread this burst on its own: lifted, so fan-out's bound is tested.
    let s =
        Settings { read_budget_frames: 65_535, read_budget_bytes: 64 << 20, ..Settings::default() };
    let mut rig = Rig::new(s, Hub);
    let subs: Vec<usize> = (0..300).map(|i| rig.open(peer(60 + (i % 100) as u8), "/")).collect();
    for &id in &subs {
        rig.core.local.topics.subscribe(id, "storm").unwrap();
    }
    let publisher = rig.open(peer(3), "/");
    // One read holding 1,000 publishes: 300,000 deliveries, several iterations' worth.
    let mut burst = Vec::new();
    for i in 0..1_000 {
        burst.extend_from_slice(&Rig::<Hub>::frame(
            ringside_proto::OpCode::Text,
            format!("pub storm {i}").as_bytes(),
        ));
    }
    rig.data(publisher, &burst);
    assert!(!rig.core.deferred.is_empty(), "not all delivered in one iteration");
    assert!(rig.core.turn_work <= super::fanout::WORK_PER_TURN + 300);
    assert_eq!(rig.fake.reading.get(&publisher), Some(&false), "the publisher is paused");
    // Meanwhile a new client is served at once.
    let fresh = rig.open(peer(4), "/");
    rig.text(fresh, "hello");
    assert_eq!(rig.received(fresh), ["hello"]);
    let mut turns = 0;
    while !rig.core.deferred.is_empty() {
        rig.turn();
        turns += 1;
        assert!(turns < 100);
    }
    rig.turn();
    assert_eq!(rig.fake.reading.get(&publisher), Some(&true), "resumed once delivered");
    assert!(rig.core.throttled.is_empty());
    for &id in &subs[..3] {
        let got = rig.received(id);
        let want: Vec<String> = (0..1_000).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "every publish, in order");
    }
}

#[test]
fn replies_go_before_bulk_output_and_bulk_output_waits_its_turn() {
    let mut rig = Rig::new(Settings::default(), Hub);
    let subs: Vec<usize> = (0..200).map(|i| rig.open(peer(i), "/")).collect();
    for &id in &subs {
        rig.core.local.topics.subscribe(id, "busy").unwrap();
    }
    let publisher = rig.open(peer(250), "/");
    let echo = rig.open(peer(251), "/");
    // 200 sends of 200 us are 40 ms: five times what one iteration gives bulk output.
    rig.fake.flush_delay = Duration::from_micros(200);
    rig.fake.flushes.clear();
    rig.fake.script.push_back(Ev::Data(publisher, Rig::<Hub>::frame(OpCode::Text, b"pub busy hi")));
    rig.fake.script.push_back(Ev::Data(echo, Rig::<Hub>::frame(OpCode::Text, b"still there?")));
    rig.turn();
    assert_eq!(rig.fake.flushes.first(), Some(&echo), "the reply leaves first");
    assert_eq!(rig.received(echo), ["still there?"]);
    let first = rig.fake.flushes.iter().filter(|id| subs.contains(id)).count();
    assert!(first < subs.len(), "bulk output stops at its share of the iteration: {first}");
    assert!(first >= 32, "and does not stop before it: {first}");
    assert!(rig.core.local.budget.held > 0, "what waits is counted against the output budget");
    // The next iterations do not wait in the poll and send the rest, each subscriber once.
    let mut turns = 1;
    while !rig.core.bulk.is_empty() && turns < 50 {
        rig.turn();
        assert_eq!(*rig.fake.timeouts.last().unwrap(), Duration::ZERO);
        turns += 1;
    }
    assert!(turns > 1 && rig.core.bulk.is_empty(), "{turns} iterations");
    for &id in &subs {
        assert_eq!(rig.received(id), ["hi"], "subscriber {id}");
    }
    let mut flushed: Vec<usize> =
        rig.fake.flushes.iter().copied().filter(|id| subs.contains(id)).collect();
    flushed.sort_unstable();
    flushed.dedup();
    assert_eq!(flushed.len(), subs.len());
}
