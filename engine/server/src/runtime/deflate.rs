//! permessage-deflate (RFC 7692) as the server serves it: what an upgrade agrees to within the
//! worker's memory budget, how a connection's sends are compressed, and fan-out frames
//! compressed once per worker.
//!
//! Receiving is the protocol core's: `Connection::enable_deflate` inflates compressed messages
//! within the message size limit (1009 past it). Sending is the worker's, since it writes frames
//! itself, in one of two ways per connection:
//!
//! - **Shared**: the server side keeps no context (shared mode, or a client that asked for
//!   `server_no_context_takeover`). The worker's [`SharedDeflaters`] compress for every such
//!   connection, and a publish or broadcast is compressed once per worker and window for all of
//!   them, on the first such subscriber of that publish: a frame compressed with a fresh context
//!   and a window of `w` bits is valid for every peer whose window is at least `w`.
//! - **Own**: a dedicated compressor that keeps context, so every message is compressed for that
//!   connection alone, in the order it is queued (counted in `compressed_per_conn`). A
//!   conflated publish waits in the stage uncompressed and is compressed when it leaves it: a
//!   staged frame may be replaced by a newer one, and a compressed frame that is never sent
//!   would leave the peer's window without the bytes later messages refer to. For the same
//!   reason, a message compressed and then not queued (the slow-consumer policy dropped it)
//!   resets the compressor.
//!
//! Messages under the threshold go uncompressed (the extension allows any message so), and so
//! does a shared-compressed message that did not shrink.
//!
//! Memory: per worker, the state connections hold between messages (dedicated compressors, and
//! the inflaters of clients that keep context) is counted against a budget at the upgrade and
//! given back when the connection's slot is released. An upgrade whose agreement would pass the
//! budget is answered without the extension (the connection is served uncompressed, never
//! refused). The state lives in a side table keyed by slot, not in the connection, so that a
//! connection without it (compression off, or shared) pays one byte.

use std::collections::HashMap;

use bytes::Bytes;
use ringside_proto::deflate::{DeflateConfig, Deflater, Negotiated, SharedDeflaters};
use ringside_proto::frame::{self, DecodeRules, OpCode};
use ringside_proto::Role;

use super::conn::{Conn, Phase};
use super::handle::{Counts, Frame, Local, WebSocket};
use crate::api::SendStatus;
use crate::config::{Compression, Settings};

/// zlib level of the server's sends: 1, the fast one. Level 6 measured 4-6x the CPU for 16 KiB
/// JSON messages 40% smaller (docs/tuning.md).
const LEVEL: u32 = 1;

/// Heap a dedicated compressor holds, windows 9 to 15 (zlib-rs, the same at levels 1 and 6;
/// `cargo test -p ringside-proto --test deflate_memory -- --nocapture`).
const COMPRESSOR_HEAP: [usize; 7] = [251_008, 253_056, 257_152, 265_344, 281_728, 314_496, 380_032];

/// Heap of an inflater kept between messages for a client that keeps context, at any window
/// (zlib-rs inflates with a 32 KiB window whatever was agreed).
pub(crate) const INFLATER_BYTES: usize = 47_872;

/// A scratch buffer that grew past this (a large message) is not kept for the next one.
const SCRATCH_KEEP: usize = 64 << 10;

/// Bytes a dedicated compressor of `bits` holds (a window of 8 is served by zlib's 9).
pub(crate) fn compressor_bytes(bits: u8) -> usize {
    COMPRESSOR_HEAP[usize::from(bits.clamp(9, 15) - 9)] + std::mem::size_of::<Deflater>()
}

/// What the handshake offers for `settings`: `None` when compression is off.
pub(crate) fn handshake_config(settings: &Settings) -> Option<DeflateConfig> {
    match settings.deflate {
        Compression::Off => None,
        Compression::Shared => Some(DeflateConfig::shared()),
        Compression::Dedicated => Some(DeflateConfig::dedicated(settings.deflate_window)),
    }
}

/// How one connection's sends are compressed: one byte in its I/O state. Zero: the extension
/// is not in use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendDeflate(u8);

impl SendDeflate {
    /// The low four bits hold the window, this bit says the worker's side table holds a
    /// compressor for the connection.
    const OWN: u8 = 0x10;

    fn new(window_bits: u8, own: bool) -> Self {
        SendDeflate(window_bits.clamp(8, 15) | if own { Self::OWN } else { 0 })
    }

    pub(crate) fn is_on(self) -> bool {
        self.0 != 0
    }

    fn window(self) -> u8 {
        self.0 & 0x0f
    }

    fn own(self) -> bool {
        self.0 & Self::OWN != 0
    }
}

/// What a connection holds between messages, counted against the budget.
#[derive(Debug)]
struct Held {
    /// Its own compressor (context takeover), if it has one.
    deflater: Option<Box<Deflater>>,
    /// Bytes counted: the compressor, and the inflater if the client keeps context.
    bytes: usize,
}

/// A worker's permessage-deflate state.
#[derive(Debug)]
pub(crate) struct WorkerDeflate {
    mode: Compression,
    threshold: usize,
    budget: usize,
    /// Bytes of the budget held by open connections.
    in_use: usize,
    /// Compressors for connections whose server side keeps no context, one per window in use.
    shared: SharedDeflaters,
    /// What connections hold, by slot.
    held: HashMap<usize, Held>,
    scratch: Vec<u8>,
}

impl WorkerDeflate {
    pub(crate) fn new(settings: &Settings) -> Self {
        WorkerDeflate {
            mode: settings.deflate,
            threshold: settings.deflate_threshold,
            budget: settings.deflate_memory,
            in_use: 0,
            shared: SharedDeflaters::new(LEVEL),
            held: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Bytes of the budget in use.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use
    }

    /// Keeps the agreement in `negotiated` if what the connection would hold between messages
    /// fits the budget, and returns how connection `slot` sends; otherwise clears it (the 101
    /// then names no extension: RFC 6455 9.1 lets a server decline any offer) and counts it.
    pub(crate) fn admit(
        &mut self,
        slot: usize,
        negotiated: &mut Option<Negotiated>,
        counts: &mut Counts,
    ) -> SendDeflate {
        let Some(n) = negotiated.as_ref() else { return SendDeflate::default() };
        let p = n.params;
        let own = self.mode == Compression::Dedicated && !p.server_no_context_takeover;
        let mut bytes = if own { compressor_bytes(p.server_max_window_bits) } else { 0 };
        if !p.client_no_context_takeover {
            bytes += INFLATER_BYTES;
        }
        if bytes > 0 {
            if self.in_use + bytes > self.budget {
                *negotiated = None;
                counts.deflate_declined += 1;
                return SendDeflate::default();
            }
            let deflater = own.then(|| Box::new(p.deflater(Role::Server, LEVEL)));
            self.in_use += bytes;
            if let Some(old) = self.held.insert(slot, Held { deflater, bytes }) {
                // A slot is reused only after its release, which removed its entry.
                debug_assert!(false, "slot {slot} still held {} bytes", old.bytes);
                self.in_use -= old.bytes;
            }
        }
        SendDeflate::new(p.server_max_window_bits, own)
    }

    /// Gives back what connection `slot` held (its slot is released).
    pub(crate) fn release(&mut self, slot: usize) {
        if let Some(held) = self.held.remove(&slot) {
            self.in_use -= held.bytes;
        }
    }

    /// The compressor of connection `slot` if it has its own.
    fn own(&mut self, slot: usize, send: SendDeflate) -> Option<&mut Deflater> {
        if !send.own() {
            return None;
        }
        self.held.get_mut(&slot).and_then(|h| h.deflater.as_deref_mut())
    }

    /// Compresses `payload` for connection `slot` into `out`; `false` (and `out` empty) when it
    /// goes uncompressed: under the threshold, or shared-compressed without shrinking.
    fn compress(
        &mut self,
        slot: usize,
        send: SendDeflate,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        if !send.is_on() || payload.len() < self.threshold {
            return false;
        }
        if let Some(own) = self.own(slot, send) {
            // Context was taken: the message must be sent as compressed, whatever its size.
            own.compress(payload, out);
            return true;
        }
        self.shared.get(send.window()).compress(payload, out);
        if out.len() >= payload.len() {
            out.clear();
            return false;
        }
        true
    }

    /// A message compressed for connection `slot` was not queued: its compressor forgets the
    /// context, so that no later message refers to bytes the peer never got.
    fn not_sent(&mut self, slot: usize, send: SendDeflate) {
        if let Some(own) = self.own(slot, send) {
            own.reset();
        }
    }

    /// `plain` (a whole unmasked frame) compressed for connection `slot`, as a new frame; `None`
    /// when it goes as it is. Counts a compression made for one connection.
    pub(crate) fn compress_frame(
        &mut self,
        slot: usize,
        send: SendDeflate,
        plain: &Bytes,
        counts: &mut Counts,
    ) -> Option<Bytes> {
        if !send.own() {
            return send.is_on().then(|| self.shared_frame(send.window(), plain)).flatten();
        }
        let (opcode, at) = self.compressible(plain)?;
        let own = self.own(slot, send)?;
        let mut out = Vec::with_capacity(plain.len() / 2 + frame::MAX_HEADER_LEN + 16);
        own.write_frame(opcode, None, &plain[at..], &mut out);
        counts.compressed_per_conn += 1;
        Some(Bytes::from(out))
    }

    /// `plain` compressed with a fresh context and a window of `bits`, if that makes it smaller.
    fn shared_frame(&mut self, bits: u8, plain: &Bytes) -> Option<Bytes> {
        let (opcode, at) = self.compressible(plain)?;
        let mut out = Vec::with_capacity(plain.len() / 2 + frame::MAX_HEADER_LEN + 16);
        self.shared.get(bits).write_frame(opcode, None, &plain[at..], &mut out);
        (out.len() < plain.len()).then(|| Bytes::from(out))
    }

    /// The opcode and payload offset of `frame` if it is one whole data message at or over the
    /// threshold, with no RSV bit: what may be compressed.
    fn compressible(&self, frame: &[u8]) -> Option<(OpCode, usize)> {
        let rules = DecodeRules { expect_masked: false, max_frame_size: u64::MAX };
        let (h, at) = frame::decode_header(frame, rules).ok()??;
        let whole = h.fin && (at as u64).checked_add(h.len) == Some(frame.len() as u64);
        let data = matches!(h.opcode, OpCode::Text | OpCode::Binary);
        (whole && data && frame.len() - at >= self.threshold).then_some((h.opcode, at))
    }
}

/// A frame on its way to many connections of this worker (a publish, a broadcast): the plain
/// frame, and the compressed ones for connections whose server side keeps no context, made on
/// the first connection that needs one.
#[derive(Debug)]
pub(crate) struct Fanned<'a> {
    plain: &'a Bytes,
    /// Compressed with a fresh context, by window bits - 8. `Some(None)`: tried, stays plain.
    by_window: [Option<Option<Bytes>>; 8],
}

impl<'a> Fanned<'a> {
    pub(crate) fn new(plain: &'a Bytes) -> Self {
        Fanned { plain, by_window: Default::default() }
    }

    /// The frame for a connection that sends as `send` says, unless it compresses per
    /// connection (`None`: its own compressor takes the plain frame when it is queued, see
    /// [`WorkerDeflate::compress_frame`]).
    pub(crate) fn for_shared(
        &mut self,
        send: SendDeflate,
        deflate: &mut WorkerDeflate,
        counts: &mut Counts,
    ) -> Option<&Bytes> {
        if !send.is_on() {
            return Some(self.plain);
        }
        if send.own() {
            return None;
        }
        let bits = send.window();
        // Any frame made with a window no larger than this connection's is valid for it.
        let i = match (0..=usize::from(bits - 8)).find(|&i| self.by_window[i].is_some()) {
            Some(i) => i,
            None => {
                let i = usize::from(bits - 8);
                let made = deflate.shared_frame(bits, self.plain);
                counts.compressed_shared += u64::from(made.is_some());
                self.by_window[i] = Some(made);
                i
            }
        };
        Some(self.by_window[i].as_ref().and_then(Option::as_ref).unwrap_or(self.plain))
    }
}

/// Queues an encoded frame (from [`crate::Sender`]) for connection `slot`, compressed as its
/// agreement says.
pub(crate) fn queue_frame<C>(
    local: &mut Local,
    slot: usize,
    conn: &mut Conn<C>,
    frame: &Bytes,
) -> SendStatus {
    let Phase::Open(o) = &mut conn.phase else { return SendStatus::Closed };
    let send = conn.io.deflate;
    let compressed = if send.is_on() {
        local.deflate.compress_frame(slot, send, frame, &mut local.counts)
    } else {
        None
    };
    let status = local.queue(
        slot,
        &mut conn.io,
        &mut o.app.close_request,
        Frame::Shared(compressed.as_ref().unwrap_or(frame)),
    );
    if compressed.is_some() && !status.is_queued() {
        local.deflate.not_sent(slot, send);
    }
    status
}

/// Moves a connection's conflated publishes into its queue (it caught up). A connection with
/// its own compressor staged them plain: they are compressed now, in the order they leave.
pub(crate) fn unstage<C>(slot: usize, conn: &mut Conn<C>, local: &mut Local) {
    let send = conn.io.deflate;
    if !send.own() {
        conn.io.queue.unstage(&mut local.pool, usize::MAX);
        return;
    }
    let deflate = &mut local.deflate;
    let counts = &mut local.counts;
    conn.io.queue.unstage_with(&mut local.pool, usize::MAX, |plain| {
        deflate.compress_frame(slot, send, &plain, counts).unwrap_or(plain)
    });
}

impl<C> WebSocket<'_, C> {
    /// Queues a data message on a connection that agreed to permessage-deflate: compressed
    /// unless it is under the threshold (or did not shrink with a shared compressor).
    pub(crate) fn send_deflated(&mut self, opcode: OpCode, payload: &[u8]) -> SendStatus {
        let local = &mut *self.local;
        let send = self.io.deflate;
        let mut out = std::mem::take(&mut local.deflate.scratch);
        out.clear();
        let compressed = local.deflate.compress(self.slot, send, payload, &mut out);
        let status = if compressed {
            let header = frame::encode_header(true, opcode, None, out.len() as u64).with_rsv1();
            let frame = Frame::Parts(header.as_bytes(), &out);
            local.queue(self.slot, self.io, &mut self.app.close_request, frame)
        } else {
            let header = frame::encode_header(true, opcode, None, payload.len() as u64);
            let frame = Frame::Parts(header.as_bytes(), payload);
            local.queue(self.slot, self.io, &mut self.app.close_request, frame)
        };
        if compressed && !status.is_queued() {
            local.deflate.not_sent(self.slot, send);
        }
        if out.capacity() <= SCRATCH_KEEP {
            local.deflate.scratch = out;
        }
        if status == SendStatus::Closing {
            self.open = false;
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_deflate_is_one_byte() {
        assert_eq!(std::mem::size_of::<SendDeflate>(), 1);
        let s = SendDeflate::new(15, true);
        assert!(s.is_on() && s.own() && s.window() == 15);
        let s = SendDeflate::new(8, false);
        assert!(s.is_on() && !s.own() && s.window() == 8);
        assert!(!SendDeflate::default().is_on());
    }

    #[test]
    fn compressor_bytes_grow_with_the_window() {
        assert!(compressor_bytes(8) == compressor_bytes(9));
        for bits in 9..15 {
            assert!(compressor_bytes(bits) < compressor_bytes(bits + 1));
        }
        assert!(compressor_bytes(15) > 370 << 10 && compressor_bytes(15) < 380 << 10);
    }
}
