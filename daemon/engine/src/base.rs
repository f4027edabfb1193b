//! A base VM as the engine sees it: its disk, its memory snapshot in canonical form (a page
//! image plus the layout and device state), its hash lists and index. Creating a base
//! computes all of these once; opening one maps them for overlay creation and synthesis.
//!
//! Files of one base (the daemon chooses the directory):
//!
//! | file | content |
//! |---|---|
//! | `disk.raw` | the base disk, raw (the caller puts it there) |
//! | `memory.pages` | page image: global page `i` at byte `i * 4096`, sparse where zero |
//! | `memory.meta` | `CLDMEMM1`, u64 layout length, layout, u64 device-state length, device state |
//! | `hashes.bin` | hash list (see [`crate::hashlist`]); its blake3 is the base id |
//! | `hashes.idx` | hash → location index |

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::atomic::AtomicFile;
use crate::chunk::{
    hash_chunk, is_zero, zero_chunk_hash, Chunk, ChunkHash, ImageKind, CHUNK_SIZE_BYTES,
    CHUNK_SIZE_U64,
};
use crate::disk::read_raw_chunk;
use crate::hashlist::{self, HashIndex, HashList, HashListError, Location};
use crate::limits::{MAX_DEVICE_STATE_BYTES, MAX_SAVE_XML_BYTES};
use crate::progress::{NoProgress, Progress};
use crate::savefile::{SaveFileError, SaveFileLayout, SaveFileReader, SaveFileWriter};

const MEMORY_META_MAGIC: &[u8; 8] = b"CLDMEMM1";
const IO_BUFFER_BYTES: usize = 1 << 20;
/// Pages imported between two progress reports (16 MiB).
const PROGRESS_PAGES: u64 = 4096;

/// Errors creating, opening or reading a base.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// A base file could not be read or written.
    #[error("i/o error on base file {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The memory snapshot could not be parsed or written.
    #[error("memory snapshot {path}")]
    SaveFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: SaveFileError,
    },
    /// A hash list or index is damaged.
    #[error("base hash list")]
    HashList(#[from] HashListError),
    /// The base's files disagree with each other.
    #[error("base files are inconsistent: {0}")]
    Inconsistent(String),
}

impl BaseError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| BaseError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    fn save(path: &Path) -> impl FnOnce(SaveFileError) -> Self + '_ {
        move |source| BaseError::SaveFile {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Where the files of one base live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePaths {
    /// Raw disk image.
    pub disk: PathBuf,
    /// Memory page image.
    pub memory_pages: PathBuf,
    /// Memory layout + device state.
    pub memory_meta: PathBuf,
    /// Hash list.
    pub hash_list: PathBuf,
    /// Hash index.
    pub index: PathBuf,
}

impl BasePaths {
    /// The standard file names inside one directory.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            disk: dir.join("disk.raw"),
            memory_pages: dir.join("memory.pages"),
            memory_meta: dir.join("memory.meta"),
            hash_list: dir.join("hashes.bin"),
            index: dir.join("hashes.idx"),
        }
    }

    /// Every file, for cleanup and export.
    pub fn all(&self) -> [&Path; 5] {
        [
            &self.disk,
            &self.memory_pages,
            &self.memory_meta,
            &self.hash_list,
            &self.index,
        ]
    }
}

/// What creating a base computed, and how long each step took.
#[derive(Debug, Clone)]
pub struct BaseSummary {
    /// blake3 of the hash list: the base's identity.
    pub id: ChunkHash,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Memory pages (0 for a disk-only base).
    pub memory_pages: u64,
    /// Non-zero memory pages.
    pub memory_nonzero_pages: u64,
    /// Distinct non-zero chunks in the index.
    pub indexed_chunks: u64,
    /// Time to import the memory snapshot (parse, write page image, hash pages).
    pub memory_time: Duration,
    /// Time to hash the disk.
    pub disk_hash_time: Duration,
    /// Time to write the hash list and build the index.
    pub index_time: Duration,
}

/// Turns a raw disk (already at `paths.disk`) and, optionally, a libvirt save file into a
/// base: page image, memory meta, hash list and index, each written atomically.
pub fn create_base(paths: &BasePaths, save_file: Option<&Path>) -> Result<BaseSummary, BaseError> {
    create_base_with_progress(paths, save_file, &NoProgress)
}

/// [`create_base`], reporting the stages `memory` (pages) and `disk` (bytes hashed).
pub fn create_base_with_progress(
    paths: &BasePaths,
    save_file: Option<&Path>,
    progress: &dyn Progress,
) -> Result<BaseSummary, BaseError> {
    let started = Instant::now();
    let (memory_hashes, nonzero) = match save_file {
        Some(save) => import_memory(save, paths, progress)?,
        None => (Vec::new(), 0),
    };
    let memory_time = started.elapsed();

    let started = Instant::now();
    let disk_size = std::fs::metadata(&paths.disk)
        .map_err(BaseError::io(&paths.disk))?
        .len();
    progress.stage("disk", Some(disk_size));
    let disk_hashes = hashlist::hash_file_with_progress(&paths.disk, progress)?;
    let disk_hash_time = started.elapsed();

    let started = Instant::now();
    let id = hashlist::write_hash_list(&paths.hash_list, disk_size, &disk_hashes, &memory_hashes)?;
    let list = HashList::open(&paths.hash_list)?;
    let indexed_chunks = hashlist::write_index(&list, &paths.index)?;
    let index_time = started.elapsed();

    Ok(BaseSummary {
        id,
        disk_size,
        memory_pages: memory_hashes.len() as u64,
        memory_nonzero_pages: nonzero,
        indexed_chunks,
        memory_time,
        disk_hash_time,
        index_time,
    })
}

/// Parses a save file into the page image and memory meta; returns every page's hash.
fn import_memory(
    save: &Path,
    paths: &BasePaths,
    progress: &dyn Progress,
) -> Result<(Vec<ChunkHash>, u64), BaseError> {
    let file = File::open(save).map_err(BaseError::io(save))?;
    let mut reader = SaveFileReader::open(BufReader::with_capacity(IO_BUFFER_BYTES, file))
        .map_err(BaseError::save(save))?;
    let layout = reader.layout().clone();
    let pages = layout.page_count();
    let mut hashes = vec![zero_chunk_hash(); usize::try_from(pages).map_err(|_| too_big())?];

    let out =
        AtomicFile::create(&paths.memory_pages).map_err(BaseError::io(&paths.memory_pages))?;
    out.file()
        .set_len(pages * CHUNK_SIZE_U64)
        .map_err(BaseError::io(&paths.memory_pages))?;
    let mut page = [0u8; CHUNK_SIZE_BYTES];
    let mut nonzero = 0u64;
    progress.stage("memory", Some(pages));
    let mut unreported = 0u64;
    while let Some(index) = reader.next_page(&mut page).map_err(BaseError::save(save))? {
        unreported += 1;
        if unreported == PROGRESS_PAGES {
            progress.inc(unreported);
            unreported = 0;
        }
        let slot = usize::try_from(index).ok().and_then(|i| hashes.get_mut(i));
        let Some(slot) = slot else {
            return Err(BaseError::Inconsistent(format!(
                "page {index} outside the RAM layout"
            )));
        };
        if !is_zero(&page) {
            *slot = hash_chunk(&page);
            nonzero += 1;
            out.file()
                .write_all_at(&page, index * CHUNK_SIZE_U64)
                .map_err(BaseError::io(&paths.memory_pages))?;
        }
    }
    progress.inc(unreported);
    let device_state = reader.finish().map_err(BaseError::save(save))?;
    out.commit().map_err(BaseError::io(&paths.memory_pages))?;
    write_memory_meta(&paths.memory_meta, &layout, &device_state)?;
    Ok((hashes, nonzero))
}

fn too_big() -> BaseError {
    BaseError::Inconsistent("memory too large for this machine".into())
}

/// Writes the memory meta file atomically.
pub fn write_memory_meta(
    path: &Path,
    layout: &SaveFileLayout,
    device_state: &[u8],
) -> Result<(), BaseError> {
    let mut out = AtomicFile::create(path).map_err(BaseError::io(path))?;
    let layout_bytes = layout.to_bytes();
    (|| {
        out.write_all(MEMORY_META_MAGIC)?;
        out.write_all(&(layout_bytes.len() as u64).to_le_bytes())?;
        out.write_all(&layout_bytes)?;
        out.write_all(&(device_state.len() as u64).to_le_bytes())?;
        out.write_all(device_state)
    })()
    .map_err(BaseError::io(path))?;
    out.commit().map_err(BaseError::io(path))?;
    Ok(())
}

/// Reads the memory meta file: the base snapshot's layout and device state.
pub fn read_memory_meta(path: &Path) -> Result<(SaveFileLayout, Vec<u8>), BaseError> {
    let mut file = BufReader::new(File::open(path).map_err(BaseError::io(path))?);
    let bad =
        |what: &str| BaseError::Inconsistent(format!("memory meta {}: {what}", path.display()));
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).map_err(BaseError::io(path))?;
    if &magic != MEMORY_META_MAGIC {
        return Err(bad("bad magic"));
    }
    let mut read_blob = |limit: u64| -> Result<Vec<u8>, BaseError> {
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(BaseError::io(path))?;
        let len = u64::from_le_bytes(len);
        if len > limit {
            return Err(bad("length over limit"));
        }
        let mut blob = vec![0u8; usize::try_from(len).map_err(|_| bad("length over limit"))?];
        file.read_exact(&mut blob).map_err(BaseError::io(path))?;
        Ok(blob)
    };
    let layout_bytes = read_blob(MAX_SAVE_XML_BYTES * 2)?;
    let device_state = read_blob(MAX_DEVICE_STATE_BYTES)?;
    let layout = SaveFileLayout::from_bytes(&layout_bytes).map_err(BaseError::save(path))?;
    Ok((layout, device_state))
}

/// Chunks this close together are prefetched as one range (reading a small gap costs
/// less than another request).
const PREFETCH_GAP_CHUNKS: u64 = 8;

/// `chunks` as sorted, disjoint ranges `[start, end)`, joining chunks at most `gap`
/// chunks apart.
fn chunk_ranges(mut chunks: Vec<u64>, gap: u64) -> Vec<(u64, u64)> {
    chunks.sort_unstable();
    chunks.dedup();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for c in chunks {
        match ranges.last_mut() {
            Some((_, end)) if c <= end.saturating_add(gap) => *end = c.saturating_add(1),
            _ => ranges.push((c, c.saturating_add(1))),
        }
    }
    ranges
}

/// An opened base, ready for overlay creation and synthesis.
#[derive(Debug)]
pub struct Base {
    paths: BasePaths,
    disk: File,
    memory: Option<(File, SaveFileLayout)>,
    hashes: HashList,
    index: HashIndex,
    id: ChunkHash,
}

impl Base {
    /// Opens a base created by [`create_base`] and checks its files agree.
    pub fn open(paths: &BasePaths) -> Result<Self, BaseError> {
        let hashes = HashList::open(&paths.hash_list)?;
        let index = HashIndex::open(&paths.index)?;
        let disk = File::open(&paths.disk).map_err(BaseError::io(&paths.disk))?;
        let disk_size = disk.metadata().map_err(BaseError::io(&paths.disk))?.len();
        if disk_size != hashes.disk_size() {
            return Err(BaseError::Inconsistent(format!(
                "disk is {disk_size} bytes, hash list says {}",
                hashes.disk_size()
            )));
        }
        let memory = if hashes.memory_pages() > 0 {
            let (layout, _) = read_memory_meta(&paths.memory_meta)?;
            if layout.page_count() != hashes.memory_pages() {
                return Err(BaseError::Inconsistent(
                    "memory layout and hash list disagree".into(),
                ));
            }
            let pages =
                File::open(&paths.memory_pages).map_err(BaseError::io(&paths.memory_pages))?;
            Some((pages, layout))
        } else {
            None
        };
        let id = hashes.identity();
        Ok(Self {
            paths: paths.clone(),
            disk,
            memory,
            hashes,
            index,
            id,
        })
    }

    /// The base's identity (blake3 of its hash list).
    pub fn id(&self) -> &ChunkHash {
        &self.id
    }

    /// Its files.
    pub fn paths(&self) -> &BasePaths {
        &self.paths
    }

    /// Disk size in bytes.
    pub fn disk_size(&self) -> u64 {
        self.hashes.disk_size()
    }

    /// What an overlay must agree with to apply to this base (checked as it is opened,
    /// [`crate::format::OverlayReader::open_for_base`]).
    pub fn shape(&self) -> crate::format::BaseShape {
        crate::format::BaseShape {
            id: self.id,
            disk_size: self.disk_size(),
            memory_pages: self.memory_layout().map_or(0, SaveFileLayout::page_count),
        }
    }

    /// The memory snapshot's layout, unless the base is disk-only.
    pub fn memory_layout(&self) -> Option<&SaveFileLayout> {
        self.memory.as_ref().map(|(_, l)| l)
    }

    /// Hash lists.
    pub fn hashes(&self) -> &HashList {
        &self.hashes
    }

    /// The base chunk with this hash, if any (zero chunks are never found).
    pub fn find(&self, hash: &ChunkHash) -> Option<Location> {
        self.index.lookup(hash, &self.hashes)
    }

    /// Hash of the base chunk at `loc` (`None` outside the base).
    pub fn hash_at(&self, loc: Location) -> Option<&ChunkHash> {
        self.hashes.get(loc)
    }

    /// Whether the base's memory page `page` is all zero (from the hash list; false for a
    /// page the base does not have).
    pub fn memory_page_is_zero(&self, page: u64) -> bool {
        let loc = Location {
            kind: ImageKind::Memory,
            index: page,
        };
        self.hash_at(loc) == Some(&zero_chunk_hash())
    }

    /// Whether `data` is the base's memory page `page`, read only if the page cache holds
    /// it (`RWF_NOWAIT`): false when it differs, is not cached, or cannot be read. A
    /// comparison is cheap next to a hash, but never worth waiting for the device.
    pub fn memory_page_is_cached_copy(&self, page: u64, data: &Chunk) -> bool {
        let Some((file, _)) = &self.memory else {
            return false;
        };
        if page >= self.hashes.memory_pages() {
            return false;
        }
        let mut source = [0u8; CHUNK_SIZE_BYTES];
        let read = rustix::io::preadv2(
            file,
            &mut [io::IoSliceMut::new(&mut source)],
            page * CHUNK_SIZE_U64,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        matches!(read, Ok(CHUNK_SIZE_BYTES)) && source == *data
    }

    /// Reads the base chunk at `loc`.
    pub fn read_chunk(&self, loc: Location, buf: &mut Chunk) -> Result<(), BaseError> {
        if loc.index >= self.hashes.len(loc.kind) {
            return Err(BaseError::Inconsistent(format!(
                "{} chunk {} is outside the base",
                loc.kind.name(),
                loc.index
            )));
        }
        match (loc.kind, &self.memory) {
            (ImageKind::Disk, _) => read_raw_chunk(&self.disk, self.disk_size(), loc.index, buf)
                .map_err(BaseError::io(&self.paths.disk)),
            (ImageKind::Memory, Some((pages, _))) => pages
                .read_exact_at(buf, loc.index * CHUNK_SIZE_U64)
                .map_err(BaseError::io(&self.paths.memory_pages)),
            (ImageKind::Memory, None) => Err(BaseError::Inconsistent("base has no memory".into())),
        }
    }

    /// Asks the kernel to read the base disk chunks `chunks` (indexes, any order) into the
    /// page cache in the background, so that reading them later does not wait for the
    /// device one chunk at a time. Close chunks are asked as one range. Only a hint:
    /// failures are ignored.
    ///
    /// Why it matters: QEMU drops the page cache of a VM's disk images, the base disk it
    /// is backed by included, when an incoming migration (a restore) completes
    /// (`POSIX_FADV_DONTNEED` in its cache invalidation). So after any restore on this
    /// base, the chunks a synthesis copies from the base disk come from the device.
    pub fn prefetch_disk_chunks(&self, chunks: impl IntoIterator<Item = u64>) {
        for (start, end) in chunk_ranges(chunks.into_iter().collect(), PREFETCH_GAP_CHUNKS) {
            // Indexes come from an overlay: saturate, and never pass a zero length
            // (which means "to the end of the file").
            let offset = start.saturating_mul(CHUNK_SIZE_U64);
            let len = end.saturating_sub(start).saturating_mul(CHUNK_SIZE_U64);
            if let Some(len) = std::num::NonZeroU64::new(len) {
                let _ = rustix::fs::fadvise(
                    &self.disk,
                    offset,
                    Some(len),
                    rustix::fs::Advice::WillNeed,
                );
            }
        }
    }

    /// Writes a record of every non-zero page of the snapshot to `writer` (named `name`
    /// in errors), in page order: a save file's pages, or a restore stream's.
    pub fn write_memory_records<W: Write>(
        &self,
        writer: &mut SaveFileWriter<W>,
        name: &Path,
    ) -> Result<(), BaseError> {
        let pages = self.memory_layout().map_or(0, SaveFileLayout::page_count);
        self.visit_memory_pages(
            pages,
            |_| true,
            |index, page| {
                writer
                    .write_record(index, page)
                    .map_err(BaseError::save(name))?;
                Ok::<_, BaseError>(true)
            },
        )
    }

    /// Reads consecutive memory pages starting at `first` into `buf` (a multiple of 4 KiB).
    pub fn read_memory_pages(&self, first: u64, buf: &mut [u8]) -> Result<(), BaseError> {
        let pages = buf.len() as u64 / CHUNK_SIZE_U64;
        match &self.memory {
            Some((file, _)) if first.saturating_add(pages) <= self.hashes.memory_pages() => file
                .read_exact_at(buf, first * CHUNK_SIZE_U64)
                .map_err(BaseError::io(&self.paths.memory_pages)),
            _ => Err(BaseError::Inconsistent(format!(
                "memory pages {first}.. are outside the base"
            ))),
        }
    }

    /// Visits, in order, the memory pages below `pages` for which `wanted` is true (an
    /// error if the base has fewer): a zero page (known from the hash list) as `None`,
    /// without reading it; the others read in runs of consecutive pages. Stops early when `visit` returns `Ok(false)`. Guest memory is
    /// mostly zero pages: reading and scanning them cost more than writing the rest.
    pub fn visit_memory_pages<E: From<BaseError>>(
        &self,
        pages: u64,
        wanted: impl Fn(u64) -> bool,
        mut visit: impl FnMut(u64, Option<&Chunk>) -> Result<bool, E>,
    ) -> Result<(), E> {
        if pages > self.hashes.memory_pages() {
            return Err(BaseError::Inconsistent(format!(
                "{pages} memory pages asked for, the base has {}",
                self.hashes.memory_pages()
            ))
            .into());
        }
        let mut run = vec![0u8; MEMORY_RUN_BYTES];
        let mut index = 0;
        while index < pages {
            if !wanted(index) {
                index += 1;
                continue;
            }
            if self.memory_page_is_zero(index) {
                if !visit(index, None)? {
                    return Ok(());
                }
                index += 1;
                continue;
            }
            let mut end = index + 1;
            while end < pages
                && end - index < MEMORY_RUN_PAGES
                && wanted(end)
                && !self.memory_page_is_zero(end)
            {
                end += 1;
            }
            let bytes = &mut run[..usize::try_from(end - index).unwrap_or(0) * CHUNK_SIZE_BYTES];
            self.read_memory_pages(index, bytes)?;
            for (page, data) in (index..end).zip(bytes.chunks_exact(CHUNK_SIZE_BYTES)) {
                let data: &Chunk = data
                    .try_into()
                    .map_err(|_| BaseError::Inconsistent("page size".into()))?;
                if !visit(page, Some(data))? {
                    return Ok(());
                }
            }
            index = end;
        }
        Ok(())
    }
}

/// Memory pages read per positional read by [`Base::visit_memory_pages`].
const MEMORY_RUN_BYTES: usize = 256 * CHUNK_SIZE_BYTES;
const MEMORY_RUN_PAGES: u64 = (MEMORY_RUN_BYTES / CHUNK_SIZE_BYTES) as u64;

/// Writes the base's own memory snapshot back as a libvirt save file (to resume the base,
/// e.g. to customize it), optionally with another domain XML.
pub fn write_base_save_file(
    base: &Base,
    out: &Path,
    domain_xml: Option<&str>,
) -> Result<(), BaseError> {
    let file = AtomicFile::create(out).map_err(BaseError::io(out))?;
    let file = write_base_save(base, file, domain_xml, out)?;
    file.commit().map_err(BaseError::io(out))?;
    Ok(())
}

/// Like [`write_base_save_file`], into a stream (the FIFO a restore reads), which is
/// closed when this returns: early, truncating the save file, on an error.
pub fn stream_base_save_file<W: Write>(
    base: &Base,
    out: W,
    domain_xml: Option<&str>,
) -> Result<(), BaseError> {
    write_base_save(base, out, domain_xml, Path::new("restore stream")).map(drop)
}

/// Writes the base's save file to `out` (named `name` in errors); returns `out`.
fn write_base_save<W: Write>(
    base: &Base,
    out: W,
    domain_xml: Option<&str>,
    name: &Path,
) -> Result<W, BaseError> {
    let Some(layout) = base.memory_layout() else {
        return Err(BaseError::Inconsistent(
            "base has no memory snapshot".into(),
        ));
    };
    let (_, device_state) = read_memory_meta(&base.paths.memory_meta)?;
    let mut writer = SaveFileWriter::new(
        BufWriter::with_capacity(IO_BUFFER_BYTES, out),
        layout,
        domain_xml,
    )
    .map_err(BaseError::save(name))?;
    base.write_memory_records(&mut writer, name)?;
    let buffered = writer
        .finish(&device_state)
        .map_err(BaseError::save(name))?;
    buffered
        .into_inner()
        .map_err(|e| BaseError::io(name)(e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::chunk_ranges;

    #[test]
    fn prefetch_ranges_join_close_chunks_and_keep_far_ones_apart() {
        assert_eq!(chunk_ranges(vec![], 8), vec![]);
        assert_eq!(
            chunk_ranges(vec![40, 3, 5, 3, 14, 100, 13], 8),
            vec![(3, 15), (40, 41), (100, 101)]
        );
        assert_eq!(chunk_ranges(vec![0, 9], 8), vec![(0, 10)]);
        assert_eq!(chunk_ranges(vec![0, 10], 8), vec![(0, 1), (10, 11)]);
        assert_eq!(chunk_ranges(vec![u64::MAX], 8), vec![(u64::MAX, u64::MAX)]);
    }
}
