//! The applying stage: rebuilt chunks written in record order, copies of earlier records
//! resolved from what those records wrote.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::outputs::Outputs;
use super::rebuild::{mismatch, verify, Rebuilt, Window};
use super::DecodeError;
use crate::bitmap::Bitmap;
use crate::chunk::{ImageKind, CHUNK_SIZE_BYTES};
use crate::format::{Encoding, OverlayMeta, Segment};
use crate::progress::Progress;

/// Records that later records copy, and where each was written once it has been.
pub(super) struct SelfRefs {
    targets: Bitmap,
    written_at: HashMap<u64, u64>,
}

impl SelfRefs {
    pub(super) fn new(meta: &OverlayMeta) -> Result<Self, DecodeError> {
        let mut targets = Bitmap::new(meta.records.len() as u64)?;
        for r in &meta.records {
            if let Encoding::SelfRef(t) = r.encoding {
                targets.insert(t);
            }
        }
        Ok(Self {
            targets,
            written_at: HashMap::new(),
        })
    }
}

/// Applies rebuilt windows as they arrive, until the channel closes or something fails;
/// stops early once `cancel` is set (the base page writer failed: its error is the one to
/// report). Returns the time spent applying.
pub(super) fn apply_windows(
    meta: &OverlayMeta,
    windows: &Receiver<Result<Window, DecodeError>>,
    out: &mut Outputs<'_>,
    self_refs: &mut SelfRefs,
    cancel: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Duration, DecodeError> {
    let mut apply_time = Duration::ZERO;
    for window in windows.iter() {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let started = Instant::now();
        for (segment, chunks) in window? {
            apply_segment(meta, &segment, chunks, out, self_refs)?;
            let entry = &meta.segments[segment.index];
            progress.inc(u64::from(entry.record_count));
        }
        apply_time += started.elapsed();
    }
    Ok(apply_time)
}

/// Applies one rebuilt segment's chunks in record order.
fn apply_segment(
    meta: &OverlayMeta,
    segment: &Segment,
    chunks: Vec<Rebuilt>,
    out: &mut Outputs<'_>,
    self_refs: &mut SelfRefs,
) -> Result<(), DecodeError> {
    let entry = &meta.segments[segment.index];
    for (offset, (record, chunk)) in meta.records_of(entry).iter().zip(chunks).enumerate() {
        let record_no = entry.first_record + offset as u64;
        let data = match chunk {
            Rebuilt::Data(data) => data,
            Rebuilt::Zero => Box::new([0u8; CHUNK_SIZE_BYTES]),
            Rebuilt::SelfRef(target) => {
                // The target's bytes were checked against its hash when they were written,
                // so equal hashes check this copy without hashing it again (format 2 implies
                // them equal; 1.x stores both).
                let target_record = usize::try_from(target)
                    .ok()
                    .and_then(|t| meta.records.get(t));
                if target_record.map(|t| t.hash) != Some(record.hash) {
                    return Err(mismatch(record_no, record));
                }
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                out.read_back(&meta.records, target, &self_refs.written_at, &mut data)?;
                // Except a partial last disk chunk: written trimmed to the disk's size and
                // read back zero-padded, its copy may differ from what was checked.
                let partial = target_record.is_some_and(|t| {
                    t.kind == ImageKind::Disk
                        && (t.index + 1).saturating_mul(CHUNK_SIZE_BYTES as u64) > meta.disk_size
                });
                if partial {
                    verify(record_no, record, &data)?;
                }
                data
            }
        };
        let copied_later = self_refs.targets.contains(record_no);
        let position = out.write(record, &data, copied_later)?;
        if copied_later {
            if let Some(position) = position {
                self_refs.written_at.insert(record_no, position);
            }
        }
    }
    Ok(())
}
