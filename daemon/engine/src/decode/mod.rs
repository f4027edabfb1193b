//! Synthesis: base + overlay → the customized disk and memory save file.
//!
//! Segments are read in order from any `Read` (a file, or an upload still arriving) on a
//! reader thread, a window of them is decompressed and rebuilt in parallel (every chunk
//! checked against its blake3 hash), and this thread applies them in record order while
//! the next window is being rebuilt. The output save file is written in two parts side
//! by side (QEMU's loader takes page records in any order): the overlay's pages in record
//! order, whose length the records fix in advance, and behind them the base's unchanged
//! pages, written by a thread of their own while the overlay is applied. Nothing appears
//! under the output names unless every chunk verified. [`decode_streamed`] writes the
//! save file as one stream instead (the base's pages first, then the overlay's) and the
//! disk in place, for a restore that reads the stream as it is written.
//!
//! One job a file: `pipeline` runs the stages and their threads, `rebuild` reads and
//! rebuilds segments, `apply` writes rebuilt chunks in record order, `memory` lays out the
//! output save file, `base_pages` writes the base's unchanged pages into it, and `outputs`
//! holds the files being written until they are committed.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::base::{Base, BaseError};
use crate::disk::DiskOutputFormat;
use crate::format::{FormatError, OverlayMeta, OverlayReader};
use crate::progress::Progress;
use crate::savefile::SaveFileError;

mod apply;
mod base_pages;
mod memory;
mod outputs;
mod pipeline;
mod primed;
mod rebuild;

pub use primed::{prime_stream, PrimedStream};

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

/// Maps an I/O error on `path` to [`DecodeError::Output`].
fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> DecodeError {
    let path = path.display().to_string();
    move |source| DecodeError::Output { path, source }
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

/// Synthesizes the customized VM from `base` and the overlay read by `overlay`.
pub fn decode<R: Read + Send>(
    overlay: OverlayReader<R>,
    base: &Base,
    outputs: &DecodeOutputs<'_>,
    progress: &dyn Progress,
) -> Result<DecodeSummary, DecodeError> {
    pipeline::decode_with(overlay, base, outputs, None, progress, &pool(outputs)?)
}

fn pool(outputs: &DecodeOutputs<'_>) -> Result<rayon::ThreadPool, DecodeError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(outputs.threads)
        .build()
        .map_err(DecodeError::Threads)
}

/// Opens the stream a save file is written to (see [`decode_streamed`]); `None`: no
/// stream after all, write the save file to `outputs.memory` (a fallback).
pub type OpenStream = Box<dyn FnOnce() -> std::io::Result<Option<Box<dyn Write + Send>>> + Send>;

/// Like [`decode`], but the save file is not written to `outputs.memory`: it goes to the
/// stream `open` returns, as one sequential stream (e.g. a FIFO a restore reads as it
/// comes). `open` is called once the disk exists at `outputs.disk`, a valid image
/// already (a qcow2 is laid out in advance and its chunks fill in as they arrive), since
/// a restore opens the VM's disk when it starts.
///
/// The stream gets the prefix (libvirt's header, the domain XML, QEMU's preamble), then
/// every page the overlay leaves to the base (they need no overlay byte, so they flow
/// while the overlay is still arriving), then the overlay's pages as they are rebuilt,
/// and, once the whole overlay verified and the disk is complete, the device state that
/// ends it. Pages that later records copy are kept in an unnamed scratch file next to
/// `outputs.disk` (a stream cannot be read back). On an error the stream ends early (its
/// reader sees it truncated) and the disk is removed. A disk-only overlay writes only
/// the disk and never calls `open`. If `open` gives no stream, the save file is written
/// to `outputs.memory` as by [`decode`] (the disk stays in place).
pub fn decode_streamed<R: Read + Send>(
    overlay: OverlayReader<R>,
    base: &Base,
    outputs: &DecodeOutputs<'_>,
    open: OpenStream,
    progress: &dyn Progress,
) -> Result<DecodeSummary, DecodeError> {
    pipeline::decode_with(
        overlay,
        base,
        outputs,
        Some(pipeline::StreamSource::Open(open)),
        progress,
        &pool(outputs)?,
    )
}

/// Like [`decode_streamed`], into a stream [`prime_stream`] wrote the base's pages into
/// (see [`primed`](PrimedStream)): the overlay's pages, then the device state. The disk
/// at `outputs.disk` exists already (the restore reading the stream opened it): it is
/// rewritten in place, and complete before the stream ends. An overlay that does not
/// [fit](PrimedStream::fits) the stream is refused before anything is written.
pub fn decode_primed<R: Read + Send>(
    overlay: OverlayReader<R>,
    base: &Base,
    outputs: &DecodeOutputs<'_>,
    primed: PrimedStream,
    progress: &dyn Progress,
) -> Result<DecodeSummary, DecodeError> {
    pipeline::decode_with(
        overlay,
        base,
        outputs,
        Some(pipeline::StreamSource::Primed(Box::new(primed))),
        progress,
        &pool(outputs)?,
    )
}

/// Refuses an overlay made for another base or for another VM shape (decode checks it
/// too; callers use it to fail before any other work).
pub fn check_fits(meta: &OverlayMeta, base: &Base) -> Result<(), DecodeError> {
    if &meta.base_id != base.id() {
        return Err(DecodeError::BaseMismatch {
            expected: crate::hex::encode(&meta.base_id),
            actual: crate::hex::encode(base.id()),
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
