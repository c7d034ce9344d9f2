//! The incremental reply parser: bytes from any number of reads in, whole messages and control
//! frames out. A header may be split across reads and one read may hold many frames.
//!
//! Headers are decoded (and every RFC 6455 receiver rule checked) by `ringside-proto`. Payloads
//! are skipped without a copy unless the caller asks for them ("capture"): echo only needs the
//! length of a reply, fan-out needs its text. A captured payload that is whole inside the read is
//! handed out in place; only one split across reads is copied. Control frames are always
//! captured (at most 125 bytes). Fragmented messages come out once, at their last frame.
//!
//! With permessage-deflate ([`FrameReader::deflate`]) RSV1 may mark a message compressed: it
//! comes out whole and still compressed (`compressed`), for the driver to inflate.
//!
//! It does not validate UTF-8 or run the close handshake: that is the driver's business.

use ringside_proto::frame::{
    decode_header, decode_header_deflate, DecodeRules, Header, MAX_HEADER_LEN,
};
use ringside_proto::{mask, Error, OpCode};

/// A whole data message (opcode Text or Binary, the first frame's), or a control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub opcode: OpCode,
    /// Payload bytes (of all the message's frames).
    pub len: u64,
    /// The unmasked payload: always for control frames and compressed messages, for data when
    /// capturing.
    pub payload: Option<&'a [u8]>,
    /// The message is compressed (permessage-deflate: its first frame had RSV1).
    pub compressed: bool,
    /// Payload bytes on the wire (`len` is the message's length once inflated).
    pub wire_len: u64,
}

/// Per-connection parser state: about 130 bytes, no heap until a captured payload is split.
#[derive(Debug, Default)]
pub struct FrameReader {
    head: [u8; MAX_HEADER_LEN],
    head_len: u8,
    frame: Option<Current>,
    /// The open data message: its opcode, bytes so far, and whether it is compressed.
    message: Option<(OpCode, u64, bool)>,
    /// permessage-deflate was agreed: RSV1 is allowed on a message's first frame.
    pub deflate: bool,
    /// Captured data payload split across reads or frames.
    data: Vec<u8>,
    /// Control payload split across reads.
    control: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    header: Header,
    /// Payload bytes of this frame consumed so far.
    done: u64,
    capture: bool,
}

impl FrameReader {
    /// Parses `buf` (one read's worth; masked payloads are unmasked in place), calling `on` for
    /// each message or control frame completed. `on` returns false to stop: the rest of `buf` is
    /// then dropped and the reader must not be fed again (the connection is being failed).
    ///
    /// Returns Ok(false) if `on` stopped it.
    pub fn feed(
        &mut self,
        buf: &mut [u8],
        rules: DecodeRules,
        capture_data: bool,
        mut on: impl FnMut(Frame<'_>) -> bool,
    ) -> Result<bool, Error> {
        let mut at = 0;
        let decode = if self.deflate { decode_header_deflate } else { decode_header };
        while at < buf.len() {
            if self.frame.is_none() && self.head_len == 0 && self.message.is_none() {
                // The common case: a whole unfragmented frame in this read. It needs no state,
                // so it is checked before `self.frame.take()`: going through that and
                // `self.header()` first measured ~10% fewer fan-out deliveries per second on one
                // core. A frame that is not whole here has its header decoded again below (only
                // frames split across reads).
                if let Some((h, used)) = decode(&buf[at..], rules)? {
                    let start = at + used;
                    if h.fin
                        && h.opcode != OpCode::Continuation
                        && h.len <= (buf.len() - start) as u64
                    {
                        let end = start + h.len as usize;
                        at = end;
                        let capture = h.opcode.is_control() || capture_data || h.rsv1;
                        let payload = &mut buf[start..end];
                        if let (true, Some(key)) = (capture, h.mask) {
                            mask::apply(payload, key, 0);
                        }
                        let frame = Frame {
                            opcode: h.opcode,
                            len: h.len,
                            payload: capture.then_some(&*payload),
                            compressed: h.rsv1,
                            wire_len: h.len,
                        };
                        if !on(frame) {
                            return Ok(false);
                        }
                        continue;
                    }
                }
            }
            let Some(mut cur) = self.frame.take() else {
                let Some((header, used)) = self.header(&buf[at..], rules)? else {
                    return Ok(true);
                };
                at += used;
                self.start(header, capture_data)?;
                if header.len == 0 && !self.finish(header, capture_data, None, &mut on) {
                    return Ok(false);
                }
                continue;
            };
            let h = cur.header;
            let take = (h.len - cur.done).min((buf.len() - at) as u64) as usize;
            let chunk = &mut buf[at..at + take];
            at += take;
            if !cur.capture {
                cur.done += take as u64;
                if cur.done < h.len {
                    self.frame = Some(cur);
                } else if !self.finish(h, false, None, &mut on) {
                    return Ok(false);
                }
                continue;
            }
            if let Some(key) = h.mask {
                mask::apply(chunk, key, cur.done as usize);
            }
            let control = h.opcode.is_control();
            let store = if control { &mut self.control } else { &mut self.data };
            if cur.done == 0 && take as u64 == h.len && store.is_empty() && (control || h.fin) {
                // The common case: the whole payload is in this read, no copy.
                if !self.finish(h, true, Some(chunk), &mut on) {
                    return Ok(false);
                }
                continue;
            }
            store.extend_from_slice(chunk);
            cur.done += take as u64;
            if cur.done < h.len {
                self.frame = Some(cur);
            } else if !self.finish(h, true, None, &mut on) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Decodes the next header from the saved partial header and `buf`; returns the header and
    /// how many bytes of `buf` it used, or None (all of `buf` saved) if it is still incomplete.
    fn header(&mut self, buf: &[u8], rules: DecodeRules) -> Result<Option<(Header, usize)>, Error> {
        let decode = if self.deflate { decode_header_deflate } else { decode_header };
        if self.head_len == 0 {
            if let Some(found) = decode(buf, rules)? {
                return Ok(Some(found));
            }
            // Incomplete headers are shorter than MAX_HEADER_LEN, so this fits.
            self.head[..buf.len()].copy_from_slice(buf);
            self.head_len = buf.len() as u8;
            return Ok(None);
        }
        let had = usize::from(self.head_len);
        let take = (MAX_HEADER_LEN - had).min(buf.len());
        self.head[had..had + take].copy_from_slice(&buf[..take]);
        match decode(&self.head[..had + take], rules)? {
            Some((header, n)) => {
                self.head_len = 0;
                Ok(Some((header, n - had)))
            }
            None => {
                self.head_len = (had + take) as u8;
                Ok(None)
            }
        }
    }

    /// Checks the frame against the open message (section 5.4) and makes it current.
    fn start(&mut self, header: Header, capture_data: bool) -> Result<(), Error> {
        match (header.opcode, self.message) {
            (OpCode::Continuation, None) => return Err(Error::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(Error::ExpectedContinuation),
            _ => {}
        }
        let compressed = match self.message {
            Some((_, _, compressed)) => compressed,
            None => header.rsv1,
        };
        let capture = header.opcode.is_control() || capture_data || compressed;
        self.frame = Some(Current { header, done: 0, capture });
        if !header.opcode.is_control() {
            let (op, len, compressed) = self.message.unwrap_or((header.opcode, 0, header.rsv1));
            self.message = Some((op, len + header.len, compressed));
        }
        Ok(())
    }

    /// The current frame ended: emit what it completes. `here` is its payload when it was
    /// whole in the read; otherwise a captured payload is in `control` or `data`.
    fn finish(
        &mut self,
        h: Header,
        capture: bool,
        here: Option<&[u8]>,
        on: &mut impl FnMut(Frame<'_>) -> bool,
    ) -> bool {
        self.frame = None;
        if h.opcode.is_control() {
            let payload = here.unwrap_or(&self.control);
            let frame = Frame {
                opcode: h.opcode,
                len: h.len,
                payload: Some(payload),
                compressed: false,
                wire_len: h.len,
            };
            let go_on = on(frame);
            self.control.clear();
            return go_on;
        }
        if !h.fin {
            return true;
        }
        let (opcode, len, compressed) = self.message.take().expect("a data frame opened a message");
        let payload = if capture { Some(here.unwrap_or(&self.data)) } else { None };
        let go_on = on(Frame { opcode, len, payload, compressed, wire_len: len });
        self.data.clear();
        go_on
    }
}

#[cfg(test)]
mod tests {
    use ringside_proto::frame::write_frame;

    use super::*;

    const CLIENT: DecodeRules = DecodeRules { expect_masked: false, max_frame_size: 16 << 20 };
    const RAW: DecodeRules = DecodeRules { expect_masked: true, max_frame_size: 16 << 20 };

    type Got = (OpCode, u64, Option<Vec<u8>>);

    /// Feeds `bytes` in pieces of `step` bytes (0: all at once).
    fn run(
        bytes: &[u8],
        step: usize,
        rules: DecodeRules,
        capture: bool,
    ) -> Result<Vec<Got>, Error> {
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        let mut copy = bytes.to_vec();
        let step = if step == 0 { copy.len().max(1) } else { step };
        for piece in copy.chunks_mut(step) {
            reader.feed(piece, rules, capture, |f| {
                got.push((f.opcode, f.len, f.payload.map(<[u8]>::to_vec)));
                true
            })?;
        }
        Ok(got)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn many_frames_in_one_read_and_split_at_every_byte() {
        let mut wire = Vec::new();
        let sizes = [0usize, 1, 20, 125, 126, 300, 65_535, 65_536, 70_000];
        for &n in &sizes {
            write_frame(&mut wire, true, OpCode::Binary, None, &payload(n));
        }
        write_frame(&mut wire, true, OpCode::Ping, None, b"hi");
        for step in [0, 1, 2, 3, 13, 1000, 4096] {
            for capture in [false, true] {
                let got = run(&wire, step, CLIENT, capture).unwrap();
                assert_eq!(got.len(), sizes.len() + 1, "step {step}");
                for (g, &n) in got.iter().zip(&sizes) {
                    assert_eq!((g.0, g.1), (OpCode::Binary, n as u64));
                    assert_eq!(g.2, capture.then(|| payload(n)), "step {step} len {n}");
                }
                // Control frames always carry their payload.
                assert_eq!(got[sizes.len()], (OpCode::Ping, 2, Some(b"hi".to_vec())));
            }
        }
    }

    #[test]
    fn extended_lengths_16_and_64_bit() {
        for n in [126usize, 65_535, 65_536, 1 << 20] {
            let mut wire = Vec::new();
            write_frame(&mut wire, true, OpCode::Text, None, &payload(n));
            let ext = if n <= 65_535 { 126 } else { 127 };
            assert_eq!(wire[1], ext);
            let got = run(&wire, 7, CLIENT, true).unwrap();
            assert_eq!(got, vec![(OpCode::Text, n as u64, Some(payload(n)))]);
        }
    }

    #[test]
    fn masked_frames_only_in_raw_mode() {
        let mut wire = Vec::new();
        write_frame(&mut wire, true, OpCode::Binary, Some([9, 8, 7, 6]), &payload(300));
        write_frame(&mut wire, true, OpCode::Close, Some([1, 2, 3, 4]), &[3, 232]);
        assert_eq!(run(&wire, 0, CLIENT, false), Err(Error::BadMask));
        for step in [0, 1, 5, 100] {
            let got = run(&wire, step, RAW, true).unwrap();
            assert_eq!(got[0], (OpCode::Binary, 300, Some(payload(300))), "step {step}");
            assert_eq!(got[1], (OpCode::Close, 2, Some(vec![3, 232])));
        }
        // And an unmasked server frame is an error in raw mode.
        let mut server = Vec::new();
        write_frame(&mut server, true, OpCode::Binary, None, b"x");
        assert_eq!(run(&server, 0, RAW, false), Err(Error::BadMask));
    }

    #[test]
    fn fragments_join_and_controls_interleave() {
        let mut wire = Vec::new();
        write_frame(&mut wire, false, OpCode::Text, None, b"hel");
        write_frame(&mut wire, true, OpCode::Pong, None, b"p");
        write_frame(&mut wire, false, OpCode::Continuation, None, b"");
        write_frame(&mut wire, true, OpCode::Continuation, None, b"lo");
        for step in [0, 1, 4] {
            let got = run(&wire, step, CLIENT, true).unwrap();
            assert_eq!(
                got,
                vec![
                    (OpCode::Pong, 1, Some(b"p".to_vec())),
                    (OpCode::Text, 5, Some(b"hello".to_vec()))
                ]
            );
            let got = run(&wire, step, CLIENT, false).unwrap();
            assert_eq!(got[1], (OpCode::Text, 5, None));
        }
        let mut bad = Vec::new();
        write_frame(&mut bad, true, OpCode::Continuation, None, b"x");
        assert_eq!(run(&bad, 0, CLIENT, false), Err(Error::UnexpectedContinuation));
    }

    #[test]
    fn compressed_messages_are_captured_whole_only_with_deflate() {
        let mut wire = Vec::new();
        let first = wire.len();
        write_frame(&mut wire, false, OpCode::Text, None, b"ab");
        wire[first] |= 0x40;
        write_frame(&mut wire, true, OpCode::Continuation, None, b"cd");
        let single = wire.len();
        write_frame(&mut wire, true, OpCode::Binary, None, b"xyz");
        wire[single] |= 0x40;
        write_frame(&mut wire, true, OpCode::Binary, None, b"plain");
        for step in [0, 1, 3] {
            let mut reader = FrameReader { deflate: true, ..FrameReader::default() };
            let mut got = Vec::new();
            let mut copy = wire.clone();
            let n = if step == 0 { copy.len() } else { step };
            for piece in copy.chunks_mut(n) {
                reader
                    .feed(piece, CLIENT, false, |f| {
                        got.push((f.opcode, f.compressed, f.payload.map(<[u8]>::to_vec)));
                        true
                    })
                    .unwrap();
            }
            assert_eq!(
                got,
                vec![
                    (OpCode::Text, true, Some(b"abcd".to_vec())),
                    (OpCode::Binary, true, Some(b"xyz".to_vec())),
                    (OpCode::Binary, false, None),
                ],
                "step {step}"
            );
        }
        assert_eq!(run(&wire, 0, CLIENT, false), Err(Error::ReservedBits), "not negotiated");
    }

    #[test]
    fn stopping_drops_the_rest() {
        let mut wire = Vec::new();
        for _ in 0..3 {
            write_frame(&mut wire, true, OpCode::Binary, None, b"abc");
        }
        let mut reader = FrameReader::default();
        let mut seen = 0;
        let r = reader.feed(&mut wire, CLIENT, false, |_| {
            seen += 1;
            false
        });
        assert_eq!((r, seen), (Ok(false), 1));
    }
}
