//! Address ranges and the list of trusted proxies.
//!
//! A range is written `10.0.0.0/8`, `2001:db8::/32`, or as a bare address (a host route:
//! `/32` or `/128`). An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a dual-stack socket
//! reports for an IPv4 peer) is the IPv4 address for matching, both as a candidate and in a
//! range (`::ffff:10.0.0.0/104` is `10.0.0.0/8`). Otherwise IPv4 ranges match IPv4 addresses and
//! IPv6 ranges IPv6 ones: `::/0` does not trust every IPv4 proxy.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::edge::ConfigError;

const EXPECTED_CIDR: &str = "an address or a range such as 10.0.0.0/8 or fd00::/8";

/// An IPv4 or IPv6 address range: a network address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range of `prefix` leading bits of `network`. `None` when the prefix is longer than
    /// the address (32 or 128 bits) or `network` has bits set past the prefix (`10.1.0.0/8`:
    /// write `10.0.0.0/8`, or `10.1.0.0/16` if that was meant).
    pub fn new(network: IpAddr, prefix: u8) -> Option<Cidr> {
        let (network, prefix) = match network {
            // Stored as IPv4 so that it matches IPv4 and mapped candidates alike.
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (IpAddr::V4(v6.to_ipv4_mapped()?), prefix - 96)
            }
            other => (other, prefix),
        };
        let bits = u128_bits(network);
        let width = width(network);
        if prefix > width || bits & !mask(prefix, width) != 0 {
            return None;
        }
        Some(Cidr { network, prefix })
    }

    /// The single address `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        let width = width(addr);
        Cidr::new(addr, width).unwrap_or(Cidr { network: addr, prefix: width })
    }

    /// The network address (host bits zero). IPv4-mapped ranges are given as IPv4.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is inside the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        if addr.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let m = mask(self.prefix, width(addr));
        u128_bits(addr) & m == u128_bits(self.network)
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Cidr, ConfigError> {
        let bad = || ConfigError::new(s, EXPECTED_CIDR);
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let Some(prefix) = prefix else {
            return Ok(Cidr::host(addr));
        };
        // Digits only: `u8::from_str` would take "+8".
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > width(addr) {
            return Err(ConfigError::new(s, "a prefix length of at most 32 (IPv4) or 128 (IPv6)"));
        }
        Cidr::new(addr, prefix).ok_or_else(|| {
            ConfigError::new(s, "no address bits set past the prefix (write the network address)")
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose forwarding headers (and PROXY protocol headers) are believed.
///
/// Empty by default: trust nobody, use every TCP peer's own address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
}

impl TrustedProxies {
    /// A list of the given ranges.
    pub fn new(ranges: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies { ranges }
    }

    /// Parses a comma-separated list such as `127.0.0.1/32,10.0.0.0/8, ::1` (whitespace around
    /// entries is ignored; an empty or all-blank string is the empty list). The error names the
    /// first entry that is not a range; an empty entry (`a,,b`) is one.
    pub fn parse_list(s: &str) -> Result<TrustedProxies, ConfigError> {
        if s.trim().is_empty() {
            return Ok(TrustedProxies::default());
        }
        let ranges = s.split(',').map(|entry| entry.trim().parse()).collect::<Result<_, _>>()?;
        Ok(TrustedProxies { ranges })
    }

    /// Whether `addr` is inside one of the ranges.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(addr))
    }

    /// The ranges, in the order given.
    pub fn ranges(&self) -> &[Cidr] {
        &self.ranges
    }

    /// Whether the list is empty (nobody is trusted).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl FromStr for TrustedProxies {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<TrustedProxies, ConfigError> {
        TrustedProxies::parse_list(s)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromIterator<Cidr> for TrustedProxies {
    fn from_iter<I: IntoIterator<Item = Cidr>>(iter: I) -> TrustedProxies {
        TrustedProxies { ranges: iter.into_iter().collect() }
    }
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn u128_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The `prefix` leading bits of a `width`-bit address set, as the low `width` bits of a u128.
fn mask(prefix: u8, width: u8) -> u128 {
    let all = u128::MAX >> (128 - u32::from(width.min(128)));
    all & !all.checked_shr(u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn parses_and_displays() {
        let table: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("::1", "::1/128"),
            ("::1/128", "::1/128"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
            ("10.0.0.0/008", "10.0.0.0/8"),
        ];
        for &(input, shown) in table {
            let c: Cidr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.to_string(), shown, "{input}");
            assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c, "{input}");
        }
    }

    #[test]
    fn rejects_with_the_entry_named() {
        let table: &[(&str, &str)] = &[
            ("", "an address"),
            ("10.0.0.0/", "an address"),
            ("10.0.0.0/+8", "an address"),
            ("10.0.0.0/-1", "an address"),
            ("10.0.0.0/1000", "an address"),
            ("10.0.0.0/33", "at most 32"),
            ("::/129", "at most 32"),
            ("10.1.0.0/8", "past the prefix"),
            ("10.0.0.256/24", "an address"),
            ("010.0.0.0/8", "an address"),
            ("10.0.0.0 /8", "an address"),
            ("fe80::1%eth0", "an address"),
            ("[::1]", "an address"),
            ("localhost", "an address"),
            ("10.0.0.0/8/8", "an address"),
        ];
        for &(input, expected) in table {
            let e = input.parse::<Cidr>().unwrap_err();
            assert_eq!(e.entry(), input);
            assert!(e.to_string().contains(expected), "{input}: {e}");
        }
    }

    #[test]
    fn contains() {
        let table: &[(&str, IpAddr, bool)] = &[
            ("10.0.0.0/8", v4(10, 255, 1, 2), true),
            ("10.0.0.0/8", v4(11, 0, 0, 0), false),
            ("10.0.0.0/8", v4(9, 255, 255, 255), false),
            ("10.0.0.0/8", v6("::ffff:10.9.9.9"), true),
            ("10.0.0.0/8", v6("::a09:909"), false), // IPv4-compatible is not mapped
            ("0.0.0.0/0", v4(1, 2, 3, 4), true),
            ("0.0.0.0/0", v6("::1"), false),
            ("::/0", v4(1, 2, 3, 4), false),
            ("::/0", v6("2001:db8::1"), true),
            ("::ffff:10.0.0.0/104", v4(10, 0, 0, 1), true),
            ("127.0.0.1", v4(127, 0, 0, 1), true),
            ("127.0.0.1", v4(127, 0, 0, 2), false),
            ("2001:db8::/32", v6("2001:db8:ffff::1"), true),
            ("2001:db8::/32", v6("2001:db9::"), false),
            ("::1/128", v6("::1"), true),
            ("::1/128", v6("::2"), false),
            ("192.168.1.128/25", v4(192, 168, 1, 200), true),
            ("192.168.1.128/25", v4(192, 168, 1, 100), false),
        ];
        for &(range, addr, inside) in table {
            let c: Cidr = range.parse().unwrap();
            assert_eq!(c.contains(addr), inside, "{range} {addr}");
        }
    }

    #[test]
    fn constructors() {
        assert_eq!(Cidr::new(v4(10, 0, 0, 0), 8).unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::new(v4(10, 0, 0, 1), 8), None);
        assert_eq!(Cidr::new(v4(10, 0, 0, 0), 33), None);
        assert_eq!(Cidr::new(v6("::"), 129), None);
        assert_eq!(Cidr::host(v6("::ffff:1.2.3.4")).to_string(), "1.2.3.4/32");
        assert_eq!(Cidr::host(v6("::1")).prefix_len(), 128);
        assert_eq!(Cidr::host(v4(1, 2, 3, 4)).network(), v4(1, 2, 3, 4));
    }

    #[test]
    fn lists() {
        let t = TrustedProxies::parse_list("127.0.0.1/32,10.0.0.0/8, ::1 ").unwrap();
        assert_eq!(t.to_string(), "127.0.0.1/32,10.0.0.0/8,::1/128");
        assert_eq!(t.ranges().len(), 3);
        assert!(t.contains(v4(127, 0, 0, 1)));
        assert!(t.contains(v4(10, 2, 3, 4)));
        assert!(t.contains(v6("::1")));
        assert!(!t.contains(v4(127, 0, 0, 2)));
        assert_eq!(t.to_string().parse::<TrustedProxies>().unwrap(), t);

        assert!(TrustedProxies::parse_list("").unwrap().is_empty());
        assert!(TrustedProxies::parse_list("  ").unwrap().is_empty());
        assert!(!TrustedProxies::default().contains(v4(127, 0, 0, 1)));

        for (input, entry) in [
            ("127.0.0.1/32,10.0.0.300/8", "10.0.0.300/8"),
            ("127.0.0.1,,10.0.0.0/8", ""),
            ("127.0.0.1,", ""),
            ("bogus\u{1b}[31m", "bogus\\u{1b}[31m"),
        ] {
            let e = TrustedProxies::parse_list(input).unwrap_err();
            assert_eq!(e.entry(), entry, "{input}");
            assert!(e.to_string().starts_with(&format!("bad entry \"{entry}\"")), "{e}");
        }
        let t: TrustedProxies = [Cidr::host(v4(1, 1, 1, 1))].into_iter().collect();
        assert!(t.contains(v4(1, 1, 1, 1)));
    }
}
