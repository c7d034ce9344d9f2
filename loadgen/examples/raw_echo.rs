//! A minimal raw TCP echo on one mio (epoll) thread: the cheapest "server" there is, to measure
//! the load generator's own ceiling with `ringside-load echo --raw-echo`. It returns the bytes
//! it reads (our masked frames) verbatim and knows nothing of WebSocket.
//!
//! `cargo run --release -p ringside-loadgen --example raw_echo -- 127.0.0.1:9100`
//! (the bench/peers `raw-echo` is the maintained one; this one keeps the load generator's
//! ceiling measurable without it).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back (the peer is not reading).
    pending: Vec<u8>,
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
                    conns.insert(token.0, Conn { stream, pending: Vec::new() });
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
