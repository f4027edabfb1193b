//! The synthesized disk and the overlay's part of the save file while they are written,
//! the disk under a temporary name until committed (or, for a streamed restore, at its
//! final path from the start).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::memory::{MemoryTarget, RecordWriter};
use super::{output_error, DecodeError, DecodeOutputs};
use crate::atomic::AtomicPath;
use crate::base::Base;
use crate::chunk::{Chunk, ImageKind, CHUNK_SIZE_BYTES};
use crate::disk::{DiskOutputFormat, DiskSink};
use crate::format::{Encoding, OverlayMeta, Record};
use crate::qcow2::Qcow2Writer;

/// The output files while they are being written.
pub(super) struct Outputs<'m> {
    disk: Disk,
    memory: Option<OverlayPages<'m>>,
}

/// The overlay's part of the save file.
struct OverlayPages<'m> {
    target: &'m MemoryTarget,
    /// File shape: from the start. Stream shape: taken once the base's pages are in.
    writer: Option<RecordWriter<'m>>,
    /// File shape: where the part must end.
    end: u64,
    /// Stream shape: the pages later records copy (a stream cannot be read back), in an
    /// unnamed scratch file, and its length.
    kept: Option<(std::fs::File, u64)>,
    /// Stream shape: memory records still to come, and the device state that ends it.
    records_left: u64,
    device_state: Vec<u8>,
}

/// The synthesized disk being written, and how it gets its final name.
pub(super) struct Disk {
    sink: DiskSink,
    place: DiskPlace,
}

/// Where the disk is written.
enum DiskPlace {
    /// Under a temporary name, renamed once everything verified.
    Renamed(AtomicPath),
    /// At its final path from the start (a streamed restore opens it while it is being
    /// written); removed again unless the decode succeeds.
    InPlace(RemoveUnlessKept),
}

/// How the synthesized disk is placed (see [`Disk::create`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// Written under a temporary name, renamed once everything verified.
    Renamed,
    /// Created at its final path, laid out in advance.
    InPlace,
    /// Written over the image at its final path, which a restore opened already
    /// (a primed stream's): same file, laid out in advance.
    OverOpened,
}

/// Removes a file when dropped, unless [`RemoveUnlessKept::keep`] was called.
struct RemoveUnlessKept(Option<PathBuf>);

impl RemoveUnlessKept {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveUnlessKept {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Disk {
    /// Starts the disk: a qcow2 backed by the base's disk, or a copy of the base. Unless
    /// [`Placement::Renamed`], it is written at `outputs.disk` itself, and a qcow2 is laid
    /// out for the overlay's disk records in advance, so that it is a valid image before
    /// its first chunk arrives.
    pub(super) fn create(
        meta: &OverlayMeta,
        base: &Base,
        outputs: &DecodeOutputs<'_>,
        placement: Placement,
    ) -> Result<Self, DecodeError> {
        let in_place = placement != Placement::Renamed;
        if placement == Placement::OverOpened && outputs.disk_format != DiskOutputFormat::Qcow2 {
            return Err(DecodeError::Incompatible(
                "only a qcow2 disk can be written over an opened one".into(),
            ));
        }
        let base_disk = &base.paths().disk;
        let tmp = match in_place {
            true => None,
            false => Some(AtomicPath::new(outputs.disk).map_err(output_error(outputs.disk))?),
        };
        let path = tmp
            .as_ref()
            .map_or(outputs.disk, AtomicPath::tmp_path)
            .to_path_buf();
        let sink = match outputs.disk_format {
            DiskOutputFormat::Qcow2 => {
                let backing = std::fs::canonicalize(base_disk).map_err(output_error(base_disk))?;
                let backing = backing.to_str().ok_or_else(|| {
                    DecodeError::Incompatible("base disk path is not valid UTF-8".into())
                })?;
                let size = meta.disk_size;
                let chunks = meta.records.iter().filter(|r| r.kind == ImageKind::Disk);
                let chunks = chunks.map(|r| r.index);
                let writer = match placement {
                    Placement::Renamed => Qcow2Writer::create(&path, size, backing, "raw"),
                    Placement::InPlace => {
                        Qcow2Writer::create_planned(&path, size, backing, "raw", chunks)
                    }
                    Placement::OverOpened => {
                        Qcow2Writer::replace_planned(&path, size, backing, "raw", chunks)
                    }
                };
                DiskSink::Qcow2(writer.map_err(DecodeError::Qcow2)?)
            }
            DiskOutputFormat::Raw => {
                let mut src = std::fs::File::open(base_disk).map_err(output_error(base_disk))?;
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(output_error(outputs.disk))?;
                std::io::copy(&mut src, &mut file).map_err(output_error(outputs.disk))?;
                DiskSink::Raw {
                    file,
                    size: meta.disk_size,
                }
            }
        };
        // Only now that the file is ours: it was created with `create_new`.
        let place = match tmp {
            Some(tmp) => DiskPlace::Renamed(tmp),
            None => DiskPlace::InPlace(RemoveUnlessKept(Some(path))),
        };
        Ok(Self { sink, place })
    }

    /// Writes out what is buffered and gives the disk its final name.
    pub(super) fn commit(self, outputs: &DecodeOutputs<'_>) -> Result<(), DecodeError> {
        self.sink
            .finish(outputs.durable)
            .map_err(output_error(outputs.disk))?;
        match self.place {
            DiskPlace::Renamed(tmp) => tmp
                .commit_with(outputs.durable)
                .map(drop)
                .map_err(output_error(outputs.disk)),
            DiskPlace::InPlace(guard) => {
                guard.keep();
                Ok(())
            }
        }
    }

    fn path(&self) -> &Path {
        match &self.place {
            DiskPlace::Renamed(tmp) => tmp.tmp_path(),
            DiskPlace::InPlace(guard) => guard.0.as_deref().unwrap_or(Path::new("disk")),
        }
    }
}

impl<'m> Outputs<'m> {
    /// The disk and, for an overlay with memory, the writer of the overlay's part of the
    /// save file.
    pub(super) fn new(
        meta: &OverlayMeta,
        disk: Disk,
        outputs: &DecodeOutputs<'_>,
        memory: Option<&'m MemoryTarget>,
    ) -> Result<Self, DecodeError> {
        let memory = match (memory, &meta.memory) {
            (Some(target), Some(m)) if target.is_stream() => Some(OverlayPages {
                target,
                writer: None,
                end: 0,
                kept: Some((scratch_file(outputs.disk)?, 0)),
                records_left: meta
                    .records
                    .iter()
                    .filter(|r| r.kind == ImageKind::Memory)
                    .count() as u64,
                device_state: m.device_state.clone(),
            }),
            (Some(target), Some(m)) => Some(OverlayPages {
                target,
                writer: Some(target.overlay_writer(&m.layout)?),
                end: target.base_at,
                kept: None,
                records_left: 0,
                device_state: Vec::new(),
            }),
            _ => None,
        };
        Ok(Self { disk, memory })
    }

    /// Applies one chunk; for memory pages returns where the page's bytes can be read
    /// back (None for a zero page; a stream keeps only pages asked to be `kept`), for disk
    /// chunks the chunk index.
    pub(super) fn write(
        &mut self,
        record: &Record,
        data: &Chunk,
        kept: bool,
    ) -> Result<Option<u64>, DecodeError> {
        match record.kind {
            ImageKind::Memory => {
                let Some(m) = self.memory.as_mut() else {
                    return Err(DecodeError::Incompatible(
                        "memory record in a disk-only overlay".into(),
                    ));
                };
                // As laid out: a PAGE record for every record but a zero record.
                let data = (record.encoding != Encoding::Zero).then_some(data);
                let at = m
                    .writer()?
                    .write_record(record.index, data)
                    .map_err(DecodeError::SaveFile)?;
                let Some((file, len)) = m.kept.as_mut() else {
                    return Ok(at);
                };
                m.records_left = m.records_left.saturating_sub(1);
                match data {
                    Some(page) if kept => {
                        let position = *len;
                        file.write_all_at(page, position)
                            .map_err(output_error(Path::new("kept pages")))?;
                        *len += CHUNK_SIZE_BYTES as u64;
                        Ok(Some(position))
                    }
                    _ => Ok(None),
                }
            }
            ImageKind::Disk => {
                let disk = &mut self.disk;
                disk.sink
                    .write_chunk(record.index, data)
                    .map_err(output_error(disk.path()))?;
                Ok(Some(record.index))
            }
        }
    }

    /// Reads back what record `target` wrote (`written_at`: where each record that is
    /// copied later wrote its bytes).
    pub(super) fn read_back(
        &mut self,
        records: &[Record],
        target: u64,
        written_at: &HashMap<u64, u64>,
        buf: &mut Chunk,
    ) -> Result<(), DecodeError> {
        let record = usize::try_from(target).ok().and_then(|t| records.get(t));
        let (Some(record), Some(&position)) = (record, written_at.get(&target)) else {
            return Err(DecodeError::Incompatible(format!(
                "reference to record {target} that wrote nothing"
            )));
        };
        match record.kind {
            ImageKind::Memory => {
                let m = self
                    .memory
                    .as_mut()
                    .ok_or_else(|| DecodeError::Incompatible("no memory".into()))?;
                if let Some((file, _)) = &m.kept {
                    return file
                        .read_exact_at(buf, position)
                        .map_err(output_error(Path::new("kept pages")));
                }
                let snapshot = Path::new("memory snapshot");
                let writer = m.writer()?;
                // Flush only when the page is still in the write buffer: most references
                // point at pages written long before.
                let flushed = writer.bytes_written() - writer.get_mut().buffer().len() as u64;
                let buffered = writer.get_mut();
                if position + CHUNK_SIZE_BYTES as u64 > flushed {
                    buffered.flush().map_err(output_error(snapshot))?;
                }
                let super::memory::Sink::At(at) = buffered.get_ref() else {
                    return Err(DecodeError::Incompatible("no file to read back".into()));
                };
                at.file
                    .read_exact_at(buf, position)
                    .map_err(output_error(snapshot))
            }
            ImageKind::Disk => {
                let disk = &mut self.disk;
                disk.sink
                    .read_chunk(position, buf)
                    .map_err(output_error(disk.path()))
            }
        }
    }

    /// Completes the disk (committed under its final name), then the overlay's part of
    /// the save file. In that order: a stream's end (the device state) completes the
    /// restore reading it, and QEMU must find the disk complete by then.
    pub(super) fn finish(self, outputs: &DecodeOutputs<'_>) -> Result<(), DecodeError> {
        self.disk.commit(outputs)?;
        let Some(mut m) = self.memory else {
            return Ok(());
        };
        if m.kept.is_some() {
            // A stream: the overlay's pages are all in, then the end of the file.
            if m.records_left != 0 {
                return Err(DecodeError::Incompatible(
                    "the overlay's memory records did not all arrive".into(),
                ));
            }
            let device_state = std::mem::take(&mut m.device_state);
            m.writer()?;
            if let Some(w) = m.writer.take() {
                let mut end = w.finish(&device_state).map_err(DecodeError::SaveFile)?;
                end.flush().map_err(output_error(outputs.memory))?;
            }
        } else {
            let end = m.end;
            let writer = m.writer()?;
            if writer.bytes_written() != end {
                return Err(DecodeError::Incompatible(
                    "the overlay's memory records do not fill their part of the save file".into(),
                ));
            }
            writer
                .get_mut()
                .flush()
                .map_err(output_error(outputs.memory))?;
        }
        Ok(())
    }
}

impl<'m> OverlayPages<'m> {
    /// The writer of the overlay's pages; a stream's once the base's pages are in it.
    fn writer(&mut self) -> Result<&mut RecordWriter<'m>, DecodeError> {
        if self.writer.is_none() {
            self.writer = self.target.take_after_base();
        }
        self.writer.as_mut().ok_or_else(|| {
            DecodeError::Incompatible("the base's pages could not be written".into())
        })
    }
}

/// An unnamed scratch file next to `near` (its name removed as soon as it is open, so
/// nothing is left behind whatever happens next).
fn scratch_file(near: &Path) -> Result<std::fs::File, DecodeError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!(".kept-pages-{}-{nanos}", std::process::id());
    let path = near.with_file_name(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(output_error(&path))?;
    std::fs::remove_file(&path).map_err(output_error(&path))?;
    Ok(file)
}
