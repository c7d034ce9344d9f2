//! Metrics: per-worker counters, their Prometheus text exposition, and the `/metrics` and
//! `/health` endpoint.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ringside::metrics::{MetricsServer, WorkerMetrics};
//!
//! let workers = WorkerMetrics::for_workers(4);          // one block per worker thread
//! workers[0].connections_accepted.inc();                // worker 0, on its own thread
//! let server = MetricsServer::start(
//!     "127.0.0.1:9180".parse().unwrap(),
//!     Arc::clone(&workers),
//!     Arc::new(|| true),                                 // readiness for GET /health
//! )?;
//! // ... GET http://127.0.0.1:9180/metrics ...
//! drop(server);                                          // stops the thread, closes the port
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The hot path takes no lock and shares no cache line: each worker writes only its own
//! [`WorkerMetrics`] (128-byte aligned) with Relaxed loads and stores. All aggregation happens
//! when a scraper asks, on the metrics thread.
//!
//! The exposition is written by hand rather than with the `prometheus-client` crate. That crate
//! keeps each metric in its own shared atomic updated with a locked read-modify-write, finds
//! labelled series through a lock-guarded map, and brings four dependencies (`dtoa`, `itoa`,
//! `parking_lot`, and a derive macro crate pulling `syn`); its text encoder writes OpenMetrics.
//! What is needed here is the opposite shape: a fixed set of series known at compile time,
//! single-writer plain stores on the hot path, and a reader that walks the blocks once per
//! scrape. The writer for that is two hundred lines with no dependency, and its output is the
//! Prometheus text format 0.0.4 checked by `promtool check metrics` in the tests.
//!
//! Not here: logs (the binary's `--log-format` and `RUST_LOG`), tracing spans, push gateways,
//! OpenMetrics exemplars. `docs/operations.md` lists every metric with what to do when it moves.

mod counters;
mod exposition;
mod listener;

pub use counters::{
    BackendKind, Counter, Gauge, Histogram, WorkerMetrics, WorkerMetricsRef, CLOSE_CODES,
    LOOP_BUCKETS_NS, UPGRADE_STATUSES,
};
pub use exposition::{family_names, render, CONTENT_TYPE};
pub use listener::{HealthFn, MetricsServer, MAX_REQUEST_BYTES, REQUEST_DEADLINE};
