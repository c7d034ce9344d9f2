//! A per-thread xorshift64 generator for mask keys.
//!
//! On loopback load the mask's only purpose is protocol correctness (RFC 6455 section 5.3 wants
//! a fresh, unpredictable key per frame to defeat cache poisoning by intermediaries, and there
//! are none here), so a cheap generator seeded from the clock and the thread is enough.

#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Xorshift {
    pub fn new(seed: u64) -> Xorshift {
        // xorshift never leaves zero: nudge a zero seed to a fixed odd constant.
        Xorshift(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    #[inline]
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}
