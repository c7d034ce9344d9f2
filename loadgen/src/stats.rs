//! What a thread, a process and the whole run count: errors by kind, and a [`Tally`] of
//! messages, latencies (an hdrhistogram in nanoseconds) and phase times. Tallies merge exactly:
//! histograms are added, never percentiles averaged; between processes a histogram travels
//! V2-serialized and base64-encoded.

use std::collections::BTreeMap;
use std::io;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The longest latency recorded: 60 s in nanoseconds (longer ones are recorded as 60 s).
const HIST_MAX_NS: u64 = 60_000_000_000;

/// An empty latency histogram: 1 ns to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// Error kinds, each counted separately and always printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ECONNREFUSED: nothing listening, or the accept queue is full.
    Refused,
    /// ECONNRESET / EPIPE.
    Reset,
    /// A non-101 answer, a bad accept key, a malformed response, EOF during the upgrade.
    Handshake,
    /// Connect/upgrade past --connect-timeout, close past --close-timeout, a missing pong,
    /// ETIMEDOUT.
    Timeout,
    /// The server closed (close frame or EOF) when we had not asked.
    Closed,
    /// A frame breaking RFC 6455, a reply that is not what was sent, a pub/sub error reply.
    Protocol,
    /// EADDRNOTAVAIL / EADDRINUSE: out of ephemeral ports for a source address.
    AddrNotAvailable,
    /// Anything else (EMFILE, ...).
    Other,
}

/// Error counters. The first few messages of each kind are kept as samples for the summary.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Errors {
    pub refused: u64,
    pub reset: u64,
    pub handshake: u64,
    pub timeout: u64,
    pub closed: u64,
    pub protocol: u64,
    pub other: u64,
    pub addr_not_available: u64,
    /// Close codes of unexpected server closes (1006: EOF without a close frame).
    pub close_codes: BTreeMap<u16, u64>,
    pub samples: Vec<String>,
}

const SAMPLES_PER_KIND: u64 = 2;
const MAX_SAMPLES: usize = 16;

impl Errors {
    /// Counts one error; `what` is only called for the first few of a kind.
    pub fn count(&mut self, kind: Kind, what: impl FnOnce() -> String) {
        self.count_n(kind, 1, what);
    }

    /// Counts `n` errors of one kind with one sample message.
    pub fn count_n(&mut self, kind: Kind, n: u64, what: impl FnOnce() -> String) {
        let count = match kind {
            Kind::Refused => &mut self.refused,
            Kind::Reset => &mut self.reset,
            Kind::Handshake => &mut self.handshake,
            Kind::Timeout => &mut self.timeout,
            Kind::Closed => &mut self.closed,
            Kind::Protocol => &mut self.protocol,
            Kind::AddrNotAvailable => &mut self.addr_not_available,
            Kind::Other => &mut self.other,
        };
        let before = *count;
        *count += n;
        if before < SAMPLES_PER_KIND && self.samples.len() < MAX_SAMPLES {
            self.samples.push(what());
        }
    }

    /// Counts an I/O error by its errno.
    pub fn io(&mut self, e: &io::Error, during: &str) {
        let kind = match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Kind::Refused,
            Some(libc::ECONNRESET | libc::EPIPE) => Kind::Reset,
            Some(libc::ETIMEDOUT) => Kind::Timeout,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => Kind::AddrNotAvailable,
            _ => Kind::Other,
        };
        self.count(kind, || {
            let hint = match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE) => " (out of file descriptors: use more --procs)",
                Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => {
                    " (out of ephemeral ports: use more --source-addrs)"
                }
                _ => "",
            };
            format!("{during}: {e}{hint}")
        });
    }

    /// A server close we did not ask for, with its code.
    pub fn unexpected_close(&mut self, code: u16, reason: &str) {
        *self.close_codes.entry(code).or_default() += 1;
        self.count(Kind::Closed, || {
            if code == 1006 {
                "the server closed the connection without a close frame".to_string()
            } else {
                format!("the server closed the connection: code {code} {reason:?}")
            }
        });
    }

    pub fn total(&self) -> u64 {
        self.refused
            + self.reset
            + self.handshake
            + self.timeout
            + self.closed
            + self.protocol
            + self.other
            + self.addr_not_available
    }

    pub fn merge(&mut self, o: &Errors) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.handshake += o.handshake;
        self.timeout += o.timeout;
        self.closed += o.closed;
        self.protocol += o.protocol;
        self.other += o.other;
        self.addr_not_available += o.addr_not_available;
        for (code, n) in &o.close_codes {
            *self.close_codes.entry(*code).or_default() += n;
        }
        for s in &o.samples {
            if self.samples.len() < MAX_SAMPLES && !self.samples.contains(s) {
                self.samples.push(s.clone());
            }
        }
    }
}

/// Everything one thread (then one process, then the run) counted. Counts named "in the
/// window" cover the measured window only; errors cover the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tally {
    pub threads: usize,
    /// Process CPU seconds in the window (set per process, summed over processes).
    pub cpu_s: f64,
    /// Connections opened and failed while setting up.
    pub opened: u64,
    pub failed: u64,
    /// First connect start and last setup completion, CLOCK_MONOTONIC ns (0: none).
    pub ramp_start_ns: u64,
    pub ramp_end_ns: u64,
    /// Replies (echo, rate, hold sample) or deliveries (fanout) received in the window.
    pub messages: u64,
    /// Messages sent in the window (rate: by intended time).
    pub sent: u64,
    /// Payload bytes received in the window.
    pub bytes: u64,
    /// Fanout: bytes on the wire (frame headers and payloads as sent, compressed or not) of
    /// the deliveries counted in `messages`.
    pub wire_bytes: u64,
    /// Rate and fanout: how far behind the schedule sends went out (in the window), at worst
    /// and as a histogram.
    pub max_behind_ns: u64,
    #[serde(with = "histogram_base64")]
    pub behind: Histogram<u64>,
    /// Rate: sends skipped because a connection's unsent backlog passed its cap.
    pub dropped_sends: u64,
    /// Latency in ns: echo round trip, rate from intended send, connect to 101, fanout
    /// publish to delivery.
    #[serde(with = "histogram_base64")]
    pub latency: Histogram<u64>,
    /// Hold: the open-loop phase's echo latency from each message's scheduled send time, and
    /// its messages sent and echoed in its window.
    #[serde(with = "histogram_base64")]
    pub open_latency: Histogram<u64>,
    pub open_sent: u64,
    pub open_received: u64,
    /// Connect: handshakes completed in the window, and full cycles (clean close included).
    pub handshakes: u64,
    pub cycles: u64,
    /// Hold: pings sent and pongs received.
    pub pings: u64,
    pub pongs: u64,
    /// Closing at the end: clean (both close frames and the server's FIN) or not.
    pub close_clean: u64,
    pub close_unclean: u64,
    pub close_start_ns: u64,
    pub close_end_ns: u64,
    /// Fanout: publishes in the window, deliveries they should make, and sequence checks.
    pub publishes: u64,
    pub expected: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub errors: Errors,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            threads: 0,
            cpu_s: 0.0,
            opened: 0,
            failed: 0,
            ramp_start_ns: 0,
            ramp_end_ns: 0,
            messages: 0,
            sent: 0,
            bytes: 0,
            wire_bytes: 0,
            max_behind_ns: 0,
            behind: new_histogram(),
            dropped_sends: 0,
            latency: new_histogram(),
            open_latency: new_histogram(),
            open_sent: 0,
            open_received: 0,
            handshakes: 0,
            cycles: 0,
            pings: 0,
            pongs: 0,
            close_clean: 0,
            close_unclean: 0,
            close_start_ns: 0,
            close_end_ns: 0,
            publishes: 0,
            expected: 0,
            lost: 0,
            reordered: 0,
            duplicates: 0,
            errors: Errors::default(),
        }
    }
}

/// The smaller nonzero value (0 means "not set").
fn min_set(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

impl Tally {
    /// A send that was due at `intended` went out at `now`.
    #[inline]
    pub fn late(&mut self, now: u64, intended: u64) {
        let late = now.saturating_sub(intended);
        self.max_behind_ns = self.max_behind_ns.max(late);
        self.behind.saturating_record(late.max(1));
    }

    pub fn merge(&mut self, o: &Tally) {
        self.threads += o.threads;
        self.cpu_s += o.cpu_s;
        self.opened += o.opened;
        self.failed += o.failed;
        self.ramp_start_ns = min_set(self.ramp_start_ns, o.ramp_start_ns);
        self.ramp_end_ns = self.ramp_end_ns.max(o.ramp_end_ns);
        self.messages += o.messages;
        self.sent += o.sent;
        self.bytes += o.bytes;
        self.wire_bytes += o.wire_bytes;
        self.max_behind_ns = self.max_behind_ns.max(o.max_behind_ns);
        self.behind.add(&o.behind).expect("histograms share their bounds");
        self.dropped_sends += o.dropped_sends;
        self.latency.add(&o.latency).expect("histograms share their bounds");
        self.open_latency.add(&o.open_latency).expect("histograms share their bounds");
        self.open_sent += o.open_sent;
        self.open_received += o.open_received;
        self.handshakes += o.handshakes;
        self.cycles += o.cycles;
        self.pings += o.pings;
        self.pongs += o.pongs;
        self.close_clean += o.close_clean;
        self.close_unclean += o.close_unclean;
        self.close_start_ns = min_set(self.close_start_ns, o.close_start_ns);
        self.close_end_ns = self.close_end_ns.max(o.close_end_ns);
        self.publishes += o.publishes;
        self.expected += o.expected;
        self.lost += o.lost;
        self.reordered += o.reordered;
        self.duplicates += o.duplicates;
        self.errors.merge(&o.errors);
    }
}

/// Percentiles, max and mean of a nanosecond histogram, in microseconds (null when empty).
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"p50": null, "p90": null, "p99": null, "p999": null, "max": null,
                      "mean": null, "count": 0});
    }
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    json!({
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 100.0).round() / 10.0,
        "count": h.len(),
    })
}

/// Serde glue: a histogram as base64 of its V2 serialization.
pub mod histogram_base64 {
    use super::*;

    pub fn encode(h: &Histogram<u64>) -> String {
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(h, &mut bytes).expect("serializing into a Vec");
        STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
        let bytes = STANDARD.decode(text).map_err(|e| format!("histogram base64: {e}"))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("histogram: {e:?}"))?;
        // Re-home into the standard bounds so every merge adds like with like.
        let mut out = new_histogram();
        out.add(&h).map_err(|e| format!("histogram bounds: {e:?}"))?;
        Ok(out)
    }

    pub fn serialize<S: serde::Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(h))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_histograms_merge_to_the_direct_histogram() {
        let mut direct = new_histogram();
        let mut parts = vec![Tally::default(), Tally::default(), Tally::default()];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..30_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Latencies from 1 us to ~10 ms, and a few huge ones.
            let v = 1_000 + x % 10_000_000 + if i % 5_000 == 0 { 30_000_000_000 } else { 0 };
            direct.record(v).unwrap();
            parts[(x % 3) as usize].latency.record(v).unwrap();
        }
        let mut merged = Tally::default();
        for p in &parts {
            let wire = serde_json::to_string(p).unwrap();
            let back: Tally = serde_json::from_str(&wire).unwrap();
            assert_eq!(back.latency, p.latency);
            merged.merge(&back);
        }
        assert_eq!(merged.latency, direct);
        assert_eq!(merged.latency.len(), 30_000);
        assert_eq!(latency_json(&merged.latency), latency_json(&direct));
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.latency.value_at_quantile(q), direct.value_at_quantile(q));
        }
    }

    #[test]
    fn errors_count_by_kind_and_merge() {
        let mut e = Errors::default();
        e.io(&io::Error::from_raw_os_error(libc::ECONNREFUSED), "connect");
        e.io(&io::Error::from_raw_os_error(libc::ECONNRESET), "read");
        e.io(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL), "connect");
        e.io(&io::Error::from_raw_os_error(libc::EMFILE), "socket");
        e.unexpected_close(1008, "slow");
        assert_eq!((e.refused, e.reset, e.addr_not_available, e.other, e.closed), (1, 1, 1, 1, 1));
        assert_eq!(e.total(), 5);
        assert!(e.samples.iter().any(|s| s.contains("--procs")));
        let mut sum = Errors::default();
        sum.merge(&e);
        sum.merge(&e);
        assert_eq!(sum.total(), 10);
        assert_eq!(sum.close_codes[&1008], 2);
        assert_eq!(sum.samples.len(), e.samples.len());
    }
}
