//! The library leaves the process's open-file limit alone: building and running servers on
//! either backend keeps a lowered soft limit as it was, and only `raise_fd_limit` lifts it to the
//! hard limit. One test in this file, so nothing else in the process sees the lowered limit.

use std::time::Duration;

use ringside::{Backend, Handler, Message, Server, WebSocket, Workers};

/// The soft limit the test lowers to: below any usual hard limit, above what a one-worker
/// server needs.
const LOW: u64 = 256;

struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one `rlimit` into a live local.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit
}

#[test]
fn servers_leave_the_limit_alone_and_raise_fd_limit_lifts_it() {
    let hard = nofile().rlim_max;
    if hard <= LOW {
        eprintln!(
            "SKIPPED: the hard open-file limit ({hard}) leaves no room to lower the soft one"
        );
        return;
    }
    let lowered = libc::rlimit { rlim_cur: LOW, rlim_max: hard };
    // SAFETY: setrlimit(2) reads one `rlimit` from a live local.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());

    let mut backends = vec![Backend::Epoll];
    match ringside::io_uring_available() {
        Ok(()) => backends.push(Backend::IoUring),
        Err(why) => eprintln!("SKIPPED (io_uring part): {why}"),
    }
    for backend in backends {
        let running = Server::builder()
            .bind("127.0.0.1:0")
            .unwrap()
            .backend(backend)
            .workers(Workers::Count(1))
            .pin(false)
            .shutdown_timeout(Duration::from_secs(1))
            .build(|| Echo)
            .expect("the server builds under a low soft limit");
        let handle = running.spawn().expect("the server starts under a low soft limit");
        assert_eq!(nofile().rlim_cur, LOW, "{backend:?}: the server changed the soft limit");
        handle.shutdown().unwrap();
        assert_eq!(nofile().rlim_cur, LOW, "{backend:?}: shutdown changed the soft limit");
    }

    // An unlimited hard limit stands for fs.nr_open, the most a soft limit may be.
    let ceiling = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap().trim().parse().unwrap()
    } else {
        hard
    };
    assert_eq!(ringside::raise_fd_limit().expect("raising to the hard limit"), ceiling);
    assert_eq!((nofile().rlim_cur, nofile().rlim_max), (ceiling, hard));
    // Already there: nothing to do, the same answer.
    assert_eq!(ringside::raise_fd_limit().unwrap(), ceiling);
}
