//! Classifying one modified chunk against the base: the dedup and delta rules of the
//! overlay, in their order of preference. Intra-overlay references (a chunk identical to an
//! earlier chunk of the same overlay) need the overlay's history, so the encoder applies
//! that rule after this one.

use crate::base::{Base, BaseError};
use crate::chunk::{
    hash_chunk, is_zero, zero_chunk_hash, Chunk, ChunkHash, ImageKind, CHUNK_SIZE_BYTES,
};
use crate::delta;
use crate::hashlist::Location;

/// What a chunk is, relative to the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Same bytes as the base chunk at the same position: not stored.
    Unchanged,
    /// All zero.
    Zero,
    /// Identical to this base chunk.
    BaseRef(Location),
    /// New content: stored in the overlay (as a reference to an identical chunk stored
    /// earlier, a delta, or raw).
    New,
}

/// Classifies chunk `index` of image `kind` with content `data` against the base; returns
/// the class and the chunk's hash. Reads nothing: the base's hash list and index answer.
pub fn classify(base: &Base, kind: ImageKind, index: u64, data: &Chunk) -> (Class, ChunkHash) {
    // Zero pages dominate guest memory: recognizing them is cheaper than hashing them.
    let (hash, zero) = if is_zero(data) {
        (zero_chunk_hash(), true)
    } else {
        (hash_chunk(data), false)
    };
    let base_hash = base.hash_at(Location { kind, index });
    if base_hash == Some(&hash) {
        (Class::Unchanged, hash)
    } else if zero {
        (Class::Zero, hash)
    } else if let Some(loc) = base.find(&hash) {
        (Class::BaseRef(loc), hash)
    } else {
        (Class::New, hash)
    }
}

/// For a new chunk: an xdelta3 delta against the base chunk at the same position, when one
/// exists, is not zero, and the delta is worth it; `None` means store it raw.
pub fn delta_against_base(
    base: &Base,
    kind: ImageKind,
    index: u64,
    data: &Chunk,
) -> Result<Option<Vec<u8>>, BaseError> {
    let same_position = Location { kind, index };
    // A delta against a zero (or absent) base chunk is just a worse compressor.
    if base
        .hash_at(same_position)
        .is_none_or(|h| *h == zero_chunk_hash())
    {
        return Ok(None);
    }
    let mut source = [0u8; CHUNK_SIZE_BYTES];
    base.read_chunk(same_position, &mut source)?;
    if !worth_a_delta(data, &source) {
        return Ok(None);
    }
    Ok(delta::encode(data, &source))
}

/// A cheap guess whether xdelta3 can find anything: a slightly modified chunk agrees with
/// its base chunk on most sampled words; a chunk that does not may still be a shifted copy
/// (text with a line inserted), but not if it looks random (encrypted or compressed data,
/// which xdelta3 then spends ~50 µs on for nothing).
fn worth_a_delta(target: &Chunk, source: &Chunk) -> bool {
    const SAMPLES: usize = 64;
    const STRIDE: usize = CHUNK_SIZE_BYTES / SAMPLES;
    let agree = (0..SAMPLES)
        .filter(|i| target[i * STRIDE..i * STRIDE + 8] == source[i * STRIDE..i * STRIDE + 8])
        .count();
    if agree >= SAMPLES / 8 {
        return true;
    }
    let mut seen = [false; 256];
    for &b in target.iter().step_by(16) {
        seen[usize::from(b)] = true;
    }
    // 256 samples of random bytes show ~160 distinct values; text and code far fewer.
    seen.iter().filter(|&&s| s).count() < 128
}

#[cfg(test)]
mod tests {
    use super::worth_a_delta;
    use crate::chunk::{Chunk, CHUNK_SIZE_BYTES};
    use crate::testkit::{random_chunk, slightly_modified, text_chunk, Rng};

    #[test]
    fn delta_guess() {
        let mut rng = Rng::new(5);
        let base = text_chunk(1);
        assert!(
            worth_a_delta(&slightly_modified(&base, &mut rng), &base),
            "small edit"
        );
        let mut shifted: Chunk = [b' '; CHUNK_SIZE_BYTES];
        shifted[3..].copy_from_slice(&base[..CHUNK_SIZE_BYTES - 3]);
        assert!(worth_a_delta(&shifted, &base), "shifted text");
        assert!(
            !worth_a_delta(&random_chunk(&mut rng), &base),
            "random data"
        );
        let r = random_chunk(&mut rng);
        assert!(
            worth_a_delta(&slightly_modified(&r, &mut rng), &r),
            "edited random data"
        );
    }
}
