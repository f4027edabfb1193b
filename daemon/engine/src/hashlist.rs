//! A base's hash lists and the index that answers "which base chunk has this hash".
//!
//! Both are computed once, at base creation, so that overlay creation never re-reads the
//! base images.
//!
//! Hash list file (`HashList`), little-endian:
//!
//! ```text
//! 0   magic "CLDHASH1"         8 bytes
//! 8   disk_size                u64   bytes of the base disk
//! 16  disk_chunks              u64   ceil(disk_size / 4096)
//! 24  memory_pages             u64   pages of the base memory image (0: disk-only base)
//! 32  hashes                   32 bytes each: every disk chunk, then every memory page
//! ```
//!
//! Index file (`HashIndex`): the magic "CLDINDX1", a u64 entry count, then entries of two
//! u64 (the first 8 bytes of a chunk hash, and the chunk's location), sorted by hash prefix,
//! one per distinct prefix, zero chunks left out (they have their own encoding). Lookups
//! binary-search the memory-mapped file and confirm the full hash in the hash list, so a
//! prefix collision can only cost a missed reference, never a wrong one. 16 bytes per
//! distinct chunk: a 16 GiB disk plus 1 GiB of RAM indexes in about 70 MB, paged in by the
//! kernel only where lookups land.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::atomic::AtomicFile;
use crate::chunk::{
    chunk_count, hash_chunk, zero_chunk_hash, ChunkHash, ImageKind, CHUNK_SIZE_BYTES,
};
use crate::cursor::Cursor;
use crate::progress::{NoProgress, Progress};
// Defined with the chunk types (overlay metadata names locations without a hash list);
// re-exported where callers have always found it.
pub use crate::chunk::Location;

const HASHLIST_MAGIC: &[u8; 8] = b"CLDHASH1";
const HASHLIST_HEADER_BYTES: usize = 32;
const INDEX_MAGIC: &[u8; 8] = b"CLDINDX1";
const INDEX_HEADER_BYTES: usize = 16;
const INDEX_ENTRY_BYTES: usize = 16;
/// Bytes hashed per parallel work item when hashing a disk.
const HASH_BATCH_BYTES: usize = 4 << 20;

/// Errors reading or writing hash lists and indexes.
#[derive(Debug, thiserror::Error)]
pub enum HashListError {
    /// Reading or writing a file failed.
    #[error("i/o error on hash list {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a hash list / index or is damaged.
    #[error("hash list {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl HashListError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| HashListError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    fn corrupt(path: &Path, reason: &'static str) -> Self {
        HashListError::Corrupt {
            path: path.display().to_string(),
            reason,
        }
    }
}

/// Hashes every 4 KiB chunk of a file, in parallel, reading it once in large sequential
/// blocks. A partial last chunk is hashed zero-padded to 4 KiB.
pub fn hash_file(path: &Path) -> Result<Vec<ChunkHash>, HashListError> {
    hash_file_with_progress(path, &NoProgress)
}

/// [`hash_file`], reporting the bytes hashed after each batch.
pub fn hash_file_with_progress(
    path: &Path,
    progress: &dyn Progress,
) -> Result<Vec<ChunkHash>, HashListError> {
    let mut file = File::open(path).map_err(HashListError::io(path))?;
    let len = file.metadata().map_err(HashListError::io(path))?.len();
    let mut hashes = Vec::with_capacity(usize::try_from(chunk_count(len)).unwrap_or(0));
    let mut buf = vec![0u8; HASH_BATCH_BYTES];
    loop {
        let filled = read_full(&mut file, &mut buf).map_err(HashListError::io(path))?;
        if filled == 0 {
            break;
        }
        let padded = filled.next_multiple_of(CHUNK_SIZE_BYTES);
        buf[filled..padded].fill(0);
        let batch: Vec<ChunkHash> = buf[..padded]
            .par_chunks(CHUNK_SIZE_BYTES)
            .map(hash_chunk)
            .collect();
        hashes.extend(batch);
        progress.inc(filled as u64);
        if filled < buf.len() {
            break;
        }
    }
    Ok(hashes)
}

/// Reads until `buf` is full or EOF; returns the bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes a hash list file atomically; returns its blake3 hash, the base's identity.
pub fn write_hash_list(
    path: &Path,
    disk_size: u64,
    disk: &[ChunkHash],
    memory: &[ChunkHash],
) -> Result<ChunkHash, HashListError> {
    let mut out = AtomicFile::create(path).map_err(HashListError::io(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut header = Vec::with_capacity(HASHLIST_HEADER_BYTES);
    header.extend_from_slice(HASHLIST_MAGIC);
    header.extend_from_slice(&disk_size.to_le_bytes());
    header.extend_from_slice(&(disk.len() as u64).to_le_bytes());
    header.extend_from_slice(&(memory.len() as u64).to_le_bytes());
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut out);
    (|| {
        for bytes in
            std::iter::once(header.as_slice()).chain(disk.iter().chain(memory).map(|h| &h[..]))
        {
            hasher.update(bytes);
            w.write_all(bytes)?;
        }
        w.flush()
    })()
    .map_err(HashListError::io(path))?;
    drop(w);
    out.commit().map_err(HashListError::io(path))?;
    Ok(*hasher.finalize().as_bytes())
}

/// A memory-mapped hash list.
#[derive(Debug)]
pub struct HashList {
    map: Mmap,
    disk_size: u64,
    disk_chunks: u64,
    memory_pages: u64,
}

impl HashList {
    /// Opens and checks a hash list file.
    pub fn open(path: &Path) -> Result<Self, HashListError> {
        let map = map_file(path)?;
        let header = map
            .get(..HASHLIST_HEADER_BYTES)
            .ok_or_else(|| HashListError::corrupt(path, "shorter than its header"))?;
        if &header[..8] != HASHLIST_MAGIC {
            return Err(HashListError::corrupt(path, "bad magic"));
        }
        let mut fields = Cursor::at(header, HASHLIST_MAGIC.len());
        let short = |_| HashListError::corrupt(path, "shorter than its header");
        let disk_size = fields.u64_le().map_err(short)?;
        let disk_chunks = fields.u64_le().map_err(short)?;
        let memory_pages = fields.u64_le().map_err(short)?;
        let expected = disk_chunks
            .checked_add(memory_pages)
            .and_then(|n| n.checked_mul(32))
            .and_then(|n| n.checked_add(HASHLIST_HEADER_BYTES as u64));
        if disk_chunks != chunk_count(disk_size) || expected != Some(map.len() as u64) {
            return Err(HashListError::corrupt(
                path,
                "sizes do not match its length",
            ));
        }
        Ok(Self {
            map,
            disk_size,
            disk_chunks,
            memory_pages,
        })
    }

    /// blake3 of the whole file: the base's identity.
    pub fn identity(&self) -> ChunkHash {
        *blake3::hash(&self.map).as_bytes()
    }

    /// Size of the base disk in bytes.
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    /// Number of chunks of the base disk.
    pub fn disk_chunks(&self) -> u64 {
        self.disk_chunks
    }

    /// Number of pages of the base memory image.
    pub fn memory_pages(&self) -> u64 {
        self.memory_pages
    }

    /// Chunks of one image.
    pub fn len(&self, kind: ImageKind) -> u64 {
        match kind {
            ImageKind::Disk => self.disk_chunks,
            ImageKind::Memory => self.memory_pages,
        }
    }

    /// Whether the list holds no chunk at all.
    pub fn is_empty(&self) -> bool {
        self.disk_chunks == 0 && self.memory_pages == 0
    }

    /// Hash of the chunk at `loc`, or `None` past the end of its image.
    pub fn get(&self, loc: Location) -> Option<&ChunkHash> {
        if loc.index >= self.len(loc.kind) {
            return None;
        }
        let slot = match loc.kind {
            ImageKind::Disk => loc.index,
            ImageKind::Memory => self.disk_chunks + loc.index,
        };
        let start = usize::try_from(slot)
            .ok()?
            .checked_mul(32)?
            .checked_add(HASHLIST_HEADER_BYTES)?;
        self.map.get(start..start + 32)?.try_into().ok()
    }

    fn iter(&self, kind: ImageKind) -> impl Iterator<Item = (Location, &ChunkHash)> + '_ {
        (0..self.len(kind)).filter_map(move |index| {
            let loc = Location { kind, index };
            self.get(loc).map(|h| (loc, h))
        })
    }
}

/// Builds the index of a hash list and writes it atomically.
pub fn write_index(list: &HashList, path: &Path) -> Result<u64, HashListError> {
    let zero = zero_chunk_hash();
    // Memory first: when a chunk exists in both images, prefer the memory copy, which is
    // what the synthesized VM's memory will read anyway.
    let mut entries: Vec<(u64, u64)> = list
        .iter(ImageKind::Memory)
        .chain(list.iter(ImageKind::Disk))
        .filter(|(_, h)| **h != zero)
        .map(|(loc, h)| (prefix(h), loc.to_u64()))
        .collect();
    entries.par_sort_by_key(|&(p, _)| p); // stable: first location of a prefix wins
    entries.dedup_by_key(|&mut (p, _)| p);
    let mut out = AtomicFile::create(path).map_err(HashListError::io(path))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut out);
    (|| {
        w.write_all(INDEX_MAGIC)?;
        w.write_all(&(entries.len() as u64).to_le_bytes())?;
        for (p, loc) in &entries {
            w.write_all(&p.to_le_bytes())?;
            w.write_all(&loc.to_le_bytes())?;
        }
        w.flush()
    })()
    .map_err(HashListError::io(path))?;
    drop(w);
    out.commit().map_err(HashListError::io(path))?;
    Ok(entries.len() as u64)
}

/// A memory-mapped hash → location index over one base's chunks.
#[derive(Debug)]
pub struct HashIndex {
    map: Mmap,
    entries: usize,
}

impl HashIndex {
    /// Opens and checks an index file.
    pub fn open(path: &Path) -> Result<Self, HashListError> {
        let map = map_file(path)?;
        let header = map
            .get(..INDEX_HEADER_BYTES)
            .ok_or_else(|| HashListError::corrupt(path, "shorter than its header"))?;
        if &header[..8] != INDEX_MAGIC {
            return Err(HashListError::corrupt(path, "bad magic"));
        }
        let entries = Cursor::at(header, INDEX_MAGIC.len())
            .u64_le()
            .map_err(|_| HashListError::corrupt(path, "shorter than its header"))?;
        let entries = usize::try_from(entries)
            .map_err(|_| HashListError::corrupt(path, "entry count too large"))?;
        let expected = entries
            .checked_mul(INDEX_ENTRY_BYTES)
            .and_then(|n| n.checked_add(INDEX_HEADER_BYTES));
        if expected != Some(map.len()) {
            return Err(HashListError::corrupt(
                path,
                "entry count does not match its length",
            ));
        }
        Ok(Self { map, entries })
    }

    /// Number of distinct non-zero chunks indexed.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn entry(&self, i: usize) -> (u64, u64) {
        let at = INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES;
        let mut e = Cursor::at(&self.map, at);
        match (e.u64_le(), e.u64_le()) {
            (Ok(prefix), Ok(location)) => (prefix, location),
            _ => (u64::MAX, u64::MAX),
        }
    }

    /// A base chunk whose full hash is `hash`, if any.
    pub fn lookup(&self, hash: &ChunkHash, list: &HashList) -> Option<Location> {
        let want = prefix(hash);
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (p, loc) = self.entry(mid);
            match p.cmp(&want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let loc = Location::from_u64(loc);
                    return (list.get(loc) == Some(hash)).then_some(loc);
                }
            }
        }
        None
    }
}

/// The first 8 bytes of a hash, the index's sort key.
fn prefix(h: &ChunkHash) -> u64 {
    // A hash is 32 bytes: never short.
    Cursor::new(h).u64_le().unwrap_or(0)
}

#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap, HashListError> {
    let file = File::open(path).map_err(HashListError::io(path))?;
    // SAFETY: hash lists and indexes are written once (atomically, under a new name) and
    // never modified in place by the daemon that owns them, so the mapping cannot change
    // underneath us; a file truncated by someone else would raise SIGBUS, the same failure
    // as a disk error.
    unsafe { Mmap::map(&file) }.map_err(HashListError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8) -> Vec<u8> {
        (0..CHUNK_SIZE_BYTES)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    #[test]
    fn hash_file_pads_the_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let mut data = chunk(3);
        data.extend_from_slice(&[9u8; 100]);
        std::fs::write(&path, &data).unwrap();
        let hashes = hash_file(&path).unwrap();
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], hash_chunk(&chunk(3)));
        let mut last = vec![0u8; CHUNK_SIZE_BYTES];
        last[..100].fill(9);
        assert_eq!(hashes[1], hash_chunk(&last));
    }

    #[test]
    fn index_finds_disk_and_memory_chunks_and_skips_zero() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Vec<ChunkHash> = (1..=50u8)
            .map(|s| hash_chunk(&chunk(s)))
            .chain([zero_chunk_hash()])
            .collect();
        let memory: Vec<ChunkHash> = (100..=120u8)
            .map(|s| hash_chunk(&chunk(s)))
            .chain([hash_chunk(&chunk(7))])
            .collect();
        let id = write_hash_list(&dir.path().join("h"), 51 * 4096, &disk, &memory).unwrap();
        let list = HashList::open(&dir.path().join("h")).unwrap();
        assert_eq!(list.identity(), id);
        assert_eq!(write_index(&list, &dir.path().join("i")).unwrap(), 71);
        let index = HashIndex::open(&dir.path().join("i")).unwrap();
        assert_eq!(
            index.lookup(&hash_chunk(&chunk(9)), &list),
            Some(Location {
                kind: ImageKind::Disk,
                index: 8
            })
        );
        assert_eq!(
            index.lookup(&hash_chunk(&chunk(110)), &list),
            Some(Location {
                kind: ImageKind::Memory,
                index: 10
            })
        );
        // chunk(7) is in both: memory wins.
        assert_eq!(
            index.lookup(&hash_chunk(&chunk(7)), &list),
            Some(Location {
                kind: ImageKind::Memory,
                index: 21
            })
        );
        assert_eq!(index.lookup(&zero_chunk_hash(), &list), None);
        assert_eq!(index.lookup(&hash_chunk(&chunk(200)), &list), None);
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h");
        write_hash_list(&p, 4096, &[hash_chunk(&chunk(1))], &[]).unwrap();
        let full = std::fs::read(&p).unwrap();
        for cut in [0, 7, 31, 33, full.len() - 1] {
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(HashList::open(&p).is_err(), "cut at {cut}");
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(HashIndex::open(&p).is_err(), "cut at {cut}");
        }
    }
}
