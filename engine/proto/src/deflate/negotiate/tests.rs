use super::*;
use crate::handshake::parse_extensions;

fn offers(headers: &[&str]) -> Vec<ExtensionOffer<'static>> {
    let leaked: Vec<&'static [u8]> =
        headers.iter().map(|h| &*Box::leak(h.as_bytes().to_vec().into_boxed_slice())).collect();
    parse_extensions(leaked.into_iter()).expect("offers parse")
}

fn answer_to(headers: &[&str], config: &DeflateConfig) -> Option<Negotiated> {
    negotiate(&offers(headers), config)
}

fn configs() -> Vec<DeflateConfig> {
    let mut all = Vec::new();
    for mode in [
        DeflateMode::Shared,
        DeflateMode::Dedicated { window_bits: 9 },
        DeflateMode::Dedicated { window_bits: 12 },
        DeflateMode::Dedicated { window_bits: 15 },
    ] {
        for allow in [false, true] {
            for client_bits in [9, 11, 15] {
                let mut c = DeflateConfig::shared();
                c.mode = mode;
                c.allow_client_context_takeover = allow;
                c.client_max_window_bits = client_bits;
                all.push(c);
            }
        }
    }
    all
}

/// Every combination of the four parameters in an offer: each flag on or off,
/// `server_max_window_bits` absent or 8..=15, `client_max_window_bits` absent, bare or 8..=15.
fn every_offer() -> Vec<(String, Offer)> {
    let mut all = Vec::new();
    for snct in [false, true] {
        for cnct in [false, true] {
            for smwb in std::iter::once(None).chain((8..=15).map(Some)) {
                for cmwb in [None, Some(None)].into_iter().chain((8..=15).map(|b| Some(Some(b)))) {
                    let mut text = String::from("permessage-deflate");
                    // Parameter order varies too: the window ones first for odd windows.
                    let mut params = Vec::new();
                    if snct {
                        params.push("server_no_context_takeover".to_string());
                    }
                    if cnct {
                        params.push("client_no_context_takeover".to_string());
                    }
                    if let Some(b) = smwb {
                        params.push(format!("server_max_window_bits={b}"));
                    }
                    match cmwb {
                        None => {}
                        Some(None) => params.push("client_max_window_bits".into()),
                        Some(Some(b)) => params.push(format!("client_max_window_bits=\"{b}\"")),
                    }
                    if smwb.is_some_and(|b| b % 2 == 1) {
                        params.reverse();
                    }
                    for p in params {
                        text.push_str("; ");
                        text.push_str(&p);
                    }
                    let offer = Offer {
                        server_no_context_takeover: snct,
                        client_no_context_takeover: cnct,
                        server_max_window_bits: smwb,
                        client_max_window_bits: cmwb,
                    };
                    all.push((text, offer));
                }
            }
        }
    }
    all
}

#[test]
fn every_offer_against_every_config() {
    let all = every_offer();
    assert_eq!(all.len(), 2 * 2 * 9 * 10);
    for config in configs() {
        for (text, offer) in &all {
            let n = answer_to(&[text], &config).unwrap_or_else(|| panic!("{text} declined"));
            let ctx = format!("{text} / {config:?} -> {}", n.response);
            // The response is one permessage-deflate element whose parameters parse.
            let parsed = offers(&[&n.response]);
            assert_eq!(parsed.len(), 1, "{ctx}");
            assert_eq!(parsed[0].name, EXTENSION_NAME, "{ctx}");
            let resp = parse_offer(&parsed[0].params, Side::Response).expect(&ctx);
            // Never a parameter the client did not allow, never a value above its own.
            if offer.client_max_window_bits.is_none() {
                assert_eq!(resp.client_max_window_bits, None, "{ctx}");
            }
            if let (Some(Some(asked)), Some(Some(got))) =
                (offer.client_max_window_bits, resp.client_max_window_bits)
            {
                assert!(got <= asked, "{ctx}");
            }
            assert_eq!(
                resp.server_max_window_bits.is_some(),
                offer.server_max_window_bits.is_some()
            );
            if let (Some(asked), Some(got)) =
                (offer.server_max_window_bits, resp.server_max_window_bits)
            {
                assert!(got <= asked, "{ctx}");
            }
            // What was asked for is granted.
            assert!(!offer.server_no_context_takeover || resp.server_no_context_takeover, "{ctx}");
            assert!(!offer.client_no_context_takeover || resp.client_no_context_takeover, "{ctx}");
            // The server's policy shows.
            if config.mode == DeflateMode::Shared {
                assert!(n.params.server_no_context_takeover, "{ctx}");
            }
            if !config.allow_client_context_takeover {
                assert!(n.params.client_no_context_takeover, "{ctx}");
            }
            if let DeflateMode::Dedicated { window_bits } = config.mode {
                assert!(n.params.server_max_window_bits <= window_bits, "{ctx}");
            }
            assert!(
                n.params.client_max_window_bits >= 9
                    || offer.client_max_window_bits == Some(Some(8))
            );
            // The agreement is what the response says (absent windows are 15).
            assert_eq!(n.params.server_no_context_takeover, resp.server_no_context_takeover);
            assert_eq!(n.params.client_no_context_takeover, resp.client_no_context_takeover);
            assert_eq!(
                n.params.client_max_window_bits,
                resp.client_max_window_bits.flatten().unwrap_or(15),
                "{ctx}"
            );
            assert!(n.params.server_max_window_bits <= resp.server_max_window_bits.unwrap_or(15));
            // A client that made this offer accepts the answer and agrees on everything.
            let client = DeflateOffer {
                server_no_context_takeover: offer.server_no_context_takeover,
                client_no_context_takeover: offer.client_no_context_takeover,
                server_max_window_bits: offer.server_max_window_bits,
                client_max_window_bits: offer.client_max_window_bits.map(|b| b.unwrap_or(15)),
            };
            let seen = client.accept(Some(&n.response)).expect(&ctx).expect(&ctx);
            assert_eq!(seen.server_no_context_takeover, n.params.server_no_context_takeover);
            assert_eq!(seen.client_no_context_takeover, n.params.client_no_context_takeover);
            assert_eq!(seen.client_max_window_bits, n.params.client_max_window_bits, "{ctx}");
            // The server may compress with less than it announced, never more.
            assert!(n.params.server_max_window_bits <= seen.server_max_window_bits, "{ctx}");
        }
    }
}

#[test]
fn chosen_responses() {
    let shared = DeflateConfig::shared();
    let mut dedicated = DeflateConfig::dedicated(15);
    let table: &[(&[&str], &DeflateConfig, Option<&str>)] = &[
        (&["permessage-deflate"], &shared, Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")),
        (&["permessage-deflate"], &dedicated, Some("permessage-deflate")),
        (&["permessage-deflate; client_max_window_bits"], &dedicated, Some("permessage-deflate")),
        (&["permessage-deflate; client_max_window_bits=10"], &dedicated, Some("permessage-deflate; client_max_window_bits=10")),
        (&["permessage-deflate; server_max_window_bits=8"], &dedicated, Some("permessage-deflate; server_max_window_bits=8")),
        (&["permessage-deflate; server_max_window_bits=\"12\""], &shared, Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12")),
        (&["permessage-deflate;server_no_context_takeover ;client_no_context_takeover"], &dedicated, Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")),
        // Other extensions are skipped; an invalid offer is declined and the next one taken.
        (&["x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=16, permessage-deflate; server_no_context_takeover"], &dedicated, Some("permessage-deflate; server_no_context_takeover")),
        // Several headers, in order.
        (&["permessage-deflate; foo", "x-other", "permessage-deflate; client_max_window_bits=9"], &dedicated, Some("permessage-deflate; client_max_window_bits=9")),
        (&["x-webkit-deflate-frame"], &dedicated, None),
        (&[], &dedicated, None),
        (&["Permessage-Deflate"], &dedicated, None),
    ];
    for (headers, config, expected) in table {
        let got = answer_to(headers, config).map(|n| n.response);
        assert_eq!(got.as_deref(), *expected, "{headers:?}");
    }
    // The server asks for a smaller client window only where the offer lets it.
    dedicated.client_max_window_bits = 11;
    let n = answer_to(&["permessage-deflate; client_max_window_bits"], &dedicated).unwrap();
    assert_eq!(n.response, "permessage-deflate; client_max_window_bits=11");
    assert_eq!(n.params.client_max_window_bits, 11);
    let n = answer_to(&["permessage-deflate"], &dedicated).unwrap();
    assert_eq!(n.response, "permessage-deflate");
    assert_eq!(n.params.client_max_window_bits, 15);
    // Dedicated below 15 compresses with its own window without announcing it.
    let n = answer_to(&["permessage-deflate"], &DeflateConfig::dedicated(10)).unwrap();
    assert_eq!((n.response.as_str(), n.params.server_max_window_bits), ("permessage-deflate", 10));
    let n = answer_to(
        &["permessage-deflate; server_max_window_bits=12"],
        &DeflateConfig::dedicated(10),
    )
    .unwrap();
    assert_eq!(n.response, "permessage-deflate; server_max_window_bits=10");
    // Out-of-range configs are clamped.
    let n = answer_to(&["permessage-deflate"], &DeflateConfig::dedicated(3)).unwrap();
    assert_eq!(n.params.server_max_window_bits, 9);
}

#[test]
fn invalid_offers_are_declined() {
    let bad = [
        "permessage-deflate; foo",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=10; client_max_window_bits",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=015",
        "permessage-deflate; server_max_window_bits=+9",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=255",
        "permessage-deflate; client_max_window_bits=ten",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"true\"",
        "permessage-deflate; Server_No_Context_Takeover",
    ];
    for text in bad {
        let Ok(parsed) = parse_extensions(std::iter::once(text.as_bytes())) else {
            // Not even RFC 6455 syntax: the handshake answers 400 before negotiation.
            continue;
        };
        for config in configs() {
            assert_eq!(negotiate(&parsed, &config), None, "{text}");
        }
        // Followed by a valid offer, that one is taken.
        let both = format!("{text}, permessage-deflate; client_max_window_bits=12");
        let n = answer_to(&[&both], &DeflateConfig::dedicated(15)).expect(&both);
        assert_eq!(n.response, "permessage-deflate; client_max_window_bits=12", "{both}");
    }
    // Quoted values are unquoted before they are judged.
    let n = answer_to(
        &["permessage-deflate; client_max_window_bits=\"1\\2\""],
        &DeflateConfig::dedicated(15),
    );
    assert_eq!(n.unwrap().params.client_max_window_bits, 12);
}

#[test]
fn client_offer_and_response_checks() {
    assert_eq!(
        DeflateOffer::default().header_value(),
        "permessage-deflate; client_max_window_bits"
    );
    let all = DeflateOffer {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: Some(10),
        client_max_window_bits: Some(12),
    };
    assert_eq!(
        all.header_value(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         server_max_window_bits=10; client_max_window_bits=12"
    );
    let plain = DeflateOffer { client_max_window_bits: None, ..DeflateOffer::default() };
    assert_eq!(plain.header_value(), "permessage-deflate");

    // Declined, or accepted with the windows the answer (or the offer) sets.
    assert_eq!(DeflateOffer::default().accept(None), Ok(None));
    assert_eq!(DeflateOffer::default().accept(Some("")), Ok(None));
    let p = DeflateOffer::default().accept(Some("permessage-deflate")).unwrap().unwrap();
    assert_eq!(p, DeflateParams::DEFAULT);
    let p = all
        .accept(Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9"))
        .unwrap()
        .unwrap();
    assert_eq!(
        p,
        DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 9,
            client_max_window_bits: 12,
        }
    );
    // The server may add a window or no-context-takeover unasked.
    let p = plain
        .accept(Some("permessage-deflate; server_max_window_bits=11; client_no_context_takeover"))
        .unwrap()
        .unwrap();
    assert_eq!((p.server_max_window_bits, p.client_no_context_takeover), (11, true));

    let bad: &[(&DeflateOffer, &str)] = &[
        (&plain, "x-other"),
        (&plain, "permessage-deflate, permessage-deflate"),
        (&plain, "permessage-deflate, x-other"),
        (&plain, "permessage-deflate; foo"),
        (&plain, "permessage-deflate; client_max_window_bits=10"),
        (&DeflateOffer::default(), "permessage-deflate; client_max_window_bits"),
        (&DeflateOffer::default(), "permessage-deflate; client_max_window_bits=16"),
        (&all, "permessage-deflate; server_no_context_takeover; server_max_window_bits=11"),
        (&all, "permessage-deflate; server_no_context_takeover"),
        (&all, "permessage-deflate; server_max_window_bits=10"),
        (&all, "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=13"),
        (&plain, "permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
        (&plain, "permessage-deflate; server_max_window_bits=08"),
        (&plain, "permessage-deflate; server_no_context_takeover=x"),
        (&plain, "permessage-deflate;"),
    ];
    for (offer, response) in bad {
        let e = offer.accept(Some(response)).unwrap_err();
        assert!(matches!(e, Error::BadResponse(_)), "{response}: {e:?}");
        assert!(!e.to_string().is_empty());
    }
}
