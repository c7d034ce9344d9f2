//! A minimal raw echo on one mio (epoll) thread: the cheapest "server" there is, to measure the
//! load generator's own ceiling with `ringside-load echo --raw-echo`. It answers the WebSocket
//! upgrade (like the bench/peers `raw-echo`), then returns every byte it reads (our masked
//! frames) verbatim, knowing nothing of frames.
//!
//! `cargo run --release -p ringside-loadgen --example raw_echo -- 127.0.0.1:9100`
//! (the bench/peers `raw-echo` is the maintained one; this one keeps the load generator's
//! ceiling measurable without it).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use ringside_proto::handshake::{parse_request, validate, HandshakeConfig};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back (the peer is not reading).
    pending: Vec<u8>,
    /// The upgrade request so far; None once answered.
    request: Option<Vec<u8>>,
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("raw echo listening on {}", listener.local_addr()?);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let token = Token(next);
                    next += 1;
                    poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.insert(
                        token.0,
                        Conn { stream, pending: Vec::new(), request: Some(Vec::new()) },
                    );
                }
                continue;
            }
            let id = ev.token().0;
            let Some(c) = conns.get_mut(&id) else { continue };
            if !serve(c, &mut buf) {
                conns.remove(&id);
            }
        }
    }
}

/// Reads until WouldBlock (mio is edge-triggered) and writes everything back; false when the
/// connection is done.
fn serve(c: &mut Conn, buf: &mut [u8]) -> bool {
    if !c.pending.is_empty() && !flush(c) {
        return false;
    }
    loop {
        match c.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) if c.request.is_some() => {
                if !upgrade(c, &buf[..n]) {
                    return false;
                }
            }
            Ok(n) => {
                if c.pending.is_empty() {
                    match c.stream.write(&buf[..n]) {
                        Ok(w) => c.pending.extend_from_slice(&buf[w..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            c.pending.extend_from_slice(&buf[..n])
                        }
                        Err(_) => return false,
                    }
                } else {
                    c.pending.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Collects the upgrade request and answers it; what follows the request is echoed.
fn upgrade(c: &mut Conn, bytes: &[u8]) -> bool {
    let request = c.request.as_mut().expect("upgrading");
    request.extend_from_slice(bytes);
    let cfg = HandshakeConfig::default();
    let mut response = Vec::new();
    let head_len = match parse_request(request, &cfg) {
        Ok(None) => return true,
        Ok(Some(req)) => match validate(&req, &cfg) {
            Ok(accept) => {
                accept.write_response(None, &mut response);
                req.head_len()
            }
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    let rest = request[head_len..].to_vec();
    c.request = None;
    c.pending.extend_from_slice(&response);
    c.pending.extend_from_slice(&rest);
    flush(c)
}

fn flush(c: &mut Conn) -> bool {
    while !c.pending.is_empty() {
        match c.stream.write(&c.pending) {
            Ok(n) => {
                c.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}
