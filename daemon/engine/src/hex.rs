//! Lower-case hex of hashes and ids: how base ids and hashes appear in messages, the API
//! and file names.

use std::fmt::Write;

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses hex (either case) of exactly `N` bytes, e.g. a 32-byte base id.
pub fn decode<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return Err(HexError::Length {
            expected: 2 * N,
            actual: digits.len(),
        });
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

fn nibble(digit: u8) -> Result<u8, HexError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(HexError::Digit),
    }
}

/// Text that is not the hex of the expected number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// Too few or too many digits.
    #[error("expected {expected} hex digits, got {actual}")]
    Length {
        /// Digits expected.
        expected: usize,
        /// Digits given.
        actual: usize,
    },
    /// A character that is not a hex digit.
    #[error("not a hex digit")]
    Digit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(encode(&bytes), "000fa5ff");
        assert_eq!(decode::<4>("000fa5ff"), Ok(bytes));
        assert_eq!(decode::<4>("000FA5FF"), Ok(bytes));
    }

    #[test]
    fn refuses_bad_text() {
        assert_eq!(
            decode::<2>("abc"),
            Err(HexError::Length {
                expected: 4,
                actual: 3
            })
        );
        assert_eq!(decode::<2>("abcg"), Err(HexError::Digit));
        // Multi-byte characters are not digits (and must not split a char).
        assert_eq!(decode::<2>("ab\u{e9}"), Err(HexError::Digit));
    }
}
