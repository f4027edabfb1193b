//! Crafted overlays that once exhausted memory: a metadata section of 400 M zero records
//! (a 25.6 GB reservation, then an abort) and a header declaring 4 GiB of metadata made of
//! zeros. Each must be refused with a typed error, without a panic and without memory
//! growing in proportion to what the file claims. Own test binary (own process), and the
//! tests take turns, so the peak-RSS measurement sees only the overlay being opened.

mod common;
use common::{reset_peak_rss, status_kib, u64_at};
use std::io::Write;
use std::sync::Mutex;

use cloudlet_engine::format::{
    BaseShape, FormatError, MemorySnapshot, OverlayMeta, OverlayReader, OverlayWriter,
};
use cloudlet_engine::savefile::{RamBlock, SaveFileLayout};

/// Largest growth of peak RSS allowed while one hostile overlay is opened.
const MAX_GROWTH_BYTES: u64 = 64 << 20;
const HEADER_BYTES: usize = 72;
const BASE_ID: [u8; 32] = [7; 32];

/// One test at a time: peak RSS is per process.
static SERIAL: Mutex<()> = Mutex::new(());

/// The base the valid overlay was made for: a 1 MiB disk, no memory.
const BASE: BaseShape = BaseShape {
    id: BASE_ID,
    disk_size: 1 << 20,
    memory_pages: 0,
};

/// A valid overlay of a 1 MiB disk (256 chunks) with no records.
fn valid_overlay() -> Vec<u8> {
    overlay_of(1 << 20, None)
}

/// A valid overlay of BASE_ID with no records, claiming `disk_size` and `memory`.
fn overlay_of(disk_size: u64, memory: Option<MemorySnapshot>) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small.overlay");
    let writer = OverlayWriter::create(&path).expect("create");
    let meta = OverlayMeta {
        base_id: BASE_ID,
        disk_size,
        memory,
        properties: vec![],
        unchanged_memory: 0,
        unchanged_disk: 0,
        segments: vec![],
        records: vec![],
    };
    writer.finish(meta).expect("finish");
    std::fs::read(&path).expect("read back")
}

/// A memory snapshot whose one RAM block is `ram_bytes` long (nothing else in it matters
/// to the reader before the base is checked).
fn memory_of(ram_bytes: u64) -> MemorySnapshot {
    let mut preamble = Vec::new();
    preamble.extend_from_slice(&0x5145_564d_u32.to_be_bytes());
    preamble.extend_from_slice(&3u32.to_be_bytes());
    preamble.push(0x07);
    preamble.extend_from_slice(&13u32.to_be_bytes());
    preamble.extend_from_slice(b"pc-i440fx-7.2");
    let mut xml_area = b"<domain type='qemu'><name>hostile</name></domain>\0".to_vec();
    xml_area.resize(4096, 0);
    MemorySnapshot {
        layout: SaveFileLayout {
            libvirt_version: 2,
            was_running: 1,
            xml_area,
            cookie_offset: 0,
            qemu_preamble: preamble,
            ram_section_id: 2,
            ram_instance_id: 0,
            ram_version_id: 4,
            blocks: vec![RamBlock {
                name: "pc.ram".into(),
                length: ram_bytes,
            }],
        },
        device_state: vec![0; 64],
    }
}

/// The decompressed metadata of `overlay` (a valid one).
fn meta_of(overlay: &[u8]) -> Vec<u8> {
    let len = usize::try_from(u64_at(overlay, 16)).expect("small");
    zstd::bulk::decompress(&overlay[HEADER_BYTES..HEADER_BYTES + len], 1 << 20).expect("meta")
}

/// `header` (a valid overlay's) rewritten for `compressed` metadata declaring `meta_len`
/// bytes, with hash and header check recomputed: only the metadata is hostile.
fn overlay_with(header: &[u8], compressed: &[u8], meta_len: u64) -> Vec<u8> {
    let mut out = header[..HEADER_BYTES].to_vec();
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&(compressed.len() as u64).to_le_bytes());
    out[24..32].copy_from_slice(&meta_len.to_le_bytes());
    out[32..64].copy_from_slice(blake3::hash(compressed).as_bytes());
    let check = *blake3::hash(&out[..64]).as_bytes();
    out[64..72].copy_from_slice(&check[..8]);
    out.extend_from_slice(compressed);
    out
}

/// Compresses `parts` (each a byte repeated a number of times) as one zstd stream,
/// without ever holding the uncompressed bytes; returns the compressed bytes and length.
fn compress_runs(prefix: &[u8], runs: &[(u8, u64)]) -> (Vec<u8>, u64) {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
    enc.write_all(prefix).expect("write");
    let mut total = prefix.len() as u64;
    for &(byte, count) in runs {
        let block = vec![byte; 1 << 20];
        let mut left = count;
        while left > 0 {
            let n = usize::try_from(left).map_or(block.len(), |l| l.min(block.len()));
            enc.write_all(&block[..n]).expect("write");
            left -= n as u64;
        }
        total += count;
    }
    (enc.finish().expect("finish"), total)
}

/// Metadata of the valid overlay up to its record table (base id, disk size, no memory,
/// no properties, statistics, no segments), then `records` zero records on disk chunk 0.
fn zero_records(valid: &[u8], records: u64) -> (Vec<u8>, u64) {
    let meta = meta_of(valid);
    // base id (32) | disk size (8) | no memory (1) | 0 properties | 2 statistics | 0 segments
    let head = 32 + 8 + 1 + 8 + 8 + 8 + 8;
    assert_eq!(meta.len(), head + 8, "the valid overlay has no records");
    let mut prefix = meta[..head].to_vec();
    prefix.extend_from_slice(&records.to_le_bytes());
    // kinds (1: disk), encodings (1: zero), index deltas (0), arguments (0)
    compress_runs(
        &prefix,
        &[(1, records), (1, records), (0, records), (0, records)],
    )
}

/// Opens `overlay` and returns the error and how much peak RSS grew meanwhile.
fn open_measured(overlay: &[u8]) -> (FormatError, u64) {
    open_measured_for(overlay, None)
}

/// Opens `overlay` (for `base`, if given) and returns the error and how much peak RSS
/// grew meanwhile.
fn open_measured_for(overlay: &[u8], base: Option<&BaseShape>) -> (FormatError, u64) {
    // If the reset is refused, growth is measured from the current RSS: only overstated.
    reset_peak_rss();
    let before = status_kib("VmRSS:");
    let result = match base {
        Some(base) => OverlayReader::open_for_base(overlay, base),
        None => OverlayReader::open(overlay),
    };
    let peak = status_kib("VmHWM:");
    let err = result.expect_err("hostile overlay refused");
    (err, peak.saturating_sub(before) * 1024)
}

fn assert_bounded(growth: u64) {
    assert!(
        growth < MAX_GROWTH_BYTES,
        "peak RSS grew {} MiB",
        growth >> 20
    );
}

#[test]
fn the_valid_overlay_opens_and_names_its_base() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let valid = valid_overlay();
    let reader = OverlayReader::open(&valid[..]).expect("valid overlay opens");
    assert_eq!(reader.meta().base_id, BASE_ID);
    OverlayReader::open_for_base(&valid[..], &BASE).expect("its own base");
    let other = BaseShape {
        id: [8; 32],
        ..BASE
    };
    let err = OverlayReader::open_for_base(&valid[..], &other).expect_err("another base");
    assert!(
        matches!(err, FormatError::WrongBase { found } if found == BASE_ID),
        "{err:?}"
    );
    // A disk-only overlay applies to a base with memory too.
    let with_memory = BaseShape {
        memory_pages: 256,
        ..BASE
    };
    OverlayReader::open_for_base(&valid[..], &with_memory).expect("disk-only overlay");
}

#[test]
fn an_8_tib_disk_is_refused_against_the_base_before_its_bitmap_exists() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Valid on its own (8 TiB is the format's cap): 2^31 chunks, a 256 MiB bitmap to
    // check its records. Against a 1 MiB base it is refused from the metadata's first
    // 41 bytes.
    let hostile = overlay_of(8 << 40, None);
    assert!(
        hostile.len() < 4096,
        "a small file: {} bytes",
        hostile.len()
    );
    let (err, growth) = open_measured_for(&hostile, Some(&BASE));
    assert!(
        matches!(
            err,
            FormatError::WrongShape {
                what: "disk bytes",
                found,
                expected: 1_048_576,
            } if found == 8 << 40
        ),
        "{err:?}"
    );
    assert!(err.is_invalid_input());
    assert_bounded(growth);
    // Without a base to check against it is a valid overlay (what synthesis saw before).
    OverlayReader::open(&hostile[..]).expect("valid on its own");
}

#[test]
fn a_1_tib_memory_is_refused_against_the_base_before_its_bitmap_exists() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 2^28 pages (a 32 MiB bitmap at open, another at decode) against a base of 256.
    let hostile = overlay_of(1 << 20, Some(memory_of(1 << 40)));
    let base = BaseShape {
        memory_pages: 256,
        ..BASE
    };
    let (err, growth) = open_measured_for(&hostile, Some(&base));
    assert!(
        matches!(
            err,
            FormatError::WrongShape {
                what: "memory pages",
                found,
                expected: 256,
            } if found == 1 << 28
        ),
        "{err:?}"
    );
    assert_bounded(growth);
    // Same sizes as the base: opens.
    let fitting = overlay_of(1 << 20, Some(memory_of(1 << 20)));
    OverlayReader::open_for_base(&fitting[..], &base).expect("fits its base");
}

#[test]
fn four_hundred_million_zero_records_are_refused_in_bounded_memory() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let valid = valid_overlay();
    let (compressed, meta_len) = zero_records(&valid, 400_000_000);
    let hostile = overlay_with(&valid, &compressed, meta_len);
    assert!(
        hostile.len() < 1 << 20,
        "a small file: {} bytes",
        hostile.len()
    );
    let (err, growth) = open_measured(&hostile);
    // 1.6 GB of metadata is over the absolute cap: refused from the header alone.
    assert!(matches!(err, FormatError::MetaTooLarge { .. }), "{err:?}");
    assert!(err.is_invalid_input());
    assert_bounded(growth);
}

#[test]
fn ten_million_zero_records_are_refused_by_the_layout_bound() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let valid = valid_overlay();
    let (compressed, meta_len) = zero_records(&valid, 10_000_000);
    let hostile = overlay_with(&valid, &compressed, meta_len);
    let (err, growth) = open_measured(&hostile);
    // 40 MB is under the absolute cap, but a 256-chunk disk needs ~16 MiB at most: refused
    // after decompressing its first bytes.
    assert!(
        matches!(err, FormatError::MetaTooLarge { declared, bound } if declared == meta_len && bound < 20 << 20),
        "{err:?}"
    );
    assert_bounded(growth);
}

#[test]
fn a_record_count_over_the_layout_bound_is_refused_before_parsing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let valid = valid_overlay();
    // Within the metadata length the layout allows, but far more records than the 256
    // chunks of the disk: the count itself is refused.
    let (compressed, meta_len) = zero_records(&valid, 1_000_000);
    let hostile = overlay_with(&valid, &compressed, meta_len);
    let (err, growth) = open_measured(&hostile);
    assert!(
        matches!(
            err,
            FormatError::TooMany {
                what: "records",
                count: 1_000_000,
                bound: 256
            }
        ),
        "{err:?}"
    );
    assert!(err.is_invalid_input());
    assert_bounded(growth);
}

#[test]
fn four_gib_of_zero_metadata_is_refused_in_bounded_memory() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let valid = valid_overlay();
    let declared = 4u64 << 30;
    // 4 GiB of zeros compress to ~130 KB; decompressing them is what must not happen.
    let (compressed, meta_len) = compress_runs(&[], &[(0, declared)]);
    assert_eq!(meta_len, declared);
    let hostile = overlay_with(&valid, &compressed, declared);
    let (err, growth) = open_measured(&hostile);
    assert!(matches!(err, FormatError::MetaTooLarge { .. }), "{err:?}");
    assert_bounded(growth);

    // Declared just under the absolute cap: the zeros read as a disk-only overlay of an
    // empty disk, whose bound is a few MiB, so decompression stops at its first step.
    let declared = (1u64 << 30) - 1;
    let (compressed, _) = compress_runs(&[], &[(0, declared)]);
    let hostile = overlay_with(&valid, &compressed, declared);
    let (err, growth) = open_measured(&hostile);
    assert!(
        matches!(err, FormatError::MetaTooLarge { declared: d, .. } if d == declared),
        "{err:?}"
    );
    assert_bounded(growth);
}

#[test]
fn metadata_longer_than_declared_is_refused_as_it_decompresses() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let valid = valid_overlay();
    let meta = meta_of(&valid);
    // The valid metadata followed by 4 GiB of zeros, declared as its valid length.
    let (compressed, _) = compress_runs(&meta, &[(0, 4 << 30)]);
    let hostile = overlay_with(&valid, &compressed, meta.len() as u64);
    let (err, growth) = open_measured(&hostile);
    assert!(matches!(err, FormatError::Invalid(_)), "{err:?}");
    assert!(err.is_invalid_input());
    assert_bounded(growth);
}
