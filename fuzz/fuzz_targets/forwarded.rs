//! The forwarding-header parsers and the real-IP walk over arbitrary bytes: never panic, an
//! untrusted peer is always its own client, and an address taken from a header is one of that
//! header's hops. The same bytes also go through the trusted-proxy list parser, whose output
//! must parse back to the same list.
//!
//! Input: the first byte picks the TCP peer (bits 0-1) and the header order (the rest); then
//! header lines separated by `\n`, each a kind byte (`x` X-Forwarded-For, `f` Forwarded, `r`
//! X-Real-IP, anything else an unrelated header) followed by the value.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use ringside_proto::edge::forwarded::{self, MAX_HOPS};
use ringside_proto::edge::{resolve, ForwardedHeader, Hop, Source, TrustedProxies};

const ORDERS: [&[ForwardedHeader]; 6] = [
    &[ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded, ForwardedHeader::XRealIp],
    &[ForwardedHeader::Forwarded, ForwardedHeader::XForwardedFor],
    &[ForwardedHeader::XRealIp, ForwardedHeader::XForwardedFor],
    &[ForwardedHeader::XForwardedFor],
    &[ForwardedHeader::Forwarded],
    &[],
];

fn hops(kind: ForwardedHeader, value: &[u8]) -> Vec<Hop> {
    match kind {
        ForwardedHeader::XForwardedFor => forwarded::x_forwarded_for(value).collect(),
        ForwardedHeader::Forwarded => forwarded::forwarded(value).collect(),
        _ => vec![forwarded::x_real_ip(value)],
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Ok(list)) = std::str::from_utf8(data).map(TrustedProxies::parse_list) {
        assert_eq!(list.to_string().parse::<TrustedProxies>().as_ref(), Ok(&list));
    }
    let Some((&first, rest)) = data.split_first() else { return };
    let peer: IpAddr = ["10.0.0.1", "::1", "203.0.113.9", "::ffff:10.0.0.1"]
        [usize::from(first & 3)]
    .parse()
    .unwrap();
    let order = ORDERS[usize::from(first >> 2) % ORDERS.len()];
    let trusted = TrustedProxies::parse_list("10.0.0.0/8, ::1, 2001:db8::/32").unwrap();

    let lines: Vec<(&str, &[u8])> = rest
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split_first())
        .map(|(&kind, value)| {
            let name = match kind {
                b'x' => "X-Forwarded-For",
                b'f' => "forwarded",
                b'r' => "X-REAL-IP",
                _ => "Host",
            };
            (name, value)
        })
        .collect();
    let r = resolve(peer, &trusted, lines.iter().copied(), order);

    assert_eq!(r.peer_trusted, trusted.contains(peer));
    if !r.peer_trusted {
        assert_eq!(
            (r.addr, r.source, r.header, r.problem),
            (peer.to_canonical(), Source::TcpPeer, None, None)
        );
    }
    if r.source == Source::TcpPeer {
        assert_eq!(r.addr, peer.to_canonical());
    }
    if let Source::Header(kind) = r.source {
        assert_eq!(r.header, Some(kind));
        let all: Vec<Hop> = lines
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(kind.name()))
            .flat_map(|(_, v)| hops(kind, v))
            .collect();
        let reach = &all[all.len().saturating_sub(MAX_HOPS)..];
        assert!(reach.contains(&Hop::Addr(r.addr)), "{r:?} not among {reach:?}");
    }
});
