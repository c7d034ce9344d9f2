//! What the interop tests share: running a client script with a time limit and reading its
//! report, and installing the clients' dependencies once per test process when missing (`pip
//! install` for `websockets`, `npm ci` in `tests/interop/node`, `apt-get install chromium`). An
//! install that fails fails the tests that need it, with the installer's output; nothing is
//! skipped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// How long one client run may take, browser start included.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// How long one package-manager step may take.
pub const INSTALL_LIMIT: Duration = Duration::from_secs(600);
/// The browser the playwright client drives (Debian's `chromium` package).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs one client script and fails the test unless it exited 0 having reported every check.
pub fn run_client(name: &str, cmd: &mut Command, checks: &[&str]) {
    let run = run_bounded(cmd, CLIENT_LIMIT);
    let report = run.report(name);
    assert!(run.status.is_some(), "{name}: still running after {CLIENT_LIMIT:?}, killed\n{report}");
    assert!(run.succeeded(), "{name}: client failed\n{report}");
    for check in checks {
        let prefix = format!("ok {check}:");
        assert!(
            run.stdout.lines().any(|l| l.starts_with(&prefix)),
            "{name}: exited 0 without reporting `{prefix}`\n{report}"
        );
    }
    println!("{report}");
}

/// `websockets` (14 or later, for the sync client) importable by `python3`.
pub fn python_deps() {
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
pub fn node_deps() {
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
pub fn chromium_deps() {
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

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// What a bounded child run produced.
#[derive(Debug)]
pub struct Run {
    /// None when it did not start or was killed at the limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn report(&self, name: &str) -> String {
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
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Run {
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
