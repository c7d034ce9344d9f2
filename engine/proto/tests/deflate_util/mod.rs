//! Helpers for the permessage-deflate tests: a real handshake between a client offer and a
//! server config, a server/client connection pair built from it, client frames compressed and
//! fragmented at will, and a driver that feeds a connection in chosen pieces.

#![allow(dead_code)]

use ringside_proto::deflate::{DeflateConfig, DeflateOffer, DeflateParams, SharedDeflaters};
use ringside_proto::frame::{self, OpCode};
use ringside_proto::handshake::{self, HandshakeConfig};
use ringside_proto::{Config, Connection, Error, Event, Message, Role};

/// The agreement both sides reached through the real handshake code, or `None` if the server
/// declined. `offer` is the raw `Sec-WebSocket-Extensions` value the client sends.
pub fn handshake(offer: &str, client: &DeflateOffer, server: &DeflateConfig) -> Option<Agreed> {
    let key = handshake::generate_key();
    let mut request = Vec::new();
    handshake::write_client_request(
        "localhost",
        "/",
        &key,
        &[],
        &[("Sec-WebSocket-Extensions", offer)],
        &mut request,
    );
    let cfg = HandshakeConfig { deflate: Some(*server), ..HandshakeConfig::default() };
    let req = handshake::parse_request(&request, &cfg).unwrap().unwrap();
    let accept = handshake::validate(&req, &cfg).unwrap();
    let mut response = Vec::new();
    accept.write_response(None, &mut response);
    let got = handshake::parse_response(&response, &key, &[]).unwrap().unwrap();
    let client_view = client.accept(got.extensions.as_deref()).expect("client accepts");
    match (accept.deflate, client_view) {
        (None, None) => None,
        (Some(n), Some(client)) => Some(Agreed { server: n.params, client, response: n.response }),
        (s, c) => panic!("server {s:?} and client {c:?} disagree"),
    }
}

/// What each side took from the handshake.
#[derive(Debug, Clone)]
pub struct Agreed {
    pub server: DeflateParams,
    pub client: DeflateParams,
    pub response: String,
}

/// A server and a client connection with permessage-deflate enabled as agreed.
pub struct Pair {
    pub server: Connection,
    pub client: Connection,
    /// For a server in shared mode: compresses its sends outside the connection.
    pub shared: Option<SharedDeflaters>,
    pub agreed: Agreed,
}

impl Pair {
    pub fn new(agreed: Agreed, shared_mode: bool, config: Config) -> Pair {
        let mut server = Connection::new(Role::Server, config);
        let mut client = Connection::new(Role::Client, config);
        let sends = (!shared_mode).then(|| agreed.server.deflater(Role::Server, 1));
        server.enable_deflate(agreed.server, sends);
        client.enable_deflate(agreed.client, Some(agreed.client.deflater(Role::Client, 6)));
        let shared = shared_mode.then(|| SharedDeflaters::new(1));
        Pair { server, client, shared, agreed }
    }

    /// The bytes the server puts on the wire for `msg`, compressed with its own compressor or
    /// the shared one (then outside the connection, as a worker would).
    pub fn server_sends(&mut self, msg: &Seen) -> Vec<u8> {
        let (op, bytes) = msg.parts();
        match &mut self.shared {
            None => {
                match msg {
                    Seen::Text(t) => self.server.send_text(t).unwrap(),
                    _ => self.server.send_binary(bytes).unwrap(),
                }
                self.server.take_output()
            }
            Some(shared) => {
                assert!(self.agreed.server.server_no_context_takeover);
                let mut payload = Vec::new();
                shared.get(self.agreed.server.server_max_window_bits).compress(bytes, &mut payload);
                let header = frame::encode_header(true, op, None, payload.len() as u64).with_rsv1();
                let mut wire = header.as_bytes().to_vec();
                wire.extend(payload);
                wire
            }
        }
    }
}

/// A message or an outcome, copied out of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Failed(Error),
}

impl Seen {
    pub fn parts(&self) -> (OpCode, &[u8]) {
        match self {
            Seen::Text(t) => (OpCode::Text, t.as_bytes()),
            Seen::Binary(b) => (OpCode::Binary, b),
            other => panic!("not a data message: {other:?}"),
        }
    }
}

fn seen(ev: Event<'_>) -> Seen {
    match ev {
        Event::Message(Message::Text(t)) => Seen::Text(t.to_owned()),
        Event::Message(Message::Binary(b)) => Seen::Binary(b.to_vec()),
        Event::Ping(p) => Seen::Ping(p.to_vec()),
        Event::Pong(p) => Seen::Pong(p.to_vec()),
        Event::Close(c) => Seen::Close(c.map(|c| c.code.0)),
    }
}

/// Feeds `stream` to `conn` cut at `cuts` (sorted offsets); returns what it saw and what it
/// queued to send.
pub fn feed(conn: &mut Connection, stream: &[u8], cuts: &[usize]) -> (Vec<Seen>, Vec<u8>) {
    let mut events = Vec::new();
    let mut output = Vec::new();
    let mut start = 0;
    let ends = cuts.iter().copied().chain(std::iter::once(stream.len()));
    'pieces: for end in ends {
        let end = end.clamp(start, stream.len());
        let mut piece = stream[start..end].to_vec();
        start = end;
        let mut pos = 0;
        loop {
            match conn.read(&mut piece[pos..]) {
                Ok((n, Some(ev))) => {
                    pos += n;
                    events.push(seen(ev));
                }
                Ok((n, None)) => {
                    assert_eq!(pos + n, piece.len());
                    break;
                }
                Err(e) => {
                    events.push(Seen::Failed(e));
                    break 'pieces;
                }
            }
        }
    }
    output.extend(conn.take_output());
    (events, output)
}

/// A client's frames for one message compressed with `deflater` (`None`: uncompressed), cut
/// into fragments of `fragment` payload bytes (0: one frame). RSV1 only on the first frame.
pub fn client_message(
    deflater: Option<&mut ringside_proto::deflate::Deflater>,
    msg: &Seen,
    fragment: usize,
) -> Vec<u8> {
    let (op, bytes) = msg.parts();
    let (payload, rsv1) = match deflater {
        Some(d) => {
            let mut out = Vec::new();
            d.compress(bytes, &mut out);
            (out, true)
        }
        None => (bytes.to_vec(), false),
    };
    let pieces: Vec<&[u8]> = if fragment == 0 || payload.is_empty() {
        vec![&payload[..]]
    } else {
        payload.chunks(fragment).collect()
    };
    let mut wire = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let fin = i + 1 == pieces.len();
        let opcode = if i == 0 { op } else { OpCode::Continuation };
        let key = [0x5a, (i as u8).wrapping_mul(31), 0xc3, 0x17];
        let mut header = frame::encode_header(fin, opcode, Some(key), piece.len() as u64);
        if i == 0 && rsv1 {
            header = header.with_rsv1();
        }
        wire.extend_from_slice(header.as_bytes());
        let at = wire.len();
        wire.extend_from_slice(piece);
        ringside_proto::mask::apply(&mut wire[at..], key, 0);
    }
    wire
}

/// Deterministic payloads of the kinds Autobahn's section 12 uses: JSON-like text, prose,
/// binary with structure (an image-like gradient), and incompressible noise.
pub fn payload(kind: usize, len: usize, seed: u32) -> Seen {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    match kind % 4 {
        0 => {
            let mut s = String::with_capacity(len + 64);
            while s.len() < len {
                let n = next();
                s.push_str(&format!(
                    "{{\"sym\":\"AB{}\",\"px\":{}.{:02},\"qty\":{},\"side\":\"{}\"}},",
                    n % 50,
                    n % 1000,
                    n % 100,
                    n % 700,
                    if n & 1 == 0 { "buy" } else { "sell" }
                ));
            }
            Seen::Text(truncate_utf8(s, len))
        }
        1 => {
            const WORDS: [&str; 12] = [
                "the",
                "quick",
                "brown",
                "fox",
                "jumps",
                "over",
                "lazy",
                "dog",
                "übermäßig",
                "ñandú",
                "—",
                "data",
            ];
            let mut s = String::with_capacity(len + 16);
            while s.len() < len {
                s.push_str(WORDS[(next() % 12) as usize]);
                s.push(' ');
            }
            Seen::Text(truncate_utf8(s, len))
        }
        2 => Seen::Binary(
            (0..len).map(|i| ((i % 256) as u8).wrapping_add((next() % 4) as u8)).collect(),
        ),
        _ => Seen::Binary((0..len).map(|_| next() as u8).collect()),
    }
}

fn truncate_utf8(mut s: String, len: usize) -> String {
    let mut at = len.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s
}
