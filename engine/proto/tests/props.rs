//! Property tests: encoding round-trips, and the events a byte stream produces do not depend on
//! how the stream is cut into reads, for valid streams and for arbitrary bytes alike.

mod support;

use proptest::prelude::*;
use ringside_proto::frame::{self, DecodeRules, Header, OpCode};
use ringside_proto::{Config, Connection, Event, Message, Role};
use support::*;

fn opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![
        Just(OpCode::Continuation),
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Close),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
    ]
}

/// One piece of a valid client stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A data message and the fragment sizes to send it in.
    Message {
        text: bool,
        payload: Vec<u8>,
        fragments: Vec<usize>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (any::<bool>(), prop::collection::vec(any::<u8>(), 0..3000), prop::collection::vec(1usize..700, 0..4))
            .prop_map(|(text, bytes, fragments)| {
                let payload = if text { String::from_utf8_lossy(&bytes).into_owned().into_bytes() } else { bytes };
                Piece::Message { text, payload, fragments }
            }),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Piece::Ping),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Piece::Pong),
    ]
}

/// The stream a client sends for `pieces` (pings may land between fragments), and the events
/// a server must report for it.
fn encode(pieces: &[Piece], key: [u8; 4]) -> (Vec<u8>, Vec<Seen>) {
    let mut stream = Vec::new();
    let mut seen = Vec::new();
    let mut pending_controls: Vec<Piece> = Vec::new();
    for p in pieces {
        match p {
            Piece::Message { text, payload, fragments } => {
                // Split the payload at the fragment sizes; a control frame queued before goes
                // after the first fragment, inside the message.
                let mut chunks = Vec::new();
                let mut rest = &payload[..];
                for &f in fragments {
                    let n = f.min(rest.len());
                    chunks.push(&rest[..n]);
                    rest = &rest[n..];
                }
                chunks.push(rest);
                for (i, chunk) in chunks.iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => TEXT,
                        (0, false) => BINARY,
                        _ => CONT,
                    };
                    let fin = if i + 1 == chunks.len() { FIN } else { 0 };
                    stream.extend(raw_with_mask(fin | op, chunk, key));
                    if i == 0 && chunks.len() > 1 {
                        for c in pending_controls.drain(..) {
                            let (op, payload, ev) = match c {
                                Piece::Ping(p) => (PING, p.clone(), Seen::Ping(p)),
                                Piece::Pong(p) => (PONG, p.clone(), Seen::Pong(p)),
                                Piece::Message { .. } => unreachable!(),
                            };
                            stream.extend(raw_with_mask(FIN | op, &payload, key));
                            seen.push(ev);
                        }
                    }
                }
                seen.push(if *text {
                    Seen::Text(String::from_utf8(payload.clone()).unwrap())
                } else {
                    Seen::Binary(payload.clone())
                });
            }
            control => pending_controls.push(control.clone()),
        }
    }
    for c in pending_controls {
        let (op, payload, ev) = match c {
            Piece::Ping(p) => (PING, p.clone(), Seen::Ping(p)),
            Piece::Pong(p) => (PONG, p.clone(), Seen::Pong(p)),
            Piece::Message { .. } => unreachable!(),
        };
        stream.extend(raw_with_mask(FIN | op, &payload, key));
        seen.push(ev);
    }
    (stream, seen)
}

fn cuts(len: usize, raw_cuts: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw_cuts.iter().map(|c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn header_encode_then_decode(fin in any::<bool>(), op in opcode(), len in prop_oneof![0u64..=125, 126u64..=65535, 65536u64..(1 << 40)], mask in any::<Option<[u8; 4]>>()) {
        // Control frames are never fragmented and carry at most 125 bytes.
        let fin = fin || op.is_control();
        let len = if op.is_control() { len % 126 } else { len };
        let bytes = frame::encode_header(fin, op, mask, len);
        let rules = DecodeRules { expect_masked: mask.is_some(), max_frame_size: u64::MAX };
        let decoded = frame::decode_header(bytes.as_bytes(), rules).unwrap();
        prop_assert_eq!(decoded, Some((Header { fin, rsv1: false, opcode: op, mask, len }, bytes.as_bytes().len())));
    }

    #[test]
    fn messages_encode_then_decode(payload in prop::collection::vec(any::<u8>(), 0..5000), text in any::<bool>()) {
        // A client connection writes, a server connection reads: the same message comes out.
        let mut client = Connection::new(Role::Client, Config::default());
        let payload = if text { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
        if text {
            client.send_text(std::str::from_utf8(&payload).unwrap()).unwrap();
        } else {
            client.send_binary(&payload).unwrap();
        }
        let mut wire = client.take_output();
        let mut server = Connection::new(Role::Server, Config::default());
        let len = wire.len();
        let (n, ev) = server.read(&mut wire).unwrap();
        prop_assert_eq!(n, len);
        let expected = if text { Message::Text(std::str::from_utf8(&payload).unwrap()) } else { Message::Binary(&payload) };
        prop_assert_eq!(ev, Some(Event::Message(expected)));
    }

    #[test]
    fn valid_streams_give_the_same_events_at_any_read_sizes(
        pieces in prop::collection::vec(piece(), 1..8),
        key in any::<[u8; 4]>(),
        raw_cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let (stream, expected) = encode(&pieces, key);
        let whole = drive(&stream);
        prop_assert_eq!(&whole.seen, &expected);
        let chopped = drive_cut(Config::default(), &stream, &cuts(stream.len(), &raw_cuts));
        prop_assert_eq!(whole, chopped);
    }

    #[test]
    fn arbitrary_bytes_give_the_same_result_at_any_read_sizes(
        prefix in prop::collection::vec(piece(), 0..3),
        garbage in prop::collection::vec(any::<u8>(), 0..400),
        raw_cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        // Valid frames then anything at all: no panic, and the same events, output and final
        // state however the bytes are cut.
        let (mut stream, _) = encode(&prefix, [1, 2, 3, 4]);
        stream.extend(garbage);
        let config = Config { max_frame_size: 1 << 16, max_message_size: 1 << 17, auto_pong: true };
        let whole = drive_cut(config, &stream, &[]);
        let chopped = drive_cut(config, &stream, &cuts(stream.len(), &raw_cuts));
        prop_assert_eq!(&whole, &chopped);
        let bytes: Vec<usize> = (1..stream.len()).collect();
        prop_assert_eq!(&whole, &drive_cut(config, &stream, &bytes));
    }
}
