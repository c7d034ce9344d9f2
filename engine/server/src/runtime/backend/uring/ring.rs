//! One io_uring instance of a worker: the ring, its direct-descriptor (fixed-file) table, its
//! provided-buffer ring and the submissions waiting for room in its SQ.
//!
//! A worker drives one ring or several. The kernel caps a ring's fixed-file table at
//! RLIMIT_NOFILE, so a worker holding more connections than that gets another ring each time the
//! tables it has are full. Ring 0 (the primary) is where the worker waits; every other
//! (secondary) ring has the worker's waker eventfd registered, so completion work arriving there
//! ends the wait in the primary through the multishot poll the primary keeps on that eventfd.
//! Buffer rings and fixed-file tables belong to one io_uring instance, so each ring has its own.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, Ordering};

use io_uring::{squeue, IoUring};

use super::buf_ring::BufRing;
use super::setup::{self, TaskRun};

/// Bits of a connection's packed descriptor that hold the slot in its ring's table: the kernel's
/// own cap on one table is 2^20 slots.
pub(super) const SLOT_BITS: u32 = 20;
/// Rings one worker may drive: what the rest of the packed descriptor can name.
pub(super) const MAX_RINGS: usize = 1 << (32 - SLOT_BITS);

// Every slot a table can have fits in the packed descriptor.
const _: () = assert!(setup::MAX_FIXED_FILES <= 1 << SLOT_BITS);

/// One io_uring instance, with what belongs to it alone.
pub(super) struct Ring {
    // Declared first: closed before the buffers (freed in `Drop`, after `quiesce`).
    pub(super) ring: IoUring,
    /// Its provided-buffer ring (buffer rings are per io_uring instance). Freed in `Drop` only once
    /// the ring is quiet, else leaked.
    pub(super) bufs: ManuallyDrop<BufRing>,
    /// Submissions that did not fit in its SQ (kept in order until there is room).
    pub(super) backlog: VecDeque<squeue::Entry>,
    /// Slots in its fixed-file table.
    pub(super) files: u32,
    /// Slots taken or promised: connections (until their close completes), sockets accepted to be
    /// refused (until theirs does), and accepts in flight on this ring (each will take one). An
    /// accept is armed only on a ring where this is below `files`, so an accept never fails for a
    /// full table.
    pub(super) used: u32,
    quiet: Option<bool>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("files", &self.files)
            .field("used", &self.used)
            .field("buffers", &*self.bufs)
            .finish()
    }
}

impl Ring {
    /// A ring with `sq` submission and `cq` completion entries, a fixed-file table of `files` slots
    /// (halved while the kernel refuses it) and the buffers `bufs`, registered. `waker`: for a
    /// secondary ring, the eventfd it signals when completion work arrives (registered with its
    /// signals disabled: see [`Ring::watch`]). Call it on the worker's thread: the ring is set up
    /// for a single issuer.
    pub(super) fn new(
        sq: u32,
        cq: u32,
        files: u64,
        bufs: BufRing,
        waker: Option<RawFd>,
    ) -> io::Result<(Ring, TaskRun)> {
        let (ring, taskrun) = setup::build_ring(sq, cq)?;
        let mut this = Ring {
            ring,
            bufs: ManuallyDrop::new(bufs),
            backlog: VecDeque::new(),
            files: 0,
            used: 0,
            quiet: None,
        };
        this.files = setup::register_table(&this.ring, files)?;
        // SAFETY: `this` owns both; its Drop unregisters the group (in `quiesce`) after
        // cancelling every operation, before the buffers are freed.
        unsafe { this.bufs.register(&this.ring.submitter())? };
        if let Some(fd) = waker {
            this.ring.completion().disable_eventfd();
            this.ring.submitter().register_eventfd(fd)?;
        }
        Ok((this, taskrun))
    }

    /// Whether the kernel holds work for this ring that only entering it runs or moves into the
    /// CQ: completion work (DEFER_TASKRUN or COOP_TASKRUN with IORING_SQ_TASKRUN) or an
    /// overflowed CQ.
    pub(super) fn needs_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        sq.taskrun() || sq.cq_overflow()
    }

    /// Whether anything waits for the worker here: completions in the CQ or work to enter for.
    pub(super) fn has_work(&mut self) -> bool {
        self.needs_enter() || !self.ring.completion().is_empty()
    }

    /// Submissions not given to the kernel yet.
    pub(super) fn has_submissions(&mut self) -> bool {
        !self.backlog.is_empty() || !self.ring.submission().is_empty()
    }

    /// Lets every ring in `rings` signal the waker from now on, then says whether one already has
    /// work (the caller must not block then). Called right before the worker blocks in the
    /// primary ring; [`Ring::unwatch`] right after.
    ///
    /// No wake-up is lost between the check and the wait: the kernel sets IORING_SQ_TASKRUN and
    /// then, when the ring's completion work list was empty, reads the CQ flags to decide whether
    /// to signal; here the signal is enabled, then (after a full fence) the flag is read. One side
    /// sees the other's write: either the check finds the flag, or the kernel finds the signal
    /// enabled. Work added to a non-empty list raises no signal, but its flag is already set and
    /// stays set until the worker enters the ring (the kernel sets it again if it leaves work
    /// behind). A ring without DEFER_TASKRUN posts completions straight into its CQ and signals
    /// on every post, which the CQ check covers the same way.
    pub(super) fn watch(rings: &mut [Ring]) -> bool {
        for r in rings.iter_mut() {
            r.ring.completion().enable_eventfd();
        }
        fence(Ordering::SeqCst);
        rings.iter_mut().any(Ring::has_work)
    }

    /// Stops every ring in `rings` signalling the waker: while the worker is awake it looks at
    /// each ring anyway, and each signal would cost the primary a completion and the next wait a
    /// spurious wake-up (the kernel signals every time it posts completions, also while the
    /// worker itself runs a ring's completion work).
    pub(super) fn unwatch(rings: &mut [Ring]) {
        for r in rings.iter_mut() {
            r.ring.completion().disable_eventfd();
        }
    }

    /// Cancels every operation still in the ring and waits (bounded); `true` once nothing can touch
    /// memory the operations were given. Remembered: asking again costs nothing.
    pub(super) fn quiesce(&mut self) -> bool {
        *self.quiet.get_or_insert_with(|| setup::quiesce(&self.ring))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The buffers may be selected by any recv still in the ring: cancel and wait first;
        // leak them if the wait timed out.
        if self.quiesce() {
            // SAFETY: dropped once, here, and no operation can select a buffer any more.
            unsafe { ManuallyDrop::drop(&mut self.bufs) };
        }
    }
}

/// The fixed-file table a ring gets when the worker's rings already have `have` slots: what the
/// connection cap still needs (`wanted` in all), at most `cap` (RLIMIT_NOFILE, the kernel's own
/// cap per table), at least one.
pub(super) fn table_size(wanted: u64, have: u64, cap: u64) -> u64 {
    wanted.saturating_sub(have).min(cap).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_grow_to_the_connection_cap_in_steps_of_the_limit() {
        assert_eq!(table_size(200_064, 0, 20_000), 20_000);
        assert_eq!(table_size(200_064, 200_000, 20_000), 64);
        assert_eq!(table_size(164, 0, 20_000), 164);
        assert_eq!(table_size(10, 20, 20_000), 1);
    }
}
