//! The base's unchanged memory pages, written into the save file behind the overlay's by a
//! thread of their own.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use super::memory::MemoryTarget;
use super::{output_error, DecodeError};
use crate::base::Base;
use crate::chunk::{Chunk, CHUNK_SIZE_BYTES};
use crate::savefile::SaveFileLayout;

impl MemoryTarget {
    /// Writes the records of every page the overlay leaves to the base, then the end of
    /// the file: zero pages (known from the hash list) without reading anything, the
    /// others read in runs of consecutive pages. Stops early, without an error, once
    /// `cancel` is set (the applying side failed and reports why).
    pub(super) fn write_base_records(
        &self,
        base: &Base,
        layout: &SaveFileLayout,
        device_state: &[u8],
        cancel: &AtomicBool,
    ) -> Result<(), DecodeError> {
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
        buffered.flush().map_err(output_error(self.file.tmp_path()))
    }
}

/// Pages read from the base per positional read.
const BASE_RUN_PAGES: u64 = 256;
const BASE_RUN_BYTES: usize = 256 * CHUNK_SIZE_BYTES; // BASE_RUN_PAGES pages
