//! permessage-deflate cases modeled on the Autobahn testsuite's sections 12 (compressed
//! messages of several kinds, 16 B to 128 KiB) and 13 (the same under each parameter offer),
//! at the protocol-core level: a real handshake picks the parameters, the client compresses
//! (fragmented or not), the server reads it in uneven pieces and echoes it compressed, and the
//! client reads the echo back.

mod deflate_util;

use deflate_util::*;
use ringside_proto::deflate::{DeflateConfig, DeflateOffer, Deflater};
use ringside_proto::frame::{self, OpCode};
use ringside_proto::{Config, Connection, Error, Role};

const SIZES: [usize; 10] = [16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072];

/// Autobahn 13.1-13.7 (what the client asks of the server) and the client-side parameters.
fn offers() -> Vec<(&'static str, &'static str, DeflateOffer)> {
    let o = |snct, cnct, smwb, cmwb| DeflateOffer {
        server_no_context_takeover: snct,
        client_no_context_takeover: cnct,
        server_max_window_bits: smwb,
        client_max_window_bits: cmwb,
    };
    vec![
        ("13.1", "permessage-deflate", o(false, false, None, None)),
        ("13.2", "permessage-deflate; server_no_context_takeover", o(true, false, None, None)),
        ("13.3", "permessage-deflate; server_max_window_bits=8", o(false, false, Some(8), None)),
        ("13.4", "permessage-deflate; server_max_window_bits=15", o(false, false, Some(15), None)),
        (
            "13.5",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
            o(true, false, Some(8), None),
        ),
        (
            "13.6",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15",
            o(true, false, Some(15), None),
        ),
        // 13.7: several offers; the first valid one is taken (here the first).
        (
            "13.7",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=8, \
             permessage-deflate; server_no_context_takeover, permessage-deflate",
            o(true, false, Some(8), None),
        ),
        (
            "client-nct",
            "permessage-deflate; client_no_context_takeover",
            o(false, true, None, None),
        ),
        (
            "client-bare",
            "permessage-deflate; client_max_window_bits",
            o(false, false, None, Some(15)),
        ),
        (
            "client-9",
            "permessage-deflate; client_max_window_bits=9",
            o(false, false, None, Some(9)),
        ),
        (
            "all",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12",
            o(true, true, Some(10), Some(12)),
        ),
    ]
}

fn servers() -> Vec<(&'static str, DeflateConfig, bool)> {
    let mut small = DeflateConfig::dedicated(10);
    small.client_max_window_bits = 11;
    let mut takeover = DeflateConfig::shared();
    takeover.allow_client_context_takeover = true;
    vec![
        ("shared", DeflateConfig::shared(), true),
        ("shared+client-takeover", takeover, true),
        ("dedicated-15", DeflateConfig::dedicated(15), false),
        ("dedicated-10", small, false),
    ]
}

/// Pseudo-random read cuts for a stream: pieces of 1 to ~5000 bytes.
fn cuts(len: usize, seed: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    loop {
        x ^= x << 7;
        x ^= x >> 9;
        at += 1 + x % 5000;
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}

/// Sends `messages` client -> server (fragmented by `fragment`), has the server echo each one,
/// and checks both directions.
fn echo(pair: &mut Pair, messages: &[Seen], fragment: usize, seed: usize, id: &str) {
    let mut wire = Vec::new();
    for msg in messages {
        wire.extend(client_message(pair.client.deflater_mut(), msg, fragment));
    }
    let (seen, out) = feed(&mut pair.server, &wire, &cuts(wire.len(), seed));
    assert_eq!(seen, messages, "{id}: server events");
    assert!(out.is_empty(), "{id}: the server sent nothing by itself");
    let mut back = Vec::new();
    for msg in &seen {
        let frames = pair.server_sends(msg);
        assert_eq!(frames[0] & 0x40, 0x40, "{id}: the echo is compressed");
        back.extend(frames);
    }
    let (echoed, _) = feed(&mut pair.client, &back, &cuts(back.len(), seed + 1));
    assert_eq!(echoed, messages, "{id}: client events");
}

#[test]
fn section_13_every_offer_every_size() {
    for (server_id, config, shared) in servers() {
        for (offer_id, header, offer) in offers() {
            let agreed = handshake(header, &offer, &config).expect("accepted");
            let mut pair = Pair::new(agreed, shared, Config::default());
            for (i, &size) in SIZES.iter().enumerate() {
                let id = format!("{offer_id} / {server_id} / {size}");
                // Two messages of one kind, then one of another: context carries across them.
                let kind = i + offer_id.len();
                let messages = [payload(kind, size, i as u32), payload(kind, size, i as u32 + 7)];
                echo(&mut pair, &messages, [0, 1000, 16384][i % 3], i, &id);
            }
            // Idle between messages, the server keeps inflate state only if the client keeps
            // context.
            let keeps = !pair.agreed.server.client_no_context_takeover;
            assert_eq!(pair.server.is_inflating(), keeps, "{offer_id} / {server_id}");
        }
    }
}

#[test]
fn section_12_payload_kinds_fragmented() {
    let offer = DeflateOffer::default();
    let agreed = handshake(&offer.header_value(), &offer, &DeflateConfig::dedicated(15)).unwrap();
    let mut pair = Pair::new(agreed, false, Config::default());
    for kind in 0..4 {
        for (i, &size) in SIZES.iter().enumerate() {
            let id = format!("12.{} / {size}", kind + 1);
            let messages = [payload(kind, size, (kind * 100 + i) as u32)];
            // One-byte fragments for the small ones, a few hundred for the rest.
            let fragment = if size <= 256 { 1 } else { 333 };
            echo(&mut pair, &messages, fragment, kind * 10 + i, &id);
        }
    }
}

#[test]
fn uncompressed_messages_and_pings_mix_with_compressed_ones() {
    let offer = DeflateOffer::default();
    let agreed = handshake(&offer.header_value(), &offer, &DeflateConfig::dedicated(15)).unwrap();
    let mut pair = Pair::new(agreed, false, Config::default());
    let big = payload(0, 5000, 1);
    let mut wire = client_message(pair.client.deflater_mut(), &big, 0);
    // Uncompressed, compressed fragments with a ping between them, compressed again.
    wire.extend(client_message(None, &Seen::Binary(vec![1, 2, 3]), 0));
    // With context takeover the repeat is tiny: 20-byte fragments still make several frames.
    let fragments = client_message(pair.client.deflater_mut(), &big, 20);
    let first_len = 2 + 4 + 20;
    assert!(fragments.len() > 2 * first_len);
    wire.extend(&fragments[..first_len]);
    let mut ping = Vec::new();
    frame::write_frame(&mut ping, true, OpCode::Ping, Some([1, 2, 3, 4]), b"hi");
    wire.extend(&ping);
    wire.extend(&fragments[first_len..]);
    wire.extend(client_message(pair.client.deflater_mut(), &payload(1, 100, 2), 0));
    let expected = vec![
        big.clone(),
        Seen::Binary(vec![1, 2, 3]),
        Seen::Ping(b"hi".to_vec()),
        big,
        payload(1, 100, 2),
    ];
    for bytes in [vec![], (1..wire.len()).collect()] {
        let mut pair_again = Pair::new(pair.agreed.clone(), false, Config::default());
        let mut w = Vec::new();
        // Re-encode for a fresh pair: context takeover ties the bytes to one compressor.
        for msg in &expected {
            match msg {
                Seen::Ping(_) => w.extend(&ping),
                Seen::Binary(b) if b == &[1, 2, 3] => w.extend(client_message(None, msg, 0)),
                _ => w.extend(client_message(pair_again.client.deflater_mut(), msg, 700)),
            }
        }
        let (seen, out) = feed(&mut pair_again.server, &w, &bytes);
        assert_eq!(seen, expected);
        assert_eq!(out, [0x8a, 2, b'h', b'i'], "the pong is not compressed");
    }
    let (seen, _) = feed(&mut pair.server, &wire, &[]);
    assert_eq!(seen, expected);
}

#[test]
fn rsv1_where_it_does_not_belong_is_1002() {
    let offer = DeflateOffer::default();
    let agreed = handshake(&offer.header_value(), &offer, &DeflateConfig::shared()).unwrap();
    let close_code = |out: &[u8]| u16::from_be_bytes([out[2], out[3]]);
    // On a continuation of a compressed message, and of an uncompressed one.
    for first_rsv1 in [true, false] {
        let mut pair = Pair::new(agreed.clone(), true, Config::default());
        let msg = payload(3, 3000, 3);
        let deflater = first_rsv1.then(|| pair.client.deflater_mut()).flatten();
        let mut wire = client_message(deflater, &msg, 1000);
        let second = 2 + 2 + 4 + 1000;
        wire[second] |= 0x40;
        let (seen, out) = feed(&mut pair.server, &wire, &[]);
        assert_eq!(seen, [Seen::Failed(Error::BadRsv1)]);
        assert_eq!(close_code(&out), 1002);
    }
    // On control frames.
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let mut pair = Pair::new(agreed.clone(), true, Config::default());
        let mut wire = Vec::new();
        frame::write_frame(&mut wire, true, op, Some([1, 2, 3, 4]), &[]);
        wire[0] |= 0x40;
        let (seen, out) = feed(&mut pair.server, &wire, &[]);
        assert_eq!(seen, [Seen::Failed(Error::BadRsv1)], "{op:?}");
        assert_eq!(close_code(&out), 1002);
    }
    // Without negotiation RSV1 is a reserved bit, as before.
    let mut plain = Connection::new(Role::Server, Config::default());
    let wire = client_message(Some(&mut Deflater::new(15, true, 1)), &payload(0, 50, 1), 0);
    let (seen, out) = feed(&mut plain, &wire, &[]);
    assert_eq!(seen, [Seen::Failed(Error::ReservedBits)]);
    assert_eq!(close_code(&out), 1002);
}

#[test]
fn a_reference_to_data_the_server_does_not_have_is_1007_at_any_cut() {
    // The client promised no context takeover, then refers to its previous message.
    let offer = DeflateOffer { client_no_context_takeover: true, ..DeflateOffer::default() };
    let agreed = handshake(&offer.header_value(), &offer, &DeflateConfig::dedicated(15)).unwrap();
    assert!(agreed.server.client_no_context_takeover);
    let msg = payload(1, 3000, 4);
    let mut cheat = Deflater::new(15, false, 6);
    let mut wire = client_message(Some(&mut cheat), &msg, 0);
    wire.extend(client_message(Some(&mut cheat), &msg, 400));
    let mut outcomes = Vec::new();
    for cut in [vec![], cuts(wire.len(), 5), (1..wire.len()).collect()] {
        let mut server = Connection::new(Role::Server, Config::default());
        server.enable_deflate(agreed.server, None);
        let (seen, out) = feed(&mut server, &wire, &cut);
        assert_eq!(seen, [msg.clone(), Seen::Failed(Error::BadCompressedData)]);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1007);
        assert!(!server.is_inflating());
        outcomes.push(out);
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn an_agreed_client_window_below_32k_is_not_enforced() {
    // zlib-rs inflates with a 32 KiB window whatever window it is given: a client agreeing to
    // 9 bits but compressing with 15 gets through. This pins the documented limit; a backend
    // that enforces the window would fail here with 1007, and the docs would change with it.
    let mut config = DeflateConfig::dedicated(15);
    config.client_max_window_bits = 9;
    let offer = DeflateOffer::default();
    let agreed = handshake(&offer.header_value(), &offer, &config).unwrap();
    assert_eq!(agreed.response, "permessage-deflate; client_max_window_bits=9");
    assert_eq!(agreed.client.client_max_window_bits, 9);
    let Seen::Binary(block) = payload(3, 20_000, 9) else { unreachable!() };
    let msg = Seen::Binary([&block[..], &block[..]].concat());
    let wire = client_message(Some(&mut Deflater::new(15, false, 6)), &msg, 0);
    assert!(wire.len() < 21_000, "the repeat compressed to a reference 20,000 bytes back");
    let mut server = Connection::new(Role::Server, Config::default());
    server.enable_deflate(agreed.server, None);
    assert_eq!(feed(&mut server, &wire, &cuts(wire.len(), 6)).0, [msg]);
}
