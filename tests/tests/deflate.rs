//! permessage-deflate (RFC 7692) through the real server, on both backends: cases modeled on
//! the Autobahn testsuite's sections 12 (compressed messages of several kinds, 16 B to 128 KiB,
//! fragmented or not) and 13 (the same under each parameter offer), every combination of the
//! four offer parameters against shared and dedicated servers, a decompression bomb, and the
//! mode that declines.
//!
//! The client is the protocol core's client side (`DeflateOffer` to offer and check the answer,
//! the connection to compress and inflate), and it sees the wire: each echo's RSV1 is checked
//! against what the server should have compressed.

use std::net::SocketAddr;

use ringside::{CloseCode, Compression};
use ringside_proto::deflate::{DeflateOffer, DeflateParams};
use ringside_proto::OpCode;
use ringside_tests::deflate_support::{reset_peak_rss, rss_and_peak, DeflateClient};
use ringside_tests::{assert_echoes, each_backend, Seen, TestServer};

/// Autobahn 12.x message sizes.
const SIZES: [usize; 10] = [16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072];
/// The server's default `deflate_threshold`.
const THRESHOLD: usize = 128;

/// The server configurations every case runs against: shared, and dedicated at the largest and
/// the smallest window.
const SERVERS: [(Compression, u8); 3] =
    [(Compression::Shared, 15), (Compression::Dedicated, 15), (Compression::Dedicated, 9)];

fn server(backend: ringside::Backend, mode: Compression, window: u8) -> TestServer {
    TestServer::start(backend, |b| b.deflate(mode).deflate_window(window), || ringside_tests::Echo)
}

fn offer(snct: bool, cnct: bool, smwb: Option<u8>, cmwb: Option<u8>) -> DeflateOffer {
    DeflateOffer {
        server_no_context_takeover: snct,
        client_no_context_takeover: cnct,
        server_max_window_bits: smwb,
        client_max_window_bits: cmwb,
    }
}

/// Deterministic payloads of Autobahn 12's kinds: JSON-like text, prose, structured binary,
/// noise.
fn payload(kind: usize, len: usize, seed: u32) -> (OpCode, Vec<u8>) {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let text = |s: String| {
        let mut at = len.min(s.len());
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        (OpCode::Text, s.as_bytes()[..at].to_vec())
    };
    match kind % 4 {
        0 => {
            let mut s = String::with_capacity(len + 64);
            while s.len() < len {
                let n = next();
                s.push_str(&format!(
                    "{{\"sym\":\"AB{}\",\"px\":{}.{:02},\"qty\":{}}},",
                    n % 50,
                    n % 1000,
                    n % 100,
                    n % 700
                ));
            }
            text(s)
        }
        1 => {
            const WORDS: [&str; 8] =
                ["the", "quick", "brown", "fox", "übermäßig", "ñandú", "—", "data"];
            let mut s = String::with_capacity(len + 16);
            while s.len() < len {
                s.push_str(WORDS[(next() % 8) as usize]);
                s.push(' ');
            }
            text(s)
        }
        2 => (OpCode::Binary, (0..len).map(|i| (i % 251) as u8 ^ (next() % 4) as u8).collect()),
        _ => (OpCode::Binary, (0..len).map(|_| next() as u8).collect()),
    }
}

/// What the client learns the server agreed to for `offer` in `mode` with a dedicated window
/// of `window`. A window the client did not ask about is not named (the server still
/// compresses within its own smaller one, which any 15-bit inflater takes).
fn expected(mode: Compression, window: u8, o: &DeflateOffer) -> DeflateParams {
    let offered = o.server_max_window_bits.unwrap_or(15);
    let window = if o.server_max_window_bits.is_some() { window } else { 15 };
    match mode {
        Compression::Shared => DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: offered,
            client_max_window_bits: o.client_max_window_bits.unwrap_or(15),
        },
        _ => DeflateParams {
            server_no_context_takeover: o.server_no_context_takeover,
            client_no_context_takeover: o.client_no_context_takeover,
            server_max_window_bits: offered.min(window),
            client_max_window_bits: o.client_max_window_bits.unwrap_or(15),
        },
    }
}

/// Sends `payload` (compressed or not, in `fragments` frames) and checks the echo: the same
/// message, compressed as the server's agreement says.
fn echo(
    c: &mut DeflateClient,
    own: bool,
    kind: usize,
    len: usize,
    compress: bool,
    fragments: usize,
) {
    let (opcode, data) = payload(kind, len, len as u32 ^ kind as u32);
    c.send(opcode, &data, compress, fragments).unwrap();
    let (compressed, seen) = c.recv().unwrap();
    let want = match opcode {
        OpCode::Text => Seen::Text(String::from_utf8(data.clone()).unwrap()),
        _ => Seen::Binary(data.clone()),
    };
    let what = format!("kind {kind}, {len} B, compress {compress}, {fragments} fragments");
    assert!(
        seen == want,
        "{what}: the echo differs ({} bytes back)",
        match &seen {
            Seen::Text(t) => t.len(),
            Seen::Binary(b) => b.len(),
            _ => 0,
        }
    );
    if c.agreed.is_none() {
        assert!(!compressed, "{what}: compressed without the extension");
    } else if data.len() < THRESHOLD {
        assert!(!compressed, "{what}: under the threshold, sent plain");
    } else if opcode == OpCode::Text || own {
        // Text always shrinks; a connection's own compressor sends what it compressed.
        assert!(compressed, "{what}: not compressed");
    }
}

each_backend! {
    fn every_offer_combination_is_agreed_and_round_trips(backend) {
        let windows = [None, Some(8), Some(9), Some(12), Some(15)];
        for (mode, window) in SERVERS {
            let server = server(backend, mode, window);
            for snct in [false, true] {
                for cnct in [false, true] {
                    for smwb in windows {
                        for cmwb in windows {
                            let o = offer(snct, cnct, smwb, cmwb);
                            let mut c = DeflateClient::connect(server.addr, Some(o)).unwrap();
                            let agreed = c.agreed.expect("every valid offer is accepted");
                            let want = expected(mode, window, &o);
                            assert_eq!(agreed, want, "{mode:?}/{window}: {:?} -> {:?}", o.header_value(), c.response);
                            let own = mode == Compression::Dedicated && !agreed.server_no_context_takeover;
                            echo(&mut c, own, 0, 16, true, 1);
                            echo(&mut c, own, 1, 1024, true, 1);
                            echo(&mut c, own, 0, 65536, true, 3);
                            echo(&mut c, own, 2, 4096, false, 2);
                            echo(&mut c, own, 0, 2000, true, 1);
                        }
                    }
                }
            }
            assert_echoes(server.addr);
            server.shutdown().expect("server shuts down cleanly");
        }
    }
}

/// Autobahn 13.1-13.7 (what the client asks of the server) and client-side parameters; the
/// header each sends, and the offer the server should pick from it.
fn autobahn_offers() -> Vec<(&'static str, String, DeflateOffer)> {
    let one = |o: DeflateOffer| o.header_value();
    let o = offer;
    vec![
        ("13.1", one(o(false, false, None, None)), o(false, false, None, None)),
        ("13.2", one(o(true, false, None, None)), o(true, false, None, None)),
        ("13.3", one(o(false, false, Some(8), None)), o(false, false, Some(8), None)),
        ("13.4", one(o(false, false, Some(15), None)), o(false, false, Some(15), None)),
        ("13.5", one(o(true, false, Some(8), None)), o(true, false, Some(8), None)),
        ("13.6", one(o(true, false, Some(15), None)), o(true, false, Some(15), None)),
        (
            "13.7",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=8, \
             permessage-deflate; server_no_context_takeover, permessage-deflate"
                .into(),
            o(true, false, Some(8), None),
        ),
        (
            "invalid first",
            "permessage-deflate; server_max_window_bits=16, permessage-deflate; client_max_window_bits".into(),
            o(false, false, None, Some(15)),
        ),
        ("client-nct", one(o(false, true, None, None)), o(false, true, None, None)),
        ("client-9", one(o(false, false, None, Some(9))), o(false, false, None, Some(9))),
        ("all", one(o(true, true, Some(10), Some(12))), o(true, true, Some(10), Some(12))),
    ]
}

each_backend! {
    fn autobahn_12_and_13_sizes_kinds_and_fragments(backend) {
        for (mode, window) in SERVERS {
            let server = server(backend, mode, window);
            for (case, header, offer) in autobahn_offers() {
                let mut c = DeflateClient::connect_header(server.addr, Some(header), Some(offer))
                    .unwrap_or_else(|e| panic!("{case}: {e}"));
                let agreed = c.agreed.unwrap_or_else(|| panic!("{case}: declined"));
                assert_eq!(agreed, expected(mode, window, &offer), "{case} {mode:?}/{window}");
                let own = mode == Compression::Dedicated && !agreed.server_no_context_takeover;
                for (i, &len) in SIZES.iter().enumerate() {
                    let kind = i % 4;
                    echo(&mut c, own, kind, len, true, 1);
                    // Fragmented, down to many small frames; and sent plain, mixed in.
                    echo(&mut c, own, kind + 1, len, true, 1 + len / 4096);
                    echo(&mut c, own, kind + 2, len, i % 3 == 0, 2);
                }
                c.conn.close(CloseCode::NORMAL, "").unwrap();
                let out = c.conn.take_output();
                c.send_raw(&out).unwrap();
                assert_eq!(c.expect_close().unwrap(), Some(1000), "{case}");
            }
            server.shutdown().expect("server shuts down cleanly");
        }
    }
}

each_backend! {
    fn off_declines_and_rsv1_without_agreement_is_1002(backend) {
        let server = TestServer::echo(backend);
        let mut c = DeflateClient::connect(server.addr, Some(DeflateOffer::default())).unwrap();
        assert_eq!((c.agreed, c.response.clone()), (None, None), "off: no extension");
        echo(&mut c, false, 0, 4096, true, 1);
        // A compressed frame without the extension: 1002.
        let sneaky = ringside_tests::raw_frame(0xc2, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        c.send_raw(&sneaky).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(1002));
        // With the extension, RSV1 on a continuation is 1002 too, and bad data 1007.
        let server = server_at(backend, Compression::Shared);
        let mut c = DeflateClient::connect(server, Some(DeflateOffer::default())).unwrap();
        let mut frames = ringside_tests::raw_frame(0x01, b"a");
        frames.extend(ringside_tests::raw_frame(0xc0, b"b"));
        c.send_raw(&frames).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(1002));
        let mut c = DeflateClient::connect(server, Some(DeflateOffer::default())).unwrap();
        c.send_raw(&ringside_tests::raw_frame(0xc2, &[0x07, 0x00])).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(1007));
        assert_echoes(server);
    }
}

/// A shared-mode server that lives until the test process ends (for tests that only need an
/// address).
fn server_at(backend: ringside::Backend, mode: Compression) -> SocketAddr {
    let s = server(backend, mode, 15);
    let addr = s.addr;
    std::mem::forget(s);
    addr
}

/// A compressed message of `mib` MiB of zeros, built a MiB at a time by a compressor that keeps
/// context: about 1 KiB per MiB (DEFLATE's ratio tops out near 1032:1).
fn bomb(mib: usize) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut d = ringside_proto::deflate::Deflater::new(15, false, 9);
    let mut out = Vec::new();
    for i in 0..mib {
        if i > 0 {
            out.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
        }
        d.compress(&zeros, &mut out);
    }
    out
}

each_backend! {
    fn a_decompression_bomb_closes_1009_with_memory_bounded(backend) {
        // 1 GiB of zeros in about 1 MiB, against a 1 MiB message limit.
        let limit = 1 << 20;
        let compressed = bomb(1024);
        assert!(compressed.len() < 1100 << 10, "{}", compressed.len());
        let server = TestServer::start(
            backend,
            |b| b.deflate(Compression::Shared).max_message_size(limit),
            || ringside_tests::Echo,
        );
        // Warm up: the same path once with a harmless message.
        let mut c = DeflateClient::connect(server.addr, Some(DeflateOffer::default())).unwrap();
        echo(&mut c, false, 0, 512 << 10, true, 4);
        for fragments in [1, 16] {
            let mut c = DeflateClient::connect(server.addr, Some(DeflateOffer::default())).unwrap();
            reset_peak_rss().unwrap();
            let (before, _) = rss_and_peak().unwrap();
            send_precompressed(&mut c, &compressed, fragments);
            assert_eq!(c.expect_close().unwrap(), Some(1009), "{fragments} fragments");
            let (after, peak) = rss_and_peak().unwrap();
            let growth = peak.saturating_sub(before);
            println!(
                "bomb in {fragments} frame(s): RSS {before} -> {after} B, peak growth {growth} B \
                 while 1 GiB was offered against a {limit} B limit"
            );
            // The inflated message stops at the limit + 1 byte; add the compressed frames the
            // client holds and writes (about 2 MiB with their copy), zlib's state and receive
            // buffers: far below what 1 GiB would take.
            assert!(growth < 24 << 20, "peak RSS grew {growth} B");
        }
        assert_echoes(server.addr);
    }
}

/// Sends `body` (already compressed) as one binary message in `fragments` frames, RSV1 on the
/// first.
fn send_precompressed(c: &mut DeflateClient, body: &[u8], fragments: usize) {
    let step = body.len().div_ceil(fragments);
    let mut wire = Vec::with_capacity(body.len() + 16 * fragments);
    for (i, chunk) in body.chunks(step).enumerate() {
        let fin = (i + 1) * step >= body.len();
        let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
        let key = [0x11, 0x22, 0x33, i as u8];
        let mut header =
            ringside_proto::frame::encode_header(fin, op, Some(key), chunk.len() as u64);
        if i == 0 {
            header = header.with_rsv1();
        }
        wire.extend_from_slice(header.as_bytes());
        let at = wire.len();
        wire.extend_from_slice(chunk);
        ringside_proto::mask::apply(&mut wire[at..], key, 0);
    }
    // The server closes as soon as the limit is passed, possibly before all of it is read.
    let _ = c.send_raw(&wire);
}
