//! permessage-deflate memory, counted by a global allocator that tallies each thread's live
//! heap bytes: a decompression bomb stops at the message limit having allocated no more than
//! the limit and the inflate state; and the bytes a compressor or an inflater holds per
//! connection, at each window (`cargo test -p ringside-proto --test deflate_memory --
//! --nocapture` prints the table docs/tuning.md quotes).

mod deflate_util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use deflate_util::*;
use ringside_proto::deflate::{DeflateParams, Deflater, SharedDeflaters};
use ringside_proto::{Config, Connection, Error, Role};

/// Counts live heap bytes per thread, so tests running in parallel do not see each other.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping only
// touches const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Runs `f` and returns its result with the peak heap growth (bytes) while it ran.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let base = live();
    PEAK.with(|p| p.set(base));
    let value = f();
    (value, PEAK.with(Cell::get) - base)
}

/// A compressed message of `gib` GiB of zeros, built a MiB at a time by a compressor that
/// keeps context (each step's sync flush tail put back between steps): about 1 KiB per MiB.
fn bomb(mib: usize) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut d = Deflater::new(15, false, 9);
    let mut out = Vec::new();
    for i in 0..mib {
        if i > 0 {
            out.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
        }
        d.compress(&zeros, &mut out);
    }
    out
}

#[test]
fn a_bomb_stops_at_the_limit_with_1009_and_bounded_memory() {
    // 1 GiB of zeros in about 1 MiB of compressed bytes (DEFLATE's ratio tops out near 1032:1,
    // so no smaller message can inflate that far), against a 1 MiB message limit.
    let compressed = bomb(1024);
    assert!(compressed.len() < 1100 << 10, "{}", compressed.len());
    let msg = Seen::Binary(compressed);
    let mut wire = client_message(None, &msg, 0);
    wire[0] |= 0x40;
    let limit = 1 << 20;
    let config = Config { max_message_size: limit, ..Config::default() };
    let params = DeflateParams { client_no_context_takeover: true, ..DeflateParams::DEFAULT };
    for piece in [usize::MAX, 4096] {
        let mut server = Connection::new(Role::Server, config);
        server.enable_deflate(params, None);
        let cuts: Vec<usize> = (piece..wire.len()).step_by(piece.min(wire.len())).collect();
        let ((seen, out), peak) = peak_during(|| feed(&mut server, &wire, &cuts));
        assert_eq!(seen, [Seen::Failed(Error::MessageTooLarge)]);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1009);
        // The message buffer (limit + 1 byte), zlib's state with its 32 KiB window, the pieces
        // `feed` copies, and little else. Growing by doubling would have reached 2 MiB.
        let bound = limit as isize + 64 * 1024 + piece.min(wire.len()) as isize + 4096;
        assert!(peak <= bound, "piece {piece}: peak {peak} over {bound}");
        assert!(!server.is_inflating(), "state freed on failure");
        println!("bomb, pieces of {piece}: peak heap growth {peak} B for a {limit} B limit");
    }
}

#[test]
fn memory_per_compressor_and_inflater() {
    let tick = payload(0, 150, 1);
    let big = payload(0, 16 << 10, 2);
    println!(
        "| window bits | dedicated compressor (level 1) | (level 6) | inflater with context |"
    );
    println!("|---|---|---|---|");
    for bits in 9..=15u8 {
        let mut held = Vec::new();
        for level in [1, 6] {
            let base = live();
            let mut d = Deflater::new(bits, false, level);
            let mut out = Vec::new();
            d.compress(big.parts().1, &mut out);
            d.compress(tick.parts().1, &mut out);
            drop(out);
            held.push(live() - base);
            drop(d);
        }
        // A server connection whose client keeps context holds its inflater between messages.
        let params = DeflateParams { client_max_window_bits: bits, ..DeflateParams::DEFAULT };
        let mut server = Connection::new(Role::Server, Config::default());
        server.enable_deflate(params, None);
        let mut client = params.deflater(Role::Client, 6);
        let wire = client_message(Some(&mut client), &big, 0);
        let base = live();
        let (seen, _) = feed(&mut server, &wire, &[]);
        assert_eq!(seen, std::slice::from_ref(&big));
        drop(seen);
        let inflater = live() - base;
        assert!(server.is_inflating());
        println!("| {bits} | {} | {} | {inflater} |", held[0], held[1]);
        assert!(held.iter().all(|&h| h > 0 && h < 600 << 10), "{held:?}");
        assert!(inflater > 32 << 10 && inflater < 96 << 10, "{inflater}");
    }

    // Neither side keeping context: the connection holds nothing between messages (the
    // agreement is inline); the thread keeps the inflate state for the next message, on any
    // connection.
    let params = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..DeflateParams::DEFAULT
    };
    let base = live();
    let mut server = Connection::new(Role::Server, Config::default());
    server.enable_deflate(params, None);
    let record = live() - base;
    let mut client = params.deflater(Role::Client, 6);
    let wire = client_message(Some(&mut client), &big, 0);
    let base = live();
    let ((seen, _), peak) = peak_during(|| feed(&mut server, &wire, &[]));
    assert_eq!(seen, std::slice::from_ref(&big));
    drop(seen);
    let kept = live() - base;
    assert!(kept < 96 << 10, "one spare inflate state at most: {kept}");
    assert!(!server.is_inflating());
    assert_eq!(record, 0, "no heap per connection while idle");
    // Another connection's message takes the spare: nothing more is held.
    let mut other = Connection::new(Role::Server, Config::default());
    other.enable_deflate(params, None);
    let (seen, _) = feed(&mut other, &wire, &[]);
    assert_eq!(seen, std::slice::from_ref(&big));
    drop(seen);
    assert_eq!(live() - base, kept, "the spare was reused");
    println!(
        "no context takeover: {record} B per connection while idle, peak {peak} B while reading \
         a 16 KiB message, {kept} B kept per thread for the next one"
    );

    let base = live();
    let mut shared = SharedDeflaters::new(1);
    let mut out = Vec::new();
    shared.get(15).compress(big.parts().1, &mut out);
    drop(out);
    println!("shared compressor (window 15, level 1): {} B per worker", live() - base);
}
