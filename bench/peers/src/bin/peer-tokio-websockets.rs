//! `peer-tokio-websockets`: the tokio-websockets echo server of the library's
//! `examples/echo_server.rs`: `ServerBuilder::new().accept(stream)`, then send every text or
//! binary message back (the library answers pings and closes). Differences from the example: the
//! multi-threaded runtime, the shared command line, a 64 MiB payload limit instead of none, and
//! errors that end the connection instead of panicking.

use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use ringside_peers::{log_error, run_tokio_peer, CommonArgs};
use tokio::net::TcpStream;
use tokio_websockets::{Config, Error, Limits, ServerBuilder};

/// tokio-websockets echo server.
#[derive(Debug, clap::Parser)]
#[command(name = "peer-tokio-websockets")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// The library default is 64 MiB already; set explicitly so that it stays at least 16 MiB.
const MAX_PAYLOAD: usize = 64 << 20;

async fn echo(stream: TcpStream) -> Result<(), Error> {
    let (_request, mut server) = ServerBuilder::new()
        // As in the example: do not split outgoing messages into frames.
        .config(Config::default().frame_size(usize::MAX))
        .limits(Limits::default().max_payload_len(Some(MAX_PAYLOAD)))
        .accept(stream)
        .await?;
    while let Some(item) = server.next().await {
        let item = item?;
        if item.is_text() || item.is_binary() {
            server.send(item).await?;
        }
    }
    Ok(())
}

async fn serve(stream: TcpStream) {
    if let Err(e) = tokio::task::unconstrained(echo(stream)).await {
        match e {
            Error::Io(_) | Error::AlreadyClosed | Error::Protocol(_) => {}
            e => log_error("peer-tokio-websockets: connection", &e),
        }
    }
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    match run_tokio_peer(&args.common, serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-tokio-websockets: {e}");
            ExitCode::FAILURE
        }
    }
}
