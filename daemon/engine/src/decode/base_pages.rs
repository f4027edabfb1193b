//! The base's unchanged memory pages, written by a thread of their own: into the save
//! file behind the overlay's, or into a stream ahead of them.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use std::path::Path;

use super::memory::{MemoryTarget, RecordWriter};
use super::{output_error, DecodeError};
use crate::base::Base;
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

    /// The base's records, into `w` (see [`Base::visit_memory_pages`]).
    fn base_records_into(
        &self,
        w: &mut RecordWriter<'_>,
        base: &Base,
        layout: &SaveFileLayout,
        cancel: &AtomicBool,
    ) -> Result<(), DecodeError> {
        let pages = layout.page_count();
        base.visit_memory_pages(
            pages,
            |i| !self.overlay_pages.contains(i),
            |index, data| {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                w.write_record(index, data).map_err(DecodeError::SaveFile)?;
                Ok(true)
            },
        )
    }
}
