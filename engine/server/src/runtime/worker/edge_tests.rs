//! Socket-free tests of the deployment edge on a worker (the fake backend of `tests`): PROXY
//! headers however they are split, who may send one, forwarding headers behind trusted
//! proxies, handler-shaped upgrade responses, and the access log.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ringside_proto::edge::proxy::{ProxyHeader, Version};
use ringside_proto::handshake::{generate_key, write_client_request};
use ringside_proto::Message;

use super::tests::{peer, Ev, Rig};
use crate::api::{Handler, Response, Upgrade, Upgrading};
use crate::config::{ProxyProtocol, Settings};
use crate::runtime::handle::WebSocket;

/// Records who each upgrade and open came from, and answers a few paths its own way.
#[derive(Default)]
struct Who {
    seen: Vec<String>,
}

impl Handler for Who {
    type Conn = ();

    fn on_upgrade(&mut self, req: &Upgrading<'_>) -> Upgrade<()> {
        self.seen.push(format!("upgrade {} via {}", req.peer_addr(), req.tcp_peer_addr()));
        let cookie = |v: &str| vec![("Set-Cookie".to_owned(), v.to_owned())];
        match req.path() {
            "/deny" => Upgrade::RejectWith(
                Response::new(401).header("WWW-Authenticate", "Bearer realm=\"chat\"").body("no"),
            ),
            "/forbid" => Upgrade::RejectWith(Response::new(403)),
            "/cookie" => Upgrade::AcceptWith((), cookie("sid=abc; HttpOnly")),
            "/inject" => Upgrade::AcceptWith((), cookie("a\r\nX-Evil: 1")),
            "/inject-refusal" => {
                Upgrade::RejectWith(Response::new(401).header("X\r\nEvil", "1").body("x"))
            }
            "/bad-status" => Upgrade::RejectWith(Response::new(101)),
            "/reserved" => Upgrade::AcceptWith((), vec![("Upgrade".into(), "h2c".into())]),
            _ => Upgrade::Accept(()),
        }
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, ()>) {
        self.seen.push(format!("open {} via {}", ws.peer_addr(), ws.tcp_peer_addr()));
    }

    fn on_message(&mut self, _ws: &mut WebSocket<'_, ()>, _msg: Message<'_>) {}
}

/// A peer, the request's headers, and what is expected.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_request("test", path, &generate_key(), &[], headers, &mut out);
    out
}

fn proxy_header(version: Version, source: &str) -> Vec<u8> {
    let mut out = Vec::new();
    ProxyHeader::new(version, sa(source), sa("127.0.0.1:9001")).encode(&mut out);
    out
}

fn edge(trusted: &str, proxy: ProxyProtocol) -> Settings {
    Settings {
        trusted_proxies: trusted.parse().unwrap(),
        proxy_protocol: proxy,
        ..Settings::default()
    }
}

/// Sends `bytes` in the pieces `cuts` marks on a new connection from `from`; returns what the
/// server sent and whether it asked to close the socket.
fn exchange(rig: &mut Rig<Who>, from: SocketAddr, bytes: &[u8], cuts: &[usize]) -> (String, bool) {
    let id = rig.accept(from);
    let mut start = 0;
    for &cut in cuts.iter().chain([bytes.len()].iter()) {
        rig.data(id, &bytes[start..cut]);
        start = cut;
    }
    let sent = String::from_utf8_lossy(&rig.take_sent(id)).into_owned();
    let closed = rig.fake.closed.iter().any(|&(c, _)| c == id);
    (sent, closed)
}

#[test]
fn a_proxy_header_names_the_client_at_every_split() {
    let req = request("/", &[]);
    for version in [Version::V1, Version::V2] {
        let mut bytes = proxy_header(version, "192.0.2.7:5555");
        let header_len = bytes.len();
        bytes.extend_from_slice(&req);
        for cut in 1..bytes.len() {
            let mut rig = Rig::new(edge("127.0.0.0/8", ProxyProtocol::Required), Who::default());
            let (sent, closed) = exchange(&mut rig, peer(1), &bytes, &[cut]);
            assert!(sent.starts_with("HTTP/1.1 101"), "{version:?} cut {cut}: {sent}");
            assert!(!closed);
            assert_eq!(
                rig.core.handler.seen,
                [
                    "upgrade 192.0.2.7:5555 via 127.0.0.1:40001",
                    "open 192.0.2.7:5555 via 127.0.0.1:40001"
                ],
                "{version:?} cut {cut}"
            );
        }
        // In three pieces, the header's end in the middle one.
        let mut rig = Rig::new(edge("127.0.0.0/8", ProxyProtocol::Required), Who::default());
        let (sent, _) = exchange(&mut rig, peer(1), &bytes, &[3, header_len + 5]);
        assert!(sent.starts_with("HTTP/1.1 101"), "{sent}");
    }
}

#[test]
fn a_local_or_unknown_header_keeps_the_tcp_peer() {
    let mut local = Vec::new();
    ProxyHeader::local().encode(&mut local);
    let mut unknown = Vec::new();
    ProxyHeader::unknown(Version::V1).encode(&mut unknown);
    for mut bytes in [local, unknown] {
        bytes.extend_from_slice(&request("/", &[]));
        let mut rig = Rig::new(edge("", ProxyProtocol::Required), Who::default());
        let (sent, _) = exchange(&mut rig, peer(2), &bytes, &[]);
        assert!(sent.starts_with("HTTP/1.1 101"), "{sent}");
        assert_eq!(rig.core.handler.seen[0], "upgrade 127.0.0.2:40002 via 127.0.0.2:40002");
    }
}

#[test]
fn without_a_valid_proxy_header_the_connection_is_closed_unanswered() {
    let mut garbled = proxy_header(Version::V1, "192.0.2.7:5555");
    garbled[6] = b'X'; // PROXY XCP4 ...
    for (bytes, what) in [
        (request("/", &[]), "a plain request"),
        (garbled, "a garbled header"),
        (b"\r\n\r\n\0\r\nQUIT\n\x31".to_vec(), "a v2 header of version 3"),
    ] {
        let mut rig = Rig::new(edge("", ProxyProtocol::Required), Who::default());
        let (sent, closed) = exchange(&mut rig, peer(3), &bytes, &[]);
        assert_eq!((sent.as_str(), closed), ("", true), "{what}");
        assert!(rig.core.handler.seen.is_empty(), "{what}");
    }
}

#[test]
fn only_trusted_peers_may_send_a_proxy_header() {
    // Required: an untrusted peer is refused at accept.
    let mut rig = Rig::new(edge("10.0.0.0/8", ProxyProtocol::Required), Who::default());
    rig.fake.script.push_back(Ev::Accept(peer(4)));
    rig.turn();
    assert_eq!(rig.core.conns.len(), 0, "refused at accept");

    // Optional: a trusted peer may send one or not; another peer may not.
    let header = proxy_header(Version::V2, "[2001:db8::7]:4711");
    let with = [header.clone(), request("/", &[])].concat();
    let without = request("/", &[]);
    let table: &[(&str, &[u8], &str)] = &[
        ("127.0.0.1:40001", &with, "upgrade [2001:db8::7]:4711 via 127.0.0.1:40001"),
        ("127.0.0.1:40001", &without, "upgrade 127.0.0.1:40001 via 127.0.0.1:40001"),
        ("192.0.2.9:40009", &without, "upgrade 192.0.2.9:40009 via 192.0.2.9:40009"),
        ("192.0.2.9:40009", &with, "closed"),
    ];
    for &(from, bytes, want) in table {
        for cut in [1, 2, 7, bytes.len() - 1] {
            let mut rig = Rig::new(edge("127.0.0.0/8", ProxyProtocol::Optional), Who::default());
            let (sent, closed) = exchange(&mut rig, sa(from), bytes, &[cut]);
            let got = rig.core.handler.seen.first().map_or("closed", String::as_str);
            assert_eq!(got, want, "{from} cut {cut}");
            assert_eq!(closed, sent.is_empty(), "{from} cut {cut}: {sent}");
        }
    }

    // Off: a header is not read; the request line it makes is malformed.
    let mut rig = Rig::new(edge("127.0.0.0/8", ProxyProtocol::Off), Who::default());
    let (sent, _) = exchange(&mut rig, peer(1), &with, &[]);
    assert!(sent.starts_with("HTTP/1.1 400"), "{sent}");
}

#[test]
fn forwarding_headers_are_believed_from_trusted_proxies_only() {
    let xff = [("X-Forwarded-For", "6.6.6.6, 198.51.100.1")];
    let table: &[Case<'_>] = &[
        // The client wrote 6.6.6.6 itself; the trusted proxy appended 198.51.100.1.
        ("127.0.0.1:40001", &xff, "198.51.100.1:0 via 127.0.0.1:40001"),
        ("127.0.0.1:40001", &[("X-Forwarded-For", "[2001:db8::1]:443")], "[2001:db8::1]:443"),
        ("192.0.2.9:40009", &xff, "192.0.2.9:40009 via 192.0.2.9:40009"),
        // Not in the configured order (x-forwarded-for only): ignored.
        ("127.0.0.1:40001", &[("X-Real-IP", "198.51.100.1")], "127.0.0.1:40001 via"),
        // Malformed: the last trusted address.
        ("127.0.0.1:40001", &[("X-Forwarded-For", "nonsense")], "127.0.0.1:40001 via"),
    ];
    for &(from, headers, want) in table {
        let mut rig = Rig::new(edge("127.0.0.0/8", ProxyProtocol::Off), Who::default());
        let (sent, _) = exchange(&mut rig, sa(from), &request("/", headers), &[]);
        assert!(sent.starts_with("HTTP/1.1 101"), "{sent}");
        let seen = &rig.core.handler.seen;
        assert!(seen[0].starts_with(&format!("upgrade {want}")), "{from} {headers:?}: {seen:?}");
        assert_eq!(seen[1].replace("open", "upgrade"), seen[0], "the handle says the same");
    }
}

#[test]
fn a_proxy_header_source_decides_whose_forwarding_headers_count() {
    let xff = [("X-Forwarded-For", "198.51.100.2")];
    // A TCP balancer relays a client (untrusted source): the client's own header is ignored.
    let mut rig = Rig::new(edge("127.0.0.0/8", ProxyProtocol::Required), Who::default());
    let bytes = [proxy_header(Version::V1, "203.0.113.5:6000"), request("/", &xff)].concat();
    exchange(&mut rig, peer(1), &bytes, &[]);
    assert_eq!(rig.core.handler.seen[0], "upgrade 203.0.113.5:6000 via 127.0.0.1:40001");
    // It relays a trusted HTTP proxy, which named the client.
    let mut rig = Rig::new(edge("127.0.0.0/8", ProxyProtocol::Required), Who::default());
    let bytes = [proxy_header(Version::V1, "127.0.0.9:6000"), request("/", &xff)].concat();
    exchange(&mut rig, peer(1), &bytes, &[]);
    assert_eq!(rig.core.handler.seen[0], "upgrade 198.51.100.2:0 via 127.0.0.1:40001");
}

#[test]
fn require_forwarded_refuses_a_trusted_proxy_that_names_nobody() {
    let settings = Settings { require_forwarded: true, ..edge("127.0.0.0/8", ProxyProtocol::Off) };
    let table: &[Case<'_>] = &[
        ("127.0.0.1:40001", &[], "HTTP/1.1 400"),
        ("127.0.0.1:40001", &[("X-Forwarded-For", "bad")], "HTTP/1.1 400"),
        ("127.0.0.1:40001", &[("X-Forwarded-For", "unknown")], "HTTP/1.1 400"),
        ("127.0.0.1:40001", &[("X-Forwarded-For", "198.51.100.1")], "HTTP/1.1 101"),
        // Not a proxy: served as itself.
        ("192.0.2.9:40009", &[], "HTTP/1.1 101"),
    ];
    for &(from, headers, want) in table {
        let mut rig = Rig::new(settings.clone(), Who::default());
        let (sent, closed) = exchange(&mut rig, sa(from), &request("/", headers), &[]);
        assert!(sent.starts_with(want), "{from} {headers:?}: {sent}");
        if want.ends_with("400") {
            assert!(sent.contains("x-forwarded-for"), "says what was expected: {sent}");
            assert!(closed && rig.core.handler.seen.is_empty());
        }
    }
}

#[test]
fn handlers_shape_their_answers_without_header_injection() {
    let table: &[(&str, &[&str], &[&str])] = &[
        (
            "/deny",
            &[
                "HTTP/1.1 401 Unauthorized\r\n",
                "WWW-Authenticate: Bearer realm=\"chat\"\r\n",
                "Content-Length: 2\r\n",
                "\r\n\r\nno",
            ],
            &[],
        ),
        ("/forbid", &["HTTP/1.1 403 Forbidden\r\n", "Content-Length: 0\r\n"], &[]),
        ("/cookie", &["HTTP/1.1 101", "Set-Cookie: sid=abc; HttpOnly\r\n\r\n"], &[]),
        ("/inject", &["HTTP/1.1 500"], &["X-Evil", "Set-Cookie"]),
        ("/inject-refusal", &["HTTP/1.1 500"], &["Evil"]),
        ("/bad-status", &["HTTP/1.1 500"], &["101"]),
        ("/reserved", &["HTTP/1.1 500"], &["h2c"]),
    ];
    for &(path, has, lacks) in table {
        let mut rig = Rig::new(Settings::default(), Who::default());
        let (sent, closed) = exchange(&mut rig, peer(5), &request(path, &[]), &[]);
        for h in has {
            assert!(sent.contains(h), "{path}: {h:?} in {sent}");
        }
        for l in lacks {
            assert!(!sent.contains(l), "{path}: no {l:?} in {sent}");
        }
        let opened = rig.core.handler.seen.iter().any(|s| s.starts_with("open"));
        assert_eq!(opened, sent.starts_with("HTTP/1.1 101"), "{path}");
        assert_eq!(closed, !opened, "{path}");
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_access_log_has_one_line_per_attempt() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let settings = Settings { access_log: true, ..edge("127.0.0.0/8", ProxyProtocol::Off) };
        let ua = [("User-Agent", "probe/1.0 (x)"), ("X-Forwarded-For", "198.51.100.1")];
        for bytes in [
            request("/feed?token=secret", &ua),
            request("/deny", &[]),
            // Refused before the handler is asked: the client is still resolved.
            b"GET /plain HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.3\r\n\r\n".to_vec(),
            b"NOT HTTP\r\n\r\n".to_vec(),
        ] {
            let mut rig = Rig::new(settings.clone(), Who::default());
            exchange(&mut rig, peer(1), &bytes, &[]);
        }
    });
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (line, want) in lines.iter().zip([
        "ringside::access: access client=198.51.100.1:0 peer=127.0.0.1:40001 path=/feed \
         status=101 protocol=- user_agent=\"probe/1.0 (x)\"",
        "client=127.0.0.1:40001 peer=127.0.0.1:40001 path=/deny status=401",
        "client=198.51.100.3:0 peer=127.0.0.1:40001 path=/plain status=426",
        "client=127.0.0.1:40001 peer=127.0.0.1:40001 path=- status=400",
    ]) {
        assert!(line.contains(want), "{line:?} lacks {want:?}");
        assert!(line.contains(" INFO "), "{line}");
    }
    assert!(!text.contains("secret"), "the query is not logged");
}

#[test]
fn no_access_log_unless_asked() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut rig = Rig::new(Settings::default(), Who::default());
        exchange(&mut rig, peer(1), &request("/", &[]), &[]);
    });
    assert!(capture.0.lock().unwrap().is_empty());
}
