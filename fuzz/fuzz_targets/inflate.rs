//! A connection with permessage-deflate enabled, as server and as client, on arbitrary bytes:
//! never panics, memory stays bounded by the (small) limits, and cutting the input into
//! different reads gives the same events, output and final state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringside_proto::deflate::DeflateParams;
use ringside_proto::{Config, Connection, Event, Message, Role};

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(bool, Vec<u8>),
    Control(Vec<u8>),
    Close,
    Failed(ringside_proto::Error),
}

fn run(role: Role, params: DeflateParams, data: &[u8], piece: usize) -> (Vec<Seen>, Vec<u8>, bool) {
    // Small limits: a bomb stops at 64 KiB, so no run holds more than that and zlib's state.
    let config = Config { max_frame_size: 1 << 15, max_message_size: 1 << 16, auto_pong: true };
    let mut conn = Connection::new(role, config);
    conn.enable_deflate(params, None);
    let mut seen = Vec::new();
    'outer: for chunk in data.chunks(piece.max(1)) {
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        loop {
            match conn.read(&mut buf[pos..]) {
                Ok((n, Some(ev))) => {
                    pos += n;
                    seen.push(match ev {
                        Event::Message(Message::Text(t)) => Seen::Message(true, t.as_bytes().to_vec()),
                        Event::Message(Message::Binary(b)) => Seen::Message(false, b.to_vec()),
                        Event::Ping(p) | Event::Pong(p) => Seen::Control(p.to_vec()),
                        Event::Close(_) => Seen::Close,
                    });
                }
                Ok((n, None)) => {
                    assert_eq!(pos + n, buf.len());
                    break;
                }
                Err(e) => {
                    assert!(e.close_code().is_some());
                    seen.push(Seen::Failed(e));
                    break 'outer;
                }
            }
        }
    }
    let output = conn.take_output();
    assert!(output.len() <= 2 * data.len() + 256);
    (seen, output, conn.is_closed())
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, data)) = data.split_first() else { return };
    let params = DeflateParams {
        server_no_context_takeover: knobs & 1 != 0,
        client_no_context_takeover: knobs & 2 != 0,
        server_max_window_bits: 8 + (knobs >> 2 & 7),
        client_max_window_bits: 15 - (knobs >> 5 & 7),
    };
    let piece = usize::from(knobs % 61) + 1;
    let whole = run(Role::Server, params, data, data.len());
    assert_eq!(whole, run(Role::Server, params, data, piece));
    // Client role: replies are masked with random keys, so compare events and state only.
    let (a, _, a_closed) = run(Role::Client, params, data, data.len());
    let (b, _, b_closed) = run(Role::Client, params, data, piece);
    assert_eq!((a, a_closed), (b, b_closed));
});
