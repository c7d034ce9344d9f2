//! Incremental, fail-fast UTF-8 validation for text messages.
//!
//! A text message may arrive in many frames and each frame in many reads, so a code point can be
//! split anywhere. [`Validator`] keeps the (at most three) bytes of an unfinished code point
//! between calls and fails as soon as the bytes seen so far can never become valid UTF-8
//! (RFC 6455 section 8.1; Autobahn cases 6.4.x), not only when the message ends. The bulk of the
//! work is `simdutf8`'s compat API, which reports whether an error is a real one or just the end
//! of the input.

use crate::error::Error;

/// Validates a whole slice at once: the fast path for a text message that arrived complete.
#[inline]
pub fn validate(bytes: &[u8]) -> Result<&str, Error> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| Error::InvalidUtf8)
}

/// Validation state carried across the pieces of one text message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Validator {
    /// The start of a code point whose remaining bytes have not arrived yet.
    carry: [u8; 4],
    carry_len: u8,
}

impl Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Validator { carry: [0; 4], carry_len: 0 }
    }

    /// Whether the bytes seen so far end on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }

    /// Checks the next piece of the message. Fails if the bytes seen so far can never be the
    /// prefix of valid UTF-8.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        if self.carry_len > 0 {
            // Finish the split code point with as few bytes as it needs (at most 3 more).
            let have = usize::from(self.carry_len);
            let need = sequence_len(self.carry[0]).ok_or(Error::InvalidUtf8)?;
            let take = (need - have).min(bytes.len());
            self.carry[have..have + take].copy_from_slice(&bytes[..take]);
            let len = have + take;
            match simdutf8::compat::from_utf8(&self.carry[..len]) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix: every byte of the piece went into the carry.
                    self.carry_len = len as u8;
                    return Ok(());
                }
                Err(_) => return Err(Error::InvalidUtf8),
            }
            bytes = &bytes[take..];
        }
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Error::InvalidUtf8),
        }
    }

    /// Ends the message: fails if it stopped inside a code point. Resets for the next message.
    pub fn finish(&mut self) -> Result<(), Error> {
        let complete = self.is_complete();
        *self = Validator::new();
        if complete {
            Ok(())
        } else {
            Err(Error::InvalidUtf8)
        }
    }
}

/// The length of the sequence a lead byte starts, or `None` if it cannot start one.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> Vec<Result<(), Error>> {
        // Every way of cutting the input into two pieces, and byte by byte.
        let mut results = Vec::new();
        for cut in 0..=bytes.len() {
            let mut v = Validator::new();
            let r =
                v.feed(&bytes[..cut]).and_then(|_| v.feed(&bytes[cut..])).and_then(|_| v.finish());
            results.push(r);
        }
        let mut v = Validator::new();
        let r =
            bytes.iter().try_for_each(|b| v.feed(std::slice::from_ref(b))).and_then(|_| v.finish());
        results.push(r);
        results
    }

    #[test]
    fn agrees_with_std_at_every_split() {
        let samples: &[&[u8]] = &[
            b"",
            b"hello",
            "κόσμε".as_bytes(),
            "𝄞 music, 中文, ü".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // surrogate
            b"\xf4\x90\x80\x80",                                               // > U+10FFFF
            b"\xc0\xaf",                                                       // overlong
            b"\xe0\x80\xaf",
            b"abc\xf0\x9f\x98",  // truncated at the end
            b"\xf0\x9f\x98\x80", // 😀
            b"\xff",
            b"\x80",
        ];
        for s in samples {
            let expected = std::str::from_utf8(s).is_ok();
            for r in split_everywhere(s) {
                assert_eq!(r.is_ok(), expected, "{s:?}");
            }
        }
    }

    #[test]
    fn fails_as_soon_as_a_prefix_is_hopeless() {
        // Autobahn 6.4.1: the first piece ends in the middle of an invalid code point
        // (F4 90 cannot start anything valid): fail on that piece, not at the end.
        let mut v = Validator::new();
        assert_eq!(v.feed(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(Error::InvalidUtf8));

        let mut v = Validator::new();
        assert_eq!(v.feed(b"\xed"), Ok(()));
        assert_eq!(v.feed(b"\xa0"), Err(Error::InvalidUtf8)); // surrogate half

        let mut v = Validator::new();
        assert_eq!(v.feed(b"\xf0\x9f"), Ok(()));
        assert!(!v.is_complete());
        assert_eq!(v.feed(b""), Ok(()));
        assert_eq!(v.feed(b"\x98"), Ok(()));
        assert_eq!(v.feed(b"\x80!"), Ok(()));
        assert_eq!(v.finish(), Ok(()));

        let mut v = Validator::new();
        assert_eq!(v.feed(b"ok\xe2\x82"), Ok(()));
        assert_eq!(v.finish(), Err(Error::InvalidUtf8));
        // finish resets: the next message starts clean.
        assert_eq!(v.feed(b"fine"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn whole_slice_validation() {
        assert_eq!(validate(b"abc"), Ok("abc"));
        assert_eq!(validate(b"a\xffc"), Err(Error::InvalidUtf8));
    }
}
