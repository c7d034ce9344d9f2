//! The connection state machine on arbitrary bytes, as a server and as a client: never panics,
//! output stays bounded, and cutting the input into different reads gives the same events,
//! output and final state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringside_proto::{Config, Connection, Event, Message, Role};

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Failed(ringside_proto::Error),
}

fn run(role: Role, config: Config, data: &[u8], piece: usize) -> (Vec<Seen>, Vec<u8>, bool) {
    let mut conn = Connection::new(role, config);
    let mut seen = Vec::new();
    let mut output_len = 0;
    let mut output = Vec::new();
    'outer: for chunk in data.chunks(piece.max(1)) {
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        loop {
            match conn.read(&mut buf[pos..]) {
                Ok((n, Some(ev))) => {
                    pos += n;
                    seen.push(match ev {
                        Event::Message(Message::Text(t)) => {
                            Seen::Message(true, t.as_bytes().to_vec())
                        }
                        Event::Message(Message::Binary(b)) => Seen::Message(false, b.to_vec()),
                        Event::Ping(p) => Seen::Ping(p.to_vec()),
                        Event::Pong(p) => Seen::Pong(p.to_vec()),
                        Event::Close(c) => Seen::Close(c.map(|c| (c.code.0, c.reason.to_owned()))),
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
            let out = conn.take_output();
            output_len += out.len();
            // Replies are never larger than what provoked them (plus a header each).
            assert!(output_len <= 2 * data.len() + 256);
            output.extend(out);
        }
    }
    let out = conn.take_output();
    output.extend(out);
    (seen, output, conn.is_closed())
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, data)) = data.split_first() else { return };
    let config = Config {
        max_frame_size: if knobs & 1 == 0 { 1 << 20 } else { 300 },
        max_message_size: if knobs & 2 == 0 { 1 << 20 } else { 600 },
        auto_pong: knobs & 4 == 0,
    };
    let piece = usize::from(knobs >> 3) + 1;
    let role = Role::Server;
    let whole = run(role, config, data, data.len());
    let cut = run(role, config, data, piece);
    assert_eq!(whole, cut);
    // Client role: pongs and close replies carry random masks, so compare events and state only.
    let a = run(Role::Client, config, data, data.len());
    let b = run(Role::Client, config, data, piece);
    assert_eq!((a.0, a.2), (b.0, b.2));
});
