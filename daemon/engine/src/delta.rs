//! Bit-level deltas of one chunk against the base chunk at the same position (xdelta3,
//! VCDIFF). The only module that calls xdelta3.

use crate::chunk::{Chunk, CHUNK_SIZE_BYTES};

/// Deltas this close to a raw chunk are not worth their decode cost: store raw instead.
const MIN_SAVING_BYTES: usize = 64;

/// Encodes `target` as a delta against `source`; `None` when the delta would not be at
/// least [`MIN_SAVING_BYTES`] smaller than the raw chunk.
pub fn encode(target: &Chunk, source: &Chunk) -> Option<Vec<u8>> {
    let delta = xdelta3::encode(target, source)?;
    (delta.len() + MIN_SAVING_BYTES <= CHUNK_SIZE_BYTES).then_some(delta)
}

/// Applies a delta made by [`encode`] to `source`, writing the chunk into `out`. Returns
/// false when the delta is malformed or does not rebuild exactly one chunk.
pub fn apply(delta: &[u8], source: &Chunk, out: &mut Chunk) -> bool {
    match xdelta3::decode(delta, source) {
        Some(bytes) if bytes.len() == CHUNK_SIZE_BYTES => {
            out.copy_from_slice(&bytes);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_change_gives_small_delta_that_applies() {
        let source: Chunk = std::array::from_fn(|i| (i * 7 % 251) as u8);
        let mut target = source;
        target[100..110].copy_from_slice(b"0123456789");
        let delta = encode(&target, &source).expect("delta worth it");
        assert!(delta.len() < 100, "delta is {} bytes", delta.len());
        let mut out = [0u8; CHUNK_SIZE_BYTES];
        assert!(apply(&delta, &source, &mut out));
        assert_eq!(out, target);
    }

    #[test]
    fn unrelated_chunk_gives_no_delta() {
        let source = [0u8; CHUNK_SIZE_BYTES];
        let mut state = 0x1234_5678_u32;
        let target: Chunk = std::array::from_fn(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        });
        assert!(encode(&target, &source).is_none());
    }

    #[test]
    fn garbage_delta_is_rejected() {
        let source = [1u8; CHUNK_SIZE_BYTES];
        let mut out = [0u8; CHUNK_SIZE_BYTES];
        assert!(!apply(
            &[0xd6, 0xc3, 0xc4, 0, 0, 1, 2, 3],
            &source,
            &mut out
        ));
        assert!(!apply(&[], &source, &mut out));
    }
}
