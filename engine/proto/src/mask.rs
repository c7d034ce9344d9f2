//! WebSocket payload masking (RFC 6455 section 5.3), with SIMD paths picked at runtime.
//!
//! Byte `i` of a buffer is XORed with `key[(offset + i) % 4]`. `offset` is the position of the
//! buffer's first byte within the frame payload, so a payload that arrives over several reads is
//! unmasked piece by piece with the same key. XOR is its own inverse: the same call masks.
//!
//! [`apply`] detects the CPU once, caches the answer and uses the fastest [`Path`];
//! [`apply_with`] forces one path (for tests and benchmarks); [`apply_reference`] is the plain
//! byte loop every other path is tested against. This module does not parse frames or pick keys:
//! it only XORs bytes in place.
//!
//! This is the only module of the crate allowed `unsafe`: the x86_64 and aarch64 intrinsics need
//! it. Buffers shorter than one vector go to the portable word path; longer ones are covered by
//! whole vectors (overlapping at the ends, see the `x86` module), so every length and every
//! alignment works. The NEON path has been run under qemu-aarch64, not on hardware.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation unmasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Path {
    /// The byte-at-a-time loop of [`apply_reference`]; the specification the others are tested
    /// against.
    Reference,
    /// Portable safe code, eight bytes (one `u64`) at a time.
    Word,
    /// x86_64 SSE2, 16 bytes per vector.
    Sse2,
    /// x86_64 AVX2, 32 bytes per vector.
    Avx2,
    /// aarch64 NEON, 16 bytes per vector.
    Neon,
}

impl Path {
    /// Every path, in declaration order. A path's index here plus one is its code in [`DETECTED`].
    const ALL: [Path; 5] = [Path::Reference, Path::Word, Path::Sse2, Path::Avx2, Path::Neon];

    /// A short lowercase name, used in benchmark ids and logs.
    pub fn name(self) -> &'static str {
        match self {
            Path::Reference => "reference",
            Path::Word => "word",
            Path::Sse2 => "sse2",
            Path::Avx2 => "avx2",
            Path::Neon => "neon",
        }
    }

    /// Whether this CPU can run the path (detected at runtime). `Reference` and `Word` always can;
    /// the vector paths only on their architecture and with the CPU feature present.
    pub fn is_available(self) -> bool {
        match self {
            Path::Reference | Path::Word => true,
            Path::Sse2 => detect::sse2(),
            Path::Avx2 => detect::avx2(),
            Path::Neon => detect::neon(),
        }
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Path> {
        Self::ALL.into_iter().filter(|p| p.is_available()).collect()
    }

    /// The fastest path this CPU can run: AVX2, then SSE2 on x86_64; NEON on aarch64; `Word`
    /// elsewhere.
    pub fn best() -> Path {
        [Path::Avx2, Path::Sse2, Path::Neon]
            .into_iter()
            .find(|p| p.is_available())
            .unwrap_or(Path::Word)
    }

    fn code(self) -> u8 {
        // ALL has five entries, so the index always fits a u8.
        Self::ALL.iter().position(|&p| p == self).map_or(0, |i| i as u8 + 1)
    }

    fn from_code(code: u8) -> Option<Path> {
        Self::ALL.get(usize::from(code).wrapping_sub(1)).copied()
    }
}

/// Below this length [`apply`] skips dispatch: the vector paths would hand such a buffer to the
/// word path anyway, and most frames (chat messages, pings) are this small.
const SMALL: usize = 32;

/// The cached result of [`Path::best`]: 0 until the first large [`apply`], then the path's code.
/// Racing first calls all detect the same answer, so `Relaxed` is enough.
static DETECTED: AtomicU8 = AtomicU8::new(0);

/// Unmask (or mask: XOR is its own inverse) with the best path for this CPU.
///
/// Byte `i` of `buf` is XORed with `key[(offset + i) % 4]`; pass the number of payload bytes
/// already unmasked as `offset` to continue a frame across reads.
#[inline]
pub fn apply(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < SMALL {
        apply_word(buf, key, offset);
    } else {
        apply_detected(buf, key, offset);
    }
}

/// Unmask with the given path.
///
/// # Panics
///
/// If `!path.is_available()` on this CPU.
pub fn apply_with(path: Path, buf: &mut [u8], key: [u8; 4], offset: usize) {
    assert!(path.is_available(), "mask path `{}` is not available on this CPU", path.name());
    // SAFETY: the assertion above checked that this CPU supports the path.
    unsafe { run(path, buf, key, offset) }
}

/// The byte-at-a-time reference implementation.
pub fn apply_reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

/// The out-of-line part of [`apply`], so that its small-buffer branch inlines into callers.
fn apply_detected(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let path = match Path::from_code(DETECTED.load(Ordering::Relaxed)) {
        Some(path) => path,
        None => {
            let best = Path::best();
            DETECTED.store(best.code(), Ordering::Relaxed);
            best
        }
    };
    // SAFETY: DETECTED only ever holds the code of `Path::best()`, which is available.
    unsafe { run(path, buf, key, offset) }
}

/// Run one path without checking it.
///
/// # Safety
///
/// `path.is_available()` must be true: the vector paths execute instructions the CPU may lack.
unsafe fn run(path: Path, buf: &mut [u8], key: [u8; 4], offset: usize) {
    match path {
        Path::Reference => apply_reference(buf, key, offset),
        Path::Word => apply_word(buf, key, offset),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the path is available, i.e. the CPU has SSE2.
        Path::Sse2 => unsafe { x86::apply_sse2(buf, key, offset) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the path is available, i.e. the CPU has AVX2.
        Path::Avx2 => unsafe { x86::apply_avx2(buf, key, offset) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller guarantees the path is available, i.e. the CPU has NEON.
        Path::Neon => unsafe { neon::apply_neon(buf, key, offset) },
        // The remaining vector paths belong to other architectures: `is_available` is false for
        // them here, so the caller's guarantee rules them out.
        #[allow(unreachable_patterns)]
        _ => unreachable!("mask path `{}` is not available here", path.name()),
    }
}

/// The key as seen from payload position `offset`: `key[(offset + i) % 4]` for `i` in `0..4`.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = key;
    rotated.rotate_left(offset % 4);
    rotated
}

/// The portable path: eight bytes at a time, then at most one four-byte word and three bytes.
#[inline]
fn apply_word(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let k = rotate_key(key, offset);
    // Native byte order on both sides of the XOR, so the mask bytes line up with the buffer
    // bytes on any endianness.
    let k4 = u32::from_ne_bytes(k);
    let k8 = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);

    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("chunk of 8 bytes")) ^ k8;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // Everything before the tail is a multiple of 4 bytes, so the tail starts at key phase 0
    // of the rotated key again.
    let tail = chunks.into_remainder();
    let (word, bytes) = tail.split_at_mut(tail.len() & !3);
    for chunk in word.chunks_exact_mut(4) {
        let word = u32::from_ne_bytes((&*chunk).try_into().expect("chunk of 4 bytes")) ^ k4;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (b, m) in bytes.iter_mut().zip(k) {
        *b ^= m;
    }
}

/// Runtime CPU feature detection, one function per vector path so that `Path::is_available`
/// needs no `cfg` of its own. std caches the detection, so each call is a load and a bit test.
mod detect {
    #[cfg(target_arch = "x86_64")]
    pub(super) fn sse2() -> bool {
        std::arch::is_x86_feature_detected!("sse2")
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn sse2() -> bool {
        false
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn avx2() -> bool {
        false
    }

    #[cfg(target_arch = "aarch64")]
    pub(super) fn neon() -> bool {
        std::arch::is_aarch64_feature_detected!("neon")
    }

    #[cfg(not(target_arch = "aarch64"))]
    pub(super) fn neon() -> bool {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_storeu_si256, _mm256_xor_si256,
        _mm_loadu_si128, _mm_storeu_si128, _mm_xor_si128,
    };

    use super::{apply_word, rotate_key};

    /// Vectors per iteration of the main loops: four independent load-xor-store chains keep the
    /// load and store ports busy without a loop-carried dependency.
    const UNROLL: usize = 4;

    // Both paths avoid a scalar head and tail. For a buffer of at least one vector they load the
    // first and the last (unaligned, possibly overlapping) vector before writing anything, run
    // the unrolled loop over whole vectors from the first aligned address, and store the first
    // and last vectors at the end. Where stores overlap they write the same bytes (original XOR
    // the right key byte), so the result is exact; aligned stores in the main loop never split a
    // cache line, and a 40-byte frame costs two loads and two stores instead of a word loop.

    /// Unmask 16 bytes at a time with SSE2.
    ///
    /// # Safety
    ///
    /// The CPU must support SSE2 (every x86_64 CPU does, but callers go through
    /// `Path::is_available` as for the other paths).
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn apply_sse2(buf: &mut [u8], key: [u8; 4], offset: usize) {
        const W: usize = 16;
        let len = buf.len();
        if len < W {
            apply_word(buf, key, offset);
            return;
        }
        // `pattern[o % 4..]` is the key seen from payload position `offset + o`.
        let pattern = pattern::<{ W + 4 }>(rotate_key(key, offset));
        let mask_at = |o: usize| pattern[o % 4..].as_ptr().cast::<__m128i>();
        // Bytes to the next 16-byte boundary: at most 15, so the main loop starts inside `buf`.
        let head = buf.as_ptr().addr().wrapping_neg() % W;

        // SAFETY: `len >= 16`, so the vectors at 0 and `len - 16` lie inside `buf`; each mask
        // pointer has at least 16 of `pattern`'s 20 bytes after it. loadu accepts any alignment.
        let (first, last) = unsafe {
            (
                _mm_xor_si128(_mm_loadu_si128(buf.as_ptr().cast()), _mm_loadu_si128(mask_at(0))),
                _mm_xor_si128(
                    _mm_loadu_si128(buf.as_ptr().add(len - W).cast()),
                    _mm_loadu_si128(mask_at(len - W)),
                ),
            )
        };

        // SAFETY: as above for the mask pointer.
        let mask = unsafe { _mm_loadu_si128(mask_at(head)) };
        let mut blocks = buf[head..].chunks_exact_mut(UNROLL * W);
        for block in &mut blocks {
            let p = block.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `block` is exactly 64 bytes, so the four 16-byte vectors at p..p+4 lie
            // inside it; loadu/storeu accept any alignment.
            unsafe {
                let a = _mm_xor_si128(_mm_loadu_si128(p), mask);
                let b = _mm_xor_si128(_mm_loadu_si128(p.add(1)), mask);
                let c = _mm_xor_si128(_mm_loadu_si128(p.add(2)), mask);
                let d = _mm_xor_si128(_mm_loadu_si128(p.add(3)), mask);
                _mm_storeu_si128(p, a);
                _mm_storeu_si128(p.add(1), b);
                _mm_storeu_si128(p.add(2), c);
                _mm_storeu_si128(p.add(3), d);
            }
        }
        // Fewer than 16 bytes may remain past the last whole vector: the `last` store covers them.
        for vector in blocks.into_remainder().chunks_exact_mut(W) {
            let p = vector.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `vector` is exactly 16 bytes; loadu/storeu accept any alignment.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), mask)) };
        }

        let p = buf.as_mut_ptr();
        // SAFETY: `len >= 16`, so both 16-byte stores lie inside `buf`.
        unsafe {
            _mm_storeu_si128(p.cast(), first);
            _mm_storeu_si128(p.add(len - W).cast(), last);
        }
    }

    /// Unmask 32 bytes at a time with AVX2.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn apply_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
        const W: usize = 32;
        let len = buf.len();
        if len < W {
            // SAFETY: every CPU with AVX2 has SSE2.
            unsafe { apply_sse2(buf, key, offset) };
            return;
        }
        // `pattern[o % 4..]` is the key seen from payload position `offset + o`.
        let pattern = pattern::<{ W + 4 }>(rotate_key(key, offset));
        let mask_at = |o: usize| pattern[o % 4..].as_ptr().cast::<__m256i>();
        // Bytes to the next 32-byte boundary: at most 31, so the main loop starts inside `buf`.
        let head = buf.as_ptr().addr().wrapping_neg() % W;

        // SAFETY: `len >= 32`, so the vectors at 0 and `len - 32` lie inside `buf`; each mask
        // pointer has at least 32 of `pattern`'s 36 bytes after it. loadu accepts any alignment.
        let (first, last) = unsafe {
            (
                _mm256_xor_si256(
                    _mm256_loadu_si256(buf.as_ptr().cast()),
                    _mm256_loadu_si256(mask_at(0)),
                ),
                _mm256_xor_si256(
                    _mm256_loadu_si256(buf.as_ptr().add(len - W).cast()),
                    _mm256_loadu_si256(mask_at(len - W)),
                ),
            )
        };

        // SAFETY: as above for the mask pointer.
        let mask = unsafe { _mm256_loadu_si256(mask_at(head)) };
        let mut blocks = buf[head..].chunks_exact_mut(UNROLL * W);
        for block in &mut blocks {
            let p = block.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `block` is exactly 128 bytes, so the four 32-byte vectors at p..p+4 lie
            // inside it; loadu/storeu accept any alignment.
            unsafe {
                let a = _mm256_xor_si256(_mm256_loadu_si256(p), mask);
                let b = _mm256_xor_si256(_mm256_loadu_si256(p.add(1)), mask);
                let c = _mm256_xor_si256(_mm256_loadu_si256(p.add(2)), mask);
                let d = _mm256_xor_si256(_mm256_loadu_si256(p.add(3)), mask);
                _mm256_storeu_si256(p, a);
                _mm256_storeu_si256(p.add(1), b);
                _mm256_storeu_si256(p.add(2), c);
                _mm256_storeu_si256(p.add(3), d);
            }
        }
        // Fewer than 32 bytes may remain past the last whole vector: the `last` store covers them.
        for vector in blocks.into_remainder().chunks_exact_mut(W) {
            let p = vector.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `vector` is exactly 32 bytes; loadu/storeu accept any alignment.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), mask)) };
        }

        let p = buf.as_mut_ptr();
        // SAFETY: `len >= 32`, so both 32-byte stores lie inside `buf`.
        unsafe {
            _mm256_storeu_si256(p.cast(), first);
            _mm256_storeu_si256(p.add(len - W).cast(), last);
        }
    }

    /// The rotated key repeated over `N` bytes. Vectors are loaded from it (rather than built
    /// with `_mm_set1_epi32`), which also gives the key at any phase by starting 0-3 bytes in,
    /// and keeps the code valid whether or not the toolchain treats the value intrinsics as safe
    /// inside `#[target_feature]` functions.
    #[inline(always)]
    fn pattern<const N: usize>(key: [u8; 4]) -> [u8; N] {
        std::array::from_fn(|i| key[i % 4])
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::{veorq_u8, vld1q_u8, vst1q_u8};

    use super::{apply_word, rotate_key};

    /// Unmask 16 bytes at a time with NEON.
    ///
    /// # Safety
    ///
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn apply_neon(buf: &mut [u8], key: [u8; 4], offset: usize) {
        const LANES: usize = 16;
        let offset = offset % 4;
        let k = rotate_key(key, offset);
        let pattern: [u8; LANES] = std::array::from_fn(|i| k[i % 4]);
        // SAFETY: `pattern` is 16 readable bytes; vld1q_u8 has no alignment requirement.
        let mask = unsafe { vld1q_u8(pattern.as_ptr()) };

        // Every chunk is 16 bytes (a multiple of 4), so the tail starts at the same key phase.
        let mut chunks = buf.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` is exactly 16 bytes; vld1q_u8/vst1q_u8 accept any alignment.
            unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), mask)) };
        }
        apply_word(chunks.into_remainder(), key, offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64), so the tests need no extra dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn key(&mut self) -> [u8; 4] {
            (self.next() as u32).to_ne_bytes()
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const GUARD: u8 = 0xa5;

    /// Every available path, length 0..=1024, key offset 0..4, and buffer start 0..32 bytes past
    /// a 64-byte boundary (every head length the vector paths can see). Bytes around the slice
    /// are checked untouched, to catch a vector loop that runs past either end.
    #[test]
    fn every_path_matches_reference_at_every_length_offset_and_alignment() {
        const MAX_LEN: usize = 1024;
        const ALIGNS: usize = 32;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let input = rng.bytes(MAX_LEN);
        let mut backing = vec![0u8; MAX_LEN + 2 * 64 + ALIGNS];
        let base = backing.as_ptr().align_offset(64);
        assert!(base < 64, "cannot align the test buffer");

        for path in Path::available() {
            for offset in 0..4 {
                for len in 0..=MAX_LEN {
                    let mut expected = input[..len].to_vec();
                    apply_reference(&mut expected, KEY, offset);
                    for align in 0..ALIGNS {
                        let start = base + align;
                        backing.fill(GUARD);
                        backing[start..start + len].copy_from_slice(&input[..len]);
                        apply_with(path, &mut backing[start..start + len], KEY, offset);
                        assert!(
                            backing[start..start + len] == expected[..],
                            "{} differs from reference: len {len}, offset {offset}, align {align}",
                            path.name()
                        );
                        assert!(
                            backing[..start].iter().all(|&b| b == GUARD)
                                && backing[start + len..].iter().all(|&b| b == GUARD),
                            "{} wrote outside its slice: len {len}, offset {offset}, align {align}",
                            path.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_matches_reference_on_random_large_inputs() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut cases: Vec<usize> = vec![1 << 20, (1 << 20) - 1, 65_536, 65_537];
        cases.extend((0..8).map(|_| rng.below((1 << 20) + 1)));
        for len in cases {
            let start = rng.below(64);
            let input = rng.bytes(start + len);
            let key = rng.key();
            // Offsets beyond 4 too: only `offset % 4` may matter.
            let offset = rng.below(1 << 32);
            let mut expected = input.clone();
            apply_reference(&mut expected[start..], key, offset);
            for path in Path::available() {
                let mut buf = input.clone();
                apply_with(path, &mut buf[start..], key, offset);
                assert!(
                    buf == expected,
                    "{} differs from reference: len {len}, start {start}, offset {offset}",
                    path.name()
                );
            }
        }
    }

    #[test]
    fn applying_twice_restores_the_input() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        for path in Path::available() {
            for len in [0, 1, 3, 7, 20, 31, 32, 63, 64, 65, 127, 128, 129, 1000, 4096, 100_003] {
                let input = rng.bytes(len);
                let key = rng.key();
                let offset = rng.below(1 << 16);
                let mut buf = input.clone();
                apply_with(path, &mut buf, key, offset);
                if len >= 8 {
                    assert_ne!(buf, input, "{} left the input unmasked", path.name());
                }
                apply_with(path, &mut buf, key, offset);
                assert_eq!(buf, input, "{} twice is not the identity, len {len}", path.name());
            }
        }
    }

    /// A payload unmasked over two reads, the second with `offset` = bytes already seen, equals
    /// the payload unmasked in one go.
    #[test]
    fn offset_continues_a_payload_across_reads() {
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        let input = rng.bytes(300);
        let key = rng.key();
        let mut whole = input.clone();
        apply_reference(&mut whole, key, 0);
        for path in Path::available() {
            for split in 0..=input.len() {
                let mut buf = input.clone();
                let (first, second) = buf.split_at_mut(split);
                apply_with(path, first, key, 0);
                apply_with(path, second, key, split);
                assert!(buf == whole, "{} split at {split}", path.name());
            }
        }
    }

    #[test]
    fn apply_equals_best_path() {
        let mut rng = XorShift(0x5555_aaaa_1234_9876);
        let best = Path::best();
        for len in (0..=1024).chain([4096, 65_536, 65_541]) {
            let input = rng.bytes(len);
            let key = rng.key();
            let offset = rng.below(8);
            let mut via_apply = input.clone();
            apply(&mut via_apply, key, offset);
            let mut via_best = input;
            apply_with(best, &mut via_best, key, offset);
            assert_eq!(via_apply, via_best, "len {len}, offset {offset}");
        }
    }

    #[test]
    fn available_paths() {
        let available = Path::available();
        assert!(available.contains(&Path::Reference));
        assert!(available.contains(&Path::Word));
        assert!(available.contains(&Path::best()));
        #[cfg(target_arch = "x86_64")]
        assert!(available.contains(&Path::Sse2), "x86_64 always has SSE2");
        #[cfg(target_arch = "aarch64")]
        assert!(available.contains(&Path::Neon), "aarch64 always has NEON");
        for path in Path::ALL {
            assert_eq!(available.contains(&path), path.is_available());
            assert_eq!(Path::from_code(path.code()), Some(path));
        }
        let names: Vec<_> = Path::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["reference", "word", "sse2", "avx2", "neon"]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[should_panic(expected = "not available")]
    fn apply_with_panics_on_a_path_this_cpu_lacks() {
        apply_with(Path::Neon, &mut [0u8; 64], KEY, 0);
    }
}
