//! The few system calls the load generator makes directly: epoll with a nanosecond timeout,
//! CLOCK_MONOTONIC, resource limits and usage, the parent-death signal, and the socket option
//! that lets many source addresses share the ephemeral port range.
//!
//! Everything else goes through `std` and `socket2`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Nanoseconds of CLOCK_MONOTONIC: one clock for every thread and every process on the host, so
/// a child can be given the measured window as absolute times and a subscriber can subtract a
/// publisher's timestamp.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes one timespec through a valid pointer; CLOCK_MONOTONIC
    // always exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `deadline_ns` (CLOCK_MONOTONIC), or returns at once if it has passed.
pub fn sleep_until(deadline_ns: u64) {
    let now = now_ns();
    if deadline_ns > now {
        std::thread::sleep(std::time::Duration::from_nanos(deadline_ns - now));
    }
}

/// Seconds as nanoseconds, saturating.
pub fn secs_ns(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9).min(u64::MAX as f64 / 2.0) as u64
}

/// An epoll instance, level-triggered: one read per readable event is enough, since anything
/// left makes the next wait return the socket again (edge-triggered would need a read until
/// EAGAIN: one more system call per event).
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

pub const READABLE: u32 = libc::EPOLLIN as u32;
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1(2) has no memory preconditions; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: epoll_create1 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity] })
    }

    fn ctl(&self, op: i32, fd: i32, interest: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: interest, u64: token };
        // SAFETY: epoll_ctl(2) reads one epoll_event through a valid pointer.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: i32, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    pub fn modify(&self, fd: i32, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    /// Waits up to `timeout_ns` (epoll_pwait2, so sub-millisecond schedules are kept) and returns
    /// how many events are ready; read them with [`Epoll::event`].
    pub fn wait(&mut self, timeout_ns: u64) -> io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: the events pointer and length describe our own buffer; the timespec is valid
        // for the call; a null sigmask means none.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                &ts,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    /// Event `i` of the last wait: (event bits, token).
    #[inline]
    pub fn event(&self, i: usize) -> (u32, u64) {
        let e = self.events[i];
        (e.events, e.u64)
    }
}

/// A non-blocking TCP socket with TCP_NODELAY, bound to `source` (an address, and a port or
/// none to have the kernel pick it at connect time), with its connect to `target` started.
pub fn start_connect(
    source: Option<(Ipv4Addr, Option<u16>)>,
    target: SocketAddr,
) -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    sock.set_nodelay(true)?;
    match source {
        None => {}
        Some((ip, Some(port))) => {
            // A port of ours may still be held by a TIME_WAIT socket of an earlier run.
            sock.set_reuse_address(true)?;
            sock.bind(&SocketAddr::from((ip, port)).into())?;
        }
        Some((ip, None)) => {
            // Without IP_BIND_ADDRESS_NO_PORT, bind() picks a port unique per source address
            // alone; with it the port is picked at connect() per 4-tuple.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt(2) reads an int through a valid pointer of the given length on
            // a descriptor we own.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            sock.bind(&SocketAddr::from((ip, 0)).into())?;
        }
    }
    match sock.connect(&target.into()) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e),
    }
}

/// Raises the soft open-file limit to the hard one and returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit(2) reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// CPU seconds (user + system) used so far by this process, all threads.
pub fn self_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(2) writes one rusage through a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Asks the kernel to SIGKILL this process when its parent dies, and exits now if the parent
/// is already gone (the parent may have died before the call).
pub fn die_with_parent(parent: u32) {
    // SAFETY: prctl(2) PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if std::os::unix::process::parent_id() != parent {
        std::process::exit(3);
    }
}

/// Makes this thread's timeouts fire on time: Linux lets a normal thread's timers slip by up to
/// 50 us ("timer slack") to batch wake-ups, which an open-loop schedule would count as lateness.
/// Measured at 100k msg/s: median lateness 25 us instead of 43 us, for ~15% more CPU (more
/// wake-ups). Closed-loop scenarios do not wait on timers and are unaffected.
pub fn tight_timers() {
    // SAFETY: prctl(2) PR_SET_TIMERSLACK takes a number of nanoseconds and no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Writes to a socket the peer reset must fail with EPIPE, not kill the process.
pub fn ignore_sigpipe() {
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

pub fn stderr_is_tty() -> bool {
    // SAFETY: isatty(3) only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}

/// Pins the calling thread to `cpu`; false if the CPU does not exist or pinning failed.
pub fn pin_to(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}
