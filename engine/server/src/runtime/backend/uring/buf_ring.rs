//! The provided-buffer ring: one worker's receive buffers, lent to the kernel through a ring it
//! takes from whenever a multishot recv has data.
//!
//! A buffer is in one of three hands: the ring's (the kernel may fill it), ours (from the
//! completion that names it until [`BufRing::give_back`]), or the spare stack (ours, idle).
//! Nothing here knows about connections; an idle one holds no buffer because the kernel only
//! takes one when bytes arrive.
//!
//! **Hot, not round-robin.** The kernel takes buffers in ring order, so a ring holding every
//! buffer cycles its whole size through the cache: each recv writes into the buffer used
//! longest ago, a cold one. So the ring holds only a *target* number of buffers (at first
//! [`MIN_TARGET`]), refilled before each wait from the top of the spare stack, where the
//! buffers given back last are: the working set is the target plus one wait's worth, and the
//! rest of the memory is never touched (no RSS) until a burst needs it.
//!
//! **Growth.** A recv that finds the ring empty ends with ENOBUFS (the backend re-arms it); the
//! next refill doubles the target, and once the target is every buffer allocated, allocates
//! another chunk of as many buffers as the first, up to [`MAX_CHUNKS`] chunks. **Shrinking.**
//! After a [`WINDOW`] with no starvation the target halves (down to [`MIN_TARGET`]) until the
//! busiest wait of the window took more than a quarter of it, and the newest chunks are retired
//! while the busiest wait fits in half of the chunks left: their spare buffers leave the stack,
//! the ones in the ring or in use leave as they come back, and each chunk's memory is freed when
//! its last buffer is back.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// The buffer group every recv of a worker selects from.
pub(super) const GROUP: u16 = 0;
/// The kernel's limit on entries in one buffer ring.
const MAX_ENTRIES: u32 = 1 << 15;
/// Chunks at most (the first included): growth stops at this many times the configured memory.
pub(super) const MAX_CHUNKS: usize = 8;
/// The fewest buffers kept in the ring: one wait's recvs on a few busy connections.
pub(super) const MIN_TARGET: u16 = 16;
/// How long usage must stay low before the target halves or a chunk is retired.
pub(super) const WINDOW: Duration = Duration::from_secs(5);
/// Busy refills between looks at the clock (a starved one always looks).
const CLOCK_EVERY: u16 = 16;

/// Where a buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hand {
    /// In the ring: the kernel may fill it.
    Ring,
    /// Named by a completion, not yet given back.
    Ours,
    /// On the spare stack.
    Spare,
    /// Its chunk is retiring: back from the kernel, never lent again.
    Retired,
}

/// `count` buffers in one anonymous mapping.
struct Chunk {
    memory: NonNull<u8>,
    len: usize,
    /// Buffers of this chunk in the ring or ours (not spare, not retired).
    out: u16,
    retiring: bool,
}

/// Buffers of `size` bytes in chunks of `per_chunk`, and the ring that lends them.
pub(super) struct BufRing {
    /// Ring entries (a power of two of them), page-aligned as the kernel requires.
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    mask: u16,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: u16,
    size: usize,
    per_chunk: u16,
    chunks: Vec<Option<Chunk>>,
    /// Per buffer id: whose it is (ids of chunks not allocated are absent or `Retired`).
    hand: Vec<Hand>,
    /// Spare buffers, the one given back last on top.
    spare: Vec<u16>,
    /// Buffers in the ring as far as we know: lent minus those completions named. The kernel
    /// may have taken more whose completions are not read yet, never fewer.
    in_ring: u16,
    /// How many buffers the refill keeps in the ring.
    target: u16,
    /// A recv found the ring empty since the last refill.
    starved: bool,
    /// Buffers completions named since the last refill, and the most over the window.
    taken: u16,
    peak: u16,
    starved_in_window: bool,
    window_start: Option<Instant>,
    /// Busy refills since the clock was last read.
    unclocked: u16,
    stats: RingStats,
}

/// What the ring did, for `Debug` and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct RingStats {
    /// Chunks allocated after the first.
    pub(super) grown: u32,
    /// Chunks freed after being retired.
    pub(super) shrunk: u32,
    /// Refills that found a recv had starved.
    pub(super) starved: u32,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("size", &self.size)
            .field("allocated", &self.allocated())
            .field("target", &self.target)
            .field("in_ring", &self.in_ring)
            .field("stats", &self.stats)
            .finish()
    }
}

impl BufRing {
    /// A first chunk of `count` buffers (1..=32768) of `size` bytes, room in the ring for
    /// [`MAX_CHUNKS`] chunks (within the kernel's 32768 entries), and the first
    /// [`MIN_TARGET`] buffers in the ring. Chunks are anonymous mappings, not heap memory: the
    /// kernel zeroes their pages as they are first touched, so buffers never used cost no RSS
    /// (the allocator's page-aligned `alloc_zeroed` writes every byte), and a freed chunk goes
    /// back to the system at once.
    pub(super) fn new(count: u32, size: usize) -> io::Result<Self> {
        let count = count.clamp(1, MAX_ENTRIES);
        let size = size.clamp(64, u32::MAX as usize);
        let page = page_size();
        let room = (count * MAX_CHUNKS as u32).min(MAX_ENTRIES);
        let ring_len = room.next_power_of_two() as usize;
        let entries_layout = Layout::from_size_align(
            (ring_len * std::mem::size_of::<BufRingEntry>()).next_multiple_of(page),
            page,
        )
        .map_err(|_| too_big())?;
        // SAFETY: the layout has a non-zero size (at least one page).
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut ring = BufRing {
            entries: entries.cast(),
            entries_layout,
            mask: (ring_len - 1) as u16,
            tail: 0,
            size,
            per_chunk: count as u16,
            chunks: Vec::new(),
            hand: Vec::new(),
            spare: Vec::new(),
            in_ring: 0,
            target: MIN_TARGET.min(count as u16),
            starved: false,
            taken: 0,
            peak: 0,
            starved_in_window: false,
            window_start: None,
            unclocked: 0,
            stats: RingStats::default(),
        };
        // On failure `ring` drops and frees the entries.
        ring.add_chunk()?;
        ring.refill_at(Instant::now());
        Ok(ring)
    }

    /// Registers the ring with the kernel as buffer group [`GROUP`].
    ///
    /// # Safety
    ///
    /// `self` must outlive the registration: unregister the group (or close the ring) before it
    /// is dropped, and make sure no operation that may still select a buffer is in flight.
    pub(super) unsafe fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: `entries` is page-aligned and holds `mask + 1` entries; the caller keeps it
        // alive for as long as the registration.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.mask.wrapping_add(1),
                GROUP,
                0,
            )
        }
    }

    /// Buffers in the ring as far as we know (see `in_ring`).
    #[cfg(test)]
    pub(super) fn in_ring(&self) -> u16 {
        self.in_ring
    }

    /// Buffers named by a completion and not given back.
    #[cfg(test)]
    pub(super) fn ours(&self) -> usize {
        self.hand.iter().filter(|&&h| h == Hand::Ours).count()
    }

    /// Bytes of buffers allocated (retiring chunks included).
    pub(super) fn allocated(&self) -> usize {
        self.chunks.iter().flatten().count() * self.per_chunk as usize * self.size
    }

    #[cfg(test)]
    pub(super) fn stats(&self) -> RingStats {
        self.stats
    }

    /// A completion named buffer `bid`: it is ours from now until [`BufRing::give_back`].
    /// `false` (and nothing changes) if it was not in the ring: a completion naming a buffer
    /// we never lent, or twice.
    pub(super) fn take(&mut self, bid: u16) -> bool {
        match self.hand.get_mut(bid as usize) {
            Some(hand @ Hand::Ring) => {
                *hand = Hand::Ours;
                self.in_ring = self.in_ring.saturating_sub(1);
                self.taken = self.taken.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// The first `len` bytes of buffer `bid`; `None` if it is not ours or too short. The
    /// slice is not tied to the ring: it stays valid while the buffer is ours, until
    /// [`BufRing::give_back`] (a chunk is unmapped only once all its buffers are back).
    ///
    /// # Safety
    ///
    /// No other borrow of buffer `bid` may be alive, and the slice must not be used after the
    /// buffer is given back.
    pub(super) unsafe fn buffer<'a>(&self, bid: u16, len: usize) -> Option<&'a mut [u8]> {
        if len > self.size || self.hand.get(bid as usize) != Some(&Hand::Ours) {
            return None;
        }
        let base = self.address(bid)?;
        // SAFETY: the buffer is ours (taken from the kernel, not given back), `len` fits in it,
        // and the caller guarantees nothing else borrows it for as long as it uses the slice.
        Some(unsafe { std::slice::from_raw_parts_mut(base.as_ptr(), len) })
    }

    /// Gives buffer `bid` back: onto the spare stack (lent again at the next refill, before
    /// older spares), or, if its chunk is retiring, out of use, freeing the chunk with its last
    /// buffer. Ignored for a buffer that is not ours.
    pub(super) fn give_back(&mut self, bid: u16) {
        if self.hand.get(bid as usize) != Some(&Hand::Ours) {
            return;
        }
        let k = bid as usize / self.per_chunk as usize;
        let Some(chunk) = self.chunks.get_mut(k).and_then(Option::as_mut) else { return };
        chunk.out -= 1;
        let (retiring, out) = (chunk.retiring, chunk.out);
        if retiring {
            self.hand[bid as usize] = Hand::Retired;
            if out == 0 {
                self.free_chunk(k);
            }
        } else {
            self.hand[bid as usize] = Hand::Spare;
            self.spare.push(bid);
        }
    }

    /// A recv found the ring empty (ENOBUFS): the next refill lends more.
    pub(super) fn starve(&mut self) {
        self.starved = true;
    }

    /// Tops the ring up to the target from the spare stack, after adapting the target (and
    /// the memory) to what the last wait took. Call before each wait. Returns how many buffers
    /// are in the ring.
    pub(super) fn refill(&mut self) -> u16 {
        if !self.starved && self.taken > 0 {
            // A busy wait (one per loop iteration under load): the window is seconds long, so
            // the clock is looked at every `CLOCK_EVERY` of them, not at each.
            self.unclocked += 1;
            if self.unclocked < CLOCK_EVERY {
                self.peak = self.peak.max(self.taken);
                self.taken = 0;
                return self.top_up();
            }
        } else if !self.starved && !self.can_shrink() {
            // Nothing happened since the last refill: nothing to adapt, no clock read.
            return self.top_up();
        }
        self.unclocked = 0;
        self.refill_at(Instant::now())
    }

    /// [`BufRing::refill`] at a given time (tests drive the window with it).
    fn refill_at(&mut self, now: Instant) -> u16 {
        self.peak = self.peak.max(self.taken);
        self.taken = 0;
        if std::mem::take(&mut self.starved) {
            self.stats.starved += 1;
            self.starved_in_window = true;
            self.grow();
        }
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= WINDOW {
            if !self.starved_in_window {
                self.shrink();
            }
            self.peak = 0;
            self.starved_in_window = false;
            self.window_start = Some(now);
        }
        self.top_up()
    }

    /// Lends spare buffers, the latest given back first, until the ring holds the target.
    fn top_up(&mut self) -> u16 {
        let mut lent = false;
        while self.in_ring < self.target {
            let Some(bid) = self.spare.pop() else { break };
            self.lend(bid);
            lent = true;
        }
        if lent {
            // SAFETY: the tail is the `resv` field of entry 0, inside our allocation, aligned
            // for u16, and shared with the kernel only through atomic accesses. The release
            // store publishes the entries written before it.
            unsafe {
                let tail = BufRingEntry::tail(self.entries.as_ptr()) as *mut u16;
                AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
            }
        }
        self.in_ring
    }

    /// Writes buffer `bid` into the entry past the tail (published by the caller).
    fn lend(&mut self, bid: u16) {
        let Some(addr) = self.address(bid) else { return };
        let index = (self.tail & self.mask) as usize;
        // SAFETY: `index <= mask`, inside the entries allocation. The kernel reads only entries
        // between its head and the published tail; this one is past the tail, and the ring
        // never holds more buffers than it has entries (at most `MAX_CHUNKS` chunks fit).
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(addr.as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.hand[bid as usize] = Hand::Ring;
        self.in_ring += 1;
        if let Some(chunk) = self.chunks[bid as usize / self.per_chunk as usize].as_mut() {
            chunk.out += 1;
        }
    }

    /// The ring ran dry: lend more buffers, or allocate more.
    fn grow(&mut self) {
        let live = self.live_buffers();
        if self.target < live {
            self.target = self.target.saturating_mul(2).min(live);
            return;
        }
        // A retiring chunk comes back into use before a new one is allocated.
        if let Some(k) = self.chunks.iter().rposition(|c| c.as_ref().is_some_and(|c| c.retiring)) {
            self.unretire(k);
        } else if let Err(e) = self.add_chunk() {
            crate::log_rate_limited("growing the io_uring receive buffers", &e);
            return;
        }
        self.target = self.live_buffers();
        tracing::debug!(bytes = self.allocated(), "io_uring receive buffers grown");
    }

    /// A window without starvation: halve the target if no wait took a quarter of it, retire
    /// the newest chunk if the busiest wait (and the target) fit in half of the others.
    fn shrink(&mut self) {
        // All the way in one window: after a spike, memory comes back one window after the
        // load ended, not one window per halving or per chunk.
        while u32::from(self.peak) * 4 <= u32::from(self.target) && self.target > MIN_TARGET {
            self.target = (self.target / 2).max(MIN_TARGET.min(self.per_chunk));
        }
        while self.retire_newest() {}
    }

    /// Retires the newest live chunk (never the first) if the busiest wait fits in half of the
    /// chunks left; `false` if it does not.
    fn retire_newest(&mut self) -> bool {
        let Some(k) = self.chunks.iter().rposition(|c| c.as_ref().is_some_and(|c| !c.retiring))
        else {
            return false;
        };
        let left = self.live_buffers() - self.per_chunk;
        if k == 0 || u32::from(self.peak.max(self.target)) * 2 > u32::from(left) {
            return false;
        }
        let Some(chunk) = self.chunks[k].as_mut() else { return false };
        chunk.retiring = true;
        let out = chunk.out;
        let range = k * self.per_chunk as usize..(k + 1) * self.per_chunk as usize;
        let hand = &mut self.hand;
        self.spare.retain(|&bid| {
            let mine = range.contains(&(bid as usize));
            if mine {
                hand[bid as usize] = Hand::Retired;
            }
            !mine
        });
        self.target = self.target.min(left);
        if out == 0 {
            self.free_chunk(k);
        }
        true
    }

    /// Whether a window may shrink something (else `refill` need not read the clock).
    fn can_shrink(&self) -> bool {
        self.target > MIN_TARGET || self.chunks.iter().flatten().count() > 1
    }

    /// Buffers that may be lent: those of chunks allocated and not retiring.
    fn live_buffers(&self) -> u16 {
        let live = self.chunks.iter().flatten().filter(|c| !c.retiring).count();
        (live * self.per_chunk as usize).min(u16::MAX as usize) as u16
    }

    /// Allocates the next chunk (reusing a freed slot) and puts its buffers under the spares.
    fn add_chunk(&mut self) -> io::Result<()> {
        let k = match self.chunks.iter().position(Option::is_none) {
            Some(k) => k,
            None if self.chunks.len() < MAX_CHUNKS => {
                self.chunks.push(None);
                self.chunks.len() - 1
            }
            None => return Err(io::Error::other("the receive buffers are at their limit")),
        };
        let per = self.per_chunk as usize;
        let first = k * per;
        if first + per > self.mask as usize + 1 {
            self.chunks
                .truncate(self.chunks.iter().rposition(Option::is_some).map_or(0, |i| i + 1));
            return Err(io::Error::other("the buffer ring has no room for more buffers"));
        }
        let len = self.size.checked_mul(per).ok_or_else(too_big)?;
        // SAFETY: a fresh private anonymous mapping; no address hint, no descriptor.
        let memory = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let Some(memory) = NonNull::new(memory.cast::<u8>()) else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        self.chunks[k] = Some(Chunk { memory, len, out: 0, retiring: false });
        if self.hand.len() < first + per {
            self.hand.resize(first + per, Hand::Retired);
        }
        // Under the spares: those given back lately are warmer than fresh memory.
        self.spare.splice(0..0, (first..first + per).rev().map(|bid| bid as u16));
        for bid in first..first + per {
            self.hand[bid] = Hand::Spare;
        }
        if k > 0 {
            self.stats.grown += 1;
        }
        Ok(())
    }

    /// Puts retiring chunk `k` back into use.
    fn unretire(&mut self, k: usize) {
        let per = self.per_chunk as usize;
        if let Some(chunk) = self.chunks[k].as_mut() {
            chunk.retiring = false;
        }
        for bid in k * per..(k + 1) * per {
            if self.hand[bid] == Hand::Retired {
                self.hand[bid] = Hand::Spare;
                self.spare.insert(0, bid as u16);
            }
        }
    }

    /// Frees chunk `k`, none of whose buffers is in the ring or ours.
    fn free_chunk(&mut self, k: usize) {
        if let Some(chunk) = self.chunks[k].take() {
            debug_assert_eq!(chunk.out, 0);
            // SAFETY: mapped in `add_chunk` with this length; no buffer of it is in the ring
            // (the kernel cannot select it) or ours (nothing borrows it).
            unsafe { libc::munmap(chunk.memory.as_ptr().cast(), chunk.len) };
            self.stats.shrunk += 1;
            tracing::debug!(bytes = self.allocated(), "io_uring receive buffers shrunk");
        }
    }

    /// Where buffer `bid` starts, if its chunk is allocated.
    fn address(&self, bid: u16) -> Option<NonNull<u8>> {
        let per = self.per_chunk as usize;
        let chunk = self.chunks.get(bid as usize / per)?.as_ref()?;
        // SAFETY: `bid % per < per`: the offset lies inside the chunk's allocation.
        Some(unsafe { chunk.memory.add(bid as usize % per * self.size) })
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        for k in 0..self.chunks.len() {
            if let Some(chunk) = self.chunks[k].take() {
                // SAFETY: mapped in `add_chunk` with this length. The owner unregistered the
                // group (or closed the ring) first, so the kernel no longer writes into it.
                unsafe { libc::munmap(chunk.memory.as_ptr().cast(), chunk.len) };
            }
        }
        // SAFETY: allocated in `new` with this layout; unregistered as above.
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout) };
    }
}

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "receive buffers too large")
}

fn page_size() -> usize {
    // SAFETY: sysconf(3) takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published_tail(ring: &BufRing) -> u16 {
        // SAFETY: the tail field lies inside the live entries allocation.
        unsafe { *BufRingEntry::tail(ring.entries.as_ptr()) }
    }

    /// The buffer ids published in the ring between `from` and the tail, in order.
    fn lent_since(ring: &BufRing, from: u16) -> Vec<u16> {
        let mut ids = Vec::new();
        let mut at = from;
        while at != published_tail(ring) {
            // SAFETY: the index is masked into the live entries allocation.
            ids.push(unsafe { (*ring.entries.as_ptr().add((at & ring.mask) as usize)).bid() });
            at = at.wrapping_add(1);
        }
        ids
    }

    /// What a wait does: the kernel fills the next `n` buffers in ring order.
    fn kernel_takes(ring: &mut BufRing, head: &mut u16, n: usize) -> Vec<u16> {
        let ids: Vec<u16> = lent_since(ring, *head).into_iter().take(n).collect();
        for &bid in &ids {
            assert!(ring.take(bid));
        }
        *head = head.wrapping_add(ids.len() as u16);
        ids
    }

    #[test]
    fn the_ring_starts_with_the_minimum_target_not_every_buffer() {
        let ring = BufRing::new(256, 1000).unwrap();
        assert_eq!(ring.in_ring(), MIN_TARGET);
        assert_eq!(published_tail(&ring), MIN_TARGET);
        assert_eq!(ring.allocated(), 256 * 1000);
        assert_eq!(ring.mask as usize + 1, (256 * MAX_CHUNKS).next_power_of_two());
        assert_eq!(ring.entries.as_ptr() as usize % page_size(), 0);
        assert_eq!(ring.chunks[0].as_ref().unwrap().memory.as_ptr() as usize % page_size(), 0);
        let small = BufRing::new(5, 64).unwrap();
        assert_eq!(small.in_ring(), 5, "a ring smaller than the minimum lends every buffer");
    }

    #[test]
    fn a_buffer_given_back_is_the_next_one_lent() {
        let mut ring = BufRing::new(64, 64).unwrap();
        let mut head = 0;
        let taken = kernel_takes(&mut ring, &mut head, 3);
        for &bid in &taken {
            ring.give_back(bid);
        }
        let before = published_tail(&ring);
        ring.refill();
        assert_eq!(lent_since(&ring, before), vec![taken[2], taken[1], taken[0]], "hottest first");
        assert_eq!(ring.in_ring(), MIN_TARGET);
        // Cycling one buffer at a time touches only MIN_TARGET + 1 distinct buffers.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let bid = kernel_takes(&mut ring, &mut head, 1)[0];
            seen.insert(bid);
            ring.give_back(bid);
            ring.refill();
        }
        assert!(seen.len() <= MIN_TARGET as usize + 1, "{} buffers cycled", seen.len());
    }

    #[test]
    fn foreign_and_repeated_ids_are_ignored() {
        let mut ring = BufRing::new(4, 64).unwrap();
        assert!(!ring.take(4), "never lent");
        assert!(ring.take(0));
        assert!(!ring.take(0), "named twice");
        // SAFETY: buffer 0 is ours and not borrowed.
        assert!(unsafe { ring.buffer(0, 64) }.is_some());
        // SAFETY: as above.
        assert!(unsafe { ring.buffer(0, 65) }.is_none());
        // SAFETY: buffer 1 is the kernel's: refused.
        assert!(unsafe { ring.buffer(1, 1) }.is_none());
        ring.give_back(0);
        ring.give_back(0);
        ring.give_back(3);
        assert_eq!(ring.spare, vec![0], "given back once; one still in the ring is not spare");
    }

    #[test]
    fn starving_doubles_the_target_then_grows_a_chunk_up_to_the_limit() {
        let mut ring = BufRing::new(32, 64).unwrap();
        let mut head = 0;
        kernel_takes(&mut ring, &mut head, MIN_TARGET as usize);
        ring.starve();
        assert_eq!(ring.refill(), MIN_TARGET, "the other half of the chunk");
        assert_eq!(ring.target, 32);
        let ours: Vec<u16> = (0..MIN_TARGET).collect();
        for &bid in &ours {
            ring.give_back(bid);
        }
        assert_eq!(ring.refill(), 32);
        kernel_takes(&mut ring, &mut head, 32);
        ring.starve();
        ring.refill();
        assert_eq!((ring.allocated(), ring.stats().grown), (64 * 64, 1));
        assert_eq!(ring.in_ring(), 32, "the new chunk's buffers are lent");
        for _ in 0..20 {
            let n = ring.in_ring() as usize;
            kernel_takes(&mut ring, &mut head, n);
            ring.starve();
            ring.refill();
        }
        assert_eq!(ring.allocated(), 32 * 64 * MAX_CHUNKS, "capped");
        assert!(ring.in_ring() as usize <= ring.mask as usize + 1);
    }

    #[test]
    fn busy_waits_between_looks_at_the_clock_still_count_toward_the_window() {
        let mut ring = BufRing::new(256, 64).unwrap();
        let mut head = 0;
        let start = Instant::now();
        ring.refill_at(start);
        // Starving twice: the target goes 16 -> 32 -> 64.
        for _ in 0..2 {
            let n = ring.in_ring() as usize;
            for bid in kernel_takes(&mut ring, &mut head, n) {
                ring.give_back(bid);
            }
            ring.starve();
            ring.refill();
        }
        assert_eq!(ring.target, 64);
        // The window of the starving ends.
        ring.refill_at(start + WINDOW);
        assert_eq!(ring.target, 64);
        // Busy waits of 20 buffers each, fewer than `CLOCK_EVERY`: no clock read, but 20 is
        // more than a quarter of 64, so the window that ends next keeps the target.
        for _ in 0..CLOCK_EVERY - 1 {
            for bid in kernel_takes(&mut ring, &mut head, 20) {
                ring.give_back(bid);
            }
            assert_eq!(ring.refill(), 64);
        }
        ring.refill_at(start + 2 * WINDOW);
        assert_eq!(ring.target, 64, "the busy waits' peak was kept");
        // A quiet window after it halves the target as far as it goes.
        for bid in kernel_takes(&mut ring, &mut head, 1) {
            ring.give_back(bid);
        }
        ring.refill_at(start + 3 * WINDOW);
        assert_eq!(ring.target, MIN_TARGET);
    }

    #[test]
    fn quiet_windows_halve_the_target_and_retire_grown_chunks() {
        let mut ring = BufRing::new(32, 64).unwrap();
        let mut head = 0;
        let mut now = Instant::now();
        // A burst: grow to three chunks.
        let mut held = Vec::new();
        for _ in 0..3 {
            let n = ring.in_ring() as usize;
            held.extend(kernel_takes(&mut ring, &mut head, n));
            ring.starve();
            ring.refill_at(now);
        }
        assert_eq!(ring.allocated(), 3 * 32 * 64);
        for bid in held.drain(..) {
            ring.give_back(bid);
        }
        ring.refill_at(now);
        // Quiet: one buffer per wait.
        for _ in 0..12 {
            now += WINDOW;
            let bid = kernel_takes(&mut ring, &mut head, 1)[0];
            ring.give_back(bid);
            ring.refill_at(now);
        }
        assert_eq!(ring.target, MIN_TARGET);
        // Retired chunks are freed once every buffer of theirs came back from the ring.
        for _ in 0..200 {
            let bid = kernel_takes(&mut ring, &mut head, 1)[0];
            ring.give_back(bid);
            ring.refill_at(now);
        }
        assert_eq!(ring.allocated(), 32 * 64, "back to the first chunk");
        assert_eq!(ring.stats().shrunk, 2);
        assert!(ring.spare.iter().all(|&bid| bid < 32));
        // And it grows again when needed.
        let n = ring.in_ring() as usize;
        kernel_takes(&mut ring, &mut head, n);
        ring.starve();
        ring.refill_at(now);
        ring.starve();
        ring.refill_at(now);
        assert_eq!(ring.allocated(), 2 * 32 * 64);
    }
}
