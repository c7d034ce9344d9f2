//! The accept slots: [`SLOTS`] single-shot accepts kept in the ring at once, each with its own
//! buffer for the peer address the kernel writes, so every accepted connection is reported with
//! its TCP peer.
//!
//! Why not one multishot accept: it has a single address buffer for all its completions, so an
//! address is overwritten by the next accept before it can be read, and getpeername(2) cannot
//! take a direct descriptor (nor is there a socket uring_cmd for it). Several slots in flight
//! keep a burst of connects from waiting for a re-arm per connection; accept polls the listener
//! exclusively, so one connection wakes one slot, not all of them.
//!
//! This module owns the buffers and knows which slots are in the ring; what to do on a
//! completion (hand the connection over, re-arm, back off, stop) is the backend's.

use std::cell::UnsafeCell;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use io_uring::types::{DestinationSlot, Fd};
use io_uring::{opcode, squeue};

use super::op::{Kind, Op};

/// Accepts in flight at once. Each costs 132 bytes and, while it waits, one entry on the
/// listener's wait queue. Measured with the `accept_rate` test (4 threads connecting, 5,000
/// connections): 1 slot costs the polling thread about 30% more CPU per connection than 16,
/// while 32 gain nothing over 16.
pub(super) const SLOTS: usize = 16;

// Slots in flight are tracked in one u32.
const _: () = assert!(SLOTS <= 32);

/// One slot's address buffer, written by the kernel when its accept completes.
#[repr(C)]
struct PeerBuf {
    addr: libc::sockaddr_storage,
    /// In: the size of `addr`; out: the length of the address written.
    len: libc::socklen_t,
}

/// The accept slots of one ring.
pub(super) struct Accepts {
    /// Never resized, never moved (the heap block stays where it is when `Accepts` itself
    /// moves), freed only after the ring: the kernel writes a slot's buffer at any time between
    /// the submission of its accept and that accept's completion. `UnsafeCell`: the kernel
    /// writes behind any reference, and the code here touches a buffer only while its slot is
    /// out of the ring.
    bufs: Box<[UnsafeCell<PeerBuf>]>,
    /// Bit `k` set: slot `k`'s accept is in the ring (submitted or queued to be).
    in_flight: u32,
}

impl std::fmt::Debug for Accepts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {SLOTS} in flight", self.in_flight.count_ones())
    }
}

impl Accepts {
    pub(super) fn new() -> Self {
        let bufs = (0..SLOTS)
            .map(|_| {
                // SAFETY: sockaddr_storage is plain integers, for which all zeroes is valid.
                let addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                UnsafeCell::new(PeerBuf { addr, len: 0 })
            })
            .collect();
        Accepts { bufs, in_flight: 0 }
    }

    /// The slots whose accept is not in the ring now (a snapshot: arming them meanwhile is fine).
    pub(super) fn idle(&self) -> impl Iterator<Item = usize> {
        let in_flight = self.in_flight;
        (0..SLOTS).filter(move |&k| in_flight & (1 << k) == 0)
    }

    /// The slots whose accept is in the ring now (a snapshot).
    pub(super) fn busy(&self) -> impl Iterator<Item = usize> {
        let in_flight = self.in_flight;
        (0..SLOTS).filter(move |&k| in_flight & (1 << k) != 0)
    }

    pub(super) fn any_in_flight(&self) -> bool {
        self.in_flight != 0
    }

    /// The accept for idle slot `k` on `listener`, into a direct descriptor the kernel picks;
    /// the slot counts as in flight from now on. The entry points into the slot's buffer: push
    /// it (the buffer outlives it: see `bufs`).
    pub(super) fn arm(&mut self, k: usize, listener: RawFd) -> squeue::Entry {
        debug_assert!(self.in_flight & (1 << k) == 0, "accept slot {k} armed twice");
        self.in_flight |= 1 << k;
        let buf = self.bufs[k].get();
        // SAFETY: slot `k` was idle, so no accept the kernel may write through is using its
        // buffer, and nothing else holds a reference to it.
        unsafe { (*buf).len = size_of::<libc::sockaddr_storage>() as libc::socklen_t };
        // SAFETY: field addresses within the live allocation; nothing is read or written.
        let (addr, len) = unsafe { (&raw mut (*buf).addr, &raw mut (*buf).len) };
        opcode::Accept::new(Fd(listener), addr.cast(), len)
            .file_index(Some(DestinationSlot::auto_target()))
            .build()
            .user_data(Self::op(k).encode())
    }

    /// The identity of slot `k`'s accept, for its `user_data` and for cancelling it.
    pub(super) fn op(k: usize) -> Op {
        Op::conn(Kind::Accept, k as u32, 0)
    }

    /// Slot `k` of a completion's `user_data`, if it names a slot in flight, which it then no
    /// longer is (single-shot: this was its only completion).
    pub(super) fn complete(&mut self, op: Op) -> Option<usize> {
        let k = op.id as usize;
        if k >= SLOTS || self.in_flight & (1 << k) == 0 {
            return None;
        }
        self.in_flight &= !(1 << k);
        Some(k)
    }

    /// The peer address written by slot `k`'s completed accept.
    pub(super) fn peer(&self, k: usize) -> Option<SocketAddr> {
        debug_assert!(self.in_flight & (1 << k) == 0, "peer of accept slot {k} read in flight");
        // SAFETY: slot `k`'s accept completed (`complete` took it out of flight) and is not
        // re-armed, so the kernel no longer writes this buffer; nothing else borrows it mutably.
        let buf = unsafe { &*self.bufs[k].get() };
        decode(&buf.addr, buf.len)
    }
}

/// The socket address in `addr`, `len` bytes of it written: IPv4 or IPv6, `None` for any other
/// family or a truncated address.
fn decode(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    let storage: *const libc::sockaddr_storage = addr;
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is sized and aligned for every socket address type, its
            // bytes are all initialised integers, and the family says they hold a sockaddr_in.
            let v4 = unsafe { &*storage.cast::<libc::sockaddr_in>() };
            // s_addr is in network order: its bytes in memory are the address's octets.
            let ip = Ipv4Addr::from(v4.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddrV4::new(ip, u16::from_be(v4.sin_port)).into())
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let v6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            let port = u16::from_be(v6.sin6_port);
            // Flow info and scope id as the kernel wrote them, as std's own accept keeps them.
            Some(SocketAddrV6::new(ip, port, v6.sin6_flowinfo, v6.sin6_scope_id).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `addr` as the kernel writes it (socket2's encoding, independent of `decode`).
    fn encoded(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        let raw = socket2::SockAddr::from(addr);
        let len = raw.len();
        (raw.as_storage(), len)
    }

    #[test]
    fn decodes_ipv4_and_ipv6_addresses() {
        let cases = [
            "127.0.0.1:1",
            "127.0.0.2:65535",
            "10.1.2.3:443",
            "0.0.0.0:0",
            "[::1]:8080",
            "[2001:db8::5]:54321",
            "[::ffff:127.0.0.1]:9",
        ];
        for text in cases {
            let addr: SocketAddr = text.parse().unwrap();
            let (storage, len) = encoded(addr);
            assert_eq!(decode(&storage, len), Some(addr), "{text}");
        }
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 7, 0x1234, 3));
        let (storage, len) = encoded(scoped);
        assert_eq!(decode(&storage, len), Some(scoped));
    }

    #[test]
    fn truncated_or_foreign_addresses_are_none() {
        let (storage, len) = encoded("127.0.0.1:80".parse().unwrap());
        assert_eq!(decode(&storage, len - 1), None);
        assert_eq!(decode(&storage, 0), None);
        let (storage, len) = encoded("[::1]:80".parse().unwrap());
        assert_eq!(decode(&storage, len - 1), None);
        let mut unix = storage;
        unix.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(decode(&unix, len), None);
        let mut unspec = storage;
        unspec.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
        assert_eq!(decode(&unspec, len), None);
    }

    #[test]
    fn slots_go_in_and_out_of_flight() {
        let mut accepts = Accepts::new();
        assert_eq!(accepts.idle().count(), SLOTS);
        assert!(!accepts.any_in_flight());
        let _ = accepts.arm(3, 0);
        let _ = accepts.arm(SLOTS - 1, 0);
        assert_eq!(accepts.busy().collect::<Vec<_>>(), [3, SLOTS - 1]);
        assert_eq!(accepts.idle().count(), SLOTS - 2);
        // A completion for a slot not in flight (or no slot at all) is not taken.
        assert_eq!(accepts.complete(Accepts::op(4)), None);
        assert_eq!(accepts.complete(Op::conn(Kind::Accept, SLOTS as u32, 0)), None);
        assert_eq!(accepts.complete(Accepts::op(3)), Some(3));
        assert_eq!(accepts.complete(Accepts::op(3)), None, "single-shot: completes once");
        assert_eq!(accepts.busy().collect::<Vec<_>>(), [SLOTS - 1]);
        assert_eq!(accepts.complete(Accepts::op(SLOTS - 1)), Some(SLOTS - 1));
        assert!(!accepts.any_in_flight());
    }
}
