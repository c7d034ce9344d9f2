//! What a submitted operation was, packed into its 64-bit `user_data`: the kind, the connection
//! id and that id's generation. A completion is routed without a lookup table, and one that
//! arrives for an earlier holder of a reused id is recognised by its generation and dropped.
//!
//! Layout: kind in bits 56..64, generation in bits 32..56, id in bits 0..32. No valid value is 0.

/// Generations are counted modulo this many bits; an id would have to be reused 16 million times
/// while one stale completion is still queued for a wrong match.
const GEN_BITS: u32 = 24;
pub(super) const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// The operation a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    /// One of the single-shot accepts on the listener; the id is its accept slot.
    Accept = 1,
    /// The timer that re-arms accept after a resource error.
    AcceptRetry,
    /// The cancel of an accept (`stop_accepting`).
    AcceptCancel,
    /// Closing a socket the driver refused.
    Refused,
    /// The multishot poll on the waker's eventfd.
    Waker,
    /// A connection's multishot recv.
    Recv,
    /// A connection's send.
    Send,
    /// `shutdown(SHUT_WR)` of a gracefully closing connection.
    Shutdown,
    /// Closing a connection's direct descriptor.
    Close,
    /// Cancelling one of a connection's operations.
    Cancel,
    /// A socket option set through the uring_cmd (its completion only comes on failure).
    SockOpt,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Accept,
        Kind::AcceptRetry,
        Kind::AcceptCancel,
        Kind::Refused,
        Kind::Waker,
        Kind::Recv,
        Kind::Send,
        Kind::Shutdown,
        Kind::Close,
        Kind::Cancel,
        Kind::SockOpt,
    ];
}

/// An operation's identity, as carried in `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Op {
    pub(super) kind: Kind,
    pub(super) id: u32,
    pub(super) gen: u32,
}

impl Op {
    /// An operation that belongs to no connection (accept, waker).
    pub(super) const fn global(kind: Kind) -> Op {
        Op { kind, id: 0, gen: 0 }
    }

    pub(super) const fn conn(kind: Kind, id: u32, gen: u32) -> Op {
        Op { kind, id, gen: gen & GEN_MASK }
    }

    pub(super) const fn encode(self) -> u64 {
        (self.kind as u64) << 56 | ((self.gen & GEN_MASK) as u64) << 32 | self.id as u64
    }

    /// `None` for a value this backend never submits.
    pub(super) fn decode(user_data: u64) -> Option<Op> {
        let kind = (user_data >> 56) as u8;
        let kind = *Kind::ALL.iter().find(|k| **k as u8 == kind)?;
        Some(Op { kind, id: user_data as u32, gen: (user_data >> 32) as u32 & GEN_MASK })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_every_kind_and_extreme() {
        for kind in Kind::ALL {
            for (id, gen) in [(0, 0), (1, 1), (u32::MAX, GEN_MASK), (123_456, 0xAB_CDEF)] {
                let op = Op::conn(kind, id, gen);
                assert_ne!(op.encode(), 0);
                assert_eq!(Op::decode(op.encode()), Some(op));
            }
        }
    }

    #[test]
    fn generation_wraps_within_its_bits() {
        assert_eq!(Op::conn(Kind::Recv, 7, GEN_MASK + 1).gen, 0);
        assert_eq!(Op::decode(Op::conn(Kind::Recv, 7, GEN_MASK + 2).encode()).unwrap().gen, 1);
    }

    #[test]
    fn foreign_user_data_is_rejected() {
        assert_eq!(Op::decode(0), None);
        assert_eq!(Op::decode(0xFF << 56), None);
    }
}
