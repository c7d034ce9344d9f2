//! `ringside-bench`: the criterion micro-benchmarks of the protocol core (`benches/proto.rs`),
//! and later the harness comparing Ringside with peer servers.
//!
//! The library part only holds helpers the benchmarks share, such as deterministic input data,
//! so runs are comparable across machines and commits.

/// `len` pseudo-random bytes from a xorshift64 generator seeded with `seed`: the same arguments
/// always give the same bytes, with no dependency on a random number crate.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64 never leaves zero, so nudge a zero seed to a fixed nonzero one.
    let mut state = if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed };
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_bytes_is_deterministic_and_sized() {
        for len in [0, 1, 7, 8, 9, 1000] {
            let a = pseudo_random_bytes(len, 42);
            assert_eq!(a.len(), len);
            assert_eq!(a, pseudo_random_bytes(len, 42));
        }
        assert_ne!(pseudo_random_bytes(64, 1), pseudo_random_bytes(64, 2));
        assert_ne!(pseudo_random_bytes(64, 0), vec![0; 64]);
    }
}
