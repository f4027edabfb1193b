//! Encode → decode round trips over synthetic VMs, every dedup rule, and damaged overlays.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::base::{create_base, Base, BasePaths};
use crate::chunk::hash_chunk;
use crate::chunk::{ImageKind, CHUNK_SIZE_BYTES};
use crate::decode::{decode, DecodeError, DecodeOutputs};
use crate::disk::{DiskOutputFormat, DiskSource};
use crate::encode::{encode, EncodeInput, EncodeOptions, EncodeSummary};
use crate::format::{Encoding, FormatError, OverlayMeta, OverlayReader, OverlayWriter, Record};
use crate::progress::NoProgress;
use crate::savefile::SaveFileReader;
use crate::testkit::{generate, Workload, WorkloadSpec};

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    work: Workload,
    base: Base,
}

fn setup(spec: &WorkloadSpec) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let work = generate(&root, spec).unwrap();
    let base_dir = root.join("base");
    std::fs::create_dir(&base_dir).unwrap();
    let paths = BasePaths::in_dir(&base_dir);
    std::fs::copy(&work.base_disk, &paths.disk).unwrap();
    create_base(&paths, work.base_save.as_deref()).unwrap();
    let base = Base::open(&paths).unwrap();
    Setup {
        _dir: dir,
        dir: root,
        work,
        base,
    }
}

fn encode_to(s: &Setup, name: &str, disk: &DiskSource, memory: bool) -> (PathBuf, EncodeSummary) {
    let out = s.dir.join(name);
    let input = EncodeInput {
        memory: if memory {
            s.work.custom_save.as_deref()
        } else {
            None
        },
        disk,
    };
    let summary = encode(
        &s.base,
        &input,
        &out,
        &EncodeOptions::default(),
        &NoProgress,
    )
    .unwrap();
    (out, summary)
}

fn decode_file(
    s: &Setup,
    overlay: &Path,
    format: DiskOutputFormat,
    tag: &str,
) -> Result<(PathBuf, PathBuf), DecodeError> {
    let disk = s.dir.join(format!("{tag}.disk"));
    let memory = s.dir.join(format!("{tag}.save"));
    let reader = OverlayReader::open(BufReader::new(File::open(overlay).unwrap()))?;
    let outputs = DecodeOutputs {
        disk: &disk,
        disk_format: format,
        memory: &memory,
        domain_xml: None,
        durable: false,
        threads: 2,
    };
    decode(reader, &s.base, &outputs, &NoProgress)?;
    Ok((disk, memory))
}

/// Every page of a save file, by index, and its device state.
fn pages_of(path: &Path) -> (Vec<(u64, Vec<u8>)>, Vec<u8>) {
    let mut r = SaveFileReader::open(BufReader::new(File::open(path).unwrap())).unwrap();
    let mut pages = Vec::new();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    while let Some(i) = r.next_page(&mut buf).unwrap() {
        pages.push((i, buf.to_vec()));
    }
    pages.sort();
    (pages, r.finish().unwrap())
}

fn assert_same_disk(s: &Setup, disk: &Path, format: DiskOutputFormat) {
    let expected = std::fs::read(&s.work.custom_disk).unwrap();
    let actual = match format {
        DiskOutputFormat::Raw => std::fs::read(disk).unwrap(),
        DiskOutputFormat::Qcow2 => {
            let src = DiskSource::qcow2(disk, &s.work.base_disk).unwrap();
            let mut all = Vec::new();
            let mut buf = [0u8; CHUNK_SIZE_BYTES];
            for i in 0..crate::chunk::chunk_count(src.size()) {
                src.read_chunk(i, &mut buf).unwrap();
                all.extend_from_slice(&buf);
            }
            all.truncate(expected.len());
            all
        }
    };
    assert!(
        actual == expected,
        "synthesized disk differs from the customized disk"
    );
}

#[test]
fn round_trip_is_byte_exact_and_every_rule_fires() {
    let s = setup(&WorkloadSpec::small(1));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, summary) = encode_to(&s, "o.overlay", &disk, true);
    let mem = summary.meta.counts(ImageKind::Memory);
    let dsk = summary.meta.counts(ImageKind::Disk);
    assert!(mem.unchanged > 0 && dsk.unchanged > 0, "{mem:?} {dsk:?}");
    assert!(mem.zero > 0 && dsk.zero > 0, "zero rule: {mem:?} {dsk:?}");
    assert!(
        mem.base_ref > 0 && dsk.base_ref > 0,
        "base-ref rule: {mem:?} {dsk:?}"
    );
    assert!(
        mem.delta > 0 && dsk.delta > 0,
        "delta rule: {mem:?} {dsk:?}"
    );
    assert!(mem.raw > 0, "raw rule: {mem:?}");
    // The files written to disk sit in the page cache, encoded first: disk copies refer to them.
    assert!(dsk.self_ref > 0, "self-ref rule (disk → memory): {dsk:?}");
    assert_eq!(
        std::fs::metadata(&overlay).unwrap().len(),
        summary.file_size
    );

    for format in [DiskOutputFormat::Qcow2, DiskOutputFormat::Raw] {
        let (disk_out, memory_out) =
            decode_file(&s, &overlay, format, &format!("{format:?}")).unwrap();
        assert_same_disk(&s, &disk_out, format);
        let custom = s.work.custom_save.as_deref().unwrap();
        assert!(
            pages_of(&memory_out) == pages_of(custom),
            "synthesized memory differs"
        );
    }
}

/// A memory page is compared with the base's page at the same place (when the page cache
/// holds it) before it is hashed: equal bytes are unchanged, one flipped bit is not.
#[test]
fn a_memory_page_compared_with_its_base_page_is_unchanged_only_if_equal() {
    use crate::diff::{classify, Class};
    use crate::hashlist::Location;
    let s = setup(&WorkloadSpec::small(7));
    let zero = crate::chunk::zero_chunk_hash();
    let index = (0..s.base.hashes().memory_pages())
        .find(|&i| {
            s.base
                .hash_at(Location {
                    kind: ImageKind::Memory,
                    index: i,
                })
                .is_some_and(|h| *h != zero)
        })
        .expect("a base page that is not zero");
    let loc = Location {
        kind: ImageKind::Memory,
        index,
    };
    let mut page = [0u8; CHUNK_SIZE_BYTES];
    s.base.read_chunk(loc, &mut page).unwrap(); // now in the page cache
    assert!(s.base.memory_page_is_cached_copy(index, &page));
    assert_eq!(
        classify(&s.base, ImageKind::Memory, index, &page),
        (Class::Unchanged, hash_chunk(&page))
    );
    page[CHUNK_SIZE_BYTES / 2] ^= 1;
    assert!(!s.base.memory_page_is_cached_copy(index, &page));
    assert_ne!(
        classify(&s.base, ImageKind::Memory, index, &page).0,
        Class::Unchanged
    );
    // Past the base's memory: no comparison, no panic.
    let past = s.base.hashes().memory_pages();
    assert!(!s.base.memory_page_is_cached_copy(past, &page));
}

#[test]
fn full_compare_and_written_ranges_give_the_same_overlay_content() {
    let s = setup(&WorkloadSpec::small(2));
    let full = DiskSource::raw(&s.work.custom_disk).unwrap();
    let ranged = DiskSource::raw_ranges(&s.work.custom_disk, &s.work.written_ranges).unwrap();
    let (_, a) = encode_to(&s, "a.overlay", &full, true);
    let (b_path, b) = encode_to(&s, "b.overlay", &ranged, true);
    assert_eq!(a.meta.records, b.meta.records);
    assert!(b.meta.counts(ImageKind::Disk).unchanged < a.meta.counts(ImageKind::Disk).unchanged);
    let (disk_out, _) = decode_file(&s, &b_path, DiskOutputFormat::Raw, "b").unwrap();
    assert_same_disk(&s, &disk_out, DiskOutputFormat::Raw);
}

#[test]
fn disk_only_overlay_round_trips() {
    let s = setup(&WorkloadSpec::small(3));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, summary) = encode_to(&s, "d.overlay", &disk, false);
    assert!(summary.meta.memory.is_none());
    assert_eq!(summary.meta.counts(ImageKind::Memory).modified(), 0);
    let (disk_out, memory_out) = decode_file(&s, &overlay, DiskOutputFormat::Qcow2, "d").unwrap();
    assert_same_disk(&s, &disk_out, DiskOutputFormat::Qcow2);
    assert!(!memory_out.exists());
}

#[test]
fn overlay_for_another_base_is_refused_and_leaves_nothing() {
    let s = setup(&WorkloadSpec::small(4));
    let other = setup(&WorkloadSpec::small(5));
    let disk = DiskSource::raw(&other.work.custom_disk).unwrap();
    let input = EncodeInput {
        memory: other.work.custom_save.as_deref(),
        disk: &disk,
    };
    let overlay = s.dir.join("other.overlay");
    encode(
        &other.base,
        &input,
        &overlay,
        &EncodeOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let before: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let err = decode_file(&s, &overlay, DiskOutputFormat::Qcow2, "x").unwrap_err();
    assert!(matches!(err, DecodeError::BaseMismatch { .. }), "{err}");
    assert!(err.is_invalid_input());
    let after: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "decode left files behind");
}

#[test]
fn a_copy_of_a_partial_last_disk_chunk_is_checked_as_read_back() {
    // A crafted overlay: the last chunk of a disk whose size is not a multiple of 4 KiB,
    // with bytes past the disk's end (its hash covers them), then a copy of that chunk.
    // The disk keeps only the bytes inside it, so the copy would not match its hash.
    let mut spec = WorkloadSpec::small(11);
    spec.disk_bytes += 512;
    let s = setup(&spec);
    let last = crate::chunk::chunk_count(s.base.disk_size()) - 1;
    let chunk = [7u8; CHUNK_SIZE_BYTES];
    let hash = hash_chunk(&chunk);
    let records = vec![
        Record {
            kind: ImageKind::Disk,
            index: last,
            encoding: Encoding::Raw,
            hash,
        },
        Record {
            kind: ImageKind::Disk,
            index: 0,
            encoding: Encoding::SelfRef(0),
            hash,
        },
    ];
    let compressed = zstd::bulk::compress(&chunk, 3).unwrap();
    let segment_hash = *blake3::hash(&compressed).as_bytes();
    let path = s.dir.join("crafted.overlay");
    let mut w = OverlayWriter::create(&path).unwrap();
    w.push_segment(0, 2, 4096, compressed, segment_hash)
        .unwrap();
    w.finish(OverlayMeta {
        base_id: *s.base.id(),
        disk_size: s.base.disk_size(),
        memory: None,
        properties: Vec::new(),
        unchanged_memory: 0,
        unchanged_disk: 0,
        segments: Vec::new(),
        records,
    })
    .unwrap();
    let err = decode_file(&s, &path, DiskOutputFormat::Raw, "raw").unwrap_err();
    assert!(
        matches!(err, DecodeError::ChunkHashMismatch { record: 1, .. }),
        "{err}"
    );
    // A qcow2 keeps the whole cluster, so there the copy is the bytes that were checked.
    decode_file(&s, &path, DiskOutputFormat::Qcow2, "qcow2").unwrap();
}

#[test]
fn a_base_that_cannot_be_read_fails_the_decode_and_leaves_nothing() {
    let s = setup(&WorkloadSpec::small(12));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, _) = encode_to(&s, "ok.overlay", &disk, true);
    // The base's page image loses its content under the open base: the thread writing the
    // base's unchanged pages (or a rebuild reading the base) fails mid-decode.
    let pages = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.base.paths().memory_pages)
        .unwrap();
    pages.set_len(0).unwrap();
    let err = decode_file(&s, &overlay, DiskOutputFormat::Qcow2, "gone").unwrap_err();
    assert!(matches!(err, DecodeError::Base(_)), "{err}");
    assert!(
        !err.is_invalid_input(),
        "a host failure, not bad input: {err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("gone"))
        .collect();
    assert!(leftovers.is_empty(), "failed decode left {leftovers:?}");
}

#[test]
fn every_flipped_bit_and_every_truncation_is_refused() {
    let s = setup(&WorkloadSpec::small(6));
    let disk = DiskSource::raw_ranges(&s.work.custom_disk, &s.work.written_ranges).unwrap();
    let (overlay, _) = encode_to(&s, "c.overlay", &disk, true);
    let good = std::fs::read(&overlay).unwrap();
    let bad = s.dir.join("bad.overlay");
    let len = good.len();
    // Every byte of the header and the start of the metadata, then a spread over the rest.
    let offsets: Vec<usize> = (0..200.min(len))
        .chain((200..len).step_by((len / 150).max(1)))
        .chain([len - 1])
        .collect();
    for &at in &offsets {
        let mut damaged = good.clone();
        damaged[at] ^= 1 << (at % 8);
        std::fs::write(&bad, &damaged).unwrap();
        let result = decode_file(&s, &bad, DiskOutputFormat::Qcow2, "flip");
        assert!(
            result.is_err(),
            "bit flip at {at} of {len} was not detected"
        );
        assert!(
            result.unwrap_err().is_invalid_input(),
            "flip at {at} not reported as bad input"
        );
    }
    for &cut in &offsets {
        std::fs::write(&bad, &good[..cut]).unwrap();
        let result = decode_file(&s, &bad, DiskOutputFormat::Qcow2, "cut");
        assert!(
            result.is_err(),
            "truncation at {cut} of {len} was not detected"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&bad, &longer).unwrap();
    assert!(matches!(
        decode_file(&s, &bad, DiskOutputFormat::Qcow2, "long"),
        Err(DecodeError::Format(FormatError::TrailingData))
    ));
    let leftovers: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("flip")
                || n.starts_with("cut")
                || n.starts_with(".flip")
                || n.starts_with(".cut")
        })
        .collect();
    assert!(leftovers.is_empty(), "failed decodes left {leftovers:?}");
}

mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        #[test]
        fn random_workloads_round_trip(seed in any::<u64>(), fill in 0u64..100, odd_tail in 0u64..4096) {
            let mut spec = WorkloadSpec::small(seed);
            spec.base_fill_percent = fill;
            spec.disk_bytes += odd_tail;
            let s = setup(&spec);
            let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
            let (overlay, _) = encode_to(&s, "p.overlay", &disk, true);
            let (disk_out, memory_out) = decode_file(&s, &overlay, DiskOutputFormat::Raw, "p").unwrap();
            assert_same_disk(&s, &disk_out, DiskOutputFormat::Raw);
            prop_assert!(pages_of(&memory_out) == pages_of(s.work.custom_save.as_deref().unwrap()));
        }
    }
}

/// Decodes `overlay` with the save file streamed through a socket pair (a bounded
/// buffer, like the FIFO a restore reads), read by a thread; returns the decode's result
/// and every byte the reader got. Like a restore, the reader checks the disk when the
/// stream is opened (it must be a valid image by then) and copies it to `{tag}.at-end`
/// when the stream ends (it must be complete by then).
fn decode_stream(
    s: &Setup,
    overlay: &[u8],
    tag: &str,
) -> (Result<crate::decode::DecodeSummary, DecodeError>, Vec<u8>) {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let (writer, mut reader) = UnixStream::pair().unwrap();
    let disk = s.dir.join(format!("{tag}.disk"));
    let memory = s.dir.join(format!("{tag}.save"));
    let (disk_at_end, at_end) = (disk.clone(), s.dir.join(format!("{tag}.at-end")));
    let drain = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        if disk_at_end.exists() {
            std::fs::copy(&disk_at_end, &at_end).unwrap();
        }
        got
    });
    let outputs = DecodeOutputs {
        disk: &disk,
        disk_format: DiskOutputFormat::Qcow2,
        memory: &memory,
        domain_xml: None,
        durable: false,
        threads: 2,
    };
    let (disk_at_open, declined) = (disk.clone(), tag == "fallback");
    let open: crate::decode::OpenStream = Box::new(move || {
        crate::qcow2::Qcow2Image::open(&disk_at_open)
            .map_err(|e| std::io::Error::other(format!("disk not valid when opened: {e}")))?;
        Ok((!declined).then(|| Box::new(writer) as Box<dyn std::io::Write + Send>))
    });
    let result = OverlayReader::open(std::io::Cursor::new(overlay.to_vec()))
        .map_err(DecodeError::from)
        .and_then(|r| crate::decode::decode_streamed(r, &s.base, &outputs, open, &NoProgress));
    assert_eq!(
        memory.exists(),
        tag == "fallback" && result.is_ok(),
        "a save file only when the opener declined the stream"
    );
    (result, drain.join().unwrap())
}

/// Pages by index, and the device state.
type Memory = (Vec<(u64, Vec<u8>)>, Vec<u8>);

/// The page indices of a save file in stream order, and its pages and device state.
fn stream_order(bytes: &[u8]) -> (Vec<u64>, Memory) {
    let mut r = SaveFileReader::open(std::io::Cursor::new(bytes)).unwrap();
    let (mut order, mut pages) = (Vec::new(), Vec::new());
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    while let Some(i) = r.next_page(&mut buf).unwrap() {
        order.push(i);
        pages.push((i, buf.to_vec()));
    }
    pages.sort();
    (order, (pages, r.finish().unwrap()))
}

#[test]
fn a_streamed_save_file_has_the_base_pages_first_and_the_same_memory() {
    let s = setup(&WorkloadSpec::small(11));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, summary) = encode_to(&s, "s.overlay", &disk, true);
    let dsk = summary.meta.counts(ImageKind::Disk);
    assert!(dsk.self_ref > 0, "disk records copy memory pages: {dsk:?}");
    let bytes = std::fs::read(&overlay).unwrap();
    let (result, streamed) = decode_stream(&s, &bytes, "stream");
    result.unwrap();
    assert_same_disk(&s, &s.dir.join("stream.disk"), DiskOutputFormat::Qcow2);
    // The disk was complete when the stream ended (the restore re-reads it then).
    assert_same_disk(&s, &s.dir.join("stream.at-end"), DiskOutputFormat::Qcow2);
    std::fs::remove_file(s.dir.join("stream.at-end")).unwrap();
    let (order, memory) = stream_order(&streamed);
    let custom = s.work.custom_save.as_deref().unwrap();
    assert!(
        memory == pages_of(custom),
        "streamed memory differs from the customized VM's"
    );
    // Every page the overlay leaves to the base comes before the first of its own.
    let overlay_pages: std::collections::HashSet<u64> = summary
        .meta
        .records
        .iter()
        .filter(|r| r.kind == ImageKind::Memory)
        .map(|r| r.index)
        .collect();
    let first_own = order
        .iter()
        .position(|i| overlay_pages.contains(i))
        .unwrap();
    assert!(first_own > 0, "no base page came first");
    assert!(
        order[first_own..].iter().all(|i| overlay_pages.contains(i)),
        "a base page came after the overlay's"
    );
    // Nothing is left next to the outputs but the disk.
    let names: Vec<String> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kept") || n.starts_with("stream"))
        .collect();
    assert_eq!(names, vec!["stream.disk".to_string()], "{names:?}");
}

#[test]
fn a_streamed_decode_of_a_damaged_overlay_ends_the_stream_short() {
    let s = setup(&WorkloadSpec::small(12));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, _) = encode_to(&s, "d.overlay", &disk, true);
    let mut bytes = std::fs::read(&overlay).unwrap();
    let at = bytes.len() - bytes.len() / 5; // in a late segment
    bytes[at] ^= 0x40;
    let (result, streamed) = decode_stream(&s, &bytes, "bad");
    let err = result.unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    // The reader got a save file that does not parse to its end.
    assert!(
        !parses_to_its_end(&streamed),
        "a failed decode streamed a complete save file"
    );
    assert!(!s.dir.join("bad.disk").exists());
    let _ = std::fs::remove_file(s.dir.join("bad.at-end"));
    let left: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kept") || n.contains("bad"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_declined_stream_falls_back_to_the_save_file() {
    let s = setup(&WorkloadSpec::small(14));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, _) = encode_to(&s, "f.overlay", &disk, true);
    let (result, streamed) = decode_stream(&s, &std::fs::read(&overlay).unwrap(), "fallback");
    result.unwrap();
    assert!(streamed.is_empty(), "{} bytes streamed", streamed.len());
    assert_same_disk(&s, &s.dir.join("fallback.disk"), DiskOutputFormat::Qcow2);
    let custom = s.work.custom_save.as_deref().unwrap();
    assert!(pages_of(&s.dir.join("fallback.save")) == pages_of(custom));
}

#[test]
fn a_streamed_disk_only_overlay_writes_nothing_to_the_stream() {
    let s = setup(&WorkloadSpec::small(13));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, _) = encode_to(&s, "o.overlay", &disk, false);
    let (result, streamed) = decode_stream(&s, &std::fs::read(&overlay).unwrap(), "only");
    result.unwrap();
    assert!(streamed.is_empty(), "{} bytes streamed", streamed.len());
    assert_same_disk(&s, &s.dir.join("only.disk"), DiskOutputFormat::Qcow2);
}

#[test]
fn an_overlay_encoded_from_a_stream_equals_one_encoded_from_the_file() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let s = setup(&WorkloadSpec::small(15));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (from_file, _) = encode_to(&s, "file.overlay", &disk, true);
    // The save file's bytes through a bounded buffer, as a save writes them into a FIFO.
    let save = std::fs::read(s.work.custom_save.as_deref().unwrap()).unwrap();
    let (mut writer, mut reader) = UnixStream::pair().unwrap();
    let feeder = std::thread::spawn(move || {
        for piece in save.chunks(1000) {
            writer.write_all(piece).unwrap();
        }
    });
    let from_stream = s.dir.join("stream.overlay");
    let options = EncodeOptions::default();
    let custom_disk = s.work.custom_disk.clone();
    crate::encode::encode_streamed(
        &s.base,
        &mut reader,
        "save stream",
        || DiskSource::raw(&custom_disk),
        &from_stream,
        &options,
        &NoProgress,
    )
    .unwrap();
    feeder.join().unwrap();
    assert!(
        std::fs::read(&from_file).unwrap() == std::fs::read(&from_stream).unwrap(),
        "the overlays differ"
    );

    // A stream that ends early fails the encode, naming the stream; no overlay is left.
    let save = std::fs::read(s.work.custom_save.as_deref().unwrap()).unwrap();
    let cut = s.dir.join("cut.overlay");
    let mut short = std::io::Cursor::new(save[..save.len() / 2].to_vec());
    let err = crate::encode::encode_streamed(
        &s.base,
        &mut short,
        "save stream",
        || DiskSource::raw(&s.work.custom_disk),
        &cut,
        &options,
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("save stream"), "{err}");
    assert!(!cut.exists());
}

#[test]
fn the_base_written_back_has_its_snapshot_pages_and_the_new_xml() {
    let s = setup(&WorkloadSpec::small(17));
    let out = s.dir.join("resume.save");
    let xml = "<domain type='qemu'><name>resumed</name></domain>";
    crate::base::write_base_save_file(&s.base, &out, Some(xml)).unwrap();
    let original = s.work.base_save.as_deref().unwrap();
    let (written, written_ds) = pages_of(&out); // sorted by page
    let (expected, expected_ds) = pages_of(original);
    assert_eq!(written.len(), expected.len());
    assert!(written == expected, "the pages differ");
    assert_eq!(written_ds, expected_ds);
    let reader = SaveFileReader::open(BufReader::new(File::open(&out).unwrap())).unwrap();
    assert_eq!(reader.layout().domain_xml().unwrap(), xml);
    // The streamed variant writes the same bytes.
    let mut streamed = Vec::new();
    crate::base::stream_base_save_file(&s.base, &mut streamed, Some(xml)).unwrap();
    assert!(
        streamed == std::fs::read(&out).unwrap(),
        "stream and file differ"
    );
}

/// What a reader of a save file holds at its end when later records overwrite earlier
/// ones (QEMU's loader): the non-zero pages by index, and the device state.
fn last_wins(bytes: &[u8]) -> Memory {
    let r = SaveFileReader::open(std::io::Cursor::new(bytes)).unwrap();
    let mut r = r.allowing_repeats();
    let mut pages = std::collections::BTreeMap::new();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    while let Some(i) = r.next_page(&mut buf).unwrap() {
        pages.insert(i, buf.to_vec());
    }
    let pages = pages.into_iter().filter(|(_, p)| p.iter().any(|&b| b != 0));
    (pages.collect(), r.finish().unwrap())
}

/// Whether a streamed save file parses to its end (device state included), as a restore
/// reading it would (a page sent again is fine).
fn parses_to_its_end(bytes: &[u8]) -> bool {
    let r = SaveFileReader::open(std::io::Cursor::new(bytes)).unwrap();
    let mut r = r.allowing_repeats();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    loop {
        match r.next_page(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => return r.finish().is_ok(),
            Err(_) => return false,
        }
    }
}

/// The page indexes of a save file's records, repeats included, in stream order.
fn record_order(bytes: &[u8]) -> Vec<u64> {
    let r = SaveFileReader::open(std::io::Cursor::new(bytes)).unwrap();
    let mut r = r.allowing_repeats();
    let mut order = Vec::new();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    while let Some(i) = r.next_page(&mut buf).unwrap() {
        order.push(i);
    }
    order
}

/// The non-zero pages and device state of a save file.
fn non_zero_pages_of(path: &Path) -> Memory {
    let (pages, device) = pages_of(path);
    let pages = pages.into_iter().filter(|(_, p)| p.iter().any(|&b| b != 0));
    (pages.collect(), device)
}

/// A primed stream (the base's pages, written before any overlay) on a socket pair read
/// by a thread, and the disk a restore would have opened: an empty qcow2 on the base.
fn primed(
    s: &Setup,
    tag: &str,
) -> (
    PathBuf,
    crate::decode::PrimedStream,
    std::thread::JoinHandle<Vec<u8>>,
) {
    use std::io::Read;
    let disk = s.dir.join(format!("{tag}.disk"));
    let backing = std::fs::canonicalize(&s.base.paths().disk).unwrap();
    let size = std::fs::metadata(&s.work.base_disk).unwrap().len();
    crate::qcow2::Qcow2Writer::create_planned(&disk, size, backing.to_str().unwrap(), "raw", [])
        .unwrap()
        .finish()
        .unwrap();
    let (writer, mut reader) = std::os::unix::net::UnixStream::pair().unwrap();
    let drain = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        got
    });
    let stream = crate::decode::prime_stream(&s.base, Box::new(writer), None).unwrap();
    (disk, stream, drain)
}

#[test]
fn a_primed_stream_finished_by_an_overlay_holds_the_customized_vm() {
    let s = setup(&WorkloadSpec::small(13));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, summary) = encode_to(&s, "p.overlay", &disk, true);
    let (disk_out, stream, drain) = primed(&s, "primed");
    let primed_bytes = stream.bytes_written();
    let base_pages = s.base.memory_layout().unwrap().page_count();
    assert!(primed_bytes > 4096, "no base page was primed");
    let reader = OverlayReader::open(File::open(&overlay).unwrap()).unwrap();
    assert!(stream.fits(reader.meta()));
    let outputs = DecodeOutputs {
        disk: &disk_out,
        disk_format: DiskOutputFormat::Qcow2,
        memory: &s.dir.join("primed.save"),
        domain_xml: None,
        durable: false,
        threads: 2,
    };
    crate::decode::decode_primed(reader, &s.base, &outputs, stream, &NoProgress).unwrap();
    let streamed = drain.join().unwrap();
    assert!(streamed.len() as u64 > primed_bytes);
    assert!(
        !s.dir.join("primed.save").exists(),
        "a primed decode wrote a save file"
    );
    // The disk written over the opened one is the customized disk.
    assert_same_disk(&s, &disk_out, DiskOutputFormat::Qcow2);
    // Every base page first, then the overlay's records (zero records included) on top.
    let custom = s.work.custom_save.as_deref().unwrap();
    assert!(
        last_wins(&streamed) == non_zero_pages_of(custom),
        "the primed stream's memory differs from the customized VM's"
    );
    let order = record_order(&streamed);
    let overlay_pages: Vec<u64> = summary
        .meta
        .records
        .iter()
        .filter(|r| r.kind == ImageKind::Memory)
        .map(|r| r.index)
        .collect();
    assert!(!overlay_pages.is_empty() && base_pages > 0);
    assert!(
        order.ends_with(&overlay_pages),
        "the overlay's pages are not the stream's last records"
    );
    assert!(order.len() > overlay_pages.len(), "no base page came first");
}

#[test]
fn a_primed_stream_refuses_a_disk_only_overlay_without_touching_the_disk() {
    let s = setup(&WorkloadSpec::small(14));
    let disk = DiskSource::raw(&s.work.custom_disk).unwrap();
    let (overlay, _) = encode_to(&s, "q.overlay", &disk, false);
    let (disk_out, stream, drain) = primed(&s, "refused");
    let before = std::fs::read(&disk_out).unwrap();
    let reader = OverlayReader::open(File::open(&overlay).unwrap()).unwrap();
    assert!(!stream.fits(reader.meta()));
    let outputs = DecodeOutputs {
        disk: &disk_out,
        disk_format: DiskOutputFormat::Qcow2,
        memory: &s.dir.join("refused.save"),
        domain_xml: None,
        durable: false,
        threads: 2,
    };
    let err =
        crate::decode::decode_primed(reader, &s.base, &outputs, stream, &NoProgress).unwrap_err();
    assert!(matches!(err, DecodeError::Incompatible(_)), "{err}");
    // The stream ended with the base's pages only: a restore reading it fails.
    let streamed = drain.join().unwrap();
    assert!(
        !parses_to_its_end(&streamed),
        "a refused overlay completed the stream"
    );
    assert_eq!(
        std::fs::read(&disk_out).unwrap(),
        before,
        "the opened disk changed"
    );
}
