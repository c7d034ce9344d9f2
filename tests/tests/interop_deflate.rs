//! Interop with permessage-deflate actually agreed and used, with clients nobody here wrote:
//! Python `websockets` (deflate on by default), Node `ws` with `perMessageDeflate`, and headless
//! Chromium (which offers it on every connection), each against a shared-mode and a
//! dedicated-mode echo server on every backend.
//!
//! Each client script (`tests/interop/`) checks on its side that the extension was agreed
//! (websockets' response header and extension, `ws.extensions` and its parameters, the page's
//! `ws.extensions`) and that every echo is intact; the Python and Node ones also that the
//! server's messages came compressed (frames with RSV1, bytes on the socket). Between each
//! client and server runs a relay that reads the server's side of the wire
//! (`deflate_support::WireTap`), so this file checks for every client, the browser included,
//! that the 101 named the extension and that the compressible messages left the server
//! compressed.
//!
//! Dependencies are installed as `interop.rs` does it, once per test process: `pip install` for
//! `websockets`, `npm ci` in `tests/interop/node`, `apt-get install chromium`.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ringside::Compression;
use ringside_tests::deflate_support::WireTap;
use ringside_tests::interop_support::{
    chromium_deps, interop_dir, node_deps, python_deps, run_bounded,
};
use ringside_tests::{each_backend, TestServer};

/// How long one client run may take, browser start included.
const CLIENT_LIMIT: Duration = Duration::from_secs(90);
/// The browser the playwright client drives (Debian's `chromium` package).
const CHROMIUM: &str = "/usr/bin/chromium";

/// The checks every client script reports, once per server.
const CHECKS: &[&str] = &["negotiated", "ticks", "big-text", "binary", "noise", "close"];
/// Messages each script has echoed: 50 ticks, the text, the binary and the noise; all but the
/// noise compress.
const MESSAGES: u64 = 53;
const COMPRESSIBLE: u64 = 52;

/// A shared-mode and a dedicated-mode echo server, each behind a wire tap.
struct Servers {
    taps: Vec<(Compression, TestServer, WireTap)>,
}

impl Servers {
    fn start(backend: ringside::Backend) -> Servers {
        let taps = [Compression::Shared, Compression::Dedicated]
            .into_iter()
            .map(|mode| {
                let server = TestServer::start(
                    backend,
                    |b| b.deflate(mode).max_message_size(4 << 20).max_frame_size(4 << 20),
                    || ringside_tests::Echo,
                );
                let tap = WireTap::start(server.addr).expect("the relay starts");
                (mode, server, tap)
            })
            .collect();
        Servers { taps }
    }

    fn urls(&self) -> Vec<String> {
        self.taps.iter().map(|(_, _, tap)| format!("ws://{}/", tap.addr)).collect()
    }

    /// What each server's wire shows: the extension agreed, and compressed messages.
    fn check(self, client: &str) {
        for (mode, server, tap) in self.taps {
            // The relay may still be passing on the last frames.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut seen = tap.seen();
            while seen.messages < MESSAGES && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
                seen = tap.seen();
            }
            let what = format!("{client} against {mode:?}: {seen:?}");
            assert_eq!(seen.connections, 1, "{what}");
            let ext = seen.extensions[0].as_deref().unwrap_or_default();
            assert!(ext.starts_with("permessage-deflate"), "{what}");
            if mode == Compression::Shared {
                assert!(ext.contains("server_no_context_takeover"), "{what}");
                assert!(ext.contains("client_no_context_takeover"), "{what}");
            }
            assert_eq!(seen.messages, MESSAGES, "{what}");
            assert!(seen.compressed >= COMPRESSIBLE, "{what}");
            println!("{what}");
            server.shutdown().expect("server shuts down cleanly");
        }
    }
}

each_backend! {
    fn python_websockets(backend) {
        python_deps();
        let servers = Servers::start(backend);
        let script = interop_dir().join("python/deflate_client.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).args(servers.urls());
        run_client("python websockets", &mut cmd, &[CHECKS, &["compressed"]].concat(), 2);
        servers.check("python websockets");
    }
}

each_backend! {
    fn node_ws(backend) {
        node_deps();
        let servers = Servers::start(backend);
        let script = interop_dir().join("node/ws-deflate-client.js");
        let mut cmd = Command::new("node");
        cmd.arg(script).args(servers.urls());
        run_client("node ws", &mut cmd, &[CHECKS, &["compressed"]].concat(), 2);
        servers.check("node ws");
    }
}

each_backend! {
    fn chromium(backend) {
        node_deps();
        chromium_deps();
        let servers = Servers::start(backend);
        let script = interop_dir().join("node/browser-deflate-client.js");
        let mut cmd = Command::new("node");
        cmd.arg(script).args(servers.urls()).env("CHROMIUM", CHROMIUM);
        run_client("chromium", &mut cmd, CHECKS, 2);
        servers.check("chromium");
    }
}

/// Runs one client script and fails the test unless it exited 0 having reported every check.
fn run_client(name: &str, cmd: &mut Command, checks: &[&str], runs: usize) {
    let run = run_bounded(cmd, CLIENT_LIMIT);
    let report = run.report(name);
    assert!(run.status.is_some(), "{name}: still running after {CLIENT_LIMIT:?}, killed\n{report}");
    assert!(run.succeeded(), "{name}: client failed\n{report}");
    for check in checks {
        let prefix = format!("ok {check}:");
        let reported = run.stdout.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(
            reported, runs,
            "{name}: `{prefix}` reported {reported} times, not {runs}\n{report}"
        );
    }
    println!("{report}");
}
