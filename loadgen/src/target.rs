//! The server to load: `--url ws://host:port/path` or `--target host:port --path /p`, resolved
//! once, and refused outside 127.0.0.0/8 unless the user allows remote targets.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use crate::cli::Common;

/// Where connections go and what the upgrade request says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    pub path: String,
}

impl Target {
    pub fn from_common(c: &Common) -> Result<Target, String> {
        let (authority, path) = match (&c.url, &c.target) {
            (Some(url), _) => split_url(url)?,
            (None, Some(t)) => (t.clone(), c.path.clone()),
            (None, None) => ("127.0.0.1:9001".to_string(), c.path.clone()),
        };
        let target = resolve(&authority, &path)?;
        if !c.allow_remote && !is_loopback_v4(target.addr.ip()) {
            return Err(format!(
                "target {} is outside 127.0.0.0/8: this tool generates heavy load and talks to \
                 loopback only; pass --allow-remote if you really mean it",
                target.addr
            ));
        }
        Ok(target)
    }
}

pub fn is_loopback_v4(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 127)
}

/// `ws://authority/path` into its authority (with the default port 80) and path.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = match url.strip_prefix("ws://") {
        Some(rest) => rest,
        None if url.starts_with("wss://") => {
            return Err("wss:// is not supported: point the load generator at the plain port".into())
        }
        None => return Err(format!("--url must start with ws://, got {url:?}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("--url has no host: {url:?}"));
    }
    let has_port =
        if authority.starts_with('[') { authority.contains("]:") } else { authority.contains(':') };
    let authority = if has_port { authority.to_string() } else { format!("{authority}:80") };
    Ok((authority, path.to_string()))
}

fn resolve(authority: &str, path: &str) -> Result<Target, String> {
    if path.contains(['\r', '\n', ' ']) || !path.starts_with('/') {
        return Err(format!("the path must start with / and hold no spaces or newlines: {path:?}"));
    }
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority:?}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{authority:?} has no IPv4 address"))?;
    Ok(Target { addr, host: authority.to_string(), path: path.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("ws://127.0.0.1:9001/chat?x=1").unwrap(),
            ("127.0.0.1:9001".into(), "/chat?x=1".into())
        );
        assert_eq!(split_url("ws://127.0.0.2").unwrap(), ("127.0.0.2:80".into(), "/".into()));
        assert!(split_url("wss://127.0.0.1/").is_err());
        assert!(split_url("http://127.0.0.1/").is_err());
    }

    #[test]
    fn only_loopback_v4_passes_without_allow_remote() {
        assert!(is_loopback_v4("127.0.0.1".parse().unwrap()));
        assert!(is_loopback_v4("127.9.8.7".parse().unwrap()));
        assert!(!is_loopback_v4("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback_v4("::1".parse().unwrap()));
    }
}
