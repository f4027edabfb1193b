//! The customized disk as the encoder reads it, and the synthesized disk as the decoder
//! writes it.
//!
//! Reading: either a raw image (compared in full, or only over given ranges) or a qcow2
//! overlay whose top layer says which chunks can differ (clusters that the guest discarded
//! are in the top layer as zero clusters: modified-to-zero, not unchanged).
//!
//! Writing: a qcow2 file backed by the base disk that holds only the changed chunks (fast:
//! its cost is proportional to the overlay, not to the disk), or a full raw copy of the
//! base with the chunks applied (slower; for tools that want a plain image).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::chunk::{chunk_count, Chunk, CHUNK_SIZE_BYTES, CHUNK_SIZE_U64};
use crate::qcow2::{Qcow2Error, Qcow2Image, Qcow2Writer};

/// Errors opening or using a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Reading or writing an image failed.
    #[error("i/o error on disk image {path}")]
    Io {
        /// The image.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The qcow2 image could not be read or written.
    #[error("qcow2 image {path}")]
    Qcow2 {
        /// The image.
        path: String,
        /// The cause.
        #[source]
        source: Qcow2Error,
    },
}

impl DiskError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| DiskError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    fn qcow2(path: &Path) -> impl FnOnce(Qcow2Error) -> Self + '_ {
        move |source| DiskError::Qcow2 {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Reads one chunk of a raw image at `index`; a chunk past the end or a partial last chunk
/// is zero-padded.
pub fn read_raw_chunk(file: &File, size: u64, index: u64, buf: &mut Chunk) -> io::Result<()> {
    let offset = index.saturating_mul(CHUNK_SIZE_U64);
    let valid = usize::try_from(size.saturating_sub(offset).min(CHUNK_SIZE_U64)).unwrap_or(0);
    file.read_exact_at(&mut buf[..valid], offset)?;
    buf[valid..].fill(0);
    Ok(())
}

enum SourceImage {
    Raw(File),
    Qcow2 {
        image: Qcow2Image,
        extents: Vec<crate::qcow2::Extent>,
        base: File,
    },
}

/// The customized disk, as the encoder reads it.
pub struct DiskSource {
    image: SourceImage,
    size: u64,
    candidates: Vec<Range<u64>>,
    path: String,
}

impl DiskSource {
    /// A raw image, every chunk of which is compared with the base.
    pub fn raw(path: &Path) -> Result<Self, DiskError> {
        let file = File::open(path).map_err(DiskError::io(path))?;
        let size = file.metadata().map_err(DiskError::io(path))?.len();
        Ok(Self {
            image: SourceImage::Raw(file),
            size,
            candidates: std::iter::once(0..chunk_count(size)).collect(),
            path: path.display().to_string(),
        })
    }

    /// A raw image of which only `byte_ranges` may differ from the base.
    pub fn raw_ranges(path: &Path, byte_ranges: &[Range<u64>]) -> Result<Self, DiskError> {
        let mut source = Self::raw(path)?;
        source.candidates = chunk_ranges(byte_ranges.iter().cloned(), source.size);
        Ok(source)
    }

    /// A qcow2 image whose backing file is the raw `base_disk`: only the chunks its top layer
    /// defines (data or zero clusters) are candidates; bytes of a chunk that the top layer
    /// covers only in part (clusters smaller than 4 KiB) come from the base.
    pub fn qcow2(path: &Path, base_disk: &Path) -> Result<Self, DiskError> {
        let image = Qcow2Image::open(path).map_err(DiskError::qcow2(path))?;
        let extents = image.top_layer_extents().map_err(DiskError::qcow2(path))?;
        let base = File::open(base_disk).map_err(DiskError::io(base_disk))?;
        let size = image.virtual_size();
        let candidates = chunk_ranges(extents.iter().map(|e| e.offset..e.offset + e.length), size);
        Ok(Self {
            image: SourceImage::Qcow2 {
                image,
                extents,
                base,
            },
            size,
            candidates,
            path: path.display().to_string(),
        })
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk index ranges that may differ from the base, ascending and disjoint.
    pub fn candidates(&self) -> &[Range<u64>] {
        &self.candidates
    }

    /// Reads chunk `index` (zero-padded past the end of the disk).
    pub fn read_chunk(&self, index: u64, buf: &mut Chunk) -> Result<(), DiskError> {
        let path = Path::new(&self.path);
        match &self.image {
            SourceImage::Raw(file) => {
                read_raw_chunk(file, self.size, index, buf).map_err(DiskError::io(path))
            }
            SourceImage::Qcow2 {
                image,
                extents,
                base,
            } => {
                read_raw_chunk(base, self.size, index, buf).map_err(DiskError::io(path))?;
                let start = index * CHUNK_SIZE_U64;
                let end = (start + CHUNK_SIZE_U64).min(self.size);
                let first = extents.partition_point(|e| e.offset + e.length <= start);
                for e in extents[first..].iter().take_while(|e| e.offset < end) {
                    let from = e.offset.max(start);
                    let to = (e.offset + e.length).min(end);
                    let lo = usize::try_from(from - start).unwrap_or(0);
                    let hi = usize::try_from(to - start).unwrap_or(0);
                    image
                        .read_at(from, &mut buf[lo..hi])
                        .map_err(DiskError::qcow2(path))?;
                }
                Ok(())
            }
        }
    }
}

/// Turns byte ranges into merged chunk index ranges clipped to the disk.
fn chunk_ranges(byte_ranges: impl Iterator<Item = Range<u64>>, size: u64) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = byte_ranges
        .filter(|r| r.start < r.end && r.start < size)
        .map(|r| r.start / CHUNK_SIZE_U64..chunk_count(r.end.min(size)))
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// How the synthesized disk is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskOutputFormat {
    /// A qcow2 file backed by the base disk, holding only the changed chunks.
    #[default]
    Qcow2,
    /// A complete raw copy of the base disk with the changed chunks applied.
    Raw,
}

/// The synthesized disk being written.
pub enum DiskSink {
    /// See [`DiskOutputFormat::Qcow2`].
    Qcow2(Qcow2Writer),
    /// See [`DiskOutputFormat::Raw`].
    Raw {
        /// The output file.
        file: File,
        /// Disk size in bytes.
        size: u64,
    },
}

impl DiskSink {
    /// Writes chunk `index` (a partial last chunk is trimmed to the disk size).
    pub fn write_chunk(&mut self, index: u64, data: &Chunk) -> io::Result<()> {
        match self {
            DiskSink::Qcow2(w) => w.write_chunk(index, data).map_err(io::Error::other),
            DiskSink::Raw { file, size } => {
                let offset = index * CHUNK_SIZE_U64;
                let valid = usize::try_from(size.saturating_sub(offset).min(CHUNK_SIZE_U64))
                    .unwrap_or(CHUNK_SIZE_BYTES);
                file.write_all_at(&data[..valid], offset)
            }
        }
    }

    /// Reads back chunk `index` as written so far.
    pub fn read_chunk(&mut self, index: u64, buf: &mut Chunk) -> io::Result<()> {
        match self {
            DiskSink::Qcow2(w) => match w.read_chunk(index, buf) {
                Ok(true) => Ok(()),
                Ok(false) => Err(io::Error::other("chunk read back before it was written")),
                Err(e) => Err(io::Error::other(e)),
            },
            DiskSink::Raw { file, size } => read_raw_chunk(file, *size, index, buf),
        }
    }

    /// Completes the image; with `durable`, flushes it to stable storage.
    pub fn finish(self, durable: bool) -> io::Result<()> {
        match self {
            DiskSink::Qcow2(w) => w.finish_with(durable).map(drop).map_err(io::Error::other),
            DiskSink::Raw { file, .. } if durable => file.sync_all(),
            DiskSink::Raw { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_merged_and_clipped() {
        let r = chunk_ranges(
            [8192..8193, 0..10, 4096..4097, 100_000..200_000].into_iter(),
            120_000,
        );
        assert_eq!(r, vec![0..3, 24..30]);
        assert!(chunk_ranges(std::iter::once(5..5), 100).is_empty());
    }

    #[test]
    fn raw_reads_pad_the_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        let src = DiskSource::raw(&p).unwrap();
        assert_eq!(
            src.candidates().to_vec(),
            std::iter::once(0..2).collect::<Vec<_>>()
        );
        let mut buf = [1u8; CHUNK_SIZE_BYTES];
        src.read_chunk(1, &mut buf).unwrap();
        assert!(buf[..904].iter().all(|&b| b == 7));
        assert!(buf[904..].iter().all(|&b| b == 0));
    }
}
