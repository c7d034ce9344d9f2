//! The deployment edge: who the client really is when the server sits behind proxies.
//!
//! - [`cidr`]: address ranges ([`Cidr`]) and the list of proxies the operator trusts
//!   ([`TrustedProxies`]), parsed from configuration strings such as `127.0.0.1/32,10.0.0.0/8`.
//! - [`proxy`]: the HAProxy PROXY protocol, versions 1 (text) and 2 (binary), which a TCP load
//!   balancer puts in front of the connection's first bytes: an incremental parser for bytes that
//!   arrive over several reads, and an encoder for the sending side.
//! - [`forwarded`]: the HTTP headers a proxy adds to the upgrade request (`X-Forwarded-For`,
//!   RFC 7239 `Forwarded`, `X-Real-IP`), and [`resolve`], which walks them from the right past
//!   the trusted proxies to the client, as nginx's `real_ip_recursive on` does.
//!
//! Nothing here reads a socket or keeps state between calls: the caller hands in the TCP peer
//! address, the bytes read so far and the request's headers, and gets back the client address and
//! where it came from. Headers are believed only when the TCP peer (or the address a trusted
//! PROXY header gave) is a trusted proxy; anything else a client sends about itself is ignored.

use std::fmt;

pub mod cidr;
pub mod forwarded;
pub mod proxy;

pub use cidr::{Cidr, TrustedProxies};
pub use forwarded::{resolve, ForwardedHeader, HeaderProblem, Hop, Resolved, Source};
pub use proxy::{ProxyError, ProxyHeader};

/// A configuration string that does not parse: a trusted-proxy entry ([`Cidr`],
/// [`TrustedProxies::parse_list`]) or a header name ([`ForwardedHeader::parse_list`]).
///
/// It names the entry at fault and what was expected; show it to the operator and refuse to
/// start, since a half-understood trust list would either believe spoofed addresses or ignore
/// the real ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    entry: String,
    expected: &'static str,
}

impl ConfigError {
    pub(crate) fn new(entry: &str, expected: &'static str) -> ConfigError {
        // The entry is echoed to the operator: keep it printable and short.
        let entry: String = entry.chars().take(80).flat_map(char::escape_default).collect();
        ConfigError { entry, expected }
    }

    /// The entry that did not parse, as written (escaped, at most 80 characters).
    pub fn entry(&self) -> &str {
        &self.entry
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad entry \"{}\": expected {}", self.entry, self.expected)
    }
}

impl std::error::Error for ConfigError {}
