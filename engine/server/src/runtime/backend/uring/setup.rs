//! Setting a ring up, taking it down, and the probe `auto` runs before choosing io_uring.
//!
//! The probe does not trust the opcode table alone: it builds a ring the way a worker does and
//! receives one byte through a multishot recv on a direct descriptor with a provided-buffer
//! ring, which needs everything the backend relies on (kernel 6.0 or later).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use super::buf_ring::{BufRing, GROUP};
use crate::config::Settings;

/// How completions are run, from the ring's setup flags; the first the kernel accepts wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskRun {
    /// SINGLE_ISSUER | DEFER_TASKRUN (6.1+): completion work runs only when the worker asks for
    /// completions, never interrupting it. The cheapest by far (measured: 10-20% less CPU per message than
    /// epoll at one message in flight; without these flags 25-70% more).
    Deferred,
    /// COOP_TASKRUN (5.19+): no interrupt, but work runs at any system call of the worker.
    Cooperative,
    /// No flags: completion work interrupts the worker.
    Default,
}

impl TaskRun {
    pub(super) fn flags(self) -> &'static str {
        match self {
            TaskRun::Deferred => "SINGLE_ISSUER|DEFER_TASKRUN",
            TaskRun::Cooperative => "COOP_TASKRUN",
            TaskRun::Default => "none",
        }
    }
}

/// Largest fixed-file table asked for (the kernel's own cap is 2^20 per ring too).
pub(super) const MAX_FIXED_FILES: u64 = 1 << 20;
/// Slots kept beyond the connection cap, for the sockets accepted only to be refused once the cap
/// is reached.
pub(super) const REFUSAL_ROOM: u64 = 64;
/// Opcodes the backend cannot run without.
const REQUIRED: [(u8, &str); 9] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::RecvMulti::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Shutdown::CODE, "SHUTDOWN"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Timeout::CODE, "TIMEOUT"),
];

/// Builds a ring with `sq` submission entries and `cq` completion entries (both clamped by the
/// kernel), falling back from DEFER_TASKRUN to COOP_TASKRUN to no flags when the kernel refuses
/// a flag with EINVAL. The ring belongs to the calling thread.
pub(super) fn build_ring(sq: u32, cq: u32) -> io::Result<(IoUring, TaskRun)> {
    let mut refused = None;
    for taskrun in [TaskRun::Deferred, TaskRun::Cooperative, TaskRun::Default] {
        let mut builder = IoUring::<squeue::Entry, cqueue::Entry>::builder();
        builder.setup_cqsize(cq.max(sq)).setup_clamp();
        match taskrun {
            // TASKRUN_FLAG: the kernel says in the SQ flags when completion work waits, which
            // is how a worker driving several rings knows which ones to enter.
            TaskRun::Deferred => {
                builder.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
            }
            TaskRun::Cooperative => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            TaskRun::Default => {}
        }
        match builder.build(sq) {
            Ok(ring) => return Ok((ring, taskrun)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => refused = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(refused.unwrap_or_else(|| io::ErrorKind::Unsupported.into()))
}

/// Whether the ring can run the TCP_NODELAY/SO_LINGER uring_cmd (the opcode; socket support
/// for it came later, in 6.7, and shows as a failed completion).
pub(super) fn has_uring_cmd(ring: &IoUring) -> bool {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::SetSockOpt::CODE)
}

/// Registers the direct-descriptor table: as many slots as RLIMIT_NOFILE's soft limit allows
/// (the library does not raise it: [`crate::raise_fd_limit`] is the caller's choice), no more
/// than the connection cap needs, halving on refusal. Returns the size obtained.
pub(super) fn register_files(ring: &IoUring, max_connections: usize) -> io::Result<u32> {
    let wanted = (max_connections as u64).saturating_add(REFUSAL_ROOM);
    register_table(ring, wanted.min(nofile_limit()).max(16))
}

/// Registers a direct-descriptor table of `slots` (at most [`MAX_FIXED_FILES`]), halving while the
/// kernel refuses it for its size (down to 16). Returns the size obtained.
pub(super) fn register_table(ring: &IoUring, slots: u64) -> io::Result<u32> {
    let mut slots = slots.clamp(1, MAX_FIXED_FILES) as u32;
    loop {
        match ring.submitter().register_files_sparse(slots) {
            Ok(()) => return Ok(slots),
            Err(e)
                if slots > 16 && matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENOMEM)) =>
            {
                slots /= 2
            }
            Err(e) => return Err(e),
        }
    }
}

/// RLIMIT_NOFILE's soft limit: the kernel caps a fixed-file table at it, per ring.
pub(super) fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one `rlimit` into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// Cancels every operation still in the ring, waiting (up to a second) until none can touch
/// memory any more, then unregisters the buffer ring. `true`: the owner may free the buffers and
/// the send queues the operations pointed into. `false`: some operation outlived the wait, and
/// everything it may use must be leaked, never freed.
pub(super) fn quiesce(ring: &IoUring) -> bool {
    let timeout = Timespec::new().sec(1);
    // ENOENT (nothing in flight) is the common answer; ETIME means some operation did not
    // finish within the timeout: the kernel may still read or write the memory it was given.
    let quiet = match ring.submitter().register_sync_cancel(Some(timeout), CancelBuilder::any()) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::ENOENT),
    };
    if quiet {
        let _ = ring.submitter().unregister_buf_ring(GROUP);
    }
    quiet
}

/// Whether io_uring can run this server here; the reason if not. `RINGSIDE_NO_URING=1` makes it
/// fail on purpose, to exercise the epoll fallback.
pub fn probe(settings: &Settings) -> Result<(), String> {
    if disabled(std::env::var_os("RINGSIDE_NO_URING")) {
        return Err("disabled by RINGSIDE_NO_URING".into());
    }
    let (mut ring, _) = build_ring(8, 16).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG or IORING_FEAT_NODROP (5.11+)".into());
    }
    let mut ops = Probe::new();
    ring.submitter()
        .register_probe(&mut ops)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    if let Some((_, name)) = REQUIRED.iter().find(|(code, _)| !ops.is_supported(*code)) {
        return Err(format!("the kernel lacks IORING_OP_{name}"));
    }
    register_files(&ring, settings.max_connections_per_worker)
        .map_err(|e| format!("cannot register a direct-descriptor table: {e}"))?;
    let bufs = BufRing::new(2, 64).map_err(|e| format!("cannot allocate buffers: {e}"))?;
    // SAFETY: `bufs` outlives the registration: `quiesce` below unregisters it before either
    // is dropped.
    let result = unsafe { bufs.register(&ring.submitter()) }
        .map_err(|e| format!("cannot register a provided-buffer ring (5.19+): {e}"))
        .and_then(|()| receive_one_byte(&mut ring));
    if quiesce(&ring) {
        drop(ring);
        drop(bufs);
    } else {
        // The kernel may still write into the buffers: never free them under it.
        drop(ring);
        std::mem::forget(bufs);
    }
    result
}

fn disabled(value: Option<OsString>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// A multishot recv on a direct descriptor, with a buffer from the ring: the path every
/// connection takes.
fn receive_one_byte(ring: &mut IoUring) -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) writes two descriptors into a live array.
    if unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    } != 0
    {
        return Err(format!("socketpair failed: {}", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    ring.submitter()
        .register_files_update(0, &[ours.as_raw_fd()])
        .map_err(|e| format!("cannot install a direct descriptor: {e}"))?;
    let recv = opcode::RecvMulti::new(Fixed(0), GROUP).build().user_data(1);
    // SAFETY: the recv writes only into provided buffers, which outlive the ring's use of them.
    unsafe { ring.submission().push(&recv) }.map_err(|_| "submission queue full")?;
    // SAFETY: writes one byte from a static to a descriptor we own.
    if unsafe { libc::write(theirs.as_raw_fd(), b"x".as_ptr().cast(), 1) } != 1 {
        return Err(format!("socketpair write failed: {}", io::Error::last_os_error()));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let cqe = loop {
        let timeout = Timespec::from(Duration::from_millis(100));
        let _ = ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&timeout));
        if let Some(cqe) = ring.completion().next() {
            break cqe;
        }
        if std::time::Instant::now() > deadline {
            return Err("multishot recv did not complete".into());
        }
    };
    match (cqe.result(), cqueue::buffer_select(cqe.flags()), cqueue::more(cqe.flags())) {
        (1, Some(_), true) => Ok(()),
        (res, bid, more) if res < 0 => Err(format!(
            "multishot recv with provided buffers failed (6.0+): {} (buffer {bid:?}, more {more})",
            io::Error::from_raw_os_error(-res)
        )),
        (res, bid, more) => {
            Err(format!("multishot recv misbehaved: result {res}, buffer {bid:?}, more {more}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_passes_on_this_kernel() {
        // Loud, not silent, when the machine cannot run io_uring at all.
        match probe(&Settings::default()) {
            Ok(()) => {}
            Err(why) if why.contains("RINGSIDE_NO_URING") => eprintln!("SKIPPED: {why}"),
            Err(why) => panic!("io_uring probe failed: {why}"),
        }
    }

    #[test]
    fn environment_switch_disables_only_when_set() {
        assert!(!disabled(None));
        assert!(!disabled(Some("".into())));
        assert!(!disabled(Some("0".into())));
        assert!(disabled(Some("1".into())));
        assert!(disabled(Some("yes".into())));
    }

    #[test]
    fn ring_gets_deferred_taskrun_on_a_recent_kernel() {
        let (ring, taskrun) = build_ring(64, 256).unwrap();
        eprintln!("ring flags: {} (cq {})", taskrun.flags(), ring.params().cq_entries());
        assert!(ring.params().cq_entries() >= 256);
        let mut release = [0u8; 65];
        // SAFETY: uname(2) fills a live struct.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::uname(&mut uts) };
        for (dst, src) in release.iter_mut().zip(uts.release.iter()) {
            *dst = *src as u8;
        }
        let text = String::from_utf8_lossy(&release);
        let mut parts = text.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
        let version: (u32, u32) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if version >= (6, 1) {
            assert_eq!(taskrun, TaskRun::Deferred, "kernel {text}");
        }
    }

    #[test]
    fn direct_descriptor_table_follows_the_connection_cap() {
        let (ring, _) = build_ring(8, 16).unwrap();
        assert_eq!(register_files(&ring, 100).unwrap(), 164);
    }

    #[test]
    fn nodelay_uring_cmd_reaches_a_direct_descriptor() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (mut ring, _) = build_ring(8, 16).unwrap();
        if !has_uring_cmd(&ring) {
            eprintln!("SKIPPED: no IORING_OP_URING_CMD");
            return;
        }
        ring.submitter().register_files_sparse(4).unwrap();
        ring.submitter().register_files_update(2, &[server.as_raw_fd()]).unwrap();
        static ON: libc::c_int = 1;
        let set = opcode::SetSockOpt::new(
            Fixed(2),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            (&ON as *const libc::c_int).cast(),
            4,
        )
        .build()
        .user_data(9);
        // SAFETY: the option value is a static.
        unsafe { ring.submission().push(&set) }.unwrap();
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        if cqe.result() == -libc::EOPNOTSUPP || cqe.result() == -libc::EINVAL {
            eprintln!("SKIPPED: socket uring_cmd needs kernel 6.7");
            return;
        }
        assert_eq!(cqe.result(), 0);
        let mut value: libc::c_int = 0;
        let mut len = 4 as libc::socklen_t;
        // SAFETY: getsockopt(2) writes an int into a live local; the socket is open.
        unsafe {
            libc::getsockopt(
                server.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(value, 1, "the option set through the direct descriptor shows on the socket");
    }
}
