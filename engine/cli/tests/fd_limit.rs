//! The binary raises its soft open-file limit to the hard one at start (the library never does
//! on its own): started with a low soft limit, it runs with the hard one.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use ringside_tests::WAIT;

const BIN: &str = env!("CARGO_BIN_EXE_ringside");
/// The soft limit the binary is started with.
const LOW: u64 = 256;

/// Kills the child on drop (a failed test must not leave it running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Max open files` of a process, soft and hard, from /proc/PID/limits ("unlimited": u64::MAX).
fn open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("the line");
    let value = |v: &str| if v == "unlimited" { u64::MAX } else { v.parse().unwrap() };
    let mut fields = line["Max open files".len()..].split_whitespace();
    (value(fields.next().unwrap()), value(fields.next().unwrap()))
}

#[test]
fn the_binary_raises_its_soft_open_file_limit_to_the_hard_one() {
    let (_, hard) = open_files(std::process::id());
    if hard <= LOW {
        eprintln!(
            "SKIPPED: the hard open-file limit ({hard}) leaves no room to lower the soft one"
        );
        return;
    }
    // `ulimit -Sn` lowers only the soft limit; the binary inherits the hard one.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn {LOW} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin", "--backend", "epoll"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    let stdout = child.stdout.take().unwrap();
    let child = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The limit is raised before the server is built, so before this line.
    let line = rx.recv_timeout(WAIT).expect("the `listening on` line");
    assert!(line.starts_with("ringside: listening on "), "{line:?}");
    let (soft, child_hard) = open_files(child.0.id());
    assert_eq!(child_hard, hard);
    if hard == u64::MAX {
        // Unlimited: raised to fs.nr_open, the most a soft limit may be.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap();
        assert_eq!(soft, nr_open.trim().parse::<u64>().unwrap());
    } else {
        assert_eq!(soft, hard);
    }
}
