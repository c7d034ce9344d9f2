//! The epoll loop: level-triggered, non-blocking sockets, one shared 64 KiB read buffer. A read
//! is sent straight back from that buffer; only what a short send leaves over is copied into
//! the connection, which then waits for `EPOLLOUT` (and stops reading) until it is drained.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::handshake::{Handshake, Progress, BAD_REQUEST};

const LISTENER: u64 = u64::MAX;
const READ_BUF: usize = 64 * 1024;
const EVENTS: usize = 1024;
const WAIT_MS: libc::c_int = 100;

struct Conn {
    fd: OwnedFd,
    /// `Some` until the request head is complete.
    handshake: Option<Handshake>,
    /// Bytes a short send left over, from `sent` on.
    pending: Vec<u8>,
    sent: usize,
    /// Registered for `EPOLLOUT` (instead of `EPOLLIN`) while `pending` is not empty.
    waiting_out: bool,
}

/// One epoll event loop over one listener.
#[derive(Debug)]
pub struct EventLoop {
    epoll: OwnedFd,
    listener: TcpListener,
}

impl EventLoop {
    /// Creates the epoll instance and registers the (non-blocking) listener.
    pub fn new(listener: TcpListener) -> io::Result<Self> {
        // SAFETY: epoll_create1(2) takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor, owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, listener.as_raw_fd(), libc::EPOLLIN, LISTENER)?;
        Ok(EventLoop { epoll, listener })
    }

    /// Serves until `stop` is set (checked at least every 100 ms).
    pub fn run(self, stop: &AtomicBool) -> io::Result<()> {
        let epfd = self.epoll.as_raw_fd();
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut buf = vec![0u8; READ_BUF];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `events` has room for EVENTS entries.
            let n = unsafe {
                libc::epoll_wait(epfd, events.as_mut_ptr(), EVENTS as libc::c_int, WAIT_MS)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (token, flags) = (ev.u64, ev.events);
                if token == LISTENER {
                    self.accept_all(&mut conns, &mut free);
                    continue;
                }
                let index = token as usize;
                let Some(conn) = conns.get_mut(index).and_then(Option::as_mut) else { continue };
                let keep = if conn.waiting_out {
                    flags & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0
                        || flush(epfd, index, conn)
                } else {
                    on_readable(epfd, index, conn, &mut buf)
                };
                if !keep {
                    conns[index] = None;
                    free.push(index);
                }
            }
        }
        Ok(())
    }

    fn accept_all(&self, conns: &mut Vec<Option<Conn>>, free: &mut Vec<usize>) {
        loop {
            // SAFETY: null address pointers are allowed: we do not want the peer address.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    _ => {
                        crate::log_error("accept", &e);
                        return;
                    }
                }
            }
            // SAFETY: a fresh descriptor from accept4, owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if let Err(e) = crate::set_nodelay(fd.as_raw_fd()) {
                crate::log_error("TCP_NODELAY", &e);
            }
            let index = free.pop().unwrap_or_else(|| {
                conns.push(None);
                conns.len() - 1
            });
            let epfd = self.epoll.as_raw_fd();
            if let Err(e) =
                ctl(epfd, libc::EPOLL_CTL_ADD, fd.as_raw_fd(), libc::EPOLLIN, index as u64)
            {
                crate::log_error("epoll_ctl", &e);
                free.push(index);
                continue;
            }
            conns[index] = Some(Conn {
                fd,
                handshake: Some(Handshake::new()),
                pending: Vec::new(),
                sent: 0,
                waiting_out: false,
            });
        }
    }
}

/// Reads once and echoes what came. Returns whether the connection stays open.
fn on_readable(epfd: RawFd, index: usize, conn: &mut Conn, buf: &mut [u8]) -> bool {
    let fd = conn.fd.as_raw_fd();
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n <= 0 {
        return n < 0 && matches!(errno(), libc::EAGAIN | libc::EINTR);
    }
    let data = &buf[..n as usize];
    if let Some(handshake) = &mut conn.handshake {
        match handshake.feed(data, &mut conn.pending) {
            Ok(Progress::NeedMore) => return true,
            Ok(Progress::Done { rest }) => {
                conn.handshake = None;
                conn.pending.extend_from_slice(&data[rest..]);
                return flush(epfd, index, conn);
            }
            Err(_) => {
                // SAFETY: BAD_REQUEST is a live static slice. Best effort: we close next.
                unsafe {
                    libc::send(fd, BAD_REQUEST.as_ptr().cast(), BAD_REQUEST.len(), SEND_FLAGS)
                };
                return false;
            }
        }
    }
    // SAFETY: `data` is a live slice of the read buffer.
    let w = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), SEND_FLAGS) };
    let w = if w < 0 {
        if errno() != libc::EAGAIN {
            return false;
        }
        0
    } else {
        w as usize
    };
    if w < data.len() {
        conn.pending.extend_from_slice(&data[w..]);
        conn.sent = 0;
        conn.waiting_out = true;
        return ctl(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT, index as u64).is_ok();
    }
    true
}

/// Sends what is pending; switches the registration between `EPOLLOUT` (something left) and
/// `EPOLLIN` (drained). Returns whether the connection stays open.
fn flush(epfd: RawFd, index: usize, conn: &mut Conn) -> bool {
    let fd = conn.fd.as_raw_fd();
    while conn.sent < conn.pending.len() {
        let rest = &conn.pending[conn.sent..];
        // SAFETY: `rest` is a live slice of the pending buffer.
        let w = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), SEND_FLAGS) };
        if w < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => break,
                _ => return false,
            }
        }
        conn.sent += w as usize;
    }
    let drained = conn.sent == conn.pending.len();
    if drained {
        conn.pending.clear();
        conn.sent = 0;
        if conn.pending.capacity() > READ_BUF {
            conn.pending.shrink_to(READ_BUF);
        }
    }
    if drained == conn.waiting_out {
        conn.waiting_out = !drained;
        let interest = if drained { libc::EPOLLIN } else { libc::EPOLLOUT };
        return ctl(epfd, libc::EPOLL_CTL_MOD, fd, interest, index as u64).is_ok();
    }
    true
}

const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ctl(
    epfd: RawFd,
    op: libc::c_int,
    fd: RawFd,
    interest: libc::c_int,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: interest as u32, u64: token };
    // SAFETY: `ev` is a live epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
