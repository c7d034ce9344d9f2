//! A reader's input buffer: bytes read from a socket and not yet parsed.
//!
//! The parsers are sans-IO (`parse(&[u8]) -> need more | one item and its length | error`);
//! this holds what they have not consumed. It grows only as far as one item needs, and the
//! parsers refuse items over [`crate::MAX_INCOMING`], so it stays bounded.

use std::io::{self, ErrorKind, Read};

/// Free space a read gets at least.
const READ_SPACE: usize = 64 << 10;
/// A buffer grown past this for one large message goes back to the small size once empty.
const SHRINK_OVER: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Inbuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbuf {
    pub fn new() -> Self {
        Inbuf { buf: vec![0; READ_SPACE], start: 0, end: 0 }
    }

    /// The unparsed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The parser used `n` bytes.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SHRINK_OVER {
                self.buf = vec![0; READ_SPACE];
            }
        }
    }

    /// One read into the free space; `Ok(0)` when the peer closed.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_SPACE {
            let len = (self.buf.len() * 2).max(self.end + READ_SPACE);
            self.buf.resize(len, 0);
        }
        loop {
            match r.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unconsumed_bytes_across_reads_and_shrinks_when_empty() {
        let mut b = Inbuf::new();
        let big = vec![7u8; 3 << 20];
        let mut src = &big[..];
        while b.read_from(&mut src).unwrap() > 0 {}
        assert_eq!(b.data().len(), big.len());
        b.consume(10);
        let mut more = &b"xy"[..];
        b.read_from(&mut more).unwrap();
        assert_eq!(b.data().len(), big.len() - 10 + 2);
        assert_eq!(&b.data()[b.data().len() - 2..], b"xy");
        b.consume(usize::MAX);
        assert!(b.data().is_empty());
        assert_eq!(b.buf.len(), READ_SPACE);
    }
}
