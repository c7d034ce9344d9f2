//! `peer-fastwebsockets`: the fastwebsockets echo server of the library's
//! `examples/echo_server.rs`: a hyper HTTP/1.1 server whose service calls
//! `fastwebsockets::upgrade::upgrade`, then a `FragmentCollector` that writes every text or
//! binary message back (auto close and auto pong on, the defaults). Differences from the example:
//! the multi-threaded runtime, the shared command line, and quiet connection errors.

use std::process::ExitCode;

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use ringside_peers::{log_error, run_tokio_peer, CommonArgs};
use tokio::net::TcpStream;

/// fastwebsockets echo server (hyper upgrade + FragmentCollector).
#[derive(Debug, clap::Parser)]
#[command(name = "peer-fastwebsockets")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// The library default is 64 MiB already; set explicitly so that it stays at least 16 MiB.
const MAX_MESSAGE: usize = 64 << 20;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(MAX_MESSAGE);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            if !matches!(
                e,
                WebSocketError::UnexpectedEOF
                    | WebSocketError::ConnectionClosed
                    | WebSocketError::IoError(_)
            ) {
                log_error("peer-fastwebsockets: connection", &e);
            }
        }
    });
    Ok(response)
}

async fn serve(stream: TcpStream) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn =
        http1::Builder::new().serve_connection(io, service_fn(server_upgrade)).with_upgrades();
    if let Err(e) = conn.await {
        log_error("peer-fastwebsockets: http", &e);
    }
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    match run_tokio_peer(&args.common, serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-fastwebsockets: {e}");
            ExitCode::FAILURE
        }
    }
}
