//! Child processes of a benchmark: servers under test (pinned with `taskset`, stopped with
//! SIGTERM) and load generator runs (their JSON report parsed), plus /proc readings.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the release binaries are: next to this one (`cargo run --release` puts them all in
/// the same target directory).
pub fn bin_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| io::Error::other("no binary directory"))
}

/// Builds the release binaries the benchmarks run (the servers, the peers, the load generator),
/// printing cargo's output.
pub fn build_release() -> io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    eprintln!("building release binaries: ringside, ringside-load, the peers");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "-p", "ringside-cli", "-p", "ringside-loadgen"])
        .args(["-p", "ringside-peers", "-p", "ringside-bench"])
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!("cargo build --release failed: {status}")));
    }
    Ok(())
}

/// A server process under test: started pinned, stopped (SIGTERM, then SIGKILL) on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Runs `bin args` under `taskset -c cpus` and waits (at most 20 s) for the line that says
    /// `listening on ADDR`.
    pub fn start(cpus: &str, bin: &Path, args: &[String]) -> io::Result<Self> {
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(cpus)
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("taskset {}: {e}", bin.display())))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                // Keep draining so the server never blocks on a full pipe.
            }
        });
        let mut server = ServerProcess { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)) };
        let line = rx.recv_timeout(Duration::from_secs(20)).map_err(|_| {
            io::Error::other(format!("{} did not say `listening on`", bin.display()))
        })?;
        server.addr = line
            .parse()
            .map_err(|_| io::Error::other(format!("{}: bad address {line:?}", bin.display())))?;
        Ok(server)
    }

    /// The server's pid (the one `taskset` exec'd into).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the pid of our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ringside-load` under `taskset -c cpus` with `args` and `--json -`, bounded by
/// `limit`, and returns its report. A run that exits non-zero or prints no JSON is an error
/// carrying its stderr.
pub fn load(bins: &Path, cpus: &str, args: &[String], limit: Duration) -> io::Result<Value> {
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(cpus)
        .arg(bins.join("ringside-load"))
        .args(args)
        .args(["--json", "-", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let read = |mut r: Box<dyn io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "ringside-load {} ran past {limit:?}",
                args.join(" ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let report: Option<Value> = serde_json::from_str(out.trim()).ok();
    match report {
        Some(r) if status.success() => Ok(r),
        _ => Err(io::Error::other(format!(
            "ringside-load {} failed ({status}): {}",
            args.join(" "),
            err.trim()
        ))),
    }
}

/// Resident set size of `pid` in bytes, from /proc.
pub fn rss(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}

/// A number from a JSON report at `path` (dot-separated), NaN if absent.
pub fn num(v: &Value, path: &str) -> f64 {
    path.split('.').try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The sum of the report's error counters.
pub fn errors(v: &Value) -> u64 {
    v.get("errors")
        .and_then(Value::as_object)
        .map_or(0, |e| e.values().filter_map(Value::as_u64).sum())
}

/// Median of `values` ignoring NaNs (NaN if none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// Geometric mean of positive finite values (NaN if none).
pub fn geomean(values: &[f64]) -> f64 {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite() && *x > 0.0).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// The machine, for the report: CPU model, CPU count, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1048576.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cpus} CPUs, {mem_gib:.0} GiB, Linux {}", kernel.trim())
}

/// Today's date (UTC), from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path` with
/// `body`, or appends the marked section if it is not there yet.
pub fn splice_doc(path: &Path, name: &str, body: &str) -> io::Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let new = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n\n{section}\n", doc.trim_end()),
    };
    std::fs::write(path, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert!((geomean(&[1.0, 4.0]) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn json_paths_and_errors() {
        let v: Value = serde_json::from_str(r#"{"a":{"b":2.5},"errors":{"x":1,"y":2}}"#).unwrap();
        assert_eq!(num(&v, "a.b"), 2.5);
        assert!(num(&v, "a.c").is_nan());
        assert_eq!(errors(&v), 3);
    }

    #[test]
    fn splice_replaces_or_appends_a_marked_section() {
        let dir = std::env::temp_dir().join(format!("splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("doc.md");
        std::fs::write(&path, "# Title\n\ntext\n").unwrap();
        splice_doc(&path, "x", "one").unwrap();
        splice_doc(&path, "x", "two").unwrap();
        let doc = std::fs::read_to_string(&path).unwrap();
        assert_eq!(doc, "# Title\n\ntext\n\n<!-- x:begin -->\ntwo\n<!-- x:end -->\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn today_is_a_date() {
        let t = today();
        assert_eq!(t.len(), 10);
        assert!(t.starts_with("20"));
    }
}
