//! Negotiating permessage-deflate (RFC 7692 section 7.1): the server's choice among the
//! client's offers, and the client's offer and its check of the server's answer.
//!
//! Offers come parsed by [`crate::handshake::parse_extensions`] (any number of headers and
//! offers, quoted values already unquoted). Names and parameter names are compared exactly, as
//! the RFC spells them.

use std::fmt::Write as _;

use crate::error::Error;
use crate::handshake::{parse_extensions, ExtensionOffer};

use super::{DeflateParams, EXTENSION_NAME};

/// How the server compresses what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeflateMode {
    /// Every message is compressed with a fresh context (the response always carries
    /// `server_no_context_takeover`), so one compressor per worker serves every connection
    /// ([`super::SharedDeflaters`]) and no connection holds compressor memory while idle. The
    /// window is the client's limit if it sets one, else 15 bits.
    Shared,
    /// Each connection has its own compressor that keeps context between messages (unless the
    /// client asks for `server_no_context_takeover`): better ratios for streams of similar
    /// messages, at a few hundred KiB per connection (docs/tuning.md has the measured figures).
    /// `window_bits` (9..=15, clamped) caps the window; a client's smaller limit wins.
    Dedicated {
        /// Base-2 logarithm of the largest window, 9..=15.
        window_bits: u8,
    },
}

/// The server's permessage-deflate policy. Build it with [`DeflateConfig::shared`] or
/// [`DeflateConfig::dedicated`], then adjust the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// How the server compresses.
    pub mode: DeflateMode,
    /// Whether clients may keep context between their messages. `false` puts
    /// `client_no_context_takeover` in every response, so the server's inflate state exists
    /// only while a compressed message is being read.
    pub allow_client_context_takeover: bool,
    /// The window the server asks clients to compress with (9..=15, clamped), where the offer
    /// lets it (`client_max_window_bits` offered). It saves the server no memory (zlib-rs
    /// inflates with a 32 KiB window whatever was agreed) and is not enforced below 32 KiB;
    /// leave it at 15 unless clients must be held to less.
    pub client_max_window_bits: u8,
    /// zlib's compression level for the server's sends, 0 (store) to 9 (best), clamped.
    pub level: u32,
}

impl DeflateConfig {
    /// [`DeflateMode::Shared`], no client context takeover, 15-bit client window, level 1:
    /// no per-connection compression memory while idle.
    pub fn shared() -> Self {
        DeflateConfig {
            mode: DeflateMode::Shared,
            allow_client_context_takeover: false,
            client_max_window_bits: 15,
            level: 1,
        }
    }

    /// [`DeflateMode::Dedicated`] with `window_bits`, client context takeover allowed, 15-bit
    /// client window, level 1.
    pub fn dedicated(window_bits: u8) -> Self {
        DeflateConfig {
            mode: DeflateMode::Dedicated { window_bits },
            allow_client_context_takeover: true,
            client_max_window_bits: 15,
            level: 1,
        }
    }
}

/// The server's acceptance of one offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// What was agreed.
    pub params: DeflateParams,
    /// The `Sec-WebSocket-Extensions` value to answer with, e.g.
    /// `permessage-deflate; server_no_context_takeover`.
    pub response: String,
}

/// One offer's parameters, each at most once and with a valid value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// The server side: the first `permessage-deflate` offer in `offers` that is valid, answered as
/// `config` says; `None` (answer without the extension) if there is none.
///
/// An offer is declined, and the next one tried, if it has a parameter the RFC does not define
/// for offers, a parameter twice, or a bad value (RFC 7692 section 7: a window outside 8..=15 or
/// with a leading zero, a value on a no-context-takeover flag). Every valid offer can be
/// honoured: a requested window of 8 is served (see [`DeflateParams`]), and the server may
/// always add `server_no_context_takeover` or `client_no_context_takeover`. The response names
/// `server_max_window_bits` and `client_max_window_bits` only where the offer did, with values
/// no larger than offered.
pub fn negotiate(offers: &[ExtensionOffer<'_>], config: &DeflateConfig) -> Option<Negotiated> {
    offers
        .iter()
        .filter(|o| o.name == EXTENSION_NAME)
        .find_map(|o| parse_offer(&o.params, Side::Offer))
        .map(|offer| answer(offer, config))
}

fn answer(offer: Offer, config: &DeflateConfig) -> Negotiated {
    let (own_bits, own_no_takeover) = match config.mode {
        DeflateMode::Shared => (15, true),
        DeflateMode::Dedicated { window_bits } => (window_bits.clamp(9, 15), false),
    };
    let server_no_context_takeover = own_no_takeover || offer.server_no_context_takeover;
    let client_no_context_takeover =
        offer.client_no_context_takeover || !config.allow_client_context_takeover;
    let server_max_window_bits = offer.server_max_window_bits.map_or(own_bits, |b| b.min(own_bits));
    // Named in the response only if offered (section 7.1.2.2), never above the offered value.
    let client_bits = offer
        .client_max_window_bits
        .map(|offered| config.client_max_window_bits.clamp(9, 15).min(offered.unwrap_or(15)));
    let mut response = String::from(EXTENSION_NAME);
    if server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if offer.server_max_window_bits.is_some() {
        let _ = write!(response, "; server_max_window_bits={server_max_window_bits}");
    }
    if let (Some(offered), Some(bits)) = (offer.client_max_window_bits, client_bits) {
        // A bare offer answered with 15 says nothing the client would not assume.
        if offered.is_some() || bits < 15 {
            let _ = write!(response, "; client_max_window_bits={bits}");
        }
    }
    let params = DeflateParams {
        server_no_context_takeover,
        client_no_context_takeover,
        server_max_window_bits,
        client_max_window_bits: client_bits.unwrap_or(15),
    };
    Negotiated { params, response }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A client's offer: `client_max_window_bits` may come without a value.
    Offer,
    /// A server's response: every window parameter has a value.
    Response,
}

/// The parameters of one offer or response; `None` if any is unknown, repeated or invalid.
fn parse_offer(params: &[(&str, Option<std::borrow::Cow<'_, str>>)], side: Side) -> Option<Offer> {
    let mut offer = Offer::default();
    for (name, value) in params {
        let value = value.as_deref();
        match *name {
            "server_no_context_takeover" if !offer.server_no_context_takeover => {
                value.is_none().then_some(())?;
                offer.server_no_context_takeover = true;
            }
            "client_no_context_takeover" if !offer.client_no_context_takeover => {
                value.is_none().then_some(())?;
                offer.client_no_context_takeover = true;
            }
            "server_max_window_bits" if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(value?)?);
            }
            "client_max_window_bits" if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match (value, side) {
                    (None, Side::Offer) => None,
                    (None, Side::Response) => return None,
                    (Some(v), _) => Some(window_bits(v)?),
                });
            }
            // Unknown, or a second occurrence.
            _ => return None,
        }
    }
    Some(offer)
}

/// `1*DIGIT` without leading zeroes, 8..=15 (RFC 7692 section 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    Some(match value {
        "8" => 8,
        "9" => 9,
        "10" => 10,
        "11" => 11,
        "12" => 12,
        "13" => 13,
        "14" => 14,
        "15" => 15,
        _ => return None,
    })
}

/// The client side: what to offer, and the check of the server's answer to it. The four
/// fields are the RFC's four parameters, so the struct is not expected to grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateOffer {
    /// Ask the server to compress every message with a fresh context.
    pub server_no_context_takeover: bool,
    /// Say this client compresses every message with a fresh context.
    pub client_no_context_takeover: bool,
    /// Ask the server to use at most this window (8..=15).
    pub server_max_window_bits: Option<u8>,
    /// Offer `client_max_window_bits` (the server may then limit the client's window): 15 is
    /// written without a value, a smaller value also promises this client stays within it.
    pub client_max_window_bits: Option<u8>,
}

impl Default for DeflateOffer {
    /// `permessage-deflate; client_max_window_bits`, as browsers offer it.
    fn default() -> Self {
        DeflateOffer {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: Some(15),
        }
    }
}

impl DeflateOffer {
    /// The `Sec-WebSocket-Extensions` value to send, e.g.
    /// `permessage-deflate; client_max_window_bits`. Window values are clamped to 8..=15.
    pub fn header_value(&self) -> String {
        let mut value = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            value.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            let _ = write!(value, "; server_max_window_bits={}", bits.clamp(8, 15));
        }
        match self.client_max_window_bits.map(|b| b.clamp(8, 15)) {
            None => {}
            Some(15) => value.push_str("; client_max_window_bits"),
            Some(bits) => {
                let _ = write!(value, "; client_max_window_bits={bits}");
            }
        }
        value
    }

    /// Checks the server's `Sec-WebSocket-Extensions` answer (as
    /// [`crate::handshake::ClientAccepted::extensions`] holds it) to this offer.
    ///
    /// `Ok(None)`: the server declined; talk uncompressed. `Ok(Some(params))`: enable it on the
    /// connection. [`Error::BadResponse`] (fail the connection, RFC 7692 section 7.1) if the
    /// answer names another extension or permessage-deflate twice, has an unknown, repeated or
    /// invalid parameter, `client_max_window_bits` that was not offered or is above the offered
    /// value, a `server_max_window_bits` above the requested one or missing although requested,
    /// or lacks a requested `server_no_context_takeover`.
    pub fn accept(&self, response: Option<&str>) -> Result<Option<DeflateParams>, Error> {
        let Some(response) = response else {
            return Ok(None);
        };
        let elements = parse_extensions(std::iter::once(response.as_bytes()))
            .map_err(|_| Error::BadResponse("Sec-WebSocket-Extensions does not parse"))?;
        let element = match elements.as_slice() {
            [] => return Ok(None),
            [one] if one.name == EXTENSION_NAME => one,
            [_] => return Err(Error::BadResponse("the server chose an extension not offered")),
            _ => return Err(Error::BadResponse("the server chose more than one extension")),
        };
        let answer = parse_offer(&element.params, Side::Response)
            .ok_or(Error::BadResponse("invalid permessage-deflate parameters"))?;
        let asked_server_bits = self.server_max_window_bits.map(|b| b.clamp(8, 15));
        let offered_client_bits = self.client_max_window_bits.map(|b| b.clamp(8, 15));
        if self.server_no_context_takeover && !answer.server_no_context_takeover {
            return Err(Error::BadResponse("server_no_context_takeover was requested"));
        }
        let server_max_window_bits = match (asked_server_bits, answer.server_max_window_bits) {
            (Some(_), None) => {
                return Err(Error::BadResponse("server_max_window_bits was requested"));
            }
            (Some(asked), Some(got)) if got > asked => {
                return Err(Error::BadResponse("server_max_window_bits above the request"));
            }
            (_, got) => got.unwrap_or(15),
        };
        let client_max_window_bits = match (offered_client_bits, answer.client_max_window_bits) {
            (None, Some(_)) => {
                return Err(Error::BadResponse("client_max_window_bits was not offered"));
            }
            (Some(offered), Some(Some(got))) if got > offered => {
                return Err(Error::BadResponse("client_max_window_bits above the offer"));
            }
            (_, Some(got)) => got.unwrap_or(15),
            (offered, None) => offered.unwrap_or(15),
        };
        Ok(Some(DeflateParams {
            server_no_context_takeover: answer.server_no_context_takeover,
            client_no_context_takeover: answer.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
        }))
    }
}

#[cfg(test)]
mod tests;
