//! Interop with clients nobody here wrote: Python `websockets`, Node `ws`, and headless Chromium's
//! own WebSocket (driven by playwright-core), each against an in-process echo server on every
//! backend. Each client is a script under `tests/interop/` that runs its checks (text, binary, a
//! 1 MiB message, ping where the client can, close 4000 "bye"), prints `ok <check>` per check and
//! exits 0; this file starts the server, runs the script with a time limit and reads its report.
//!
//! The clients' dependencies are installed once per test process, when missing (see
//! `ringside_tests::interop_support`); an install that fails fails the tests that need it.

use std::process::Command;

use ringside_tests::interop_support::{
    chromium_deps, interop_dir, node_deps, python_deps, run_client, CHROMIUM,
};
use ringside_tests::{each_backend, TestServer};

each_backend! {
    fn python_websockets(backend) {
        python_deps();
        let server = TestServer::echo(backend);
        let url = format!("ws://{}/", server.addr);
        let script = interop_dir().join("python/client.py");
        run_client("python websockets", Command::new("python3").arg(script).arg(&url), PY_CHECKS);
        server.shutdown().expect("server shuts down cleanly");
    }
}

each_backend! {
    fn node_ws(backend) {
        node_deps();
        let server = TestServer::echo(backend);
        let url = format!("ws://{}/", server.addr);
        let script = interop_dir().join("node/ws-client.js");
        run_client("node ws", Command::new("node").arg(script).arg(&url), NODE_CHECKS);
        server.shutdown().expect("server shuts down cleanly");
    }
}

each_backend! {
    fn chromium(backend) {
        node_deps();
        chromium_deps();
        let server = TestServer::echo(backend);
        let url = format!("ws://{}/", server.addr);
        let script = interop_dir().join("node/browser-client.js");
        let mut cmd = Command::new("node");
        cmd.arg(script).arg(&url).env("CHROMIUM", CHROMIUM);
        run_client("chromium", &mut cmd, BROWSER_CHECKS);
        server.shutdown().expect("server shuts down cleanly");
    }
}

const PY_CHECKS: &[&str] = &["text", "binary", "big", "ping", "close"];
const NODE_CHECKS: &[&str] = &["text", "binary", "big", "ping", "close"];
// A page's WebSocket API cannot send pings.
const BROWSER_CHECKS: &[&str] = &["text", "binary", "big", "close"];
