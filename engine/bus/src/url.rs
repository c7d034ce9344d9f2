//! `nats://` and `redis://` URLs: which bus, where, and the credentials to present.

use crate::BusError;

/// Which bus a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Nats,
    Redis,
}

/// A parsed bus URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub kind: Kind,
    /// Host name or IP address (IPv6 without the brackets).
    pub host: String,
    pub port: u16,
    /// From `user:password@`; percent-decoded.
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Endpoint {
    /// Parses `nats://[user[:password]@]host[:port][/]` or
    /// `redis://[[user]:password@]host[:port][/db]`.
    pub fn parse(url: &str) -> Result<Endpoint, BusError> {
        let bad = |why: &str| BusError::BadUrl(format!("{url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected nats://host:port or redis://host:port (the scheme is missing)")
        })?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "nats" => Kind::Nats,
            "redis" => Kind::Redis,
            "tls" | "rediss" => {
                return Err(bad(
                    "TLS is not supported: use nats:// or redis:// on a private network, or a \
                     local TLS proxy",
                ))
            }
            other => {
                return Err(bad(&format!("unknown scheme {other:?}: use nats:// or redis://")))
            }
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if rest.contains(['?', '#']) {
            return Err(bad("query strings and fragments mean nothing here: remove them"));
        }
        match kind {
            Kind::Nats if !path.is_empty() => {
                return Err(bad("a NATS URL has no path: use nats://host:port"))
            }
            // Pub/sub ignores the database number, but redis://host:6379/0 is common.
            Kind::Redis if !path.is_empty() && !path.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(bad("the path of a Redis URL is a database number"))
            }
            _ => {}
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).map_err(|why| bad(&why))?;
        let default_port = match kind {
            Kind::Nats => 4222,
            Kind::Redis => 6379,
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let u = percent_decode(u).ok_or_else(|| bad("bad %-escape in the user name"))?;
                let p = p
                    .map(|p| percent_decode(p).ok_or_else(|| bad("bad %-escape in the password")))
                    .transpose()?;
                ((!u.is_empty()).then_some(u), p)
            }
        };
        if kind == Kind::Redis && user.is_some() && password.is_none() {
            return Err(bad("Redis needs a password with a user name: redis://user:password@host"));
        }
        Ok(Endpoint { kind, host, port: port.unwrap_or(default_port), user, password })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("junk after ']' in the host")?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("bad port {p:?}: a number from 1 to 65535")),
            Ok(n) => Ok(n),
        })
        .transpose()?;
    Ok((host.to_owned(), port))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(kind: Kind, host: &str, port: u16) -> Endpoint {
        Endpoint { kind, host: host.into(), port, user: None, password: None }
    }

    #[test]
    fn good_urls() {
        assert_eq!(Endpoint::parse("nats://127.0.0.1:4223"), Ok(ep(Kind::Nats, "127.0.0.1", 4223)));
        assert_eq!(Endpoint::parse("NATS://localhost"), Ok(ep(Kind::Nats, "localhost", 4222)));
        assert_eq!(Endpoint::parse("nats://[::1]:5"), Ok(ep(Kind::Nats, "::1", 5)));
        assert_eq!(Endpoint::parse("redis://h/0"), Ok(ep(Kind::Redis, "h", 6379)));
        assert_eq!(Endpoint::parse("redis://[::1]/"), Ok(ep(Kind::Redis, "::1", 6379)));
        let auth = Endpoint::parse("redis://bob:p%40ss@h:1").unwrap();
        assert_eq!((auth.user.as_deref(), auth.password.as_deref()), (Some("bob"), Some("p@ss")));
        let auth = Endpoint::parse("redis://:secret@h").unwrap();
        assert_eq!((auth.user, auth.password.as_deref()), (None, Some("secret")));
        let token = Endpoint::parse("nats://tok@h").unwrap();
        assert_eq!((token.user.as_deref(), token.password), (Some("tok"), None));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("127.0.0.1:4222", "scheme is missing"),
            ("http://h", "unknown scheme"),
            ("tls://h", "TLS is not supported"),
            ("rediss://h", "TLS is not supported"),
            ("nats://", "host is missing"),
            ("nats://:4222", "host is missing"),
            ("nats://h:0", "bad port"),
            ("nats://h:99999", "bad port"),
            ("nats://h:x", "bad port"),
            ("nats://h/x", "no path"),
            ("redis://h/x", "database number"),
            ("nats://h?x=1", "query"),
            ("nats://[::1", "unclosed"),
            ("nats://[::1]x", "junk after"),
            ("redis://bob@h", "needs a password"),
            ("nats://u:%zz@h", "%-escape"),
        ] {
            let err = Endpoint::parse(url).unwrap_err();
            assert!(matches!(err, BusError::BadUrl(_)), "{url}");
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }
}
