//! Socket-free tests of what the worker does with clients' input (see `input`): the budget for
//! buffered input, each connection's share of a loop iteration, the message deadline and the
//! control-frame rate. They drive the fake backend and clock of `tests`.

use std::time::Duration;

use ringside_proto::frame::{self, OpCode};
use ringside_proto::handshake::{generate_key, write_client_request};
use ringside_proto::{CloseCode, Message};

use super::tests::{peer, Ev, Rig};
use crate::api::Handler;
use crate::config::Settings;
use crate::runtime::conn::{flag, Conn, Input, Phase};
use crate::runtime::handle::WebSocket;

/// Echoes, and records closes as "close CODE".
#[derive(Default)]
struct Echo {
    log: Vec<String>,
}

impl Handler for Echo {
    type Conn = ();

    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }

    fn on_close(&mut self, _: &mut WebSocket<'_>, code: CloseCode, reason: &str) {
        self.log.push(format!("close {} {reason}", code.0));
    }
}

/// A masked client frame with FIN as given.
fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_frame(&mut out, fin, opcode, Some([9, 8, 7, 6]), payload);
    out
}

/// What connection `id` holds on the budget, as last counted.
fn charged(rig: &Rig<Echo>, id: usize) -> usize {
    match &rig.core.conns[id].phase {
        Phase::Handshake(p) => p.charged as usize,
        Phase::Open(o) => o.input.charged as usize,
        Phase::Done => 0,
    }
}

fn reading(rig: &Rig<Echo>, id: usize) -> bool {
    rig.fake.reading.get(&id).copied().unwrap_or(true)
}

#[test]
fn unfinished_input_is_charged_until_it_finishes_or_goes() {
    let s =
        Settings { max_message_size: 64 << 10, max_frame_size: 64 << 10, ..Settings::default() };
    let mut rig = Rig::new(s, Echo::default());
    // A partial upgrade request holds its buffer.
    let h = rig.accept(peer(1));
    let mut req = Vec::new();
    write_client_request("test", "/", &generate_key(), &[], &[], &mut req);
    rig.data(h, &req[..20]);
    assert!(charged(&rig, h) >= 20);
    assert_eq!(rig.core.inputs.held, charged(&rig, h));
    rig.data(h, &req[20..]);
    assert!(rig.take_sent(h).starts_with(b"HTTP/1.1 101"));
    assert_eq!(rig.core.inputs.held, 0, "the request is done: nothing held");
    let id = rig.open(peer(2), "/");

    // Most of a 50,000-byte message, in pieces: charged at what its buffer holds.
    let msg = frame(true, OpCode::Binary, &[3; 50_000]);
    rig.data(id, &msg[..10_000]);
    rig.data(id, &msg[10_000..40_000]);
    let held = rig.core.inputs.held;
    assert!((40_000 - 8..=64 << 10).contains(&held), "{held}");
    assert_eq!(held, charged(&rig, id));
    rig.data(id, &msg[40_000..]);
    assert_eq!(rig.received(id), ["binary 50000"]);
    assert_eq!(rig.core.inputs.held, 0, "handed out: released");

    // A second one that never finishes: released when the peer goes.
    rig.data(id, &msg[..30_000]);
    assert!(rig.core.inputs.held > 0);
    rig.fake.script.push_back(Ev::Hangup(id));
    rig.turn();
    assert_eq!(rig.core.inputs.held, 0);
    assert_eq!(rig.core.handler.log, ["close 1006 "]);
}

#[test]
fn the_connection_that_would_pass_the_budget_is_refused_with_1013() {
    let s = Settings {
        max_message_size: 60_000,
        max_frame_size: 60_000,
        max_buffered_input: 100_000,
        ..Settings::default()
    };
    let mut rig = Rig::new(s, Echo::default());
    let a = rig.open(peer(1), "/");
    let b = rig.open(peer(2), "/");
    let c = rig.open(peer(3), "/");
    let msg = frame(true, OpCode::Binary, &[5; 60_000]);
    rig.data(a, &msg[..50_000]);
    let held_a = rig.core.inputs.held;
    assert!(held_a >= 49_000, "{held_a}");
    // B asks for more than is left: B is refused, A keeps what it holds.
    rig.data(b, &msg[..55_000]);
    assert_eq!(rig.received(b), ["close 1013"]);
    assert_eq!(rig.core.handler.log.len(), 1);
    assert!(
        rig.core.handler.log[0].starts_with("close 1013 server busy"),
        "{:?}",
        rig.core.handler.log
    );
    assert_eq!(rig.core.inputs.held, held_a, "the refused connection holds nothing");
    assert_eq!(rig.core.inputs.refused, 1);
    // Whole messages need no buffer: served while the budget is full.
    rig.data(c, &frame(true, OpCode::Text, b"small"));
    assert_eq!(rig.received(c), ["small"]);
    // A finishes its message.
    rig.data(a, &msg[50_000..]);
    assert_eq!(rig.received(a), ["binary 60000"]);
    assert_eq!(rig.core.inputs.held, 0);
    rig.turn();
    assert!(rig.fake.closed.contains(&(b, false)), "B's socket closes after its close frame");

    // A partial upgrade request past the budget gets 503.
    rig.data(a, &msg[..55_000]);
    // (A may hold a reused buffer of up to the message limit: 60,000 charged, not 55,000.)
    rig.data(c, &msg[..39_000]);
    let held = rig.core.inputs.held;
    let d = rig.accept(peer(4));
    rig.data(d, &[b'x'; 5000]);
    let sent = rig.take_sent(d);
    assert!(sent.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&sent));
    assert!(matches!(rig.core.conns[d].phase, Phase::Done));
    assert_eq!(rig.core.inputs.held, held);
    assert_eq!(held, charged(&rig, a) + charged(&rig, c));
}

#[test]
fn a_flood_waits_its_turn_in_order_with_reading_paused() {
    let s = Settings { read_budget_frames: 4, ..Settings::default() };
    let mut rig = Rig::new(s, Echo::default());
    let flood = rig.open(peer(1), "/");
    let other = rig.open(peer(2), "/");
    let burst: Vec<u8> =
        (0..10).flat_map(|i| frame(true, OpCode::Text, format!("m{i}").as_bytes())).collect();
    rig.fake.script.push_back(Ev::Data(flood, burst));
    rig.fake.script.push_back(Ev::Data(other, frame(true, OpCode::Text, b"me too")));
    rig.turn();
    // Four of the flood's, and the other connection's in the same iteration.
    assert_eq!(rig.received(flood), ["m0", "m1", "m2", "m3"]);
    assert_eq!(rig.received(other), ["me too"]);
    assert!(!reading(&rig, flood), "reading paused while bytes wait");
    assert!(rig.core.conns[flood].io.has(flag::THROTTLED));
    assert!(rig.core.inputs.held > 0, "the stash is charged");
    assert_eq!(rig.core.poll_timeout(), Duration::ZERO, "no sleeping while bytes wait");
    // Newer bytes wait in the socket behind the stash.
    rig.fake.script.push_back(Ev::Data(flood, frame(true, OpCode::Text, b"later")));
    rig.turn();
    assert_eq!(rig.received(flood), ["m4", "m5", "m6", "m7"]);
    rig.turn();
    assert_eq!(rig.received(flood), ["m8", "m9"]);
    assert!(reading(&rig, flood), "resumed once the stash is parsed");
    assert!(!rig.core.conns[flood].io.has(flag::THROTTLED));
    assert_eq!(rig.core.inputs.held, 0);
    rig.turn();
    assert_eq!(rig.received(flood), ["later"]);
}

#[test]
fn the_byte_share_splits_a_large_message_across_iterations() {
    let s = Settings { read_budget_bytes: 1000, ..Settings::default() };
    let mut rig = Rig::new(s, Echo::default());
    let id = rig.open(peer(1), "/");
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut bytes = frame(true, OpCode::Binary, &payload);
    bytes.extend(frame(true, OpCode::Text, b"next"));
    rig.data(id, &bytes);
    assert!(rig.received(id).is_empty());
    let mut turns = 1;
    while !reading(&rig, id) || rig.core.conns[id].io.has(flag::THROTTLED) {
        rig.turn();
        turns += 1;
        assert!(turns < 100, "never finished");
    }
    assert_eq!(turns, 11, "10,000 + 18 bytes at 1,000 a turn");
    assert_eq!(rig.received(id), ["binary 10000", "next"]);
    assert_eq!(rig.core.inputs.held, 0);
}

#[test]
fn a_hangup_parses_what_waited_first() {
    let s = Settings { read_budget_frames: 2, ..Settings::default() };
    let mut rig = Rig::new(s, Echo::default());
    let id = rig.open(peer(1), "/");
    let mut bytes: Vec<u8> =
        (0..5).flat_map(|i| frame(true, OpCode::Text, format!("m{i}").as_bytes())).collect();
    bytes.extend(frame(true, OpCode::Close, &1000u16.to_be_bytes()));
    rig.fake.script.push_back(Ev::Data(id, bytes));
    rig.turn();
    assert!(rig.core.conns[id].io.has(flag::THROTTLED));
    rig.fake.script.push_back(Ev::Hangup(id));
    rig.turn();
    assert_eq!(rig.core.handler.log, ["close 1000 "], "the close frame in the stash counts");
    assert_eq!(rig.received(id), ["m0", "m1", "m2", "m3", "m4", "close 1000"]);
    assert_eq!(rig.core.inputs.held, 0);
}

#[test]
fn pings_and_pongs_past_the_rate_fail_with_1008() {
    let s = Settings { max_control_rate: 10, ..Settings::default() };
    let mut rig = Rig::new(s, Echo::default());
    let id = rig.open(peer(1), "/");
    let ten: Vec<u8> = (0..10).flat_map(|_| frame(true, OpCode::Pong, b"")).collect();
    rig.data(id, &ten);
    rig.advance(1000);
    // A new second: ten more are fine, the eleventh is not.
    rig.data(id, &ten);
    assert!(rig.received(id).is_empty());
    rig.data(id, &frame(true, OpCode::Ping, b"x"));
    assert_eq!(rig.received(id), ["pong x", "close 1008"]);
    assert_eq!(rig.core.handler.log, ["close 1008 too many pings and pongs per second"]);
    // Off: any rate.
    let s = Settings { max_control_rate: 0, ..Settings::default() };
    let mut rig = Rig::new(s, Echo::default());
    let id = rig.open(peer(1), "/");
    let many: Vec<u8> = (0..5000).flat_map(|_| frame(true, OpCode::Pong, b"")).collect();
    rig.data(id, &many);
    while rig.core.conns[id].io.has(flag::THROTTLED) {
        rig.turn();
    }
    assert!(rig.core.handler.log.is_empty());
}

#[test]
fn a_message_must_finish_within_the_timeout() {
    let s = Settings { message_timeout: Duration::from_millis(1000), ..Settings::default() };
    let mut rig = Rig::new(s, Echo::default());
    let id = rig.open(peer(1), "/");
    // Idle, with nothing started: the message deadline does not apply.
    rig.advance(3000);
    assert!(rig.received(id).is_empty());
    // A frame trickled a byte every 100 ms: never idle, never done.
    let msg = frame(true, OpCode::Text, b"slowly, slowly");
    let mut sent = 0;
    let started = rig.now;
    while rig.received(id).is_empty() {
        rig.data(id, &msg[sent..sent + 1]);
        sent += 1;
        rig.advance(100);
        assert!(sent < msg.len() - 1, "never closed");
    }
    let took = rig.now - started;
    assert!((1000..=1350).contains(&took), "closed after {took} ms");
    assert_eq!(rig.core.handler.log, ["close 1008 message timeout"]);
    assert_eq!(rig.core.inputs.held, 0);

    // Messages that each finish in time are fine, back to back: the clock restarts with
    // each new one, even when it starts in the read that finished the previous one.
    let mut rig = Rig::new(
        Settings { message_timeout: Duration::from_millis(1000), ..Settings::default() },
        Echo::default(),
    );
    let id = rig.open(peer(1), "/");
    let one = frame(true, OpCode::Text, b"first");
    let two = frame(true, OpCode::Text, b"second");
    rig.data(id, &one[..3]);
    rig.advance(800);
    rig.data(id, &[&one[3..], &two[..3]].concat());
    rig.advance(800);
    rig.data(id, &two[3..]);
    rig.advance(2000);
    assert_eq!(rig.received(id), ["first", "second"]);
    assert!(rig.core.handler.log.is_empty(), "{:?}", rig.core.handler.log);
}

#[test]
fn what_input_adds_per_connection_stays_in_the_box() {
    // 32 bytes: the open connection's box grows from 232 to 264 bytes, one 16-byte step of
    // glibc's chunk sizes past the next (240 to 272 bytes per connection).
    assert!(std::mem::size_of::<Input>() <= 32, "{}", std::mem::size_of::<Input>());
    assert!(std::mem::size_of::<Conn<()>>() <= 40, "{}", std::mem::size_of::<Conn<()>>());
}

#[test]
fn a_clock_set_in_the_millisecond_of_a_sweep_is_not_ancient() {
    // Timestamps are stored with their low bit set; at an even millisecond that is one ahead
    // of the clock, which must not read as a wrapped, 49-day-old time.
    let s = Settings {
        max_buffered_input: 10_000,
        max_message_size: 10_000,
        max_frame_size: 10_000,
        ..Settings::default()
    };
    let mut rig = Rig::new(s, Echo::default());
    let id = rig.open(peer(1), "/");
    let holder = rig.open(peer(2), "/");
    let refused = rig.open(peer(3), "/");
    let big = frame(true, OpCode::Binary, &[0; 9_000]);
    rig.data(holder, &big[..6_000]);
    rig.advance(240);
    rig.now = 250; // the next sweep, at an even millisecond
    rig.fake.script.push_back(Ev::Data(id, frame(true, OpCode::Text, b"started")[..5].to_vec()));
    rig.fake.script.push_back(Ev::Data(refused, big[..6_000].to_vec()));
    rig.turn();
    assert_eq!(rig.core.handler.log.len(), 1, "{:?}", rig.core.handler.log);
    assert!(rig.core.handler.log[0].starts_with("close 1013"), "{:?}", rig.core.handler.log);
    assert!(rig.received(id).is_empty(), "the message just started: not timed out");
    assert_eq!(rig.fake.closed, [(refused, false)], "closing just began: no hard close");
}
