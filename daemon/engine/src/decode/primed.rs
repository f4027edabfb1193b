//! A restore stream primed ahead of its overlay: libvirt's header, the domain XML,
//! QEMU's preamble and every non-zero page of the base, written before the overlay is
//! known. QEMU loads them and waits for more; [`super::decode_primed`] later writes the
//! overlay's pages behind them (QEMU's loader takes a page sent twice, the later copy
//! wins, and a ZERO record clears a page that is not zero) and the device state that
//! ends the stream. A synthesis then costs the overlay's pages, not the whole restore.

use std::io::Write;
use std::path::Path;

use super::memory::{stream_writer, RecordWriter};
use super::{output_error, DecodeError};
use crate::base::Base;
use crate::format::OverlayMeta;
use crate::savefile::SaveFileLayout;

/// A stream holding the base's pages (see the module documentation); dropping it ends
/// the stream truncated, which fails the restore reading it.
pub struct PrimedStream {
    pub(super) writer: RecordWriter<'static>,
    layout: SaveFileLayout,
}

impl std::fmt::Debug for PrimedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimedStream")
            .field("bytes_written", &self.writer.bytes_written())
            .finish_non_exhaustive()
    }
}

impl PrimedStream {
    /// Whether an overlay with `meta` can finish this stream: it has memory, and its
    /// save file starts like the base's (same flags, cookie, QEMU preamble and RAM).
    /// The domain XML is the caller's to compare: the stream holds the one it was
    /// primed with.
    pub fn fits(&self, meta: &OverlayMeta) -> bool {
        self.check_fits(meta).is_ok()
    }

    pub(super) fn check_fits(&self, meta: &OverlayMeta) -> Result<(), DecodeError> {
        match &meta.memory {
            Some(m) if self.layout.same_stream_start(&m.layout) => Ok(()),
            Some(_) => Err(DecodeError::Incompatible(
                "the overlay's save file does not start like the primed stream".into(),
            )),
            None => Err(DecodeError::Incompatible(
                "a disk-only overlay cannot finish a primed stream".into(),
            )),
        }
    }

    /// Bytes in the stream so far.
    pub fn bytes_written(&self) -> u64 {
        self.writer.bytes_written()
    }
}

/// Writes the prefix (with `domain_xml` as the domain XML) and every non-zero page of
/// `base` into `out`, flushed, and returns the stream, ready for an overlay's pages.
pub fn prime_stream(
    base: &Base,
    out: Box<dyn Write + Send>,
    domain_xml: Option<&str>,
) -> Result<PrimedStream, DecodeError> {
    let Some(layout) = base.memory_layout() else {
        return Err(DecodeError::Incompatible(
            "base has no memory snapshot".into(),
        ));
    };
    let name = Path::new("restore stream");
    let mut writer = stream_writer(out, layout, domain_xml)?;
    base.write_memory_records(&mut writer, name)?;
    writer.get_mut().flush().map_err(output_error(name))?;
    Ok(PrimedStream {
        writer,
        layout: layout.clone(),
    })
}
