//! The decode's threads: a reader that rebuilds windows of segments in parallel, this
//! thread applying them in record order (writes are sequential: the save file is a
//! stream), and a writer of the base's unchanged pages.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::apply::{apply_windows, SelfRefs};
use super::memory::{MemoryTarget, StreamOut};
use super::outputs::{Disk, Outputs, Placement};
use super::rebuild::{read_and_rebuild, Window};
use super::{check_fits, output_error, DecodeError, DecodeOutputs, DecodeSummary};
use crate::base::Base;
use crate::chunk::ImageKind;
use crate::format::Encoding;
use crate::format::OverlayReader;
use crate::progress::Progress;

/// Where a streamed decode writes the save file.
pub(super) enum StreamSource {
    /// A stream opened once the disk exists.
    Open(super::OpenStream),
    /// A stream that holds the base's pages already.
    Primed(Box<super::PrimedStream>),
}

/// Rebuilt windows that may wait to be applied: with the one being applied and the one
/// being rebuilt, memory holds at most three windows of ≤ 4 MiB segments.
const WINDOWS_QUEUED: usize = 1;

/// Runs the decode on `pool`: see the module documentation.
pub(super) fn decode_with<R: Read + Send>(
    mut overlay: OverlayReader<R>,
    base: &Base,
    outputs: &DecodeOutputs<'_>,
    stream: Option<StreamSource>,
    progress: &dyn Progress,
    pool: &rayon::ThreadPool,
) -> Result<DecodeSummary, DecodeError> {
    check_fits(overlay.meta(), base)?;
    if let Some(StreamSource::Primed(primed)) = &stream {
        // Before the disk is touched: the primed restore opened it already.
        primed.check_fits(overlay.meta())?;
    }
    let meta = overlay.meta().clone();
    let mut summary = DecodeSummary {
        records: meta.records.len() as u64,
        overlay_bytes: overlay.file_len(),
        has_memory: meta.memory.is_some(),
        ..Default::default()
    };
    // The base disk chunks the records copy or patch are read ahead now, in parallel,
    // rather than one by one as their records come (see `Base::prefetch_disk_chunks`).
    base.prefetch_disk_chunks(meta.records.iter().filter_map(|r| match r.encoding {
        Encoding::BaseRef(loc) if loc.kind == ImageKind::Disk => Some(loc.index),
        Encoding::Delta(_) if r.kind == ImageKind::Disk => Some(r.index),
        _ => None,
    }));
    // A stream's reader (a restore) opens the disk when it starts: the disk comes first,
    // valid from the start and at its final path.
    let placement = match &stream {
        None => Placement::Renamed,
        Some(StreamSource::Open(_)) => Placement::InPlace,
        Some(StreamSource::Primed(_)) => Placement::OverOpened,
    };
    let disk = Disk::create(&meta, base, outputs, placement)?;
    let stream = match (stream, &meta.memory) {
        (Some(StreamSource::Open(open)), Some(_)) => open()
            .map_err(output_error(outputs.memory))?
            .map(StreamOut::Fresh),
        (Some(StreamSource::Primed(primed)), Some(_)) => Some(StreamOut::Primed(primed.writer)),
        _ => None,
    };
    // A primed stream has every base page already; the overlay's pages overwrite them.
    let primed = matches!(stream, Some(StreamOut::Primed(_)));
    let memory = MemoryTarget::create(&meta, outputs, stream)?;
    let mut out = Outputs::new(&meta, disk, outputs, memory.as_ref())?;
    let mut self_refs = SelfRefs::new(&meta)?;

    progress.stage("apply", Some(meta.records.len() as u64));
    let window = 2 * pool.current_num_threads();
    let meta = &meta;
    let overlay_ref = &mut overlay;
    // Set by whichever side fails first (applying, or writing the base's pages), so that
    // the other stops early instead of finishing work that will be thrown away.
    let cancel = AtomicBool::new(false);
    let (read_time, rebuild_time) = std::thread::scope(|scope| {
        let base_pages = memory.as_ref().zip(meta.memory.as_ref());
        let base_pages = base_pages.filter(|_| !primed).map(|(m, mm)| {
            let cancel = &cancel;
            scope.spawn(move || {
                let started = Instant::now();
                let written = m.write_base_records(base, &mm.layout, &mm.device_state, cancel);
                if written.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                written.map(|()| started.elapsed())
            })
        });
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Window, DecodeError>>(WINDOWS_QUEUED);
        let producer =
            scope.spawn(move || read_and_rebuild(overlay_ref, meta, base, pool, window, &tx));
        let applied = apply_windows(meta, &rx, &mut out, &mut self_refs, &cancel, progress);
        if applied.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        // Dropping the receiver stops the producer if applying failed.
        drop(rx);
        let produced = producer.join();
        let finishing = Instant::now();
        let base_written = base_pages.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(DecodeError::Output {
                    path: "base page writer thread".into(),
                    source: std::io::Error::other("panicked"),
                })
            })
        });
        summary.finish_time = finishing.elapsed();
        // The base writer's error first: with a stream, applying fails when it does.
        if let Some(written) = base_written {
            summary.base_pages_time = written?;
        }
        summary.apply_time = applied?;
        produced.map_err(|_| DecodeError::Output {
            path: "overlay reader thread".into(),
            source: std::io::Error::other("panicked"),
        })
    })?;
    summary.read_time = read_time;
    summary.rebuild_time = rebuild_time;
    let started = Instant::now();
    // The overlay's end checked before anything is committed (for a stream: before its
    // end, the device state, lets the restore complete).
    overlay.finish()?;
    out.finish(outputs)?;
    if let Some(target) = memory {
        target.commit(outputs)?;
    }
    summary.finish_time += started.elapsed();
    Ok(summary)
}
