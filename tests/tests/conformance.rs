//! Conformance over real TCP, on every backend: the cases of the Autobahn testsuite's sections
//! 1-7, 9 and 10 (as `engine/proto/tests/autobahn.rs` runs them against the protocol core alone),
//! and the opening handshake's rejections, each sent as raw bytes to a running server.
//!
//! What this adds to the protocol-level table: the worker's handling of reads that split frames
//! anywhere, the close handshake ending in a TCP close, the limits configured through the builder,
//! and the HTTP answers the worker writes before it closes the socket.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringside::{Backend, CloseCode, Handler, Message, Upgrade, Upgrading, WebSocket};
use ringside_tests::{each_backend, raw_frame, read_some, Client, Seen, TestServer, WAIT};

const FIN: u8 = 0x80;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Sections 1 and 9 send these lengths: every boundary of the 7-bit, 16-bit and 64-bit forms.
const LENGTHS: [usize; 7] = [0, 125, 126, 127, 128, 65535, 65536];

fn connect(server: &TestServer) -> Client {
    Client::connect(server.addr).expect("handshake")
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Frames carrying `payload` as one message of type `op`, cut into fragments of `size` bytes.
fn fragmented(op: u8, payload: &[u8], size: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> =
        if payload.is_empty() { vec![&[][..]] } else { payload.chunks(size).collect() };
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { op } else { CONT };
        let fin = if i + 1 == chunks.len() { FIN } else { 0 };
        out.extend(raw_frame(fin | op, chunk));
    }
    out
}

/// Writes `bytes` in pieces of `piece` bytes with a short pause between, so the server's reads
/// end inside headers and payloads. The first piece is one byte: it splits the first header.
fn send_chopped(client: &mut Client, bytes: &[u8], piece: usize) {
    let (first, rest) = bytes.split_at(1.min(bytes.len()));
    client.send_raw(first).unwrap();
    for chunk in rest.chunks(piece.max(1)) {
        sleep(Duration::from_millis(1));
        client.send_raw(chunk).unwrap();
    }
}

/// Sends `bytes` and expects the server to fail the connection with `code`, then close TCP.
fn expect_failure(server: &TestServer, bytes: &[u8], code: u16, what: &str) {
    let mut c = connect(server);
    c.send_raw(bytes).unwrap();
    assert_eq!(c.expect_close().unwrap_or_else(|e| panic!("{what}: {e}")), Some(code), "{what}");
}

/// A small message echoed, proving the connection is open and in sync.
fn round_trip(c: &mut Client, text: &str) {
    c.send_text(text).unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Text(text.to_owned()));
}

// ---- section 1: framing ------------------------------------------------------------------------

each_backend! {
    fn s1_text_and_binary_echo_at_every_length_boundary(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        for len in LENGTHS {
            let text = "*".repeat(len);
            c.send_raw(&raw_frame(FIN | TEXT, text.as_bytes())).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Text(text), "1.1.x text, {len} bytes");
            let bin = vec![0xfe; len];
            c.send_raw(&raw_frame(FIN | BINARY, &bin)).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Binary(bin), "1.2.x binary, {len} bytes");
        }
    }
}

each_backend! {
    fn s1_echo_when_frames_arrive_in_small_writes(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        for len in LENGTHS {
            // About ten writes per frame: short frames byte by byte, long ones in big slices.
            let piece = (len / 10).max(1);
            let text = "*".repeat(len);
            send_chopped(&mut c, &raw_frame(FIN | TEXT, text.as_bytes()), piece);
            assert_eq!(c.recv().unwrap(), Seen::Text(text), "text, {len} bytes, chopped");
            let bin: Vec<u8> = (0..len).map(|i| i as u8).collect();
            send_chopped(&mut c, &raw_frame(FIN | BINARY, &bin), piece);
            assert_eq!(c.recv().unwrap(), Seen::Binary(bin), "binary, {len} bytes, chopped");
        }
    }
}

// ---- section 2: pings and pongs ----------------------------------------------------------------

each_backend! {
    fn s2_ping_gets_pong_with_the_same_payload(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        let payloads: [&[u8]; 4] = [b"", b"Hello, world!", &[0, 0xff, 0xfe, 0xfd], &[0xfe; 125]];
        for payload in payloads {
            c.send_raw(&raw_frame(FIN | PING, payload)).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Pong(payload.to_vec()), "{} bytes", payload.len());
        }
        round_trip(&mut c, "after pings");
    }
}

each_backend! {
    fn s2_ping_with_126_bytes_fails_with_1002(backend) {
        let server = TestServer::echo(backend);
        expect_failure(&server, &raw_frame(FIN | PING, &[0xfe; 126]), 1002, "2.5");
    }
}

each_backend! {
    fn s2_unsolicited_pong_is_ignored(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        c.send_raw(&raw_frame(FIN | PONG, b"")).unwrap();
        c.send_raw(&raw_frame(FIN | PONG, b"unsolicited")).unwrap();
        round_trip(&mut c, "after pongs");
        // 2.9: a pong, then a ping: only the ping is answered.
        let both = [raw_frame(FIN | PONG, b"unsolicited"), raw_frame(FIN | PING, b"solicited")];
        c.send_raw(&both.concat()).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Pong(b"solicited".to_vec()));
        round_trip(&mut c, "still open");
    }
}

each_backend! {
    fn s2_ten_pings_get_ten_pongs(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        let pings: Vec<Vec<u8>> =
            (0..10).map(|i| raw_frame(FIN | PING, format!("ping {i}").as_bytes())).collect();
        c.send_raw(&pings.concat()).unwrap();
        for i in 0..10 {
            assert_eq!(c.recv().unwrap(), Seen::Pong(format!("ping {i}").into_bytes()));
        }
        // 2.11: the same, one write per ping.
        for i in 0..10 {
            c.send_raw(&raw_frame(FIN | PING, format!("single {i}").as_bytes())).unwrap();
        }
        for i in 0..10 {
            assert_eq!(c.recv().unwrap(), Seen::Pong(format!("single {i}").into_bytes()));
        }
    }
}

// ---- section 3: reserved bits ------------------------------------------------------------------

each_backend! {
    fn s3_reserved_bits_fail_with_1002_after_a_valid_echo(backend) {
        let server = TestServer::echo(backend);
        let cases: [(&str, u8, &[u8]); 7] = [
            ("3.1 RSV2", FIN | 0x20 | TEXT, b"Hello"),
            ("3.2 RSV1", FIN | 0x40 | TEXT, b"Hello"),
            ("3.3 RSV1+2", FIN | 0x60 | TEXT, b"Hello"),
            ("3.4 RSV3", FIN | 0x10 | TEXT, b"Hello"),
            ("3.5 RSV1+3 binary", FIN | 0x50 | BINARY, &[0xff]),
            ("3.6 RSV2+3 ping", FIN | 0x30 | PING, b""),
            ("3.7 all RSV close", FIN | 0x70 | CLOSE, b""),
        ];
        for (what, b0, payload) in cases {
            let mut c = connect(&server);
            round_trip(&mut c, "small");
            // A valid ping behind the bad frame must not be answered.
            let bytes = [raw_frame(b0, payload), raw_frame(FIN | PING, b"")].concat();
            c.send_raw(&bytes).unwrap();
            assert!(matches!(c.recv().unwrap(), Seen::Close(Some(1002), _)), "{what}");
            assert_eq!(c.recv().unwrap(), Seen::Eof, "{what}: TCP closed after the close");
        }
    }
}

// ---- section 4: opcodes ------------------------------------------------------------------------

each_backend! {
    fn s4_reserved_opcodes_fail_with_1002(backend) {
        let server = TestServer::echo(backend);
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            expect_failure(&server, &raw_frame(FIN | op, b""), 1002, &format!("opcode {op}"));
            let mut c = connect(&server);
            round_trip(&mut c, "ok");
            c.send_raw(&[raw_frame(FIN | op, b"payload"), raw_frame(FIN | PING, b"")].concat())
                .unwrap();
            assert_eq!(c.expect_close().unwrap(), Some(1002), "opcode {op} after a message");
        }
    }
}

// ---- section 5: fragmentation ------------------------------------------------------------------

each_backend! {
    fn s5_fragmented_messages_are_assembled(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        // 5.3, 5.4 (one write, then one write per fragment).
        let frames = [raw_frame(TEXT, b"frag1"), raw_frame(FIN | CONT, b"frag2")];
        c.send_raw(&frames.concat()).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("frag1frag2".into()), "5.3");
        for f in &frames {
            c.send_raw(f).unwrap();
            sleep(Duration::from_millis(2));
        }
        assert_eq!(c.recv().unwrap(), Seen::Text("frag1frag2".into()), "5.4");
        // 5.x: empty fragments; binary fragments.
        let empty = [raw_frame(TEXT, b""), raw_frame(CONT, b""), raw_frame(FIN | CONT, b"")];
        c.send_raw(&empty.concat()).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text(String::new()), "empty fragments");
        let bin = [raw_frame(BINARY, &[1, 2]), raw_frame(CONT, &[3]), raw_frame(FIN | CONT, &[4])];
        c.send_raw(&bin.concat()).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Binary(vec![1, 2, 3, 4]), "binary fragments");
    }
}

each_backend! {
    fn s5_pings_between_fragments_are_answered_first(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        // 5.6: one write.
        let frames = [
            raw_frame(TEXT, b"frag1"),
            raw_frame(FIN | PING, b"ping"),
            raw_frame(FIN | CONT, b"frag2"),
        ];
        c.send_raw(&frames.concat()).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Pong(b"ping".to_vec()), "5.6 pong first");
        assert_eq!(c.recv().unwrap(), Seen::Text("frag1frag2".into()), "5.6 message");
        // 5.7: one write per frame; the pong comes before the message is complete.
        c.send_raw(&frames[0]).unwrap();
        c.send_raw(&frames[1]).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Pong(b"ping".to_vec()), "5.7 pong mid-message");
        c.send_raw(&frames[2]).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("frag1frag2".into()), "5.7 message");
        // 5.8: several fragments, pings between, chopped into single bytes.
        let frames = [
            raw_frame(TEXT, b"a"),
            raw_frame(FIN | PING, b"1"),
            raw_frame(CONT, b"b"),
            raw_frame(FIN | PING, b"2"),
            raw_frame(FIN | CONT, b"c"),
        ];
        send_chopped(&mut c, &frames.concat(), 1);
        assert_eq!(c.recv().unwrap(), Seen::Pong(b"1".to_vec()));
        assert_eq!(c.recv().unwrap(), Seen::Pong(b"2".to_vec()));
        assert_eq!(c.recv().unwrap(), Seen::Text("abc".into()));
    }
}

each_backend! {
    fn s5_fragmented_control_frames_fail_with_1002(backend) {
        let server = TestServer::echo(backend);
        let ping = [raw_frame(PING, b"frag1"), raw_frame(FIN | CONT, b"frag2")];
        expect_failure(&server, &ping.concat(), 1002, "5.1 fragmented ping");
        let pong = [raw_frame(PONG, b"frag1"), raw_frame(FIN | CONT, b"frag2")];
        expect_failure(&server, &pong.concat(), 1002, "5.2 fragmented pong");
    }
}

each_backend! {
    fn s5_continuation_without_a_message_fails_with_1002(backend) {
        let server = TestServer::echo(backend);
        let cases: [(&str, Vec<Vec<u8>>); 4] = [
            ("5.9 final", vec![raw_frame(FIN | CONT, b"payload"), raw_frame(FIN | TEXT, b"Hello")]),
            ("5.10 non-final", vec![raw_frame(CONT, b"payload"), raw_frame(FIN | TEXT, b"Hello")]),
            (
                "5.15 after a finished message",
                vec![
                    raw_frame(TEXT, b"fragment1"),
                    raw_frame(FIN | CONT, b"fragment2"),
                    raw_frame(CONT, b"fragment3"),
                    raw_frame(FIN | TEXT, b"fragment4"),
                ],
            ),
            ("5.17", vec![raw_frame(CONT, b"a"), raw_frame(FIN | TEXT, b"b")]),
        ];
        for (what, frames) in cases {
            let mut c = connect(&server);
            c.send_raw(&frames.concat()).unwrap();
            // 5.15 echoes its first message before the stray continuation.
            let mut seen = Vec::new();
            loop {
                match c.recv().unwrap() {
                    Seen::Close(code, _) => {
                        assert_eq!(code, Some(1002), "{what}");
                        break;
                    }
                    other => seen.push(other),
                }
            }
            assert_eq!(c.recv().unwrap(), Seen::Eof, "{what}: TCP closed");
            if what.starts_with("5.15") {
                assert_eq!(seen, vec![Seen::Text("fragment1fragment2".into())], "{what}");
            } else {
                assert_eq!(seen, vec![], "{what}");
            }
        }
    }
}

each_backend! {
    fn s5_new_data_frame_inside_an_open_message_fails_with_1002(backend) {
        let server = TestServer::echo(backend);
        let text_in_text = [raw_frame(TEXT, b"fragment1"), raw_frame(FIN | TEXT, b"fragment2")];
        expect_failure(&server, &text_in_text.concat(), 1002, "5.18 text inside text");
        let bin_in_text = [raw_frame(TEXT, b"a"), raw_frame(BINARY, b"b")];
        expect_failure(&server, &bin_in_text.concat(), 1002, "binary inside text");
        let text_in_bin = [raw_frame(BINARY, b"a"), raw_frame(FIN | TEXT, b"b")];
        expect_failure(&server, &text_in_bin.concat(), 1002, "text inside binary");
    }
}

// ---- section 6: UTF-8 --------------------------------------------------------------------------

const VALID_UTF8: &[&[u8]] = &[
    b"",
    "κόσμε".as_bytes(),
    b"\x00",
    b"\xc2\x80",
    b"\xe0\xa0\x80",
    b"\xf0\x90\x80\x80",
    b"\xef\xbf\xbf",
    b"\xf4\x8f\xbf\xbf",
    b"\xed\x9f\xbf",
];

const INVALID_UTF8: &[&[u8]] = &[
    b"\xf4\x90\x80\x80", // over U+10FFFF
    b"\x80",             // lone continuation byte
    b"\xc0\xaf",         // overlong "/"
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80", // surrogate half
    b"\xfe",
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    b"abc\xe2\x82", // ends inside a code point
];

each_backend! {
    fn s6_valid_utf8_is_echoed_whole_and_fragmented(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        for &bytes in VALID_UTF8 {
            let text = std::str::from_utf8(bytes).unwrap().to_owned();
            c.send_raw(&raw_frame(FIN | TEXT, bytes)).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Text(text.clone()), "whole {bytes:x?}");
            // One fragment per byte: code points split across frames.
            c.send_raw(&fragmented(TEXT, bytes, 1)).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Text(text), "per byte {bytes:x?}");
        }
    }
}

each_backend! {
    fn s6_invalid_utf8_fails_with_1007(backend) {
        let server = TestServer::echo(backend);
        for &bytes in INVALID_UTF8 {
            expect_failure(&server, &raw_frame(FIN | TEXT, bytes), 1007, &format!("{bytes:x?}"));
            expect_failure(
                &server,
                &fragmented(TEXT, bytes, 1),
                1007,
                &format!("{bytes:x?}, a fragment per byte"),
            );
        }
    }
}

each_backend! {
    fn s6_invalid_utf8_fails_fast(backend) {
        let server = TestServer::echo(backend);
        let bad = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80";
        // 6.4.1: the invalid sequence is in the first fragment; the final one is never sent.
        expect_failure(&server, &raw_frame(TEXT, bad), 1007, "6.4.1 first fragment");
        // 6.4.2: the invalid byte arrives in a later, unfinished fragment.
        let frames = [raw_frame(TEXT, &bad[..12]), raw_frame(CONT, &bad[12..13])];
        expect_failure(&server, &frames.concat(), 1007, "6.4.2 second fragment");
        // 6.4.3: one frame, only its start sent: the failure comes while 1000 bytes are missing.
        let mut payload = bad.to_vec();
        payload.extend_from_slice(&[b'x'; 1000]);
        let frame = raw_frame(FIN | TEXT, &payload);
        let sent = frame.len() - 1000;
        expect_failure(&server, &frame[..sent], 1007, "6.4.3 inside one frame");
    }
}

// ---- section 7: close --------------------------------------------------------------------------

each_backend! {
    fn s7_valid_close_codes_are_echoed_then_tcp_closes(backend) {
        let server = TestServer::echo(backend);
        for code in [1000u16, 1001, 1003, 3000, 3999, 4000, 4999] {
            let mut c = connect(&server);
            round_trip(&mut c, "Hello");
            c.send_raw(&raw_frame(FIN | CLOSE, &close_payload(code, b""))).unwrap();
            assert_eq!(c.expect_close().unwrap(), Some(code), "7.7.x code {code}");
        }
        // 7.3.4/7.3.5: with a reason, up to the 123 bytes that fit.
        for reason in [&b"Hello World!"[..], &[b'*'; 123]] {
            let mut c = connect(&server);
            c.send_raw(&raw_frame(FIN | CLOSE, &close_payload(1000, reason))).unwrap();
            assert_eq!(c.expect_close().unwrap(), Some(1000), "reason of {} bytes", reason.len());
        }
        // The client's own close (through its protocol state) completes the same way.
        let mut c = connect(&server);
        c.conn.close(CloseCode(3000), "bye").unwrap();
        c.flush().unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(3000));
    }
}

each_backend! {
    fn s7_empty_close_is_answered_with_an_empty_close(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        c.send_raw(&raw_frame(FIN | CLOSE, b"")).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Close(None, String::new()), "7.3.1");
        assert_eq!(c.recv().unwrap(), Seen::Eof, "TCP closed after the close");
    }
}

each_backend! {
    fn s7_nothing_after_the_close_frame_is_handled(backend) {
        let server = TestServer::echo(backend);
        let close = raw_frame(FIN | CLOSE, &close_payload(1000, b""));
        let cases: [(&str, Vec<u8>); 4] = [
            ("7.1.2 second close", [close.clone(), close.clone()].concat()),
            ("7.1.3 ping after close", [close.clone(), raw_frame(FIN | PING, b"x")].concat()),
            ("7.1.4 text after close", [close.clone(), raw_frame(FIN | TEXT, b"no")].concat()),
            ("7.1.6 garbage after close", [close.clone(), vec![0xff; 20]].concat()),
        ];
        for (what, bytes) in cases {
            let mut c = connect(&server);
            c.send_raw(&bytes).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Close(Some(1000), String::new()), "{what}");
            assert_eq!(c.recv().unwrap(), Seen::Eof, "{what}");
        }
        // 7.1.5: a close between fragments ends the connection; the message is never delivered.
        let mut c = connect(&server);
        let frames = [raw_frame(TEXT, b"fragment1"), close, raw_frame(FIN | CONT, b"fragment2")];
        c.send_raw(&frames.concat()).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Close(Some(1000), String::new()), "7.1.5");
        assert_eq!(c.recv().unwrap(), Seen::Eof, "7.1.5");
    }
}

each_backend! {
    fn s7_malformed_close_frames_fail(backend) {
        let server = TestServer::echo(backend);
        expect_failure(&server, &raw_frame(FIN | CLOSE, b"\x03"), 1002, "7.3.2 one byte");
        let long = close_payload(1000, &[b'*'; 124]);
        expect_failure(&server, &raw_frame(FIN | CLOSE, &long), 1002, "7.3.6 126 bytes");
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let frame = raw_frame(FIN | CLOSE, &close_payload(code, b""));
            expect_failure(&server, &frame, 1002, &format!("7.9.x code {code}"));
        }
        let reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
        let frame = raw_frame(FIN | CLOSE, &close_payload(1000, reason));
        expect_failure(&server, &frame, 1007, "7.5.1 invalid UTF-8 reason");
    }
}

/// Echoes, except that the text `close <code>` makes the server start the close handshake, and
/// a request for `/private` is refused with 401.
#[derive(Debug)]
struct Closer;

impl Handler for Closer {
    type Conn = ();
    fn on_upgrade(&mut self, request: &Upgrading<'_>) -> Upgrade<()> {
        if request.path() == "/private" {
            Upgrade::Reject(401)
        } else {
            Upgrade::Accept(())
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        match msg {
            Message::Text(t) if t.starts_with("close ") => {
                ws.close(CloseCode(t[6..].parse().unwrap()), "asked to");
                // Nothing can be sent after the close.
                assert_eq!(ws.send_text("late"), ringside::SendStatus::Closing);
            }
            msg => {
                let _ = ws.send(msg);
            }
        }
    }
}

each_backend! {
    fn s7_server_initiated_close_completes(backend) {
        let server = TestServer::start(backend, |b| b, || Closer);
        let mut c = connect(&server);
        c.send_text("close 4001").unwrap();
        match c.recv().unwrap() {
            Seen::Close(code, reason) => {
                assert_eq!(code, Some(4001));
                assert_eq!(reason, "asked to");
            }
            other => panic!("expected the server's close, got {other:?}"),
        }
        // `recv` sent our close reply: the handshake is complete and the server closes TCP.
        assert_eq!(c.recv().unwrap(), Seen::Eof);
    }
}

each_backend! {
    fn s7_close_then_half_close_still_gets_the_close_echo(backend) {
        let server = TestServer::echo(backend);
        for i in 0..5 {
            let mut c = connect(&server);
            // The client's close, then its FIN right behind: it still reads.
            c.send_raw(&raw_frame(FIN | CLOSE, &close_payload(1000, b""))).unwrap();
            c.stream.shutdown(Shutdown::Write).unwrap();
            assert_eq!(c.recv().unwrap(), Seen::Close(Some(1000), String::new()), "try {i}");
            assert_eq!(c.recv().unwrap(), Seen::Eof, "try {i}");
        }
    }
}

// ---- section 9: large messages and limits ------------------------------------------------------

each_backend! {
    fn s9_large_messages_are_echoed_intact(backend) {
        // Past the 1 MiB default: limits raised for the 4 MiB messages, and the send limit
        // for their echoes.
        let server = TestServer::start(
            backend,
            |b| b.max_message_size(4 << 20).max_frame_size(4 << 20).send_limit(8 << 20),
            || ringside_tests::Echo,
        );
        let mut c = connect(&server);
        for len in [1usize << 20, 4 << 20] {
            let text: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            c.send_text(&text).unwrap();
            assert!(c.recv().unwrap() == Seen::Text(text), "9.1.x text of {len} bytes");
            let bin: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            c.send_binary(&bin).unwrap();
            assert!(c.recv().unwrap() == Seen::Binary(bin), "9.2.x binary of {len} bytes");
        }
        // 9.x.x: 1 MiB in 64 KiB fragments.
        let bin: Vec<u8> = (0..1usize << 20).map(|i| (i % 253) as u8).collect();
        c.send_raw(&fragmented(BINARY, &bin, 64 << 10)).unwrap();
        assert!(c.recv().unwrap() == Seen::Binary(bin), "fragmented 1 MiB");
    }
}

/// An echo server with limits small enough to reach quickly.
fn limited(backend: Backend) -> TestServer {
    TestServer::start(
        backend,
        |b| b.max_frame_size(40_000).max_message_size(64_000),
        || ringside_tests::Echo,
    )
}

each_backend! {
    fn s9_message_over_max_message_size_fails_with_1009(backend) {
        let server = limited(backend);
        let mut c = connect(&server);
        // At the limit: fine.
        let at_limit = vec![7u8; 64_000];
        c.send_raw(&fragmented(BINARY, &at_limit, 32_000)).unwrap();
        assert!(c.recv().unwrap() == Seen::Binary(at_limit), "a message at the limit");
        // One byte over, in frames each under the frame limit.
        let over = vec![7u8; 64_001];
        c.send_raw(&fragmented(BINARY, &over, 32_000)).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(1009));
        // The same in text.
        let over = "x".repeat(64_001);
        expect_failure(&server, &fragmented(TEXT, over.as_bytes(), 30_000), 1009, "text");
    }
}

each_backend! {
    fn s9_frame_over_max_frame_size_fails_with_1009(backend) {
        let server = limited(backend);
        let mut c = connect(&server);
        let at_limit = vec![1u8; 40_000];
        c.send_raw(&raw_frame(FIN | BINARY, &at_limit)).unwrap();
        assert!(c.recv().unwrap() == Seen::Binary(at_limit), "a frame at the limit");
        c.send_raw(&raw_frame(FIN | BINARY, &[1u8; 40_001])).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(1009));
        // Refused from the header alone: the payload is never needed.
        let frame = raw_frame(FIN | TEXT, &[b'a'; 40_001]);
        expect_failure(&server, &frame[..14], 1009, "header only");
    }
}

// ---- section 10: one message, any fragmentation ------------------------------------------------

each_backend! {
    fn s10_64k_message_in_various_fragment_sizes(backend) {
        let server = TestServer::echo(backend);
        let mut c = connect(&server);
        let payload: String = (0..65536u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        for size in [64usize, 1000, 4096, 65535, 65536] {
            c.send_raw(&fragmented(TEXT, payload.as_bytes(), size)).unwrap();
            assert!(c.recv().unwrap() == Seen::Text(payload.clone()), "fragments of {size}");
            let bin = payload.as_bytes().to_vec();
            send_chopped(&mut c, &fragmented(BINARY, &bin, size), 7919);
            assert!(c.recv().unwrap() == Seen::Binary(bin), "fragments of {size}, chopped");
        }
    }
}

// ---- the opening handshake ---------------------------------------------------------------------

/// The server's answer to a raw request, read until the server closed the connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Status line and headers.
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn has_header(&self, name: &str, value: &str) -> bool {
        self.head.lines().skip(1).any(|line| {
            line.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
            })
        })
    }
}

/// Sends `request` (any bytes) and reads the reply until EOF, which must come within [`WAIT`]:
/// after an HTTP rejection the server closes the connection.
fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        assert!(Instant::now() < deadline, "no EOF after {:?}", String::from_utf8_lossy(&got));
        match read_some(&mut s, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the reply: {e} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    Reply { status, head: head.to_owned(), body: body.as_bytes().to_vec() }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An upgrade request with `method`, and `headers` in place of the usual ones where given.
fn request(method: &str, path: &str, headers: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut fields: Vec<(String, String)> = [
        ("Host", "127.0.0.1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    for (name, value) in headers {
        fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            fields.push((name.to_string(), value.to_string()));
        }
    }
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    for (n, v) in fields {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

each_backend! {
    fn hs_request_rejections(backend) {
        let server = TestServer::echo(backend);
        let addr = server.addr;
        let r = exchange(addr, &request("POST", "/", &[]));
        assert_eq!(r.status, 405, "{r:?}");
        assert!(r.has_header("Allow", "GET"), "{r:?}");
        let r = exchange(addr, &request("GET", "/", &[("Sec-WebSocket-Version", Some("8"))]));
        assert_eq!(r.status, 426, "{r:?}");
        assert!(r.has_header("Sec-WebSocket-Version", "13"), "{r:?}");
        for key in ["short", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ==AA"] {
            let r = exchange(addr, &request("GET", "/", &[("Sec-WebSocket-Key", Some(key))]));
            assert_eq!(r.status, 400, "key {key:?}: {r:?}");
        }
        let r = exchange(addr, &request("GET", "/", &[("Sec-WebSocket-Key", None)]));
        assert_eq!(r.status, 400, "no key: {r:?}");
        let r = exchange(addr, &request("GET", "/", &[("Host", None)]));
        assert_eq!(r.status, 400, "no Host: {r:?}");
        let pad = "a".repeat(10 << 10);
        let r = exchange(addr, &request("GET", "/", &[("X-Pad", Some(&pad))]));
        assert_eq!(r.status, 431, "10 KiB header: {}", r.head);
        let r = exchange(addr, b"NONSENSE\r\n\r\n");
        assert_eq!(r.status, 400, "not HTTP: {r:?}");
        // The server is fine afterwards.
        ringside_tests::assert_echoes(addr);
    }
}

each_backend! {
    fn hs_origin_allow_list(backend) {
        let server = TestServer::start(
            backend,
            |b| b.allowed_origins(vec!["https://good.example".into()]),
            || ringside_tests::Echo,
        );
        let evil = ("Origin", Some("https://evil.example"));
        let r = exchange(server.addr, &request("GET", "/", &[evil]));
        assert_eq!(r.status, 403, "{r:?}");
        // A listed origin (compared case-insensitively) and no origin at all are accepted.
        let origin = [("Origin", "https://GOOD.example")];
        let mut c = Client::connect_with(server.addr, "/", &[], &origin).unwrap();
        round_trip(&mut c, "welcome");
        let mut c = connect(&server);
        round_trip(&mut c, "no origin");
    }
}

each_backend! {
    fn hs_subprotocol_chosen_by_server_preference(backend) {
        let server = TestServer::start(
            backend,
            |b| b.subprotocols(vec!["chat.v2".into(), "chat.v1".into()]),
            || ringside_tests::Echo,
        );
        let addr = server.addr;
        let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let offered = ("Sec-WebSocket-Protocol", Some("chat.v1, other, chat.v2"));
        s.write_all(&request("GET", "/", &[offered])).unwrap();
        let mut got = Vec::new();
        let mut buf = [0; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = read_some(&mut s, &mut buf).unwrap();
            assert!(n > 0, "EOF before the response: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("\r\nSec-WebSocket-Protocol: chat.v2\r\n"), "{head}");
        // Through the client: offered only the less preferred one, it gets that one.
        let mut c = Client::connect_with(addr, "/", &["chat.v1"], &[]).unwrap();
        round_trip(&mut c, "v1");
        // None in common: accepted without a subprotocol.
        let r = exchange_head(addr, &request("GET", "/", &[("Sec-WebSocket-Protocol", Some("x"))]));
        assert!(r.starts_with("HTTP/1.1 101 "), "{r}");
        assert!(!r.to_ascii_lowercase().contains("sec-websocket-protocol"), "{r}");
    }
}

/// Sends `request` and returns the response head (without waiting for EOF).
fn exchange_head(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = read_some(&mut s, &mut buf).unwrap();
        assert!(n > 0, "EOF before the response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

each_backend! {
    fn hs_plain_http_requests(backend) {
        let server = TestServer::start(backend, |b| b.health_path("/health"), || ringside_tests::Echo);
        let health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        let r = exchange(server.addr, health);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, b"ok\n");
        let other = b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        let r = exchange(server.addr, other);
        assert_eq!(r.status, 426, "{r:?}");
        assert!(r.has_header("Upgrade", "websocket"), "{r:?}");
    }
}

each_backend! {
    fn hs_frames_pipelined_with_the_request_are_handled(backend) {
        let server = TestServer::echo(backend);
        let addr = server.addr;
        let first = [
            raw_frame(FIN | TEXT, b"first"),
            raw_frame(FIN | PING, b"p"),
            raw_frame(TEXT, b"sec"),
            raw_frame(FIN | CONT, b"ond"),
        ]
        .concat();
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        let mut c = Client::handshake(stream, &addr.to_string(), "/", &[], &[], &first).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("first".into()));
        assert_eq!(c.recv().unwrap(), Seen::Pong(b"p".to_vec()));
        assert_eq!(c.recv().unwrap(), Seen::Text("second".into()));
        round_trip(&mut c, "after");
        // A pipelined close: the echo and the TCP close follow the 101.
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        let close = raw_frame(FIN | CLOSE, &close_payload(4000, b""));
        let mut c = Client::handshake(stream, &addr.to_string(), "/", &[], &[], &close).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(4000));
    }
}

each_backend! {
    fn hs_more_rejections(backend) {
        let server = TestServer::start(backend, |b| b.max_head_bytes(512), || Closer);
        let addr = server.addr;
        // The handler's refusal; frames pipelined behind it are never handled.
        let mut req = request("GET", "/private", &[]);
        req.extend(raw_frame(FIN | TEXT, b"ignored"));
        let r = exchange(addr, &req);
        assert_eq!(r.status, 401, "{r:?}");
        assert!(!r.body.windows(7).any(|w| w == b"ignored"), "{r:?}");
        // HTTP/1.0 cannot upgrade.
        let old = String::from_utf8(request("GET", "/", &[])).unwrap();
        let old = old.replace("HTTP/1.1", "HTTP/1.0");
        let r = exchange(addr, old.as_bytes());
        assert_eq!(r.status, 400, "{r:?}");
        // The head limit is the configured one.
        let pad = "a".repeat(600);
        let r = exchange(addr, &request("GET", "/", &[("X-Pad", Some(&pad))]));
        assert_eq!(r.status, 431, "{}", r.head);
        let pad = "a".repeat(200);
        let mut c = Client::connect_with(addr, "/", &[], &[("X-Pad", &pad)]).unwrap();
        round_trip(&mut c, "a head under the limit");
    }
}

each_backend! {
    fn hs_request_in_pieces_then_frames(backend) {
        let server = TestServer::echo(backend);
        let mut s = TcpStream::connect_timeout(&server.addr, WAIT).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut bytes = request("GET", "/", &[]);
        bytes.extend(raw_frame(FIN | TEXT, b"piece"));
        // Cuts inside the request line, a header, the blank line, and the frame after it.
        let head_end = bytes.len() - raw_frame(FIN | TEXT, b"piece").len();
        let mut at = 0;
        for cut in [3, 20, 60, head_end - 2, head_end + 3, bytes.len()] {
            s.write_all(&bytes[at..cut]).unwrap();
            at = cut;
            sleep(Duration::from_millis(5));
        }
        // The 101, then the echo: an unmasked text frame of 5 bytes.
        let mut got = Vec::new();
        let mut buf = [0; 1024];
        let deadline = Instant::now() + WAIT;
        let expected_tail = [&[FIN | TEXT, 5][..], b"piece"].concat();
        while !got.ends_with(&expected_tail) {
            assert!(Instant::now() < deadline, "{:?}", String::from_utf8_lossy(&got));
            let n = read_some(&mut s, &mut buf).unwrap();
            assert!(n > 0, "EOF: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101 "), "{:?}", String::from_utf8_lossy(&got));
        let head_len = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&got[head_len..], &expected_tail[..], "only the echo after the head");
    }
}

each_backend! {
    fn hs_invalid_frame_pipelined_with_the_request_fails_after_the_101(backend) {
        let server = TestServer::echo(backend);
        let addr = server.addr;
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        let first = [raw_frame(FIN | TEXT, b"ok"), raw_frame(FIN | 0x3, b"")].concat();
        let mut c = Client::handshake(stream, &addr.to_string(), "/", &[], &[], &first).unwrap();
        assert_eq!(c.recv().unwrap(), Seen::Text("ok".into()));
        assert_eq!(c.expect_close().unwrap(), Some(1002));
    }
}
