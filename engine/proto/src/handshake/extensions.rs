//! `Sec-WebSocket-Extensions` offers (RFC 6455 section 9.1), parsed into names and parameters.
//!
//! Parsing only: which extension to accept, and with which parameters, is the caller's choice.

use std::borrow::Cow;

use crate::error::Error;

use super::headers::{is_tchar, is_token};

/// One extension offer: the extension's name and its parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer<'b> {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: &'b str,
    /// The parameters: name and optional value. A quoted value is unquoted; it is `Owned` only
    /// when it held backslash escapes.
    pub params: Vec<(&'b str, Option<Cow<'b, str>>)>,
}

/// Parses `Sec-WebSocket-Extensions` values (each repeated header separately) as RFC 6455
/// section 9.1 says:
///
/// ```text
/// extension-list = 1#extension
/// extension      = token *( ";" param )
/// param          = token [ "=" ( token | quoted-string ) ]
/// ```
///
/// A quoted value must be a token once unquoted (section 9.1). Whitespace is allowed around
/// `,`, `;` and `=`, and empty list elements are skipped (RFC 9110 section 5.6.1). Anything else
/// is [`Error::BadExtensions`]. No values: an empty `Vec`, which does not allocate.
pub fn parse_extensions<'b>(
    values: impl Iterator<Item = &'b [u8]>,
) -> Result<Vec<ExtensionOffer<'b>>, Error> {
    let mut offers = Vec::new();
    for value in values {
        parse_extension_list(value, &mut offers).ok_or(Error::BadExtensions)?;
    }
    Ok(offers)
}

/// Parses one header value of extension offers onto `offers`; `None` on a syntax error.
fn parse_extension_list<'b>(value: &'b [u8], offers: &mut Vec<ExtensionOffer<'b>>) -> Option<()> {
    let mut cur = Cursor { bytes: value, pos: 0 };
    loop {
        cur.skip_ows();
        match cur.peek() {
            None => return Some(()),
            Some(b',') => {
                cur.pos += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = cur.token()?;
        let mut params = Vec::new();
        loop {
            cur.skip_ows();
            match cur.peek() {
                None | Some(b',') => break,
                Some(b';') => cur.pos += 1,
                Some(_) => return None,
            }
            cur.skip_ows();
            let param = cur.token()?;
            cur.skip_ows();
            let mut param_value = None;
            if cur.peek() == Some(b'=') {
                cur.pos += 1;
                cur.skip_ows();
                param_value = Some(if cur.peek() == Some(b'"') {
                    let unquoted = cur.quoted_string()?;
                    is_token(unquoted.as_bytes()).then_some(unquoted)?
                } else {
                    Cow::Borrowed(cur.token()?)
                });
            }
            params.push((param, param_value));
        }
        offers.push(ExtensionOffer { name, params });
    }
}

/// A read position in a header value. Every access goes through `get`, so no input can make
/// it panic.
struct Cursor<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Cursor<'b> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// `1*tchar`.
    fn token(&mut self) -> Option<&'b str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        let token = self.bytes.get(start..self.pos)?;
        if token.is_empty() {
            return None;
        }
        std::str::from_utf8(token).ok()
    }

    /// A `quoted-string` (RFC 9110 section 5.6.4) starting at the opening quote, unquoted.
    fn quoted_string(&mut self) -> Option<Cow<'b, str>> {
        self.pos += 1;
        let start = self.pos;
        // Only built once a backslash escape makes the value differ from the raw bytes.
        let mut unescaped: Option<Vec<u8>> = None;
        loop {
            match self.peek()? {
                b'"' => {
                    let raw = self.bytes.get(start..self.pos)?;
                    self.pos += 1;
                    return match unescaped {
                        None => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
                        Some(v) => String::from_utf8(v).ok().map(Cow::Owned),
                    };
                }
                b'\\' => {
                    let before = self.bytes.get(start..self.pos)?;
                    self.pos += 1;
                    let escaped = self.peek().filter(|&b| b == b'\t' || b >= 0x20 && b != 0x7f)?;
                    unescaped.get_or_insert_with(|| before.to_vec()).push(escaped);
                    self.pos += 1;
                }
                b if b == b'\t' || b >= 0x20 && b != 0x7f => {
                    if let Some(v) = unescaped.as_mut() {
                        v.push(b);
                    }
                    self.pos += 1;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::test_util::{get, rejected};
    use crate::handshake::{parse_request, validate, HandshakeConfig};

    #[test]
    fn extension_offers_are_parsed() {
        let buf = get(
            &[],
            &[
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo; a=\"10\"",
                "Sec-WebSocket-Extensions: x-bar ; b = 2 ; c=\"1\\5\",, ",
            ],
        );
        let req = parse_request(&buf, &HandshakeConfig::default()).unwrap().unwrap();
        let accept = validate(&req, &HandshakeConfig::default()).unwrap();
        assert_eq!(
            accept.extensions,
            vec![
                ExtensionOffer {
                    name: "permessage-deflate",
                    params: vec![("client_max_window_bits", None)],
                },
                ExtensionOffer { name: "x-foo", params: vec![("a", Some(Cow::Borrowed("10")))] },
                ExtensionOffer {
                    name: "x-bar",
                    params: vec![("b", Some("2".into())), ("c", Some("15".into()))],
                },
            ]
        );
        assert!(matches!(accept.extensions[1].params[0].1, Some(Cow::Borrowed(_))));
        assert!(matches!(accept.extensions[2].params[1].1, Some(Cow::Owned(_))));

        let mut out = Vec::new();
        accept.write_response(Some("permessage-deflate"), &mut out);
        assert!(out.ends_with(b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
    }

    #[test]
    fn bad_extension_syntax_is_400() {
        for bad in [
            "permessage-deflate; client_max_window_bits, x-foo; a=\"b c\"",
            "; a",
            "foo;",
            "foo; =1",
            "foo; a=",
            "foo; a=\"\"",
            "foo; a=\"10",
            "foo; a=\"1\\",
            "foo bar",
            "foo; a=1 2",
            "f\u{e9}e",
            "foo, \"bar\"",
        ] {
            let buf = get(&[], &[&format!("Sec-WebSocket-Extensions: {bad}")]);
            let e = rejected(&buf, &HandshakeConfig::default());
            assert_eq!(e, Error::BadExtensions, "{bad}");
            assert_eq!(e.http_status(), Some(400));
        }
        assert_eq!(parse_extensions([b"a, b" as &[u8]].into_iter()).unwrap().len(), 2);
    }
}
