//! Chunks: the 4 KiB unit in which disks and memory are compared, hashed and encoded.

/// Size of one disk chunk and of one memory page, in bytes.
pub const CHUNK_SIZE_BYTES: usize = 4096;
/// [`CHUNK_SIZE_BYTES`] as a `u64`, for offset arithmetic.
pub const CHUNK_SIZE_U64: u64 = CHUNK_SIZE_BYTES as u64;

/// One chunk's bytes.
pub type Chunk = [u8; CHUNK_SIZE_BYTES];

/// blake3 hash of one chunk.
pub type ChunkHash = [u8; 32];

/// Which image of a VM a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageKind {
    /// Guest RAM, as the page image of a memory snapshot.
    Memory,
    /// The guest's disk.
    Disk,
}

impl ImageKind {
    /// Stable one-byte code used in files.
    pub fn code(self) -> u8 {
        match self {
            ImageKind::Memory => 0,
            ImageKind::Disk => 1,
        }
    }

    /// Inverse of [`ImageKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ImageKind::Memory),
            1 => Some(ImageKind::Disk),
            _ => None,
        }
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Memory => "memory",
            ImageKind::Disk => "disk",
        }
    }
}

/// Where a base chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Disk or memory.
    pub kind: ImageKind,
    /// Chunk (disk) or global page (memory) index.
    pub index: u64,
}

impl Location {
    /// Packs into one u64 (top bit: memory).
    pub fn to_u64(self) -> u64 {
        match self.kind {
            ImageKind::Memory => self.index | MEMORY_LOCATION_BIT,
            ImageKind::Disk => self.index,
        }
    }
    /// Inverse of [`Location::to_u64`].
    pub fn from_u64(v: u64) -> Self {
        if v & MEMORY_LOCATION_BIT != 0 {
            Location {
                kind: ImageKind::Memory,
                index: v & !MEMORY_LOCATION_BIT,
            }
        } else {
            Location {
                kind: ImageKind::Disk,
                index: v,
            }
        }
    }
}

/// Location bit marking a memory page (clear: a disk chunk).
const MEMORY_LOCATION_BIT: u64 = 1 << 63;

/// Hash of one chunk.
pub fn hash_chunk(data: &[u8]) -> ChunkHash {
    *blake3::hash(data).as_bytes()
}

/// Whether every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // Comparing u128 words is several times faster than a byte loop and needs no unsafe.
    let (words, rest) = data.split_at(data.len() - data.len() % 16);
    words
        .chunks_exact(16)
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// Hash of an all-zero chunk, computed once.
pub fn zero_chunk_hash() -> ChunkHash {
    static ZERO: std::sync::OnceLock<ChunkHash> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| hash_chunk(&[0u8; CHUNK_SIZE_BYTES]))
}

/// Number of chunks covering `len` bytes (the last one may be partial).
pub fn chunk_count(len: u64) -> u64 {
    len.div_ceil(CHUNK_SIZE_U64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut c = [0u8; CHUNK_SIZE_BYTES];
        assert!(is_zero(&c));
        c[4095] = 1;
        assert!(!is_zero(&c));
        c[4095] = 0;
        c[0] = 1;
        assert!(!is_zero(&c));
        assert!(is_zero(&[0u8; 7]));
        assert!(!is_zero(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3
        ]));
    }

    #[test]
    fn chunk_counts() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(4096), 1);
        assert_eq!(chunk_count(4097), 2);
    }

    #[test]
    fn location_packing() {
        for loc in [
            Location {
                kind: ImageKind::Disk,
                index: 0,
            },
            Location {
                kind: ImageKind::Memory,
                index: 0,
            },
            Location {
                kind: ImageKind::Memory,
                index: 123_456_789,
            },
        ] {
            assert_eq!(Location::from_u64(loc.to_u64()), loc);
        }
    }
}
