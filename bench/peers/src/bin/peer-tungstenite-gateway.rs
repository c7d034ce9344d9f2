//! `peer-tungstenite-gateway`: the order-entry shape the usual Rust way, the peer of
//! `ringside-bench serve --app gateway`.
//!
//! The upgrade is refused with 401 unless it carries `Authorization: Bearer <token>` or
//! `?token=<token>` (`--token`, default `bench`). Each connection is a tokio task that registers
//! an unbounded `tokio::sync::mpsc` channel for its replies with the engine, then forwards every
//! text or binary message to the engine thread over one shared mpsc channel. The engine thread
//! (a plain thread, as a matching engine is: it must not hold up the runtime) answers each
//! order with an ack that restates it (the same message) on the connection's channel.
//! The task writes replies as they come, flushing once no further reply is ready; once the
//! client's close has arrived, acks still on their way are dropped.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use clap::Parser;
use futures_util::{FutureExt, SinkExt, StreamExt};
use ringside_peers::{log_error, run_tokio_peer, CommonArgs};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::accept_hdr_async_with_config;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Message};

#[derive(Debug, Parser)]
#[command(name = "peer-tungstenite-gateway")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The token clients must present.
    #[arg(long, default_value = "bench")]
    token: String,
    /// tungstenite's `read_buffer_size` (as in `peer-tungstenite`: 16 KiB, not the library's
    /// 128 KiB, which is zero-filled before every read).
    #[arg(long, default_value_t = 16 * 1024)]
    read_buffer_size: usize,
}

/// What connection tasks tell the engine.
enum ToEngine {
    Open(u64, mpsc::UnboundedSender<Message>),
    Order(u64, Message),
    Gone(u64),
}

static TOKEN: OnceLock<String> = OnceLock::new();
static READ_BUFFER: OnceLock<usize> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = TOKEN.set(args.token.clone());
    let _ = READ_BUFFER.set(args.read_buffer_size.max(64));
    let (to_engine, requests) = mpsc::unbounded_channel();
    let engine = std::thread::Builder::new().name("engine".into()).spawn(move || engine(requests));
    if let Err(e) = engine {
        eprintln!("peer-tungstenite-gateway: engine thread: {e}");
        return ExitCode::FAILURE;
    }
    let result =
        run_tokio_peer(&args.common, move |stream| report(connection(stream, to_engine.clone())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-tungstenite-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The engine thread: an ack per order, on the owner's reply channel.
fn engine(mut requests: mpsc::UnboundedReceiver<ToEngine>) {
    let mut replies: HashMap<u64, mpsc::UnboundedSender<Message>> = HashMap::new();
    while let Some(request) = requests.blocking_recv() {
        match request {
            ToEngine::Open(id, tx) => {
                replies.insert(id, tx);
            }
            ToEngine::Order(id, order) => {
                if let Some(tx) = replies.get(&id) {
                    let _ = tx.send(order);
                }
            }
            ToEngine::Gone(id) => {
                replies.remove(&id);
            }
        }
    }
}

/// Whether the upgrade request carries the token.
fn authorized(request: &Request) -> bool {
    let token = TOKEN.get().map_or("", String::as_str);
    let header = request
        .headers()
        .get_all("authorization")
        .iter()
        .any(|v| v.as_bytes().strip_prefix(b"Bearer ") == Some(token.as_bytes()));
    header
        || request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.strip_prefix("token=") == Some(token)))
}

/// The upgrade callback: 401 without the token. tungstenite's `Callback` fixes the signature.
#[allow(clippy::result_large_err)]
fn check(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if authorized(request) {
        Ok(response)
    } else {
        let mut refusal = ErrorResponse::new(None);
        *refusal.status_mut() = StatusCode::UNAUTHORIZED;
        Err(refusal)
    }
}

async fn connection(
    stream: TcpStream,
    engine: mpsc::UnboundedSender<ToEngine>,
) -> Result<(), Error> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
        .read_buffer_size(READ_BUFFER.get().copied().unwrap_or(16 << 10));
    let mut ws = accept_hdr_async_with_config(stream, check, Some(config)).await?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, mut replies) = mpsc::unbounded_channel();
    let _ = engine.send(ToEngine::Open(id, tx));
    let result = async {
        // Once the client's close arrived, tungstenite has queued the reply and refuses further
        // sends: acks still on their way are dropped, and reading goes on until the close
        // handshake completes.
        let mut closing = false;
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let msg = msg?;
                    if msg.is_text() || msg.is_binary() {
                        let _ = engine.send(ToEngine::Order(id, msg));
                    } else if msg.is_close() {
                        closing = true;
                    }
                }
                Some(reply) = replies.recv() => {
                    if closing {
                        continue;
                    }
                    ws.feed(reply).await?;
                    while let Some(Some(reply)) = replies.recv().now_or_never() {
                        ws.feed(reply).await?;
                    }
                    ws.flush().await?;
                }
            }
        }
    }
    .await;
    let _ = engine.send(ToEngine::Gone(id));
    result
}

/// Runs a connection, logging (rate-limited) errors other than the ways a peer usually leaves.
async fn report(conn: impl std::future::Future<Output = Result<(), Error>>) {
    match conn.await {
        Ok(()) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => {}
        Err(Error::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            | tokio_tungstenite::tungstenite::error::ProtocolError::HandshakeIncomplete,
        )) => {}
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) => {}
        Err(Error::Http(_)) => {} // a refused upgrade
        Err(e) => log_error("peer-tungstenite-gateway: connection", &e),
    }
}
