//! A byte buffer that costs one word while it holds nothing.
//!
//! A connection keeps three buffers that most connections never use, or use only for a moment:
//! the message being assembled, a control payload split across reads, and its own output. As
//! `Vec`s they cost 24 bytes each on every idle connection; boxed lazily they cost 8, and one
//! more indirection only while in use.

/// The boxed buffer: one word inline instead of three is the point (hence the box around a
/// collection), and the box moves whole, to and from a thread's spare.
#[allow(clippy::box_collection)]
pub(crate) type BoxedVec = Box<Vec<u8>>;

/// A `Vec<u8>` made on first use: `None` until then, and again after [`ThinBuf::release`].
#[derive(Debug, Default)]
pub(crate) struct ThinBuf(Option<BoxedVec>);

impl ThinBuf {
    pub(crate) const fn new() -> Self {
        ThinBuf(None)
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the buffer itself (the box around it is not counted: it is constant).
    pub(crate) fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.capacity())
    }

    /// The buffer, made empty if there was none.
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Box::default)
    }

    /// Empties it, keeping the allocation for the next use.
    pub(crate) fn clear(&mut self) {
        if let Some(v) = &mut self.0 {
            v.clear();
        }
    }

    /// Lets go of the allocation.
    pub(crate) fn release(&mut self) {
        self.0 = None;
    }

    /// Takes the buffer out (with its allocation), leaving none.
    pub(crate) fn take_box(&mut self) -> Option<BoxedVec> {
        self.0.take()
    }

    /// Puts a buffer in, replacing whatever was there.
    pub(crate) fn set_box(&mut self, buf: Option<BoxedVec>) {
        self.0 = buf;
    }

    /// Takes the bytes, leaving none.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|v| *v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_word_and_no_heap_until_used() {
        assert_eq!(std::mem::size_of::<ThinBuf>(), std::mem::size_of::<usize>());
        let mut b = ThinBuf::new();
        assert_eq!((b.len(), b.capacity(), b.as_slice()), (0, 0, &[][..]));
        b.vec().extend_from_slice(b"abc");
        assert_eq!(b.as_slice(), b"abc");
        b.clear();
        assert!(b.is_empty() && b.capacity() >= 3);
        b.vec().push(1);
        assert_eq!(b.take(), vec![1]);
        assert_eq!(b.capacity(), 0);
        b.vec().push(2);
        b.release();
        assert_eq!((b.len(), b.capacity()), (0, 0));
    }
}
