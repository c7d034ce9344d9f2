//! The uWebSockets peers (`bench/peers/uws`: `uws-echo` for `compare`, `uws-broadcast-plain`
//! for `fanout`, `uws-broadcast` for `compression`), built from uWebSockets' sources with the system C++ compiler by
//! `bench/peers/uws/build.sh`, into `uws/` beside the release binaries. A build is reused while
//! it is newer than the sources, the peers' C++ files and the build script.
//!
//! The sources are not fetched: `--uws-src` (or `RINGSIDE_UWS_SRC`) names a tarball or a
//! directory holding `uWebSockets/` and the `uSockets/` it pins. Without them, or when the
//! build fails, the benchmark runs without uWebSockets and its report says why.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::procs;

/// A peer `build.sh` knows how to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `uws-echo`: echo, no compression, one thread.
    Echo,
    /// `uws-broadcast-plain`: the broadcast protocol on uWS pub/sub, no compression.
    BroadcastPlain,
    /// `uws-broadcast`: the same with SHARED_COMPRESSOR (needs zlib's headers).
    Broadcast,
}

impl Peer {
    fn target(self) -> &'static str {
        match self {
            Peer::Echo => "echo",
            Peer::BroadcastPlain => "broadcast-plain",
            Peer::Broadcast => "broadcast",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Peer::Echo => "uws-echo",
            Peer::BroadcastPlain => "uws-broadcast-plain",
            Peer::Broadcast => "uws-broadcast",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Peer::Echo => "echo.cpp",
            Peer::BroadcastPlain | Peer::Broadcast => "broadcast.cpp",
        }
    }
}

/// The environment variable read when `--uws-src` is not given.
pub const SRC_ENV: &str = "RINGSIDE_UWS_SRC";

/// Longest a compiler install or a build may take.
const STEP_LIMIT: Duration = Duration::from_secs(900);

/// The path of `peer`'s binary, building it first if it is missing or older than its inputs.
/// `src`: the uWebSockets sources (else [`SRC_ENV`]). The error says why there is no binary, in
/// a sentence for the report.
pub fn prepare(src: Option<&Path>, peer: Peer) -> Result<PathBuf, String> {
    let src = match src.map(Path::to_path_buf).or_else(|| std::env::var_os(SRC_ENV).map(Into::into))
    {
        Some(s) => s,
        None => {
            return Err(format!(
                "no uWebSockets sources given (--uws-src UWEBSOCKETS.tar.gz, or {SRC_ENV})"
            ))
        }
    };
    if !src.exists() {
        return Err(format!("the uWebSockets sources {} do not exist", src.display()));
    }
    let bins = procs::bin_dir().map_err(|e| format!("no binary directory: {e}"))?;
    let out = bins.join("uws");
    let bin = out.join(peer.binary());
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/uws");
    let script = peers.join("build.sh");
    let inputs = [src.clone(), script.clone(), peers.join(peer.source())];
    if is_fresh(&bin, &inputs) {
        return Ok(bin);
    }
    ensure_compiler()?;
    if peer == Peer::Broadcast {
        ensure_zlib()?;
    }
    eprintln!("building {} from {}", bin.display(), src.display());
    let mut cmd = Command::new("sh");
    cmd.arg(&script).arg(&src).arg(peer.target()).env("OUT", &out);
    step(&mut cmd).map_err(|e| format!("building {} failed: {e}", peer.binary()))?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("build.sh succeeded but {} is missing", bin.display()))
    }
}

/// Whether `bin` exists and is newer than every input (a directory counts by its own mtime:
/// replace it, or touch it, to force a rebuild).
fn is_fresh(bin: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let Some(built) = modified(bin) else { return false };
    inputs.iter().all(|i| modified(i).is_some_and(|t: SystemTime| t <= built))
}

/// gcc and g++, installed with apt-get (Debian's `g++`, which brings gcc) when missing.
fn ensure_compiler() -> Result<(), String> {
    let have = |c: &str| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("gcc") && have("g++") {
        return Ok(());
    }
    eprintln!("gcc/g++ missing: installing g++ with apt-get");
    apt_install("g++")?;
    if have("gcc") && have("g++") {
        Ok(())
    } else {
        Err("apt-get installed g++ but gcc or g++ still does not run".into())
    }
}

/// zlib's headers (Debian's `zlib1g-dev`), for the peer with compression; installed with
/// apt-get when missing.
fn ensure_zlib() -> Result<(), String> {
    let header = Path::new("/usr/include/zlib.h");
    if header.exists() {
        return Ok(());
    }
    eprintln!("zlib.h missing: installing zlib1g-dev with apt-get");
    apt_install("zlib1g-dev")?;
    if header.exists() {
        Ok(())
    } else {
        Err("apt-get installed zlib1g-dev but /usr/include/zlib.h is still missing".into())
    }
}

/// `apt-get install -y PACKAGE` (after an update), bounded like every step.
fn apt_install(package: &str) -> Result<(), String> {
    // Other processes may be installing their own packages: wait for apt's lock.
    let lock = ["-o", "DPkg::Lock::Timeout=300"];
    step(Command::new("apt-get").args(lock).arg("update"))
        .map_err(|e| format!("apt-get update failed: {e}"))?;
    step(
        Command::new("apt-get")
            .args(lock)
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| format!("apt-get install {package} failed: {e}"))
}

/// Runs `cmd` bounded by [`STEP_LIMIT`]; the error carries the end of its output.
fn step(cmd: &mut Command) -> Result<(), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < STEP_LIMIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default());
    // The end of the output is where a compiler says what went wrong; one line, so it can sit
    // in a sentence of the report.
    let tail: String = {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        lines[lines.len().saturating_sub(15)..].join(" / ")
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{s}: {tail}")),
        None => Err(format!("ran past {STEP_LIMIT:?}: {tail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_modification_times() {
        let dir = std::env::temp_dir().join(format!("uws-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, bin) = (dir.join("input"), dir.join("bin"));
        std::fs::write(&input, "a").unwrap();
        assert!(!is_fresh(&bin, std::slice::from_ref(&input)), "a missing binary is stale");
        std::fs::write(&bin, "b").unwrap();
        let past = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&input).unwrap().set_modified(past).unwrap();
        assert!(is_fresh(&bin, std::slice::from_ref(&input)));
        let future = SystemTime::now() + Duration::from_secs(60);
        std::fs::File::options().write(true).open(&input).unwrap().set_modified(future).unwrap();
        assert!(!is_fresh(&bin, std::slice::from_ref(&input)), "a newer input means a rebuild");
        assert!(!is_fresh(&bin, &[dir.join("absent")]), "a missing input means a rebuild");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_sources_are_explained() {
        let e = prepare(Some(Path::new("/nonexistent/uws.tar.gz")), Peer::Echo).unwrap_err();
        assert!(e.contains("do not exist"), "{e}");
    }
}
