//! Property tests of permessage-deflate through real connections: any messages, compressed or
//! not, fragmented anywhere, under every context-takeover and window combination, arrive intact
//! in both directions at any read sizes; and arbitrary bytes after a valid compressed prefix
//! give the same outcome however they are cut.

mod deflate_util;

use deflate_util::*;
use proptest::prelude::*;
use ringside_proto::deflate::DeflateParams;
use ringside_proto::{Config, Connection, Role};

fn params() -> impl Strategy<Value = (DeflateParams, bool)> {
    (any::<bool>(), any::<bool>(), 8u8..=15, 8u8..=15, any::<bool>()).prop_map(
        |(snct, cnct, smwb, cmwb, shared)| {
            let params = DeflateParams {
                // A shared server compressor keeps no context.
                server_no_context_takeover: snct || shared,
                client_no_context_takeover: cnct,
                server_max_window_bits: smwb,
                client_max_window_bits: cmwb,
            };
            (params, shared)
        },
    )
}

/// A message: text or binary, its payload (compressible or not), the fragment size its
/// compressed form is cut into (0: one frame), and whether the client compresses it at all.
fn message() -> impl Strategy<Value = (Seen, usize, bool)> {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2000),
        (prop::collection::vec(any::<u8>(), 1..40), 1usize..300)
            .prop_map(|(unit, times)| unit.repeat(times)),
    ];
    (any::<bool>(), bytes, prop_oneof![Just(0usize), 1usize..64, 64usize..2000], any::<bool>())
        .prop_map(|(text, bytes, fragment, compress)| {
            let msg = if text {
                Seen::Text(String::from_utf8_lossy(&bytes).into_owned())
            } else {
                Seen::Binary(bytes)
            };
            (msg, fragment, compress)
        })
}

fn cut_points(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn messages_round_trip_under_every_parameter_combination(
        (params, shared) in params(),
        messages in prop::collection::vec(message(), 1..6),
        raw_cuts in prop::collection::vec(any::<usize>(), 0..30),
        raw_cuts_back in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let agreed = Agreed { server: params, client: params, response: String::new() };
        let mut pair = Pair::new(agreed, shared, Config::default());
        let mut wire = Vec::new();
        for (msg, fragment, compress) in &messages {
            let deflater = if *compress { pair.client.deflater_mut() } else { None };
            wire.extend(client_message(deflater, msg, *fragment));
        }
        let expected: Vec<Seen> = messages.iter().map(|(m, _, _)| m.clone()).collect();
        let (seen, _) = feed(&mut pair.server, &wire, &cut_points(wire.len(), &raw_cuts));
        prop_assert_eq!(&seen, &expected);
        prop_assert_eq!(pair.server.is_inflating(), !params.client_no_context_takeover && messages.iter().any(|m| m.2));
        let mut back = Vec::new();
        for msg in &seen {
            back.extend(pair.server_sends(msg));
        }
        let (echoed, _) = feed(&mut pair.client, &back, &cut_points(back.len(), &raw_cuts_back));
        prop_assert_eq!(&echoed, &expected);
    }

    #[test]
    fn arbitrary_bytes_after_compressed_messages_give_one_outcome(
        (params, _) in params(),
        prefix in prop::collection::vec(message(), 0..3),
        garbage in prop::collection::vec(any::<u8>(), 0..300),
        raw_cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let mut client = params.deflater(Role::Client, 6);
        let mut wire = Vec::new();
        for (msg, fragment, compress) in &prefix {
            wire.extend(client_message(compress.then_some(&mut client), msg, *fragment));
        }
        // Garbage as the payload of a compressed frame, then as raw bytes.
        let mut bad = client_message(None, &Seen::Binary(garbage.clone()), 0);
        bad[0] |= 0x40;
        wire.extend(bad);
        wire.extend(&garbage);
        let config = Config { max_frame_size: 1 << 16, max_message_size: 1 << 15, auto_pong: true };
        let run = |cuts: &[usize]| {
            let mut server = Connection::new(Role::Server, config);
            server.enable_deflate(params, None);
            let (seen, out) = feed(&mut server, &wire, cuts);
            (seen, out, server.is_closed())
        };
        let whole = run(&[]);
        prop_assert_eq!(&whole, &run(&cut_points(wire.len(), &raw_cuts)));
        prop_assert_eq!(&whole, &run(&(1..wire.len()).collect::<Vec<_>>()));
    }
}
