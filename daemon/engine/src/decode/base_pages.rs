//! The base's unchanged memory pages, written by a thread of their own: into the save
//! file behind the overlay's, or into a stream ahead of them.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use std::path::Path;

use super::memory::{MemoryTarget, RecordWriter};
use super::{output_error, DecodeError};
use crate::base::Base;
use crate::chunk::{Chunk, CHUNK_SIZE_BYTES};
use crate::savefile::SaveFileLayout;

impl MemoryTarget {
    /// Writes the records of every page the overlay leaves to the base, then (file shape)
    /// the end of the file; a stream's end is written after the overlay's pages. Stops
    /// early, without an error, once `cancel` is set (the applying side failed and
    /// reports why).
    pub(super) fn write_base_records(
        &self,
        base: &Base,
        layout: &SaveFileLayout,
        device_state: &[u8],
        cancel: &AtomicBool,
    ) -> Result<(), DecodeError> {
        if self.is_stream() {
            let Some(mut w) = self.take_for_base() else {
                self.base_done(None);
                return Err(DecodeError::Incompatible("the stream has no writer".into()));
            };
            let written = self.base_records_into(&mut w, base, layout, cancel);
            self.base_done(written.is_ok().then_some(w));
            return written;
        }
        let mut w = self.records_writer(layout, self.base_at)?;
        self.base_records_into(&mut w, base, layout, cancel)?;
        let mut buffered = w.finish(device_state).map_err(DecodeError::SaveFile)?;
        buffered
            .flush()
            .map_err(output_error(Path::new("memory snapshot")))
    }

    /// The base's records, into `w`: zero pages (known from the hash list) without
    /// reading anything, the others read in runs of consecutive pages.
    fn base_records_into(
        &self,
        w: &mut RecordWriter<'_>,
        base: &Base,
        layout: &SaveFileLayout,
        cancel: &AtomicBool,
    ) -> Result<(), DecodeError> {
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
        Ok(())
    }
}

/// Pages read from the base per positional read.
const BASE_RUN_PAGES: u64 = 256;
const BASE_RUN_BYTES: usize = 256 * CHUNK_SIZE_BYTES; // BASE_RUN_PAGES pages
