//! A fixed-size set of chunk, page or record numbers, one bit each: an overlay can name
//! millions of them, where a hash set would spend tens of bytes on every one.

use crate::format::FormatError;

/// A bitmap over `0..len` (e.g. to check that no chunk is set twice).
pub(crate) struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    /// All clear; refused when `len` bits do not fit in memory's address space.
    pub(crate) fn new(len: u64) -> Result<Self, FormatError> {
        let words = usize::try_from(len.div_ceil(64))
            .map_err(|_| FormatError::Invalid("image too large".into()))?;
        Ok(Self {
            words: vec![0; words],
            len,
        })
    }

    /// Sets bit `i`; false if it was already set or is out of range.
    pub(crate) fn insert(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let Some(word) = usize::try_from(i / 64)
            .ok()
            .and_then(|w| self.words.get_mut(w))
        else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    /// Whether bit `i` is set (false out of range).
    // Only the codec asks; the format's checks only insert.
    #[cfg_attr(not(feature = "codec"), allow(dead_code))]
    pub(crate) fn contains(&self, i: u64) -> bool {
        usize::try_from(i / 64)
            .ok()
            .and_then(|w| self.words.get(w))
            .is_some_and(|word| word & (1u64 << (i % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_reports_fresh_bits_and_range() {
        let mut b = Bitmap::new(130).unwrap();
        assert!(b.insert(0));
        assert!(b.insert(129));
        assert!(!b.insert(129), "already set");
        assert!(!b.insert(130), "out of range");
        assert!(b.contains(0) && b.contains(129));
        assert!(!b.contains(64) && !b.contains(130) && !b.contains(u64::MAX));
    }
}
