//! The output save file: laid out before any page is rebuilt, so that the overlay's pages
//! and the base's can be written side by side.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::{output_error, DecodeError, DecodeOutputs};
use crate::atomic::AtomicFile;
use crate::bitmap::Bitmap;
use crate::chunk::ImageKind;
use crate::format::{Encoding, OverlayMeta};
use crate::savefile::{self, SaveFileLayout, SaveFileWriter};

/// The output save file: `prefix`, then the overlay's page records (in record order,
/// written by the applying thread), then from `base_at` the base's records of every other
/// page and the end of the file (written by a thread of their own).
pub(super) struct MemoryTarget {
    pub(super) file: AtomicFile,
    prefix: Vec<u8>,
    pub(super) base_at: u64,
    /// Pages the overlay sets; the base supplies all others.
    pub(super) overlay_pages: Bitmap,
}

impl MemoryTarget {
    /// Lays out the save file (`None` for a disk-only overlay). A zero record of the
    /// overlay gets a ZERO record, any other a PAGE record, so that the length of the
    /// overlay's part is known before any page is rebuilt.
    pub(super) fn create(
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
        let file = AtomicFile::create(outputs.memory).map_err(output_error(outputs.memory))?;
        Ok(Some(Self {
            file,
            base_at: prefix.len() as u64 + overlay_len,
            prefix,
            overlay_pages,
        }))
    }

    /// The writer of the overlay's records.
    pub(super) fn overlay_writer(
        &self,
        layout: &SaveFileLayout,
    ) -> Result<SaveFileWriter<BufWriter<FileAt<'_>>>, DecodeError> {
        self.records_writer(layout, self.prefix.len() as u64)
    }

    /// A buffered writer of records into the file from byte `at` on.
    pub(super) fn records_writer(
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

    /// Writes the prefix and gives the file its final name.
    pub(super) fn commit(self, outputs: &DecodeOutputs<'_>) -> Result<(), DecodeError> {
        self.file
            .file()
            .write_all_at(&self.prefix, 0)
            .map_err(output_error(outputs.memory))?;
        self.file
            .commit_with(outputs.durable)
            .map_err(output_error(outputs.memory))?;
        Ok(())
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
