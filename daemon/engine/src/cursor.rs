//! A bounds-checked reader of integers and byte runs from a byte slice, for the parsers of
//! headers and metadata. Running out of bytes is one typed error, [`Truncated`], which each
//! parser maps to its own (what was being read, which file).

/// Reading `needed` bytes at `at` would run past the end of the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} bytes needed at offset {at}, past the end")]
pub struct Truncated {
    /// Offset of the read.
    pub at: usize,
    /// Bytes it needed.
    pub needed: usize,
}

/// A position in a byte slice; every read advances it.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self::at(bytes, 0)
    }

    /// A cursor at offset `pos` of `bytes` (for fields at fixed offsets); a `pos` past the
    /// end makes every read fail.
    pub fn at(bytes: &'a [u8], pos: usize) -> Self {
        Self { bytes, pos }
    }

    /// Offset of the next read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let truncated = Truncated {
            at: self.pos,
            needed: n,
        };
        let end = self.pos.checked_add(n).ok_or(truncated)?;
        let out = self.bytes.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// The next `N` bytes, as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let at = self.pos;
        self.bytes(N)?
            .try_into()
            .map_err(|_| Truncated { at, needed: N })
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        self.array().map(|[b]| b)
    }

    /// Little-endian `u16`.
    pub fn u16_le(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    /// Big-endian `u16`.
    pub fn u16_be(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_be_bytes)
    }

    /// Little-endian `u32`.
    pub fn u32_le(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    /// Big-endian `u32`.
    pub fn u32_be(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_be_bytes)
    }

    /// Little-endian `u64`.
    pub fn u64_le(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    /// Big-endian `u64`.
    pub fn u64_be(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_byte_orders_in_sequence() {
        let data = [
            1, 0x12, 0x34, 0x34, 0x12, 0, 0, 0, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9,
        ];
        let mut c = Cursor::new(&data);
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u16_be(), Ok(0x1234));
        assert_eq!(c.u16_le(), Ok(0x1234));
        assert_eq!(c.u32_be(), Ok(5));
        assert_eq!(c.u32_le(), Ok(5));
        assert_eq!(c.position(), 13);
        let mut rest = c.clone();
        assert_eq!(c.u64_be(), Ok(9));
        assert_eq!(rest.u64_le(), Ok(9 << 56));
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn truncation_names_where_and_how_much_and_does_not_advance() {
        let mut c = Cursor::at(&[0u8; 6], 4);
        assert_eq!(c.u32_le(), Err(Truncated { at: 4, needed: 4 }));
        assert_eq!(c.position(), 4);
        assert_eq!(c.bytes(2).map(<[u8]>::len), Ok(2));
        assert_eq!(
            c.bytes(usize::MAX),
            Err(Truncated {
                at: 6,
                needed: usize::MAX
            })
        );
        assert!(Cursor::at(&[1, 2], 9).u8().is_err());
        assert_eq!(Cursor::at(&[1, 2], 9).remaining(), 0);
    }
}
