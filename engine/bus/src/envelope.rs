//! The envelope: a fixed 28-byte binary header in front of every frame on the bus.
//!
//! ```text
//! offset  size  field
//!      0     3  magic "RSB"
//!      3     1  version (1)
//!      4     8  origin node id    (big-endian u64, random per process start)
//!     12     8  sequence number   (big-endian u64, per origin node and topic, from 1)
//!     20     8  conflation key    (big-endian u64, 0 = the topic's latest message)
//!     28     -  the encoded WebSocket frame, verbatim
//! ```
//!
//! The topic is not in the envelope: the bus subject carries it. The frame is not parsed here:
//! the bus is trusted, and whoever can publish on it can send frames to this node's clients.
//! A version bump is the way to change the layout; a receiver rejects versions it does not know
//! (counted as malformed) rather than guess.

/// The first three bytes of every envelope.
pub const MAGIC: [u8; 3] = *b"RSB";
/// The layout described above.
pub const VERSION: u8 = 1;
/// Bytes before the frame.
pub const HEADER_LEN: usize = 28;

/// What the envelope says about the frame behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The node that published it.
    pub origin: u64,
    /// Its place in that node's stream for the topic (the first publish is 1).
    pub seq: u64,
    /// The conflation key the publisher gave.
    pub key: u64,
}

/// Why a bus payload is not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the header: something else publishes on this subject, or it was cut.
    Short,
    /// Does not start with "RSB": something else publishes on this subject.
    Magic,
    /// A version this build does not know: a newer node; upgrade this one.
    Version(u8),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::Short => write!(f, "shorter than the {HEADER_LEN}-byte envelope"),
            EnvelopeError::Magic => f.write_str("not a Ringside envelope (bad magic)"),
            EnvelopeError::Version(v) => {
                write!(f, "envelope version {v}, this node speaks {VERSION}: upgrade it")
            }
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// The header bytes for `header`.
pub fn encode(header: &Header) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[..3].copy_from_slice(&MAGIC);
    out[3] = VERSION;
    out[4..12].copy_from_slice(&header.origin.to_be_bytes());
    out[12..20].copy_from_slice(&header.seq.to_be_bytes());
    out[20..28].copy_from_slice(&header.key.to_be_bytes());
    out
}

/// Splits a bus payload into its header and the frame behind it.
pub fn decode(payload: &[u8]) -> Result<(Header, &[u8]), EnvelopeError> {
    let Some((head, frame)) = payload.split_first_chunk::<HEADER_LEN>() else {
        return Err(EnvelopeError::Short);
    };
    if head[..3] != MAGIC {
        return Err(EnvelopeError::Magic);
    }
    if head[3] != VERSION {
        return Err(EnvelopeError::Version(head[3]));
    }
    let word = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_be_bytes(b)
    };
    Ok((Header { origin: word(4), seq: word(12), key: word(20) }, frame))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let h = Header { origin: 0x0102030405060708, seq: 9, key: u64::MAX };
        let mut payload = encode(&h).to_vec();
        assert_eq!(&payload[..4], b"RSB\x01");
        assert_eq!(&payload[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        payload.extend_from_slice(b"\x81\x02hi");
        assert_eq!(decode(&payload), Ok((h, &b"\x81\x02hi"[..])));
        // An empty frame is still an envelope: the frame is the publisher's business.
        assert_eq!(decode(&encode(&h)), Ok((h, &[][..])));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let good = encode(&Header { origin: 1, seq: 1, key: 0 });
        assert_eq!(decode(b""), Err(EnvelopeError::Short));
        assert_eq!(decode(&good[..HEADER_LEN - 1]), Err(EnvelopeError::Short));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(EnvelopeError::Magic));
        let mut newer = good;
        newer[3] = 2;
        assert_eq!(decode(&newer), Err(EnvelopeError::Version(2)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
