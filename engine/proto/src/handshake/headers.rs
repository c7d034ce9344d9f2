//! Pieces of HTTP field syntax (RFC 9110 section 5.6) shared by requests, responses and
//! extension offers: tokens, optional whitespace, comma-separated lists, the end of a head.
//!
//! They work on borrowed bytes and allocate nothing; they know nothing of WebSocket.

/// Whether `buf` holds an empty line: CRLF CRLF, or the bare-LF forms httparse also accepts
/// (RFC 9112 section 2.2 lets a recipient take LF alone as a line terminator).
pub(super) fn has_blank_line(buf: &[u8]) -> bool {
    let mut rest = buf;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        rest = rest.get(i + 1..).unwrap_or_default();
        if matches!(rest, [b'\n', ..] | [b'\r', b'\n', ..]) {
            return true;
        }
    }
    false
}

/// The only item of `items`, if there is exactly one.
pub(super) fn single<T>(mut items: impl Iterator<Item = T>) -> Option<T> {
    match (items.next(), items.next()) {
        (Some(item), None) => Some(item),
        _ => None,
    }
}

/// Whether a comma-separated list, spread over any number of header values, holds `token`
/// (ASCII case-insensitively).
pub(super) fn has_token<'a>(values: impl Iterator<Item = &'a [u8]>, token: &str) -> bool {
    values
        .flat_map(|value| value.split(|&b| b == b','))
        .any(|item| trim_ows(item).eq_ignore_ascii_case(token.as_bytes()))
}

pub(super) fn is_ows_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `bytes` without leading and trailing optional whitespace (SP and HTAB, RFC 9110 5.6.3).
pub(super) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ' && b != b'\t');
    let end = bytes.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(start), Some(end)) => bytes.get(start..=end).unwrap_or_default(),
        _ => &[],
    }
}

/// `tchar` of RFC 9110 section 5.6.2.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}
