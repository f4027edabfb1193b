//! Writing an overlay. Segments arrive compressed and hashed (the encoder does both in
//! parallel); a writer thread appends them to the file, so file writes overlap encoding.
//! The payload goes to the output file from offset 0, because its size and the metadata
//! that must precede it are only known at the end. `finish` then makes room in front of it
//! with `FALLOC_FL_INSERT_RANGE` (the file system shifts extents: no data is copied) and
//! writes header and metadata there, padded to a block boundary. Where the file system
//! cannot insert (tmpfs, btrfs) or the payload is small, the payload is copied behind
//! header and metadata into a second file instead. Either way the final file appears
//! atomically.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use crate::atomic::AtomicFile;
use crate::chunk::ChunkHash;

use super::meta::{OverlayMeta, SegmentEntry};
use super::reader::header_check;
use super::{FormatError, FORMAT_MAJOR, FORMAT_MINOR, HEADER_BYTES, MAGIC, MAX_PAYLOAD_PAD};

/// zstd level for the metadata. Most of it is chunk hashes, which do not compress: a
/// higher level costs ~0.15 s on a 100k-record overlay and gains under 1%.
const META_ZSTD_LEVEL: i32 = 3;

/// Below this payload size, copying it is cheaper than a padded block (and an extra file
/// system call): small overlays stay unpadded, so no bytes are wasted on the link.
const INSERT_MIN_PAYLOAD: u64 = 4 << 20;

/// Compressed segments queued for the writer thread (each ≤ ~1 MiB).
const WRITE_QUEUE: usize = 8;

/// An overlay file being written.
#[derive(Debug)]
pub struct OverlayWriter {
    path: PathBuf,
    out: AtomicFile,
    queue: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<io::Result<u64>>>,
    payload_len: u64,
    segments: Vec<SegmentEntry>,
}

impl OverlayWriter {
    /// Starts writing `path`; nothing appears there until [`OverlayWriter::finish`].
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let out = AtomicFile::create(path).map_err(FormatError::Io)?;
        let file = out.file().try_clone().map_err(FormatError::Io)?;
        let (queue, segments) = sync_channel::<Vec<u8>>(WRITE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("overlay-writer".into())
            .spawn(move || -> io::Result<u64> {
                let mut w = BufWriter::with_capacity(1 << 20, file);
                let mut written = 0u64;
                for segment in segments {
                    w.write_all(&segment)?;
                    written += segment.len() as u64;
                }
                w.flush()?;
                Ok(written)
            })
            .map_err(FormatError::Io)?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            queue: Some(queue),
            thread: Some(thread),
            payload_len: 0,
            segments: Vec::new(),
        })
    }

    /// Appends a compressed segment carrying records `first_record..first_record+count`;
    /// `hash` is the blake3 hash of `compressed`.
    pub fn push_segment(
        &mut self,
        first_record: u64,
        record_count: u32,
        uncompressed_len: u32,
        compressed: Vec<u8>,
        hash: ChunkHash,
    ) -> Result<(), FormatError> {
        let compressed_len = u32::try_from(compressed.len())
            .map_err(|_| FormatError::Invalid("segment too large".into()))?;
        self.segments.push(SegmentEntry {
            offset: self.payload_len,
            compressed_len,
            uncompressed_len,
            first_record,
            record_count,
            hash,
        });
        self.payload_len += u64::from(compressed_len);
        if compressed.is_empty() {
            return Ok(());
        }
        let sent = self
            .queue
            .as_ref()
            .is_some_and(|q| q.send(compressed).is_ok());
        if sent {
            Ok(())
        } else {
            // The writer thread stopped: its error says why.
            Err(self.join_writer().err().unwrap_or_else(|| {
                FormatError::Io(io::Error::other("overlay writer thread stopped"))
            }))
        }
    }

    /// Waits for the writer thread; returns the payload bytes it wrote.
    fn join_writer(&mut self) -> Result<u64, FormatError> {
        self.queue = None;
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result.map_err(FormatError::Io),
                Err(_) => Err(FormatError::Io(io::Error::other(
                    "overlay writer thread panicked",
                ))),
            },
            None => Err(FormatError::Io(io::Error::other(
                "overlay writer thread already stopped",
            ))),
        }
    }

    /// Writes the file: `meta.segments` is replaced by the segments pushed. Returns the
    /// metadata as written and the file's size.
    pub fn finish(mut self, mut meta: OverlayMeta) -> Result<(OverlayMeta, u64), FormatError> {
        let written = self.join_writer()?;
        if written != self.payload_len {
            return Err(FormatError::Io(io::Error::other(
                "overlay payload size changed while writing",
            )));
        }
        meta.segments = std::mem::take(&mut self.segments);
        let meta_bytes = meta.to_bytes();
        let compressed =
            zstd::bulk::compress(&meta_bytes, META_ZSTD_LEVEL).map_err(FormatError::Io)?;
        let prefix_len = (HEADER_BYTES + compressed.len()) as u64;

        let Self {
            path,
            out,
            payload_len,
            ..
        } = self;
        if payload_len >= INSERT_MIN_PAYLOAD {
            let block = block_size(out.file());
            let pad = prefix_len.next_multiple_of(block) - prefix_len;
            if pad <= MAX_PAYLOAD_PAD && insert_front(out.file(), prefix_len + pad) {
                let mut prefix = header(&compressed, meta_bytes.len(), pad);
                prefix.extend_from_slice(&compressed);
                let padded = usize::try_from(prefix_len + pad)
                    .map_err(|_| FormatError::Invalid("metadata too large".into()))?;
                prefix.resize(padded, 0);
                write_at_start(out.file(), &prefix).map_err(FormatError::Io)?;
                out.commit().map_err(FormatError::Io)?;
                return Ok((meta, prefix_len + pad + payload_len));
            }
        }
        copy_behind_prefix(&path, out, &compressed, meta_bytes.len(), payload_len)?;
        Ok((meta, prefix_len + payload_len))
    }
}

/// The 72-byte header for compressed metadata `compressed` (of `meta_len` bytes once
/// decompressed) followed by `pad` zero bytes before the payload.
fn header(compressed: &[u8], meta_len: usize, pad: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_BYTES + compressed.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    header.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    // pad ≤ MAX_PAYLOAD_PAD, which fits in u32.
    header.extend_from_slice(&u32::try_from(pad).unwrap_or(u32::MAX).to_le_bytes());
    header.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    header.extend_from_slice(&(meta_len as u64).to_le_bytes());
    header.extend_from_slice(blake3::hash(compressed).as_bytes());
    let check = header_check(&header);
    header.extend_from_slice(&check);
    header
}

/// The fallback: a second file with header and metadata, then the payload copied from
/// the first (file to file, so the kernel copies: `copy_file_range`).
fn copy_behind_prefix(
    path: &Path,
    payload: AtomicFile,
    compressed: &[u8],
    meta_len: usize,
    payload_len: u64,
) -> Result<(), FormatError> {
    let mut out = AtomicFile::create(path).map_err(FormatError::Io)?;
    (|| -> io::Result<()> {
        let mut w = BufWriter::new(&mut out);
        w.write_all(&header(compressed, meta_len, 0))?;
        w.write_all(compressed)?;
        w.flush()?;
        drop(w);
        let mut payload_file = payload.file();
        payload_file.rewind()?;
        let mut out_file = out.file();
        let copied = io::copy(&mut payload_file, &mut out_file)?;
        if copied != payload_len {
            return Err(io::Error::other("overlay payload changed size"));
        }
        Ok(())
    })()
    .map_err(FormatError::Io)?;
    out.commit().map_err(FormatError::Io)?;
    drop(payload); // uncommitted: removed
    Ok(())
}

/// The file system's block size: the unit `FALLOC_FL_INSERT_RANGE` works in.
fn block_size(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata()
        .map(|m| m.blksize())
        .ok()
        .filter(|&b| b.is_power_of_two() && b >= 512)
        .unwrap_or(4096)
}

/// Inserts `len` bytes (a multiple of the block size) at the start of `file`, shifting
/// its contents; false where the file system cannot.
#[cfg(target_os = "linux")]
fn insert_front(file: &File, len: u64) -> bool {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(file, FallocateFlags::INSERT_RANGE, 0, len) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "FALLOC_FL_INSERT_RANGE refused; copying the payload");
            false
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn insert_front(_file: &File, _len: u64) -> bool {
    false
}

fn write_at_start(file: &File, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Cursor;
    use crate::format::{FormatError, OverlayReader};
    use std::io::BufReader;

    fn meta() -> OverlayMeta {
        OverlayMeta {
            base_id: [7; 32],
            disk_size: 1 << 20,
            memory: None,
            properties: vec![],
            unchanged_memory: 0,
            unchanged_disk: 0,
            segments: vec![],
            records: vec![],
        }
    }

    /// Writes `sizes`-sized segments of patterned bytes and reads them back; returns the
    /// padding and where the payload starts.
    fn round_trip(sizes: &[usize]) -> (u64, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.overlay");
        let mut w = OverlayWriter::create(&path).expect("create");
        let mut segments = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = (0..size).map(|j| (j * 31 + i * 7) as u8).collect();
            let hash = *blake3::hash(&bytes).as_bytes();
            w.push_segment(0, 0, 0, bytes.clone(), hash).expect("push");
            segments.push(bytes);
        }
        let (_, size) = w.finish(meta()).expect("finish");
        assert_eq!(std::fs::metadata(&path).expect("written").len(), size);
        let file = std::fs::File::open(&path).expect("open");
        let mut r = OverlayReader::open(BufReader::new(file)).expect("reads back");
        for expected in &segments {
            let s = r.next_segment().expect("segment").expect("present");
            assert_eq!(&s.compressed, expected);
        }
        r.finish().expect("nothing trailing");
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "temporary files left behind");
        let payload: u64 = sizes.iter().map(|&s| s as u64).sum();
        let file = std::fs::read(&path).expect("read");
        let pad = Cursor::at(&file, 12).u32_le().expect("header");
        (u64::from(pad), size - payload)
    }

    #[test]
    fn small_payload_is_copied_unpadded() {
        let (pad, _) = round_trip(&[1000, 0, 5000]);
        assert_eq!(pad, 0);
    }

    #[test]
    fn large_payload_reads_back_whichever_way_it_was_placed() {
        // On ext4/xfs the payload stays in place and the header is padded to a block; on
        // other file systems it is copied unpadded. Both must read back identically.
        let (pad, payload_start) = round_trip(&[3 << 20, 2 << 20, 777]);
        if pad > 0 {
            assert_eq!(payload_start % 512, 0, "padded to a block boundary");
            assert!(pad < 65536);
        }
    }

    #[test]
    fn nonzero_padding_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.overlay");
        let mut w = OverlayWriter::create(&path).expect("create");
        let bytes = vec![9u8; 5 << 20];
        let hash = *blake3::hash(&bytes).as_bytes();
        w.push_segment(0, 0, 0, bytes, hash).expect("push");
        w.finish(meta()).expect("finish");
        let mut data = std::fs::read(&path).expect("read");
        let mut fields = Cursor::at(&data, 12);
        let pad = fields.u32_le().expect("padding") as usize;
        if pad == 0 {
            return; // this file system cannot insert ranges: nothing padded to tamper with
        }
        let pad_start = HEADER_BYTES + fields.u64_le().expect("metadata length") as usize;
        data[pad_start + pad / 2] = 1;
        let err = OverlayReader::open(&data[..]).expect_err("tampered padding");
        assert!(matches!(err, FormatError::Invalid(_)), "{err:?}");
    }
}
