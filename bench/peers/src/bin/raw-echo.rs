//! `raw-echo`: a raw TCP echo behind a real WebSocket handshake, the limit the Ringside engine is
//! measured against. See the crate README and `ringside_peers::raw`.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use ringside_peers::raw::{self, Backend, Config, RingFlags};
use ringside_peers::CommonArgs;

/// Answers the WebSocket handshake, then returns every byte it receives, verbatim.
#[derive(Debug, Parser)]
#[command(name = "raw-echo")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Event loop.
    #[arg(long, value_enum)]
    backend: Backend,
    /// io_uring setup flags.
    #[arg(long, value_enum, default_value = "defer")]
    ring_flags: RingFlags,
    /// io_uring: provided receive buffers per ring.
    #[arg(long, default_value_t = 4096)]
    buffers: u16,
    /// io_uring: bytes per provided receive buffer.
    #[arg(long, default_value_t = 16 * 1024)]
    buffer_size: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("raw-echo: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let config = Config {
        backend: args.backend,
        ring_flags: args.ring_flags,
        buffers: args.buffers,
        buffer_size: args.buffer_size,
    };
    let threads = args.common.threads.unwrap_or(1);
    match raw::run(args.common.listen, threads, &config, &stop, ringside_peers::announce) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
