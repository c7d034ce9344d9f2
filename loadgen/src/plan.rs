//! How a run is split: connections over processes (each under the open-file limit), over
//! threads within a process, and over source addresses (each 4-tuple needs its own port, and one
//! source/destination address pair has about 28,000 ephemeral ports).
//!
//! Connection `g` (a global index) belongs to the part whose range holds it and uses source
//! address `g % addresses`, so every process and thread spreads evenly over the addresses, and
//! by default local port `first + g / addresses` of the ephemeral range: unique per address
//! without asking the kernel. (The kernel's own choice, IP_BIND_ADDRESS_NO_PORT, scans the port
//! range calling `__inet_check_established` per candidate; measured here it took 85% of both
//! cores and the ramp fell to ~2,000 connections/s past 100k connections. `--kernel-ports`
//! brings it back.)

use std::net::Ipv4Addr;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Connections per source address by default: under the ~28,000 ephemeral ports of one pair.
pub const PER_ADDRESS: u64 = 25_000;

/// File descriptors a process keeps for itself beyond its sockets: epoll instances, pipes,
/// stdio, /proc reads.
pub const FD_MARGIN: u64 = 256;

/// The split of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Global connection ranges, one per process.
    pub parts: Vec<Range<u64>>,
    /// Threads per process.
    pub threads: usize,
    /// Source addresses to bind before connecting; empty: let the kernel choose.
    pub source_addrs: Vec<Ipv4Addr>,
    /// Local ports to assign ourselves; None: the kernel picks them at connect time.
    pub ports: Option<Ports>,
}

/// A local port range: `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub first: u16,
    pub count: u32,
}

/// What the split depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// Sockets held at once over the whole run.
    pub sockets: u64,
    /// The per-process open-file limit (the soft limit after raising it to the hard one).
    pub nofile: u64,
    pub procs: Option<usize>,
    pub threads: usize,
    pub source_addrs: Option<u32>,
    /// The fewest source addresses to use by default (more spread for TIME_WAIT churn).
    pub min_source_addrs: u32,
    /// The target is on loopback (source addresses in 127.0.0.0/8 can reach it).
    pub loopback: bool,
    /// The ephemeral port range (available per source/destination pair).
    pub ports: Ports,
    /// Let the kernel choose local ports (IP_BIND_ADDRESS_NO_PORT) instead of assigning them.
    pub kernel_ports: bool,
}

pub fn plan(i: Inputs) -> Result<Plan, String> {
    let per_proc = sockets_per_process(i.nofile, i.threads);
    if per_proc == 0 {
        return Err(format!(
            "the open-file limit ({}) leaves no room for sockets: raise `ulimit -Hn`",
            i.nofile
        ));
    }
    let procs = match i.procs {
        Some(0) => return Err("--procs must be at least 1".into()),
        Some(p) => {
            let share = i.sockets.div_ceil(p as u64);
            if share > per_proc {
                return Err(format!(
                    "--procs {p} gives each process {share} sockets, over what the open-file \
                     limit ({}) allows ({per_proc}): use --procs {} or more",
                    i.nofile,
                    i.sockets.div_ceil(per_proc)
                ));
            }
            p
        }
        None => i.sockets.div_ceil(per_proc).max(1) as usize,
    };
    let source_addrs = match (i.loopback, i.source_addrs) {
        (false, Some(_)) => {
            return Err("--source-addrs binds 127.0.0.x: it needs a target in 127.0.0.0/8".into())
        }
        (false, None) => Vec::new(),
        (true, n) => {
            let n = match n {
                Some(0) => return Err("--source-addrs must be at least 1".into()),
                Some(n) => n,
                None => default_source_addrs(i.sockets).max(i.min_source_addrs),
            };
            let per_addr = i.sockets.div_ceil(u64::from(n));
            let ports = u64::from(i.ports.count);
            if per_addr > ports {
                return Err(format!(
                    "{} connections over {n} source addresses is {per_addr} per address, over \
                     the {} ephemeral ports: use --source-addrs {} or more",
                    i.sockets,
                    ports,
                    i.sockets.div_ceil(ports)
                ));
            }
            source_addresses(n)?
        }
    };
    let ports = (!source_addrs.is_empty() && !i.kernel_ports).then_some(i.ports);
    Ok(Plan { parts: split(0..i.sockets, procs), threads: i.threads, source_addrs, ports })
}

/// Sockets one process may hold: the limit less the margin and two descriptors per thread.
pub fn sockets_per_process(nofile: u64, threads: usize) -> u64 {
    nofile.saturating_sub(FD_MARGIN + 2 * threads as u64)
}

/// One address per [`PER_ADDRESS`] connections, at least one.
pub fn default_source_addrs(sockets: u64) -> u32 {
    sockets.div_ceil(PER_ADDRESS).clamp(1, u64::from(u32::MAX)) as u32
}

/// 127.0.0.1, 127.0.0.2, ... (n of them, carrying into the third octet past .255).
pub fn source_addresses(n: u32) -> Result<Vec<Ipv4Addr>, String> {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
    if n > 0x00ff_fffe {
        return Err(format!("--source-addrs {n} does not fit in 127.0.0.0/8"));
    }
    Ok((0..n).map(|k| Ipv4Addr::from(base + k)).collect())
}

/// Splits `range` into `n` contiguous pieces whose sizes differ by at most one (the first ones
/// larger). `n` of 0 is treated as 1.
pub fn split(range: Range<u64>, n: usize) -> Vec<Range<u64>> {
    let n = n.max(1) as u64;
    let len = range.end.saturating_sub(range.start);
    let (each, extra) = (len / n, len % n);
    let mut at = range.start;
    (0..n)
        .map(|k| {
            let size = each + u64::from(k < extra);
            let piece = at..at + size;
            at += size;
            piece
        })
        .collect()
}

/// Attempts at a local port before giving up on a connection: a port may be held by another
/// program, or by one of our own connections that moved off its port the same way.
pub const PORT_ATTEMPTS: u32 = 8;

/// The source address of connection `g`, and its local port if we assign ports (`attempt`
/// moves it to another port of the range after EADDRINUSE).
pub fn source_for(
    g: u64,
    addrs: &[Ipv4Addr],
    ports: Option<Ports>,
    attempt: u32,
) -> Option<(Ipv4Addr, Option<u16>)> {
    if addrs.is_empty() {
        return None;
    }
    let n = addrs.len() as u64;
    let port = ports.map(|p| {
        // A prime stride, so retries spread over the range instead of piling onto neighbours.
        let slot = (g / n + u64::from(attempt) * 7_919) % u64::from(p.count.max(1));
        p.first + slot as u16
    });
    Some((addrs[(g % n) as usize], port))
}

/// The ephemeral range from /proc/sys/net/ipv4/ip_local_port_range (32768-60999 by default).
pub fn ephemeral_range() -> Ports {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|v| v.parse::<u32>().ok());
            let (lo, hi) = (it.next()?, it.next()?);
            (lo <= hi && hi <= 65_535).then(|| Ports { first: lo as u16, count: hi - lo + 1 })
        })
        .unwrap_or(Ports { first: 32_768, count: 28_232 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(sockets: u64) -> Inputs {
        Inputs {
            sockets,
            nofile: 20_000,
            procs: None,
            threads: 1,
            source_addrs: None,
            min_source_addrs: 1,
            loopback: true,
            ports: Ports { first: 32_768, count: 28_232 },
            kernel_ports: false,
        }
    }

    #[test]
    fn split_is_even_and_covers_the_range() {
        assert_eq!(split(0..10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(split(5..7, 4), vec![5..6, 6..7, 7..7, 7..7]);
        assert_eq!(split(0..0, 0), vec![0..0]);
        for (len, n) in [(200_000u64, 11usize), (300, 2), (7, 7), (1, 3)] {
            let parts = split(0..len, n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.iter().map(|r| r.end - r.start).sum::<u64>(), len);
            let sizes: Vec<u64> = parts.iter().map(|r| r.end - r.start).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn two_hundred_thousand_connections_fit_this_machine() {
        let p = plan(inputs(200_000)).unwrap();
        // 19,742 sockets per process under a 20,000 limit: 11 processes, 8 addresses.
        assert_eq!(p.parts.len(), 11);
        assert!(p.parts.iter().all(|r| r.end - r.start <= sockets_per_process(20_000, 1)));
        assert_eq!(p.source_addrs.len(), 8);
        assert_eq!(p.source_addrs[0], Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(p.source_addrs[7], Ipv4Addr::new(127, 0, 0, 8));
        // Each address carries 25,000 connections, each on its own port of the range.
        let mut used = std::collections::HashSet::new();
        let mut per = [0u64; 8];
        for g in 0..200_000 {
            let (a, port) = source_for(g, &p.source_addrs, p.ports, 0).unwrap();
            per[(a.octets()[3] - 1) as usize] += 1;
            let port = port.unwrap();
            assert!((32_768..61_000).contains(&port));
            assert!(used.insert((a, port)), "connection {g} reuses {a}:{port}");
        }
        assert!(per.iter().all(|&n| n == 25_000));
        // Retries land elsewhere in the range.
        let (_, p0) = source_for(5, &p.source_addrs, p.ports, 0).unwrap();
        let (_, p1) = source_for(5, &p.source_addrs, p.ports, 1).unwrap();
        assert_ne!(p0, p1);
        let kernel = plan(Inputs { kernel_ports: true, ..inputs(100) }).unwrap();
        assert_eq!(source_for(0, &kernel.source_addrs, kernel.ports, 0).unwrap().1, None);
    }

    #[test]
    fn small_runs_stay_in_one_process_and_explicit_flags_are_checked() {
        let p = plan(inputs(100)).unwrap();
        assert_eq!((p.parts.len(), p.source_addrs.len()), (1, 1));
        let p = plan(Inputs { procs: Some(2), source_addrs: Some(2), ..inputs(300) }).unwrap();
        assert_eq!(p.parts, vec![0..150, 150..300]);
        assert_eq!(p.source_addrs.len(), 2);
        let e = plan(Inputs { procs: Some(1), ..inputs(30_000) }).unwrap_err();
        assert!(e.contains("--procs 2"), "{e}");
        let e = plan(Inputs { source_addrs: Some(1), ..inputs(30_000) }).unwrap_err();
        assert!(e.contains("--source-addrs 2"), "{e}");
        let p = plan(Inputs { loopback: false, ..inputs(10) }).unwrap();
        assert!(p.source_addrs.is_empty());
        assert_eq!(source_addresses(300).unwrap()[255], Ipv4Addr::new(127, 0, 1, 0));
    }
}
