//! `raw-echo`: the limit no WebSocket server can beat by much. After a real `101` handshake it
//! sends every byte it receives straight back (the client's masked frames included, no WebSocket
//! parsing), from one thread per event loop, on plain epoll or on io_uring.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub mod epoll;
pub mod uring;

/// Which event loop to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Level-triggered epoll, read and send syscalls.
    Epoll,
    /// io_uring: multishot accept and recv over a provided-buffer ring, one send per connection
    /// in flight.
    IoUring,
}

/// io_uring setup flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RingFlags {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`.
    Defer,
    /// `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG`.
    Coop,
    /// No setup flags.
    None,
}

/// Everything one event loop needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which loop.
    pub backend: Backend,
    /// io_uring setup flags.
    pub ring_flags: RingFlags,
    /// io_uring: provided buffers in the ring.
    pub buffers: u16,
    /// io_uring: bytes per provided buffer.
    pub buffer_size: u32,
}

/// Binds `threads` listeners on `addr` (one per loop, sharing the port with `SO_REUSEPORT` when
/// there are several), calls `announce` with the bound address, then runs one event loop per
/// thread until `stop` is set. Returns the first loop error.
pub fn run(
    addr: SocketAddr,
    threads: usize,
    config: &Config,
    stop: &Arc<AtomicBool>,
    announce: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let threads = threads.max(1);
    let reuse_port = threads > 1;
    let first = crate::bind_listener(addr, reuse_port)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(crate::bind_listener(bound, true)?);
    }
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    // Each loop sets itself up on its own thread (an io_uring created with SINGLE_ISSUER may only
    // be driven by the thread that made it) and reports before the address is announced, so a
    // setup error ends the process before the harness starts connecting.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let stop = Arc::clone(stop);
            let config = config.clone();
            let ready = ready_tx.clone();
            std::thread::Builder::new().name(format!("raw-echo-{i}")).spawn(move || {
                let event_loop = match EventLoop::new(listener, &config) {
                    Ok(l) => {
                        let _ = ready.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                drop(ready);
                event_loop.run(&stop)
            })
        })
        .collect::<io::Result<_>>()?;
    drop(ready_tx);
    // Leave SIGTERM and SIGINT to the loop threads (which were spawned with them unblocked): the
    // signal then interrupts a loop's wait at once instead of waiting out its 100 ms timeout.
    block_stop_signals();
    let mut setup = Ok(());
    for r in ready_rx.iter().take(threads) {
        if let Err(e) = r {
            setup = Err(e);
            stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    if setup.is_ok() {
        announce(bound);
    }
    let mut result = setup;
    for handle in handles {
        let r = handle.join().unwrap_or_else(|_| Err(io::Error::other("event loop panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

enum EventLoop {
    Epoll(epoll::EventLoop),
    Uring(Box<uring::EventLoop>),
}

impl EventLoop {
    fn new(listener: TcpListener, config: &Config) -> io::Result<Self> {
        Ok(match config.backend {
            Backend::Epoll => EventLoop::Epoll(epoll::EventLoop::new(listener)?),
            Backend::IoUring => {
                EventLoop::Uring(Box::new(uring::EventLoop::new(listener, config)?))
            }
        })
    }

    fn run(self, stop: &AtomicBool) -> io::Result<()> {
        match self {
            EventLoop::Epoll(l) => l.run(stop),
            EventLoop::Uring(l) => l.run(stop),
        }
    }
}

fn block_stop_signals() {
    // SAFETY: `set` is a local sigset_t, initialised by sigemptyset before use;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
