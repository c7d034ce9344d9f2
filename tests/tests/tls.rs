//! wss on every backend with a rustls client: echoes over TLS 1.3 and 1.2, many messages in one
//! write, close_notify after the close handshake; clients that do not speak TLS (plain HTTP,
//! garbage) are closed at once, a stalled TLS handshake at the handshake timeout; a certificate
//! reload serves new connections the new certificate while old ones keep theirs.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringside::{Message, TlsIdentity};
use ringside_tests::tls::{read_to_close, tls_connect, TestPki, TlsClient};
use ringside_tests::{each_backend, Echo, Seen, TestServer};

/// An echo server over TLS with a fresh certificate; the PKI must outlive it.
fn tls_echo(backend: ringside::Backend) -> (TestPki, TestServer) {
    let pki = TestPki::new();
    let cert = pki.server_cert("server");
    let server = TestServer::start(backend, |b| b.tls(&cert.cert, &cert.key), || Echo);
    (pki, server)
}

fn echo_checks(c: &mut TlsClient) {
    c.send(Message::Text("hello over TLS")).unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Text("hello over TLS".into()));
    let bin: Vec<u8> = (0..=255).collect();
    c.send(Message::Binary(&bin)).unwrap();
    assert_eq!(c.recv().unwrap(), Seen::Binary(bin));
    let big: Vec<u8> =
        (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    c.send(Message::Binary(&big)).unwrap();
    match c.recv().unwrap() {
        Seen::Binary(got) => assert!(got == big, "1 MiB came back altered ({} bytes)", got.len()),
        other => panic!("want the 1 MiB echo, got {other:?}"),
    }
}

each_backend! {
    fn echoes_over_tls13_with_alpn_and_closes_with_close_notify(backend) {
        let (pki, server) = tls_echo(backend);
        let mut c = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        assert_eq!(c.tls.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(c.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        echo_checks(&mut c);
        // The close frame, then close_notify (a TCP close without it is an error here).
        c.close().unwrap();
        server.shutdown().unwrap();
    }
}

each_backend! {
    fn echoes_over_tls12(backend) {
        let (pki, server) = tls_echo(backend);
        let config = pki.client_config_versions(&[&rustls::version::TLS12]);
        let mut c = TlsClient::connect(server.addr, config).unwrap();
        assert_eq!(c.tls.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        echo_checks(&mut c);
        c.close().unwrap();
    }
}

each_backend! {
    fn many_messages_in_one_write_all_come_back_in_order(backend) {
        let (pki, server) = tls_echo(backend);
        let mut c = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        for i in 0..500 {
            c.conn.send_text(&format!("message {i}")).unwrap();
        }
        c.flush().unwrap();
        for i in 0..500 {
            assert_eq!(c.recv().unwrap(), Seen::Text(format!("message {i}")));
        }
        c.close().unwrap();
    }
}

each_backend! {
    fn plain_http_on_the_tls_port_is_closed_at_once(backend) {
        let (pki, server) = tls_echo(backend);
        let started = Instant::now();
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n").unwrap();
        let got = read_to_close(&mut s, Duration::from_secs(3)).expect("closed within 3 s");
        // At most an alert record (content type 21), never an HTTP answer.
        assert!(got.is_empty() || got[0] == 21, "not an alert: {got:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The server still serves TLS clients.
        let mut c = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        echo_checks(&mut c);
    }
}

each_backend! {
    fn garbage_on_the_tls_port_is_closed_at_once(backend) {
        let (pki, server) = tls_echo(backend);
        for garbage in [&b"\x00\x01\x02garbage that is no TLS record\xff\xfe"[..], &[0xffu8; 4096][..]] {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(garbage).unwrap();
            let got = read_to_close(&mut s, Duration::from_secs(3)).expect("closed within 3 s");
            assert!(got.is_empty() || got[0] == 21, "not an alert: {got:?}");
        }
        let mut c = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        echo_checks(&mut c);
    }
}

each_backend! {
    fn a_stalled_tls_handshake_is_dropped_at_the_handshake_timeout(backend) {
        let pki = TestPki::new();
        let cert = pki.server_cert("server");
        let server = TestServer::start(
            backend,
            |b| b.tls(&cert.cert, &cert.key).handshake_timeout(Duration::from_secs(1)),
            || Echo,
        );
        // Half a ClientHello, then nothing.
        let mut hello = Vec::new();
        let name = rustls::pki_types::ServerName::from(server.addr.ip());
        let mut client = rustls::ClientConnection::new(pki.client_config(), name).unwrap();
        client.write_tls(&mut hello).unwrap();
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(&hello[..hello.len() / 2]).unwrap();
        let started = Instant::now();
        read_to_close(&mut s, Duration::from_secs(4)).expect("dropped by the handshake timeout");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(700), "closed after {took:?}, before the timeout");
        // A completed TLS handshake without an upgrade request is dropped the same way.
        let mut tls = tls_connect(server.addr, pki.client_config()).unwrap();
        tls.sock.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        let mut buf = [0u8; 64];
        let r = std::io::Read::read(&mut tls, &mut buf);
        assert!(!matches!(r, Ok(n) if n > 0), "no bytes expected, got {r:?}");
    }
}

each_backend! {
    fn a_reload_serves_the_new_certificate_to_new_connections_only(backend) {
        let pki = TestPki::new();
        let first = pki.server_cert("first");
        let second = pki.server_cert("second");
        // The server reads these paths; a reload reads them again.
        let (cert, key) = (pki.dir().join("live.pem"), pki.dir().join("live.key"));
        std::fs::copy(&first.cert, &cert).unwrap();
        std::fs::copy(&first.key, &key).unwrap();
        let server = TestServer::start(backend, |b| b.tls(&cert, &key), || Echo);
        let mut old = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        assert_eq!(old.server_cert().as_deref(), Some(&first.der[..]));

        std::fs::copy(&second.cert, &cert).unwrap();
        std::fs::copy(&second.key, &key).unwrap();
        server.handle().reload_tls().expect("reload");
        let mut new = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        assert_eq!(new.server_cert().as_deref(), Some(&second.der[..]), "the new certificate");
        echo_checks(&mut new);
        echo_checks(&mut old);

        // A broken file fails the reload, and the server keeps the certificate it had.
        std::fs::write(&key, b"not a key").unwrap();
        let e = server.handle().reload_tls().expect_err("a broken key fails the reload");
        assert!(e.to_string().contains("live.key"), "names the file: {e}");
        let mut after = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        assert_eq!(after.server_cert().as_deref(), Some(&second.der[..]));
        after.close().unwrap();

        // Or replace it with PEM bytes.
        let pem = |p: &std::path::Path| std::fs::read(p).unwrap();
        server.handle().set_tls(TlsIdentity::pem(pem(&first.cert), pem(&first.key))).unwrap();
        let c = TlsClient::connect(server.addr, pki.client_config()).unwrap();
        assert_eq!(c.server_cert().as_deref(), Some(&first.der[..]));
        old.close().unwrap();
        new.close().unwrap();
    }
}

#[test]
fn a_bad_certificate_fails_the_build_naming_the_file() {
    let pki = TestPki::new();
    let cert = pki.server_cert("server");
    let missing = pki.dir().join("missing.pem");
    let e = ringside::Server::builder()
        .bind("127.0.0.1:0")
        .unwrap()
        .tls(&missing, &cert.key)
        .build(|| Echo)
        .expect_err("a missing certificate file");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    // A key that is not the certificate's.
    let other = pki.server_cert("other");
    let e = ringside::Server::builder()
        .bind("127.0.0.1:0")
        .unwrap()
        .tls(&cert.cert, &other.key)
        .build(|| Echo)
        .expect_err("a key of another certificate");
    assert!(e.to_string().contains("do not work together"), "{e}");
}

#[test]
fn reload_without_tls_says_so() {
    let server = TestServer::echo(ringside::Backend::Epoll);
    let e = server.handle().reload_tls().expect_err("no TLS");
    assert!(e.to_string().contains("not started with TLS"), "{e}");
}
