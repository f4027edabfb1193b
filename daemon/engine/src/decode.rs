//! Synthesis: base + overlay → the customized disk and memory save file.
//!
//! Segments are read in order from any `Read` (a file, or an upload still arriving) on a
//! reader thread, a window of them is decompressed and rebuilt in parallel (every chunk
//! checked against its blake3 hash), and this thread applies them in record order while
//! the next window is being rebuilt. The output save file is written in two parts side
//! by side (QEMU's loader takes page records in any order): the overlay's pages in record
//! order, whose length the records fix in advance, and behind them the base's unchanged
//! pages, written by a thread of their own while the overlay is applied. Nothing appears
//! under the output names unless every chunk verified.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::atomic::AtomicFile;
use crate::base::{Base, BaseError};
use crate::chunk::{hash_chunk, Chunk, ImageKind, CHUNK_SIZE_BYTES};
use crate::delta;
use crate::disk::{DiskOutputFormat, DiskSink};
use crate::format::{
    decompress_segment, Bitmap, Encoding, FormatError, OverlayMeta, OverlayReader, Record, Segment,
};
use crate::hashlist::Location;
use crate::progress::Progress;
use crate::qcow2::Qcow2Writer;
use crate::savefile::{self, SaveFileError, SaveFileLayout, SaveFileWriter};

/// Errors rebuilding a VM from base + overlay.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The overlay was made for another base.
    #[error("overlay was made for base {expected}, not for base {actual}")]
    BaseMismatch {
        /// Base id the overlay names.
        expected: String,
        /// Id of the base given.
        actual: String,
    },
    /// The overlay's sizes or layout do not fit the base.
    #[error("overlay does not fit the base: {0}")]
    Incompatible(String),
    /// The overlay file is damaged or truncated.
    #[error("overlay is corrupt")]
    Format(#[from] FormatError),
    /// A rebuilt chunk does not match its recorded hash.
    #[error(
        "overlay record {record} ({kind} chunk {index}) does not rebuild to its recorded hash"
    )]
    ChunkHashMismatch {
        /// Record number.
        record: u64,
        /// Disk or memory.
        kind: &'static str,
        /// Chunk index.
        index: u64,
    },
    /// A delta record does not apply.
    #[error("overlay record {record} holds a delta that does not apply")]
    BadDelta {
        /// Record number.
        record: u64,
    },
    /// The base could not be read.
    #[error("base")]
    Base(#[from] BaseError),
    /// An output file could not be written.
    #[error("writing {path}")]
    Output {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The output save file could not be written.
    #[error("writing memory snapshot")]
    SaveFile(#[source] SaveFileError),
    /// The output qcow2 could not be created.
    #[error("creating disk image")]
    Qcow2(#[source] crate::qcow2::Qcow2Error),
    /// The thread pool could not start.
    #[error("cannot start decoder threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
}

impl DecodeError {
    /// Whether the error means the overlay is bad or does not fit the base (a client
    /// error), as opposed to a failure on this host.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            DecodeError::BaseMismatch { .. }
            | DecodeError::Incompatible(_)
            | DecodeError::ChunkHashMismatch { .. }
            | DecodeError::BadDelta { .. } => true,
            DecodeError::Format(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

/// Where and how to write the synthesized VM.
#[derive(Debug, Clone)]
pub struct DecodeOutputs<'a> {
    /// The synthesized disk.
    pub disk: &'a Path,
    /// Its format.
    pub disk_format: DiskOutputFormat,
    /// The synthesized memory save file (ignored for a disk-only overlay).
    pub memory: &'a Path,
    /// Domain XML to put into the save file instead of the customized VM's.
    pub domain_xml: Option<&'a str>,
    /// fsync the outputs (not needed for a VM about to run: a crash ends it anyway).
    pub durable: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

/// What a decode did, and where the time went.
#[derive(Debug, Clone, Default)]
pub struct DecodeSummary {
    /// Records applied.
    pub records: u64,
    /// Overlay bytes read.
    pub overlay_bytes: u64,
    /// Whether a memory save file was written.
    pub has_memory: bool,
    /// Time waiting for overlay bytes (file reads or network). Reading and rebuilding run
    /// on their own thread, overlapping `apply_time`.
    pub read_time: Duration,
    /// Time decompressing, rebuilding and verifying chunks.
    pub rebuild_time: Duration,
    /// Time writing rebuilt chunks.
    pub apply_time: Duration,
    /// Time the base's unchanged memory pages took to write (on a thread of their own,
    /// overlapping everything above).
    pub base_pages_time: Duration,
    /// Time from the last chunk applied to the files committed, including any wait for
    /// the base's pages.
    pub finish_time: Duration,
}

/// A rebuilt chunk, before it is applied.
enum Rebuilt {
    Data(Box<Chunk>),
    Zero,
    /// Copy of an earlier record: resolved at apply time from what was written.
    SelfRef(u64),
}

/// Synthesizes the customized VM from `base` and the overlay read by `overlay`.
pub fn decode<R: Read + Send>(
    overlay: OverlayReader<R>,
    base: &Base,
    outputs: &DecodeOutputs<'_>,
    progress: &dyn Progress,
) -> Result<DecodeSummary, DecodeError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(outputs.threads)
        .build()
        .map_err(DecodeError::Threads)?;
    decode_with(overlay, base, outputs, progress, &pool)
}

/// Rebuilt windows that may wait to be applied: with the one being applied and the one
/// being rebuilt, memory holds at most three windows of ≤ 4 MiB segments.
const WINDOWS_QUEUED: usize = 1;

/// One window of segments, rebuilt.
type Window = Vec<(Segment, Vec<Rebuilt>)>;

/// A pipeline of two stages: a producer thread reads segments and rebuilds a window of
/// them in parallel (on `pool`), while this thread applies the previous window in record
/// order (writes are sequential: the save file is a stream).
fn decode_with<R: Read + Send>(
    mut overlay: OverlayReader<R>,
    base: &Base,
    outputs: &DecodeOutputs<'_>,
    progress: &dyn Progress,
    pool: &rayon::ThreadPool,
) -> Result<DecodeSummary, DecodeError> {
    check_fits(overlay.meta(), base)?;
    let meta = overlay.meta().clone();
    let mut summary = DecodeSummary {
        records: meta.records.len() as u64,
        overlay_bytes: overlay.file_len(),
        has_memory: meta.memory.is_some(),
        ..Default::default()
    };
    let memory = MemoryTarget::create(&meta, outputs)?;
    let mut out = Outputs::create(&meta, base, outputs, memory.as_ref())?;
    let self_ref_targets = self_ref_targets(&meta)?;
    let mut written_at: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();

    progress.stage("apply", Some(meta.records.len() as u64));
    let window = 2 * pool.current_num_threads();
    let meta_ref = &meta;
    // Set by whichever side fails first (applying, or writing the base's pages), so that
    // the other stops early instead of finishing work that will be thrown away.
    let cancel = AtomicBool::new(false);
    let (overlay, read_time, rebuild_time) = std::thread::scope(|scope| {
        let base_pages = memory.as_ref().zip(meta.memory.as_ref()).map(|(m, mm)| {
            let cancel = &cancel;
            scope.spawn(move || {
                let started = Instant::now();
                let written = m.write_base_records(base, &mm.layout, &mm.device_state, cancel);
                if written.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                written.map(|()| started.elapsed())
            })
        });
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Window, DecodeError>>(WINDOWS_QUEUED);
        let producer = scope.spawn(move || {
            let (mut read_time, mut rebuild_time) = (Duration::ZERO, Duration::ZERO);
            loop {
                let started = Instant::now();
                let mut batch: Vec<Segment> = Vec::with_capacity(window);
                let mut failed = None;
                while batch.len() < window {
                    match overlay.next_segment() {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e.into());
                            break;
                        }
                    }
                }
                read_time += started.elapsed();
                if let Some(e) = failed {
                    let _ = tx.send(Err(e));
                    break;
                }
                if batch.is_empty() {
                    break;
                }
                let started = Instant::now();
                let rebuilt: Result<Vec<Vec<Rebuilt>>, DecodeError> = pool.install(|| {
                    batch
                        .par_iter()
                        .map(|s| rebuild_segment(meta_ref, base, s))
                        .collect()
                });
                rebuild_time += started.elapsed();
                let message = rebuilt.map(|r| batch.into_iter().zip(r).collect());
                let stop = message.is_err();
                // A closed channel means the applying side failed: stop quietly.
                if tx.send(message).is_err() || stop {
                    break;
                }
            }
            (overlay, read_time, rebuild_time)
        });
        let applied = (|| -> Result<(), DecodeError> {
            for window in rx.iter() {
                // The base page writer failed: its error is the one to report.
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                for (segment, chunks) in window? {
                    apply_segment(
                        meta_ref,
                        &segment,
                        chunks,
                        &mut out,
                        &self_ref_targets,
                        &mut written_at,
                    )?;
                    let entry = &meta_ref.segments[segment.index];
                    progress.inc(u64::from(entry.record_count));
                }
                summary.apply_time += started.elapsed();
            }
            Ok(())
        })();
        if applied.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        // Dropping the receiver stops the producer if applying failed.
        drop(rx);
        let produced = producer.join();
        let finishing = Instant::now();
        let base_written = base_pages.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(DecodeError::Output {
                    path: "base page writer thread".into(),
                    source: std::io::Error::other("panicked"),
                })
            })
        });
        summary.finish_time = finishing.elapsed();
        applied?;
        if let Some(written) = base_written {
            summary.base_pages_time = written?;
        }
        produced.map_err(|_| DecodeError::Output {
            path: "overlay reader thread".into(),
            source: std::io::Error::other("panicked"),
        })
    })?;
    summary.read_time = read_time;
    summary.rebuild_time = rebuild_time;
    let started = Instant::now();
    overlay.finish()?;
    let mut disk_tmp = out.finish(outputs)?;
    if let Some(target) = memory {
        target.commit(outputs)?;
    }
    disk_tmp
        .commit(outputs.disk)
        .map_err(|source| DecodeError::Output {
            path: outputs.disk.display().to_string(),
            source,
        })?;
    summary.finish_time += started.elapsed();
    Ok(summary)
}

/// Applies one rebuilt segment's chunks in record order.
fn apply_segment(
    meta: &OverlayMeta,
    segment: &Segment,
    chunks: Vec<Rebuilt>,
    out: &mut Outputs,
    self_ref_targets: &Bitmap,
    written_at: &mut std::collections::HashMap<u64, u64>,
) -> Result<(), DecodeError> {
    let entry = &meta.segments[segment.index];
    for (offset, (record, chunk)) in meta.records_of(entry).iter().zip(chunks).enumerate() {
        let record_no = entry.first_record + offset as u64;
        let data = match chunk {
            Rebuilt::Data(data) => data,
            Rebuilt::Zero => Box::new([0u8; CHUNK_SIZE_BYTES]),
            Rebuilt::SelfRef(target) => {
                // The target's bytes were checked against its hash when they were written,
                // so equal hashes check this copy without hashing it again (format 2 implies
                // them equal; 1.x stores both).
                let target_record = usize::try_from(target)
                    .ok()
                    .and_then(|t| meta.records.get(t));
                if target_record.map(|t| t.hash) != Some(record.hash) {
                    return Err(mismatch(record_no, record));
                }
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                out.read_back(&meta.records, target, written_at, &mut data)?;
                // Except a partial last disk chunk: written trimmed to the disk's size and
                // read back zero-padded, its copy may differ from what was checked.
                let partial = target_record.is_some_and(|t| {
                    t.kind == ImageKind::Disk
                        && (t.index + 1).saturating_mul(CHUNK_SIZE_BYTES as u64) > meta.disk_size
                });
                if partial {
                    verify(record_no, record, &data)?;
                }
                data
            }
        };
        let position = out.write(record, &data)?;
        if self_ref_targets.contains(record_no) {
            if let Some(position) = position {
                written_at.insert(record_no, position);
            }
        }
    }
    Ok(())
}

/// Refuses an overlay made for another base or for another VM shape (decode checks it
/// too; callers use it to fail before any other work).
pub fn check_fits(meta: &OverlayMeta, base: &Base) -> Result<(), DecodeError> {
    if &meta.base_id != base.id() {
        return Err(DecodeError::BaseMismatch {
            expected: hex(&meta.base_id),
            actual: hex(base.id()),
        });
    }
    if meta.disk_size != base.disk_size() {
        return Err(DecodeError::Incompatible(format!(
            "disk is {} bytes, base disk is {}",
            meta.disk_size,
            base.disk_size()
        )));
    }
    if let Some(memory) = &meta.memory {
        match base.memory_layout() {
            Some(l) if l.same_ram_layout(&memory.layout) => {}
            _ => {
                return Err(DecodeError::Incompatible(
                    "RAM blocks differ from the base's".into(),
                ))
            }
        }
    }
    Ok(())
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn self_ref_targets(meta: &OverlayMeta) -> Result<Bitmap, DecodeError> {
    let mut targets = Bitmap::new(meta.records.len() as u64)?;
    for r in &meta.records {
        if let Encoding::SelfRef(t) = r.encoding {
            targets.insert(t);
        }
    }
    Ok(targets)
}

fn verify(record_no: u64, record: &Record, data: &Chunk) -> Result<(), DecodeError> {
    if hash_chunk(data) != record.hash {
        return Err(mismatch(record_no, record));
    }
    Ok(())
}

fn mismatch(record_no: u64, record: &Record) -> DecodeError {
    DecodeError::ChunkHashMismatch {
        record: record_no,
        kind: record.kind.name(),
        index: record.index,
    }
}

/// Decompresses one segment and rebuilds every chunk that does not depend on others.
fn rebuild_segment(
    meta: &OverlayMeta,
    base: &Base,
    segment: &Segment,
) -> Result<Vec<Rebuilt>, DecodeError> {
    let entry = &meta.segments[segment.index];
    let payload = decompress_segment(entry, segment)?;
    let mut at = 0usize;
    let mut out = Vec::with_capacity(entry.record_count as usize);
    for (offset, record) in meta.records_of(entry).iter().enumerate() {
        let record_no = entry.first_record + offset as u64;
        let len = record.encoding.payload_len();
        let bytes = payload.get(at..at + len).ok_or(FormatError::SegmentSize {
            segment: segment.index,
            expected: u64::from(entry.uncompressed_len),
        })?;
        at += len;
        let rebuilt = match record.encoding {
            Encoding::Zero => Rebuilt::Zero,
            Encoding::SelfRef(target) => Rebuilt::SelfRef(target),
            Encoding::BaseRef(loc) => {
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                read_base(base, loc, &mut data)?;
                Rebuilt::Data(data)
            }
            Encoding::Raw => {
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                data.copy_from_slice(bytes);
                Rebuilt::Data(data)
            }
            Encoding::Delta(_) => {
                let mut source = [0u8; CHUNK_SIZE_BYTES];
                read_base(
                    base,
                    Location {
                        kind: record.kind,
                        index: record.index,
                    },
                    &mut source,
                )?;
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                if !delta::apply(bytes, &source, &mut data) {
                    return Err(DecodeError::BadDelta { record: record_no });
                }
                Rebuilt::Data(data)
            }
        };
        match &rebuilt {
            Rebuilt::Data(data) => verify(record_no, record, data)?,
            Rebuilt::Zero => verify(record_no, record, &[0u8; CHUNK_SIZE_BYTES])?,
            Rebuilt::SelfRef(_) => {}
        }
        out.push(rebuilt);
    }
    Ok(out)
}

/// Reads a base chunk named by the overlay; a location outside the base means the overlay
/// is bad, not the base.
fn read_base(base: &Base, loc: Location, buf: &mut Chunk) -> Result<(), DecodeError> {
    if base.hash_at(loc).is_none() {
        return Err(DecodeError::Incompatible(format!(
            "reference to {} chunk {} outside the base",
            loc.kind.name(),
            loc.index
        )));
    }
    Ok(base.read_chunk(loc, buf)?)
}

/// The output save file: `prefix`, then the overlay's page records (in record order,
/// written by the applying thread), then from `base_at` the base's records of every other
/// page and the end of the file (written by a thread of their own).
struct MemoryTarget {
    file: AtomicFile,
    prefix: Vec<u8>,
    base_at: u64,
    /// Pages the overlay sets; the base supplies all others.
    overlay_pages: Bitmap,
}

impl MemoryTarget {
    /// Lays out the save file (`None` for a disk-only overlay). A zero record of the
    /// overlay gets a ZERO record, any other a PAGE record, so that the length of the
    /// overlay's part is known before any page is rebuilt.
    fn create(
        meta: &OverlayMeta,
        outputs: &DecodeOutputs<'_>,
    ) -> Result<Option<Self>, DecodeError> {
        let Some(memory) = &meta.memory else {
            return Ok(None);
        };
        let mut overlay_pages = Bitmap::new(memory.layout.page_count())?;
        let overlay_records = meta.records.iter().filter(|r| r.kind == ImageKind::Memory);
        for r in overlay_records.clone() {
            overlay_pages.insert(r.index);
        }
        let prefix =
            savefile::prefix(&memory.layout, outputs.domain_xml).map_err(DecodeError::SaveFile)?;
        let overlay_len = savefile::records_len(
            &memory.layout,
            overlay_records.map(|r| (r.index, r.encoding != Encoding::Zero)),
        )
        .map_err(DecodeError::SaveFile)?;
        let file = AtomicFile::create(outputs.memory).map_err(|source| DecodeError::Output {
            path: outputs.memory.display().to_string(),
            source,
        })?;
        Ok(Some(Self {
            file,
            base_at: prefix.len() as u64 + overlay_len,
            prefix,
            overlay_pages,
        }))
    }

    /// The writer of the overlay's records.
    fn overlay_writer(
        &self,
        layout: &SaveFileLayout,
    ) -> Result<SaveFileWriter<BufWriter<FileAt<'_>>>, DecodeError> {
        self.records_writer(layout, self.prefix.len() as u64)
    }

    /// A buffered writer of records into the file from byte `at` on.
    fn records_writer(
        &self,
        layout: &SaveFileLayout,
        at: u64,
    ) -> Result<SaveFileWriter<BufWriter<FileAt<'_>>>, DecodeError> {
        let file = FileAt {
            file: self.file.file(),
            pos: at,
        };
        SaveFileWriter::records_at(BufWriter::with_capacity(IO_BUFFER_BYTES, file), layout, at)
            .map_err(DecodeError::SaveFile)
    }

    /// Writes the records of every page the overlay leaves to the base, then the end of
    /// the file: zero pages (known from the hash list) without reading anything, the
    /// others read in runs of consecutive pages. Stops early, without an error, once
    /// `cancel` is set (the applying side failed and reports why).
    fn write_base_records(
        &self,
        base: &Base,
        layout: &SaveFileLayout,
        device_state: &[u8],
        cancel: &AtomicBool,
    ) -> Result<(), DecodeError> {
        let out_err = |source| DecodeError::Output {
            path: self.file.tmp_path().display().to_string(),
            source,
        };
        let mut w = self.records_writer(layout, self.base_at)?;
        let pages = layout.page_count();
        let is_base_page = |i: u64| !self.overlay_pages.contains(i);
        let mut run = vec![0u8; BASE_RUN_BYTES];
        let mut index = 0;
        while index < pages {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !is_base_page(index) {
                index += 1;
                continue;
            }
            if base.memory_page_is_zero(index) {
                w.write_record(index, None).map_err(DecodeError::SaveFile)?;
                index += 1;
                continue;
            }
            let mut end = index + 1;
            while end < pages
                && end - index < BASE_RUN_PAGES
                && is_base_page(end)
                && !base.memory_page_is_zero(end)
            {
                end += 1;
            }
            let bytes = &mut run[..usize::try_from(end - index).unwrap_or(0) * CHUNK_SIZE_BYTES];
            base.read_memory_pages(index, bytes)?;
            for (page, data) in (index..end).zip(bytes.chunks_exact(CHUNK_SIZE_BYTES)) {
                let data: &Chunk = data
                    .try_into()
                    .map_err(|_| DecodeError::Incompatible("page size".into()))?;
                w.write_record(page, Some(data))
                    .map_err(DecodeError::SaveFile)?;
            }
            index = end;
        }
        let mut buffered = w.finish(device_state).map_err(DecodeError::SaveFile)?;
        buffered.flush().map_err(out_err)
    }

    /// Writes the prefix and gives the file its final name.
    fn commit(self, outputs: &DecodeOutputs<'_>) -> Result<(), DecodeError> {
        let out_err = |source| DecodeError::Output {
            path: outputs.memory.display().to_string(),
            source,
        };
        self.file
            .file()
            .write_all_at(&self.prefix, 0)
            .map_err(out_err)?;
        self.file.commit_with(outputs.durable).map_err(out_err)?;
        Ok(())
    }
}

/// Writes a shared `File` from a position of its own (positional writes), so that the two
/// writers of one save file never disturb each other's file offset.
struct FileAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for FileAt<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write buffer of each save-file writer.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// Pages read from the base per positional read.
const BASE_RUN_PAGES: u64 = 256;
const BASE_RUN_BYTES: usize = 256 * CHUNK_SIZE_BYTES; // BASE_RUN_PAGES pages

/// The output files while they are being written (under temporary names).
struct Outputs<'m> {
    disk: Option<DiskSink>,
    disk_tmp: TmpPath,
    memory: Option<OverlayPages<'m>>,
}

/// The overlay's part of the save file.
struct OverlayPages<'m> {
    writer: SaveFileWriter<BufWriter<FileAt<'m>>>,
    /// Where the part must end.
    end: u64,
}

impl<'m> Outputs<'m> {
    fn create(
        meta: &OverlayMeta,
        base: &Base,
        outputs: &DecodeOutputs<'_>,
        memory: Option<&'m MemoryTarget>,
    ) -> Result<Self, DecodeError> {
        let out_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| DecodeError::Output { path, source }
        };
        let disk_tmp = TmpPath::new(outputs.disk);
        let disk = match outputs.disk_format {
            DiskOutputFormat::Qcow2 => {
                let backing = std::fs::canonicalize(&base.paths().disk)
                    .map_err(out_err(&base.paths().disk))?;
                let backing = backing.to_str().ok_or_else(|| {
                    DecodeError::Incompatible("base disk path is not valid UTF-8".into())
                })?;
                DiskSink::Qcow2(
                    Qcow2Writer::create(&disk_tmp.0, meta.disk_size, backing, "raw")
                        .map_err(DecodeError::Qcow2)?,
                )
            }
            DiskOutputFormat::Raw => {
                let mut src =
                    std::fs::File::open(&base.paths().disk).map_err(out_err(&base.paths().disk))?;
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&disk_tmp.0)
                    .map_err(out_err(outputs.disk))?;
                std::io::copy(&mut src, &mut file).map_err(out_err(outputs.disk))?;
                DiskSink::Raw {
                    file,
                    size: meta.disk_size,
                }
            }
        };
        let memory = match (memory, &meta.memory) {
            (Some(target), Some(m)) => Some(OverlayPages {
                writer: target.overlay_writer(&m.layout)?,
                end: target.base_at,
            }),
            _ => None,
        };
        Ok(Self {
            disk: Some(disk),
            disk_tmp,
            memory,
        })
    }

    /// Applies one chunk; for memory pages returns where the page's bytes sit in the save
    /// file (None for a zero page), for disk chunks the chunk index.
    fn write(&mut self, record: &Record, data: &Chunk) -> Result<Option<u64>, DecodeError> {
        match record.kind {
            ImageKind::Memory => {
                let Some(m) = self.memory.as_mut() else {
                    return Err(DecodeError::Incompatible(
                        "memory record in a disk-only overlay".into(),
                    ));
                };
                // As laid out: a PAGE record for every record but a zero record.
                let data = (record.encoding != Encoding::Zero).then_some(data);
                m.writer
                    .write_record(record.index, data)
                    .map_err(DecodeError::SaveFile)
            }
            ImageKind::Disk => {
                let sink = self
                    .disk
                    .as_mut()
                    .ok_or_else(|| DecodeError::Incompatible("disk closed".into()))?;
                sink.write_chunk(record.index, data)
                    .map_err(|source| DecodeError::Output {
                        path: self.disk_tmp.0.display().to_string(),
                        source,
                    })?;
                Ok(Some(record.index))
            }
        }
    }

    /// Reads back what record `target` wrote.
    fn read_back(
        &mut self,
        records: &[Record],
        target: u64,
        written_at: &std::collections::HashMap<u64, u64>,
        buf: &mut Chunk,
    ) -> Result<(), DecodeError> {
        let record = usize::try_from(target).ok().and_then(|t| records.get(t));
        let (Some(record), Some(&position)) = (record, written_at.get(&target)) else {
            return Err(DecodeError::Incompatible(format!(
                "reference to record {target} that wrote nothing"
            )));
        };
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| DecodeError::Output { path, source }
        };
        match record.kind {
            ImageKind::Memory => {
                let m = self
                    .memory
                    .as_mut()
                    .ok_or_else(|| DecodeError::Incompatible("no memory".into()))?;
                // Flush only when the page is still in the write buffer: most references
                // point at pages written long before.
                let flushed = m.writer.bytes_written() - m.writer.get_mut().buffer().len() as u64;
                let buffered = m.writer.get_mut();
                if position + CHUNK_SIZE_BYTES as u64 > flushed {
                    buffered
                        .flush()
                        .map_err(io_err(Path::new("memory snapshot")))?;
                }
                buffered
                    .get_ref()
                    .file
                    .read_exact_at(buf, position)
                    .map_err(io_err(Path::new("memory snapshot")))
            }
            ImageKind::Disk => {
                let sink = self
                    .disk
                    .as_mut()
                    .ok_or_else(|| DecodeError::Incompatible("disk closed".into()))?;
                sink.read_chunk(position, buf)
                    .map_err(io_err(&self.disk_tmp.0))
            }
        }
    }

    /// Writes out what is buffered and completes the disk; returns the disk's temporary
    /// path, to be committed once the save file is.
    fn finish(mut self, outputs: &DecodeOutputs<'_>) -> Result<TmpPath, DecodeError> {
        let out_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| DecodeError::Output { path, source }
        };
        if let Some(mut m) = self.memory.take() {
            if m.writer.bytes_written() != m.end {
                return Err(DecodeError::Incompatible(
                    "the overlay's memory records do not fill their part of the save file".into(),
                ));
            }
            m.writer
                .get_mut()
                .flush()
                .map_err(out_err(outputs.memory))?;
        }
        if let Some(disk) = self.disk.take() {
            disk.finish(outputs.durable)
                .map_err(out_err(outputs.disk))?;
        }
        Ok(std::mem::replace(
            &mut self.disk_tmp,
            TmpPath(PathBuf::new()),
        ))
    }
}

/// A temporary output path, removed on drop unless committed (renamed to its final name).
struct TmpPath(PathBuf);

impl TmpPath {
    fn new(final_path: &Path) -> Self {
        let mut name = std::ffi::OsString::from(".");
        name.push(final_path.file_name().unwrap_or_default());
        name.push(format!(".part-{}", std::process::id()));
        Self(final_path.with_file_name(name))
    }

    fn commit(&mut self, final_path: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.0, final_path)?;
        self.0 = PathBuf::new();
        Ok(())
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
