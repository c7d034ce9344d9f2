//! `peer-tungstenite`: tokio-tungstenite servers.
//!
//! `--app echo` (default) follows tokio-tungstenite's `examples/autobahn-server.rs` (accept_async,
//! then send every text or binary message back; the library answers pings and completes the close
//! handshake), except that replies are `feed`ed and flushed once no further message is ready, as
//! `StreamExt::forward` in `examples/echo-server.rs` does, without splitting the stream.
//!
//! `--app broadcast` is the fan-out peer: the sub/unsub/pub text protocol over one
//! `tokio::sync::broadcast` channel per topic (see the crate README).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures_util::{FutureExt, SinkExt, StreamExt};
use ringside_peers::{log_error, run_tokio_peer, CommonArgs};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};
use tokio_tungstenite::{accept_async_with_config, WebSocketStream};

/// tokio-tungstenite server: echo (default) or the sub/unsub/pub fan-out protocol.
#[derive(Debug, Parser)]
#[command(name = "peer-tungstenite")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// What to serve.
    #[arg(long, value_enum, default_value = "echo")]
    app: App,
    /// broadcast: capacity of each topic's `tokio::sync::broadcast` channel.
    #[arg(long, default_value_t = 1024)]
    channel_capacity: usize,
    /// tungstenite's `read_buffer_size`. The library default, 128 KiB, costs several µs per
    /// read (the buffer is zero-filled to its capacity before every read); 131072 restores it.
    #[arg(long, default_value_t = 16 * 1024)]
    read_buffer_size: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum App {
    Echo,
    Broadcast,
}

/// Messages (and frames) of up to 64 MiB (the library defaults are 64 MiB and 16 MiB), and the
/// read buffer size of `--read-buffer-size`.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
        .read_buffer_size(READ_BUFFER.load(Ordering::Relaxed))
}

static READ_BUFFER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The longest topic name a connection may subscribe to (as in the Ringside server).
const MAX_TOPIC: usize = 1024;

/// Messages broadcast receivers skipped because they lagged, over all connections.
static LAGGED: AtomicU64 = AtomicU64::new(0);

fn main() -> ExitCode {
    let args = Args::parse();
    READ_BUFFER.store(args.read_buffer_size.max(64), Ordering::Relaxed);
    let result = match args.app {
        App::Echo => run_tokio_peer(&args.common, |stream| report(echo(stream))),
        App::Broadcast => {
            let topics = Topics::new(args.channel_capacity.max(1));
            run_tokio_peer(&args.common, move |stream| report(fan_out(stream, topics.clone())))
        }
    };
    if let App::Broadcast = args.app {
        eprintln!(
            "peer-tungstenite: lagging receivers skipped {} messages",
            LAGGED.load(Ordering::Relaxed)
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-tungstenite: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a connection, logging (rate-limited) errors other than the ways a peer usually leaves.
async fn report(conn: impl std::future::Future<Output = Result<(), Error>>) {
    match conn.await {
        Ok(()) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => {}
        Err(Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::HandshakeIncomplete,
        )) => {}
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) => {}
        Err(e) => log_error("peer-tungstenite: connection", &e),
    }
}

async fn echo(stream: TcpStream) -> Result<(), Error> {
    let mut ws = accept_async_with_config(stream, Some(config())).await?;
    while let Some(msg) = ws.next().await {
        let mut msg = msg?;
        loop {
            if msg.is_text() || msg.is_binary() {
                ws.feed(msg).await?;
            }
            // More already read or readable? Queue its echo too before flushing.
            match ws.next().now_or_never() {
                Some(Some(next)) => msg = next?,
                Some(None) | None => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

/// The topic registry: one broadcast channel per topic, made on first use, never removed.
#[derive(Clone)]
struct Topics {
    channels: Arc<Mutex<HashMap<Box<str>, broadcast::Sender<Utf8Bytes>>>>,
    capacity: usize,
}

impl Topics {
    fn new(capacity: usize) -> Self {
        Topics { channels: Arc::default(), capacity }
    }

    fn sender(&self, topic: &str) -> broadcast::Sender<Utf8Bytes> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = channels.get(topic) {
            return tx.clone();
        }
        let tx = broadcast::Sender::new(self.capacity);
        channels.insert(topic.into(), tx.clone());
        tx
    }
}

/// One connection's side of the fan-out protocol.
struct Session {
    topics: Topics,
    /// Deliveries from every subscribed topic, merged.
    deliveries: SelectAll<Abortable<BoxStream<'static, Utf8Bytes>>>,
    subscriptions: HashMap<Box<str>, AbortHandle>,
    /// Senders of the topics this connection published to, so that a publish takes no lock.
    publishers: HashMap<Box<str>, broadcast::Sender<Utf8Bytes>>,
}

/// A receiver as a stream: a lagging receiver skips what it missed (counted in [`LAGGED`]).
fn deliveries(rx: broadcast::Receiver<Utf8Bytes>) -> BoxStream<'static, Utf8Bytes> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(payload) => return Some((payload, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    LAGGED.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

impl Session {
    /// Handles one message from the client; returns the reply, if any.
    fn on_message(&mut self, msg: Message) -> Option<Utf8Bytes> {
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return Some("error binary messages are not part of this protocol".into())
            }
            _ => return None,
        };
        let line = text.as_str();
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match verb {
            "sub" | "unsub" if rest.is_empty() || rest.contains(' ') => {
                format!("error {verb} takes one topic")
            }
            "sub" if rest.len() > MAX_TOPIC => format!("error topic longer than {MAX_TOPIC} bytes"),
            "sub" => {
                if !self.subscriptions.contains_key(rest) {
                    let rx = self.topics.sender(rest).subscribe();
                    let (handle, registration) = AbortHandle::new_pair();
                    self.deliveries.push(Abortable::new(deliveries(rx), registration));
                    self.subscriptions.insert(rest.into(), handle);
                }
                format!("ok sub {rest}")
            }
            "unsub" => {
                if let Some(handle) = self.subscriptions.remove(rest) {
                    handle.abort();
                }
                format!("ok unsub {rest}")
            }
            "pub" => match rest.split_once(' ') {
                Some((topic, _)) if !topic.is_empty() => {
                    let start = "pub ".len() + topic.len() + 1;
                    let tx = match self.publishers.get(topic) {
                        Some(tx) => tx,
                        None => {
                            let tx = self.topics.sender(topic);
                            self.publishers.entry(topic.into()).or_insert(tx)
                        }
                    };
                    let payload = Bytes::from(text.clone()).slice(start..);
                    // SAFETY: `text` is valid UTF-8 and `start` follows an ASCII space in it, so
                    // it is a character boundary and the rest is valid UTF-8 too.
                    let payload = unsafe { Utf8Bytes::from_bytes_unchecked(payload) };
                    // No subscriber is not an error.
                    let _ = tx.send(payload);
                    return None;
                }
                _ => "error pub takes a topic and a payload".to_owned(),
            },
            _ => "error unknown command (sub, unsub, pub)".to_owned(),
        };
        Some(reply.into())
    }
}

async fn fan_out(stream: TcpStream, topics: Topics) -> Result<(), Error> {
    let mut ws: WebSocketStream<TcpStream> =
        accept_async_with_config(stream, Some(config())).await?;
    let mut session = Session {
        topics,
        deliveries: SelectAll::new(),
        subscriptions: HashMap::new(),
        publishers: HashMap::new(),
    };
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(msg) = msg else { break };
                let mut msg = msg?;
                loop {
                    if let Some(reply) = session.on_message(msg) {
                        ws.feed(Message::Text(reply)).await?;
                    }
                    match ws.next().now_or_never() {
                        Some(Some(next)) => msg = next?,
                        Some(None) | None => break,
                    }
                }
                ws.flush().await?;
            }
            Some(payload) = session.deliveries.next(), if !session.deliveries.is_empty() => {
                ws.feed(Message::Text(payload)).await?;
                while let Some(Some(payload)) = session.deliveries.next().now_or_never() {
                    ws.feed(Message::Text(payload)).await?;
                }
                ws.flush().await?;
            }
        }
    }
    Ok(())
}
