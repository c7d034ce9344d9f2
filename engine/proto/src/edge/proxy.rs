//! The HAProxy PROXY protocol, versions 1 and 2 (HAProxy's `doc/proxy-protocol.txt`).
//!
//! A TCP load balancer that cannot add HTTP headers (or does not parse HTTP at all) sends one
//! PROXY header as the very first bytes of the connection, naming the client's address and port
//! and the address it connected to. [`parse`] reads it from the bytes received so far, which may
//! be any prefix of the header: `Ok(None)` asks for more, and an error comes as soon as the bytes
//! can no longer start a valid header (the signature, a character or a length no header has
//! there), so a client that speaks WebSocket directly to a PROXY port is refused at its first
//! byte. [`ProxyHeader::encode`] writes either version, for tests and the load generator.
//!
//! Only TCP over IPv4 and IPv6 addresses are reported. A version 2 header for UDP, UNIX sockets
//! or an unspecified family, a `LOCAL` command (the proxy's own health check) and a version 1
//! `UNKNOWN` line are valid and carry no addresses: the connection's own endpoints apply.
//! Version 2 TLVs are checked to fit the header, then skipped (the CRC32C TLV is not verified).
//!
//! A listener must either require the header on every connection or never accept one: the
//! protocol offers no way to tell a proxied connection from a direct one that forges a header.
//! Accept it only from trusted peers (see [`TrustedProxies`](crate::edge::TrustedProxies)).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses).
pub const V1_MAX_LEN: usize = 107;

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 2 header accepted, the 16 fixed bytes included. The protocol allows
/// 65,551; address blocks are at most 216 bytes, and this leaves room for TLVs (ALPN, authority,
/// TLS details, cloud endpoint ids) while keeping what a connection buffers before its first
/// WebSocket byte small.
pub const V2_MAX_LEN: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyHeader {
    /// Which version of the protocol the header used.
    pub version: Version,
    /// Whether the connection is relayed for a client or is the proxy's own.
    pub command: Command,
    /// The client's address and port; `None` when the header carries no TCP addresses (see the
    /// module documentation): use the connection's peer address then.
    pub source: Option<SocketAddr>,
    /// The address and port the client connected to; `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
}

/// The PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Version {
    /// The text line, `PROXY TCP4 ...\r\n`.
    V1,
    /// The binary header starting with [`V2_SIGNATURE`].
    V2,
}

/// The version 2 command (a version 1 header is always [`Command::Proxy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The proxy opened the connection for itself (a health check): use the real endpoints.
    Local,
    /// The connection is relayed on behalf of the client in [`ProxyHeader::source`].
    Proxy,
}

/// Why the bytes are not a PROXY header. Every variant means the same for the server: the peer
/// is not speaking the protocol this listener requires, so close the connection without
/// answering (the specification says to abort; sending HTTP would tell a prober nothing useful).
/// The variant says what to look at in the proxy's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The first bytes match neither `PROXY ` nor the version 2 signature: a client connected
    /// directly, or the proxy in front does not send the PROXY protocol.
    NotProxy,
    /// A version 1 line without its CRLF within [`V1_MAX_LEN`] bytes.
    V1TooLong,
    /// A version 1 protocol other than `TCP4`, `TCP6` or `UNKNOWN`.
    V1Protocol,
    /// A version 1 line with missing or extra fields, a space too many, or a lone CR or LF.
    V1Syntax,
    /// A version 1 address that is not a canonical address of the family named.
    V1Address,
    /// A version 1 port that is not a decimal number in 0..=65535 without leading zeros.
    V1Port,
    /// A version 2 header whose version nibble is not 2.
    V2Version,
    /// A version 2 command other than `LOCAL` (0) and `PROXY` (1).
    V2Command,
    /// A version 2 address family above 3 (UNIX) or transport above 2 (DGRAM).
    V2Family,
    /// A version 2 length too small for the addresses of the family given.
    V2AddressLength,
    /// A version 2 header longer than [`V2_MAX_LEN`].
    V2TooLong,
    /// Version 2 TLVs that do not exactly fill the rest of the header.
    V2Tlv,
}

/// Reads a PROXY header (either version) from the start of `buf`.
///
/// `Ok(Some((header, consumed)))`: the header takes the first `consumed` bytes; what follows is
/// the client's data (the HTTP upgrade request). `Ok(None)`: `buf` is a valid beginning, read
/// more and call again with all the bytes. `Err`: close the connection. The answer for a prefix
/// never contradicts the answer for the whole: once an error, the same error for every longer
/// buffer. Never reads past [`V1_MAX_LEN`] or [`V2_MAX_LEN`] bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyError::NotProxy);
    }
    if buf.len() <= V1_PREFIX.len() {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let start = V1_PREFIX.len();
    let Some(end) = window[start..].iter().position(|&b| b == b'\r' || b == b'\n') else {
        v1_line(&window[start..], false)?;
        return if window.len() == V1_MAX_LEN { Err(ProxyError::V1TooLong) } else { Ok(None) };
    };
    let end = start + end;
    // Whatever ends the line, the fields before it were already judged as a prefix: judge them
    // the same way first, so that the answer for a longer buffer never contradicts a shorter one.
    let line = &buf[start..end];
    if window[end] == b'\n' {
        v1_line(line, false)?;
        return Err(ProxyError::V1Syntax);
    }
    if end + 2 > V1_MAX_LEN {
        v1_line(line, false)?;
        return Err(ProxyError::V1TooLong);
    }
    match buf.get(end + 1) {
        None => v1_line(line, false).map(|_| None),
        Some(b'\n') => Ok(v1_line(line, true)?.map(|h| (h, end + 2))),
        Some(_) => {
            v1_line(line, false)?;
            Err(ProxyError::V1Syntax)
        }
    }
}

/// Checks the line after `PROXY ` up to (not including) its CR. When `complete` is false it is
/// a prefix: the last field may still grow, so it is held only to its characters and length.
fn v1_line(line: &[u8], complete: bool) -> Result<Option<ProxyHeader>, ProxyError> {
    let n_fields = line.iter().filter(|&&b| b == b' ').count() + 1;
    let mut fields = line.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    let v6 = match proto {
        b"TCP4" => false,
        b"TCP6" => true,
        // The specification: ignore whatever follows UNKNOWN up to the CRLF.
        b"UNKNOWN" => return Ok(complete.then_some(ProxyHeader::unknown(Version::V1))),
        p if !complete
            && n_fields == 1
            && [&b"TCP4"[..], b"TCP6", b"UNKNOWN"].iter().any(|k| k.starts_with(p)) =>
        {
            return Ok(None)
        }
        _ => return Err(ProxyError::V1Protocol),
    };
    let mut addrs = [None; 2];
    let mut ports = [0u16; 2];
    for (i, field) in fields.enumerate() {
        // Field i + 1 of the line is whole when a space follows it, or the line is complete.
        let whole = complete || i + 2 < n_fields;
        match i {
            0 | 1 => addrs[i] = v1_addr(field, v6, whole)?,
            2 | 3 => ports[i - 2] = v1_port(field, whole)?,
            _ => return Err(ProxyError::V1Syntax),
        }
    }
    if !complete {
        return Ok(None);
    }
    match addrs {
        [Some(s), Some(d)] if n_fields == 5 => Ok(Some(ProxyHeader {
            version: Version::V1,
            command: Command::Proxy,
            source: Some(SocketAddr::new(s, ports[0])),
            destination: Some(SocketAddr::new(d, ports[1])),
        })),
        _ => Err(ProxyError::V1Syntax),
    }
}

/// One address field; `Ok(None)` for an acceptable prefix of one.
fn v1_addr(field: &[u8], v6: bool, whole: bool) -> Result<Option<IpAddr>, ProxyError> {
    // 45: the longest IPv6 text, with a dotted IPv4 tail.
    let (max, ok): (usize, fn(&u8) -> bool) = if v6 {
        (45, |b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
    } else {
        (15, |b| b.is_ascii_digit() || *b == b'.')
    };
    if field.len() > max || !field.iter().all(ok) {
        return Err(ProxyError::V1Address);
    }
    if !whole {
        return Ok(None);
    }
    // ASCII by the check above. std's parsers take exactly the canonical forms the
    // specification asks for: no leading zeros in IPv4 octets, at most one `::` in IPv6.
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1Address)?;
    let addr = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    addr.map(Some).map_err(|_| ProxyError::V1Address)
}

/// One port field; any value for an acceptable prefix of one.
fn v1_port(field: &[u8], whole: bool) -> Result<u16, ProxyError> {
    let digits_ok = field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits_ok || (field.len() > 1 && field[0] == b'0') || (whole && field.is_empty()) {
        return Err(ProxyError::V1Port);
    }
    let value = field.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::V1Port)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else { return Ok(None) };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version);
    }
    let command = match ver_cmd & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => return Err(ProxyError::V2Command),
    };
    let Some(&fam) = buf.get(13) else { return Ok(None) };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(ProxyError::V2Family);
    }
    let Some(&[hi, lo]) = buf.get(14..16) else { return Ok(None) };
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong);
    }
    // A LOCAL header's block is discarded whole, as is one of an unspecified family or
    // transport: its layout is unknown. Otherwise the family fixes the address block's size.
    let addr_len = match (command, family, transport) {
        (Command::Local, _, _) | (_, 0, _) | (_, _, 0) => 0,
        (_, 1, _) => 12,
        (_, 2, _) => 36,
        _ => 216,
    };
    if len - 16 < addr_len {
        return Err(ProxyError::V2AddressLength);
    }
    let Some(block) = buf.get(16..len) else { return Ok(None) };
    let mut header = ProxyHeader::unknown(Version::V2);
    header.command = command;
    if addr_len > 0 {
        skip_tlvs(&block[addr_len..])?;
    }
    if transport == 1 && addr_len > 0 {
        let pair = match family {
            1 => {
                let ip = |at: usize| IpAddr::V4(Ipv4Addr::from(u32_at(block, at)));
                Some((ip(0), ip(4), 8))
            }
            2 => {
                let ip = |at: usize| IpAddr::V6(Ipv6Addr::from(u128_at(block, at)));
                Some((ip(0), ip(16), 32))
            }
            _ => None,
        };
        if let Some((s, d, p)) = pair {
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            header.source = Some(SocketAddr::new(s, port(p)));
            header.destination = Some(SocketAddr::new(d, port(p + 2)));
        }
    }
    Ok(Some((header, len)))
}

/// Walks type-length-value entries to the end of `tlvs`; each must fit exactly.
fn skip_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while let [_, hi, lo, ..] = *tlvs {
        let n = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = tlvs.get(n..).ok_or(ProxyError::V2Tlv)?;
    }
    if tlvs.is_empty() {
        Ok(())
    } else {
        Err(ProxyError::V2Tlv)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn u128_at(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    u128::from_be_bytes(a)
}

impl ProxyHeader {
    /// A header relaying a TCP connection from `source` (the client) to `destination`.
    pub fn new(version: Version, source: SocketAddr, destination: SocketAddr) -> ProxyHeader {
        ProxyHeader {
            version,
            command: Command::Proxy,
            source: Some(source),
            destination: Some(destination),
        }
    }

    /// A version 2 `LOCAL` header (the proxy's own connection, such as a health check).
    pub fn local() -> ProxyHeader {
        ProxyHeader { command: Command::Local, ..ProxyHeader::unknown(Version::V2) }
    }

    /// A relayed connection whose addresses the proxy cannot give (v1 `UNKNOWN`, v2 `PROXY`
    /// with the unspecified family).
    pub fn unknown(version: Version) -> ProxyHeader {
        ProxyHeader { version, command: Command::Proxy, source: None, destination: None }
    }

    /// Appends the header's wire form to `out`.
    ///
    /// Both addresses IPv4: `TCP4` / `AF_INET`. Otherwise an IPv4 one is written as its
    /// IPv4-mapped IPv6 address and the header is `TCP6` / `AF_INET6`. Without both addresses
    /// (or with `Local`), version 1 writes `PROXY UNKNOWN\r\n` (it has no `LOCAL`), version 2 an
    /// empty block of the unspecified family. [`parse`] reads back the same header, except that
    /// a version 1 `Local` comes back as [`ProxyHeader::unknown`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        let pair = match (self.command, self.source, self.destination) {
            (Command::Proxy, Some(s), Some(d)) => Some(same_family(s, d)),
            _ => None,
        };
        match self.version {
            Version::V1 => {
                let line = match pair {
                    None => "PROXY UNKNOWN\r\n".to_owned(),
                    Some((s, d)) => {
                        let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                        let (sp, dp) = (s.port(), d.port());
                        format!("PROXY {proto} {} {} {sp} {dp}\r\n", s.ip(), d.ip())
                    }
                };
                out.extend_from_slice(line.as_bytes());
            }
            Version::V2 => {
                out.extend_from_slice(&V2_SIGNATURE);
                out.push(0x20 | if self.command == Command::Local { 0 } else { 1 });
                let (fam, len): (u8, u16) = match pair {
                    None => (0x00, 0),
                    Some((s, _)) if s.is_ipv4() => (0x11, 12),
                    Some(_) => (0x21, 36),
                };
                out.push(fam);
                out.extend_from_slice(&len.to_be_bytes());
                if let Some((s, d)) = pair {
                    for ip in [s.ip(), d.ip()] {
                        match ip {
                            IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
                            IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
                        }
                    }
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
            }
        }
    }
}

/// Both addresses in one family: IPv4 only when both are.
fn same_family(s: SocketAddr, d: SocketAddr) -> (SocketAddr, SocketAddr) {
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(s), v6(d))
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::NotProxy => {
                "no PROXY protocol header: this listener requires one from the proxy in front \
                 (a client connected directly, or the proxy does not send it)"
            }
            ProxyError::V1TooLong => "PROXY v1 line without CRLF within 107 bytes",
            ProxyError::V1Protocol => "PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN",
            ProxyError::V1Syntax => {
                "PROXY v1 line must be `PROXY TCP4|TCP6 src dst sport dport` with single spaces \
                 and CRLF"
            }
            ProxyError::V1Address => "PROXY v1 address is not a canonical address of its family",
            ProxyError::V1Port => "PROXY v1 port must be 0..=65535 without leading zeros",
            ProxyError::V2Version => "PROXY v2 header with a version other than 2",
            ProxyError::V2Command => "PROXY v2 command must be LOCAL or PROXY",
            ProxyError::V2Family => "PROXY v2 address family or transport is not defined",
            ProxyError::V2AddressLength => "PROXY v2 length too short for its address family",
            ProxyError::V2TooLong => "PROXY v2 header over 4096 bytes: send fewer TLVs",
            ProxyError::V2Tlv => "PROXY v2 TLVs overrun or underfill the header",
        })
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected (source, destination), as text.
    type Addrs<'a> = Option<(&'a str, &'a str)>;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[ver_cmd, fam]);
        b.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        b.extend_from_slice(block);
        b
    }

    fn inet_block() -> Vec<u8> {
        vec![1, 2, 3, 4, 5, 6, 7, 8, 0x1f, 0x90, 0x01, 0xbb]
    }

    /// Parses `input` as if it arrived one byte at a time, asserting at every length that the
    /// answer agrees with the one for the whole input: `Ok(None)` before a header completes (or
    /// before the error shows), then the same header or the same error for every longer prefix.
    fn parse_every_split(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
        let whole = parse(input);
        let mut seen_err = None;
        for k in 0..=input.len() {
            let r = parse(&input[..k]);
            match (&whole, &r) {
                (Ok(Some((_, n))), _) if k < *n => assert_eq!(r, Ok(None), "at {k}"),
                (Ok(Some(_)), _) => assert_eq!(r, whole, "at {k}"),
                (Ok(None), _) => assert_eq!(r, Ok(None), "at {k}"),
                (Err(e), Err(got)) => {
                    assert_eq!(got, e, "at {k}");
                    seen_err = Some(k);
                }
                (Err(_), Ok(None)) => assert!(seen_err.is_none(), "error then None at {k}"),
                (Err(_), Ok(Some(_))) => panic!("header at {k} but error at the end: {r:?}"),
            }
        }
        whole
    }

    #[test]
    fn v1_valid() {
        let max6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let long6 = format!("PROXY TCP6 {max6} {max6} 65535 65535\r\n");
        let long_unknown = format!("PROXY UNKNOWN {max6} {max6} 65535 65535\r\n");
        assert_eq!((long6.len(), long_unknown.len()), (104, V1_MAX_LEN));
        let table: Vec<(&str, Addrs<'_>, usize)> = vec![
            (
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n",
                Some(("192.168.0.1:56324", "192.168.0.11:443")),
                47,
            ),
            (
                "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
                Some(("0.0.0.0:0", "255.255.255.255:65535")),
                44,
            ),
            ("PROXY TCP6 2001:db8::1 ::1 1 2\r\n", Some(("[2001:db8::1]:1", "[::1]:2")), 32),
            (
                "PROXY TCP6 ::ffff:1.2.3.4 ::1 80 443\r\n",
                Some(("[::ffff:1.2.3.4]:80", "[::1]:443")),
                38,
            ),
            (
                &long6,
                Some((
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                )),
                104,
            ),
            ("PROXY UNKNOWN\r\n", None, 15),
            ("PROXY UNKNOWN anything at all\r\n\x16\x03", None, 31),
            (&long_unknown, None, 107),
        ];
        for (input, addrs, consumed) in table {
            let (h, n) = parse_every_split(input.as_bytes()).unwrap().unwrap();
            assert_eq!(n, consumed, "{input:?}");
            assert_eq!((h.version, h.command), (Version::V1, Command::Proxy));
            assert_eq!(h.source, addrs.map(|a| sa(a.0)), "{input:?}");
            assert_eq!(h.destination, addrs.map(|a| sa(a.1)), "{input:?}");
        }
    }

    #[test]
    fn v1_malformed() {
        use ProxyError::*;
        let over = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        let table: Vec<(&str, ProxyError)> = vec![
            ("GET / HTTP/1.1\r\n", NotProxy),
            ("PROXY\r\n", NotProxy),
            ("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", NotProxy),
            ("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
            ("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
            ("PROXY UNKNOWNX\r\n", V1Protocol),
            ("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
            ("PROXY \r\n", V1Protocol),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1Syntax),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", V1Syntax),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1Syntax),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", V1Syntax),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1Syntax),
            ("PROXY TCP4\r\n", V1Syntax),
            ("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", V1Address),
            ("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", V1Address),
            ("PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", V1Address),
            ("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", V1Address),
            ("PROXY TCP4 ::1 ::1 1 2\r\n", V1Address),
            ("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", V1Address),
            ("PROXY TCP6 [::1] ::1 1 2\r\n", V1Address),
            ("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", V1Address),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", V1Port),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", V1Port),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", V1Port),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", V1Port),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n", V1Port),
            (&over, V1TooLong),
        ];
        for (input, expected) in table {
            assert_eq!(parse_every_split(input.as_bytes()), Err(expected), "{input:?}");
        }
        // Refused at the first byte that cannot start a header, not at the end of the line.
        assert_eq!(parse(b"G"), Err(NotProxy));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4x"), Err(V1Address));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999"), Err(V1Port));
        assert_eq!(parse(b"PROXY TCPX"), Err(V1Protocol));
        assert_eq!(parse(&[b'P'; 3]), Err(NotProxy));
        assert_eq!(parse(b"PROXY UNKNOWN"), Ok(None));
        // No CRLF within 107 bytes: an error at exactly 107, not before.
        let junk = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(parse(&junk.as_bytes()[..106]), Ok(None));
        assert_eq!(parse(&junk.as_bytes()[..107]), Err(V1TooLong));
    }

    #[test]
    fn v2_valid() {
        let mut tlvs = inet_block();
        tlvs.extend_from_slice(&[0x02, 0, 5, b'h', b'e', b'l', b'l', b'o', 0x04, 0, 0]);
        let mut six = vec![0; 36];
        six[15] = 1; // ::1
        six[16..32].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        six[32..].copy_from_slice(&[0, 80, 0xff, 0xff]);
        let tcp4 = Some(("1.2.3.4:8080", "5.6.7.8:443"));
        let table: Vec<(Vec<u8>, Command, Addrs<'_>)> = vec![
            (v2(0x21, 0x11, &inet_block()), Command::Proxy, tcp4),
            (v2(0x21, 0x11, &tlvs), Command::Proxy, tcp4),
            (v2(0x21, 0x21, &six), Command::Proxy, Some(("[::1]:80", "[2001:db8::2]:65535"))),
            (v2(0x20, 0x00, &[]), Command::Local, None),
            // LOCAL: the block is discarded, whatever it holds.
            (v2(0x20, 0x11, &[9; 5]), Command::Local, None),
            (v2(0x21, 0x00, &[]), Command::Proxy, None),
            (v2(0x21, 0x00, &[7; 7]), Command::Proxy, None),
            (v2(0x21, 0x10, &[]), Command::Proxy, None),
            (v2(0x21, 0x12, &inet_block()), Command::Proxy, None),
            (v2(0x21, 0x22, &six), Command::Proxy, None),
            (v2(0x21, 0x31, &[0; 216]), Command::Proxy, None),
            (v2(0x21, 0x32, &[0; 219]), Command::Proxy, None),
        ];
        for (input, command, addrs) in table {
            let mut with_data = input.clone();
            with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (h, n) = parse_every_split(&with_data).unwrap().unwrap();
            assert_eq!(n, input.len(), "{input:?}");
            assert_eq!((h.version, h.command), (Version::V2, command), "{input:?}");
            assert_eq!(h.source, addrs.map(|a| sa(a.0)), "{input:?}");
            assert_eq!(h.destination, addrs.map(|a| sa(a.1)), "{input:?}");
        }
        // Exactly the limit: fine.
        let n = V2_MAX_LEN - 16 - 12 - 3;
        let mut block = inet_block();
        block.push(0xe0);
        block.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        block.resize(block.len() + n, 0);
        let max = v2(0x21, 0x11, &block);
        assert_eq!(max.len(), V2_MAX_LEN);
        let (h, consumed) = parse(&max).unwrap().unwrap();
        assert_eq!((h.source, consumed), (Some(sa("1.2.3.4:8080")), V2_MAX_LEN));
    }

    #[test]
    fn v2_malformed() {
        use ProxyError::*;
        let mut not_sig = V2_SIGNATURE.to_vec();
        not_sig[11] = b'X';
        let mut overrun = inet_block();
        overrun.extend_from_slice(&[0x01, 0, 2, b'h']);
        let mut underfill = inet_block();
        underfill.extend_from_slice(&[0x01, 0]);
        let too_long = {
            let mut b = v2(0x21, 0x11, &[]);
            b[14..16].copy_from_slice(&u16::try_from(V2_MAX_LEN - 15).unwrap().to_be_bytes());
            b
        };
        let table: Vec<(Vec<u8>, ProxyError)> = vec![
            (not_sig, NotProxy),
            (b"\r\n\r\nGET".to_vec(), NotProxy),
            (v2(0x11, 0x11, &inet_block()), V2Version),
            (v2(0x31, 0x11, &inet_block()), V2Version),
            (v2(0x22, 0x11, &inet_block()), V2Command),
            (v2(0x2f, 0x11, &inet_block()), V2Command),
            (v2(0x21, 0x41, &inet_block()), V2Family),
            (v2(0x20, 0x13, &[]), V2Family),
            (v2(0x21, 0x11, &[0; 11]), V2AddressLength),
            (v2(0x21, 0x21, &[0; 35]), V2AddressLength),
            (v2(0x21, 0x31, &[0; 215]), V2AddressLength),
            (too_long, V2TooLong),
            (v2(0x21, 0x11, &overrun), V2Tlv),
            (v2(0x21, 0x11, &underfill), V2Tlv),
        ];
        for (input, expected) in table {
            assert_eq!(parse_every_split(&input), Err(expected), "{input:?}");
        }
        // The length is judged as soon as it is read, before the block arrives.
        let mut head = v2(0x21, 0x11, &[]);
        head[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&head), Err(V2TooLong));
        assert_eq!(parse(&[b'\r', b'\n', b'\r', b'\n', 0, b'\r', b'\n', b'Q']), Ok(None));
        assert_eq!(parse(b"\x16\x03\x01"), Err(NotProxy));
    }

    #[test]
    fn encodes() {
        let (s4, d4) = (sa("192.0.2.1:5000"), sa("192.0.2.2:80"));
        let (s6, d6) = (sa("[2001:db8::1]:4711"), sa("[::1]:443"));
        let table: Vec<(ProxyHeader, &[u8])> = vec![
            (ProxyHeader::new(Version::V1, s4, d4), b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n"),
            (ProxyHeader::new(Version::V1, s6, d6), b"PROXY TCP6 2001:db8::1 ::1 4711 443\r\n"),
            (
                ProxyHeader::new(Version::V1, s4, d6),
                b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5000 443\r\n",
            ),
            (ProxyHeader::unknown(Version::V1), b"PROXY UNKNOWN\r\n"),
            (
                ProxyHeader::new(Version::V2, s4, d4),
                b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc0\x00\x02\x02\x13\x88\x00\x50",
            ),
            (ProxyHeader::local(), b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"),
            (ProxyHeader::unknown(Version::V2), b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x00"),
        ];
        for (h, wire) in table {
            let mut out = Vec::new();
            h.encode(&mut out);
            assert_eq!(out, wire, "{h:?}");
            let (back, n) = parse(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            if h.source.is_some_and(|s| s.is_ipv4() != h.destination.unwrap().is_ipv4()) {
                assert_eq!(back.source, Some(sa("[::ffff:192.0.2.1]:5000")));
            } else {
                assert_eq!(back, h);
            }
        }
        let mut v6 = Vec::new();
        ProxyHeader::new(Version::V2, s6, d6).encode(&mut v6);
        assert_eq!(v6.len(), 16 + 36);
        assert_eq!(parse(&v6).unwrap().unwrap().0, ProxyHeader::new(Version::V2, s6, d6));
        // Version 1 has no LOCAL: it goes out as UNKNOWN.
        let mut local1 = Vec::new();
        ProxyHeader { version: Version::V1, ..ProxyHeader::local() }.encode(&mut local1);
        assert_eq!(local1, b"PROXY UNKNOWN\r\n");
    }
}
