//! Shared helpers for the protocol-core integration tests: a client that writes raw frames
//! (any bits, any opcode) and a driver that feeds a server connection in chosen pieces.

#![allow(dead_code)]

use ringside_proto::{frame, CloseFrame, Config, Connection, Error, Event, Message, Role};

/// An event copied out of the connection, so runs can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    /// The connection failed with this error (and its close code went to the output).
    Failed(Error),
}

impl Seen {
    pub fn from_event(ev: Event<'_>) -> Seen {
        match ev {
            Event::Message(Message::Text(t)) => Seen::Text(t.to_owned()),
            Event::Message(Message::Binary(b)) => Seen::Binary(b.to_vec()),
            Event::Ping(p) => Seen::Ping(p.to_vec()),
            Event::Pong(p) => Seen::Pong(p.to_vec()),
            Event::Close(c) => {
                Seen::Close(c.map(|CloseFrame { code, reason }| (code.0, reason.to_owned())))
            }
        }
    }
}

/// A raw frame as a client would put it on the wire: masked, with any header bits.
pub fn raw(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw_with_mask(b0, payload, [0x1f, 0x2e, 0x3d, 0x4c])
}

pub fn raw_with_mask(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    // Encode with a legal opcode and patch the first byte: lets tests send reserved bits/opcodes.
    let mut out = Vec::new();
    frame::write_frame(&mut out, true, frame::OpCode::Binary, Some(key), payload);
    out[0] = b0;
    out
}

pub const FIN: u8 = 0x80;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONT: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// What a connection did with a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub seen: Vec<Seen>,
    /// Everything the server queued to send, in order.
    pub output: Vec<u8>,
    pub closed: bool,
}

/// Feeds `stream` to a fresh server connection, cut into pieces at `cuts` (sorted offsets).
pub fn drive_cut(config: Config, stream: &[u8], cuts: &[usize]) -> Run {
    let mut conn = Connection::new(Role::Server, config);
    let mut seen = Vec::new();
    let mut output = Vec::new();
    let mut start = 0;
    let ends = cuts.iter().copied().chain(std::iter::once(stream.len()));
    'pieces: for end in ends {
        let mut piece = stream[start..end].to_vec();
        start = end;
        let mut pos = 0;
        loop {
            match conn.read(&mut piece[pos..]) {
                Ok((n, Some(ev))) => {
                    pos += n;
                    seen.push(Seen::from_event(ev));
                    output.extend(conn.take_output());
                }
                Ok((n, None)) => {
                    assert_eq!(pos + n, piece.len(), "no event means the whole piece was consumed");
                    break;
                }
                Err(e) => {
                    seen.push(Seen::Failed(e));
                    output.extend(conn.take_output());
                    break 'pieces;
                }
            }
        }
    }
    output.extend(conn.take_output());
    Run { seen, output, closed: conn.is_closed() }
}

/// Feeds the stream in one piece.
pub fn drive(stream: &[u8]) -> Run {
    drive_cut(Config::default(), stream, &[])
}

/// The frames in a server's output: (first byte, payload).
pub fn frames(mut output: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let rules = frame::DecodeRules { expect_masked: false, max_frame_size: u64::MAX >> 1 };
    let mut frames = Vec::new();
    while !output.is_empty() {
        let (h, n) =
            frame::decode_header(output, rules).expect("server output decodes").expect("whole");
        let end = n + h.len as usize;
        frames.push((output[0], output[n..end].to_vec()));
        output = &output[end..];
    }
    frames
}

/// The close code in the server's last frame, which must be a close frame.
pub fn close_code_sent(run: &Run) -> Option<u16> {
    let frames = frames(&run.output);
    let (b0, payload) = frames.last()?;
    assert_eq!(*b0, FIN | CLOSE, "the last frame sent is a close frame");
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}
