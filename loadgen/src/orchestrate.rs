//! The parent: plans the split, starts the parts (in this process when there is one, else as
//! child processes re-executing this binary), runs the phase barrier, takes the server and
//! kernel readings at the phase times, merges the parts' tallies and reports.
//!
//! Every wait on a part has a deadline; on any failure every part is aborted and every child
//! killed and reaped.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use serde_json::Value;

use crate::cli::Scenario;
use crate::part::{self, FromPart, PartSpec, Progress, Setup, Times, ToPart};
use crate::plan::{self, Inputs, Plan};
use crate::procfs;
use crate::report::{self, Readings, ServerReading};
use crate::scenario::hold::{open_window, sample_warmup_s};
use crate::stats::Tally;
use crate::sys::{self, now_ns, secs_ns};
use crate::target::{is_loopback_v4, Target};

pub fn run(scenario: Scenario) -> Result<(), String> {
    scenario.validate()?;
    let common = scenario.common().clone();
    let target = Target::from_common(&common)?;
    let nofile = sys::raise_nofile();
    let plan = plan::plan(Inputs {
        sockets: scenario.sockets(),
        nofile,
        procs: common.procs,
        threads: common.threads,
        source_addrs: common.source_addrs,
        // Connect churns through 4-tuples that linger in TIME_WAIT: spread it from the start.
        min_source_addrs: if matches!(scenario, Scenario::Connect(_)) { 16 } else { 1 },
        loopback: is_loopback_v4(target.addr.ip()),
        ports: plan::ephemeral_range(),
        kernel_ports: common.kernel_ports,
    })?;
    let server = common.server_pid;
    let mut readings = Readings::default();
    if let Some(pid) = server {
        let rss = procfs::rss_bytes(pid)
            .map_err(|e| format!("--server-pid {pid}: {e} (is the server running?)"))?;
        readings.rss_before = Some(rss);
    }
    readings.sockstat_before = procfs::socket_memory();
    let mut parts = Parts::start(&scenario, &target, &plan)?;
    let result = drive(&scenario, &plan, &mut parts, &mut readings);
    match result {
        Ok((tally, times, setup)) => {
            parts.reap();
            let report =
                report::build(&scenario, &target, &plan, &tally, &times, &setup, &readings);
            report::emit(&report, &common)
        }
        Err(e) => {
            parts.abort();
            Err(e)
        }
    }
}

/// The phases, from the parent's side.
fn drive(
    scenario: &Scenario,
    plan: &Plan,
    parts: &mut Parts,
    readings: &mut Readings,
) -> Result<(Tally, Times, Setup), String> {
    let common = scenario.common();
    let server = common.server_pid;
    let longest_part = plan.parts.iter().map(|r| r.end - r.start).max().unwrap_or(0);
    let part_rate = scenario.ramp_rate() * longest_part as f64 / scenario.sockets().max(1) as f64;
    let setup_deadline = now_ns()
        + part::setup_bound_ns(longest_part, part_rate, common.connect_timeout)
        + secs_ns(10.0);
    parts.wait(setup_deadline, "setting up", |p| p.ready.is_some())?;
    let mut setup = Setup::default();
    for p in &parts.state {
        let s = p.ready.expect("all ready");
        setup.opened += s.opened;
        setup.failed += s.failed;
        setup.ramp_start_ns = match (setup.ramp_start_ns, s.ramp_start_ns) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        setup.ramp_end_ns = setup.ramp_end_ns.max(s.ramp_end_ns);
    }
    let times = phase_times(scenario, now_ns() + 100_000_000);
    parts.go_started = times.start;
    for i in 0..parts.len() {
        parts.send(i, &ToPart::Go(times))?;
    }
    let cpu_of = |pid: Option<u32>| pid.map(procfs::cpu_s).transpose().map_err(|e| e.to_string());
    if let Scenario::Hold(h) = scenario {
        // "While holding": just before the sample traffic starts.
        let hold_end = times.start + secs_ns(h.hold_secs);
        parts.sleep_until(hold_end.saturating_sub(50_000_000).max(times.start))?;
        if let Some(pid) = server {
            readings.rss_held = Some(procfs::rss_bytes(pid).map_err(|e| e.to_string())?);
        }
        readings.sockstat_held = procfs::socket_memory();
    }
    parts.sleep_until(times.t0)?;
    let delay_of = |pid: Option<u32>| pid.and_then(|p| procfs::run_delay_s(p).ok());
    let server_cpu0 = cpu_of(server)?;
    let server_delay0 = delay_of(server);
    let self_cpu0 = sys::self_cpu_s();
    parts.sleep_until(times.t1)?;
    let server_cpu1 = cpu_of(server)?;
    let server_delay1 = delay_of(server);
    let self_cpu1 = sys::self_cpu_s();
    if let Some(pid) = server {
        readings.server = Some(ServerReading {
            pid,
            cpu_s: server_cpu1.unwrap_or(0.0) - server_cpu0.unwrap_or(0.0),
            run_delay_s: server_delay1.zip(server_delay0).map(|(b, a)| (b - a).max(0.0)),
            rss_bytes: procfs::rss_bytes(pid).ok(),
        });
    }
    // The parts' own bound on their close phase (see part.rs), plus a margin.
    let closes = scenario.sockets() / common.max_pending.max(1) as u64 + longest_part;
    let deadline = times.stop.max(times.t1)
        + 2 * secs_ns(common.close_timeout)
        + secs_ns(60.0)
        + closes * 1_000_000;
    parts.wait(deadline, "finishing", |p| p.done.is_some())?;
    let mut tally = Tally::default();
    for p in &mut parts.state {
        tally.merge(p.done.as_ref().expect("all done"));
    }
    if parts.children.is_empty() {
        // One part in this process: its CPU reading already covers this thread.
    } else {
        tally.cpu_s += self_cpu1 - self_cpu0;
    }
    parts.clear_progress();
    Ok((tally, times, setup))
}

/// Absolute phase times for a go at `start`.
fn phase_times(scenario: &Scenario, start: u64) -> Times {
    let c = scenario.common();
    match scenario {
        Scenario::Hold(h) => {
            let hold_end = start + secs_ns(h.hold_secs);
            let t0 = hold_end + secs_ns(sample_warmup_s(c));
            let t1 = t0 + secs_ns(h.sample_secs);
            let stop = if h.open_rate > 0.0 { open_window(h, t1).1 } else { t1 };
            Times { start, t0, t1, stop }
        }
        _ => {
            let t0 = start + secs_ns(c.warmup);
            let t1 = t0 + secs_ns(c.duration);
            let drain = if let Scenario::Fanout(f) = scenario { secs_ns(f.drain_secs) } else { 0 };
            Times { start, t0, t1, stop: t1 + drain }
        }
    }
}

#[derive(Debug, Default)]
struct PartState {
    ready: Option<Setup>,
    done: Option<Box<Tally>>,
    progress: Progress,
    exited: bool,
}

enum PartTx {
    Local(Sender<ToPart>),
    Child(ChildStdin),
}

/// The running parts and what the parent knows of them.
struct Parts {
    tx: Vec<PartTx>,
    rx: Receiver<(usize, FromPart)>,
    children: Vec<Child>,
    state: Vec<PartState>,
    show_progress: bool,
    next_progress: u64,
    last_progress: (u64, u64),
    go_started: u64,
    started: u64,
}

impl Parts {
    fn start(scenario: &Scenario, target: &Target, plan: &Plan) -> Result<Parts, String> {
        let common = scenario.common();
        let (all_tx, rx) = mpsc::channel();
        let total = scenario.sockets();
        let mut tx = Vec::new();
        let mut children = Vec::new();
        let one = plan.parts.len() == 1;
        for (i, range) in plan.parts.iter().enumerate() {
            let share = (range.end - range.start) as f64 / total.max(1) as f64;
            let cpus = if common.pin_cpus.is_empty() {
                Vec::new()
            } else {
                (0..plan.threads)
                    .map(|t| common.pin_cpus[(i * plan.threads + t) % common.pin_cpus.len()])
                    .collect()
            };
            let spec = PartSpec {
                scenario: scenario.clone(),
                target: target.clone(),
                index: i,
                range: range.clone(),
                total,
                threads: plan.threads,
                cpus,
                source_addrs: plan.source_addrs.clone(),
                ports: plan.ports,
                ramp_rate: scenario.ramp_rate() * share,
                max_pending: ((common.max_pending as f64 * share).ceil() as usize).max(1),
                parent_pid: std::process::id(),
            };
            if one {
                let (cmd_tx, cmd_rx) = mpsc::channel();
                let all = all_tx.clone();
                std::thread::Builder::new()
                    .name("part-0".into())
                    .spawn(move || {
                        part::run(spec, cmd_rx, |m| {
                            let _ = all.send((i, m));
                        });
                        let _ = all.send((i, FromPart::Exited));
                    })
                    .map_err(|e| format!("cannot start the load thread: {e}"))?;
                tx.push(PartTx::Local(cmd_tx));
                continue;
            }
            let json = serde_json::to_string(&spec).expect("specs serialize");
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot find this executable to start children: {e}"))?;
            let mut child = Command::new(exe)
                .args(["child", "--spec", &json])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start child process {i}: {e}"))?;
            let stdout = child.stdout.take().expect("piped");
            let stdin = child.stdin.take().expect("piped");
            let all = all_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = serde_json::from_str::<FromPart>(&line).unwrap_or_else(|e| {
                        FromPart::Failed(format!("child {i} printed {line:?} ({e})"))
                    });
                    if all.send((i, msg)).is_err() {
                        return;
                    }
                }
                let _ = all.send((i, FromPart::Exited));
            });
            tx.push(PartTx::Child(stdin));
            children.push(child);
        }
        let n = plan.parts.len();
        Ok(Parts {
            tx,
            rx,
            children,
            state: (0..n).map(|_| PartState::default()).collect(),
            show_progress: !common.quiet && sys::stderr_is_tty(),
            next_progress: 0,
            last_progress: (now_ns(), 0),
            go_started: 0,
            started: now_ns(),
        })
    }

    fn len(&self) -> usize {
        self.tx.len()
    }

    fn send(&mut self, i: usize, cmd: &ToPart) -> Result<(), String> {
        let ok = match &mut self.tx[i] {
            PartTx::Local(tx) => tx.send(cmd.clone()).is_ok(),
            PartTx::Child(stdin) => {
                let line = serde_json::to_string(cmd).expect("commands serialize");
                writeln!(stdin, "{line}").and_then(|_| stdin.flush()).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("part {i} is gone"))
        }
    }

    /// Handles part messages until `done` holds for every part; fails past `deadline`.
    fn wait(
        &mut self,
        deadline: u64,
        what: &str,
        done: impl Fn(&PartState) -> bool,
    ) -> Result<(), String> {
        loop {
            if self.state.iter().all(&done) {
                return Ok(());
            }
            let now = now_ns();
            if now >= deadline {
                let late: Vec<usize> = (0..self.len()).filter(|&i| !done(&self.state[i])).collect();
                return Err(format!("parts {late:?} took too long {what}"));
            }
            self.pump(deadline.min(now + 200_000_000))?;
        }
    }

    /// Handles part messages until `at`.
    fn sleep_until(&mut self, at: u64) -> Result<(), String> {
        while now_ns() < at {
            self.pump(at)?;
        }
        Ok(())
    }

    /// Handles part messages until `until` or the next message.
    fn pump(&mut self, until: u64) -> Result<(), String> {
        let wait = until.saturating_sub(now_ns()).min(200_000_000);
        match self.rx.recv_timeout(Duration::from_nanos(wait)) {
            Ok((i, msg)) => {
                let s = &mut self.state[i];
                match msg {
                    FromPart::Ready(r) => s.ready = Some(r),
                    FromPart::Progress(p) => s.progress = p,
                    FromPart::Done(t) => s.done = Some(t),
                    FromPart::Failed(e) => return Err(e),
                    FromPart::Exited => {
                        s.exited = true;
                        if s.done.is_none() {
                            return Err(format!("part {i} exited before reporting its results"));
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("every part is gone".into()),
        }
        self.progress_line();
        Ok(())
    }

    /// Once a second on a terminal: elapsed, open connections, messages/s, errors.
    fn progress_line(&mut self) {
        let now = now_ns();
        if !self.show_progress || now < self.next_progress {
            return;
        }
        self.next_progress = now + 1_000_000_000;
        let (mut open, mut msgs, mut errors) = (0, 0, 0);
        for s in &self.state {
            open += s.progress.open;
            msgs += s.progress.messages;
            errors += s.progress.errors;
        }
        let (t_last, m_last) = self.last_progress;
        let rate = (msgs.saturating_sub(m_last)) as f64 / ((now - t_last) as f64 / 1e9).max(1e-3);
        self.last_progress = (now, msgs);
        let (phase, since) = if self.go_started == 0 || now < self.go_started {
            ("setup", self.started)
        } else {
            ("run", self.go_started)
        };
        eprint!(
            "\r\x1b[K[{phase} {:6.1}s] open {open}  {:.0} msg/s  errors {errors}",
            (now - since) as f64 / 1e9,
            rate
        );
    }

    fn clear_progress(&self) {
        if self.show_progress {
            eprint!("\r\x1b[K");
        }
    }

    /// Waits (bounded) for the children to exit after their results.
    fn reap(&mut self) {
        let deadline = now_ns() + secs_ns(5.0);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if now_ns() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(None) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Tells every part to stop, then kills and reaps the children.
    fn abort(&mut self) {
        self.clear_progress();
        for i in 0..self.len() {
            let _ = self.send(i, &ToPart::Abort);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A local part notices the abort within a poll; give it a moment (bounded).
        let deadline = now_ns() + secs_ns(2.0);
        while self.children.is_empty() && now_ns() < deadline {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok((_, FromPart::Exited)) | Err(RecvTimeoutError::Disconnected) => break,
                _ => {}
            }
        }
    }
}

/// The hidden `child` subcommand: one part, talking JSON lines on stdin and stdout.
pub fn child(spec: &str) -> Result<(), String> {
    let spec: PartSpec =
        serde_json::from_str(spec).map_err(|e| format!("bad child spec (run by hand?): {e}"))?;
    sys::die_with_parent(spec.parent_pid);
    sys::raise_nofile();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<ToPart>(&line) {
                Ok(cmd) => {
                    if cmd_tx.send(cmd).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        // The parent closed our stdin (or wrote nonsense): stop.
        let _ = cmd_tx.send(ToPart::Abort);
    });
    part::run(spec, cmd_rx, |m| {
        let line = serde_json::to_string(&m).expect("reports serialize");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    Ok(())
}

/// For tests and the report: the JSON value of a reading that may be missing.
pub fn opt(v: Option<u64>) -> Value {
    v.map_or(Value::Null, Value::from)
}
