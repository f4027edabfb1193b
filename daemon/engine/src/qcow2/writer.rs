//! Writing a qcow2 v3 overlay (4 KiB clusters) chunk by chunk. Layout: see the module doc.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    Qcow2Error, EXT_BACKING_FORMAT, EXT_END, MAGIC, MAX_BACKING_NAME_BYTES, MAX_L1_BYTES,
    OFLAG_COPIED, V3_HEADER_LEN,
};
use crate::chunk::{Chunk, CHUNK_SIZE_BYTES, CHUNK_SIZE_U64};

/// log2 of the cluster size the writer uses: one cluster per chunk.
const CLUSTER_BITS: u32 = 12;
/// Cluster size in bytes.
const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// Entries per L2 table (one 4 KiB cluster of `u64`).
const L2_ENTRIES: u64 = CLUSTER_SIZE / 8;
/// Entries per cluster of the L1 table or the refcount table.
const TABLE_ENTRIES_PER_CLUSTER: u64 = CLUSTER_SIZE / 8;
/// Refcount width: 2^4 = 16 bits.
const REFCOUNT_ORDER: u32 = 4;
/// 16-bit refcounts per refcount block.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER_SIZE * 8 / (1 << REFCOUNT_ORDER);
/// Largest virtual size whose L1 table stays within QEMU's 32 MiB limit: 8 TiB.
const MAX_VIRTUAL_SIZE: u64 = MAX_L1_BYTES / 8 * L2_ENTRIES * CLUSTER_SIZE;
/// Longest backing format name QEMU accepts (its buffer holds 15 bytes plus a NUL).
const MAX_BACKING_FORMAT_BYTES: usize = 15;
/// Metadata is staged in a buffer of this size before being written.
const METADATA_BUFFER_BYTES: usize = 1 << 20;

const _: () = assert!(
    CHUNK_SIZE_U64 == CLUSTER_SIZE,
    "one chunk must be one cluster"
);

/// Writes a qcow2 v3 image backed by a base disk, holding only the chunks given to it.
///
/// Two ways to lay it out:
/// - [`create`](Self::create): data clusters are appended as chunks arrive; the writer
///   keeps only a map from guest chunk index to host cluster. Nothing is a valid image
///   until [`Qcow2Writer::finish`] writes the metadata and the header; a writer dropped
///   before that leaves a file whose header cluster is all zeros.
/// - [`create_planned`](Self::create_planned): the chunks that will be written are known
///   in advance, so every cluster is placed and the metadata and header are written at
///   once. The file is a valid image from the start (its data clusters read as zeros
///   until written), which lets QEMU open it while the chunks are still arriving (a
///   streamed restore: QEMU opens its disks when it starts, and re-reads their metadata
///   only when the incoming migration completes).
#[derive(Debug)]
pub struct Qcow2Writer {
    file: File,
    virtual_size: u64,
    /// Number of guest chunks: `virtual_size` divided by 4096, rounded up.
    chunk_count: u64,
    backing_file: String,
    backing_format: String,
    /// Guest chunk index → host cluster number of its data.
    clusters: BTreeMap<u64, u32>,
    /// Next free host cluster (cluster 0 is the header).
    next_cluster: u64,
    /// Data of the newest clusters, `pending_first..next_cluster`, not yet written: new
    /// clusters are consecutive in the file, so they go out in large writes.
    pending: Vec<u8>,
    /// Host cluster of `pending`'s first byte.
    pending_first: u64,
    /// Planned layout: which planned clusters hold their data yet (index: cluster - 1).
    /// `None` for an appended layout.
    planned: Option<Vec<bool>>,
    /// Planned chunks written so far.
    planned_written: u64,
}

/// Bytes of new clusters gathered before one write.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

impl Qcow2Writer {
    /// Creates `path`, which must not exist, for a qcow2 v3 image of `virtual_size` bytes
    /// (a multiple of 512, at most 8 TiB) backed by `backing_file` in format `backing_format`
    /// (e.g. "raw"). Both names are stored as given; QEMU resolves a relative backing file name
    /// against the directory of the image.
    pub fn create(
        path: &Path,
        virtual_size: u64,
        backing_file: &str,
        backing_format: &str,
    ) -> Result<Self, Qcow2Error> {
        let file = Self::create_file(path, virtual_size, backing_file, backing_format)?;
        // Reserve the header cluster; it stays zero until `finish`.
        file.set_len(CLUSTER_SIZE)?;
        Ok(Qcow2Writer {
            file,
            virtual_size,
            chunk_count: virtual_size.div_ceil(CHUNK_SIZE_U64),
            backing_file: backing_file.to_owned(),
            backing_format: backing_format.to_owned(),
            clusters: BTreeMap::new(),
            next_cluster: 1,
            pending: Vec::with_capacity(WRITE_BUFFER_BYTES),
            pending_first: 1,
            planned: None,
            planned_written: 0,
        })
    }

    /// Like [`create`](Self::create), for an image that will hold exactly the chunks
    /// `chunks` (guest chunk indexes, in any order, repeats ignored): the image's metadata
    /// and header are written before this returns, so the file is a valid qcow2 image at
    /// once (the planned chunks read as zeros until written; every one must be written
    /// before [`finish`](Self::finish)). Data clusters lie in guest order right after the
    /// header.
    pub fn create_planned(
        path: &Path,
        virtual_size: u64,
        backing_file: &str,
        backing_format: &str,
        chunks: impl IntoIterator<Item = u64>,
    ) -> Result<Self, Qcow2Error> {
        Self::planned(
            path,
            false,
            (virtual_size, backing_file, backing_format),
            chunks,
        )
    }

    /// Like [`create_planned`](Self::create_planned), over the existing image at `path`:
    /// the same file (inode) is truncated and rewritten, for a reader that opened it
    /// already and reads its metadata again before it uses it (QEMU's incoming migration
    /// does, when the migration completes).
    pub fn replace_planned(
        path: &Path,
        virtual_size: u64,
        backing_file: &str,
        backing_format: &str,
        chunks: impl IntoIterator<Item = u64>,
    ) -> Result<Self, Qcow2Error> {
        Self::planned(
            path,
            true,
            (virtual_size, backing_file, backing_format),
            chunks,
        )
    }

    fn planned(
        path: &Path,
        replace: bool,
        (virtual_size, backing_file, backing_format): (u64, &str, &str),
        chunks: impl IntoIterator<Item = u64>,
    ) -> Result<Self, Qcow2Error> {
        let chunk_count = virtual_size.div_ceil(CHUNK_SIZE_U64);
        let indexes: std::collections::BTreeSet<u64> = chunks.into_iter().collect();
        if let Some(&last) = indexes.last() {
            if last >= chunk_count {
                return Err(Qcow2Error::OutOfRange {
                    offset: last.saturating_mul(CHUNK_SIZE_U64),
                    length: CHUNK_SIZE_U64,
                    virtual_size,
                });
            }
        }
        let mut clusters = BTreeMap::new();
        for (n, index) in indexes.into_iter().enumerate() {
            let cluster = u32::try_from(n + 1)
                .map_err(|_| Qcow2Error::invalid_argument("too many chunks for one qcow2 image"))?;
            clusters.insert(index, cluster);
        }
        let count = clusters.len();
        let file = match replace {
            true => {
                Self::check_arguments(virtual_size, backing_file, backing_format)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .truncate(true)
                    .open(path)?
            }
            false => Self::create_file(path, virtual_size, backing_file, backing_format)?,
        };
        let writer = Qcow2Writer {
            file,
            virtual_size,
            chunk_count,
            backing_file: backing_file.to_owned(),
            backing_format: backing_format.to_owned(),
            clusters,
            next_cluster: count as u64 + 1,
            pending: Vec::with_capacity(WRITE_BUFFER_BYTES),
            pending_first: 1,
            planned: Some(vec![false; count]),
            planned_written: 0,
        };
        if let Err(e) = writer.write_metadata() {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(writer)
    }

    /// Checks the arguments of a new image and creates its file, which must not exist.
    fn create_file(
        path: &Path,
        virtual_size: u64,
        backing_file: &str,
        backing_format: &str,
    ) -> Result<File, Qcow2Error> {
        Self::check_arguments(virtual_size, backing_file, backing_format)?;
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?)
    }

    /// Checks the arguments of a new image.
    fn check_arguments(
        virtual_size: u64,
        backing_file: &str,
        backing_format: &str,
    ) -> Result<(), Qcow2Error> {
        if backing_file.is_empty() || backing_file.len() > MAX_BACKING_NAME_BYTES {
            return Err(Qcow2Error::invalid_argument(format!(
                "backing file name must be 1 to {MAX_BACKING_NAME_BYTES} bytes"
            )));
        }
        if backing_format.is_empty() || backing_format.len() > MAX_BACKING_FORMAT_BYTES {
            return Err(Qcow2Error::invalid_argument(format!(
                "backing format name must be 1 to {MAX_BACKING_FORMAT_BYTES} bytes"
            )));
        }
        if backing_file.contains('\0') || backing_format.contains('\0') {
            return Err(Qcow2Error::invalid_argument(
                "backing file and format names must not contain nul bytes",
            ));
        }
        if virtual_size % 512 != 0 {
            return Err(Qcow2Error::invalid_argument(format!(
                "virtual size {virtual_size} is not a multiple of 512"
            )));
        }
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::invalid_argument(format!(
                "virtual size {virtual_size} is above the 8 TiB limit"
            )));
        }
        Ok(())
    }

    /// The cluster after the last one in the write buffer.
    fn pending_end(&self) -> u64 {
        self.pending_first + (self.pending.len() / CHUNK_SIZE_BYTES) as u64
    }

    /// Where cluster `cluster`'s bytes sit in the write buffer, if they are still there.
    fn pending_range(&self, cluster: u64) -> Option<std::ops::Range<usize>> {
        if cluster < self.pending_first || cluster >= self.pending_end() {
            return None;
        }
        let start = usize::try_from((cluster - self.pending_first) * CLUSTER_SIZE).ok()?;
        Some(start..start + CHUNK_SIZE_BYTES)
    }

    /// Writes the buffered clusters out.
    fn flush_pending(&mut self) -> Result<(), Qcow2Error> {
        if !self.pending.is_empty() {
            self.file
                .write_all_at(&self.pending, self.pending_first * CLUSTER_SIZE)?;
            self.pending.clear();
        }
        self.pending_first = self.next_cluster;
        Ok(())
    }

    /// Writes the 4 KiB chunk at guest chunk index `index` (guest offset `index * 4096`).
    /// The last chunk of a disk whose size is not a multiple of 4096 is passed padded; the
    /// padding is stored but never visible to the guest. Writing an index again overwrites
    /// its cluster in place.
    pub fn write_chunk(&mut self, index: u64, data: &Chunk) -> Result<(), Qcow2Error> {
        self.check_index(index)?;
        if self.planned.is_some() {
            return self.write_planned(index, data);
        }
        if let Some(&cluster) = self.clusters.get(&index) {
            match self.pending_range(u64::from(cluster)) {
                Some(range) => self.pending[range].copy_from_slice(data),
                None => self
                    .file
                    .write_all_at(data, u64::from(cluster) * CLUSTER_SIZE)?,
            }
            return Ok(());
        }
        let cluster = u32::try_from(self.next_cluster)
            .map_err(|_| Qcow2Error::invalid_argument("too many chunks for one qcow2 image"))?;
        self.pending.extend_from_slice(data);
        self.clusters.insert(index, cluster);
        self.next_cluster += 1;
        if self.pending.len() >= WRITE_BUFFER_BYTES {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// Planned layout: writes `data` into the cluster planned for `index`, buffering runs
    /// of consecutive clusters (chunks usually arrive in guest order).
    fn write_planned(&mut self, index: u64, data: &Chunk) -> Result<(), Qcow2Error> {
        let Some(&cluster) = self.clusters.get(&index) else {
            return Err(Qcow2Error::invalid_argument(format!(
                "chunk {index} is not one of the chunks the image was planned for"
            )));
        };
        let cluster = u64::from(cluster);
        if let Some(range) = self.pending_range(cluster) {
            self.pending[range].copy_from_slice(data);
            return Ok(());
        }
        if cluster != self.pending_end() || self.pending.len() >= WRITE_BUFFER_BYTES {
            self.flush_pending()?;
            self.pending_first = cluster;
        }
        self.pending.extend_from_slice(data);
        if let Some(written) = self
            .planned
            .as_mut()
            .and_then(|w| w.get_mut(usize::try_from(cluster - 1).ok()?))
        {
            if !*written {
                *written = true;
                self.planned_written += 1;
            }
        }
        Ok(())
    }

    /// Reads back the chunk written at `index` into `buf`; `Ok(false)` (and `buf` untouched)
    /// if that index was never written.
    pub fn read_chunk(&mut self, index: u64, buf: &mut Chunk) -> Result<bool, Qcow2Error> {
        self.check_index(index)?;
        let written = |cluster: u32| match &self.planned {
            Some(w) => w.get(cluster as usize - 1).copied().unwrap_or(false),
            None => true,
        };
        match self.clusters.get(&index) {
            Some(&cluster) if written(cluster) => {
                match self.pending_range(u64::from(cluster)) {
                    Some(range) => buf.copy_from_slice(&self.pending[range]),
                    None => self
                        .file
                        .read_exact_at(buf, u64::from(cluster) * CLUSTER_SIZE)?,
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Number of distinct chunk indexes written so far.
    pub fn chunks_written(&self) -> u64 {
        match self.planned {
            Some(_) => self.planned_written,
            None => self.next_cluster - 1,
        }
    }

    /// Writes the L2 tables, the L1 table, the refcount table and blocks, flushes them, then
    /// writes the header and fsyncs the file. Returns the file (positioned at 0, open for
    /// reading and writing).
    pub fn finish(self) -> Result<File, Qcow2Error> {
        self.finish_with(true)
    }

    /// [`finish`](Self::finish), with the fsyncs only when `durable`: an image for a VM that
    /// is about to run is worthless after a crash anyway, and the fsyncs cost more than
    /// writing it.
    pub fn finish_with(mut self, durable: bool) -> Result<File, Qcow2Error> {
        self.flush_pending()?;
        if let Some(written) = &self.planned {
            if let Some(missing) = written.iter().position(|w| !w) {
                let index = self
                    .clusters
                    .iter()
                    .find(|(_, &c)| c as usize == missing + 1)
                    .map_or(0, |(&i, _)| i);
                return Err(Qcow2Error::invalid_argument(format!(
                    "planned chunk {index} was never written ({} of {} are)",
                    self.planned_written,
                    written.len()
                )));
            }
            if durable {
                self.file.sync_all()?;
            }
            return Ok(self.file);
        }
        let header = self.write_metadata_with(durable)?;
        self.file.write_all_at(&header, 0)?;
        if durable {
            self.file.sync_all()?;
        }
        Ok(self.file)
    }

    /// Planned layout: writes the metadata, then the header.
    fn write_metadata(&self) -> Result<(), Qcow2Error> {
        let header = self.write_metadata_with(false)?;
        self.file.write_all_at(&header, 0)?;
        Ok(())
    }

    /// Writes the L2 tables, the L1 table, the refcount table and blocks behind cluster
    /// `next_cluster - 1` (syncing them when `durable`) and returns the header to write.
    fn write_metadata_with(&self, durable: bool) -> Result<Vec<u8>, Qcow2Error> {
        let l2_count = count_l2_tables(self.clusters.keys());
        let l1_size = self.virtual_size.div_ceil(L2_ENTRIES * CLUSTER_SIZE);
        let layout = Layout::compute(self.next_cluster, l2_count, l1_size);
        let header = encode_header(
            self.virtual_size,
            &self.backing_file,
            &self.backing_format,
            &layout,
        )?;

        let mut out = MetadataWriter::new(&self.file, layout.l2_start);

        // L2 tables, in guest order, and the L1 entries pointing to them.
        let mut l1_entries: Vec<(u64, u64)> = Vec::new();
        let mut table = [0u8; CHUNK_SIZE_BYTES];
        let mut current: Option<u64> = None;
        for (&index, &cluster) in &self.clusters {
            let l1_index = index / L2_ENTRIES;
            if current != Some(l1_index) {
                if current.is_some() {
                    out.push(&table)?;
                    table = [0u8; CHUNK_SIZE_BYTES];
                }
                let l2_cluster = layout.l2_start + u64::try_from(l1_entries.len()).unwrap_or(0);
                l1_entries.push((l1_index, l2_cluster));
                current = Some(l1_index);
            }
            let entry = (u64::from(cluster) * CLUSTER_SIZE) | OFLAG_COPIED;
            put_entry(&mut table, index % L2_ENTRIES, entry);
        }
        if current.is_some() {
            out.push(&table)?;
        }

        // L1 table.
        let mut next_entry = l1_entries.iter().peekable();
        for l1_cluster in 0..layout.l1_clusters {
            let first = l1_cluster * TABLE_ENTRIES_PER_CLUSTER;
            let mut block = [0u8; CHUNK_SIZE_BYTES];
            while let Some(&&(l1_index, l2_cluster)) = next_entry.peek() {
                if l1_index >= first + TABLE_ENTRIES_PER_CLUSTER {
                    break;
                }
                put_entry(
                    &mut block,
                    l1_index - first,
                    (l2_cluster * CLUSTER_SIZE) | OFLAG_COPIED,
                );
                next_entry.next();
            }
            out.push(&block)?;
        }

        // Refcount table.
        for rt_cluster in 0..layout.rt_clusters {
            let first = rt_cluster * TABLE_ENTRIES_PER_CLUSTER;
            let mut block = [0u8; CHUNK_SIZE_BYTES];
            for slot in 0..TABLE_ENTRIES_PER_CLUSTER {
                let block_index = first + slot;
                if block_index >= layout.rb_count {
                    break;
                }
                put_entry(
                    &mut block,
                    slot,
                    (layout.rb_start + block_index) * CLUSTER_SIZE,
                );
            }
            out.push(&block)?;
        }

        // Refcount blocks: refcount 1 for every cluster of the file.
        for rb_index in 0..layout.rb_count {
            let first = rb_index * REFCOUNTS_PER_BLOCK;
            let used = layout
                .total_clusters
                .saturating_sub(first)
                .min(REFCOUNTS_PER_BLOCK);
            let mut block = [0u8; CHUNK_SIZE_BYTES];
            for pair in block
                .chunks_exact_mut(2)
                .take(usize::try_from(used).unwrap_or(0))
            {
                pair.copy_from_slice(&1u16.to_be_bytes());
            }
            out.push(&block)?;
        }
        out.flush()?;
        debug_assert_eq!(out.offset, layout.total_clusters * CLUSTER_SIZE);

        // Drop anything a failed chunk write may have left past the last cluster.
        self.file.set_len(layout.total_clusters * CLUSTER_SIZE)?;
        if durable {
            self.file.sync_data()?;
        }
        Ok(header)
    }

    fn check_index(&self, index: u64) -> Result<(), Qcow2Error> {
        if index >= self.chunk_count {
            return Err(Qcow2Error::OutOfRange {
                offset: index.saturating_mul(CHUNK_SIZE_U64),
                length: CHUNK_SIZE_U64,
                virtual_size: self.virtual_size,
            });
        }
        Ok(())
    }
}

/// Where `finish` puts the metadata, in clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    /// First L2 table (the first cluster after the data).
    pub(super) l2_start: u64,
    /// Number of L2 tables.
    pub(super) l2_count: u64,
    /// First cluster of the L1 table.
    pub(super) l1_start: u64,
    /// L1 entries.
    pub(super) l1_size: u64,
    /// Clusters of the L1 table (none for a zero-sized disk).
    pub(super) l1_clusters: u64,
    /// First cluster of the refcount table.
    pub(super) rt_start: u64,
    /// Clusters of the refcount table.
    pub(super) rt_clusters: u64,
    /// First refcount block.
    pub(super) rb_start: u64,
    /// Number of refcount blocks.
    pub(super) rb_count: u64,
    /// Clusters in the file.
    pub(super) total_clusters: u64,
}

impl Layout {
    /// Lays out `l2_count` L2 tables, an L1 table of `l1_size` entries, the refcount table and
    /// the refcount blocks from cluster `first_free` on. The refcount blocks must cover
    /// themselves and the table, so their number is the smallest fixed point of
    /// `blocks = ceil(total(blocks, table(blocks)) / 2048)`.
    pub(super) fn compute(first_free: u64, l2_count: u64, l1_size: u64) -> Layout {
        let l1_start = first_free + l2_count;
        let l1_clusters = l1_size.div_ceil(TABLE_ENTRIES_PER_CLUSTER);
        let rt_start = l1_start + l1_clusters;
        let mut rt_clusters = 1;
        let mut rb_count = 0;
        loop {
            let total = rt_start + rt_clusters + rb_count;
            let blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let table = blocks.div_ceil(TABLE_ENTRIES_PER_CLUSTER).max(1);
            if blocks == rb_count && table == rt_clusters {
                break;
            }
            rb_count = blocks;
            rt_clusters = table;
        }
        let rb_start = rt_start + rt_clusters;
        Layout {
            l2_start: first_free,
            l2_count,
            l1_start,
            l1_size,
            l1_clusters,
            rt_start,
            rt_clusters,
            rb_start,
            rb_count,
            total_clusters: rb_start + rb_count,
        }
    }
}

/// Number of distinct 2 MiB guest regions among sorted chunk indexes.
fn count_l2_tables<'a>(indexes: impl Iterator<Item = &'a u64>) -> u64 {
    let mut count = 0;
    let mut last = None;
    for &index in indexes {
        let region = index / L2_ENTRIES;
        if last != Some(region) {
            count += 1;
            last = Some(region);
        }
    }
    count
}

/// Stores big-endian `value` as entry `slot` of a one-cluster table.
fn put_entry(table: &mut [u8; CHUNK_SIZE_BYTES], slot: u64, value: u64) {
    let start = usize::try_from(slot * 8).unwrap_or(usize::MAX);
    if let Some(entry) = table.get_mut(start..start.saturating_add(8)) {
        entry.copy_from_slice(&value.to_be_bytes());
    }
}

/// The header cluster: header, backing format extension, end marker, backing file name.
fn encode_header(
    virtual_size: u64,
    backing_file: &str,
    backing_format: &str,
    layout: &Layout,
) -> Result<Vec<u8>, Qcow2Error> {
    let too_large = |what: &str| Qcow2Error::invalid_argument(format!("{what} too large"));
    let format_len =
        u32::try_from(backing_format.len()).map_err(|_| too_large("backing format"))?;
    let name_len = u32::try_from(backing_file.len()).map_err(|_| too_large("backing file"))?;
    let padded_format_len = u64::from(format_len).next_multiple_of(8);
    let backing_offset = u64::from(V3_HEADER_LEN) + 8 + padded_format_len + 8;
    let l1_size = u32::try_from(layout.l1_size).map_err(|_| too_large("l1 table"))?;
    let rt_clusters = u32::try_from(layout.rt_clusters).map_err(|_| too_large("refcount table"))?;

    let mut h = Vec::with_capacity(CHUNK_SIZE_BYTES);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&backing_offset.to_be_bytes());
    h.extend_from_slice(&name_len.to_be_bytes());
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&virtual_size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    h.extend_from_slice(&l1_size.to_be_bytes());
    // An empty L1 table has no clusters; QEMU stores offset 0 for it too.
    let l1_offset = if layout.l1_clusters == 0 {
        0
    } else {
        layout.l1_start * CLUSTER_SIZE
    };
    h.extend_from_slice(&l1_offset.to_be_bytes());
    h.extend_from_slice(&(layout.rt_start * CLUSTER_SIZE).to_be_bytes());
    h.extend_from_slice(&rt_clusters.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    h.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h.extend_from_slice(&V3_HEADER_LEN.to_be_bytes());
    debug_assert_eq!(h.len(), V3_HEADER_LEN as usize);

    h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    h.extend_from_slice(&format_len.to_be_bytes());
    h.extend_from_slice(backing_format.as_bytes());
    h.resize(h.len().next_multiple_of(8), 0);
    h.extend_from_slice(&EXT_END.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    debug_assert_eq!(u64::try_from(h.len()).ok(), Some(backing_offset));
    h.extend_from_slice(backing_file.as_bytes());
    if h.len() > CHUNK_SIZE_BYTES {
        return Err(too_large("header"));
    }
    h.resize(CHUNK_SIZE_BYTES, 0);
    Ok(h)
}

/// Buffers consecutive metadata clusters and writes them in large positional writes.
struct MetadataWriter<'a> {
    file: &'a File,
    /// File offset of the next cluster pushed.
    offset: u64,
    /// File offset of the first buffered byte.
    buffered_at: u64,
    buffer: Vec<u8>,
}

impl<'a> MetadataWriter<'a> {
    fn new(file: &'a File, first_cluster: u64) -> Self {
        let offset = first_cluster * CLUSTER_SIZE;
        MetadataWriter {
            file,
            offset,
            buffered_at: offset,
            buffer: Vec::with_capacity(METADATA_BUFFER_BYTES),
        }
    }

    fn push(&mut self, cluster: &[u8; CHUNK_SIZE_BYTES]) -> Result<(), Qcow2Error> {
        self.buffer.extend_from_slice(cluster);
        self.offset += CLUSTER_SIZE;
        if self.buffer.len() >= METADATA_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Qcow2Error> {
        self.file.write_all_at(&self.buffer, self.buffered_at)?;
        self.buffer.clear();
        self.buffered_at = self.offset;
        Ok(())
    }
}
