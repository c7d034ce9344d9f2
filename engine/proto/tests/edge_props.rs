//! Property tests of the deployment-edge parsers: arbitrary bytes never panic, the PROXY parser
//! gives the same answer at every split, encoders round-trip, and the real-IP walk agrees with
//! a plain model of it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use ringside_proto::edge::forwarded::{self, MAX_HOPS};
use ringside_proto::edge::proxy::{self, Command, ProxyHeader, Version, V2_SIGNATURE};
use ringside_proto::edge::{resolve, Cidr, ForwardedHeader, Hop, Source, TrustedProxies};

/// Asserts that every prefix of `input` gets an answer consistent with the whole: `Ok(None)`
/// until the header completes or the error shows, then the same header or the same error.
fn check_splits(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, proxy::ProxyError> {
    let whole = proxy::parse(input);
    let mut errored = false;
    for k in 0..=input.len() {
        let r = proxy::parse(&input[..k]);
        match &whole {
            Ok(Some((_, n))) if k < *n => assert_eq!(r, Ok(None), "at {k}"),
            Ok(Some(_)) => assert_eq!(r, whole, "at {k}"),
            Ok(None) => assert_eq!(r, Ok(None), "at {k}"),
            Err(e) => match r {
                Ok(None) => assert!(!errored, "error, then more bytes wanted, at {k}"),
                Err(got) => {
                    assert_eq!(&got, e, "at {k}");
                    errored = true;
                }
                Ok(Some(h)) => panic!("header {h:?} at {k}, error {e:?} at the end"),
            },
        }
    }
    whole
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        // Dense in the ranges the tests trust, so walks get long.
        (0u8..4, any::<u8>()).prop_map(|(c, d)| IpAddr::V4(Ipv4Addr::new(10, 0, c, d))),
        any::<u32>().prop_map(|v| IpAddr::V6(Ipv4Addr::from(v).to_ipv6_mapped())),
    ]
}

/// A pair of socket addresses of one family.
fn same_family_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()).prop_map(|(s, d, sp, dp)| (
            SocketAddr::new(Ipv4Addr::from(s).into(), sp),
            SocketAddr::new(Ipv4Addr::from(d).into(), dp)
        )),
        (any::<u128>(), any::<u128>(), any::<u16>(), any::<u16>()).prop_map(|(s, d, sp, dp)| (
            SocketAddr::new(Ipv6Addr::from(s).into(), sp),
            SocketAddr::new(Ipv6Addr::from(d).into(), dp)
        )),
    ]
}

/// Starts that reach deep into the PROXY parser, followed by noise.
fn proxy_like() -> impl Strategy<Value = Vec<u8>> {
    let starts: Vec<Vec<u8>> = vec![
        b"PROXY ".to_vec(),
        b"PROXY TCP4 ".to_vec(),
        b"PROXY TCP6 ".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 ".to_vec(),
        b"PROXY UNKNOWN".to_vec(),
        [&V2_SIGNATURE[..], &[0x21, 0x11]].concat(),
        [&V2_SIGNATURE[..], &[0x21, 0x11, 0, 15]].concat(),
        [&V2_SIGNATURE[..], &[0x20]].concat(),
        Vec::new(),
    ];
    (prop::sample::select(starts), prop::collection::vec(any::<u8>(), 0..160))
        .prop_map(|(start, noise)| [start, noise].concat())
}

/// How an address is written in `X-Forwarded-For`.
fn xff_text(ip: IpAddr, port: Option<u16>, brackets: bool) -> String {
    match (ip, port) {
        (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
        (IpAddr::V4(v4), None) => v4.to_string(),
        (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
        (IpAddr::V6(v6), None) if brackets => format!("[{v6}]"),
        (IpAddr::V6(v6), None) => v6.to_string(),
    }
}

/// How an address is written as an RFC 7239 `for=` value, with another parameter around it.
fn forwarded_text(ip: IpAddr, port: Option<u16>, extra: bool) -> String {
    let node = match (ip, port) {
        (IpAddr::V4(v4), None) => v4.to_string(),
        (IpAddr::V4(v4), Some(p)) => format!("\"{v4}:{p}\""),
        (IpAddr::V6(v6), None) => format!("\"[{v6}]\""),
        (IpAddr::V6(v6), Some(p)) => format!("\"[{v6}]:{p}\""),
    };
    if extra {
        format!("by=\"x,y;z\";For={node};proto=https")
    } else {
        format!("for={node}")
    }
}

/// The walk as the documentation states it, over a list of known addresses.
fn model(peer: IpAddr, trusted: &TrustedProxies, hops: &[IpAddr]) -> IpAddr {
    if !trusted.contains(peer) {
        return peer.to_canonical();
    }
    let mut current = peer.to_canonical();
    for (i, &hop) in hops.iter().rev().enumerate() {
        if i == MAX_HOPS {
            break;
        }
        current = hop.to_canonical();
        if !trusted.contains(hop) {
            break;
        }
    }
    current
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn proxy_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_splits(&bytes).ok();
    }

    #[test]
    fn proxy_near_misses(bytes in proxy_like()) {
        if let Ok(Some((h, n))) = check_splits(&bytes) {
            prop_assert!(n <= bytes.len());
            // Whatever parses re-encodes to a header that parses to the same.
            let mut again = Vec::new();
            h.encode(&mut again);
            prop_assert_eq!(proxy::parse(&again), Ok(Some((h, again.len()))));
        }
    }

    #[test]
    fn proxy_round_trip(
        (s, d) in same_family_pair(),
        v2 in any::<bool>(),
        kind in 0u8..3,
        tlvs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..4),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let version = if v2 { Version::V2 } else { Version::V1 };
        let h = match kind {
            0 => ProxyHeader::new(version, s, d),
            1 => ProxyHeader::unknown(version),
            _ if v2 => ProxyHeader::local(),
            _ => ProxyHeader::unknown(version),
        };
        let mut wire = Vec::new();
        h.encode(&mut wire);
        // TLVs after the addresses are skipped (the length field grows to cover them).
        if v2 && kind == 0 {
            for (t, value) in &tlvs {
                wire.push(*t);
                wire.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
                wire.extend_from_slice(value);
            }
            let len = u16::try_from(wire.len() - 16).unwrap().to_be_bytes();
            wire[14..16].copy_from_slice(&len);
        }
        let n = wire.len();
        wire.extend_from_slice(&tail);
        prop_assert_eq!(check_splits(&wire), Ok(Some((h, n))));
        if kind == 0 {
            prop_assert_eq!((h.source, h.destination, h.command), (Some(s), Some(d), Command::Proxy));
        }
    }

    #[test]
    fn forwarding_headers_any_bytes(value in prop::collection::vec(any::<u8>(), 0..200)) {
        let hops = forwarded::x_forwarded_for(&value).count() + forwarded::forwarded(&value).count();
        prop_assert!(hops <= value.len() + 1);
        let _ = forwarded::x_real_ip(&value);
    }

    #[test]
    fn resolve_any_headers(
        peer in ip(),
        lines in prop::collection::vec((0usize..4, prop::collection::vec(any::<u8>(), 0..80)), 0..6),
        order in prop::sample::subsequence(vec![
            ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded, ForwardedHeader::XRealIp,
        ], 0..=3),
    ) {
        let trusted = TrustedProxies::parse_list("10.0.0.0/14, ::1").unwrap();
        let names = ["X-Forwarded-For", "Forwarded", "X-Real-IP", "Host"];
        let headers = lines.iter().map(|(i, v)| (names[*i], &v[..]));
        let r = resolve(peer, &trusted, headers, &order);
        prop_assert_eq!(r.peer_trusted, trusted.contains(peer));
        if !r.peer_trusted || r.source == Source::TcpPeer {
            prop_assert_eq!(r.addr, peer.to_canonical());
        }
        if !r.peer_trusted {
            prop_assert_eq!((r.header, r.problem), (None, None));
        }
    }

    #[test]
    fn resolve_matches_the_model(
        peer in ip(),
        hops in prop::collection::vec((ip(), prop::option::of(any::<u16>()), any::<bool>()), 1..80),
        lines in 1usize..4,
        use_forwarded in any::<bool>(),
    ) {
        let trusted = TrustedProxies::parse_list("10.0.0.0/14, ::1, 2001:db8::/32").unwrap();
        let texts: Vec<String> = hops
            .iter()
            .map(|&(ip, port, flag)| {
                if use_forwarded { forwarded_text(ip, port, flag) } else { xff_text(ip, port, flag) }
            })
            .collect();
        // The same list cut into several header lines.
        let per_line = texts.len().div_ceil(lines);
        let values: Vec<String> = texts.chunks(per_line).map(|c| c.join(", ")).collect();
        let (name, kind) = if use_forwarded {
            ("Forwarded", ForwardedHeader::Forwarded)
        } else {
            ("X-Forwarded-For", ForwardedHeader::XForwardedFor)
        };
        let parsed: Vec<Hop> = values
            .iter()
            .flat_map(|v| {
                let v = v.as_bytes();
                if use_forwarded {
                    forwarded::forwarded(v).collect::<Vec<_>>()
                } else {
                    forwarded::x_forwarded_for(v).collect()
                }
            })
            .collect();
        let addrs: Vec<IpAddr> = hops.iter().map(|h| h.0).collect();
        let expected: Vec<Hop> = addrs.iter().map(|a| Hop::Addr(a.to_canonical())).collect();
        prop_assert_eq!(parsed, expected);

        let headers = values.iter().map(|v| (name, v.as_bytes()));
        let r = resolve(peer, &trusted, headers, &[kind]);
        prop_assert_eq!(r.addr, model(peer, &trusted, &addrs));
        let too_many = trusted.contains(peer)
            && addrs.len() > MAX_HOPS
            && addrs.iter().rev().take(MAX_HOPS).all(|&a| trusted.contains(a));
        prop_assert_eq!(r.problem.is_some(), too_many);
    }

    #[test]
    fn cidr_contains_matches_bits(addr in ip(), other in ip(), prefix in 0u8..=128) {
        let addr = addr.to_canonical();
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix % (width + 1);
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            IpAddr::V6(v6) => u128::from(v6),
        };
        let keep = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
        let network = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(((bits(addr) & keep) >> 96) as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits(addr) & keep)),
        };
        let c = Cidr::new(network, prefix).unwrap();
        prop_assert!(c.contains(addr));
        prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        let other_c = other.to_canonical();
        let same_family = other_c.is_ipv4() == addr.is_ipv4();
        prop_assert_eq!(c.contains(other), same_family && bits(other_c) & keep == bits(network));
        if prefix < width {
            // Any host bit set is refused.
            let host_bit = 1u128 << (127 - u32::from(prefix));
            let with_host = match addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(((bits(network) | host_bit) >> 96) as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits(network) | host_bit)),
            };
            prop_assert_eq!(Cidr::new(with_host, prefix), None);
        }
    }
}
