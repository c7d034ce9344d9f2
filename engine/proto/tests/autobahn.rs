//! A table-driven suite at the protocol-core level, modeled on the Autobahn testsuite's sections
//! 1-7 and 10 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close, chopping).
//!
//! Each case is the bytes a client puts on the wire and what the server must do: the events it
//! reports, the frames it sends, and the close code when it fails the connection. Every case is
//! also run with the stream cut into single bytes, so the result cannot depend on read sizes.

mod support;

use ringside_proto::Config;
use support::*;

/// What the server must do with a case.
#[derive(Debug)]
enum Expect {
    /// These events, the connection still open, and these frames sent (first byte, payload).
    Events(Vec<Seen>, Vec<(u8, Vec<u8>)>),
    /// These events first, then the connection fails and its last frame is a close with `code`.
    Fails(Vec<Seen>, u16),
    /// These events; the close handshake completed and the server's last frame echoes `code`
    /// (`None`: an empty close payload).
    Closes(Vec<Seen>, Option<u16>),
}

struct Case {
    id: &'static str,
    stream: Vec<u8>,
    expect: Expect,
}

fn case(id: &'static str, frames: &[Vec<u8>], expect: Expect) -> Case {
    Case { id, stream: frames.concat(), expect }
}

fn text(s: &str) -> Seen {
    Seen::Text(s.to_owned())
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn check(case: &Case, run: &Run, how: &str) {
    let id = case.id;
    match &case.expect {
        Expect::Events(events, sent) => {
            assert_eq!(&run.seen, events, "{id} ({how}): events");
            assert_eq!(&frames(&run.output), sent, "{id} ({how}): frames sent");
            assert!(!run.closed, "{id} ({how}): still open");
        }
        Expect::Fails(before, code) => {
            let (last, first) = run.seen.split_last().unwrap_or_else(|| panic!("{id}: no events"));
            assert!(matches!(last, Seen::Failed(_)), "{id} ({how}): must fail, saw {:?}", run.seen);
            assert_eq!(first, &before[..], "{id} ({how}): events before the failure");
            assert_eq!(close_code_sent(run), Some(*code), "{id} ({how}): close code");
            assert!(run.closed, "{id} ({how}): closed");
        }
        Expect::Closes(before, code) => {
            let (last, first) = run.seen.split_last().unwrap_or_else(|| panic!("{id}: no events"));
            assert!(matches!(last, Seen::Close(_)), "{id} ({how}): must close, saw {:?}", run.seen);
            assert_eq!(first, &before[..], "{id} ({how}): events before the close");
            assert_eq!(close_code_sent(run), *code, "{id} ({how}): echoed code");
            assert!(run.closed, "{id} ({how}): closed");
        }
    }
}

fn run_all(cases: &[Case]) {
    for case in cases {
        let whole = drive(&case.stream);
        check(case, &whole, "one read");
        let bytes: Vec<usize> = (1..case.stream.len()).collect();
        let chopped = drive_cut(Config::default(), &case.stream, &bytes);
        check(case, &chopped, "byte by byte");
        assert_eq!(whole, chopped, "{}: read sizes changed the result", case.id);
    }
}

#[test]
fn section_1_framing() {
    let mut cases = Vec::new();
    for len in [0usize, 125, 126, 127, 128, 65535, 65536] {
        let payload = "*".repeat(len);
        cases.push(case(
            "1.1.x text",
            &[raw(FIN | TEXT, payload.as_bytes())],
            Expect::Events(vec![text(&payload)], vec![]),
        ));
        let bin = vec![0xfe; len];
        cases.push(case(
            "1.2.x binary",
            &[raw(FIN | BINARY, &bin)],
            Expect::Events(vec![Seen::Binary(bin.clone())], vec![]),
        ));
    }
    // Only the byte-by-byte run of the larger ones is slow; keep the suite quick.
    for case in &cases {
        check(case, &drive(&case.stream), "one read");
        let cuts: Vec<usize> = (1..case.stream.len()).step_by(997).collect();
        check(case, &drive_cut(Config::default(), &case.stream, &cuts), "chopped");
    }
}

#[test]
fn section_2_pings_and_pongs() {
    let pong = |p: &[u8]| (FIN | PONG, p.to_vec());
    let ping125 = vec![0xfe; 125];
    run_all(&[
        case(
            "2.1",
            &[raw(FIN | PING, b"")],
            Expect::Events(vec![Seen::Ping(vec![])], vec![pong(b"")]),
        ),
        case(
            "2.2",
            &[raw(FIN | PING, b"Hello, world!")],
            Expect::Events(
                vec![Seen::Ping(b"Hello, world!".to_vec())],
                vec![pong(b"Hello, world!")],
            ),
        ),
        case(
            "2.3",
            &[raw(FIN | PING, &[0, 0xff, 0xfe, 0xfd])],
            Expect::Events(
                vec![Seen::Ping(vec![0, 0xff, 0xfe, 0xfd])],
                vec![pong(&[0, 0xff, 0xfe, 0xfd])],
            ),
        ),
        case(
            "2.4",
            &[raw(FIN | PING, &ping125)],
            Expect::Events(vec![Seen::Ping(ping125.clone())], vec![pong(&ping125)]),
        ),
        case("2.5", &[raw(FIN | PING, &[0xfe; 126])], Expect::Fails(vec![], 1002)),
        case("2.7", &[raw(FIN | PONG, b"")], Expect::Events(vec![Seen::Pong(vec![])], vec![])),
        case(
            "2.8",
            &[raw(FIN | PONG, b"unsolicited")],
            Expect::Events(vec![Seen::Pong(b"unsolicited".to_vec())], vec![]),
        ),
        case(
            "2.9",
            &[raw(FIN | PONG, b"unsolicited"), raw(FIN | PING, b"solicited")],
            Expect::Events(
                vec![Seen::Pong(b"unsolicited".to_vec()), Seen::Ping(b"solicited".to_vec())],
                vec![pong(b"solicited")],
            ),
        ),
        case(
            "2.10",
            &(0..10).map(|i| raw(FIN | PING, format!("ping {i}").as_bytes())).collect::<Vec<_>>(),
            Expect::Events(
                (0..10).map(|i| Seen::Ping(format!("ping {i}").into_bytes())).collect(),
                (0..10).map(|i| pong(format!("ping {i}").as_bytes())).collect(),
            ),
        ),
    ]);
}

#[test]
fn section_3_reserved_bits() {
    run_all(&[
        case("3.1", &[raw(FIN | 0x40 | TEXT, b"Hello")], Expect::Fails(vec![], 1002)),
        case(
            "3.2",
            &[raw(FIN | TEXT, b"small"), raw(FIN | 0x20 | TEXT, b"Hello"), raw(FIN | PING, b"")],
            Expect::Fails(vec![text("small")], 1002),
        ),
        case(
            "3.3",
            &[raw(FIN | TEXT, b"small"), raw(FIN | 0x60 | TEXT, b"Hello")],
            Expect::Fails(vec![text("small")], 1002),
        ),
        case("3.4", &[raw(FIN | 0x10 | TEXT, b"Hello")], Expect::Fails(vec![], 1002)),
        case("3.5", &[raw(FIN | 0x50 | BINARY, &[0xff])], Expect::Fails(vec![], 1002)),
        case("3.6", &[raw(FIN | 0x30 | PING, b"")], Expect::Fails(vec![], 1002)),
        case("3.7", &[raw(FIN | 0x70 | CLOSE, b"")], Expect::Fails(vec![], 1002)),
    ]);
}

#[test]
fn section_4_opcodes() {
    let mut cases = Vec::new();
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        cases.push(case(
            "4.x.1 reserved opcode",
            &[raw(FIN | op, b"")],
            Expect::Fails(vec![], 1002),
        ));
        cases.push(case(
            "4.x.2 reserved opcode after a message",
            &[raw(FIN | TEXT, b"ok"), raw(FIN | op, b"payload"), raw(FIN | PING, b"")],
            Expect::Fails(vec![text("ok")], 1002),
        ));
    }
    run_all(&cases);
}

#[test]
fn section_5_fragmentation() {
    let pong = |p: &[u8]| (FIN | PONG, p.to_vec());
    run_all(&[
        case("5.1", &[raw(PING, b"frag1"), raw(FIN | CONT, b"frag2")], Expect::Fails(vec![], 1002)),
        case("5.2", &[raw(PONG, b"frag1"), raw(FIN | CONT, b"frag2")], Expect::Fails(vec![], 1002)),
        case(
            "5.3",
            &[raw(TEXT, b"frag1"), raw(FIN | CONT, b"frag2")],
            Expect::Events(vec![text("frag1frag2")], vec![]),
        ),
        case(
            "5.6",
            &[raw(TEXT, b"frag1"), raw(FIN | PING, b"ping"), raw(FIN | CONT, b"frag2")],
            Expect::Events(
                vec![Seen::Ping(b"ping".to_vec()), text("frag1frag2")],
                vec![pong(b"ping")],
            ),
        ),
        case(
            "5.8 many fragments, pings between",
            &[
                raw(TEXT, b"a"),
                raw(FIN | PING, b"1"),
                raw(CONT, b"b"),
                raw(FIN | PING, b"2"),
                raw(FIN | CONT, b"c"),
            ],
            Expect::Events(
                vec![Seen::Ping(b"1".to_vec()), Seen::Ping(b"2".to_vec()), text("abc")],
                vec![pong(b"1"), pong(b"2")],
            ),
        ),
        case(
            "5.9",
            &[raw(FIN | CONT, b"non-continuation payload"), raw(FIN | TEXT, b"Hello")],
            Expect::Fails(vec![], 1002),
        ),
        case(
            "5.10",
            &[raw(CONT, b"non-continuation payload"), raw(FIN | TEXT, b"Hello")],
            Expect::Fails(vec![], 1002),
        ),
        case(
            "5.15",
            &[
                raw(TEXT, b"fragment1"),
                raw(FIN | CONT, b"fragment2"),
                raw(CONT, b"fragment3"),
                raw(FIN | TEXT, b"fragment4"),
            ],
            Expect::Fails(vec![text("fragment1fragment2")], 1002),
        ),
        case("5.17", &[raw(CONT, b"a"), raw(FIN | TEXT, b"b")], Expect::Fails(vec![], 1002)),
        case(
            "5.18",
            &[raw(TEXT, b"fragment1"), raw(FIN | TEXT, b"fragment2")],
            Expect::Fails(vec![], 1002),
        ),
        case(
            "5.18 binary in text",
            &[raw(TEXT, b"a"), raw(BINARY, b"b")],
            Expect::Fails(vec![], 1002),
        ),
        case(
            "5.x empty fragments",
            &[raw(TEXT, b""), raw(CONT, b""), raw(FIN | CONT, b"")],
            Expect::Events(vec![text("")], vec![]),
        ),
        case(
            "5.x binary fragments",
            &[raw(BINARY, &[1, 2]), raw(CONT, &[3]), raw(FIN | CONT, &[4])],
            Expect::Events(vec![Seen::Binary(vec![1, 2, 3, 4])], vec![]),
        ),
    ]);
}

/// Autobahn section 6 (after Markus Kuhn's UTF-8 test file): (bytes, valid).
const UTF8_CASES: &[(&[u8], bool)] = &[
    (b"", true),
    ("κόσμε".as_bytes(), true),
    (b"\x00", true),
    (b"\xc2\x80", true),
    (b"\xe0\xa0\x80", true),
    (b"\xf0\x90\x80\x80", true),
    (b"\x7f", true),
    (b"\xdf\xbf", true),
    (b"\xef\xbf\xbf", true), // U+FFFF, a noncharacter but valid UTF-8
    (b"\xf4\x8f\xbf\xbf", true),
    (b"\xed\x9f\xbf", true),
    (b"\xee\x80\x80", true),
    (b"\xef\xbf\xbd", true),
    (b"\xf4\x90\x80\x80", false), // over U+10FFFF
    (b"\x80", false),
    (b"\xbf", false),
    (b"\x80\xbf\x80", false),
    (b"\xc0 ", false),
    (b"\xe0\x80", false),
    (b"\xf8\x88\x80\x80\x80", false),
    (b"\xfc\x84\x80\x80\x80\x80", false),
    (b"\xfe", false),
    (b"\xff", false),
    (b"\xc0\xaf", false), // overlong "/"
    (b"\xe0\x80\xaf", false),
    (b"\xf0\x80\x80\xaf", false),
    (b"\xc1\xbf", false),
    (b"\xe0\x9f\xbf", false),
    (b"\xed\xa0\x80", false), // surrogate halves
    (b"\xed\xbf\xbf", false),
    (b"\xed\xa0\x80\xed\xb0\x80", false),
    (b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", false),
    (b"abc\xe2\x82", false), // ends inside a code point
];

#[test]
fn section_6_utf8() {
    let mut cases = Vec::new();
    for &(bytes, valid) in UTF8_CASES {
        let expect = || {
            if valid {
                Expect::Events(vec![text(std::str::from_utf8(bytes).unwrap())], vec![])
            } else {
                Expect::Fails(vec![], 1007)
            }
        };
        // 6.x.1: one frame; 6.x.2: one fragment per byte; 6.x.3: split in two at every point.
        cases.push(case("6.x.1 whole", &[raw(FIN | TEXT, bytes)], expect()));
        let mut per_byte: Vec<Vec<u8>> = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            let op = if i == 0 { TEXT } else { CONT };
            per_byte.push(raw(op, std::slice::from_ref(b)));
        }
        per_byte.push(raw(FIN | if bytes.is_empty() { TEXT } else { CONT }, b""));
        cases.push(case("6.x.2 fragment per byte", &per_byte, expect()));
        for cut in 0..=bytes.len() {
            cases.push(case(
                "6.x.3 two fragments",
                &[raw(TEXT, &bytes[..cut]), raw(FIN | CONT, &bytes[cut..])],
                expect(),
            ));
        }
    }
    run_all(&cases);
}

#[test]
fn section_6_4_fails_fast() {
    // 6.4.1: the first fragment holds an invalid sequence; the connection must fail on it, before
    // the final fragment arrives (here it never does).
    let stream = raw(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80");
    let run = drive(&stream);
    assert_eq!(close_code_sent(&run), Some(1007));
    // 6.4.2: invalid byte arrives in the second, still unfinished fragment.
    let stream =
        [raw(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4"), raw(CONT, b"\x90")]
            .concat();
    assert_eq!(close_code_sent(&drive(&stream)), Some(1007));
    // 6.4.3/6.4.4: one frame whose payload trickles in: fail on the read that holds the bad
    // byte, while most of the frame is still missing.
    let mut payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80".to_vec();
    payload.extend_from_slice(&[b'x'; 1000]);
    let stream = raw(FIN | TEXT, &payload);
    let header_len = stream.len() - payload.len();
    let run = drive_cut(Config::default(), &stream[..header_len + 13], &[header_len + 11]);
    assert_eq!(close_code_sent(&run), Some(1007), "{run:?}");
}

#[test]
fn section_7_close() {
    let ping_after = raw(FIN | PING, b"ignored");
    let mut cases = vec![
        case(
            "7.1.1",
            &[raw(FIN | TEXT, b"Hello"), raw(FIN | CLOSE, &close_payload(1000, b""))],
            Expect::Closes(vec![text("Hello")], Some(1000)),
        ),
        case(
            "7.1.2 second close ignored",
            &[
                raw(FIN | CLOSE, &close_payload(1000, b"")),
                raw(FIN | CLOSE, &close_payload(1000, b"")),
            ],
            Expect::Closes(vec![], Some(1000)),
        ),
        case(
            "7.1.3 ping after close ignored",
            &[raw(FIN | CLOSE, &close_payload(1000, b"")), ping_after.clone()],
            Expect::Closes(vec![], Some(1000)),
        ),
        case(
            "7.1.4 text after close ignored",
            &[raw(FIN | CLOSE, &close_payload(1000, b"")), raw(FIN | TEXT, b"no")],
            Expect::Closes(vec![], Some(1000)),
        ),
        case(
            "7.1.5 close between fragments",
            &[
                raw(TEXT, b"fragment1"),
                raw(FIN | CLOSE, &close_payload(1000, b"")),
                raw(FIN | CONT, b"fragment2"),
            ],
            Expect::Closes(vec![], Some(1000)),
        ),
        case(
            "7.1.6 garbage after close ignored",
            &[raw(FIN | CLOSE, &close_payload(1000, b"")), vec![0xff; 20]],
            Expect::Closes(vec![], Some(1000)),
        ),
        case("7.3.1 empty close", &[raw(FIN | CLOSE, b"")], Expect::Closes(vec![], None)),
        case("7.3.2 one-byte close", &[raw(FIN | CLOSE, b"\x03")], Expect::Fails(vec![], 1002)),
        case(
            "7.3.3 code only",
            &[raw(FIN | CLOSE, &close_payload(1000, b""))],
            Expect::Closes(vec![], Some(1000)),
        ),
        case(
            "7.3.4 code and reason",
            &[raw(FIN | CLOSE, &close_payload(1000, b"Hello World!"))],
            Expect::Closes(vec![], Some(1000)),
        ),
        case(
            "7.3.5 123-byte reason",
            &[raw(FIN | CLOSE, &close_payload(1000, &[b'*'; 123]))],
            Expect::Closes(vec![], Some(1000)),
        ),
        case(
            "7.3.6 126-byte close",
            &[raw(FIN | CLOSE, &close_payload(1000, &[b'*'; 124]))],
            Expect::Fails(vec![], 1002),
        ),
        case(
            "7.5.1 invalid UTF-8 reason",
            &[raw(
                FIN | CLOSE,
                &close_payload(
                    1000,
                    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
                ),
            )],
            Expect::Fails(vec![], 1007),
        ),
    ];
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        cases.push(case(
            "7.7.x valid code echoed",
            &[raw(FIN | CLOSE, &close_payload(code, b""))],
            Expect::Closes(vec![], Some(code)),
        ));
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        cases.push(case(
            "7.9.x / 7.13.x invalid code",
            &[raw(FIN | CLOSE, &close_payload(code, b""))],
            Expect::Fails(vec![], 1002),
        ));
    }
    run_all(&cases);
}

#[test]
fn limits_fail_with_1009() {
    let config = Config { max_frame_size: 1000, max_message_size: 1500, auto_pong: true };
    let frame_over = raw(FIN | BINARY, &[0; 1001]);
    let run = drive_cut(config, &frame_over, &[4]);
    assert_eq!(close_code_sent(&run), Some(1009));
    // The frame is refused from its header: the payload was never needed.
    let run = drive_cut(config, &frame_over[..8], &[]);
    assert_eq!(close_code_sent(&run), Some(1009));
    let message_over = [raw(BINARY, &[0; 1000]), raw(FIN | CONT, &[0; 501])].concat();
    let run = drive_cut(config, &message_over, &[]);
    assert_eq!(close_code_sent(&run), Some(1009));
    let at_limit = [raw(BINARY, &[0; 1000]), raw(FIN | CONT, &[0; 500])].concat();
    let run = drive_cut(config, &at_limit, &[]);
    assert_eq!(run.seen, vec![Seen::Binary(vec![0; 1500])]);
}

#[test]
fn header_violations_fail_with_1002() {
    let unmasked = [0x81, 0x05, b'H', b'e', b'l', b'l', b'o'];
    assert_eq!(close_code_sent(&drive(&unmasked)), Some(1002));
    // A 5-byte payload announced with the 16-bit length form (RFC 6455 5.2: minimal encoding).
    let mut non_minimal = vec![0x82, 0x80 | 126, 0, 5, 1, 2, 3, 4];
    non_minimal.extend_from_slice(&[0; 5]);
    assert_eq!(close_code_sent(&drive(&non_minimal)), Some(1002));
    // 64-bit length with the top bit set.
    let mut huge = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
    huge.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(close_code_sent(&drive(&huge)), Some(1002));
}

#[test]
fn section_10_large_message_any_chopping() {
    // 10.1.1: a 64 KiB message; fragment it and chop the stream at many sizes.
    let payload: Vec<u8> = (0..65536u32).map(|i| b'a' + (i % 26) as u8).collect();
    let expected = vec![text(std::str::from_utf8(&payload).unwrap())];
    for frag in [1usize << 16, 64, 1000, 4096, 65535] {
        let mut frames = Vec::new();
        let chunks: Vec<&[u8]> = payload.chunks(frag).collect();
        for (i, c) in chunks.iter().enumerate() {
            let op = if i == 0 { TEXT } else { CONT };
            let fin = if i + 1 == chunks.len() { FIN } else { 0 };
            frames.push(raw(fin | op, c));
        }
        let stream = frames.concat();
        for read in [1usize, 7, 1000, 1 << 20] {
            if read == 1 && frag < 1000 {
                continue; // tens of thousands of reads of one byte: covered by other cases
            }
            let cuts: Vec<usize> = (read..stream.len()).step_by(read).collect();
            let run = drive_cut(Config::default(), &stream, &cuts);
            assert_eq!(run.seen, expected, "fragment {frag}, read {read}");
        }
    }
}
