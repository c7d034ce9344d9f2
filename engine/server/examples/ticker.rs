//! A market-data ticker: a publisher thread (not a worker) publishes N ticks a second over M
//! symbols; clients subscribe to the symbols they want and get each tick as a small JSON text.
//!
//! Each symbol is a topic (`tick.<SYMBOL>`) under the `conflate` policy: a client that lags gets
//! the latest price of each symbol, never a backlog of stale ones.
//!
//! ```sh
//! cargo run --release -p ringside --example ticker -- --listen 127.0.0.1:9003 --symbols 100 --rate 10000
//! # then, in a client: send "sub SYM000", "sub SYM001", ... ; "unsub SYM000"
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use ringside::{Handler, Message, Server, SlowConsumer, TopicPolicy, WebSocket};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9003")]
    listen: SocketAddr,
    /// Symbols (SYM000, SYM001, ...).
    #[arg(long, default_value_t = 100)]
    symbols: usize,
    /// Ticks per second over all symbols.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Bytes a client may have queued before its ticks are conflated.
    #[arg(long, default_value_t = 64 << 10)]
    conflate_after: usize,
}

/// `sub SYMBOL` / `unsub SYMBOL`, answered `ok ...` or `error ...`.
struct Ticker;

impl Handler for Ticker {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(line) = msg else { return };
        let reply = match line.split_once(' ') {
            Some(("sub", symbol)) => match ws.subscribe(&format!("tick.{symbol}")) {
                Ok(_) => format!("ok sub {symbol}"),
                Err(e) => format!("error {e}"),
            },
            Some(("unsub", symbol)) => {
                ws.unsubscribe(&format!("tick.{symbol}"));
                format!("ok unsub {symbol}")
            }
            _ => "error expected `sub SYMBOL` or `unsub SYMBOL`".to_owned(),
        };
        let _ = ws.send_text(&reply);
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // The library leaves process limits alone: room for as many connections as allowed.
    ringside::raise_fd_limit()?;
    let policy = TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: args.conflate_after };
    let server = Server::builder().bind(args.listen)?.topic("tick.*", policy).build(|| Ticker)?;
    println!(
        "ticker on ws://{} ({}): {} symbols, {} ticks/s",
        server.local_addr(),
        server.backend_name(),
        args.symbols,
        args.rate
    );
    let handle = server.spawn()?;
    let publisher = handle.publisher();
    let symbols: Vec<(String, String)> = (0..args.symbols.max(1))
        .map(|i| (format!("SYM{i:03}"), format!("tick.SYM{i:03}")))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&stop))?;
    }
    // Paced by intended time: tick n is due at start + n / rate, published in 1 ms batches.
    let started = Instant::now();
    let mut seq: u64 = 0;
    let mut prices: Vec<f64> = (0..symbols.len()).map(|i| 100.0 + i as f64).collect();
    let mut text = String::with_capacity(96);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
        while seq < due {
            let i = (seq % symbols.len() as u64) as usize;
            // A cheap deterministic walk: the price moves by up to a cent per tick.
            let step = ((seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as f64 - 7.5) / 750.0;
            prices[i] = (prices[i] + step).max(0.01);
            text.clear();
            let _ = write!(text, r#"{{"s":"{}","px":{:.2},"seq":{seq}}}"#, symbols[i].0, prices[i]);
            publisher.publish_keyed(&symbols[i].1, i as u64, Message::Text(&text));
            seq += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    handle.shutdown()
}
