//! The output save file, in one of two shapes:
//! - a file, laid out before any page is rebuilt, so that the overlay's pages and the
//!   base's can be written side by side at fixed offsets (the prefix last);
//! - a stream (a FIFO a restore reads as it comes): one sequential writer, handed from the
//!   base's page writer (prefix, then every page the overlay leaves to the base: they
//!   need no overlay byte) to the applying thread (the overlay's pages as they are
//!   rebuilt, then the end of the file).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::{output_error, DecodeError, DecodeOutputs};
use crate::atomic::AtomicFile;
use crate::bitmap::Bitmap;
use crate::chunk::ImageKind;
use crate::format::{Encoding, OverlayMeta};
use crate::savefile::{self, SaveFileLayout, SaveFileWriter};

/// A buffered writer of save-file records, whatever the output's shape.
pub(super) type RecordWriter<'s> = SaveFileWriter<BufWriter<Sink<'s>>>;

/// The output save file: `prefix`, then the page records and the end of the file.
pub(super) struct MemoryTarget {
    shape: Shape,
    prefix: Vec<u8>,
    /// File shape: where the base's records start (the overlay's fill the bytes before).
    pub(super) base_at: u64,
    /// Pages the overlay sets; the base supplies all others.
    pub(super) overlay_pages: Bitmap,
}

enum Shape {
    File(AtomicFile),
    Stream(Handoff),
}

/// The one writer of a stream, and whether the base's pages are all in it.
pub(super) struct Handoff {
    state: Mutex<HandoffState>,
    turn: Condvar,
}

struct HandoffState {
    writer: Option<RecordWriter<'static>>,
    /// The base's writer is done with the stream (`writer` is `None` if it failed).
    base_done: bool,
}

impl MemoryTarget {
    /// Lays out the save file (`None` for a disk-only overlay). A zero record of the
    /// overlay gets a ZERO record, any other a PAGE record, so that the length of the
    /// overlay's part is known before any page is rebuilt.
    pub(super) fn create(
        meta: &OverlayMeta,
        outputs: &DecodeOutputs<'_>,
        stream: Option<StreamOut>,
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
        let shape = match stream {
            Some(StreamOut::Fresh(out)) => {
                // The prefix goes first, ahead of every record (the reader of a stream
                // starts with libvirt's header and the domain XML).
                let writer = stream_writer(out, &memory.layout, outputs.domain_xml)?;
                Shape::Stream(Handoff::new(writer, false))
            }
            // The base's pages are in it already: the overlay's come next.
            Some(StreamOut::Primed(writer)) => Shape::Stream(Handoff::new(writer, true)),
            None => Shape::File(
                AtomicFile::create(outputs.memory).map_err(output_error(outputs.memory))?,
            ),
        };
        Ok(Some(Self {
            shape,
            base_at: prefix.len() as u64 + overlay_len,
            prefix,
            overlay_pages,
        }))
    }

    /// Whether the save file is a stream.
    pub(super) fn is_stream(&self) -> bool {
        matches!(self.shape, Shape::Stream(_))
    }

    /// File shape: the writer of the overlay's records, right after the prefix.
    pub(super) fn overlay_writer(
        &self,
        layout: &SaveFileLayout,
    ) -> Result<RecordWriter<'_>, DecodeError> {
        self.records_writer(layout, self.prefix.len() as u64)
    }

    /// File shape: a buffered writer of records into the file from byte `at` on.
    pub(super) fn records_writer(
        &self,
        layout: &SaveFileLayout,
        at: u64,
    ) -> Result<RecordWriter<'_>, DecodeError> {
        let Shape::File(file) = &self.shape else {
            return Err(DecodeError::Incompatible(
                "a streamed save file has no positions to write at".into(),
            ));
        };
        let sink = Sink::At(FileAt {
            file: file.file(),
            pos: at,
        });
        SaveFileWriter::records_at(BufWriter::with_capacity(IO_BUFFER_BYTES, sink), layout, at)
            .map_err(DecodeError::SaveFile)
    }

    /// Stream shape: the stream's writer for the base's pages. It must be given back with
    /// [`Self::base_done`], also when writing failed.
    pub(super) fn take_for_base(&self) -> Option<RecordWriter<'static>> {
        match &self.shape {
            Shape::Stream(h) => h.lock().writer.take(),
            Shape::File(_) => None,
        }
    }

    /// Stream shape: the base's pages are written (`writer` back) or failed (`None`).
    pub(super) fn base_done(&self, writer: Option<RecordWriter<'static>>) {
        if let Shape::Stream(h) = &self.shape {
            let mut state = h.lock();
            state.writer = writer;
            state.base_done = true;
            h.turn.notify_all();
        }
    }

    /// Stream shape: waits until the base's pages are in the stream, then takes its
    /// writer for the overlay's pages (`None` if the base's writer failed: its error is
    /// the one reported).
    pub(super) fn take_after_base(&self) -> Option<RecordWriter<'static>> {
        let Shape::Stream(h) = &self.shape else {
            return None;
        };
        let mut state = h.lock();
        while !state.base_done {
            state = h.turn.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.writer.take()
    }

    /// Writes the prefix (file shape) and gives the file its final name; a stream is
    /// already complete.
    pub(super) fn commit(self, outputs: &DecodeOutputs<'_>) -> Result<(), DecodeError> {
        let Shape::File(file) = self.shape else {
            return Ok(());
        };
        file.file()
            .write_all_at(&self.prefix, 0)
            .map_err(output_error(outputs.memory))?;
        file.commit_with(outputs.durable)
            .map_err(output_error(outputs.memory))?;
        Ok(())
    }
}

/// A stream's writer, the prefix written.
pub(super) fn stream_writer(
    out: Box<dyn Write + Send>,
    layout: &SaveFileLayout,
    domain_xml: Option<&str>,
) -> Result<RecordWriter<'static>, DecodeError> {
    SaveFileWriter::new(
        BufWriter::with_capacity(IO_BUFFER_BYTES, Sink::Stream(out)),
        layout,
        domain_xml,
    )
    .map_err(DecodeError::SaveFile)
}

/// Where a streamed save file goes.
pub(super) enum StreamOut {
    /// A new stream: the prefix, then the base's pages, then the overlay's.
    Fresh(Box<dyn Write + Send>),
    /// A stream that holds the prefix and the base's pages already (`super::primed`).
    Primed(RecordWriter<'static>),
}

impl Handoff {
    fn new(writer: RecordWriter<'static>, base_done: bool) -> Self {
        Handoff {
            state: Mutex::new(HandoffState {
                writer: Some(writer),
                base_done,
            }),
            turn: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HandoffState> {
        // A panicking holder leaves the state as it was; the decode reports the panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a record writer's bytes go.
pub(super) enum Sink<'s> {
    /// A shared file, at a position of this writer's own.
    At(FileAt<'s>),
    /// A stream (a FIFO, a pipe, a socket).
    Stream(Box<dyn Write + Send + 's>),
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::At(f) => f.write(buf),
            Sink::Stream(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::At(f) => f.flush(),
            Sink::Stream(s) => s.flush(),
        }
    }
}

/// Writes a shared `File` from a position of its own (positional writes), so that the two
/// writers of one save file never disturb each other's file offset.
pub(super) struct FileAt<'a> {
    pub(super) file: &'a File,
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
