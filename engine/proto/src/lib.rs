//! `ringside-proto`: the sans-IO core of the Ringside WebSocket engine (RFC 6455).
//!
//! Bytes go in, events and bytes to send come out. Nothing here opens a socket, spawns a thread
//! or reads a clock: the io_uring and epoll backends of the server, the load generator (as a
//! client) and the fuzzers all drive the same code.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade, server and client side.
//! - [`frame`]: frame headers, decoding limits, encoders for server and client frames.
//! - [`mask`]: SIMD unmasking with runtime dispatch (the only module with `unsafe`).
//! - [`utf8`]: incremental, fail-fast UTF-8 validation across fragments and reads.
//! - [`close`]: close codes and close payloads.
//! - [`message`]: fragment assembly and message size limits.
//! - [`connection`]: the per-connection state machine tying the above together.
//! - [`edge`]: the client's real address behind proxies: trusted-proxy ranges, the PROXY
//!   protocol (v1 and v2), and the `X-Forwarded-For`, `Forwarded` and `X-Real-IP` headers.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation and the codec the connection uses.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod buf;
pub mod close;
pub mod connection;
pub mod deflate;
pub mod edge;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Config, Connection, Event, Role};
pub use error::Error;
pub use frame::OpCode;
pub use message::Message;
