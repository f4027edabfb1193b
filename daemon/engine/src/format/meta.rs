//! The overlay metadata: what the overlay was made from and where every chunk goes.
//! Serialized little-endian; see `docs/overlay-format.md` for the table.

use crate::bitmap::Bitmap;
use crate::chunk::{
    chunk_count, zero_chunk_hash, ChunkHash, ImageKind, Location, CHUNK_SIZE_BYTES,
};
use crate::cursor;
use crate::limits::{
    MAX_DEVICE_STATE_BYTES, MAX_OVERLAY_LAYOUT_BYTES, MAX_OVERLAY_META_DECOMPRESSED_BYTES,
    MAX_OVERLAY_RECORDS, OVERLAY_META_SLACK_BYTES,
};
use crate::savefile::SaveFileLayout;

use super::FormatError;

/// How one modified chunk is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// All zero bytes.
    Zero,
    /// A copy of a base chunk (disk or memory, any position).
    BaseRef(Location),
    /// A copy of an earlier record of this overlay (by record number).
    SelfRef(u64),
    /// An xdelta3 delta (this many payload bytes) against the base chunk at the same position.
    Delta(u32),
    /// The chunk itself (4096 payload bytes).
    Raw,
}

impl Encoding {
    fn code(self) -> u8 {
        match self {
            Encoding::Zero => 1,
            Encoding::BaseRef(_) => 2,
            Encoding::SelfRef(_) => 3,
            Encoding::Delta(_) => 4,
            Encoding::Raw => 5,
        }
    }

    fn arg(self) -> u64 {
        match self {
            Encoding::Zero | Encoding::Raw => 0,
            Encoding::BaseRef(loc) => loc.to_u64(),
            Encoding::SelfRef(r) => r,
            Encoding::Delta(len) => u64::from(len),
        }
    }

    fn from_parts(code: u8, arg: u64) -> Option<Self> {
        Some(match code {
            1 => Encoding::Zero,
            2 => Encoding::BaseRef(Location::from_u64(arg)),
            3 => Encoding::SelfRef(arg),
            4 => Encoding::Delta(u32::try_from(arg).ok()?),
            5 => Encoding::Raw,
            _ => return None,
        })
    }

    /// Payload bytes this record occupies in its segment.
    pub fn payload_len(self) -> usize {
        match self {
            Encoding::Delta(len) => usize::try_from(len).unwrap_or(usize::MAX),
            Encoding::Raw => CHUNK_SIZE_BYTES,
            _ => 0,
        }
    }
}

/// One modified chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Which image it belongs to.
    pub kind: ImageKind,
    /// Chunk index (disk) or global page index (memory).
    pub index: u64,
    /// How to rebuild it.
    pub encoding: Encoding,
    /// blake3 of the rebuilt chunk.
    pub hash: ChunkHash,
}

/// A version 1 record (one row per record).
const RECORD_V1_BYTES: usize = 1 + 1 + 8 + 8 + 32;
/// The least a version 2 record takes (kind, encoding, two one-byte varints; no hash).
const RECORD_V2_MIN_BYTES: usize = 1 + 1 + 1 + 1;
const SEGMENT_BYTES: usize = 8 + 4 + 4 + 8 + 4 + 32;
/// The most a record can take in either version (version 2: kind, encoding, two
/// ten-byte varints and a hash).
const RECORD_MAX_BYTES: u64 = 1 + 1 + 10 + 10 + 32;
/// Most entries reserved up front for a table read from the file; beyond it the vector
/// grows as entries actually parse, so a count alone never sizes an allocation.
const PRESIZE_MAX: usize = 1 << 16;

/// Most records metadata may hold: one per disk chunk plus one per memory page (no chunk
/// is set twice), and never more than [`MAX_OVERLAY_RECORDS`].
pub(crate) fn record_bound(disk_size: u64, memory_pages: u64) -> u64 {
    chunk_count(disk_size)
        .saturating_add(memory_pages)
        .min(MAX_OVERLAY_RECORDS)
}

/// What the first bytes of decompressed metadata fix: the image sizes and so how long the
/// rest may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetaPrefix {
    /// Size of the customized disk.
    pub disk_size: u64,
    /// Memory pages of the snapshot; `None` for a disk-only overlay.
    pub memory_pages: Option<u64>,
    /// Most bytes the whole metadata may take.
    pub len_bound: u64,
}

/// Reads `prefix`, the first bytes of decompressed metadata: `None` until it holds
/// everything up to the device state's length. The bound on the whole length: the record
/// table and the segment table (at most one segment per record) are bounded per record,
/// the layout and device state by their caps and actual lengths, and the rest
/// (properties, appended fields) by a fixed slack. Lets the reader refuse a lying length,
/// or an overlay shaped for another base, before it decompresses more than a few bytes.
pub(crate) fn meta_prefix(prefix: &[u8]) -> Result<Option<MetaPrefix>, FormatError> {
    let mut c = cursor::Cursor::new(prefix);
    let Ok(_base_id) = c.array::<32>() else {
        return Ok(None);
    };
    let Ok(disk_size) = c.u64_le() else {
        return Ok(None);
    };
    if disk_size > crate::limits::MAX_DISK_BYTES {
        return Err(invalid("disk size larger than allowed"));
    }
    let Ok(flag) = c.u8() else {
        return Ok(None);
    };
    let (memory_pages, device_state_len) = match flag {
        0 => (None, 0),
        1 => {
            let Ok(layout_len) = c.u64_le() else {
                return Ok(None);
            };
            if layout_len > MAX_OVERLAY_LAYOUT_BYTES {
                return Err(invalid("memory layout larger than allowed"));
            }
            let layout_len =
                usize::try_from(layout_len).map_err(|_| invalid("length too large"))?;
            let Ok(layout) = c.bytes(layout_len) else {
                return Ok(None);
            };
            let layout = SaveFileLayout::from_bytes(layout).map_err(FormatError::Layout)?;
            let Ok(device_state_len) = c.u64_le() else {
                return Ok(None);
            };
            if device_state_len > MAX_DEVICE_STATE_BYTES {
                return Err(invalid("device state larger than allowed"));
            }
            (Some(layout.page_count()), device_state_len)
        }
        _ => return Err(invalid("bad memory flag")),
    };
    let per_record = RECORD_MAX_BYTES + SEGMENT_BYTES as u64;
    let len_bound = record_bound(disk_size, memory_pages.unwrap_or(0))
        .saturating_mul(per_record)
        .saturating_add(c.position() as u64)
        .saturating_add(device_state_len)
        .saturating_add(OVERLAY_META_SLACK_BYTES)
        .min(MAX_OVERLAY_META_DECOMPRESSED_BYTES);
    Ok(Some(MetaPrefix {
        disk_size,
        memory_pages,
        len_bound,
    }))
}

/// One compressed payload segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    /// Offset from the start of the payload.
    pub offset: u64,
    /// Compressed size.
    pub compressed_len: u32,
    /// Decompressed size (sum of its records' payloads).
    pub uncompressed_len: u32,
    /// First record it carries.
    pub first_record: u64,
    /// Number of records it carries.
    pub record_count: u32,
    /// blake3 of the compressed bytes.
    pub hash: ChunkHash,
}

/// The customized VM's memory snapshot, minus its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// Header, XML, RAM block list.
    pub layout: SaveFileLayout,
    /// Opaque device state (CPU registers, devices).
    pub device_state: Vec<u8>,
}

/// Counts of chunks per encoding, for one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EncodingCounts {
    /// Examined but identical to the base at the same position (not stored).
    pub unchanged: u64,
    /// All zero.
    pub zero: u64,
    /// Copies of a base chunk.
    pub base_ref: u64,
    /// Copies of another chunk of this overlay.
    pub self_ref: u64,
    /// Deltas against the base chunk at the same position.
    pub delta: u64,
    /// Stored whole.
    pub raw: u64,
}

impl EncodingCounts {
    /// Chunks stored in the overlay (everything but unchanged).
    pub fn modified(&self) -> u64 {
        self.zero + self.base_ref + self.self_ref + self.delta + self.raw
    }
}

/// Everything in an overlay besides the payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMeta {
    /// Identity of the base this overlay applies to.
    pub base_id: ChunkHash,
    /// Size of the customized disk (equal to the base disk's).
    pub disk_size: u64,
    /// The customized memory snapshot; `None` for a disk-only overlay.
    pub memory: Option<MemorySnapshot>,
    /// Free-form properties (e.g. `guest-ports`), sorted by key.
    pub properties: Vec<(String, String)>,
    /// Memory pages examined and found identical to the base.
    pub unchanged_memory: u64,
    /// Disk chunks examined and found identical to the base.
    pub unchanged_disk: u64,
    /// Payload segments, in file order.
    pub segments: Vec<SegmentEntry>,
    /// Every modified chunk, in application order.
    pub records: Vec<Record>,
}

impl OverlayMeta {
    /// Number of memory pages of the customized VM (0 if disk-only).
    pub fn memory_pages(&self) -> u64 {
        self.memory.as_ref().map_or(0, |m| m.layout.page_count())
    }

    /// Number of disk chunks.
    pub fn disk_chunks(&self) -> u64 {
        chunk_count(self.disk_size)
    }

    /// Per-encoding counts for one image.
    pub fn counts(&self, kind: ImageKind) -> EncodingCounts {
        let mut c = EncodingCounts {
            unchanged: match kind {
                ImageKind::Memory => self.unchanged_memory,
                ImageKind::Disk => self.unchanged_disk,
            },
            ..Default::default()
        };
        for r in self.records.iter().filter(|r| r.kind == kind) {
            match r.encoding {
                Encoding::Zero => c.zero += 1,
                Encoding::BaseRef(_) => c.base_ref += 1,
                Encoding::SelfRef(_) => c.self_ref += 1,
                Encoding::Delta(_) => c.delta += 1,
                Encoding::Raw => c.raw += 1,
            }
        }
        c
    }

    /// Total compressed payload bytes.
    pub fn payload_len(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| u64::from(s.compressed_len))
            .sum()
    }

    /// Total decompressed payload bytes.
    pub fn payload_uncompressed_len(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| u64::from(s.uncompressed_len))
            .sum()
    }

    /// A property's value.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self.records.len() * (RECORD_V2_MIN_BYTES + 32)
                + self.segments.len() * SEGMENT_BYTES,
        );
        out.extend_from_slice(&self.base_id);
        put_u64(&mut out, self.disk_size);
        match &self.memory {
            Some(m) => {
                out.push(1);
                put_blob(&mut out, &m.layout.to_bytes());
                put_blob(&mut out, &m.device_state);
            }
            None => out.push(0),
        }
        put_u64(&mut out, self.properties.len() as u64);
        for (k, v) in &self.properties {
            put_blob(&mut out, k.as_bytes());
            put_blob(&mut out, v.as_bytes());
        }
        put_u64(&mut out, self.unchanged_memory);
        put_u64(&mut out, self.unchanged_disk);
        put_u64(&mut out, self.segments.len() as u64);
        for s in &self.segments {
            put_u64(&mut out, s.offset);
            out.extend_from_slice(&s.compressed_len.to_le_bytes());
            out.extend_from_slice(&s.uncompressed_len.to_le_bytes());
            put_u64(&mut out, s.first_record);
            out.extend_from_slice(&s.record_count.to_le_bytes());
            out.extend_from_slice(&s.hash);
        }
        put_records(&mut out, &self.records);
        out
    }

    /// Parses and validates metadata of format major version `major`. Trailing bytes are
    /// allowed (fields a newer minor version appended).
    pub(crate) fn from_bytes(bytes: &[u8], major: u16) -> Result<Self, FormatError> {
        let mut c = Cursor(cursor::Cursor::new(bytes));
        let base_id = c.array::<32>()?;
        let disk_size = c.u64()?;
        // Checked before anything is sized by it (validation allocates a bitmap per chunk).
        if disk_size > crate::limits::MAX_DISK_BYTES {
            return Err(invalid("disk size larger than allowed"));
        }
        let memory = match c.u8()? {
            0 => None,
            1 => {
                let layout = c.blob()?;
                if layout.len() as u64 > MAX_OVERLAY_LAYOUT_BYTES {
                    return Err(invalid("memory layout larger than allowed"));
                }
                let layout = SaveFileLayout::from_bytes(layout).map_err(FormatError::Layout)?;
                let device_state = c.blob()?;
                if device_state.len() as u64 > MAX_DEVICE_STATE_BYTES {
                    return Err(invalid("device state larger than allowed"));
                }
                let device_state = device_state.to_vec();
                Some(MemorySnapshot {
                    layout,
                    device_state,
                })
            }
            _ => return Err(invalid("bad memory flag")),
        };
        // Everything below is counted; the layout (known now) bounds the records and so
        // the segments, before either table is read.
        let max_records = record_bound(
            disk_size,
            memory.as_ref().map_or(0, |m| m.layout.page_count()),
        );
        let property_count = c.count(16)?;
        let mut properties = Vec::with_capacity(property_count.min(PRESIZE_MAX));
        for _ in 0..property_count {
            let k =
                String::from_utf8(c.blob()?.to_vec()).map_err(|_| invalid("property not utf-8"))?;
            let v =
                String::from_utf8(c.blob()?.to_vec()).map_err(|_| invalid("property not utf-8"))?;
            properties.push((k, v));
        }
        let unchanged_memory = c.u64()?;
        let unchanged_disk = c.u64()?;
        // Every segment carries at least one record (the encoder closes none empty).
        let segment_count = c.bounded_count(SEGMENT_BYTES, max_records, "segments")?;
        let mut segments = Vec::with_capacity(segment_count.min(PRESIZE_MAX));
        for _ in 0..segment_count {
            segments.push(SegmentEntry {
                offset: c.u64()?,
                compressed_len: c.u32()?,
                uncompressed_len: c.u32()?,
                first_record: c.u64()?,
                record_count: c.u32()?,
                hash: c.array::<32>()?,
            });
        }
        let records = if major == 1 {
            records_v1(&mut c, max_records)?
        } else {
            records_v2(&mut c, max_records)?
        };
        let meta = OverlayMeta {
            base_id,
            disk_size,
            memory,
            properties,
            unchanged_memory,
            unchanged_disk,
            segments,
            records,
        };
        meta.validate()?;
        Ok(meta)
    }

    /// Structural checks: every record targets a chunk inside its image at most once,
    /// self-references point backwards, segments tile the records and the payload.
    fn validate(&self) -> Result<(), FormatError> {
        let memory_pages = self.memory_pages();
        let disk_chunks = self.disk_chunks();
        let mut seen_memory = Bitmap::new(memory_pages)?;
        let mut seen_disk = Bitmap::new(disk_chunks)?;
        for (n, r) in self.records.iter().enumerate() {
            let seen = match r.kind {
                ImageKind::Memory => &mut seen_memory,
                ImageKind::Disk => &mut seen_disk,
            };
            if !seen.insert(r.index) {
                return Err(invalid(&format!(
                    "record {n}: {} chunk {} outside the image or set twice",
                    r.kind.name(),
                    r.index
                )));
            }
            match r.encoding {
                Encoding::SelfRef(target) if target >= n as u64 => {
                    return Err(invalid(&format!("record {n}: reference to a later record")));
                }
                Encoding::Delta(len) if len == 0 || len as usize >= CHUNK_SIZE_BYTES => {
                    return Err(invalid(&format!("record {n}: bad delta length")));
                }
                _ => {}
            }
        }
        let mut next_record = 0u64;
        let mut next_offset = 0u64;
        for (i, s) in self.segments.iter().enumerate() {
            if s.first_record != next_record || s.offset != next_offset {
                return Err(invalid(&format!(
                    "segment {i} does not follow the previous one"
                )));
            }
            if s.record_count as usize > super::SEGMENT_MAX_RECORDS {
                return Err(invalid(&format!("segment {i} carries too many records")));
            }
            let end = next_record
                .checked_add(u64::from(s.record_count))
                .filter(|&e| e <= self.records.len() as u64)
                .ok_or_else(|| {
                    invalid(&format!("segment {i} carries records that do not exist"))
                })?;
            let payload: u64 = self
                .records_of(s)
                .iter()
                .map(|r| r.encoding.payload_len() as u64)
                .sum();
            if payload != u64::from(s.uncompressed_len) {
                return Err(invalid(&format!(
                    "segment {i} size does not match its records"
                )));
            }
            next_record = end;
            next_offset += u64::from(s.compressed_len);
        }
        if next_record != self.records.len() as u64 {
            return Err(invalid("records not covered by any segment"));
        }
        Ok(())
    }

    /// The records a segment carries (empty if the entry is out of range).
    pub fn records_of(&self, segment: &SegmentEntry) -> &[Record] {
        let start = usize::try_from(segment.first_record).unwrap_or(usize::MAX);
        let end = start.saturating_add(segment.record_count as usize);
        self.records.get(start..end).unwrap_or(&[])
    }
}

/// The record table of version 2: one column per field, so that kinds, encodings and the
/// mostly ascending indices compress to almost nothing and only the hashes remain. Indices
/// are zigzag varints of the difference to the previous record's; arguments are varints
/// made small per encoding (see `docs/overlay-format.md`). Hashes that the table itself
/// implies are left out: a zero chunk's, and a self-reference's (its target's).
fn put_records(out: &mut Vec<u8>, records: &[Record]) {
    put_u64(out, records.len() as u64);
    out.extend(records.iter().map(|r| r.kind.code()));
    out.extend(records.iter().map(|r| r.encoding.code()));
    let mut previous = 0u64;
    for r in records {
        put_varint(out, zigzag(r.index.wrapping_sub(previous)));
        previous = r.index;
    }
    for (n, r) in records.iter().enumerate() {
        let arg = match r.encoding {
            Encoding::BaseRef(loc) => loc.to_u64().rotate_left(1),
            Encoding::SelfRef(target) => (n as u64).wrapping_sub(target),
            other => other.arg(),
        };
        put_varint(out, arg);
    }
    for r in records.iter().filter(|r| stores_hash(r.encoding)) {
        out.extend_from_slice(&r.hash);
    }
}

/// Whether a version 2 record carries its hash (else it follows from the table).
fn stores_hash(encoding: Encoding) -> bool {
    !matches!(encoding, Encoding::Zero | Encoding::SelfRef(_))
}

fn records_v2(c: &mut Cursor<'_>, max_records: u64) -> Result<Vec<Record>, FormatError> {
    let n = c.bounded_count(RECORD_V2_MIN_BYTES, max_records, "records")?;
    let kinds = c.take(n)?;
    let codes = c.take(n)?;
    let mut indices = Vec::with_capacity(n.min(PRESIZE_MAX));
    let mut previous = 0u64;
    for _ in 0..n {
        previous = previous.wrapping_add(unzigzag(c.varint()?));
        indices.push(previous);
    }
    let mut records = Vec::with_capacity(n.min(PRESIZE_MAX));
    for (i, ((&kind, &code), index)) in kinds.iter().zip(codes).zip(indices).enumerate() {
        let kind = ImageKind::from_code(kind).ok_or_else(|| invalid("bad image kind"))?;
        let stored = c.varint()?;
        let arg = match code {
            2 => stored.rotate_right(1),
            // A distance of 0 or beyond the first record wraps to a target ≥ i, which
            // validation refuses as a forward reference.
            3 => (i as u64).wrapping_sub(stored),
            _ => stored,
        };
        let encoding = Encoding::from_parts(code, arg).ok_or_else(|| invalid("bad encoding"))?;
        records.push(Record {
            kind,
            index,
            encoding,
            hash: [0; 32],
        });
    }
    for i in 0..records.len() {
        records[i].hash = match records[i].encoding {
            Encoding::Zero => zero_chunk_hash(),
            // A forward or self target is refused by validation; its hash is moot.
            Encoding::SelfRef(target) => usize::try_from(target)
                .ok()
                .filter(|&t| t < i)
                .map_or([0; 32], |t| records[t].hash),
            _ => c.array::<32>()?,
        };
    }
    Ok(records)
}

fn records_v1(c: &mut Cursor<'_>, max_records: u64) -> Result<Vec<Record>, FormatError> {
    let record_count = c.bounded_count(RECORD_V1_BYTES, max_records, "records")?;
    let mut records = Vec::with_capacity(record_count.min(PRESIZE_MAX));
    for _ in 0..record_count {
        let kind = ImageKind::from_code(c.u8()?).ok_or_else(|| invalid("bad image kind"))?;
        let code = c.u8()?;
        let index = c.u64()?;
        let arg = c.u64()?;
        let encoding = Encoding::from_parts(code, arg).ok_or_else(|| invalid("bad encoding"))?;
        records.push(Record {
            kind,
            index,
            encoding,
            hash: c.array::<32>()?,
        });
    }
    Ok(records)
}

fn zigzag(v: u64) -> u64 {
    // All ones when the top bit is set (a negative difference), else zero.
    (v << 1) ^ (v >> 63).wrapping_neg()
}

fn unzigzag(v: u64) -> u64 {
    (v >> 1) ^ (v & 1).wrapping_neg()
}

/// LEB128: 7 bits per byte, low first, high bit set on all but the last.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    let low7 = |v: u64| v.to_le_bytes()[0] & 0x7f;
    while v >= 0x80 {
        out.push(low7(v) | 0x80);
        v >>= 7;
    }
    out.push(low7(v));
}

fn invalid(msg: &str) -> FormatError {
    FormatError::Invalid(msg.to_string())
}

fn ends_early(_: cursor::Truncated) -> FormatError {
    invalid("metadata ends early")
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_blob(out: &mut Vec<u8>, blob: &[u8]) {
    put_u64(out, blob.len() as u64);
    out.extend_from_slice(blob);
}

/// The metadata's reader: the crate's cursor plus varints, blobs and counts, with any
/// truncation reported as the metadata ending early.
struct Cursor<'a>(cursor::Cursor<'a>);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        self.0.bytes(n).map_err(ends_early)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        self.0.array().map_err(ends_early)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        self.0.u8().map_err(ends_early)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        self.0.u32_le().map_err(ends_early)
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        self.0.u64_le().map_err(ends_early)
    }
    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(invalid("varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid("varint longer than 10 bytes"))
    }
    fn blob(&mut self) -> Result<&'a [u8], FormatError> {
        let len = usize::try_from(self.u64()?).map_err(|_| invalid("length too large"))?;
        self.take(len)
    }
    /// A count of items each at least `item_bytes` long: refused if the rest of the
    /// metadata cannot hold that many, so a corrupt count cannot cause a huge allocation.
    fn count(&mut self, item_bytes: usize) -> Result<usize, FormatError> {
        let n = usize::try_from(self.u64()?).map_err(|_| invalid("count too large"))?;
        if n.checked_mul(item_bytes)
            .is_none_or(|need| need > self.0.remaining())
        {
            return Err(invalid("count larger than the metadata"));
        }
        Ok(n)
    }
    /// A count as in [`Cursor::count`] that must also stay within `bound` (what the
    /// layout allows); over it is [`FormatError::TooMany`].
    fn bounded_count(
        &mut self,
        item_bytes: usize,
        bound: u64,
        what: &'static str,
    ) -> Result<usize, FormatError> {
        let at = self.0.clone();
        let count = self.u64()?;
        if count > bound {
            return Err(FormatError::TooMany { what, count, bound });
        }
        self.0 = at;
        self.count(item_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta_with(records: Vec<Record>) -> OverlayMeta {
        let payload: u64 = records
            .iter()
            .map(|r| r.encoding.payload_len() as u64)
            .sum();
        OverlayMeta {
            base_id: [1; 32],
            disk_size: 1 << 30,
            memory: None,
            properties: vec![("guest-ports".into(), "22".into())],
            unchanged_memory: 3,
            unchanged_disk: 4,
            segments: vec![SegmentEntry {
                offset: 0,
                compressed_len: 10,
                uncompressed_len: u32::try_from(payload).unwrap_or(u32::MAX),
                first_record: 0,
                record_count: u32::try_from(records.len()).unwrap_or(u32::MAX),
                hash: [2; 32],
            }],
            records,
        }
    }

    fn disk(index: u64, encoding: Encoding, hash: u8) -> Record {
        Record {
            kind: ImageKind::Disk,
            index,
            encoding,
            hash: [hash; 32],
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            disk(900, Encoding::Raw, 1),
            Record {
                hash: zero_chunk_hash(),
                ..disk(5, Encoding::Zero, 0)
            },
            disk(6, Encoding::SelfRef(0), 1),
            disk(
                7,
                Encoding::BaseRef(Location {
                    kind: ImageKind::Memory,
                    index: 77,
                }),
                3,
            ),
            disk(
                200_000,
                Encoding::BaseRef(Location {
                    kind: ImageKind::Disk,
                    index: 1,
                }),
                4,
            ),
            disk(8, Encoding::Delta(300), 5),
        ]
    }

    /// Version 1's row layout, as documented, for the compatibility test.
    fn to_bytes_v1(meta: &OverlayMeta) -> Vec<u8> {
        let v2 = meta.to_bytes();
        let mut out = v2[..v2.len() - records_v2_len(&meta.records)].to_vec();
        put_u64(&mut out, meta.records.len() as u64);
        for r in &meta.records {
            out.push(r.kind.code());
            out.push(r.encoding.code());
            put_u64(&mut out, r.index);
            put_u64(&mut out, r.encoding.arg());
            out.extend_from_slice(&r.hash);
        }
        out
    }

    fn records_v2_len(records: &[Record]) -> usize {
        let mut out = Vec::new();
        put_records(&mut out, records);
        out.len()
    }

    #[test]
    fn columnar_records_round_trip_and_are_small() {
        let meta = meta_with(sample());
        let bytes = meta.to_bytes();
        assert_eq!(OverlayMeta::from_bytes(&bytes, 2).expect("parses"), meta);
        // 4 records carry a hash; the zero record and the self-reference do not.
        assert!(records_v2_len(&meta.records) < 8 + 4 * 32 + meta.records.len() * 8);
    }

    #[test]
    fn version_1_metadata_still_reads() {
        let meta = meta_with(sample());
        let v1 = to_bytes_v1(&meta);
        assert_eq!(OverlayMeta::from_bytes(&v1, 1).expect("parses"), meta);
        assert!(OverlayMeta::from_bytes(&v1, 2).is_err(), "layouts differ");
    }

    #[test]
    fn self_reference_distance_zero_is_refused() {
        let mut bytes = meta_with(vec![
            disk(1, Encoding::Raw, 1),
            disk(2, Encoding::SelfRef(0), 1),
        ])
        .to_bytes();
        // Columns: count, kinds (2), codes (2), indices (2 one-byte varints), args (2).
        let arg_of_second = bytes.len() - 32 - 1;
        assert_eq!(bytes[arg_of_second], 1, "distance to record 0");
        bytes[arg_of_second] = 0;
        assert!(OverlayMeta::from_bytes(&bytes, 2).is_err());
    }

    #[test]
    fn overlong_varints_are_refused() {
        let mut c = Cursor(cursor::Cursor::new(&[0xff; 11]));
        assert!(c.varint().is_err());
        let mut c = Cursor(cursor::Cursor::new(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]));
        assert!(c.varint().is_err(), "65th bit");
    }

    /// Offset of the record count in `meta`'s serialized form.
    fn record_count_at(meta: &OverlayMeta) -> usize {
        meta.to_bytes().len() - records_v2_len(&meta.records)
    }

    #[test]
    fn valid_metadata_is_within_its_length_bound() {
        let bytes = meta_with(sample()).to_bytes();
        let prefix = meta_prefix(&bytes)
            .expect("valid")
            .expect("prefix complete");
        assert!(bytes.len() as u64 <= prefix.len_bound);
        assert_eq!((prefix.disk_size, prefix.memory_pages), (1 << 30, None));
        assert_eq!(meta_prefix(&bytes[..40]).expect("partial"), None);
    }

    #[test]
    fn counts_over_the_layout_are_refused_before_anything_is_sized_by_them() {
        let meta = meta_with(sample());
        let chunks = meta.disk_chunks();
        let at = record_count_at(&meta);
        let mut bytes = meta.to_bytes();
        bytes[at..at + 8].copy_from_slice(&(chunks + 1).to_le_bytes());
        let err = OverlayMeta::from_bytes(&bytes, 2).expect_err("too many records");
        assert!(
            matches!(err, FormatError::TooMany { what: "records", bound, .. } if bound == chunks),
            "{err:?}"
        );
        // The segment count sits 60 bytes per segment before the records.
        let at = at - SEGMENT_BYTES - 8;
        let mut bytes = meta.to_bytes();
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = OverlayMeta::from_bytes(&bytes, 2).expect_err("too many segments");
        assert!(
            matches!(
                err,
                FormatError::TooMany {
                    what: "segments",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    proptest! {
        /// Any record count gives a value or an error; over the layout's bound (one per
        /// disk chunk here), the count itself is refused.
        #[test]
        fn any_record_count_is_bounded(count in any::<u64>()) {
            let meta = meta_with(sample());
            let at = record_count_at(&meta);
            let mut bytes = meta.to_bytes();
            bytes[at..at + 8].copy_from_slice(&count.to_le_bytes());
            let result = OverlayMeta::from_bytes(&bytes, 2);
            if count > meta.disk_chunks() {
                let too_many = matches!(result, Err(FormatError::TooMany { what: "records", .. }));
                prop_assert!(too_many);
            }
        }

        /// Any damage to a valid table, or any bytes at all, give a value or an error,
        /// never a panic or a huge allocation.
        #[test]
        fn damaged_metadata_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            noise in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = meta_with(sample()).to_bytes();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = OverlayMeta::from_bytes(&bytes, 2);
            let _ = OverlayMeta::from_bytes(&bytes[..cut.index(bytes.len())], 2);
            let _ = OverlayMeta::from_bytes(&noise, 2);
            let _ = OverlayMeta::from_bytes(&noise, 1);
        }

        #[test]
        fn varints_and_zigzag_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, zigzag(v));
            let mut c = Cursor(cursor::Cursor::new(&out));
            prop_assert_eq!(unzigzag(c.varint().expect("reads")), v);
            prop_assert_eq!(c.0.remaining(), 0);
        }
    }
}
