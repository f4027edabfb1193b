//! Writing an overlay. Segments arrive compressed (the encoder compresses them in
//! parallel) and go to a scratch file; `finish` writes header, metadata and payload to the
//! final file, which appears atomically.

use std::io::{self, BufWriter, Seek, Write};
use std::path::Path;

use crate::atomic::AtomicFile;

use super::meta::{OverlayMeta, SegmentEntry};
use super::reader::header_check;
use super::{FormatError, FORMAT_MAJOR, FORMAT_MINOR, HEADER_BYTES, MAGIC};

/// zstd level for the metadata (small, written once).
const META_ZSTD_LEVEL: i32 = 9;

/// An overlay file being written.
#[derive(Debug)]
pub struct OverlayWriter {
    out: AtomicFile,
    payload: BufWriter<AtomicFile>,
    payload_len: u64,
    segments: Vec<SegmentEntry>,
}

impl OverlayWriter {
    /// Starts writing `path`; nothing appears there until [`OverlayWriter::finish`].
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let out = AtomicFile::create(path).map_err(FormatError::Io)?;
        let mut scratch_path = path.as_os_str().to_owned();
        scratch_path.push(".payload");
        let payload = AtomicFile::create(Path::new(&scratch_path)).map_err(FormatError::Io)?;
        Ok(Self {
            out,
            payload: BufWriter::with_capacity(1 << 20, payload),
            payload_len: 0,
            segments: Vec::new(),
        })
    }

    /// Appends a compressed segment carrying records `first_record..first_record+count`.
    pub fn push_segment(
        &mut self,
        first_record: u64,
        record_count: u32,
        uncompressed_len: u32,
        compressed: &[u8],
    ) -> Result<(), FormatError> {
        let compressed_len = u32::try_from(compressed.len())
            .map_err(|_| FormatError::Invalid("segment too large".into()))?;
        self.payload
            .write_all(compressed)
            .map_err(FormatError::Io)?;
        self.segments.push(SegmentEntry {
            offset: self.payload_len,
            compressed_len,
            uncompressed_len,
            first_record,
            record_count,
            hash: *blake3::hash(compressed).as_bytes(),
        });
        self.payload_len += u64::from(compressed_len);
        Ok(())
    }

    /// Writes the file: `meta.segments` is replaced by the segments pushed. Returns the
    /// metadata as written and the file's size.
    pub fn finish(self, mut meta: OverlayMeta) -> Result<(OverlayMeta, u64), FormatError> {
        let Self {
            mut out,
            payload,
            payload_len,
            segments,
        } = self;
        meta.segments = segments;
        let meta_bytes = meta.to_bytes();
        let compressed =
            zstd::bulk::compress(&meta_bytes, META_ZSTD_LEVEL).map_err(FormatError::Io)?;

        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
        header.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
        header.extend_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
        header.extend_from_slice(blake3::hash(&compressed).as_bytes());
        let check = header_check(&header);
        header.extend_from_slice(&check);

        let mut scratch = payload
            .into_inner()
            .map_err(|e| FormatError::Io(e.into_error()))?;
        (|| -> io::Result<()> {
            let mut w = BufWriter::new(&mut out);
            w.write_all(&header)?;
            w.write_all(&compressed)?;
            w.flush()?;
            drop(w);
            scratch.flush()?;
            let mut payload_file = scratch.file();
            payload_file.rewind()?;
            // File to file: the kernel copies (copy_file_range), no user-space buffer.
            let mut out_file = out.file();
            let copied = io::copy(&mut payload_file, &mut out_file)?;
            if copied != payload_len {
                return Err(io::Error::other("payload scratch file changed size"));
            }
            Ok(())
        })()
        .map_err(FormatError::Io)?;
        out.commit().map_err(FormatError::Io)?;
        drop(scratch); // uncommitted: removed
        Ok((
            meta,
            HEADER_BYTES as u64 + compressed.len() as u64 + payload_len,
        ))
    }
}
