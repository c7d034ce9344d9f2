//! Shared pieces of the peer servers the benchmark compares Ringside with: the command line every
//! binary takes, binding and announcing the listener, the tokio runtime and accept loop, signal
//! handling, and (in [`raw`]) the raw TCP echo loops that give the limit.

use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod handshake;
pub mod raw;

/// Flags every peer binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Worker threads. Default: tokio's default, one per CPU this process may run on (it
    /// follows the affinity set with `taskset`). raw-echo: event loops, default 1.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Listen backlog: large enough that a connection storm from the load generator is not refused.
pub const BACKLOG: libc::c_int = 4096;

/// Binds a listening TCP socket (`SO_REUSEADDR`, and `SO_REUSEPORT` when `reuse_port` so that
/// several event loops can each have their own listener on one port), with a backlog of
/// [`BACKLOG`]. The socket is blocking; callers switch it to non-blocking as they need.
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let (storage, len) = sockaddr_from(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the socket's family.
    if unsafe { libc::bind(raw, (&raw const storage).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) takes no pointers.
    if unsafe { libc::listen(raw, BACKLOG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::TcpListener::from(fd))
}

/// Sets an integer socket option.
pub fn set_int_opt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points at a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `TCP_NODELAY` on a connected socket.
pub fn set_nodelay(fd: libc::c_int) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Prints the one `listening on <ADDR>` line the harness waits for, and flushes it.
pub fn announce(addr: SocketAddr) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// Logs an error, at most about once a second for the whole process, so that a flood (EMFILE
/// on every accept, thousands of connections reset at once) does not cost the server its time.
pub fn log_error(what: &str, error: &dyn std::fmt::Display) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now != last && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        eprintln!("{what}: {error}");
    }
}

/// The multi-threaded tokio runtime of the library peers: `threads` workers, or tokio's default.
pub fn runtime(threads: Option<usize>) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder.build()
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The whole life of a tokio peer: build the runtime, bind `args.listen`, announce the address,
/// then spawn `serve(stream)` for every accepted connection (with `TCP_NODELAY` set) until
/// SIGTERM or SIGINT. Returns when the signal came; connections are dropped, not closed
/// gracefully.
pub fn run_tokio_peer<F, Fut>(args: &CommonArgs, serve: F) -> io::Result<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = runtime(args.threads)?;
    let result = rt.block_on(async {
        let std_listener = bind_listener(args.listen, false)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        announce(listener.local_addr()?);
        tokio::select! {
            () = accept_loop(listener, serve) => {}
            () = shutdown_signal() => {}
        }
        Ok(())
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    result
}

async fn accept_loop<F, Fut>(listener: tokio::net::TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    log_error("TCP_NODELAY", &e);
                }
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                // EMFILE and friends: wait a moment for descriptors to come free.
                log_error("accept", &e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
