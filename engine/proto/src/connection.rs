//! The per-connection state machine of an established WebSocket (after the opening handshake).
//!
//! [`Connection::read`] takes the bytes a socket produced and hands back one event at a time,
//! with the number of bytes it consumed. Payloads are unmasked in place, so a message that came
//! whole in one read is handed out borrowed from the caller's buffer: no allocation, no copy.
//! Only what does not fit in one read (a partial header, a frame split across reads, a message
//! split into fragments) is kept inside the connection.
//!
//! Replies the protocol requires (pong for ping, the close echo, the close frame that fails the
//! connection) are appended to the connection's output, which the caller sends in order after
//! the event that caused them. The connection never touches a socket or a clock: close and idle
//! timeouts belong to the caller.
//!
//! permessage-deflate is off until [`Connection::enable_deflate`]; then compressed messages
//! (RSV1) are inflated into the connection's message buffer and handed out from there, the
//! message size limit counting inflated bytes. Off, it costs one pointer.

use std::cell::Cell;

use crate::buf::ThinBuf;
use crate::close::{self, CloseCode, CloseFrame};
use crate::deflate::{DeflateParams, Deflater, Inflater};
use crate::error::Error;
use crate::frame::{self, DecodeRules, Header, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::mask;
use crate::message::{Assembly, Kind, Message};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Receives unmasked frames, sends frames masked with a fresh random key each.
    Client,
}

/// Limits and behaviour of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest frame payload accepted; a longer frame fails with 1009. Default 16 MiB.
    pub max_frame_size: u64,
    /// Largest message accepted (all fragments together); longer fails with 1009. Default 16 MiB.
    pub max_message_size: u64,
    /// Answer every ping with a pong carrying the same payload. Default on.
    pub auto_pong: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_frame_size: 16 << 20, max_message_size: 16 << 20, auto_pong: true }
    }
}

/// Something the peer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message.
    Message(Message<'a>),
    /// A ping; the pong is already in the output if `auto_pong` is on.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close frame (`None`: it carried no status code). The reply, if one was due,
    /// is in the output; after it, nothing more is sent and the transport should be closed.
    Close(Option<CloseFrame<'a>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// The close handshake is done or the connection failed: input is ignored.
    Closed,
}

/// Where the receiver is inside the byte stream.
#[derive(Debug, Clone, Copy)]
enum Rx {
    /// Between frames, holding the start of a header that did not arrive whole.
    Header { bytes: [u8; MAX_HEADER_LEN], len: u8 },
    /// Inside the payload of a frame that did not arrive whole.
    Payload { header: Header, remaining: u64, mask_offset: u8 },
}

const RX_IDLE: Rx = Rx::Header { bytes: [0; MAX_HEADER_LEN], len: 0 };

/// What [`Connection::buffered`] counts for inflate state while it is allocated: zlib-rs's
/// inflate state and its 32 KiB window, 47,704 bytes measured by a counting allocator at every
/// window size (`tests/deflate_memory.rs`), rounded up.
pub const INFLATE_STATE_BYTES: usize = 48 << 10;

/// Where a complete frame's payload lies.
#[derive(Debug, Clone)]
enum Loc {
    /// In the caller's input, unmasked in place.
    Input(std::ops::Range<usize>),
    /// In the connection (control payload in `ctrl`, data in the assembly).
    Stored,
}

/// What a step found ready to hand out.
#[derive(Debug)]
enum Ready {
    /// A whole single-frame message in the caller's input.
    InPlace(Kind, std::ops::Range<usize>),
    /// A message in the assembly buffer.
    Assembled(Kind),
    /// A control frame (ping, pong or close).
    Control(OpCode, Loc),
}

/// One WebSocket connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    state: State,
    /// The open message is compressed (its first frame had RSV1).
    inflating: bool,
    /// [`Config::auto_pong`] (the config is kept as its fields: the flag packs with the others).
    auto_pong: bool,
    max_frame_size: u64,
    max_message_size: u64,
    rx: Rx,
    assembly: Assembly,
    /// The payload of a control frame that did not arrive in one read.
    ctrl: ThinBuf,
    out: ThinBuf,
    /// The permessage-deflate agreement, where negotiated: inline, so that a connection with
    /// nothing to keep between messages holds no deflate memory while idle.
    deflate_params: Option<DeflateParams>,
    /// Its state, only while there is some: the connection has its own compressor, the peer
    /// keeps context (the inflater lives between messages), or a compressed message is being
    /// read.
    deflate: Option<Box<Deflate>>,
}

thread_local! {
    /// One spare deflate record per thread: a connection whose peer keeps no context needs one
    /// only while it reads a compressed message, and a server reads those one at a time per
    /// thread; reusing it (like the inflate states, see `deflate::codec`) keeps a small
    /// allocation per message from interleaving with connections' long-lived ones.
    static SPARE_RECORD: Cell<Option<Box<Deflate>>> = const { Cell::new(None) };
}

/// A connection's permessage-deflate state.
#[derive(Debug)]
struct Deflate {
    inflater: Inflater,
    /// The connection's own compressor for [`Connection::send_text`] and
    /// [`Connection::send_binary`]; `None`: those send uncompressed.
    deflater: Option<Deflater>,
}

impl Connection {
    /// A connection whose opening handshake has completed.
    pub fn new(role: Role, config: Config) -> Self {
        Connection {
            role,
            state: State::Open,
            inflating: false,
            auto_pong: config.auto_pong,
            max_frame_size: config.max_frame_size,
            max_message_size: config.max_message_size,
            rx: RX_IDLE,
            assembly: Assembly::default(),
            ctrl: ThinBuf::new(),
            out: ThinBuf::new(),
            deflate_params: None,
            deflate: None,
        }
    }

    /// Turns on permessage-deflate as negotiated in the handshake: call it right after
    /// [`Connection::new`], before the first read.
    ///
    /// From then on RSV1 marks a compressed message (on a control or continuation frame it
    /// fails the connection with 1002), and compressed messages are inflated with the window
    /// and context policy `params` give the peer; the inflated size counts against
    /// `max_message_size` (1009 past it, having inflated at most one byte more), corrupt data
    /// fails with 1007. With zlib-rs the inflate window is 32 KiB whatever was agreed, so a peer
    /// exceeding a smaller agreed window is not caught (see [`crate::deflate`]). Zlib state
    /// exists only while a compressed message is read, unless the peer keeps context between
    /// messages; without `sends` and without the peer's context, an idle connection holds no
    /// deflate memory at all (the agreement is kept inline).
    ///
    /// `sends`: the compressor [`Connection::send_text`] and [`Connection::send_binary`] use
    /// (usually `params.deflater(role, level)`); `None` leaves them uncompressed, which is
    /// always allowed, for a caller that compresses itself (a shared compressor).
    pub fn enable_deflate(&mut self, params: DeflateParams, sends: Option<Deflater>) {
        self.deflate_params = Some(params);
        self.deflate = sends.map(|deflater| {
            Box::new(Deflate {
                inflater: Self::inflater_for(params, self.role),
                deflater: Some(deflater),
            })
        });
    }

    fn inflater_for(params: DeflateParams, role: Role) -> Inflater {
        let (bits, no_takeover) = params.receiving(role);
        Inflater::new(bits, no_takeover)
    }

    /// The deflate state in `slot`, made when first needed (`None` without permessage-deflate).
    /// Over the fields, so that the message buffer can be borrowed beside it.
    fn deflate_state(
        slot: &mut Option<Box<Deflate>>,
        params: Option<DeflateParams>,
        role: Role,
    ) -> Option<&mut Deflate> {
        let params = params?;
        Some(slot.get_or_insert_with(|| {
            let fresh = Deflate { inflater: Self::inflater_for(params, role), deflater: None };
            match SPARE_RECORD.try_with(Cell::take).ok().flatten() {
                Some(mut record) => {
                    *record = fresh;
                    record
                }
                None => Box::new(fresh),
            }
        }))
    }

    /// Frees the deflate state if it holds nothing the next message needs (the record goes to
    /// this thread's spare).
    fn trim_deflate(&mut self) {
        if self.deflate.as_ref().is_some_and(|d| d.deflater.is_none() && !d.inflater.is_allocated())
        {
            if let Some(record) = self.deflate.take() {
                let _ = SPARE_RECORD.try_with(|spare| spare.set(Some(record)));
            }
        }
    }

    /// The permessage-deflate agreement, if enabled.
    pub fn deflate_params(&self) -> Option<&DeflateParams> {
        self.deflate_params.as_ref()
    }

    /// The connection's own compressor, if it has one: for a caller that writes frames itself
    /// ([`Deflater::compress`], then a header with [`crate::frame::EncodedHeader::with_rsv1`]).
    pub fn deflater_mut(&mut self) -> Option<&mut Deflater> {
        self.deflate.as_mut().and_then(|d| d.deflater.as_mut())
    }

    /// Whether inflate state is allocated now (a compressed message is being read, or the peer
    /// keeps context): for memory accounting and tests.
    pub fn is_inflating(&self) -> bool {
        self.deflate.as_ref().is_some_and(|d| d.inflater.is_allocated())
    }

    /// Heap bytes held for input not handed out yet: the message being assembled (its
    /// buffer's capacity, which is what it costs; growth is capped at `max_message_size`), a
    /// control payload that straddled reads, and the inflate state of a compressed message
    /// (counted as [`INFLATE_STATE_BYTES`]). A partial header is inline and costs nothing
    /// extra; the output is not counted. Constant time: for a caller that budgets input memory
    /// across connections and asks after every read.
    pub fn buffered(&self) -> usize {
        let inflate = if self.is_inflating() { INFLATE_STATE_BYTES } else { 0 };
        self.assembly.capacity() + self.ctrl.capacity() + inflate
    }

    /// Whether a frame or a fragmented message has started and not finished: some of its
    /// bytes arrived and the rest has not. For a caller's deadline on finishing a message (a
    /// peer that trickles a frame a byte at a time is never idle, yet never done).
    pub fn in_message(&self) -> bool {
        self.state != State::Closed
            && (self.assembly.is_open() || !matches!(self.rx, Rx::Header { len: 0, .. }))
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The limits in force.
    pub fn config(&self) -> Config {
        Config {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
            auto_pong: self.auto_pong,
        }
    }

    /// Whether data may still be sent (no close frame sent yet, not failed).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether this side sent a close frame and waits for the peer's.
    pub fn is_closing(&self) -> bool {
        self.state == State::CloseSent
    }

    /// Whether the close handshake finished or the connection failed: once the output is sent,
    /// the transport should be closed (RFC 6455 section 7.1.1: the server closes TCP first).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Reads from `input`, unmasking it in place, until one event is ready or the input is used
    /// up. Returns the bytes consumed and the event, if any.
    ///
    /// Call it again on `input[consumed..]` until it returns no event: only then has the whole
    /// input been consumed (partial frames are kept inside the connection). On an error the
    /// connection has failed: the close frame for it is in the output, further input is ignored.
    pub fn read<'a>(
        &'a mut self,
        input: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        if self.state == State::Closed {
            return Ok((input.len(), None));
        }
        let (consumed, ready) = match self.step(input) {
            Ok(step) => step,
            Err(e) => {
                self.fail(e);
                return Err(e);
            }
        };
        let Some(ready) = ready else {
            // Every event of the previous calls has been dropped by now: buffers can go.
            self.release_buffers();
            return Ok((consumed, None));
        };
        let input: &'a [u8] = input;
        let event = match ready {
            Ready::InPlace(Kind::Binary, range) => Event::Message(Message::Binary(&input[range])),
            Ready::InPlace(Kind::Text, range) => match crate::utf8::validate(&input[range]) {
                Ok(text) => Event::Message(Message::Text(text)),
                Err(e) => {
                    self.fail(e);
                    return Err(e);
                }
            },
            Ready::Assembled(kind) => Event::Message(self.assembly.message(kind)),
            Ready::Control(opcode, loc) => {
                let payload = match loc {
                    Loc::Input(range) => &input[range],
                    Loc::Stored => self.ctrl.as_slice(),
                };
                match opcode {
                    OpCode::Ping => Event::Ping(payload),
                    OpCode::Pong => Event::Pong(payload),
                    // Parsed once already in `control`, which failed the connection if invalid.
                    _ => Event::Close(close::parse_payload(payload).unwrap_or(None)),
                }
            }
        };
        Ok((consumed, Some(event)))
    }

    /// Decodes until a frame completes something the caller must see, or the input ends.
    fn step(&mut self, input: &mut [u8]) -> Result<(usize, Option<Ready>), Error> {
        let rules = DecodeRules {
            expect_masked: self.role == Role::Server,
            max_frame_size: self.max_frame_size,
        };
        let decode = if self.deflate_params.is_some() {
            frame::decode_header_deflate
        } else {
            frame::decode_header
        };
        let mut pos = 0;
        loop {
            match self.rx {
                Rx::Header { mut bytes, len } => {
                    let avail = &input[pos..];
                    if avail.is_empty() {
                        return Ok((pos, None));
                    }
                    let len = usize::from(len);
                    let header = if len == 0 {
                        match decode(avail, rules)? {
                            Some((header, n)) => {
                                pos += n;
                                header
                            }
                            None => {
                                // Fewer bytes than a header needs: fewer than MAX_HEADER_LEN.
                                bytes[..avail.len()].copy_from_slice(avail);
                                self.rx = Rx::Header { bytes, len: avail.len() as u8 };
                                return Ok((input.len(), None));
                            }
                        }
                    } else {
                        let take = (MAX_HEADER_LEN - len).min(avail.len());
                        bytes[len..len + take].copy_from_slice(&avail[..take]);
                        match decode(&bytes[..len + take], rules)? {
                            // The stored part alone was incomplete, so n > len.
                            Some((header, n)) => {
                                pos += n - len;
                                header
                            }
                            None => {
                                // Incomplete with all 14 bytes impossible: take == avail.len().
                                self.rx = Rx::Header { bytes, len: (len + take) as u8 };
                                return Ok((input.len(), None));
                            }
                        }
                    };
                    self.rx = RX_IDLE;
                    self.start_frame(&header)?;
                    let avail = (input.len() - pos) as u64;
                    if avail < header.len {
                        self.rx = Rx::Payload { header, remaining: header.len, mask_offset: 0 };
                        continue;
                    }
                    let range = pos..pos + header.len as usize;
                    pos = range.end;
                    if let Some(key) = header.mask {
                        mask::apply(&mut input[range.clone()], key, 0);
                    }
                    if let Some(ready) = self.end_frame(header, Loc::Input(range), input)? {
                        return Ok((pos, Some(ready)));
                    }
                }
                Rx::Payload { header, remaining, mask_offset } => {
                    let avail = input.len() - pos;
                    if avail == 0 {
                        return Ok((pos, None));
                    }
                    let take = remaining.min(avail as u64) as usize;
                    let chunk = &mut input[pos..pos + take];
                    pos += take;
                    if let Some(key) = header.mask {
                        mask::apply(chunk, key, usize::from(mask_offset));
                    }
                    let remaining = remaining - take as u64;
                    if header.opcode.is_control() {
                        self.ctrl.vec().extend_from_slice(chunk);
                    } else {
                        self.data(chunk)?;
                    }
                    if remaining > 0 {
                        let mask_offset = ((usize::from(mask_offset) + take) % 4) as u8;
                        self.rx = Rx::Payload { header, remaining, mask_offset };
                        return Ok((pos, None));
                    }
                    self.rx = RX_IDLE;
                    if let Some(ready) = self.end_frame(header, Loc::Stored, input)? {
                        return Ok((pos, Some(ready)));
                    }
                }
            }
        }
    }

    /// Checks a new frame against the message sequence and size limits.
    fn start_frame(&mut self, header: &Header) -> Result<(), Error> {
        let kind = match header.opcode {
            OpCode::Text => Kind::Text,
            OpCode::Binary => Kind::Binary,
            OpCode::Continuation => {
                if !self.assembly.is_open() {
                    return Err(Error::UnexpectedContinuation);
                }
                if self.inflating {
                    // Compressed bytes are not kept: the limit applies as they inflate.
                    return Ok(());
                }
                return self.assembly.check_size(header.len, self.max_message_size);
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                self.ctrl.clear();
                return Ok(());
            }
        };
        if self.assembly.is_open() {
            return Err(Error::ExpectedContinuation);
        }
        self.assembly.open(kind);
        // Only `decode_header_deflate` sets it, so only with permessage-deflate enabled.
        self.inflating = header.rsv1;
        if self.inflating {
            return Ok(());
        }
        self.assembly.check_size(header.len, self.max_message_size)
    }

    /// Payload bytes of a data frame, unmasked: stored, or inflated into the message buffer.
    fn data(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let limit = usize::try_from(self.max_message_size).unwrap_or(usize::MAX);
        if !self.inflating {
            return self.assembly.push(chunk, limit);
        }
        // `inflating` is only ever set with permessage-deflate enabled.
        let state = Self::deflate_state(&mut self.deflate, self.deflate_params, self.role);
        let Some(deflate) = state else { return self.assembly.push(chunk, limit) };
        deflate.inflater.feed(chunk, &mut self.assembly, limit)
    }

    /// A frame's payload is complete: say what, if anything, the caller must see.
    fn end_frame(
        &mut self,
        header: Header,
        loc: Loc,
        input: &[u8],
    ) -> Result<Option<Ready>, Error> {
        if header.opcode.is_control() {
            self.control(header.opcode, &loc, input)?;
            return Ok(Some(Ready::Control(header.opcode, loc)));
        }
        if let Loc::Input(range) = loc {
            if header.fin && header.opcode != OpCode::Continuation && !self.inflating {
                // The whole message is this one frame, in the caller's buffer.
                self.assembly.close_in_place();
                let kind = if header.opcode == OpCode::Text { Kind::Text } else { Kind::Binary };
                return Ok(Some(Ready::InPlace(kind, range)));
            }
            self.data(&input[range])?;
        }
        if !header.fin {
            return Ok(None);
        }
        if self.inflating {
            self.inflating = false;
            let limit = usize::try_from(self.max_message_size).unwrap_or(usize::MAX);
            let state = Self::deflate_state(&mut self.deflate, self.deflate_params, self.role);
            if let Some(deflate) = state {
                deflate.inflater.finish_message(&mut self.assembly, limit)?;
            }
            self.trim_deflate();
        }
        Ok(Some(Ready::Assembled(self.assembly.finish()?)))
    }

    /// The protocol's own answer to a control frame.
    fn control(&mut self, opcode: OpCode, loc: &Loc, input: &[u8]) -> Result<(), Error> {
        let payload = match loc {
            Loc::Input(range) => &input[range.clone()],
            Loc::Stored => self.ctrl.as_slice(),
        };
        let mask = out_mask(self.role);
        match opcode {
            OpCode::Ping if self.auto_pong && self.state == State::Open => {
                frame::write_frame(self.out.vec(), true, OpCode::Pong, mask, payload);
            }
            OpCode::Close => {
                let received = close::parse_payload(payload)?;
                if self.state == State::Open {
                    // Section 5.5.1: reply with a close frame, typically echoing the code.
                    let mut reply = Vec::with_capacity(2);
                    if let Some(CloseFrame { code, .. }) = received {
                        reply.extend_from_slice(&code.0.to_be_bytes());
                    }
                    frame::write_frame(self.out.vec(), true, OpCode::Close, mask, &reply);
                }
                self.state = State::Closed;
            }
            _ => {}
        }
        Ok(())
    }

    /// Fails the connection: a close frame with the error's code (if one may still be sent),
    /// then nothing.
    fn fail(&mut self, error: Error) {
        if self.state == State::Open {
            if let Some(code) = error.close_code() {
                self.write_close(code, &error.to_string());
            }
        }
        self.stop_reading();
    }

    /// Fails the connection for a reason of the caller's, one the protocol cannot see: a
    /// resource limit (1013 when the server is short of memory), a policy (1008 for a message
    /// that takes too long, a flood of pings). Queues a close frame with `code` and `reason`
    /// (cut to fit) if one may still be sent and `code` may be sent, then ignores all input and
    /// frees every input buffer, a half-received message included: [`Connection::buffered`]
    /// is 0 afterwards. Send the output, then close the transport (RFC 6455 section 7.1.7:
    /// fail the WebSocket connection; no close reply is awaited).
    pub fn fail_with(&mut self, code: CloseCode, reason: &str) {
        if self.state == State::Open && code.is_sendable() {
            self.write_close(code, reason);
        }
        self.stop_reading();
    }

    /// Input is ignored from now on: state and buffers go.
    fn stop_reading(&mut self) {
        self.state = State::Closed;
        self.rx = RX_IDLE;
        self.inflating = false;
        if let Some(deflate) = self.deflate.as_mut() {
            deflate.inflater.release();
        }
        self.assembly.abandon();
        self.trim_deflate();
        self.release_buffers();
        self.ctrl.release();
    }

    fn release_buffers(&mut self) {
        self.assembly.release();
        if !matches!(self.rx, Rx::Payload { header, .. } if header.opcode.is_control())
            && self.ctrl.capacity() > 0
        {
            self.ctrl.release();
        }
    }

    fn write_close(&mut self, code: CloseCode, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len().min(123));
        close::write_payload(&mut payload, code, reason);
        frame::write_frame(self.out.vec(), true, OpCode::Close, out_mask(self.role), &payload);
    }

    /// Queues a text message (compressed if the connection has its own compressor, see
    /// [`Connection::enable_deflate`]).
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send(OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message (compressed like [`Connection::send_text`]).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send(OpCode::Binary, data)
    }

    /// Queues a ping; its payload may be at most 125 bytes.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() as u64 > MAX_CONTROL_PAYLOAD {
            return Err(Error::ControlTooLong);
        }
        self.send(OpCode::Ping, payload)
    }

    /// Queues a single frame, never compressed. For tests and clients that fragment on purpose;
    /// most callers want [`Connection::send_text`] or [`Connection::send_binary`].
    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(Error::Closed);
        }
        frame::write_frame(self.out.vec(), fin, opcode, out_mask(self.role), payload);
        Ok(())
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        let deflater = self.deflate.as_mut().and_then(|d| d.deflater.as_mut());
        // Only data messages are compressed (RFC 7692 section 6.1).
        if let Some(deflater) = deflater.filter(|_| !opcode.is_control()) {
            if self.state != State::Open {
                return Err(Error::Closed);
            }
            deflater.write_frame(opcode, out_mask(self.role), payload, self.out.vec());
            return Ok(());
        }
        self.send_frame(true, opcode, payload)
    }

    /// Starts the close handshake: queues a close frame; afterwards nothing more may be sent.
    /// The caller waits for the peer's close (an [`Event::Close`]) or its own close timeout.
    /// `code` must be one a peer may send ([`CloseCode::is_sendable`]); the reason is cut to fit.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(Error::Closed);
        }
        if !code.is_sendable() {
            return Err(Error::BadClosePayload);
        }
        self.write_close(code, reason);
        self.state = State::CloseSent;
        Ok(())
    }

    /// Bytes waiting to be sent, in order.
    pub fn output(&self) -> &[u8] {
        self.out.as_slice()
    }

    /// Marks the first `n` bytes of the output as sent.
    pub fn consume_output(&mut self, n: usize) {
        if n >= self.out.len() {
            self.out.clear();
        } else {
            self.out.vec().drain(..n);
        }
    }

    /// Takes all bytes waiting to be sent, leaving the output empty (and unallocated).
    pub fn take_output(&mut self) -> Vec<u8> {
        self.out.take()
    }
}

/// The masking key for a frame this side sends: none for a server; for a client, a fresh key
/// from a CSPRNG (section 5.3: keys must be unpredictable).
fn out_mask(role: Role) -> Option<[u8; 4]> {
    match role {
        Role::Server => None,
        Role::Client => Some(rand::random()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::write_frame(&mut out, fin, opcode, Some([0x37, 0xfa, 0x21, 0x3d]), payload);
        out
    }

    #[test]
    fn a_whole_message_is_borrowed_from_the_input() {
        let mut c = Connection::new(Role::Server, Config::default());
        let mut input = client_frame(true, OpCode::Text, b"Hello");
        let start = input.as_ptr() as usize;
        let (n, ev) = c.read(&mut input).unwrap();
        assert_eq!(n, 11);
        let Some(Event::Message(Message::Text(text))) = ev else { panic!("{ev:?}") };
        assert_eq!(text, "Hello");
        // Same memory as the input: no copy.
        assert_eq!(text.as_ptr() as usize, start + 6);
        assert_eq!(c.read(&mut []).unwrap(), (0, None));
    }

    #[test]
    fn rfc_examples_decode() {
        // RFC 6455 section 5.7.
        let mut c = Connection::new(Role::Client, Config::default());
        let mut unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (_, ev) = c.read(&mut unmasked).unwrap();
        assert_eq!(ev, Some(Event::Message(Message::Text("Hello"))));
        let mut s = Connection::new(Role::Server, Config::default());
        let mut masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (_, ev) = s.read(&mut masked).unwrap();
        assert_eq!(ev, Some(Event::Message(Message::Text("Hello"))));
        let mut fragments = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let (n, ev) = c.read(&mut fragments).unwrap();
        assert_eq!((n, ev), (9, Some(Event::Message(Message::Text("Hello")))));
        let mut ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (_, ev) = c.read(&mut ping).unwrap();
        assert_eq!(ev, Some(Event::Ping(b"Hello")));
        // The client's pong is masked.
        let out = c.take_output();
        assert_eq!(out.len(), 2 + 4 + 5);
        assert_eq!(&out[..2], &[0x8a, 0x85]);
    }

    #[test]
    fn ping_gets_pong_and_close_gets_echo() {
        let mut c = Connection::new(Role::Server, Config::default());
        let mut input = client_frame(true, OpCode::Ping, b"hi");
        input.extend(client_frame(true, OpCode::Close, &[0x03, 0xe9, b'x']));
        input.extend(client_frame(true, OpCode::Text, b"after close: ignored"));
        let (n, ev) = c.read(&mut input).unwrap();
        assert_eq!(ev, Some(Event::Ping(b"hi")));
        let (m, ev) = c.read(&mut input[n..]).unwrap();
        assert_eq!(ev, Some(Event::Close(Some(CloseFrame { code: CloseCode(1001), reason: "x" }))));
        let rest = n + m;
        assert_eq!(c.read(&mut input[rest..]).unwrap().1, None);
        assert!(c.is_closed());
        assert_eq!(c.output(), &[0x8a, 2, b'h', b'i', 0x88, 2, 0x03, 0xe9]);
        assert_eq!(c.send_text("late"), Err(Error::Closed));
    }

    #[test]
    fn server_initiated_close_waits_for_the_reply() {
        let mut c = Connection::new(Role::Server, Config::default());
        c.close(CloseCode::GOING_AWAY, "shutdown").unwrap();
        assert!(c.is_closing());
        assert_eq!(&c.output()[..4], &[0x88, 10, 0x03, 0xe9]);
        c.consume_output(usize::MAX);
        // Data still arrives; pings are not answered after our close frame.
        let mut input = client_frame(true, OpCode::Binary, b"late");
        input.extend(client_frame(true, OpCode::Ping, b""));
        input.extend(client_frame(true, OpCode::Close, &[0x03, 0xe9]));
        let mut pos = 0;
        let mut events = 0;
        loop {
            let (n, ev) = c.read(&mut input[pos..]).unwrap();
            pos += n;
            if ev.is_none() {
                break;
            }
            events += 1;
        }
        assert_eq!(events, 3);
        assert!(c.is_closed());
        assert!(c.output().is_empty());
    }

    #[test]
    fn failure_queues_the_close_code() {
        let mut c = Connection::new(Role::Server, Config::default());
        let mut input = [0x83, 0x80, 0, 0, 0, 0];
        assert_eq!(c.read(&mut input), Err(Error::ReservedOpcode));
        let out = c.output();
        assert_eq!(out[0], 0x88);
        assert_eq!(&out[2..4], &1002u16.to_be_bytes());
        assert!(c.is_closed());
        let mut more = client_frame(true, OpCode::Text, b"x");
        let len = more.len();
        assert_eq!(c.read(&mut more).unwrap(), (len, None));
    }

    fn compressed(payload: &[u8], first: OpCode) -> Vec<u8> {
        let mut d = Deflater::new(15, true, 6);
        let mut out = Vec::new();
        d.write_frame(first, Some([0x37, 0xfa, 0x21, 0x3d]), payload, &mut out);
        out
    }

    fn deflate_server(params: DeflateParams) -> Connection {
        let mut c = Connection::new(Role::Server, Config::default());
        c.enable_deflate(params, Some(params.deflater(Role::Server, 1)));
        c
    }

    #[test]
    fn rsv1_needs_negotiation() {
        let mut plain = Connection::new(Role::Server, Config::default());
        let mut input = compressed(b"Hello", OpCode::Text);
        assert_eq!(plain.read(&mut input), Err(Error::ReservedBits));
        assert_eq!(&plain.output()[2..4], &1002u16.to_be_bytes());
        assert_eq!(plain.deflate_params(), None);
        assert!(plain.deflater_mut().is_none());
    }

    #[test]
    fn compressed_messages_inflate_and_sends_compress() {
        let mut c = deflate_server(DeflateParams {
            client_no_context_takeover: true,
            ..DeflateParams::DEFAULT
        });
        let mut input = compressed("héllo wörld".as_bytes(), OpCode::Text);
        input.extend(client_frame(true, OpCode::Text, b"plain"));
        let (n, ev) = c.read(&mut input).unwrap();
        assert_eq!(ev, Some(Event::Message(Message::Text("héllo wörld"))));
        let (_, ev) = c.read(&mut input[n..]).unwrap();
        assert_eq!(ev, Some(Event::Message(Message::Text("plain"))));
        assert!(!c.is_inflating(), "no inflate state kept when the client keeps no context");
        assert!(c.deflate.is_some(), "its own compressor stays");
        c.send_binary(&[9; 1000]).unwrap();
        let out = c.take_output();
        assert_eq!(out[0], 0xc2, "FIN, RSV1, binary");
        assert!(out.len() < 100);
        c.ping(b"p").unwrap();
        assert_eq!(c.take_output(), [0x89, 1, b'p'], "control frames are never compressed");
    }

    #[test]
    fn deflate_failures_have_their_codes() {
        let params = DeflateParams::DEFAULT;
        // RSV1 on a continuation: 1002.
        let mut c = deflate_server(params);
        let mut input = client_frame(false, OpCode::Text, b"a");
        let mut cont = client_frame(true, OpCode::Continuation, b"b");
        cont[0] |= 0x40;
        input.extend(cont);
        assert_eq!(c.read(&mut input), Err(Error::BadRsv1));
        assert_eq!(&c.output()[2..4], &1002u16.to_be_bytes());
        // Corrupt DEFLATE: 1007.
        let mut c = deflate_server(params);
        let mut input = client_frame(true, OpCode::Binary, &[0x07, 0x00]);
        input[0] |= 0x40;
        assert_eq!(c.read(&mut input), Err(Error::BadCompressedData));
        assert_eq!(&c.output()[2..4], &1007u16.to_be_bytes());
        assert!(!c.is_inflating(), "state released on failure");
        // Inflated text that is not UTF-8: 1007.
        let mut c = deflate_server(params);
        let mut input = compressed(b"ok \xff", OpCode::Text);
        assert_eq!(c.read(&mut input), Err(Error::InvalidUtf8));
        // Over the message limit once inflated: 1009.
        let mut c =
            Connection::new(Role::Server, Config { max_message_size: 1000, ..Config::default() });
        c.enable_deflate(params, None);
        let mut input = compressed(&[b'x'; 1001], OpCode::Binary);
        assert!(input.len() < 100);
        assert_eq!(c.read(&mut input), Err(Error::MessageTooLarge));
        assert_eq!(&c.output()[2..4], &1009u16.to_be_bytes());
    }

    #[test]
    fn buffered_counts_what_a_partial_message_holds_and_fail_with_frees_it() {
        let limit = 100_000;
        let config = Config { max_message_size: limit, max_frame_size: limit, auto_pong: true };
        let mut c = Connection::new(Role::Server, config);
        assert_eq!((c.buffered(), c.in_message()), (0, false));
        // One byte of a header: inline, nothing on the heap, but a frame has started.
        let frame = client_frame(true, OpCode::Binary, &[5; 100_000]);
        let mut part = frame[..1].to_vec();
        assert_eq!(c.read(&mut part).unwrap(), (1, None));
        assert_eq!((c.buffered(), c.in_message()), (0, true));
        // Most of the payload, in pieces: held at its capacity, never past the limit.
        let mut pos = 1;
        while pos < 90_000 {
            let mut piece = frame[pos..pos + 7_000].to_vec();
            assert_eq!(c.read(&mut piece).unwrap(), (7_000, None));
            pos += 7_000;
            assert!(c.buffered() >= pos - 14, "{} at {pos}", c.buffered());
            assert!(c.buffered() <= limit as usize, "{} at {pos}", c.buffered());
        }
        assert!(c.in_message());
        c.fail_with(CloseCode::TRY_AGAIN_LATER, "busy");
        assert_eq!((c.buffered(), c.in_message(), c.is_closed()), (0, false, true));
        assert_eq!(&c.output()[..6], &[0x88, 6, 0x03, 0xf5, b'b', b'u']);
        // Input after it is ignored and holds nothing.
        let mut rest = frame[pos..].to_vec();
        let len = rest.len();
        assert_eq!(c.read(&mut rest).unwrap(), (len, None));
        assert_eq!(c.buffered(), 0);
        // A closed connection sends nothing more, and a code that may not be sent is not.
        let out = c.output().len();
        c.fail_with(CloseCode::POLICY, "again");
        assert_eq!(c.output().len(), out);
        let mut d = Connection::new(Role::Server, config);
        d.fail_with(CloseCode::ABNORMAL, "never on the wire");
        assert!(d.output().is_empty() && d.is_closed());
    }

    #[test]
    fn in_message_spans_fragments_and_straddling_control_frames() {
        let mut c = Connection::new(Role::Server, Config::default());
        let mut first = client_frame(false, OpCode::Text, b"part");
        let len = first.len();
        assert_eq!(c.read(&mut first).unwrap(), (len, None));
        assert!(c.in_message(), "between fragments");
        let ping = client_frame(true, OpCode::Ping, b"abc");
        let mut head = ping[..7].to_vec();
        assert_eq!(c.read(&mut head).unwrap().1, None);
        assert!(c.buffered() > 0, "a control payload straddling reads is held");
        let mut tail = ping[7..].to_vec();
        assert_eq!(c.read(&mut tail).unwrap().1, Some(Event::Ping(b"abc")));
        let mut last = client_frame(true, OpCode::Continuation, b"!");
        assert_eq!(c.read(&mut last).unwrap().1, Some(Event::Message(Message::Text("part!"))));
        assert!(!c.in_message());
        assert_eq!(c.read(&mut []).unwrap(), (0, None));
        assert_eq!(c.buffered(), 0, "freed once the message was handed out");
    }

    #[test]
    fn without_own_compressor_or_peer_context_no_deflate_memory_is_held_between_messages() {
        let params = DeflateParams { client_no_context_takeover: true, ..DeflateParams::DEFAULT };
        let mut c = Connection::new(Role::Server, Config::default());
        c.enable_deflate(params, None);
        assert!(c.deflate.is_none(), "nothing allocated at enable");
        // Compressed, in two reads: the state exists while the message is read.
        let mut input = compressed(&[b'a'; 3000], OpCode::Binary);
        let cut = input.len() / 2;
        assert_eq!(c.read(&mut input[..cut]).unwrap(), (cut, None));
        assert!(c.deflate.is_some() && c.is_inflating());
        let (_, ev) = c.read(&mut input[cut..]).unwrap();
        assert_eq!(ev.map(|e| matches!(e, Event::Message(m) if m.len() == 3000)), Some(true));
        assert!(c.deflate.is_none(), "freed after the message");
        assert_eq!(c.deflate_params(), Some(&params));
        // A peer that keeps context keeps its inflater between messages.
        let mut c = Connection::new(Role::Server, Config::default());
        c.enable_deflate(DeflateParams::DEFAULT, None);
        let mut input = compressed(b"Hello", OpCode::Text);
        assert!(c.read(&mut input).unwrap().1.is_some());
        assert!(c.is_inflating(), "the peer's context is kept");
        // A failure frees it.
        let mut bad = client_frame(true, OpCode::Binary, &[0x07, 0x00]);
        bad[0] |= 0x40;
        assert!(c.read(&mut bad).is_err());
        assert!(c.deflate.is_none());
    }

    #[test]
    fn idle_connection_is_small_and_holds_no_heap() {
        let mut c = Connection::new(Role::Server, Config::default());
        let mut big = client_frame(false, OpCode::Binary, &[7; 5000]);
        big.extend(client_frame(true, OpCode::Continuation, &[8; 5000]));
        let (_, ev) = c.read(&mut big).unwrap();
        assert_eq!(ev.map(|e| matches!(e, Event::Message(m) if m.len() == 10_000)), Some(true));
        assert_eq!(c.read(&mut []).unwrap(), (0, None));
        assert_eq!(c.assembly.len(), 0);
        // What every idle connection pays (the deflate agreement is inline since it must cost
        // nothing while idle): keep an eye on it.
        assert!(std::mem::size_of::<Connection>() <= 96, "{}", std::mem::size_of::<Connection>());
    }
}
