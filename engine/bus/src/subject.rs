//! Topic names to bus subjects and back.
//!
//! A topic is any UTF-8 string of 1 to [`MAX_TOPIC_LEN`] bytes. A NATS subject cannot hold
//! spaces, treats `*` and `>` as wildcards and `.` as a token separator (with no empty tokens);
//! a Redis channel takes any bytes. One mapping serves both, so that an operator reads the same
//! names on either bus:
//!
//! - the subject is [`PREFIX`] (`ringside.`) followed by the topic;
//! - bytes in `[A-Za-z0-9_-]` stay as they are;
//! - a `.` stays a `.` when it separates two non-empty tokens (`price.EURUSD` becomes
//!   `ringside.price.EURUSD`, so NATS wildcards such as `ringside.price.>` work), and is escaped
//!   as `%2E` when it would make an empty token (first, last, or next to another `.`);
//! - every other byte (space, `*`, `>`, `%`, control bytes, each byte of a non-ASCII character)
//!   becomes `%XX` with upper-case hex.
//!
//! The mapping is one-to-one: [`topic`] inverts [`subject`] and accepts nothing else. A subject is
//! at most [`MAX_SUBJECT_LEN`] bytes (every byte escaped), which keeps a NATS `PUB`/`MSG` line
//! under the server's default 4096-byte control-line limit.

/// What every subject starts with: keeps Ringside's traffic apart from anything else on the bus.
pub const PREFIX: &str = "ringside.";
/// The longest topic name (the server's limit too).
pub const MAX_TOPIC_LEN: usize = 1024;
/// The longest subject [`subject`] returns.
pub const MAX_SUBJECT_LEN: usize = PREFIX.len() + 3 * MAX_TOPIC_LEN;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The bus subject for `topic`; `None` if the topic is empty or longer than [`MAX_TOPIC_LEN`].
pub fn subject(topic: &str) -> Option<String> {
    let bytes = topic.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_TOPIC_LEN {
        return None;
    }
    let mut out = String::with_capacity(PREFIX.len() + bytes.len());
    out.push_str(PREFIX);
    for (i, &b) in bytes.iter().enumerate() {
        let separates = b == b'.'
            && i > 0
            && i + 1 < bytes.len()
            && bytes[i - 1] != b'.'
            && bytes[i + 1] != b'.';
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || separates {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    Some(out)
}

/// The topic `subject` stands for, if [`subject`] made it (anything else is `None`).
pub fn topic(subject: &str) -> Option<String> {
    let escaped = subject.strip_prefix(PREFIX)?.as_bytes();
    if escaped.len() > MAX_SUBJECT_LEN - PREFIX.len() {
        return None;
    }
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        if escaped[i] == b'%' {
            let hi = hex_digit(*escaped.get(i + 1)?)?;
            let lo = hex_digit(*escaped.get(i + 2)?)?;
            bytes.push(hi << 4 | lo);
            i += 3;
        } else {
            bytes.push(escaped[i]);
            i += 1;
        }
    }
    let topic = String::from_utf8(bytes).ok()?;
    // Only the canonical spelling maps back: `%2e`, `%41` or a stray `*` would otherwise name a
    // topic whose subject is something else.
    (self::subject(&topic)?.as_str() == subject).then_some(topic)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What a NATS server accepts as a literal (non-wildcard) subject.
    fn valid_nats_literal(s: &str) -> bool {
        s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && !t.bytes().any(|b| b <= b' ' || b == 0x7f)
        }) && !s.contains(['*', '>'])
    }

    #[test]
    fn examples() {
        let cases = [
            ("price.EURUSD", "ringside.price.EURUSD"),
            ("game-42_x", "ringside.game-42_x"),
            ("a b", "ringside.a%20b"),
            ("*", "ringside.%2A"),
            ("a.>", "ringside.a.%3E"),
            ("100%", "ringside.100%25"),
            (".", "ringside.%2E"),
            (".a.", "ringside.%2Ea%2E"),
            ("a..b", "ringside.a%2E%2Eb"),
            ("é", "ringside.%C3%A9"),
            ("\r\n", "ringside.%0D%0A"),
        ];
        for (topic, subj) in cases {
            assert_eq!(subject(topic).as_deref(), Some(subj), "{topic:?}");
            assert_eq!(super::topic(subj).as_deref(), Some(topic), "{subj:?}");
            assert!(valid_nats_literal(subj), "{subj:?}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(subject(""), None);
        let longest = "*".repeat(MAX_TOPIC_LEN);
        assert_eq!(subject(&longest).unwrap().len(), MAX_SUBJECT_LEN);
        assert_eq!(subject(&"a".repeat(MAX_TOPIC_LEN + 1)), None);
    }

    #[test]
    fn only_canonical_subjects_decode() {
        for s in [
            "price.EURUSD",
            "ringside.",
            "ringside.%2e",
            "ringside.%41",
            "ringside.%2",
            "ringside.%zz",
            "ringside.a b",
            "ringside.*",
            "ringside..a",
            "ringside.%FF",
        ] {
            assert_eq!(topic(s), None, "{s:?}");
        }
        assert_eq!(topic(&format!("ringside.{}", "a".repeat(MAX_TOPIC_LEN + 1))), None);
    }

    proptest! {
        #[test]
        fn round_trips_and_stays_a_literal_nats_subject(topic in "\\PC{1,40}|[. *>%a]{1,12}") {
            let subj = subject(&topic).unwrap();
            prop_assert!(subj.len() <= MAX_SUBJECT_LEN);
            prop_assert!(valid_nats_literal(&subj), "{}", subj);
            prop_assert_eq!(super::topic(&subj), Some(topic));
        }

        #[test]
        fn decoding_anything_never_panics(s in "\\PC{0,40}") {
            if let Some(t) = topic(&s) {
                prop_assert_eq!(subject(&t), Some(s));
            }
        }
    }
}
