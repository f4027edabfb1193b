//! Classifying one modified chunk against the base: the dedup and delta rules of the
//! overlay, in their order of preference. Intra-overlay references (a chunk identical to an
//! earlier chunk of the same overlay) need the overlay's history, so the encoder applies
//! that rule after this one.

use crate::base::{Base, BaseError};
use crate::chunk::{hash_chunk, zero_chunk_hash, Chunk, ChunkHash, ImageKind, CHUNK_SIZE_BYTES};
use crate::delta;
use crate::hashlist::Location;

/// What a chunk is, relative to the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Same bytes as the base chunk at the same position: not stored.
    Unchanged,
    /// All zero.
    Zero,
    /// Identical to this base chunk.
    BaseRef(Location),
    /// Best stored as this xdelta3 delta against the base chunk at the same position.
    Delta(Vec<u8>),
    /// Stored whole.
    Raw,
}

/// Classifies chunk `index` of image `kind` with content `data`; returns the class and the
/// chunk's hash.
pub fn classify(
    base: &Base,
    kind: ImageKind,
    index: u64,
    data: &Chunk,
) -> Result<(Class, ChunkHash), BaseError> {
    let hash = hash_chunk(data);
    let same_position = Location { kind, index };
    let base_hash = base.hash_at(same_position);
    if base_hash == Some(&hash) {
        return Ok((Class::Unchanged, hash));
    }
    if hash == zero_chunk_hash() {
        return Ok((Class::Zero, hash));
    }
    if let Some(loc) = base.find(&hash) {
        return Ok((Class::BaseRef(loc), hash));
    }
    // A delta against a zero (or absent) base chunk is just a worse compressor.
    if base_hash.is_some_and(|h| *h != zero_chunk_hash()) {
        let mut source = [0u8; CHUNK_SIZE_BYTES];
        base.read_chunk(same_position, &mut source)?;
        if let Some(d) = delta::encode(data, &source) {
            return Ok((Class::Delta(d), hash));
        }
    }
    Ok((Class::Raw, hash))
}
