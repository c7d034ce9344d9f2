//! Two nodes in one process over a running bus: node A publishes N frames on one topic as fast
//! as `publish` takes them, node B counts what arrives. Prints publishes per second, the
//! batching factor (publishes per socket write) and what was lost.
//!
//! ```sh
//! nats-server -a 127.0.0.1 -p 4222 &
//! cargo run --release -p ringside-bus --example throughput -- nats://127.0.0.1:4222 200000 100
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringside_bus::{connect, Event};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let n: u64 = args.next().map_or(Ok(200_000), |s| s.parse())?;
    let size: usize = args.next().map_or(Ok(100), |s| s.parse())?;

    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let b = connect(&url, move |e| {
        if let Event::Delivery(_) = e {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    let a = connect(&url, |_| {})?;
    let topic: Arc<str> = "bench".into();
    b.interest_added(&topic)?;
    // Let the subscription reach the server (there is no acknowledgement to wait for).
    std::thread::sleep(Duration::from_millis(200));

    let frame = Bytes::from(vec![0x82; size]);
    let started = Instant::now();
    let mut refused = 0u64;
    for i in 0..n {
        if a.publish(Arc::clone(&topic), frame.clone(), i).is_err() {
            refused += 1;
        }
    }
    let queued = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    let mut quiet_since = Instant::now();
    while received.load(Ordering::Relaxed) < n - refused && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        let now = received.load(Ordering::Relaxed);
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        } else if quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let elapsed = started.elapsed();
    let got = received.load(Ordering::Relaxed);
    let (sa, sb) = (a.stats(), b.stats());
    println!(
        "{url}: {n} x {size} B: publish loop {:.0}/s, delivered {got} in {:.3} s = {:.0}/s; \
         {:.0} publishes per write; refused {refused}, gaps {} lost {}",
        n as f64 / queued.as_secs_f64(),
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64(),
        sa.published as f64 / sa.flushes.max(1) as f64,
        sb.gaps,
        sb.lost,
    );
    a.shutdown();
    b.shutdown();
    Ok(())
}
