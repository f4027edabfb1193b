//! Overlay creation: base + customized VM → one overlay file.
//!
//! Chunks flow in batches: a batch is read and classified in parallel (hash, base lookup,
//! xdelta3), then recorded in order (intra-overlay dedup, segment assembly); full segments
//! are compressed in parallel and written in order. Memory comes first, in save-file order,
//! then disk in ascending chunk order, so a VM can resume before the disk part arrives.
//! Peak memory: one batch, a few segments, and ~100 bytes per modified chunk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::base::{Base, BaseError};
use crate::chunk::{zero_chunk_hash, Chunk, ChunkHash, ImageKind, CHUNK_SIZE_BYTES};
use crate::diff::{classify, classify_zero, delta_against_base, Class};
use crate::disk::{DiskError, DiskSource};
use crate::format::{
    Encoding, FormatError, MemorySnapshot, OverlayMeta, OverlayWriter, Record, SEGMENT_MAX_RECORDS,
    SEGMENT_TARGET_BYTES,
};
use crate::hashlist::Location;
use crate::progress::Progress;
use crate::savefile::{SaveFileError, SaveFileReader};

/// Chunks classified per parallel batch.
const BATCH_CHUNKS: usize = 512;

/// Errors creating an overlay.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The customized memory snapshot could not be read.
    #[error("customized memory snapshot {path}")]
    SaveFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: SaveFileError,
    },
    /// Opening the customized memory snapshot failed.
    #[error("cannot open customized memory snapshot {path}")]
    OpenSaveFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The customized disk could not be read.
    #[error("customized disk")]
    Disk(#[from] DiskError),
    /// The base could not be read.
    #[error("base")]
    Base(#[from] BaseError),
    /// The overlay file could not be written.
    #[error("writing overlay")]
    Format(#[from] FormatError),
    /// The customized VM does not fit the base.
    #[error("customized VM does not match the base: {0}")]
    Mismatch(String),
    /// The thread pool could not start.
    #[error("cannot start encoder threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
}

/// Tuning of overlay creation.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// zstd level of the payload segments (1..=19; 3 trades size and speed well).
    pub zstd_level: i32,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Properties stored in the overlay (e.g. `guest-ports`).
    pub properties: Vec<(String, String)>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            threads: 0,
            properties: Vec::new(),
        }
    }
}

/// The customized VM.
pub struct EncodeInput<'a> {
    /// Its memory snapshot (a libvirt save file); `None` for a disk-only overlay.
    pub memory: Option<&'a Path>,
    /// Its disk.
    pub disk: &'a DiskSource,
}

/// What an encode produced.
#[derive(Debug, Clone)]
pub struct EncodeSummary {
    /// The overlay's metadata (counts, segments, records).
    pub meta: OverlayMeta,
    /// Size of the overlay file.
    pub file_size: u64,
    /// Bytes of modified chunks examined (memory pages + disk candidates, 4 KiB each).
    pub examined_bytes: u64,
    /// Time spent on memory.
    pub memory_time: Duration,
    /// Time spent on disk.
    pub disk_time: Duration,
    /// Time spent writing the file.
    pub finish_time: Duration,
}

/// Builds an overlay of `input` against `base` at `out` (written atomically).
pub fn encode(
    base: &Base,
    input: &EncodeInput<'_>,
    out: &Path,
    options: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<EncodeSummary, EncodeError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .build()
        .map_err(EncodeError::Threads)?;
    pool.install(|| encode_in_pool(base, input.memory, input.disk, out, options, progress))
}

/// Like [`encode`], with the memory snapshot read from `memory` as it is written (e.g.
/// the FIFO a save writes into: the pages are classified while the VM is being saved).
/// The parser makes small reads: `memory` should buffer (it is not wrapped again, which
/// would copy every byte once more).
/// `name` names it in errors. The disk is opened with `open_disk` once the memory stream
/// has ended (a VM being saved still changes its disk's metadata until then).
pub fn encode_streamed(
    base: &Base,
    memory: &mut (dyn Read + Send),
    name: &str,
    open_disk: impl FnOnce() -> Result<DiskSource, DiskError> + Send,
    out: &Path,
    options: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<EncodeSummary, EncodeError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .build()
        .map_err(EncodeError::Threads)?;
    let mut builder = Builder::new(base, out, options)?;
    pool.install(|| {
        let started = Instant::now();
        let memory = builder.add_memory(memory, name, progress)?;
        let memory_time = started.elapsed();
        let disk = open_disk()?;
        check_disk_size(base, &disk)?;
        finish_encode(builder, Some(memory), memory_time, &disk, options, progress)
    })
}

fn check_disk_size(base: &Base, disk: &DiskSource) -> Result<(), EncodeError> {
    if disk.size() != base.disk_size() {
        return Err(EncodeError::Mismatch(format!(
            "disk is {} bytes, base disk is {}",
            disk.size(),
            base.disk_size()
        )));
    }
    Ok(())
}

fn encode_in_pool(
    base: &Base,
    memory: Option<&Path>,
    disk: &DiskSource,
    out: &Path,
    options: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<EncodeSummary, EncodeError> {
    check_disk_size(base, disk)?;
    let mut builder = Builder::new(base, out, options)?;

    let started = Instant::now();
    let memory = match memory {
        Some(path) => {
            let file = File::open(path).map_err(|source| EncodeError::OpenSaveFile {
                path: path.display().to_string(),
                source,
            })?;
            let name = path.display().to_string();
            Some(builder.add_memory(BufReader::with_capacity(1 << 20, file), &name, progress)?)
        }
        None => None,
    };
    let memory_time = started.elapsed();
    finish_encode(builder, memory, memory_time, disk, options, progress)
}

/// Encodes the disk after the memory and writes the overlay.
fn finish_encode(
    mut builder: Builder<'_>,
    memory: Option<MemorySnapshot>,
    memory_time: Duration,
    disk: &DiskSource,
    options: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<EncodeSummary, EncodeError> {
    let started = Instant::now();
    builder.add_disk(disk, progress)?;
    let disk_time = started.elapsed();

    let started = Instant::now();
    let examined_bytes = builder.examined * CHUNK_SIZE_BYTES as u64;
    let mut properties = options.properties.clone();
    properties.sort();
    let (meta, file_size) = builder.finish(disk.size(), memory, properties)?;
    Ok(EncodeSummary {
        meta,
        file_size,
        examined_bytes,
        memory_time,
        disk_time,
        finish_time: started.elapsed(),
    })
}

/// What step B decided for one chunk of a batch.
enum Plan {
    /// Unchanged: nothing to record.
    Skip,
    /// Record with this payload-free encoding.
    Emit(Encoding),
    /// Stored with a payload: delta or raw, decided in step C.
    Store,
}

/// A segment assembled but not yet compressed.
struct PendingSegment {
    first_record: u64,
    record_count: u32,
    payload: Vec<u8>,
}

/// Accumulates records and segments.
struct Builder<'a> {
    base: &'a Base,
    writer: OverlayWriter,
    level: i32,
    records: Vec<Record>,
    /// Hash → record number of every chunk stored with a payload, for intra-overlay dedup.
    stored: HashMap<ChunkHash, u64>,
    segment_first: u64,
    segment_payload: Vec<u8>,
    pending: Vec<PendingSegment>,
    unchanged_memory: u64,
    unchanged_disk: u64,
    examined: u64,
}

impl<'a> Builder<'a> {
    fn new(base: &'a Base, out: &Path, options: &EncodeOptions) -> Result<Self, EncodeError> {
        Ok(Self {
            base,
            writer: OverlayWriter::create(out)?,
            level: options.zstd_level,
            records: Vec::new(),
            stored: HashMap::new(),
            segment_first: 0,
            segment_payload: Vec::with_capacity(SEGMENT_TARGET_BYTES + CHUNK_SIZE_BYTES),
            pending: Vec::new(),
            unchanged_memory: 0,
            unchanged_disk: 0,
            examined: 0,
        })
    }

    /// Reads the memory snapshot from `file`, a buffered reader.
    fn add_memory<R: Read + Send>(
        &mut self,
        file: R,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<MemorySnapshot, EncodeError> {
        let save_err = |source| EncodeError::SaveFile {
            path: name.to_string(),
            source,
        };
        let mut reader = SaveFileReader::open(file).map_err(save_err)?;
        let layout = reader.layout().clone();
        match self.base.memory_layout() {
            Some(base_layout) if base_layout.same_ram_layout(&layout) => {}
            Some(_) => {
                return Err(EncodeError::Mismatch(
                    "RAM blocks differ from the base's".into(),
                ))
            }
            None => return Err(EncodeError::Mismatch("base has no memory snapshot".into())),
        }
        let pages = layout.page_count();
        progress.stage("memory", Some(pages));
        // A reader thread parses the save file while this one classifies the previous
        // batch: parsing is sequential, classification parallel, and they overlap.
        let (seen, reader) = std::thread::scope(|scope| -> Result<_, EncodeError> {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Batch>(2);
            let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Batch>();
            let producer = scope.spawn(move || -> Result<_, SaveFileError> {
                let mut seen =
                    crate::bitmap::Bitmap::new(pages).map_err(|_| SaveFileError::TooLarge {
                        what: "guest RAM",
                        size: pages,
                        limit: crate::limits::MAX_RAM_BYTES / CHUNK_SIZE_BYTES as u64,
                    })?;
                loop {
                    let mut batch = empty_rx.try_recv().unwrap_or_else(|_| Batch::new());
                    batch.clear();
                    while batch.len() < BATCH_CHUNKS {
                        let slot = batch.slot();
                        match reader.next_page_sparse(&mut slot.data)? {
                            Some((i, zero)) => {
                                slot.index = i;
                                slot.zero = zero;
                                if !seen.insert(i) {
                                    return Err(SaveFileError::DuplicatePage { index: i });
                                }
                                batch.commit();
                            }
                            None => break,
                        }
                    }
                    if batch.len() == 0 || full_tx.send(batch).is_err() {
                        return Ok((seen, reader));
                    }
                }
            });
            for mut batch in full_rx.iter() {
                self.add_batch(ImageKind::Memory, &mut batch, |_, _| Ok(()))?;
                progress.inc(batch.len() as u64);
                let _ = empty_tx.send(batch);
            }
            match producer.join() {
                Ok(result) => result.map_err(save_err),
                Err(_) => Err(EncodeError::Mismatch(
                    "save-file reader thread panicked".into(),
                )),
            }
        })?;
        // Pages the stream never sent are zero in the restored VM.
        let zero = zero_chunk_hash();
        for index in 0..pages {
            if !seen.contains(index) {
                let base_hash = self.base.hash_at(Location {
                    kind: ImageKind::Memory,
                    index,
                });
                if base_hash.is_some_and(|h| *h != zero) {
                    self.push(ImageKind::Memory, index, Encoding::Zero, zero, &[])?;
                }
            }
        }
        let device_state = reader.finish().map_err(save_err)?;
        Ok(MemorySnapshot {
            layout,
            device_state,
        })
    }

    fn add_disk(&mut self, disk: &DiskSource, progress: &dyn Progress) -> Result<(), EncodeError> {
        let total: u64 = disk.candidates().iter().map(|r| r.end - r.start).sum();
        progress.stage("disk", Some(total));
        let mut batch = Batch::new();
        for range in disk.candidates() {
            let mut next = range.start;
            while next < range.end {
                batch.clear();
                while batch.len() < BATCH_CHUNKS && next < range.end {
                    let slot = batch.slot();
                    slot.index = next;
                    slot.zero = false;
                    batch.commit();
                    next += 1;
                }
                self.add_batch(ImageKind::Disk, &mut batch, |index, buf| {
                    disk.read_chunk(index, buf)
                })?;
                progress.inc(batch.len() as u64);
            }
        }
        Ok(())
    }

    /// Records a batch: (A) read and classify in parallel, (B) in order, turn new chunks
    /// seen before into self-references, (C) delta-encode the rest in parallel, (D) record
    /// in order. Doing B before C spares xdelta3 work on chunks that dedup anyway.
    fn add_batch(
        &mut self,
        kind: ImageKind,
        batch: &mut Batch,
        read: impl Fn(u64, &mut Chunk) -> Result<(), DiskError> + Sync,
    ) -> Result<(), EncodeError> {
        let base = self.base;
        let classes: Vec<(Class, ChunkHash)> = batch
            .items_mut()
            .par_iter_mut()
            .map(|slot| -> Result<_, EncodeError> {
                if slot.zero {
                    return Ok(classify_zero(base, kind, slot.index));
                }
                read(slot.index, &mut slot.data)?;
                Ok(classify(base, kind, slot.index, &slot.data))
            })
            .collect::<Result<_, _>>()?;

        let mut next_record = self.records.len() as u64;
        let plans: Vec<Plan> = classes
            .iter()
            .map(|(class, hash)| {
                let plan = match class {
                    Class::Unchanged => return Plan::Skip,
                    Class::Zero => Plan::Emit(Encoding::Zero),
                    Class::BaseRef(loc) => Plan::Emit(Encoding::BaseRef(*loc)),
                    Class::New => match self.stored.get(hash) {
                        Some(&earlier) => Plan::Emit(Encoding::SelfRef(earlier)),
                        None => {
                            self.stored.insert(*hash, next_record);
                            Plan::Store
                        }
                    },
                };
                next_record += 1;
                plan
            })
            .collect();

        let deltas: Vec<Option<Vec<u8>>> = batch
            .items()
            .par_iter()
            .zip(&plans)
            .map(|(slot, plan)| match plan {
                Plan::Store => delta_against_base(base, kind, slot.index, &slot.data),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;

        for (((slot, plan), delta), (_, hash)) in
            batch.items().iter().zip(plans).zip(deltas).zip(classes)
        {
            let (index, data) = (&slot.index, &slot.data);
            self.examined += 1;
            match (plan, delta) {
                (Plan::Skip, _) => match kind {
                    ImageKind::Memory => self.unchanged_memory += 1,
                    ImageKind::Disk => self.unchanged_disk += 1,
                },
                (Plan::Emit(encoding), _) => self.push(kind, *index, encoding, hash, &[])?,
                (Plan::Store, Some(delta)) => {
                    let len = u32::try_from(delta.len()).unwrap_or(u32::MAX);
                    self.push(kind, *index, Encoding::Delta(len), hash, &delta)?;
                }
                (Plan::Store, None) => self.push(kind, *index, Encoding::Raw, hash, &data[..])?,
            }
        }
        Ok(())
    }

    /// Appends one record and its payload; closes the segment when it is full.
    fn push(
        &mut self,
        kind: ImageKind,
        index: u64,
        encoding: Encoding,
        hash: ChunkHash,
        payload: &[u8],
    ) -> Result<(), EncodeError> {
        self.segment_payload.extend_from_slice(payload);
        self.records.push(Record {
            kind,
            index,
            encoding,
            hash,
        });
        let in_segment = self.records.len() as u64 - self.segment_first;
        if self.segment_payload.len() >= SEGMENT_TARGET_BYTES
            || in_segment >= SEGMENT_MAX_RECORDS as u64
        {
            self.close_segment()?;
        }
        Ok(())
    }

    fn close_segment(&mut self) -> Result<(), EncodeError> {
        let end = self.records.len() as u64;
        if end == self.segment_first {
            return Ok(());
        }
        let payload = std::mem::replace(
            &mut self.segment_payload,
            Vec::with_capacity(SEGMENT_TARGET_BYTES + CHUNK_SIZE_BYTES),
        );
        self.pending.push(PendingSegment {
            first_record: self.segment_first,
            record_count: u32::try_from(end - self.segment_first).unwrap_or(u32::MAX),
            payload,
        });
        self.segment_first = end;
        if self.pending.len() >= 2 * rayon::current_num_threads() {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), EncodeError> {
        let level = self.level;
        let compressed: Vec<(Vec<u8>, ChunkHash)> = self
            .pending
            .par_iter()
            .map(|s| {
                let c = if s.payload.is_empty() {
                    Vec::new()
                } else {
                    crate::format::zstd_ctx::compress(&s.payload, level)?
                };
                let hash = *blake3::hash(&c).as_bytes();
                Ok((c, hash))
            })
            .collect::<Result<_, std::io::Error>>()
            .map_err(FormatError::Io)?;
        for (s, (c, hash)) in self.pending.drain(..).zip(compressed) {
            let len = u32::try_from(s.payload.len()).unwrap_or(u32::MAX);
            self.writer
                .push_segment(s.first_record, s.record_count, len, c, hash)?;
        }
        Ok(())
    }

    fn finish(
        mut self,
        disk_size: u64,
        memory: Option<MemorySnapshot>,
        properties: Vec<(String, String)>,
    ) -> Result<(OverlayMeta, u64), EncodeError> {
        self.close_segment()?;
        self.flush_pending()?;
        let meta = OverlayMeta {
            base_id: *self.base.id(),
            disk_size,
            memory,
            properties,
            unchanged_memory: self.unchanged_memory,
            unchanged_disk: self.unchanged_disk,
            segments: Vec::new(),
            records: self.records,
        };
        Ok(self.writer.finish(meta)?)
    }
}

/// A batch of chunk indices with their data buffers, reused between batches.
struct Batch {
    slots: Vec<Slot>,
    len: usize,
}

/// One chunk of a batch.
struct Slot {
    index: u64,
    /// A zero page the save file said is one: `data` was not written.
    zero: bool,
    data: Box<Chunk>,
}

impl Batch {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }
    fn clear(&mut self) {
        self.len = 0;
    }
    fn len(&self) -> usize {
        self.len
    }
    /// The next free slot; becomes part of the batch on `commit`.
    fn slot(&mut self) -> &mut Slot {
        if self.slots.len() == self.len {
            self.slots.push(Slot {
                index: 0,
                zero: false,
                data: Box::new([0u8; CHUNK_SIZE_BYTES]),
            });
        }
        &mut self.slots[self.len]
    }
    fn commit(&mut self) {
        self.len += 1;
    }
    fn items(&self) -> &[Slot] {
        &self.slots[..self.len]
    }
    fn items_mut(&mut self) -> &mut [Slot] {
        &mut self.slots[..self.len]
    }
}
