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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use ringside::Compression;
use ringside_tests::deflate_support::WireTap;
use ringside_tests::{each_backend, TestServer};

/// How long one client run may take, browser start included.
const CLIENT_LIMIT: Duration = Duration::from_secs(90);
/// How long one package-manager step may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(600);
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

/// `websockets` (14 or later, for the sync client) importable by `python3`.
fn python_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let check = "import sys, websockets, websockets.sync.client; \
                 print('websockets', websockets.__version__); \
                 sys.exit(int(websockets.__version__.split('.')[0]) < 14)";
    ensure(&DONE, "python websockets", || {
        if run_bounded(Command::new("python3").args(["-c", check]), INSTALL_LIMIT).succeeded() {
            return Ok(());
        }
        let reqs = interop_dir().join("python/requirements.txt");
        install_step(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(["--root-user-action=ignore", "-r"])
                .arg(reqs),
        )?;
        install_step(Command::new("python3").args(["-c", check]))
    });
}

/// `ws` and `playwright-core` in `tests/interop/node/node_modules`, from the lockfile.
fn node_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    ensure(&DONE, "node packages", || {
        let dir = interop_dir().join("node");
        let modules = dir.join("node_modules");
        if ["ws", "playwright-core"].iter().all(|p| modules.join(p).join("package.json").is_file())
        {
            return Ok(());
        }
        install_step(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir))
    });
}

/// Debian's `chromium` at [`CHROMIUM`].
fn chromium_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    ensure(&DONE, "chromium", || {
        if Path::new(CHROMIUM).exists() {
            return Ok(());
        }
        install_step(Command::new("apt-get").arg("update"))?;
        install_step(
            Command::new("apt-get")
                .args(["install", "-y", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if Path::new(CHROMIUM).exists() {
            Ok(())
        } else {
            Err(format!("apt-get installed chromium but {CHROMIUM} is not there"))
        }
    });
}

/// Runs `install` at most once per process; every caller fails if it failed.
fn ensure(
    done: &OnceLock<Result<(), String>>,
    what: &str,
    install: impl FnOnce() -> Result<(), String>,
) {
    if let Err(e) = done.get_or_init(install) {
        panic!("interop dependency `{what}` is missing and could not be installed:\n{e}");
    }
}

/// One install command, bounded by [`INSTALL_LIMIT`]; its output becomes the error.
fn install_step(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    eprintln!("interop: installing: {shown}");
    let run = run_bounded(cmd, INSTALL_LIMIT);
    if run.succeeded() {
        eprintln!("interop: done in {:.1} s: {shown}", run.elapsed.as_secs_f64());
        Ok(())
    } else {
        Err(run.report(&shown))
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// What a bounded child run produced.
#[derive(Debug)]
struct Run {
    /// None when it did not start or was killed at the limit.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn report(&self, name: &str) -> String {
        let status = self.status.map_or("killed or not started".to_owned(), |s| s.to_string());
        format!(
            "--- {name}: {status} after {:.1} s\n--- stdout:\n{}--- stderr:\n{}---",
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` with piped output, killing its whole process group (a browser's children too) if
/// it runs past `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Run {
    use std::os::unix::process::CommandExt;

    let started = Instant::now();
    let spawned = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Run {
                status: None,
                stdout: String::new(),
                stderr: format!("could not start {cmd:?}: {e}\n"),
                elapsed: started.elapsed(),
            }
        }
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < limit => thread::sleep(Duration::from_millis(20)),
            _ => {
                // The group id is the child's pid (process_group(0)); `kill` reaches all of it.
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // Something the child started may still hold the pipes open; give it a moment, then end its
    // group (which, while such a process lives, still has the child's id).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(stdout.is_finished() && stderr.is_finished()) {
        if Instant::now() > deadline {
            let _ =
                Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Run {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}
