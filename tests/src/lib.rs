//! Harness for the real-socket tests: start a server in-process on a chosen backend, and a
//! blocking WebSocket client built on the protocol core, with every wait bounded.

pub mod bus_support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringside::{Backend, Builder, Handler, Message, Server, ServerHandle, WebSocket, Workers};

pub mod deflate_support;
use ringside_proto::handshake;
use ringside_proto::{Config, Connection, Event, Role};

pub mod interop_support;
pub mod tls;

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs `body` once per backend. A backend the kernel cannot run is skipped loudly. Attributes
/// before `fn` (`#[ignore = "..."]`) go on every backend's test; a first attribute
/// `#[io_uring_ignore = "why"]` ignores only the io_uring one (a bug of that backend alone).
#[macro_export]
macro_rules! each_backend {
    (@emit [$(#[$meta:meta])*] [$(#[$uring:meta])*] fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($backend: ::ringside::Backend) $body
            #[test]
            $(#[$meta])*
            fn epoll() {
                body(::ringside::Backend::Epoll)
            }
            #[test]
            $(#[$meta])*
            $(#[$uring])*
            fn io_uring() {
                if $crate::skip_without_io_uring() {
                    return;
                }
                body(::ringside::Backend::IoUring)
            }
        }
    };
    (
        #[io_uring_ignore = $why:literal]
        $(#[$meta:meta])* fn $name:ident($backend:ident) $body:block
    ) => {
        $crate::each_backend!(@emit [$(#[$meta])*] [#[ignore = $why]] fn $name($backend) $body);
    };
    ($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block) => {
        $crate::each_backend!(@emit [$(#[$meta])*] [] fn $name($backend) $body);
    };
}

/// True (after printing why) when io_uring cannot run here.
pub fn skip_without_io_uring() -> bool {
    match ringside::io_uring_available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIPPED: io_uring backend not available here: {why}");
            true
        }
    }
}

/// A server running for one test; shut down (gracefully) on drop.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    handle: Option<ServerHandle>,
}

impl TestServer {
    /// Starts `factory`'s handler on `backend` with one worker, unpinned, on a free port, after
    /// `configure` adjusted the builder.
    pub fn start<H, F>(
        backend: Backend,
        configure: impl FnOnce(Builder) -> Builder,
        factory: F,
    ) -> Self
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        // A test process holds both ends of every connection; the library leaves the limit to
        // the program.
        ringside::raise_fd_limit().expect("the open-file limit can be raised");
        let builder = Server::builder()
            .bind("127.0.0.1:0")
            .unwrap()
            .backend(backend)
            .workers(Workers::Count(1))
            .pin(false)
            .shutdown_timeout(Duration::from_secs(2));
        let running = configure(builder).build(factory).expect("server builds");
        let addr = running.local_addr();
        let handle = running.spawn().expect("server starts");
        TestServer { addr, handle: Some(handle) }
    }

    /// An echo server.
    pub fn echo(backend: Backend) -> Self {
        Self::start(backend, |b| b, || Echo)
    }

    /// Shuts down now and returns the result.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.handle.take().map_or(Ok(()), ServerHandle::shutdown)
    }

    /// The running server's handle.
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("running")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown();
        }
    }
}

/// Echoes every message.
#[derive(Debug)]
pub struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

/// An event copied out of the client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The server's close frame: code (None if empty) and reason.
    Close(Option<u16>, String),
    /// The server closed TCP (EOF or reset) without (further) frames.
    Eof,
}

/// A blocking client: real TCP, the protocol core in the client role, bounded waits.
#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    pub conn: Connection,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Client {
    /// Connects and completes the opening handshake.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        Self::connect_with(addr, "/", &[], &[])
    }

    /// Connects with a path, offered subprotocols and extra headers.
    pub fn connect_with(
        addr: SocketAddr,
        path: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, WAIT)?;
        Self::handshake(stream, &addr.to_string(), path, protocols, headers, &[])
    }

    /// Completes the opening handshake on a connected `stream` (made however the test needs:
    /// small socket buffers, say). `first` goes out in the same write as the request: frames a
    /// client pipelines before it has seen the response.
    pub fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
        first: &[u8],
    ) -> io::Result<Client> {
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        stream.set_nodelay(true)?;
        let key = handshake::generate_key();
        let mut req = Vec::new();
        handshake::write_client_request(host, path, &key, protocols, headers, &mut req);
        req.extend_from_slice(first);
        stream.write_all(&req)?;
        let mut buf = vec![0; 64 << 10];
        let mut end = 0;
        loop {
            let n = read_some(&mut stream, &mut buf[end..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during handshake",
                ));
            }
            end += n;
            match handshake::parse_response(&buf[..end], &key, protocols) {
                Ok(Some(accepted)) => {
                    let start = accepted.head_len;
                    return Ok(Client {
                        stream,
                        conn: Connection::new(
                            Role::Client,
                            Config {
                                max_frame_size: u64::MAX >> 1,
                                max_message_size: u64::MAX >> 1,
                                auto_pong: true,
                            },
                        ),
                        buf,
                        start,
                        end,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{e}: {}", String::from_utf8_lossy(&buf[..end])),
                    ))
                }
            }
        }
    }

    /// Writes raw bytes (any frame, valid or not).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends what the client connection queued (messages, pongs, close).
    pub fn flush(&mut self) -> io::Result<()> {
        let out = self.conn.take_output();
        self.stream.write_all(&out)
    }

    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.conn.send_text(text).map_err(io::Error::other)?;
        self.flush()
    }

    pub fn send_binary(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.send_binary(data).map_err(io::Error::other)?;
        self.flush()
    }

    /// The next thing the server sent, waiting at most [`WAIT`].
    pub fn recv(&mut self) -> io::Result<Seen> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.start < self.end {
                let (n, event) = self
                    .conn
                    .read(&mut self.buf[self.start..self.end])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.start += n;
                let seen = event.map(|ev| match ev {
                    Event::Message(Message::Text(t)) => Seen::Text(t.to_owned()),
                    Event::Message(Message::Binary(b)) => Seen::Binary(b.to_vec()),
                    Event::Ping(p) => Seen::Ping(p.to_vec()),
                    Event::Pong(p) => Seen::Pong(p.to_vec()),
                    Event::Close(c) => Seen::Close(
                        c.map(|c| c.code.0),
                        c.map_or(String::new(), |c| c.reason.to_owned()),
                    ),
                });
                if let Some(seen) = seen {
                    let _ = self.flush(); // auto pong / close reply
                    return Ok(seen);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no frame from the server"));
            }
            self.start = 0;
            self.end = 0;
            match read_some(&mut self.stream, &mut self.buf) {
                Ok(0) => return Ok(Seen::Eof),
                Ok(n) => self.end = n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Seen::Eof),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until the server's close frame and returns its code; then expects EOF.
    pub fn expect_close(&mut self) -> io::Result<Option<u16>> {
        loop {
            match self.recv()? {
                Seen::Close(code, _) => {
                    let after = self.recv()?;
                    if after != Seen::Eof {
                        return Err(io::Error::other(format!("after close: {after:?}")));
                    }
                    return Ok(code);
                }
                Seen::Eof => return Err(io::Error::other("EOF without a close frame")),
                _ => {}
            }
        }
    }
}

/// `read`, retried when a signal interrupts it. Blocking reads with a timeout return EINTR
/// rather than restart; the io_uring probe, for one, leaves the calling thread a task-work
/// notification that interrupts its next such read.
pub fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Checks that the server at `addr` still serves: a new connection gets a text and a binary
/// message echoed, and the close handshake completes.
pub fn assert_echoes(addr: SocketAddr) {
    let mut c = Client::connect(addr).expect("a new connection is accepted");
    c.send_text("still there?").unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Text("still there?".into()));
    c.send_binary(&[1, 2, 3]).unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Binary(vec![1, 2, 3]));
    c.conn.close(ringside::CloseCode::NORMAL, "").unwrap();
    c.flush().unwrap();
    assert_eq!(c.expect_close().unwrap(), Some(1000));
}

/// A raw client frame: masked, any first byte (FIN, RSV, opcode).
pub fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ringside_proto::frame::write_frame(
        &mut out,
        true,
        ringside_proto::OpCode::Binary,
        Some([0x12, 0x34, 0x56, 0x78]),
        payload,
    );
    out[0] = b0;
    out
}
