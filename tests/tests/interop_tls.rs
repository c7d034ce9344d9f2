//! wss interop: the clients of `interop.rs` (Python `websockets`, Node `ws`, headless Chromium)
//! over TLS against an in-process echo server on every backend, with a certificate issued at
//! test time by a test CA (`openssl`). Python and Node trust the test CA alone; Chromium accepts
//! the server's key by its SPKI hash (`--ignore-certificate-errors-spki-list`), as installing a
//! CA into a headless browser's store is not practical. Each client reports the TLS version it
//! negotiated, then echoes text, binary and 1 MiB and closes.

use std::process::Command;

use ringside_tests::interop_support::{
    chromium_deps, interop_dir, node_deps, python_deps, run_client, CHROMIUM,
};
use ringside_tests::tls::TestPki;
use ringside_tests::{each_backend, TestServer};

each_backend! {
    fn python_websockets(backend) {
        python_deps();
        let pki = TestPki::new();
        let cert = pki.server_cert("server");
        let server = TestServer::start(backend, |b| b.tls(&cert.cert, &cert.key), || ringside_tests::Echo);
        let url = format!("wss://{}/", server.addr);
        let script = interop_dir().join("python/client.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(&url).env("RINGSIDE_CA", &pki.ca);
        run_client("python websockets over TLS", &mut cmd, &["tls", "text", "binary", "big", "ping", "close"]);
        server.shutdown().expect("server shuts down cleanly");
    }
}

each_backend! {
    fn node_ws(backend) {
        node_deps();
        let pki = TestPki::new();
        let cert = pki.server_cert("server");
        let server = TestServer::start(backend, |b| b.tls(&cert.cert, &cert.key), || ringside_tests::Echo);
        let url = format!("wss://{}/", server.addr);
        let script = interop_dir().join("node/ws-client.js");
        let mut cmd = Command::new("node");
        cmd.arg(script).arg(&url).env("RINGSIDE_CA", &pki.ca);
        run_client("node ws over TLS", &mut cmd, &["tls", "text", "binary", "big", "ping", "close"]);
        server.shutdown().expect("server shuts down cleanly");
    }
}

each_backend! {
    fn chromium(backend) {
        node_deps();
        chromium_deps();
        let pki = TestPki::new();
        let cert = pki.server_cert("server");
        let server = TestServer::start(backend, |b| b.tls(&cert.cert, &cert.key), || ringside_tests::Echo);
        let url = format!("wss://127.0.0.1:{}/", server.addr.port());
        let script = interop_dir().join("node/browser-client.js");
        let mut cmd = Command::new("node");
        cmd.arg(script).arg(&url).env("CHROMIUM", CHROMIUM).env("RINGSIDE_SPKI", &cert.spki_sha256);
        run_client("chromium over TLS", &mut cmd, &["text", "binary", "big", "close"]);
        server.shutdown().expect("server shuts down cleanly");
    }
}
