//! The synthesized disk and the overlay's part of the save file while they are written,
//! the disk under a temporary name until committed.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::memory::{FileAt, MemoryTarget};
use super::{output_error, DecodeError, DecodeOutputs};
use crate::atomic::AtomicPath;
use crate::base::Base;
use crate::chunk::{Chunk, ImageKind, CHUNK_SIZE_BYTES};
use crate::disk::{DiskOutputFormat, DiskSink};
use crate::format::{Encoding, OverlayMeta, Record};
use crate::qcow2::Qcow2Writer;
use crate::savefile::SaveFileWriter;

/// The output files while they are being written (under temporary names).
pub(super) struct Outputs<'m> {
    disk: DiskSink,
    disk_tmp: AtomicPath,
    memory: Option<OverlayPages<'m>>,
}

/// The overlay's part of the save file.
struct OverlayPages<'m> {
    writer: SaveFileWriter<BufWriter<FileAt<'m>>>,
    /// Where the part must end.
    end: u64,
}

impl<'m> Outputs<'m> {
    /// Starts the disk (a qcow2 backed by the base's disk, or a copy of it) and, for an
    /// overlay with memory, the writer of the overlay's part of `memory`.
    pub(super) fn create(
        meta: &OverlayMeta,
        base: &Base,
        outputs: &DecodeOutputs<'_>,
        memory: Option<&'m MemoryTarget>,
    ) -> Result<Self, DecodeError> {
        let base_disk = &base.paths().disk;
        let disk_tmp = AtomicPath::new(outputs.disk).map_err(output_error(outputs.disk))?;
        let disk = match outputs.disk_format {
            DiskOutputFormat::Qcow2 => {
                let backing = std::fs::canonicalize(base_disk).map_err(output_error(base_disk))?;
                let backing = backing.to_str().ok_or_else(|| {
                    DecodeError::Incompatible("base disk path is not valid UTF-8".into())
                })?;
                DiskSink::Qcow2(
                    Qcow2Writer::create(disk_tmp.tmp_path(), meta.disk_size, backing, "raw")
                        .map_err(DecodeError::Qcow2)?,
                )
            }
            DiskOutputFormat::Raw => {
                let mut src = std::fs::File::open(base_disk).map_err(output_error(base_disk))?;
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(disk_tmp.tmp_path())
                    .map_err(output_error(outputs.disk))?;
                std::io::copy(&mut src, &mut file).map_err(output_error(outputs.disk))?;
                DiskSink::Raw {
                    file,
                    size: meta.disk_size,
                }
            }
        };
        let memory = match (memory, &meta.memory) {
            (Some(target), Some(m)) => Some(OverlayPages {
                writer: target.overlay_writer(&m.layout)?,
                end: target.base_at,
            }),
            _ => None,
        };
        Ok(Self {
            disk,
            disk_tmp,
            memory,
        })
    }

    /// Applies one chunk; for memory pages returns where the page's bytes sit in the save
    /// file (None for a zero page), for disk chunks the chunk index.
    pub(super) fn write(
        &mut self,
        record: &Record,
        data: &Chunk,
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
                m.writer
                    .write_record(record.index, data)
                    .map_err(DecodeError::SaveFile)
            }
            ImageKind::Disk => {
                self.disk
                    .write_chunk(record.index, data)
                    .map_err(output_error(self.disk_tmp.tmp_path()))?;
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
                let snapshot = Path::new("memory snapshot");
                // Flush only when the page is still in the write buffer: most references
                // point at pages written long before.
                let flushed = m.writer.bytes_written() - m.writer.get_mut().buffer().len() as u64;
                let buffered = m.writer.get_mut();
                if position + CHUNK_SIZE_BYTES as u64 > flushed {
                    buffered.flush().map_err(output_error(snapshot))?;
                }
                buffered
                    .get_ref()
                    .file
                    .read_exact_at(buf, position)
                    .map_err(output_error(snapshot))
            }
            ImageKind::Disk => self
                .disk
                .read_chunk(position, buf)
                .map_err(output_error(self.disk_tmp.tmp_path())),
        }
    }

    /// Writes out what is buffered and completes the disk; returns the disk's temporary
    /// path, to be committed once the save file is.
    pub(super) fn finish(self, outputs: &DecodeOutputs<'_>) -> Result<AtomicPath, DecodeError> {
        if let Some(mut m) = self.memory {
            if m.writer.bytes_written() != m.end {
                return Err(DecodeError::Incompatible(
                    "the overlay's memory records do not fill their part of the save file".into(),
                ));
            }
            m.writer
                .get_mut()
                .flush()
                .map_err(output_error(outputs.memory))?;
        }
        self.disk
            .finish(outputs.durable)
            .map_err(output_error(outputs.disk))?;
        Ok(self.disk_tmp)
    }
}
