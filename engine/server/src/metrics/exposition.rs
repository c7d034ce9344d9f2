//! The Prometheus text exposition (format 0.0.4) of every worker's counters, built at scrape
//! time.
//!
//! Each family has a `# HELP` and a `# TYPE` line and its samples together; counters end in
//! `_total`; the histogram has cumulative `_bucket{le=..}` series ending in `+Inf`, then `_sum`
//! (seconds) and `_count`. Label values are escaped (`\\`, `\"`, `\n`) although every value
//! written here comes from a fixed set: a worker index, a status, a close code, a backend name.
//!
//! Per-worker series (label `worker`) for what tells workers apart: load spread by
//! SO_REUSEPORT (connections, messages, bytes), a hot or stalled worker (loop time, queued
//! bytes, budgets), and backend behaviour, which is per ring or per epoll set. Summed over the
//! workers, for what is about clients rather than workers: upgrades by `status` and closes by
//! `code` (a client's status does not depend on which worker accepted it, and per-worker copies
//! would multiply those series by the worker count for nothing).

use std::fmt::Write;

use super::counters::{WorkerMetrics, CLOSE_CODES, LOOP_BUCKETS_NS, UPGRADE_STATUSES};

/// The value of the `Content-Type` header for [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

type Read = fn(&WorkerMetrics) -> u64;

/// The plain per-worker families, in page order: name, type, help, how to read it.
const PER_WORKER: &[(&str, Kind, &str, Read)] = &[
    (
        "ringside_connections_open",
        Kind::Gauge,
        "Connections the worker holds now, handshaking or open.",
        |w| w.connections_open.get(),
    ),
    ("ringside_connections_accepted_total", Kind::Counter, "TCP connections accepted.", |w| {
        w.connections_accepted.get()
    }),
    ("ringside_messages_received_total", Kind::Counter, "WebSocket data messages received.", |w| {
        w.messages_received.get()
    }),
    (
        "ringside_messages_sent_total",
        Kind::Counter,
        "WebSocket data messages queued for sending, one per recipient.",
        |w| w.messages_sent.get(),
    ),
    ("ringside_received_bytes_total", Kind::Counter, "Bytes read from client sockets.", |w| {
        w.bytes_received.get()
    }),
    ("ringside_sent_bytes_total", Kind::Counter, "Bytes written to client sockets.", |w| {
        w.bytes_sent.get()
    }),
    ("ringside_pings_received_total", Kind::Counter, "Ping frames received.", |w| {
        w.pings_received.get()
    }),
    ("ringside_pongs_received_total", Kind::Counter, "Pong frames received.", |w| {
        w.pongs_received.get()
    }),
    (
        "ringside_publishes_delivered_total",
        Kind::Counter,
        "Publishes queued to a subscriber.",
        |w| w.publishes_delivered.get(),
    ),
    (
        "ringside_publishes_dropped_total",
        Kind::Counter,
        "Publishes dropped for a subscriber over its send limit.",
        |w| w.publishes_dropped.get(),
    ),
    (
        "ringside_publishes_conflated_total",
        Kind::Counter,
        "Publishes that replaced an older unsent message of the same key.",
        |w| w.publishes_conflated.get(),
    ),
    (
        "ringside_slow_consumers_closed_total",
        Kind::Counter,
        "Connections closed with 1008 for falling behind their send limit.",
        |w| w.slow_consumers_closed.get(),
    ),
    (
        "ringside_send_queued_bytes",
        Kind::Gauge,
        "Bytes in send queues not yet accepted by the kernel.",
        |w| w.send_queued_bytes.get(),
    ),
    (
        "ringside_input_buffered_bytes",
        Kind::Gauge,
        "Bytes held for clients' unfinished input.",
        |w| w.input_buffered_bytes.get(),
    ),
    (
        "ringside_input_budget_bytes",
        Kind::Gauge,
        "The input budget of the worker (0 when unlimited).",
        |w| w.input_budget_bytes.get(),
    ),
    ("ringside_output_buffered_bytes", Kind::Gauge, "Bytes of memory held for output.", |w| {
        w.output_buffered_bytes.get()
    }),
    (
        "ringside_output_budget_bytes",
        Kind::Gauge,
        "The output budget of the worker (0 when unlimited).",
        |w| w.output_budget_bytes.get(),
    ),
    (
        "ringside_budget_refusals_total",
        Kind::Counter,
        "Connections refused or closed because a memory budget was spent.",
        |w| w.budget_refusals.get(),
    ),
    (
        "ringside_accept_errors_total",
        Kind::Counter,
        "Accepts that failed for lack of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM).",
        |w| w.accept_errors.get(),
    ),
    ("ringside_loop_iterations_total", Kind::Counter, "Event loop iterations.", |w| {
        w.loop_iteration.count()
    }),
    ("ringside_uring_cqes_total", Kind::Counter, "io_uring completions reaped.", |w| {
        w.uring_cqes.get()
    }),
    ("ringside_uring_enters_total", Kind::Counter, "io_uring_enter calls.", |w| {
        w.uring_enters.get()
    }),
    (
        "ringside_uring_enobufs_rearms_total",
        Kind::Counter,
        "Receives re-armed after the provided-buffer ring ran empty (ENOBUFS).",
        |w| w.uring_enobufs_rearms.get(),
    ),
    ("ringside_epoll_events_total", Kind::Counter, "Events returned by epoll_wait.", |w| {
        w.epoll_events.get()
    }),
    ("ringside_epoll_waits_total", Kind::Counter, "epoll_wait calls.", |w| w.epoll_waits.get()),
];

/// Every family [`render`] writes, in page order.
pub fn family_names() -> Vec<&'static str> {
    let mut names = vec!["ringside_backend_info"];
    names.extend(PER_WORKER.iter().map(|f| f.0));
    names.extend(["ringside_upgrades_total", "ringside_closes_total", LOOP_HISTOGRAM]);
    names
}

const LOOP_HISTOGRAM: &str = "ringside_loop_iteration_seconds";

/// The exposition page for `workers` (worker `i` is `workers[i]`).
pub fn render(workers: &[WorkerMetrics]) -> String {
    let mut page = Page { out: String::with_capacity(4096 + workers.len() * 3072) };
    let index: Vec<String> = (0..workers.len()).map(|i| i.to_string()).collect();

    page.family(
        "ringside_backend_info",
        Kind::Gauge,
        "The I/O backend each worker runs (always 1).",
    );
    for (w, i) in workers.iter().zip(&index) {
        page.sample(
            "ringside_backend_info",
            &[("worker", i), ("backend", w.backend().as_str())],
            1,
        );
    }

    for &(name, kind, help, read) in PER_WORKER {
        page.family(name, kind, help);
        for (w, i) in workers.iter().zip(&index) {
            page.sample(name, &[("worker", i)], read(w));
        }
    }

    let name = "ringside_upgrades_total";
    page.family(name, Kind::Counter, "Answers to upgrade requests by HTTP status (101 accepted).");
    let mut upgrades = [0u64; UPGRADE_STATUSES.len() + 1];
    for w in workers {
        for (sum, n) in upgrades.iter_mut().zip(w.upgrades()) {
            *sum = sum.wrapping_add(n);
        }
    }
    for (i, n) in upgrades.iter().enumerate() {
        let status = UPGRADE_STATUSES.get(i).map_or_else(|| "other".to_owned(), u16::to_string);
        page.sample(name, &[("status", &status)], n);
    }

    let name = "ringside_closes_total";
    page.family(name, Kind::Counter, "WebSocket connections closed, by close code.");
    let mut closes = [0u64; CLOSE_CODES.len() + 1];
    for w in workers {
        for (sum, n) in closes.iter_mut().zip(w.closes()) {
            *sum = sum.wrapping_add(n);
        }
    }
    for (i, n) in closes.iter().enumerate() {
        let code = CLOSE_CODES.get(i).map_or_else(|| "other".to_owned(), u16::to_string);
        page.sample(name, &[("code", &code)], n);
    }

    page.histogram_family(LOOP_HISTOGRAM, "Busy time of one event loop iteration.");
    let bounds: Vec<String> = LOOP_BUCKETS_NS.iter().map(|&ns| seconds(ns)).collect();
    let bucket = format!("{LOOP_HISTOGRAM}_bucket");
    for (w, i) in workers.iter().zip(&index) {
        let counts = w.loop_iteration.buckets();
        let mut cumulative = 0u64;
        for (n, le) in counts.iter().zip(bounds.iter().map(String::as_str).chain(["+Inf"])) {
            cumulative = cumulative.wrapping_add(*n);
            page.sample(&bucket, &[("worker", i), ("le", le)], cumulative);
        }
        page.sample(
            &format!("{LOOP_HISTOGRAM}_sum"),
            &[("worker", i)],
            seconds(w.loop_iteration.sum_ns()),
        );
        page.sample(&format!("{LOOP_HISTOGRAM}_count"), &[("worker", i)], cumulative);
    }
    page.out
}

/// Nanoseconds as decimal seconds, exactly (no float rounding): 10_000 -> "0.00001".
fn seconds(ns: u64) -> String {
    let (whole, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A page being written. Writing to a `String` cannot fail, so results are ignored.
struct Page {
    out: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.header(name, kind.as_str(), help);
    }

    fn histogram_family(&mut self, name: &str, help: &str) {
        self.header(name, "histogram", help);
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name} ");
        escape_help(help, &mut self.out);
        let _ = writeln!(self.out, "\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                escape_label(value, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text: backslash and line feed (a quote needs no escape there).
fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::counters::BackendKind;

    fn lines(page: &str) -> Vec<&str> {
        page.lines().collect()
    }

    /// Sample lines as (name, labels, value).
    fn samples(page: &str) -> Vec<(String, String, String)> {
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                (name.to_owned(), labels.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn every_family_has_help_type_and_grouped_samples() {
        let workers = WorkerMetrics::for_workers(2);
        let page = render(&workers);
        let mut seen = Vec::new();
        let mut current = None::<String>;
        for line in lines(&page) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(!seen.contains(&name), "{name} appears twice");
                seen.push(name.clone());
                current = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                assert_eq!(parts.next(), current.as_deref(), "TYPE follows its HELP");
                let kind = parts.next().unwrap();
                let name = current.as_deref().unwrap();
                match kind {
                    "counter" => assert!(name.ends_with("_total"), "{name}"),
                    "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{name}"),
                    other => panic!("unexpected type {other}"),
                }
            } else {
                let family = current.as_deref().expect("a sample after a header");
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    name == family
                        || [
                            format!("{family}_bucket"),
                            format!("{family}_sum"),
                            format!("{family}_count")
                        ]
                        .contains(&name.to_owned()),
                    "sample {name} outside its family {family}"
                );
            }
        }
        assert_eq!(seen, family_names());
    }

    #[test]
    fn per_worker_and_summed_series() {
        let workers = WorkerMetrics::for_workers(2);
        workers[0].set_backend(BackendKind::IoUring);
        workers[1].set_backend(BackendKind::IoUring);
        workers[0].connections_open.set(3);
        workers[1].connections_open.set(5);
        workers[0].upgrade(101);
        workers[1].upgrade(101);
        workers[1].upgrade(999);
        workers[0].closed(1000);
        workers[1].closed(1006);
        let s = samples(&render(&workers));
        let find = |name: &str, labels: &str| {
            s.iter()
                .find(|(n, l, _)| n == name && l == labels)
                .map(|(_, _, v)| v.clone())
                .unwrap_or_else(|| panic!("no {name}{{{labels}}}"))
        };
        assert_eq!(find("ringside_connections_open", "worker=\"0\""), "3");
        assert_eq!(find("ringside_connections_open", "worker=\"1\""), "5");
        assert_eq!(find("ringside_upgrades_total", "status=\"101\""), "2");
        assert_eq!(find("ringside_upgrades_total", "status=\"other\""), "1");
        assert_eq!(find("ringside_upgrades_total", "status=\"400\""), "0");
        assert_eq!(find("ringside_closes_total", "code=\"1000\""), "1");
        assert_eq!(find("ringside_closes_total", "code=\"1006\""), "1");
        assert_eq!(find("ringside_backend_info", "worker=\"1\",backend=\"io_uring\""), "1");
        assert!(!s.iter().any(|(n, l, _)| n == "ringside_upgrades_total" && l.contains("worker")));
    }

    #[test]
    fn histogram_is_cumulative_and_ends_in_inf() {
        let workers = WorkerMetrics::for_workers(1);
        let h = &workers[0].loop_iteration;
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(3));
        let s = samples(&render(&workers));
        let buckets: Vec<(&str, u64)> = s
            .iter()
            .filter(|(n, _, _)| n == "ringside_loop_iteration_seconds_bucket")
            .map(|(_, l, v)| {
                let le = l.split("le=\"").nth(1).unwrap().trim_end_matches('"');
                (le, v.parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), LOOP_BUCKETS_NS.len() + 1);
        assert_eq!(buckets[0], ("0.00001", 1));
        assert_eq!(buckets[1], ("0.000025", 1));
        assert_eq!(buckets[2], ("0.00005", 3));
        assert_eq!(buckets[15], ("1", 3));
        assert_eq!(buckets[16], ("+Inf", 4));
        assert!(buckets.windows(2).all(|p| p[0].1 <= p[1].1), "cumulative");
        let get = |name: &str| s.iter().find(|(n, _, _)| n == name).unwrap().2.clone();
        assert_eq!(get("ringside_loop_iteration_seconds_count"), "4");
        assert_eq!(get("ringside_loop_iteration_seconds_sum"), "3.000065");
        assert_eq!(get("ringside_loop_iterations_total"), "4");
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(10_000), "0.00001");
        assert_eq!(seconds(2_500_000), "0.0025");
        assert_eq!(seconds(1_000_000_000), "1");
        assert_eq!(seconds(1_500_000_001), "1.500000001");
        assert_eq!(seconds(u64::MAX), "18446744073.709551615");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = String::new();
        escape_label("a\\b\"c\nd", &mut out);
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        let mut out = String::new();
        escape_help("say \"x\"\\\n", &mut out);
        assert_eq!(out, "say \"x\"\\\\\\n");
        let mut page = Page { out: String::new() };
        page.sample("m", &[("l", "x\"}\n")], 1);
        assert_eq!(page.out, "m{l=\"x\\\"}\\n\"} 1\n");
    }

    #[test]
    fn no_workers_is_still_a_valid_page() {
        let page = render(&[]);
        // Headers for every family; summed families still show their zero series.
        assert_eq!(page.matches("# TYPE ").count(), family_names().len());
        assert!(page.contains("ringside_upgrades_total{status=\"101\"} 0\n"));
    }
}
