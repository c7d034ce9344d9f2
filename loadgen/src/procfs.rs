//! Readers of /proc: the server's CPU time and RSS, and the kernel's socket memory
//! (/proc/net/sockstat, /proc/meminfo).

use std::collections::BTreeMap;
use std::io;

use serde_json::{json, Value};

/// User + system CPU seconds of process `pid`, from /proc/PID/stat (ticks of `_SC_CLK_TCK`,
/// usually 10 ms: over a 5 s window that is a 0.2% resolution).
pub fn cpu_s(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| io::Error::new(e.kind(), format!("reading /proc/{pid}/stat: {e}")))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_s() as f64)
        .ok_or_else(|| io::Error::other(format!("unparsable /proc/{pid}/stat")))
}

/// Seconds the threads of process `pid` spent runnable but waiting for a CPU, summed over its
/// threads alive now (the second field of /proc/PID/task/TID/schedstat; 0 where the kernel
/// keeps no schedstats). Over a window it says whether a slow server was busy or starved.
pub fn run_delay_s(pid: u32) -> io::Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| io::Error::new(e.kind(), format!("reading /proc/{pid}/task: {e}")))?;
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read: skip it.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += text.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// utime + stime from the text of /proc/PID/stat.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15 of proc(5): the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf(3) has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// Resident set size of `pid` in bytes, from VmRSS in /proc/PID/status.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| io::Error::new(e.kind(), format!("reading /proc/{pid}/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// The TCP line of /proc/net/sockstat (inuse, orphan, tw, alloc, mem in pages), with `mem`
/// also in bytes, and MemAvailable from /proc/meminfo.
pub fn socket_memory() -> Value {
    let page = page_size();
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let mut tcp = parse_sockstat_tcp(&sockstat);
    let mem_bytes = tcp.get("mem").map(|p| p * page);
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    let mut out = serde_json::Map::new();
    for (k, v) in std::mem::take(&mut tcp) {
        out.insert(format!("tcp_{k}"), json!(v));
    }
    out.insert("tcp_mem_bytes".into(), json!(mem_bytes));
    out.insert("mem_available_bytes".into(), json!(available));
    Value::Object(out)
}

fn parse_sockstat_tcp(text: &str) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    if let Some(line) = text.lines().find_map(|l| l.strip_prefix("TCP:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.chunks(2) {
            if let [k, v] = pair {
                if let Ok(v) = v.parse() {
                    map.insert((*k).to_string(), v);
                }
            }
        }
    }
    map
}

fn page_size() -> u64 {
    // SAFETY: sysconf(3) has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_odd_command_names() {
        let stat = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(42));
        assert!(cpu_s(std::process::id()).is_ok());
        assert!(run_delay_s(std::process::id()).unwrap() >= 0.0);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn sockstat_tcp_line_parses() {
        let text = "sockets: used 290\nTCP: inuse 7 orphan 0 tw 3 alloc 9 mem 2\nUDP: inuse 1\n";
        let m = parse_sockstat_tcp(text);
        assert_eq!(m["inuse"], 7);
        assert_eq!(m["mem"], 2);
        assert_eq!(m["tw"], 3);
        assert!(socket_memory()["tcp_inuse"].is_u64());
    }
}
