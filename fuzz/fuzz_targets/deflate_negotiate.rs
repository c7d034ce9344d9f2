//! permessage-deflate negotiation on arbitrary `Sec-WebSocket-Extensions` values (one header
//! per line): never panics; whatever the server accepts answers the first valid offer with one
//! parseable element, and a client that made that offer accepts the answer and agrees on the
//! parameters. The client's response check never panics on arbitrary bytes either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringside_proto::deflate::{negotiate, DeflateConfig, DeflateOffer, EXTENSION_NAME};
use ringside_proto::handshake::{parse_extensions, ExtensionOffer};

fn configs() -> [DeflateConfig; 3] {
    let mut small = DeflateConfig::dedicated(10);
    small.client_max_window_bits = 11;
    let mut takeover = DeflateConfig::shared();
    takeover.allow_client_context_takeover = true;
    [DeflateConfig::shared(), small, takeover]
}

/// The client offer that `offer` (a valid one) spells.
fn as_client(offer: &ExtensionOffer<'_>) -> DeflateOffer {
    let mut client = DeflateOffer {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: None,
        client_max_window_bits: None,
    };
    for (name, value) in &offer.params {
        let bits = value.as_deref().and_then(|v| v.parse::<u8>().ok());
        match *name {
            "server_no_context_takeover" => client.server_no_context_takeover = true,
            "client_no_context_takeover" => client.client_no_context_takeover = true,
            "server_max_window_bits" => client.server_max_window_bits = bits,
            "client_max_window_bits" => client.client_max_window_bits = Some(bits.unwrap_or(15)),
            _ => unreachable!("accepted offers have only known parameters"),
        }
    }
    client
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let every = DeflateOffer {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(12),
        };
        for offer in [DeflateOffer::default(), every] {
            if let Ok(Some(p)) = offer.accept(Some(text)) {
                assert!((8..=15).contains(&p.server_max_window_bits));
                assert!((8..=15).contains(&p.client_max_window_bits));
            }
        }
    }
    let Ok(offers) = parse_extensions(data.split(|&b| b == b'\n')) else { return };
    for config in configs() {
        let Some(n) = negotiate(&offers, &config) else {
            continue;
        };
        // The first offer that is acceptable on its own is the one taken.
        let chosen = offers
            .iter()
            .find(|o| o.name == EXTENSION_NAME && negotiate(std::slice::from_ref(*o), &config).is_some())
            .expect("an accepted offer exists");
        assert_eq!(negotiate(std::slice::from_ref(chosen), &config).as_ref(), Some(&n));
        let answer = parse_extensions(std::iter::once(n.response.as_bytes())).expect("parses");
        assert_eq!(answer.len(), 1);
        assert_eq!(answer[0].name, EXTENSION_NAME);
        let client = as_client(chosen);
        if client.client_max_window_bits.is_none() {
            assert!(!n.response.contains("client_max_window_bits"));
        }
        let seen = client.accept(Some(&n.response)).expect("valid").expect("accepted");
        assert_eq!(seen.server_no_context_takeover, n.params.server_no_context_takeover);
        assert_eq!(seen.client_no_context_takeover, n.params.client_no_context_takeover);
        assert_eq!(seen.client_max_window_bits, n.params.client_max_window_bits);
        assert!(n.params.server_max_window_bits <= seen.server_max_window_bits);
        assert!((8..=15).contains(&n.params.server_max_window_bits));
    }
});
