//! The client address from the headers proxies add: `X-Forwarded-For`, RFC 7239 `Forwarded` and
//! `X-Real-IP`, and [`resolve`], which decides which address to believe.
//!
//! Each proxy on the way appends the address it received the request from, so the list reads
//! client first, nearest proxy last, and only its right end can be trusted: anyone can send a
//! request that already carries `X-Forwarded-For: 1.2.3.4`. [`resolve`] therefore does what
//! nginx does with `set_real_ip_from` and `real_ip_recursive on`: it believes the header only when
//! the TCP peer is a trusted proxy, walks the hops from the right, skips those that are trusted
//! proxies too, and stops at the first that is not: that is the client.
//!
//! The parsers never allocate: [`resolve`] keeps the last [`MAX_HOPS`] hops in a fixed array,
//! and a header whose lines add up to more than [`MAX_HEADER_BYTES`] is not read at all.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::edge::{ConfigError, TrustedProxies};

/// The most hops [`resolve`] examines. A longer chain of trusted proxies stops there with
/// [`HeaderProblem::TooManyHops`]; real chains have a handful.
pub const MAX_HOPS: usize = 64;

/// The most bytes, over all its lines, a forwarding header may have to be read.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The most lines (repeated header fields) a forwarding header may have to be read.
pub const MAX_HEADER_LINES: usize = 16;

const EXPECTED_HEADER: &str = "x-forwarded-for, forwarded or x-real-ip, each at most once";

/// A header that names the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`: addresses, IPv4 with an optional port,
    /// IPv6 bare or in brackets with an optional port, or `unknown`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
    /// `X-Real-IP: client`: one address, set (overwritten) by the nearest proxy.
    XRealIp,
}

impl ForwardedHeader {
    const ALL: [ForwardedHeader; 3] =
        [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded, ForwardedHeader::XRealIp];

    /// The header's name, lowercase.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
            ForwardedHeader::XRealIp => "x-real-ip",
        }
    }

    /// Parses an order such as `x-forwarded-for,forwarded,x-real-ip` (names case-insensitive,
    /// whitespace around them ignored; empty or all-blank: none, headers are never read).
    /// The error names the first entry that is not one of the three, or is one repeated.
    pub fn parse_list(s: &str) -> Result<Vec<ForwardedHeader>, ConfigError> {
        let mut list: Vec<ForwardedHeader> = Vec::new();
        if s.trim().is_empty() {
            return Ok(list);
        }
        for entry in s.split(',') {
            let kind: ForwardedHeader = entry.trim().parse()?;
            if list.contains(&kind) {
                return Err(ConfigError::new(entry.trim(), EXPECTED_HEADER));
            }
            list.push(kind);
        }
        Ok(list)
    }

    /// The header named `name` (case-insensitive), without allocating.
    fn from_name(name: &str) -> Option<ForwardedHeader> {
        ForwardedHeader::ALL.into_iter().find(|h| h.name().eq_ignore_ascii_case(name))
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for ForwardedHeader {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<ForwardedHeader, ConfigError> {
        ForwardedHeader::from_name(s).ok_or_else(|| ConfigError::new(s, EXPECTED_HEADER))
    }
}

impl fmt::Display for ForwardedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hop {
    /// An address (its port, if any, dropped; IPv4-mapped IPv6 given as IPv4).
    Addr(IpAddr),
    /// `unknown`, an RFC 7239 obfuscated identifier (`_hidden`), or a `Forwarded` element
    /// without `for`: a proxy chose not to say.
    Unknown,
    /// Not an address in any form the header allows.
    Malformed,
}

/// Where [`Resolved::addr`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The TCP peer: it is not a trusted proxy, sent none of the headers asked for, or the
    /// header's nearest hop was unusable.
    TcpPeer,
    /// A hop of this header.
    Header(ForwardedHeader),
}

/// Why the walk stopped before reaching an untrusted hop. With any of these the address is the
/// last trusted one seen (the TCP peer if none); log it at debug level, or refuse the
/// connection where every client must be named by a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The header is present but lists no hop (only blanks and commas).
    Empty,
    /// A hop is `unknown` or obfuscated: the proxy hides who is behind it.
    UnknownHop,
    /// A hop does not parse (or `X-Real-IP` came twice): the proxy or something before it wrote
    /// garbage.
    MalformedHop,
    /// More than [`MAX_HOPS`] hops, all trusted.
    TooManyHops,
    /// The header has more than [`MAX_HEADER_BYTES`] bytes or [`MAX_HEADER_LINES`] lines; it was
    /// not read.
    TooLarge,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolved {
    /// The client's address (IPv4-mapped IPv6 given as IPv4).
    pub addr: IpAddr,
    /// Where it came from.
    pub source: Source,
    /// Whether the TCP peer is a trusted proxy (if not, no header was looked at).
    pub peer_trusted: bool,
    /// The header that was read: the first in the order given that the request carries.
    pub header: Option<ForwardedHeader>,
    /// Why the walk stopped early, if it did.
    pub problem: Option<HeaderProblem>,
    /// The port the hop that gave [`Resolved::addr`] named, when `source` is a header and the
    /// hop carried a numeric port (`1.2.3.4:5678`, `for="[2001:db8::1]:4711"`); `None` for a
    /// hop without one, an RFC 7239 obfuscated port (`_abc`), or the TCP peer.
    pub port: Option<u16>,
}

/// Finds the client's address.
///
/// `tcp_peer` is the connection's peer address (the source a PROXY header gave, when the
/// listener requires one and the connection's real peer is trusted). `headers` are the request's
/// header fields in order, as [`Request::headers`](crate::handshake::Request::headers) gives them.
/// `order` lists the headers to consult: the first one present is read, the others ignored.
///
/// List only headers that every trusted proxy sets or appends to: a header the proxy passes
/// through untouched is whatever the client wrote. The walk over the chosen header's hops
/// (repeated fields joined in order, RFC 9110 section 5.3):
/// - the TCP peer is not trusted: it is the client, headers are ignored;
/// - hops are read right to left; a trusted hop is skipped, the first untrusted one is the
///   client; if all are trusted, the leftmost is;
/// - an `unknown`, obfuscated or malformed hop ends the walk, and the client is the last trusted
///   address seen (the hop to its right, or the TCP peer). Like nginx, we do not skip past a hop
///   we cannot check: what lies left of it was written by someone we cannot vouch for.
pub fn resolve<'h>(
    tcp_peer: IpAddr,
    trusted: &TrustedProxies,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    order: &[ForwardedHeader],
) -> Resolved {
    let mut out = Resolved {
        addr: tcp_peer.to_canonical(),
        source: Source::TcpPeer,
        peer_trusted: trusted.contains(tcp_peer),
        header: None,
        problem: None,
        port: None,
    };
    if !out.peer_trusted || order.is_empty() {
        return out;
    }
    let mut lines = Lines::default();
    for (name, value) in headers {
        if let Some(kind) = ForwardedHeader::from_name(name) {
            lines.push(kind, value);
        }
    }
    let Some(&kind) = order.iter().find(|k| lines.count[k.index()] > 0) else { return out };
    out.header = Some(kind);
    let k = kind.index();
    if lines.count[k] > MAX_HEADER_LINES || lines.bytes[k] > MAX_HEADER_BYTES {
        out.problem = Some(HeaderProblem::TooLarge);
        return out;
    }

    // Keep the last MAX_HOPS hops, which are all the walk can reach.
    let mut ring = [(Hop::Unknown, None); MAX_HOPS];
    let mut total = 0usize;
    let mut keep = |hop| {
        ring[total % MAX_HOPS] = hop;
        total += 1;
    };
    let stored = &lines.values[k][..lines.count[k]];
    match kind {
        ForwardedHeader::XForwardedFor => {
            stored.iter().flat_map(|&v| x_forwarded_for_nodes(v)).for_each(&mut keep)
        }
        ForwardedHeader::Forwarded => {
            stored.iter().flat_map(|&v| forwarded_nodes(v)).for_each(&mut keep)
        }
        ForwardedHeader::XRealIp if stored.len() > 1 => keep((Hop::Malformed, None)),
        ForwardedHeader::XRealIp => keep(x_real_ip_node(stored[0])),
    }

    for i in 0..total.min(MAX_HOPS) {
        match ring[(total - 1 - i) % MAX_HOPS] {
            (Hop::Addr(ip), port) => {
                out.addr = ip;
                out.port = port;
                out.source = Source::Header(kind);
                if !trusted.contains(ip) {
                    return out;
                }
            }
            (Hop::Unknown, _) => {
                out.problem = Some(HeaderProblem::UnknownHop);
                return out;
            }
            (Hop::Malformed, _) => {
                out.problem = Some(HeaderProblem::MalformedHop);
                return out;
            }
        }
    }
    if total == 0 {
        out.problem = Some(HeaderProblem::Empty);
    } else if total > MAX_HOPS {
        out.problem = Some(HeaderProblem::TooManyHops);
    }
    out
}

/// The values of each forwarding header, without copying them.
#[derive(Default)]
struct Lines<'h> {
    values: [[&'h [u8]; MAX_HEADER_LINES]; 3],
    count: [usize; 3],
    bytes: [usize; 3],
}

impl<'h> Lines<'h> {
    fn push(&mut self, kind: ForwardedHeader, value: &'h [u8]) {
        let k = kind.index();
        if let Some(slot) = self.values[k].get_mut(self.count[k]) {
            *slot = value;
        }
        self.count[k] = self.count[k].saturating_add(1);
        self.bytes[k] = self.bytes[k].saturating_add(value.len());
    }
}

/// The hops of one `X-Forwarded-For` value, left to right; empty list elements are skipped.
pub fn x_forwarded_for(value: &[u8]) -> impl Iterator<Item = Hop> + '_ {
    x_forwarded_for_nodes(value).map(|(hop, _)| hop)
}

/// A hop and the numeric port it named, if any.
type Node = (Hop, Option<u16>);

fn x_forwarded_for_nodes(value: &[u8]) -> impl Iterator<Item = Node> + '_ {
    value.split(|&b| b == b',').map(trim).filter(|e| !e.is_empty()).map(|e| node(e, false))
}

/// The hops of one RFC 7239 `Forwarded` value, one per element, left to right; empty elements
/// are skipped. An element's `for` parameter gives the hop (an element without one is
/// [`Hop::Unknown`]); other parameters are checked for syntax and ignored. Commas and semicolons
/// inside quoted strings do not split.
pub fn forwarded(value: &[u8]) -> impl Iterator<Item = Hop> + '_ {
    forwarded_nodes(value).map(|(hop, _)| hop)
}

fn forwarded_nodes(value: &[u8]) -> impl Iterator<Item = Node> + '_ {
    QuoteAwareSplit { rest: Some(value), sep: b',' }
        .map(trim)
        .filter(|e| !e.is_empty())
        .map(forwarded_element)
}

/// The address of an `X-Real-IP` value (one address, in the forms `X-Forwarded-For` allows).
pub fn x_real_ip(value: &[u8]) -> Hop {
    x_real_ip_node(value).0
}

fn x_real_ip_node(value: &[u8]) -> Node {
    match trim(value) {
        [] => (Hop::Malformed, None),
        v => node(v, false),
    }
}

fn forwarded_element(element: &[u8]) -> Node {
    const MALFORMED: Node = (Hop::Malformed, None);
    let mut hop = None;
    for pair in (QuoteAwareSplit { rest: Some(element), sep: b';' }).map(trim) {
        if pair.is_empty() {
            continue; // RFC 7239 grammar: `[ forwarded-pair ] *( ";" [ forwarded-pair ] )`
        }
        let Some(eq) = pair.iter().position(|&b| b == b'=') else { return MALFORMED };
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return MALFORMED;
        }
        let mut buf = [0u8; 64];
        let text: &[u8] = if value.first() == Some(&b'"') {
            match unquote(value, &mut buf) {
                Some(n) if n <= buf.len() => &buf[..n],
                // Too long for a node; fine for any other parameter.
                Some(_) if !name.eq_ignore_ascii_case(b"for") => &[],
                _ => return MALFORMED,
            }
        } else if !value.is_empty() && value.iter().all(|&b| is_tchar(b)) {
            value
        } else {
            return MALFORMED;
        };
        if name.eq_ignore_ascii_case(b"for") {
            if hop.is_some() {
                return MALFORMED; // RFC 7239 section 4: a parameter at most once
            }
            hop = Some(node(text, true));
        }
    }
    hop.unwrap_or((Hop::Unknown, None))
}

/// Parses a node: `1.2.3.4`, `1.2.3.4:80`, `[v6]`, `[v6]:80`, `unknown` (with an optional
/// port), and either a bare IPv6 address (`X-Forwarded-For`, `X-Real-IP`) or an obfuscated
/// identifier and port (`Forwarded`, RFC 7239 section 6). The port is given when it is a number.
fn node(t: &[u8], rfc7239: bool) -> Node {
    const MALFORMED: Node = (Hop::Malformed, None);
    let colons = t.iter().filter(|&&b| b == b':').count();
    let (host, port) = if t.first() == Some(&b'[') {
        let Some(close) = t.iter().position(|&b| b == b']') else { return MALFORMED };
        t.split_at(close + 1)
    } else if colons == 1 {
        t.split_at(t.iter().position(|&b| b == b':').unwrap_or(t.len()))
    } else {
        // No port: an IPv4 address or name, or a bare IPv6 address.
        (t, &[][..])
    };
    let mut number = None;
    if let Some(port) = port.strip_prefix(b":") {
        let digits = !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit);
        // At most five digits: the fold cannot overflow.
        number = digits
            .then(|| port.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0')))
            .and_then(|v| u16::try_from(v).ok());
        if number.is_none() && !(rfc7239 && is_obfuscated(port)) {
            return MALFORMED;
        }
    } else if !port.is_empty() {
        return MALFORMED;
    }
    if host.eq_ignore_ascii_case(b"unknown") || rfc7239 && is_obfuscated(host) {
        return (Hop::Unknown, None);
    }
    let Ok(text) = std::str::from_utf8(host) else { return MALFORMED };
    let addr = if let Some(inner) = text.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<Ipv6Addr>().map(IpAddr::V6).ok()
    } else if text.contains(':') {
        // Only reached with several colons and no brackets, which RFC 7239 does not allow.
        (!rfc7239).then(|| text.parse::<Ipv6Addr>().map(IpAddr::V6).ok()).flatten()
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4).ok()
    };
    addr.map_or(MALFORMED, |a| (Hop::Addr(a.to_canonical()), number))
}

/// RFC 7239 section 6.3: `"_" 1*( ALPHA / DIGIT / "." / "_" / "-" )`.
fn is_obfuscated(t: &[u8]) -> bool {
    t.len() > 1
        && t[0] == b'_'
        && t.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// RFC 9110 section 5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The content of the quoted-string that is all of `v` (RFC 9110 section 5.6.4), unescaped into
/// `out` as far as it fits; returns its full length. `None` if `v` is not one quoted-string.
fn unquote(v: &[u8], out: &mut [u8]) -> Option<usize> {
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut n = 0;
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        let c = match b {
            b'\\' => *bytes.next().filter(|&&e| e == b'\t' || e >= 0x20 && e != 0x7f)?,
            b'"' => return None,
            b'\t' | 0x20..=0x7e | 0x80..=0xff => b,
            _ => return None,
        };
        if let Some(slot) = out.get_mut(n) {
            *slot = c;
        }
        n += 1;
    }
    Some(n)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Splits at `sep` outside quoted strings; a backslash inside quotes escapes the next byte.
/// An unterminated quote runs to the end, making the last piece malformed.
struct QuoteAwareSplit<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> Iterator for QuoteAwareSplit<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in s.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == self.sep && !quoted => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ForwardedHeader::{Forwarded as Fwd, XForwardedFor as Xff, XRealIp as Xri};

    fn a(s: &str) -> Hop {
        Hop::Addr(s.parse().unwrap())
    }

    const U: Hop = Hop::Unknown;
    const M: Hop = Hop::Malformed;

    #[test]
    fn header_names() {
        assert_eq!(
            ForwardedHeader::parse_list("x-forwarded-for,forwarded,x-real-ip").unwrap(),
            [Xff, Fwd, Xri]
        );
        assert_eq!(ForwardedHeader::parse_list(" X-Real-IP , Forwarded").unwrap(), [Xri, Fwd]);
        assert_eq!(ForwardedHeader::parse_list("").unwrap(), []);
        for (input, entry) in [
            ("x-forwarded-for,x-forwarded-for", "x-forwarded-for"),
            ("via", "via"),
            ("forwarded,", ""),
        ] {
            let e = ForwardedHeader::parse_list(input).unwrap_err();
            assert_eq!(e.entry(), entry, "{input}");
            assert!(e.to_string().contains("x-forwarded-for, forwarded or x-real-ip"), "{e}");
        }
        for h in ForwardedHeader::ALL {
            assert_eq!(h.to_string().parse::<ForwardedHeader>().unwrap(), h);
        }
    }

    #[test]
    fn x_forwarded_for_values() {
        let table: &[(&str, &[Hop])] = &[
            ("1.2.3.4", &[a("1.2.3.4")]),
            ("1.2.3.4, 10.0.0.1", &[a("1.2.3.4"), a("10.0.0.1")]),
            (" 1.2.3.4 ,\t10.0.0.1 ", &[a("1.2.3.4"), a("10.0.0.1")]),
            ("1.2.3.4,,  ,5.6.7.8,", &[a("1.2.3.4"), a("5.6.7.8")]),
            ("1.2.3.4:5678", &[a("1.2.3.4")]),
            ("[2001:db8::1]:4711", &[a("2001:db8::1")]),
            ("[2001:db8::1]", &[a("2001:db8::1")]),
            ("2001:db8::1", &[a("2001:db8::1")]),
            ("::ffff:1.2.3.4", &[a("1.2.3.4")]),
            ("unknown, UNKNOWN:80, 1.2.3.4", &[U, U, a("1.2.3.4")]),
            ("", &[]),
            (" , ", &[]),
            ("1.2.3.4:99999", &[M]),
            ("1.2.3.4:", &[M]),
            ("1.2.3.4:8a", &[M]),
            ("1.2.3", &[M]),
            ("01.2.3.4", &[M]),
            ("example.com", &[M]),
            ("[::1", &[M]),
            ("[::1]x", &[M]),
            ("[1.2.3.4]", &[M]),
            ("_hidden", &[M]),
            ("1.2.3.4 5.6.7.8", &[M]),
            ("fe80::1%eth0", &[M]),
            ("\"1.2.3.4\"", &[M]),
            ("\u{ff}1.2.3.4", &[M]),
        ];
        for &(value, hops) in table {
            assert_eq!(x_forwarded_for(value.as_bytes()).collect::<Vec<_>>(), hops, "{value:?}");
        }
        assert_eq!(
            x_forwarded_for(b"1.2.3.4,\xff,5.6.7.8").collect::<Vec<_>>(),
            [a("1.2.3.4"), M, a("5.6.7.8")]
        );
    }

    #[test]
    fn forwarded_values() {
        let long = "x".repeat(100);
        let long_host = format!("host=\"{long}\";for=1.2.3.4");
        let long_for = format!("for=\"{long}\"");
        let table: &[(&str, &[Hop])] = &[
            // RFC 7239 section 4 and 7.4 examples.
            ("for=192.0.2.60;proto=http;by=203.0.113.43", &[a("192.0.2.60")]),
            ("for=192.0.2.43, for=198.51.100.17", &[a("192.0.2.43"), a("198.51.100.17")]),
            ("For=\"[2001:db8:cafe::17]:4711\"", &[a("2001:db8:cafe::17")]),
            ("for=\"_gazonk\"", &[U]),
            (
                "for=192.0.2.43, for=\"[2001:db8:cafe::17]\", for=unknown",
                &[a("192.0.2.43"), a("2001:db8:cafe::17"), U],
            ),
            ("for=_hidden, for=_SEVKISEK", &[U, U]),
            ("for=\"192.0.2.43:47011\"", &[a("192.0.2.43")]),
            ("FOR=192.0.2.43", &[a("192.0.2.43")]),
            ("for=\"[::1]:_port\"", &[a("::1")]),
            ("for=\"unknown:80\"", &[U]),
            ("for=\"1.2.3.\\4\"", &[a("1.2.3.4")]),
            ("proto=https;by=1.2.3.4", &[U]),
            ("by=\"x,y\";for=1.2.3.4, for=5.6.7.8", &[a("1.2.3.4"), a("5.6.7.8")]),
            ("for=1.2.3.4;by=\"x;y\"", &[a("1.2.3.4")]),
            ("for=1.2.3.4; proto=http", &[a("1.2.3.4")]),
            ("for=1.2.3.4;;proto=http", &[a("1.2.3.4")]),
            (", ,for=1.2.3.4,", &[a("1.2.3.4")]),
            (&long_host, &[a("1.2.3.4")]),
            ("", &[]),
            // Malformed.
            (&long_for, &[M]),
            ("for=1.2.3.4;for=5.6.7.8", &[M]),
            ("for=[2001:db8::1]", &[M]),
            ("for=\"2001:db8::1\"", &[M]),
            ("for=1.2.3.4:80", &[M]),
            ("for=\"1.2.3.4", &[M]),
            ("for=\"1.2.3.4, for=5.6.7.8", &[M]),
            ("for=\"\\\"", &[M]),
            ("for=\"1.2.3.4\"x", &[M]),
            ("for=\"1.2\"3.4\"", &[M]),
            ("for=\"\"", &[M]),
            ("for=", &[M]),
            ("for=1.2.3.4;host", &[M]),
            ("for=1.2.3.4;=x", &[M]),
            ("for=1.2.3.4;proto=", &[M]),
            ("for=1.2.3.4;pro to=http", &[M]),
            ("for=\"_\"", &[M]),
            ("for=\"_a b\"", &[M]),
            ("for=\"1.2.3.4\u{1}\"", &[M]),
            ("for=1.2.3.4, garbage, for=5.6.7.8", &[a("1.2.3.4"), M, a("5.6.7.8")]),
        ];
        for &(value, hops) in table {
            assert_eq!(forwarded(value.as_bytes()).collect::<Vec<_>>(), hops, "{value:?}");
        }
    }

    #[test]
    fn x_real_ip_values() {
        let table: &[(&str, Hop)] = &[
            ("1.2.3.4", a("1.2.3.4")),
            (" 1.2.3.4 ", a("1.2.3.4")),
            ("1.2.3.4:80", a("1.2.3.4")),
            ("::1", a("::1")),
            ("[::1]:80", a("::1")),
            ("unknown", U),
            ("", M),
            ("1.2.3.4, 5.6.7.8", M),
            ("for=1.2.3.4", M),
        ];
        for &(value, hop) in table {
            assert_eq!(x_real_ip(value.as_bytes()), hop, "{value:?}");
        }
    }

    fn run(peer: &str, headers: &[(&str, &str)], order: &[ForwardedHeader]) -> Resolved {
        let trusted = TrustedProxies::parse_list("10.0.0.0/8,::1").unwrap();
        let headers = headers.iter().map(|&(n, v)| (n, v.as_bytes()));
        resolve(peer.parse().unwrap(), &trusted, headers, order)
    }

    fn short(h: Option<ForwardedHeader>) -> &'static str {
        match h {
            Some(Xff) => "xff",
            Some(Fwd) => "fwd",
            Some(Xri) => "xri",
            None => "-",
        }
    }

    /// `addr source header problem`, e.g. `10.0.0.2 xff xff MalformedHop` or `1.2.3.4 peer - -`.
    fn summary(r: &Resolved) -> String {
        let source = match r.source {
            Source::TcpPeer => "peer",
            Source::Header(h) => short(Some(h)),
        };
        let problem = r.problem.map_or("-".to_owned(), |p| format!("{p:?}"));
        format!("{} {source} {} {problem}", r.addr, short(r.header))
    }

    #[test]
    fn resolves() {
        const ALL: &[ForwardedHeader] = &[Xff, Fwd, Xri];
        // Trusted: 10.0.0.0/8 and ::1. Header lines are separated by `|`.
        let table: &[(&str, &str, &[ForwardedHeader], &str)] = &[
            // One client behind one trusted proxy; header names are case-insensitive.
            ("10.0.0.1", "X-Forwarded-For: 1.2.3.4", ALL, "1.2.3.4 xff xff -"),
            ("10.0.0.1", "x-forwarded-for: 1.2.3.4", ALL, "1.2.3.4 xff xff -"),
            // What the client wrote itself is left of the first untrusted hop: ignored.
            ("10.0.0.1", "X-Forwarded-For: 6.6.6.6, 1.2.3.4, 10.0.0.2", ALL, "1.2.3.4 xff xff -"),
            // Repeated lines are one list, in order.
            (
                "10.0.0.1",
                "X-Forwarded-For: 6.6.6.6|X-Forwarded-For: 1.2.3.4, 10.0.0.2",
                ALL,
                "1.2.3.4 xff xff -",
            ),
            (
                "10.0.0.1",
                "X-Forwarded-For: 1.2.3.4|Host: x|X-Forwarded-For: 10.0.0.2",
                ALL,
                "1.2.3.4 xff xff -",
            ),
            // Every hop trusted: the leftmost.
            ("10.0.0.1", "X-Forwarded-For: 10.0.0.3, 10.0.0.2", ALL, "10.0.0.3 xff xff -"),
            // A hop we cannot check ends the walk at the last trusted address.
            (
                "10.0.0.1",
                "X-Forwarded-For: 1.2.3.4, bad, 10.0.0.2",
                ALL,
                "10.0.0.2 xff xff MalformedHop",
            ),
            ("10.0.0.1", "X-Forwarded-For: 1.2.3.4, bad", ALL, "10.0.0.1 peer xff MalformedHop"),
            (
                "10.0.0.1",
                "X-Forwarded-For: 1.2.3.4, unknown, 10.0.0.2",
                ALL,
                "10.0.0.2 xff xff UnknownHop",
            ),
            ("10.0.0.1", "X-Forwarded-For:  , ", ALL, "10.0.0.1 peer xff Empty"),
            (
                "10.0.0.1",
                "Forwarded: for=_hidden, for=10.0.0.2",
                ALL,
                "10.0.0.2 fwd fwd UnknownHop",
            ),
            // An untrusted peer's headers are not read.
            ("203.0.113.9", "X-Forwarded-For: 1.2.3.4", ALL, "203.0.113.9 peer - -"),
            ("::ffff:203.0.113.9", "X-Forwarded-For: 1.2.3.4", ALL, "203.0.113.9 peer - -"),
            // A trusted peer without headers, or without the ones asked for.
            ("10.0.0.1", "", ALL, "10.0.0.1 peer - -"),
            ("10.0.0.1", "X-Forwarded-For: 1.2.3.4", &[Fwd], "10.0.0.1 peer - -"),
            ("10.0.0.1", "X-Forwarded-For: 1.2.3.4", &[], "10.0.0.1 peer - -"),
            // The first header in the order that is present is the one read.
            (
                "10.0.0.1",
                "X-Forwarded-For: 1.1.1.1|Forwarded: for=2.2.2.2",
                &[Fwd, Xff],
                "2.2.2.2 fwd fwd -",
            ),
            (
                "10.0.0.1",
                "X-Forwarded-For: 1.1.1.1|Forwarded: for=2.2.2.2",
                &[Xff, Fwd],
                "1.1.1.1 xff xff -",
            ),
            (
                "::1",
                "Forwarded: for=\"[2001:db8::1]:4711\";proto=https",
                ALL,
                "2001:db8::1 fwd fwd -",
            ),
            ("::ffff:10.0.0.1", "X-Forwarded-For: ::ffff:1.2.3.4", ALL, "1.2.3.4 xff xff -"),
            // X-Real-IP: one address; a trusted one is still the answer (nothing left of it).
            ("10.0.0.1", "X-Real-IP: 1.2.3.4", ALL, "1.2.3.4 xri xri -"),
            ("10.0.0.1", "X-Real-IP: 10.0.0.5", ALL, "10.0.0.5 xri xri -"),
            (
                "10.0.0.1",
                "X-Real-IP: 1.2.3.4|X-Real-IP: 5.6.7.8",
                ALL,
                "10.0.0.1 peer xri MalformedHop",
            ),
            ("10.0.0.1", "X-Real-IP: ", ALL, "10.0.0.1 peer xri MalformedHop"),
        ];
        for &(peer, lines, order, want) in table {
            let headers: Vec<(&str, &str)> = lines
                .split('|')
                .filter(|l| !l.is_empty())
                .map(|l| l.split_once(':').map(|(n, v)| (n, v.trim_start())).unwrap())
                .collect();
            let r = run(peer, &headers, order);
            assert_eq!(summary(&r), want, "{peer} {lines:?} {order:?}");
            // 203.0.113.9 is the one untrusted peer in the table.
            assert_eq!(r.peer_trusted, !peer.ends_with("203.0.113.9"), "{peer}");
        }
    }

    #[test]
    fn limits() {
        let chain = |n: usize| {
            (0..n).map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1)).collect::<Vec<_>>()
        };
        let xff = |value: &str| run("10.0.0.1", &[("X-Forwarded-For", value)], &[Xff]);
        // 64 trusted hops: the leftmost, no problem.
        assert_eq!(summary(&xff(&chain(64).join(", "))), "10.1.0.1 xff xff -");
        // A client beyond 64 trusted hops is out of reach: stop at the 64th from the right.
        let long = format!("1.2.3.4, {}", chain(65).join(", "));
        assert_eq!(summary(&xff(&long)), "10.1.0.2 xff xff TooManyHops");
        // An untrusted hop within reach ends the walk normally, however long the header.
        let long = format!("{}, 1.2.3.4, 10.0.0.2", chain(200).join(","));
        assert_eq!(summary(&xff(&long)), "1.2.3.4 xff xff -");
        // Over the byte limit: not read at all.
        let big = format!("{}1.2.3.4", " ".repeat(MAX_HEADER_BYTES - 6));
        assert_eq!(summary(&xff(&big)), "10.0.0.1 peer xff TooLarge");
        assert_eq!(big[1..].len(), MAX_HEADER_BYTES);
        assert_eq!(summary(&xff(&big[1..])), "1.2.3.4 xff xff -");
        let lines = vec![("X-Forwarded-For", "1.2.3.4"); MAX_HEADER_LINES + 1];
        assert_eq!(summary(&run("10.0.0.1", &lines, &[Xff])), "10.0.0.1 peer xff TooLarge");
        let r = run("10.0.0.1", &lines[..MAX_HEADER_LINES], &[Xff]);
        assert_eq!(summary(&r), "1.2.3.4 xff xff -");
    }

    #[test]
    fn ports() {
        let port = |name: &str, value: &str| run("10.0.0.1", &[(name, value)], &[Xff, Fwd, Xri]);
        let table: &[(&str, &str, &str, Option<u16>)] = &[
            ("X-Forwarded-For", "1.2.3.4:5678", "1.2.3.4", Some(5678)),
            ("X-Forwarded-For", "1.2.3.4", "1.2.3.4", None),
            ("X-Forwarded-For", "[2001:db8::1]:65535", "2001:db8::1", Some(65535)),
            ("X-Forwarded-For", "2001:db8::1", "2001:db8::1", None),
            ("X-Forwarded-For", "1.2.3.4:0", "1.2.3.4", Some(0)),
            // The port of the hop that is the answer, not of the ones skipped.
            ("X-Forwarded-For", "1.2.3.4:80, 10.0.0.2:81", "1.2.3.4", Some(80)),
            ("X-Forwarded-For", "1.2.3.4, 10.0.0.2:81", "1.2.3.4", None),
            ("X-Forwarded-For", "bad, 10.0.0.2:81", "10.0.0.2", Some(81)),
            ("X-Forwarded-For", "1.2.3.4:99999", "10.0.0.1", None),
            ("Forwarded", "for=\"192.0.2.43:47011\"", "192.0.2.43", Some(47011)),
            ("Forwarded", "for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17", Some(4711)),
            ("Forwarded", "for=\"[::2]:_port\"", "::2", None),
            ("Forwarded", "for=192.0.2.43", "192.0.2.43", None),
            ("X-Real-IP", "[::2]:80", "::2", Some(80)),
        ];
        for &(name, value, addr, want) in table {
            let r = port(name, value);
            assert_eq!((r.addr.to_string().as_str(), r.port), (addr, want), "{name}: {value}");
        }
        // The TCP peer's port is the caller's to know.
        assert_eq!(run("203.0.113.9", &[("X-Forwarded-For", "1.2.3.4:80")], &[Xff]).port, None);
    }
}
