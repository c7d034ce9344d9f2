//! permessage-deflate (RFC 7692): negotiation, and the codec a [`Connection`] uses once it is
//! negotiated.
//!
//! - [`negotiate`] (server) picks the first acceptable offer and writes the one response
//!   extension string; [`DeflateOffer`] (client) writes an offer and checks the server's answer.
//!   Both yield [`DeflateParams`], the agreement.
//! - [`Deflater`] compresses one whole message into a frame payload (RSV1 set on its frame by
//!   the caller, [`crate::frame::EncodedHeader::with_rsv1`]); [`SharedDeflaters`] is the
//!   per-worker set of compressors for connections whose server side keeps no context.
//! - Receiving is the connection's: [`Connection::enable_deflate`] turns it on, after which
//!   compressed messages inflate transparently, within the connection's message size limit.
//!
//! Nothing here touches a socket. Compression uses `flate2` on the pure-Rust `zlib-rs` backend
//! (raw DEFLATE, RFC 1951).
//!
//! One limit of that backend: zlib-rs inflates with a 32 KiB window whatever window size it is
//! given. An agreed `client_max_window_bits` below 15 therefore saves the server no memory, and
//! a client that compresses with a larger window than agreed is caught only by references more
//! than 32 KiB back or before the start of its stream (1007), not at the agreed size.
//!
//! [`Connection`]: crate::Connection
//! [`Connection::enable_deflate`]: crate::Connection::enable_deflate

mod codec;
mod negotiate;

pub(crate) use codec::Inflater;
pub use codec::{Deflater, SharedDeflaters};
pub use negotiate::{negotiate, DeflateConfig, DeflateMode, DeflateOffer, Negotiated};

use crate::connection::Role;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// What the two ends agreed to, in the RFC's terms (each side reads the half that concerns it).
///
/// Window sizes are base-2 logarithms, 8..=15; 15 (32 KiB) where nothing smaller was agreed.
/// A window of 8 is served with zlib's 9-bit window, whose matches never reach more than 250
/// bytes back (zlib keeps 262 bytes of lookahead out of the window), so they stay inside 256:
/// zlib cannot make a raw 8-bit compressor, and its 9-bit one honours an 8-bit limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server compresses every message with a fresh context (it keeps no history).
    pub server_no_context_takeover: bool,
    /// The client compresses every message with a fresh context.
    pub client_no_context_takeover: bool,
    /// The largest window the server compresses with (the client inflates with it).
    pub server_max_window_bits: u8,
    /// The largest window the client compresses with (the server inflates with it).
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// No parameter at all (`permessage-deflate` alone): both sides keep context, 15-bit windows.
    pub const DEFAULT: DeflateParams = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };

    /// The compressor for what `role` sends: its window, and whether it keeps context.
    /// `level` is zlib's, 0 (store) to 9 (best); 1 is the fast default of [`DeflateConfig`].
    pub fn deflater(&self, role: Role, level: u32) -> Deflater {
        let (bits, no_takeover) = self.sending(role);
        Deflater::new(bits, no_takeover, level)
    }

    /// Window bits and no-context-takeover for the messages `role` sends.
    pub fn sending(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => (self.server_max_window_bits, self.server_no_context_takeover),
            Role::Client => (self.client_max_window_bits, self.client_no_context_takeover),
        }
    }

    /// Window bits and no-context-takeover for the messages `role` receives.
    pub fn receiving(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => self.sending(Role::Client),
            Role::Client => self.sending(Role::Server),
        }
    }
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams::DEFAULT
    }
}
