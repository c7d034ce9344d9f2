//! The provided-buffer ring: one worker's receive buffers, in one allocation, lent to the kernel
//! through a ring it takes from whenever a multishot recv has data.
//!
//! A buffer belongs to the kernel while it sits in the ring, and to us from the completion that
//! names it until [`BufRing::give_back`]. Nothing here knows about connections; an idle one holds
//! no buffer because the kernel only takes one when bytes arrive.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// The buffer group every recv of a worker selects from.
pub(super) const GROUP: u16 = 0;
/// The kernel's limit on entries in one buffer ring.
const MAX_ENTRIES: u32 = 1 << 15;

/// `count` buffers of `size` bytes and the ring that lends them.
pub(super) struct BufRing {
    /// Ring entries (a power of two of them), page-aligned as the kernel requires.
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    mask: u16,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: u16,
    memory: NonNull<u8>,
    memory_layout: Layout,
    size: usize,
    count: u16,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing").field("count", &self.count).field("size", &self.size).finish()
    }
}

impl BufRing {
    /// Allocates `count` buffers (1..=32768) of `size` bytes, every one in the ring. The memory
    /// is zeroed lazily by the allocator (fresh pages), so untouched buffers cost no RSS.
    pub(super) fn new(count: u32, size: usize) -> io::Result<Self> {
        let count = count.clamp(1, MAX_ENTRIES);
        let size = size.clamp(64, u32::MAX as usize);
        let page = page_size();
        let ring_len = count.next_power_of_two() as usize;
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "receive buffers too large");
        let entries_layout = Layout::from_size_align(
            (ring_len * std::mem::size_of::<BufRingEntry>()).next_multiple_of(page),
            page,
        )
        .map_err(|_| too_big())?;
        let memory_layout =
            Layout::from_size_align(size.checked_mul(count as usize).ok_or_else(too_big)?, page)
                .map_err(|_| too_big())?;
        // SAFETY: both layouts have a non-zero size (at least one page, at least 64 bytes).
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: as above.
        let Some(memory) = NonNull::new(unsafe { alloc::alloc_zeroed(memory_layout) }) else {
            // SAFETY: allocated just above with this layout, and not shared yet.
            unsafe { alloc::dealloc(entries.as_ptr(), entries_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut ring = BufRing {
            entries: entries.cast(),
            entries_layout,
            mask: (ring_len - 1) as u16,
            tail: 0,
            memory,
            memory_layout,
            size,
            count: count as u16,
        };
        for bid in 0..ring.count {
            ring.give_back(bid);
        }
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
                self.mask + 1,
                GROUP,
                0,
            )
        }
    }

    /// Buffers in all.
    pub(super) fn count(&self) -> u16 {
        self.count
    }

    /// The first `len` bytes of buffer `bid`; `None` if the kernel named a buffer or length we
    /// never lent.
    ///
    /// # Safety
    ///
    /// Buffer `bid` must be ours: named by a completion and not yet given back. No other borrow of
    /// it may be alive.
    pub(super) unsafe fn buffer(&mut self, bid: u16, len: usize) -> Option<&mut [u8]> {
        if bid >= self.count || len > self.size {
            return None;
        }
        // SAFETY: `bid < count` so the range lies inside `memory`; the caller guarantees the
        // kernel does not own the buffer and nothing else borrows it.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.memory.as_ptr().add(bid as usize * self.size), len)
        })
    }

    /// Puts buffer `bid` back in the ring, visible to the kernel at once.
    pub(super) fn give_back(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let index = (self.tail & self.mask) as usize;
        // SAFETY: `index <= mask`, inside the entries allocation; the kernel reads only entries
        // between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        // SAFETY: `bid < count`: the address lies inside `memory`.
        entry.set_addr(unsafe { self.memory.as_ptr().add(bid as usize * self.size) } as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the `resv` field of entry 0, inside our allocation, aligned for u16,
        // and shared with the kernel only through atomic accesses. The release store publishes
        // the entry written above before the kernel can see the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` with these layouts. The owner unregistered the
        // group (or closed the ring) first, so the kernel no longer reads or writes them.
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            alloc::dealloc(self.memory.as_ptr(), self.memory_layout);
        }
    }
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

    #[test]
    fn every_buffer_starts_in_the_ring() {
        let ring = BufRing::new(5, 1000).unwrap();
        assert_eq!((ring.count(), ring.size, ring.mask), (5, 1000, 7));
        assert_eq!(published_tail(&ring), 5);
        assert_eq!(ring.memory.as_ptr() as usize % page_size(), 0);
        assert_eq!(ring.entries.as_ptr() as usize % page_size(), 0);
    }

    #[test]
    fn give_back_wraps_the_ring_and_ignores_foreign_ids() {
        let mut ring = BufRing::new(4, 64).unwrap();
        for i in 0..70_000u32 {
            ring.give_back((i % 4) as u16);
        }
        ring.give_back(4);
        assert_eq!(published_tail(&ring), (4 + 70_000u32) as u16);
        // SAFETY: nothing was registered: the kernel owns no buffer.
        assert!(unsafe { ring.buffer(3, 64) }.is_some());
        // SAFETY: as above.
        assert!(unsafe { ring.buffer(4, 1) }.is_none());
        // SAFETY: as above.
        assert!(unsafe { ring.buffer(0, 65) }.is_none());
    }
}
