//! The permessage-deflate codec (RFC 7692 section 7.2): whole messages compressed into frame
//! payloads, and compressed payloads inflated into a message buffer in bounded steps.
//!
//! The inflate window: zlib-rs allocates a 32 KiB window whatever window size it is given, so
//! a back-reference fails only if it reaches before the start of the stream (the message,
//! without context takeover) or more than 32 KiB back. A client that compresses with a larger
//! window than it agreed to is therefore not caught below 32 KiB, and a smaller agreed window
//! saves the server no memory. The upside: whether a reference is valid depends only on the
//! bytes, never on how reads cut them, so the events are the same at any read sizes.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::Error;
use crate::frame::{self, OpCode};
use crate::mask;
use crate::message::Assembly;

/// The empty stored block's LEN/NLEN that ends every compressed message on the wire once its
/// sender removed it (section 7.2.1), and that the receiver puts back (section 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The smallest output region an inflate call gets; regions double with the message up to
/// [`MAX_REGION`], so small messages zero little memory and large ones take few calls.
const MIN_REGION: usize = 512;

/// The largest output region one inflate call gets.
const MAX_REGION: usize = 64 << 10;

/// Spare inflate states kept per thread and window size.
const SPARE_MAX: usize = 4;

thread_local! {
    /// Inflate states of finished messages, reset, by window bits - 9, for the next compressed
    /// message read on this thread. A peer that keeps no context needs one (about 48 KiB) only
    /// while its message is read: making and freeing one per message cost about 1 µs per
    /// message, and a server's allocator interleaving those large short-lived blocks with its
    /// connections' small long-lived ones measured 40 bytes more heap per idle connection (a
    /// server holding 10,000 after one compressed message each). Reuse changes no behaviour: a
    /// reset state is a new one. The only state the core keeps outside its arguments besides
    /// the masking-key generator, and it is per thread, like a server's workers.
    static SPARE: RefCell<Spares> = const { RefCell::new([const { Vec::new() }; 7]) };
}

/// Spare states by window bits - 9. Boxed: a state moves between a connection's inflater and
/// this list as a pointer, never by value.
#[allow(clippy::vec_box)]
type Spares = [Vec<Box<Decompress>>; 7];

/// A reset inflate state for `bits` (9..=15), from this thread's spares if it has one.
fn take_spare(bits: u8) -> Box<Decompress> {
    let spare = SPARE
        .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s[usize::from(bits - 9)].pop()))
        .ok()
        .flatten();
    spare.unwrap_or_else(|| Box::new(Decompress::new_with_window_bits(false, bits)))
}

/// Keeps `state` for the next message on this thread, reset, unless enough are kept.
fn give_back(bits: u8, mut state: Box<Decompress>) {
    let _ = SPARE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            let spares = &mut s[usize::from(bits - 9)];
            if spares.len() < SPARE_MAX {
                state.reset(false);
                spares.push(state);
            }
        }
    });
}

/// A permessage-deflate compressor for one direction: one whole message in, one frame payload
/// out (without the `00 00 ff ff` tail).
///
/// With context takeover it keeps the history of what it compressed (the peer's inflater keeps
/// the same), so it must compress exactly the messages sent to one connection, in order. Without
/// it (`no_context_takeover`), every message starts fresh, and one `Deflater` can compress for
/// any number of connections, including once per publish for all subscribers whose server side
/// keeps no context.
pub struct Deflater {
    inner: Compress,
    window_bits: u8,
    no_context_takeover: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .finish()
    }
}

impl Deflater {
    /// A compressor with a window of `window_bits` (8..=15, clamped; 8 runs as zlib's 9, whose
    /// matches stay within 256 bytes), keeping context between messages unless
    /// `no_context_takeover`, at zlib `level` 0..=9 (clamped).
    pub fn new(window_bits: u8, no_context_takeover: bool, level: u32) -> Self {
        let window_bits = window_bits.clamp(8, 15);
        let level = Compression::new(level.min(9));
        Deflater {
            inner: Compress::new_with_window_bits(level, false, window_bits.max(9)),
            window_bits,
            no_context_takeover,
        }
    }

    /// The window this compressor honours (8..=15).
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Whether every message starts with a fresh context.
    pub fn no_context_takeover(&self) -> bool {
        self.no_context_takeover
    }

    /// Forgets the context: the next message starts fresh, as after a message without context
    /// takeover. Always valid for the peer, whose window is then never referred to; for a
    /// sender that compressed a message and did not send it (dropped for a slow consumer), so
    /// that no later message refers to bytes the peer never got.
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// Appends `payload`, compressed, to `out`: the payload of a frame with RSV1 set
    /// (section 7.2.1: DEFLATE, a sync flush, the final `00 00 ff ff` removed). An empty payload
    /// becomes the single byte `00` (section 7.2.3.6).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if payload.is_empty() {
            // The single byte is an empty stored block once the peer appends the tail: it
            // changes neither side's window. Asking zlib instead fails on a second empty
            // message in a row: a sync flush with no input since the last one makes no
            // progress (Z_BUF_ERROR) and writes nothing, not even the empty block.
            out.push(0);
            return;
        }
        let start = out.len();
        let mut input = payload;
        loop {
            out.reserve(input.len() / 2 + 64);
            let before = self.inner.total_in();
            let status = self.inner.compress_vec(input, out, FlushCompress::Sync);
            // zlib's deflate fails only on a corrupt state or an invalid flush argument, neither
            // of which data can cause.
            status.expect("deflate of in-memory data does not fail");
            input = &input[(self.inner.total_in() - before) as usize..];
            // The sync flush is complete once a call returns with output space left.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        debug_assert!(out[start..].ends_with(&TAIL), "a sync flush ends with an empty block");
        out.truncate(out.len() - TAIL.len());
        if self.no_context_takeover {
            self.inner.reset();
        }
    }

    /// Appends one whole frame carrying `payload` compressed: FIN, RSV1, `opcode` (text or
    /// binary), masked with `mask` if given (a client's frame).
    pub fn write_frame(
        &mut self,
        opcode: OpCode,
        mask: Option<[u8; 4]>,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        // Compress behind room for the longest header, then close the gap: the header's size
        // depends on the compressed length.
        let at = out.len();
        out.resize(at + frame::MAX_HEADER_LEN, 0);
        self.compress(payload, out);
        let len = out.len() - at - frame::MAX_HEADER_LEN;
        let header = frame::encode_header(true, opcode, mask, len as u64).with_rsv1();
        let header = header.as_bytes();
        out.copy_within(at + frame::MAX_HEADER_LEN.., at + header.len());
        out.truncate(at + header.len() + len);
        out[at..at + header.len()].copy_from_slice(header);
        if let Some(key) = mask {
            mask::apply(&mut out[at + header.len()..], key, 0);
        }
    }
}

/// One no-context-takeover compressor per window size in use, made on first use: what a worker
/// needs to compress for every connection whose server side keeps no context
/// ([`super::DeflateMode::Shared`]). Most clients set no window, so usually only the 15-bit one
/// exists.
#[derive(Debug, Default)]
pub struct SharedDeflaters {
    level: u32,
    /// Index: window bits - 8.
    by_window: [Option<Box<Deflater>>; 8],
}

impl SharedDeflaters {
    /// An empty set compressing at zlib `level` (0..=9).
    pub fn new(level: u32) -> Self {
        SharedDeflaters { level, by_window: Default::default() }
    }

    /// The compressor for `window_bits` (8..=15, clamped), made if needed.
    pub fn get(&mut self, window_bits: u8) -> &mut Deflater {
        let bits = window_bits.clamp(8, 15);
        let level = self.level;
        self.by_window[usize::from(bits - 8)]
            .get_or_insert_with(|| Box::new(Deflater::new(bits, true, level)))
    }
}

/// The receive side: inflates the compressed messages of one connection into its message
/// buffer. Holds no zlib state between messages unless the peer keeps context.
pub(crate) struct Inflater {
    /// `None` until a compressed message arrives; dropped after each message without takeover.
    state: Option<Box<Decompress>>,
    window_bits: u8,
    takeover: bool,
    /// The DEFLATE stream ended (a block with BFINAL set): nothing more may follow in this
    /// message, and the next one starts a new stream.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("allocated", &self.state.is_some())
            .field("window_bits", &self.window_bits)
            .field("takeover", &self.takeover)
            .finish()
    }
}

impl Inflater {
    /// An inflater for a peer compressing within `window_bits` (8..=15; see the module docs for
    /// what zlib-rs makes of it), keeping context unless told otherwise.
    pub(crate) fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        Inflater {
            state: None,
            window_bits: window_bits.clamp(9, 15),
            takeover: !no_context_takeover,
            ended: false,
        }
    }

    /// The message's last frame has been fed: puts the tail back, inflates it, and lets go of
    /// what the next message does not need.
    pub(crate) fn finish_message(&mut self, out: &mut Assembly, limit: usize) -> Result<(), Error> {
        let result = if self.ended { Ok(()) } else { self.feed(&TAIL, out, limit) };
        if !self.takeover || self.ended {
            self.release();
        }
        result
    }

    /// Lets go of the state (the message ended without context, or the connection failed or
    /// closed): it goes to this thread's spares.
    pub(crate) fn release(&mut self) {
        if let Some(state) = self.state.take() {
            give_back(self.window_bits, state);
        }
        self.ended = false;
    }

    /// Whether zlib state is allocated (a message is being read, or the peer keeps context).
    pub(crate) fn is_allocated(&self) -> bool {
        self.state.is_some()
    }

    /// Inflates a piece of a compressed message (already unmasked) into `out`, which may hold
    /// no more than `limit` bytes, in output regions until the piece is used up.
    pub(crate) fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Assembly,
        limit: usize,
    ) -> Result<(), Error> {
        if self.ended {
            // Data after the final block of this message.
            return if input.is_empty() { Ok(()) } else { Err(Error::BadCompressedData) };
        }
        let bits = self.window_bits;
        let state = self.state.get_or_insert_with(|| take_spare(bits));
        loop {
            let len = out.len();
            // Regions stop at the limit plus one byte (to tell "at the limit" from "over it").
            let region = (limit - len).saturating_add(1).min(len.clamp(MIN_REGION, MAX_REGION));
            let before_in = state.total_in();
            let mut wrote = 0;
            // New bytes are checked (UTF-8) before a zlib error counts: they came first.
            let result = out.extend_with(region, limit.saturating_add(1), |buf| {
                let before_out = state.total_out();
                let result = state.decompress(input, buf, FlushDecompress::None);
                wrote = (state.total_out() - before_out) as usize;
                (wrote, result)
            })?;
            input = &input[(state.total_in() - before_in) as usize..];
            let status = result.map_err(|_| Error::BadCompressedData)?;
            if out.len() > limit {
                return Err(Error::MessageTooLarge);
            }
            match status {
                Status::StreamEnd => {
                    self.ended = true;
                    return if input.is_empty() { Ok(()) } else { Err(Error::BadCompressedData) };
                }
                // The region filled up: there may be more to write (a long match, or input).
                _ if wrote == region => {}
                _ if input.is_empty() => return Ok(()),
                // Room left and input left, yet no progress: zlib never does this on valid data.
                _ => return Err(Error::BadCompressedData),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

    fn inflate_all(
        inflater: &mut Inflater,
        payload: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, Error> {
        let mut asm = Assembly::default();
        asm.open(Kind::Binary);
        inflater.feed(payload, &mut asm, limit)?;
        inflater.finish_message(&mut asm, limit)?;
        asm.finish()?;
        Ok(asm.message(Kind::Binary).as_bytes().to_vec())
    }

    #[test]
    fn rfc_examples() {
        // RFC 7692 section 7.2.3.1: "Hello" compressed, and the same again with context
        // takeover (7.2.3.2) shrinks to a back-reference.
        let mut d = Deflater::new(15, false, 6);
        let mut out = Vec::new();
        d.compress(b"Hello", &mut out);
        let mut i = Inflater::new(15, false);
        assert_eq!(inflate_all(&mut i, &out, 100).unwrap(), b"Hello");
        let mut again = Vec::new();
        d.compress(b"Hello", &mut again);
        assert!(again.len() < out.len(), "{again:02x?} vs {out:02x?}");
        assert_eq!(inflate_all(&mut i, &again, 100).unwrap(), b"Hello");
        // The RFC's own bytes inflate, with and without context.
        let rfc = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_all(&mut Inflater::new(15, true), &rfc, 100).unwrap(), b"Hello");
        // No limit at all (a `max_message_size` of u64::MAX) must not overflow.
        assert_eq!(inflate_all(&mut Inflater::new(15, true), &rfc, usize::MAX).unwrap(), b"Hello");
        let mut i = Inflater::new(15, false);
        assert_eq!(inflate_all(&mut i, &rfc, 100).unwrap(), b"Hello");
        assert_eq!(inflate_all(&mut i, &[0xf2, 0x00, 0x11, 0x00, 0x00], 100).unwrap(), b"Hello");
        // 7.2.3.3: a stored (uncompressed) block; 7.2.3.6: the empty message.
        let stored = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
        assert_eq!(inflate_all(&mut Inflater::new(15, true), &stored, 100).unwrap(), b"Hello");
        let mut empty = Vec::new();
        Deflater::new(15, true, 1).compress(b"", &mut empty);
        assert_eq!(empty, [0x00]);
        assert_eq!(inflate_all(&mut Inflater::new(15, true), &empty, 100).unwrap(), b"");
        // 7.2.3.5: a final block (BFINAL set), as some senders flush.
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_all(&mut Inflater::new(15, false), &bfinal, 100).unwrap(), b"Hello");
    }

    #[test]
    fn empty_messages_in_a_row_keep_the_stream_whole() {
        // With context takeover, a second empty message used to find zlib with nothing to
        // flush: no bytes at all, and the tail cut from what `out` already held.
        for window in [9, 15] {
            let mut d = Deflater::new(window, false, 6);
            let mut i = Inflater::new(window, false);
            let mut out = b"kept".to_vec();
            for msg in [&b""[..], b"", b"Hello", b"", b"Hello"] {
                let start = out.len();
                d.compress(msg, &mut out);
                assert_eq!(inflate_all(&mut i, &out[start..], 100).unwrap(), msg);
            }
            assert!(out.starts_with(b"kept"));
        }
    }

    #[test]
    fn without_takeover_every_message_starts_fresh() {
        let mut d = Deflater::new(15, true, 6);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        d.compress(b"Hello, Hello", &mut a);
        d.compress(b"Hello, Hello", &mut b);
        assert_eq!(a, b);
        let mut i = Inflater::new(15, true);
        assert_eq!(inflate_all(&mut i, &b, 100).unwrap(), b"Hello, Hello");
        assert!(!i.is_allocated(), "no zlib state between messages without takeover");
    }

    #[test]
    fn corrupt_and_trailing_data_fail() {
        let mut i = Inflater::new(15, true);
        // BTYPE 11 is reserved.
        assert_eq!(inflate_all(&mut i, &[0x07, 0x00], 100), Err(Error::BadCompressedData));
        // Data after a final block.
        let bfinal_then_more = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x01];
        assert_eq!(inflate_all(&mut i, &bfinal_then_more, 100), Err(Error::BadCompressedData));
        // A reference before the start of the stream.
        let mut d = Deflater::new(15, false, 6);
        let mut first = Vec::new();
        d.compress(b"abcdefghijabcdefghij", &mut first);
        let mut second = Vec::new();
        d.compress(b"abcdefghij", &mut second);
        assert_eq!(
            inflate_all(&mut Inflater::new(15, true), &second, 100),
            Err(Error::BadCompressedData)
        );
    }

    #[test]
    fn a_bomb_stops_one_byte_past_the_limit() {
        let mut d = Deflater::new(15, true, 9);
        let mut bomb = Vec::new();
        d.compress(&vec![0u8; 4 << 20], &mut bomb);
        assert!(bomb.len() < 8 << 10, "{}", bomb.len());
        let mut asm = Assembly::default();
        asm.open(Kind::Binary);
        let mut i = Inflater::new(15, true);
        let limit = 100_000;
        assert_eq!(i.feed(&bomb, &mut asm, limit), Err(Error::MessageTooLarge));
        assert_eq!(asm.len(), limit + 1);
        // Exactly at the limit is fine.
        let mut at_limit = Vec::new();
        d.compress(&vec![7u8; limit], &mut at_limit);
        let mut i = Inflater::new(15, true);
        assert_eq!(inflate_all(&mut i, &at_limit, limit).unwrap().len(), limit);
    }

    #[test]
    fn window_8_is_served_within_256_bytes() {
        // Random bytes repeated once at distance d: the copy shrinks to a back-reference only
        // if the compressor reaches d bytes back. Served as "8" (zlib's 9-bit window), it
        // reaches 250 and no further, inside the 256 bytes an 8-bit inflater holds.
        let mut x = 1u32;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect()
        };
        for d in [100, 200, 250, 251, 256, 300, 500] {
            let mut data = random(d);
            data.extend_from_within(..);
            let mut out = Vec::new();
            let mut deflater = Deflater::new(8, true, 9);
            assert_eq!(deflater.window_bits(), 8);
            deflater.compress(&data, &mut out);
            let matched = out.len() < d + d / 2;
            assert_eq!(matched, d <= 250, "distance {d}: {} bytes", out.len());
            assert_eq!(inflate_all(&mut Inflater::new(8, true), &out, 1000).unwrap(), data);
        }
    }
}
