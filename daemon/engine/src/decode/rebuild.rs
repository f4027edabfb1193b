//! The reading and rebuilding stage: segments read in order, decompressed and rebuilt a
//! window at a time in parallel, every chunk that does not copy an earlier record checked
//! against its hash.

use std::io::Read;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::DecodeError;
use crate::base::Base;
use crate::chunk::{hash_chunk, Chunk, Location, CHUNK_SIZE_BYTES};
use crate::cursor::Cursor;
use crate::delta;
use crate::format::{
    decompress_segment, Encoding, FormatError, OverlayMeta, OverlayReader, Record, Segment,
};

/// A rebuilt chunk, before it is applied.
pub(super) enum Rebuilt {
    Data(Box<Chunk>),
    Zero,
    /// Copy of an earlier record: resolved at apply time from what was written.
    SelfRef(u64),
}

/// One window of segments, rebuilt.
pub(super) type Window = Vec<(Segment, Vec<Rebuilt>)>;

/// Reads `window` segments at a time and sends them on rebuilt (in parallel on `pool`),
/// until the overlay ends, something fails (the error is sent) or the applying side hangs
/// up. Returns the time spent reading and rebuilding.
pub(super) fn read_and_rebuild<R: Read>(
    overlay: &mut OverlayReader<R>,
    meta: &OverlayMeta,
    base: &Base,
    pool: &rayon::ThreadPool,
    window: usize,
    tx: &SyncSender<Result<Window, DecodeError>>,
) -> (Duration, Duration) {
    let (mut read_time, mut rebuild_time) = (Duration::ZERO, Duration::ZERO);
    loop {
        let started = Instant::now();
        let mut batch: Vec<Segment> = Vec::with_capacity(window);
        let mut failed = None;
        while batch.len() < window {
            match overlay.next_segment() {
                Ok(Some(s)) => batch.push(s),
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.into());
                    break;
                }
            }
        }
        read_time += started.elapsed();
        if let Some(e) = failed {
            let _ = tx.send(Err(e));
            break;
        }
        if batch.is_empty() {
            break;
        }
        let started = Instant::now();
        let rebuilt: Result<Vec<Vec<Rebuilt>>, DecodeError> = pool.install(|| {
            batch
                .par_iter()
                .map(|s| rebuild_segment(meta, base, s))
                .collect()
        });
        rebuild_time += started.elapsed();
        let message = rebuilt.map(|r| batch.into_iter().zip(r).collect());
        let stop = message.is_err();
        // A closed channel means the applying side failed: stop quietly.
        if tx.send(message).is_err() || stop {
            break;
        }
    }
    (read_time, rebuild_time)
}

/// Decompresses one segment and rebuilds every chunk that does not depend on others.
fn rebuild_segment(
    meta: &OverlayMeta,
    base: &Base,
    segment: &Segment,
) -> Result<Vec<Rebuilt>, DecodeError> {
    let entry = &meta.segments[segment.index];
    let payload = decompress_segment(entry, segment)?;
    let mut payload = Cursor::new(&payload);
    let mut out = Vec::with_capacity(entry.record_count as usize);
    for (offset, record) in meta.records_of(entry).iter().enumerate() {
        let record_no = entry.first_record + offset as u64;
        let len = record.encoding.payload_len();
        let bytes = payload.bytes(len).map_err(|_| FormatError::SegmentSize {
            segment: segment.index,
            expected: u64::from(entry.uncompressed_len),
        })?;
        let rebuilt = match record.encoding {
            Encoding::Zero => Rebuilt::Zero,
            Encoding::SelfRef(target) => Rebuilt::SelfRef(target),
            Encoding::BaseRef(loc) => {
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                read_base(base, loc, &mut data)?;
                Rebuilt::Data(data)
            }
            Encoding::Raw => {
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                data.copy_from_slice(bytes);
                Rebuilt::Data(data)
            }
            Encoding::Delta(_) => {
                let mut source = [0u8; CHUNK_SIZE_BYTES];
                read_base(
                    base,
                    Location {
                        kind: record.kind,
                        index: record.index,
                    },
                    &mut source,
                )?;
                let mut data = Box::new([0u8; CHUNK_SIZE_BYTES]);
                if !delta::apply(bytes, &source, &mut data) {
                    return Err(DecodeError::BadDelta { record: record_no });
                }
                Rebuilt::Data(data)
            }
        };
        match &rebuilt {
            Rebuilt::Data(data) => verify(record_no, record, data)?,
            Rebuilt::Zero => verify(record_no, record, &[0u8; CHUNK_SIZE_BYTES])?,
            Rebuilt::SelfRef(_) => {}
        }
        out.push(rebuilt);
    }
    Ok(out)
}

/// Reads a base chunk named by the overlay; a location outside the base means the overlay
/// is bad, not the base.
fn read_base(base: &Base, loc: Location, buf: &mut Chunk) -> Result<(), DecodeError> {
    if base.hash_at(loc).is_none() {
        return Err(DecodeError::Incompatible(format!(
            "reference to {} chunk {} outside the base",
            loc.kind.name(),
            loc.index
        )));
    }
    Ok(base.read_chunk(loc, buf)?)
}

pub(super) fn verify(record_no: u64, record: &Record, data: &Chunk) -> Result<(), DecodeError> {
    if hash_chunk(data) != record.hash {
        return Err(mismatch(record_no, record));
    }
    Ok(())
}

pub(super) fn mismatch(record_no: u64, record: &Record) -> DecodeError {
    DecodeError::ChunkHashMismatch {
        record: record_no,
        kind: record.kind.name(),
        index: record.index,
    }
}
