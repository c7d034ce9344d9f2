//! SIGINT and SIGTERM as a flag, and SIGHUP (reload the TLS certificate) as another, for
//! [`Running::run`](crate::Running::run): the library keeps no signal crate; a binary that
//! wants more installs its own handling.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static TERMINATE: AtomicBool = AtomicBool::new(false);
static HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    TERMINATE.store(true, Ordering::Relaxed);
}

extern "C" fn on_sighup(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    HANGUP.store(true, Ordering::Relaxed);
}

/// Installs handlers for SIGINT and SIGTERM that set the returned flag.
pub(crate) fn on_terminate() -> io::Result<&'static AtomicBool> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        install(signal, on_signal)?;
    }
    Ok(&TERMINATE)
}

/// Installs a handler for SIGHUP that sets the returned flag (instead of terminating).
pub(crate) fn on_hangup() -> io::Result<&'static AtomicBool> {
    install(libc::SIGHUP, on_sighup)?;
    Ok(&HANGUP)
}

/// `handler` must be async-signal-safe (both of ours store to an atomic, nothing else).
fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler only stores to
    // an atomic, which is async-signal-safe, and lives for the whole program.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
