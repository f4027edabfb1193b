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
/// the class and the chunk's hash. The base's hash list and index answer, except that a
/// memory page is first compared with the base's page at the same place when the page
/// cache holds it.
pub fn classify(base: &Base, kind: ImageKind, index: u64, data: &Chunk) -> (Class, ChunkHash) {
    // Zero pages dominate guest memory: recognizing them is cheaper than hashing them.
    if is_zero(data) {
        return classify_zero(base, kind, index);
    }
    let same_position = base.hash_at(Location { kind, index });
    // Most pages of a customized VM are still its base's, where they were: comparing two
    // pages costs 0.34 µs here against 2.0 µs for a blake3 of one, plus the read of a
    // cached base page (bench-engine, 1 GiB reference workload: encode 0.38 → 0.33
    // CPU-s). Disk chunks are candidates because they were written, so they rarely match.
    if kind == ImageKind::Memory {
        if let Some(hash) = same_position.filter(|h| **h != zero_chunk_hash()) {
            if base.memory_page_is_cached_copy(index, data) {
                return (Class::Unchanged, *hash);
            }
        }
    }
    let hash = hash_chunk(data);
    if same_position == Some(&hash) {
        (Class::Unchanged, hash)
    } else if let Some(loc) = base.find(&hash) {
        (Class::BaseRef(loc), hash)
    } else {
        (Class::New, hash)
    }
}

/// [`classify`] of a chunk known to be zero (without reading it).
pub fn classify_zero(base: &Base, kind: ImageKind, index: u64) -> (Class, ChunkHash) {
    let zero = zero_chunk_hash();
    if base.hash_at(Location { kind, index }) == Some(&zero) {
        (Class::Unchanged, zero)
    } else {
        (Class::Zero, zero)
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

/// A cheap guess whether xdelta3 can find anything worth storing (it spends 50-80 µs on a
/// chunk even when it does not). A slightly modified chunk agrees with its base chunk on
/// most sampled words. A chunk that does not may still be its base chunk shifted (a line
/// inserted): then many of its words reappear in the base chunk at one common
/// displacement. Chunks that merely share vocabulary with their base chunk (unrelated text
/// over text) give deltas that lose to plain compression of the raw chunk (measured:
/// 1.1k such deltas made the heavy bench overlay 0.1 MB larger), so they are not tried.
fn worth_a_delta(target: &Chunk, source: &Chunk) -> bool {
    const SAMPLES: usize = 64;
    const STRIDE: usize = CHUNK_SIZE_BYTES / SAMPLES;
    let agree = (0..SAMPLES)
        .filter(|i| target[i * STRIDE..i * STRIDE + 8] == source[i * STRIDE..i * STRIDE + 8])
        .count();
    agree >= SAMPLES / 8 || shifted_copy(target, source)
}

/// Whether `target` holds a shifted run of `source`: at least [`MIN_ALIGNED_HITS`] of its
/// 8-byte words, looked up at every byte offset of [`WINDOWS`] sampled windows, occur at
/// aligned offsets of `source` at the same displacement. Words of one repeated byte (runs
/// of spaces or zeros) do not count: they match anything.
fn shifted_copy(target: &Chunk, source: &Chunk) -> bool {
    /// Windows sampled, spread over the chunk, each `WINDOW` start offsets long.
    const WINDOWS: usize = 8;
    const WINDOW: usize = 64;
    /// A true shift hits once per 8 offsets: 64 times over all windows if it spans the
    /// chunk, 8 times if it spans one window's worth.
    const MIN_ALIGNED_HITS: usize = 8;
    let mut table = WordTable::default();
    for (i, w) in source.chunks_exact(8).enumerate() {
        table.insert(word(w), i * 8);
    }
    let mut displacements = [0i16; WINDOWS * WINDOW];
    let mut hits = 0;
    let step = (CHUNK_SIZE_BYTES - WINDOW - 8) / (WINDOWS - 1);
    for start in (0..WINDOWS).map(|i| i * step) {
        for at in start..start + WINDOW {
            if let Some(offset) = table.get(word(&target[at..at + 8])) {
                // Both offsets are below 4096: the difference fits in i16.
                displacements[hits] = i16::try_from(at as isize - offset as isize).unwrap_or(0);
                hits += 1;
            }
        }
    }
    if hits < MIN_ALIGNED_HITS {
        return false;
    }
    let found = &mut displacements[..hits];
    found.sort_unstable();
    found
        .chunk_by(|a, b| a == b)
        .any(|run| run.len() >= MIN_ALIGNED_HITS)
}

fn word(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(a)
}

/// Up to 512 words with the offset where each first occurs (open addressing, 1024 slots).
/// Words of one repeated byte are never stored, so a zero word marks an empty slot.
struct WordTable {
    words: [u64; 1024],
    offsets: [u16; 1024],
}

impl Default for WordTable {
    fn default() -> Self {
        Self {
            words: [0; 1024],
            offsets: [0; 1024],
        }
    }
}

impl WordTable {
    fn slot(w: u64) -> usize {
        // Fibonacci hashing: the top 10 bits of the product.
        (w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize
    }

    fn repeated_byte(w: u64) -> bool {
        w == (w & 0xff).wrapping_mul(0x0101_0101_0101_0101)
    }

    fn insert(&mut self, w: u64, offset: usize) {
        if Self::repeated_byte(w) {
            return;
        }
        let mut i = Self::slot(w);
        while self.words[i] != 0 {
            if self.words[i] == w {
                return;
            }
            i = (i + 1) & 1023;
        }
        self.words[i] = w;
        self.offsets[i] = u16::try_from(offset).unwrap_or(u16::MAX);
    }

    fn get(&self, w: u64) -> Option<usize> {
        if Self::repeated_byte(w) {
            return None;
        }
        let mut i = Self::slot(w);
        while self.words[i] != 0 {
            if self.words[i] == w {
                return Some(usize::from(self.offsets[i]));
            }
            i = (i + 1) & 1023;
        }
        None
    }
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
        let letters = |rng: &mut Rng| -> Chunk {
            std::array::from_fn(|_| b"etaoin shrdlu\n"[usize::try_from(rng.below(14)).unwrap_or(0)])
        };
        let (a, b) = (letters(&mut rng), letters(&mut rng));
        assert!(!worth_a_delta(&a, &b), "unrelated text");
        assert!(
            !worth_a_delta(&text_chunk(2), &base),
            "text sharing only vocabulary"
        );

        let mut shifted_random: Chunk = [0; CHUNK_SIZE_BYTES];
        shifted_random[1000..].copy_from_slice(&r[..CHUNK_SIZE_BYTES - 1000]);
        assert!(worth_a_delta(&shifted_random, &r), "shifted random data");
    }
}
