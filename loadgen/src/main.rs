//! `ringside-load`: a WebSocket load generator that measures and never hides errors.
//!
//! Scenarios: `echo` (closed loop), `rate` (open loop, coordinated omission corrected),
//! `connect` (handshakes per second), `hold` (connection scale and memory), `fanout` (pub/sub).
//! Each thread runs one epoll loop over its connections; past the open-file limit the run is
//! spread over child processes (this binary re-executed), which report histograms the parent
//! merges exactly. See the README for the flags, the JSON report and the measured ceiling.

mod cli;
mod driver;
mod orchestrate;
mod part;
mod plan;
mod procfs;
mod reader;
mod report;
mod rng;
mod scenario;
mod stats;
mod sys;
mod target;

use clap::Parser as _;

use crate::cli::{Cli, Command, Scenario};

fn main() {
    let cli = Cli::parse();
    sys::ignore_sigpipe();
    let result = match cli.command {
        Command::Child { spec } => orchestrate::child(&spec),
        Command::Echo(a) => orchestrate::run(Scenario::Echo(a)),
        Command::Rate(a) => orchestrate::run(Scenario::Rate(a)),
        Command::Connect(a) => orchestrate::run(Scenario::Connect(a)),
        Command::Hold(a) => orchestrate::run(Scenario::Hold(a)),
        Command::Fanout(a) => orchestrate::run(Scenario::Fanout(a)),
    };
    if let Err(e) = result {
        eprintln!("ringside-load: {e}");
        std::process::exit(1);
    }
}
