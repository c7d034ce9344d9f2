//! The io_uring backend. Not built yet: `probe` reports it unavailable, so `auto` uses epoll
//! and `--backend io-uring` refuses to start with a clear error.

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use super::{Backend, Driver, SendQueue, Waker};
use crate::server::Settings;

/// Whether io_uring can run this server here; the reason if not.
pub fn probe(_settings: &Settings) -> Result<(), String> {
    Err("the io_uring backend is not built yet".into())
}

/// One worker's ring.
#[derive(Debug)]
pub struct Uring {
    _never: std::convert::Infallible,
}

impl Uring {
    /// Sets up the ring for `listener`.
    pub fn new(_listener: TcpListener, _waker: Waker, _settings: &Settings) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the io_uring backend is not built yet"))
    }
}

impl Backend for Uring {
    fn poll(&mut self, _: &mut dyn Driver, _: Duration) -> io::Result<()> {
        match self._never {}
    }
    fn flush(&mut self, _: usize, _: &mut SendQueue) {
        match self._never {}
    }
    fn set_reading(&mut self, _: usize, _: bool) {
        match self._never {}
    }
    fn close(&mut self, _: usize, _: bool) {
        match self._never {}
    }
    fn stop_accepting(&mut self) {
        match self._never {}
    }
    fn name(&self) -> &'static str {
        "io_uring"
    }
}
