//! `fanout`: pub/sub over the text protocol `sub <topic>` → `ok sub <topic>`,
//! `pub <topic> <payload>` → the payload delivered to every subscriber of the topic.
//!
//! Connections with global index below the publisher count are publishers, the rest
//! subscribers; subscriber `i` takes topic `t<i % topics>`. Every subscription is acknowledged
//! before anyone publishes (the barrier). A payload is `pub:topic:seq:ns:` padded with `x`: the
//! publisher, the topic, a per-(publisher, topic) sequence number and the send time in
//! CLOCK_MONOTONIC ns (shared by all processes on the host; the intended time at a fixed rate).
//! Each receiver checks every (publisher, topic) stream for gaps (lost), older numbers
//! (reordered) and repeats (duplicates). Deliveries count in the window by their send time, and
//! are read until `stop` so the last ones of the window can arrive.

use ringside_proto::OpCode;

use super::{close_all, finish, in_window, setup, wait_go, IDLE_POLL_NS};
use crate::cli::FanoutArgs;
use crate::driver::{Behavior, Driver, End};
use crate::part::{ThreadCtx, Times};
use crate::reader::Frame;
use crate::stats::{Kind, Tally};
use crate::sys::now_ns;

/// The smallest --size: room for the fields of any realistic run (4-digit publisher and topic,
/// 9-digit sequence, 16-digit timestamp). Larger fields make the payload longer than --size.
pub const MIN_SIZE: usize = 48;

/// Who publishes on and subscribes to what.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    pub subscribers: u64,
    pub topics: u64,
    pub publishers: u64,
    /// Publishers subscribe to their own topics (--rate 0).
    pub saturation: bool,
}

/// A set of topics `first, first + step, ...` (`count` of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topics {
    pub first: u64,
    pub step: u64,
    pub count: u64,
}

impl Topics {
    pub fn nth(&self, i: u64) -> u64 {
        self.first + i * self.step
    }

    /// The position of topic `t` in the set.
    pub fn index(&self, t: u64) -> Option<u64> {
        let off = t.checked_sub(self.first)?;
        if self.step == 1 {
            // No division on the per-delivery path for the usual layouts.
            return (off < self.count).then_some(off);
        }
        (off % self.step == 0 && off / self.step < self.count).then_some(off / self.step)
    }
}

impl Topology {
    /// With at most as many publishers as topics, publisher p takes topics p, p+P, p+2P...
    /// (each topic has one publisher); with more, publisher p takes topic p % topics.
    pub fn publisher_topics(&self, p: u64) -> Topics {
        if self.publishers <= self.topics {
            Topics {
                first: p,
                step: self.publishers,
                count: (self.topics - p).div_ceil(self.publishers),
            }
        } else {
            Topics { first: p % self.topics, step: 1, count: 1 }
        }
    }

    /// The most publishers sharing one topic, and publisher p's place among them.
    pub fn publishers_per_topic(&self) -> u64 {
        if self.publishers <= self.topics {
            1
        } else {
            self.publishers.div_ceil(self.topics)
        }
    }

    pub fn publisher_slot(&self, p: u64) -> u64 {
        if self.publishers <= self.topics {
            0
        } else {
            p / self.topics
        }
    }

    /// Connections subscribed to topic `t`: what one publish on it should deliver.
    pub fn subscribers_of(&self, t: u64) -> u64 {
        let subs = self.subscribers / self.topics + u64::from(t < self.subscribers % self.topics);
        let pubs = if !self.saturation {
            0
        } else if self.publishers <= self.topics {
            1
        } else {
            self.publishers / self.topics + u64::from(t < self.publishers % self.topics)
        };
        subs + pubs
    }

    /// What connection `g` subscribes to (none: a publisher at a fixed rate).
    pub fn subscriptions(&self, g: u64) -> Topics {
        if g < self.publishers {
            if self.saturation {
                self.publisher_topics(g)
            } else {
                Topics { first: 0, step: 1, count: 0 }
            }
        } else {
            Topics { first: (g - self.publishers) % self.topics, step: 1, count: 1 }
        }
    }
}

/// One receiving connection's subscriptions and sequence state.
#[derive(Debug, Default)]
struct Receiver {
    topics: Option<Topics>,
    acks_due: u64,
    /// Next expected sequence number per (topic index, publisher slot).
    next: Vec<u64>,
}

/// Market-data ticks (`--ticks`): per symbol a price walking randomly.
#[derive(Debug)]
struct Ticks {
    rng: crate::rng::Xorshift,
    /// Mid prices in hundredths.
    mids: Vec<u64>,
    volumes: Vec<u64>,
}

impl Ticks {
    fn new(symbols: u32, seed: u64) -> Ticks {
        let mut rng = crate::rng::Xorshift::new(seed);
        let mids = (0..symbols).map(|_| 1_000 + rng.next_u64() % 50_000).collect();
        Ticks { rng, mids, volumes: vec![0; symbols as usize] }
    }

    /// Appends one tick as JSON, e.g. `{"sym":"S0042","bid":123.45,...}`.
    fn write(&mut self, out: &mut Vec<u8>, stamp: u64) {
        use std::io::Write as _;
        let r = self.rng.next_u64();
        let i = (r % self.mids.len() as u64) as usize;
        let mid = &mut self.mids[i];
        *mid = (*mid + (r >> 20) % 21).saturating_sub(10).max(100);
        let (bid, ask) = (*mid - 1, *mid + 1);
        let (bsz, asz) = (100 * (1 + (r >> 32) % 50), 100 * (1 + (r >> 40) % 50));
        self.volumes[i] += (r >> 48) % 1000;
        let _ = write!(
            out,
            r#"{{"type":"quote","sym":"S{i:04}","bid":{}.{:02},"ask":{}.{:02},"bsz":{bsz},"asz":{asz},"last":{}.{:02},"vol":{},"venue":"XNAS","ts":{stamp}}}"#,
            bid / 100,
            bid % 100,
            ask / 100,
            ask % 100,
            *mid / 100,
            *mid % 100,
            self.volumes[i]
        );
    }
}

#[derive(Debug)]
struct Publisher {
    id: u64,
    topics: Topics,
    cursor: u64,
    seqs: Vec<u64>,
    in_flight: u64,
    sent: u64,
}

#[derive(Debug)]
struct Fanout {
    topo: Topology,
    size: usize,
    window: u64,
    times: Times,
    sending: bool,
    base: u64,
    recv: Vec<Receiver>,
    /// Publishers of this thread: slot k holds publisher base + k.
    pubs: Vec<Publisher>,
    acks_due: u64,
    received: u64,
    scratch: Vec<u8>,
    /// `--ticks`: the market-data generator.
    ticks: Option<Ticks>,
    tally: Tally,
}

impl Fanout {
    /// Publishes publisher `k`'s next message, stamped `stamp`.
    fn publish(&mut self, d: &mut Driver, k: usize, stamp: u64) {
        let p = &mut self.pubs[k];
        let ti = p.cursor;
        p.cursor = (p.cursor + 1) % p.topics.count;
        let topic = p.topics.nth(ti);
        let seq = p.seqs[ti as usize];
        p.seqs[ti as usize] += 1;
        p.in_flight += 1;
        p.sent += 1;
        let s = &mut self.scratch;
        s.clear();
        s.extend_from_slice(b"pub t");
        push_u64(s, topic);
        s.push(b' ');
        let payload_at = s.len();
        for v in [p.id, topic, seq, stamp] {
            push_u64(s, v);
            s.push(b':');
        }
        if let Some(t) = self.ticks.as_mut() {
            t.write(s, stamp);
        }
        let want = payload_at + self.size;
        if s.len() < want {
            s.resize(want, b'x');
        }
        d.send_frame(k, OpCode::Text, &self.scratch);
        if in_window(&self.times, stamp) {
            self.tally.publishes += 1;
            self.tally.expected += self.topo.subscribers_of(topic);
        }
    }

    fn delivery(&mut self, d: &mut Driver, id: usize, text: &[u8], wire_len: u64, now: u64) {
        let Some([p, topic, seq, sent]) = parse_fields(text) else {
            let sample = String::from_utf8_lossy(&text[..text.len().min(60)]).into_owned();
            d.fail(id, Kind::Protocol, || format!("an unparsable delivery: {sample:?}"));
            return;
        };
        let topo = self.topo;
        let r = &mut self.recv[id];
        let index = r.topics.and_then(|ts| ts.index(topic));
        let published = p < topo.publishers && topo.publisher_topics(p).index(topic).is_some();
        let (Some(ti), true) = (index, published) else {
            d.fail(id, Kind::Protocol, || {
                format!("a delivery from publisher {p} on topic t{topic} this connection did not subscribe to")
            });
            return;
        };
        let slot = (ti * topo.publishers_per_topic() + topo.publisher_slot(p)) as usize;
        let expected = r.next[slot];
        if seq >= expected {
            self.tally.lost += seq - expected;
            r.next[slot] = seq + 1;
        } else if seq + 1 == expected {
            self.tally.duplicates += 1;
        } else {
            self.tally.reordered += 1;
        }
        self.received += 1;
        if in_window(&self.times, sent) {
            self.tally.messages += 1;
            self.tally.bytes += text.len() as u64;
            // The frame header: 2 bytes, plus 2 or 8 for longer payloads.
            let header = match wire_len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            self.tally.wire_bytes += wire_len + header;
            self.tally.latency.saturating_record(now.saturating_sub(sent).max(1));
        }
        // A publisher hearing itself back (saturation): room for one more in its window.
        let k = (p as usize).wrapping_sub(self.base as usize);
        if k == id && k < self.pubs.len() {
            let pb = &mut self.pubs[k];
            pb.in_flight = pb.in_flight.saturating_sub(1);
            if self.topo.saturation && self.sending && now < self.times.t1 && d.is_open(k) {
                while self.pubs[k].in_flight < self.window {
                    self.publish(d, k, now);
                }
            }
        }
    }
}

impl Behavior for Fanout {
    const CAPTURE: bool = true;

    fn on_open(&mut self, d: &mut Driver, id: usize, _now: u64) {
        let topics = self.topo.subscriptions(self.base + id as u64);
        let r = &mut self.recv[id];
        r.topics = Some(topics);
        r.acks_due = topics.count;
        r.next = vec![0; (topics.count * self.topo.publishers_per_topic()) as usize];
        self.acks_due += topics.count;
        for i in 0..topics.count {
            let s = &mut self.scratch;
            s.clear();
            s.extend_from_slice(b"sub t");
            push_u64(s, topics.nth(i));
            d.send_frame(id, OpCode::Text, &self.scratch);
        }
    }

    fn on_message(&mut self, d: &mut Driver, id: usize, f: Frame<'_>, now: u64) {
        if f.opcode == OpCode::Pong {
            return;
        }
        let text = f.payload.unwrap_or_default();
        if f.opcode != OpCode::Text {
            d.fail(id, Kind::Protocol, || "a binary message on the pub/sub protocol".into());
        } else if text.starts_with(b"ok sub ") {
            let r = &mut self.recv[id];
            if r.acks_due == 0 {
                d.fail(id, Kind::Protocol, || "an `ok sub` for no subscription".into());
                return;
            }
            r.acks_due -= 1;
            self.acks_due -= 1;
        } else if text.starts_with(b"ok unsub") {
        } else if text.starts_with(b"error") {
            let msg = String::from_utf8_lossy(&text[..text.len().min(80)]).into_owned();
            d.errors.count(Kind::Protocol, || format!("the server answered {msg:?}"));
        } else {
            self.delivery(d, id, text, f.wire_len, now);
        }
    }

    fn on_end(&mut self, _d: &mut Driver, id: usize, _end: End, _now: u64) {
        let r = &mut self.recv[id];
        self.acks_due -= r.acks_due;
        r.acks_due = 0;
    }
}

/// Appends `v` in decimal without allocating.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The four numbers in front of a payload (`p:t:seq:ns:`), each ended by a colon. One pass
/// that stops at the fourth colon: the padding after it is never scanned (at saturation this
/// parse is the load generator's hottest code).
fn parse_fields(text: &[u8]) -> Option<[u64; 4]> {
    let mut out = [0u64; 4];
    let mut bytes = text.iter();
    for v in &mut out {
        let mut n: u64 = 0;
        let mut digits = 0;
        loop {
            let c = *bytes.next()?;
            if c == b':' {
                break;
            }
            let d = c.wrapping_sub(b'0');
            if d > 9 || digits == 20 {
                return None;
            }
            digits += 1;
            n = n.checked_mul(10)?.checked_add(u64::from(d))?;
        }
        if digits == 0 {
            return None;
        }
        *v = n;
    }
    Some(out)
}

fn received(b: &Fanout) -> u64 {
    b.received
}

pub fn run(a: &FanoutArgs, mut ctx: ThreadCtx) -> Result<Tally, String> {
    let n = (ctx.range.end - ctx.range.start) as usize;
    let mut d = Driver::new(ctx.cfg.clone(), n, ctx.seed).map_err(|e| format!("epoll: {e}"))?;
    let topo = Topology {
        subscribers: a.subscribers,
        topics: a.topics,
        publishers: a.publishers,
        saturation: a.rate == 0.0,
    };
    let base = ctx.range.start;
    let pubs = (base..ctx.range.end.min(a.publishers))
        .map(|p| {
            let topics = topo.publisher_topics(p);
            Publisher {
                id: p,
                topics,
                cursor: 0,
                seqs: vec![0; topics.count as usize],
                in_flight: 0,
                sent: 0,
            }
        })
        .collect();
    let mut b = Fanout {
        topo,
        size: a.size,
        window: a.window,
        times: Times { start: u64::MAX, t0: u64::MAX, t1: u64::MAX, stop: u64::MAX },
        sending: false,
        base,
        recv: (0..n).map(|_| Receiver::default()).collect(),
        pubs,
        acks_due: 0,
        received: 0,
        scratch: Vec::with_capacity(a.size + 256),
        ticks: (a.ticks > 0).then(|| Ticks::new(a.ticks, ctx.seed ^ 0x5eed)),
        tally: Tally::default(),
    };
    let set = setup(&mut d, &mut b, &mut ctx, received, |b, _| b.acks_due == 0)?;
    if b.acks_due > 0 {
        // Setup ran out of time with subscriptions unanswered: those connections cannot be
        // counted on for deliveries.
        for id in 0..n {
            if b.recv[id].acks_due > 0 {
                d.fail(id, Kind::Timeout, || "a subscription was never acknowledged".into());
            }
        }
        d.end_doomed(&mut b);
    }
    let times = wait_go(&mut d, &mut b, &mut ctx, received)?;
    b.times = times;
    b.sending = true;
    let now = now_ns();
    if topo.saturation {
        for k in 0..b.pubs.len() {
            while d.is_open(k) && b.pubs[k].in_flight < b.window {
                b.publish(&mut d, k, now);
            }
        }
    }
    // Publisher p's m-th publish is due at start + (p + m * P) / rate: each at rate/P,
    // staggered.
    let ns_per = if topo.saturation { 0.0 } else { 1e9 / a.rate };
    let due = |p: &Publisher| {
        times.start + ((p.id as f64 + p.sent as f64 * a.publishers as f64) * ns_per) as u64
    };
    loop {
        let now = now_ns();
        if now >= times.stop.max(times.t1) {
            break;
        }
        let mut next = IDLE_POLL_NS;
        if now >= times.t1 {
            b.sending = false;
        } else if !topo.saturation {
            for k in 0..b.pubs.len() {
                let mut turns = 0;
                loop {
                    let at = due(&b.pubs[k]);
                    if at >= times.t1 {
                        break;
                    }
                    if at > now || turns == 1024 {
                        next = next.min(at.saturating_sub(now));
                        break;
                    }
                    if !d.is_open(k) {
                        b.pubs[k].sent += 1; // a dead publisher's schedule moves on unsent
                        continue;
                    }
                    if in_window(&times, at) {
                        b.tally.late(now, at);
                    }
                    b.publish(&mut d, k, at);
                    turns += 1;
                }
            }
        }
        ctx.ctl.publish(now, d.open, b.received, d.errors.total());
        let end = if b.sending { times.t1 } else { times.stop.max(times.t1) };
        d.poll(&mut b, next.min(end.saturating_sub(now))).map_err(|e| format!("epoll: {e}"))?;
    }
    b.sending = false;
    let close = close_all(&mut d, &mut b, &mut ctx, received)?;
    finish(&d, set, close, &mut b.tally);
    Ok(b.tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_published_and_deliveries_add_up() {
        for (subs, topics, pubs) in [(10_000u64, 1u64, 1u64), (10, 3, 2), (7, 2, 5), (100, 10, 10)]
        {
            for saturation in [false, true] {
                let t = Topology { subscribers: subs, topics, publishers: pubs, saturation };
                let mut published_by = vec![Vec::new(); topics as usize];
                for p in 0..pubs {
                    let ts = t.publisher_topics(p);
                    for i in 0..ts.count {
                        published_by[ts.nth(i) as usize].push(p);
                        assert_eq!(ts.index(ts.nth(i)), Some(i));
                    }
                }
                let mut subscribed = vec![0u64; topics as usize];
                for g in 0..pubs + subs {
                    let ts = t.subscriptions(g);
                    for i in 0..ts.count {
                        subscribed[ts.nth(i) as usize] += 1;
                    }
                }
                for topic in 0..topics {
                    let by = &published_by[topic as usize];
                    assert!(!by.is_empty(), "topic {topic} has no publisher");
                    assert!(by.len() as u64 <= t.publishers_per_topic());
                    let mut slots: Vec<u64> = by.iter().map(|&p| t.publisher_slot(p)).collect();
                    slots.sort();
                    slots.dedup();
                    assert_eq!(slots.len(), by.len(), "publisher slots collide on {topic}");
                    assert!(slots.iter().all(|&s| s < t.publishers_per_topic()));
                    assert_eq!(t.subscribers_of(topic), subscribed[topic as usize]);
                }
            }
        }
    }

    #[test]
    fn ticks_are_json_after_the_fields() {
        let mut t = Ticks::new(300, 7);
        for stamp in 0..1000u64 {
            let mut s = b"1:2:3:4:".to_vec();
            t.write(&mut s, stamp);
            assert_eq!(parse_fields(&s), Some([1, 2, 3, 4]));
            let json = std::str::from_utf8(&s[8..]).unwrap();
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(v["ts"], stamp);
            assert!(v["bid"].as_f64().unwrap() < v["ask"].as_f64().unwrap(), "{json}");
            assert!((120..200).contains(&s.len()), "{} bytes: {json}", s.len());
        }
    }

    #[test]
    fn payload_fields_round_trip() {
        let mut s = Vec::new();
        for v in [3u64, 0, 18_446_744_073_709_551_615, 123_456_789_012] {
            push_u64(&mut s, v);
            s.push(b':');
        }
        s.extend_from_slice(b"xxxx");
        assert_eq!(parse_fields(&s), Some([3, 0, u64::MAX, 123_456_789_012]));
        assert_eq!(parse_fields(b"1:2:3"), None);
        assert_eq!(parse_fields(b"1:2:x:4:"), None);
        assert_eq!(parse_fields(b"ok sub t1"), None);
        assert_eq!(parse_fields(b"1::3:4:"), None, "an empty field");
        assert_eq!(parse_fields(b"1:2:3:4:"), Some([1, 2, 3, 4]));
        assert_eq!(parse_fields(b"1:2:3:18446744073709551616:"), None, "overflow");
        assert_eq!(parse_fields(b"1:2:3:000000000000000000001:"), None, "21 digits");
    }
}
