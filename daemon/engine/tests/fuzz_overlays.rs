//! Fuzz-style property test of everything that reads an overlay: the header, the metadata
//! parser (reached with valid hashes, so that its own checks are what is tested), segment
//! iteration and, when a damaged overlay still fits its base, the decoder. Real small
//! overlays made by the engine are damaged by bit flips, truncations, splices, insertions
//! and huge values written over counts and lengths. Every case must end in a value or a
//! typed error, never a panic, and the process's peak RSS must stay under a ceiling.
//!
//! A fixed case budget and a fixed seed keep it deterministic and bounded in time (a few
//! seconds; CI runs it with `cargo test`). Own test binary, so the peak RSS is this test's.

mod common;
use common::{reset_peak_rss, status_kib, u64_at};
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use cloudlet_engine::base::{create_base, Base, BasePaths};
use cloudlet_engine::decode::{check_fits, decode, DecodeOutputs};
use cloudlet_engine::disk::{DiskOutputFormat, DiskSource};
use cloudlet_engine::encode::{encode, EncodeInput, EncodeOptions};
use cloudlet_engine::format::{decompress_segment, OverlayReader, HEADER_BYTES};
use cloudlet_engine::progress::NoProgress;
use cloudlet_engine::testkit::{generate, WorkloadSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Most the process's resident set may reach while the cases run.
const RSS_CEILING_BYTES: u64 = 256 << 20;
/// Cases per target (file bytes, header fields, metadata); `CLOUDLET_FUZZ_CASES` and
/// `CLOUDLET_FUZZ_SEED` (a byte) run a longer or another sequence by hand.
const CASES: u32 = 2000;

/// How far the cases got: opened, opened for the base, decoded (attempted).
static OPENED: AtomicUsize = AtomicUsize::new(0);
static FITTED: AtomicUsize = AtomicUsize::new(0);
static DECODED: AtomicUsize = AtomicUsize::new(0);

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(prop::sample::Index, u8),
    /// Cut everything from here on.
    Truncate(prop::sample::Index),
    /// Copy `len` bytes from one place over another (a structure where another belongs).
    Splice(prop::sample::Index, prop::sample::Index, usize),
    /// Insert bytes.
    Insert(prop::sample::Index, Vec<u8>),
    /// Write a little-endian u64 at an arbitrary offset.
    Word(prop::sample::Index, u64),
    /// Write a little-endian u64 over one of the metadata's counts or lengths.
    Field(prop::sample::Index, u64),
}

/// Values that overflow, wrap or size absurd allocations when trusted.
fn huge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 63),
        Just(1 << 40),
        Just(1 << 32),
        Just(u64::from(u32::MAX)),
        Just(1 << 24),
        Just(0),
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            1..256usize
        )
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        (
            any::<prop::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<prop::sample::Index>(), huge()).prop_map(|(i, v)| Mutation::Word(i, v)),
        (any::<prop::sample::Index>(), huge()).prop_map(|(i, v)| Mutation::Field(i, v)),
    ]
}

/// Applies `m` to `bytes`; `fields` are offsets of counts and lengths in them.
fn apply(bytes: &mut Vec<u8>, m: &Mutation, fields: &[usize]) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(at, mask) => {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Mutation::Splice(from, to, len) => {
            let (from, to) = (from.index(bytes.len()), to.index(bytes.len()));
            let n = (*len).min(bytes.len() - from).min(bytes.len() - to);
            let piece = bytes[from..from + n].to_vec();
            bytes[to..to + n].copy_from_slice(&piece);
        }
        Mutation::Insert(at, extra) => {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, extra.iter().copied());
        }
        Mutation::Word(at, v) => {
            let i = at.index(bytes.len());
            put_u64(bytes, i, *v);
        }
        Mutation::Field(which, v) => {
            if !fields.is_empty() {
                put_u64(bytes, fields[which.index(fields.len())], *v);
            }
        }
    }
}

/// Writes as much of `v` (little-endian) as fits at `at`.
fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    if at >= bytes.len() {
        return;
    }
    let n = 8.min(bytes.len() - at);
    bytes[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
}

/// An overlay split into its parts: header, decompressed metadata, and what follows the
/// compressed metadata (padding and payload).
struct Parts {
    header: Vec<u8>,
    meta: Vec<u8>,
    rest: Vec<u8>,
}

fn split(overlay: &[u8]) -> Parts {
    let compressed_len = usize::try_from(u64_at(overlay, 16)).expect("small");
    let meta_len = usize::try_from(u64_at(overlay, 24)).expect("small");
    let end = HEADER_BYTES + compressed_len;
    let meta = zstd::bulk::decompress(&overlay[HEADER_BYTES..end], meta_len).expect("meta");
    Parts {
        header: overlay[..HEADER_BYTES].to_vec(),
        meta,
        rest: overlay[end..].to_vec(),
    }
}

/// The header's own check over its first 64 bytes.
fn seal_header(header: &mut [u8]) {
    let check = *blake3::hash(&header[..64]).as_bytes();
    header[64..72].copy_from_slice(&check[..8]);
}

/// `parts` as an overlay whose header describes `meta` truthfully (lengths, hash, check):
/// only what the metadata says is damaged.
fn join(parts: &Parts, meta: &[u8]) -> Vec<u8> {
    let compressed = zstd::bulk::compress(meta, 1).expect("compress");
    let mut header = parts.header.clone();
    header[16..24].copy_from_slice(&(compressed.len() as u64).to_le_bytes());
    header[24..32].copy_from_slice(&(meta.len() as u64).to_le_bytes());
    header[32..64].copy_from_slice(blake3::hash(&compressed).as_bytes());
    seal_header(&mut header);
    let mut out = header;
    out.extend_from_slice(&compressed);
    out.extend_from_slice(&parts.rest);
    out
}

/// Offsets of the metadata's counts and lengths (docs/overlay-format.md): disk size,
/// layout and device-state lengths, property count, segment count and every segment
/// entry's fields, record count.
fn meta_fields(meta: &[u8]) -> Vec<usize> {
    let mut fields = vec![32];
    let mut at = 41;
    if meta[40] == 1 {
        fields.push(at);
        at += 8 + usize::try_from(u64_at(meta, at)).expect("small");
        fields.push(at);
        at += 8 + usize::try_from(u64_at(meta, at)).expect("small");
    }
    fields.push(at);
    let properties = u64_at(meta, at);
    at += 8;
    for _ in 0..properties * 2 {
        at += 8 + usize::try_from(u64_at(meta, at)).expect("small");
    }
    at += 16; // unchanged memory and disk
    fields.push(at);
    let segments = usize::try_from(u64_at(meta, at)).expect("small");
    at += 8;
    for _ in 0..segments {
        // offset u64, compressed u32, uncompressed u32, first record u64, count u32
        fields.extend([at, at + 8, at + 12, at + 16, at + 24]);
        at += 60;
    }
    fields.push(at);
    fields
}

/// Reads every segment of an opened overlay and decompresses it.
fn drain<R: std::io::Read>(mut reader: OverlayReader<R>) {
    while let Ok(Some(segment)) = reader.next_segment() {
        let Some(entry) = reader.meta().segments.get(segment.index).cloned() else {
            panic!("segment {} has no entry", segment.index);
        };
        let _ = reader.meta().records_of(&entry).len();
        let _ = decompress_segment(&entry, &segment);
    }
    let _ = reader.finish();
}

/// Every way the daemon and the CLI read an overlay: open and iterate, open for the base,
/// and decode when it still fits the base.
fn exercise(overlay: &[u8], base: &Base, scratch: &Path) {
    match OverlayReader::open(overlay) {
        Ok(reader) => {
            OPENED.fetch_add(1, Ordering::Relaxed);
            drain(reader);
        }
        // Read from memory: every failure is the overlay's fault (a 4xx for the daemon).
        Err(e) => assert!(e.is_invalid_input(), "{e:?}"),
    }
    let Ok(reader) = OverlayReader::open_for_base(overlay, &base.shape()) else {
        return;
    };
    FITTED.fetch_add(1, Ordering::Relaxed);
    if check_fits(reader.meta(), base).is_err() {
        return;
    }
    DECODED.fetch_add(1, Ordering::Relaxed);
    let (disk, memory) = (scratch.join("disk.raw"), scratch.join("memory.save"));
    let outputs = DecodeOutputs {
        disk: &disk,
        disk_format: DiskOutputFormat::Raw,
        memory: &memory,
        domain_xml: None,
        durable: false,
        threads: 1,
    };
    let _ = decode(reader, base, &outputs, &NoProgress);
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&memory);
}

/// A base and two of its overlays (with memory, disk-only), made by the engine.
fn fixture(dir: &Path) -> (Base, Vec<Vec<u8>>) {
    let work = generate(dir, &WorkloadSpec::small(11)).expect("workload");
    let base_dir = dir.join("base");
    std::fs::create_dir(&base_dir).expect("base dir");
    let paths = BasePaths::in_dir(&base_dir);
    std::fs::copy(&work.base_disk, &paths.disk).expect("base disk");
    create_base(&paths, work.base_save.as_deref()).expect("base");
    let base = Base::open(&paths).expect("open base");
    let disk = DiskSource::raw(&work.custom_disk).expect("custom disk");
    let options = EncodeOptions {
        threads: 1,
        properties: vec![("guest-ports".into(), "8080".into())],
        ..EncodeOptions::default()
    };
    let mut overlays = Vec::new();
    for (name, memory) in [("full", work.custom_save.as_deref()), ("disk", None)] {
        let out = dir.join(format!("{name}.overlay"));
        let input = EncodeInput {
            memory,
            disk: &disk,
        };
        encode(&base, &input, &out, &options, &NoProgress).expect("encode");
        overlays.push(std::fs::read(&out).expect("overlay"));
    }
    (base, overlays)
}

#[test]
fn damaged_overlays_give_errors_never_panics_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, overlays) = fixture(dir.path());
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch");
    for overlay in &overlays {
        let reader = OverlayReader::open_for_base(BufReader::new(&overlay[..]), &base.shape())
            .expect("the undamaged overlay opens");
        assert!(!reader.meta().records.is_empty());
    }
    let parts: Vec<Parts> = overlays.iter().map(|o| split(o)).collect();
    let fields: Vec<Vec<usize>> = parts.iter().map(|p| meta_fields(&p.meta)).collect();
    // Header offsets of pad (u32, but a u64 write spills into the next field), metadata
    // lengths: written with the header check recomputed, so the reader trusts them.
    let header_fields = [12, 16, 24];

    reset_peak_rss();
    let started = std::time::Instant::now();
    fn env<T: std::str::FromStr>(key: &str) -> Option<T> {
        std::env::var(key).ok().and_then(|v| v.parse().ok())
    }
    let cases: u32 = env("CLOUDLET_FUZZ_CASES").unwrap_or(CASES);
    let seed: u8 = env("CLOUDLET_FUZZ_SEED").unwrap_or(42);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = || TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]);
    let case = (
        0..overlays.len(),
        proptest::collection::vec(mutation(), 1..4),
    );

    // 1. The file's bytes: mostly stopped by the header check and the hashes.
    TestRunner::new_with_rng(config.clone(), rng())
        .run(&case, |(which, mutations)| {
            let mut bytes = overlays[which].clone();
            for m in &mutations {
                apply(&mut bytes, m, &header_fields);
            }
            exercise(&bytes, &base, &scratch);
            Ok(())
        })
        .expect("file mutations");

    // 2. Header fields with a valid header check: lengths that lie.
    TestRunner::new_with_rng(config.clone(), rng())
        .run(
            &(0..overlays.len(), huge(), 0..header_fields.len()),
            |(which, v, f)| {
                let mut bytes = overlays[which].clone();
                put_u64(&mut bytes, header_fields[f], v);
                seal_header(&mut bytes[..HEADER_BYTES]);
                exercise(&bytes, &base, &scratch);
                Ok(())
            },
        )
        .expect("header mutations");

    // 3. The metadata, re-sealed with valid hashes: the parser's own checks.
    TestRunner::new_with_rng(config, rng())
        .run(&case, |(which, mutations)| {
            let mut meta = parts[which].meta.clone();
            for m in &mutations {
                apply(&mut meta, m, &fields[which]);
            }
            exercise(&join(&parts[which], &meta), &base, &scratch);
            Ok(())
        })
        .expect("metadata mutations");

    let peak = status_kib("VmHWM:") * 1024;
    let (opened, fitted, decoded) = (
        OPENED.load(Ordering::Relaxed),
        FITTED.load(Ordering::Relaxed),
        DECODED.load(Ordering::Relaxed),
    );
    eprintln!(
        "{} cases in {:.1} s: {opened} opened, {fitted} opened for the base, {decoded} decoded; \
         peak RSS {} MiB",
        3 * cases,
        started.elapsed().as_secs_f64(),
        peak >> 20
    );
    // Damage that keeps the metadata parseable must reach the decoder, or the test only
    // exercises the hash checks.
    assert!(
        decoded as u64 > u64::from(cases) / 20,
        "only {decoded} cases reached the decoder"
    );
    assert!(
        peak < RSS_CEILING_BYTES,
        "peak RSS {} MiB over the {} MiB ceiling",
        peak >> 20,
        RSS_CEILING_BYTES >> 20
    );
}
