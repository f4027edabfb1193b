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
    Ok(delta::encode(data, &source))
}
