//! Tests of the qcow2 reader and writer, checked against QEMU's own tools (`qemu-img`,
//! `qemu-io`), which must be installed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use proptest::prelude::*;

use super::writer::Layout;
use super::*;
use crate::chunk::{Chunk, CHUNK_SIZE_BYTES, CHUNK_SIZE_U64};

const MIB: u64 = 1 << 20;

/// Small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn chunk(&mut self) -> Chunk {
        let mut chunk = [0u8; CHUNK_SIZE_BYTES];
        self.fill(&mut chunk);
        chunk
    }
}

/// A command for QEMU tool `name`, failing the test clearly if the tool is missing.
fn tool(name: &str) -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        for tool in ["qemu-img", "qemu-io"] {
            let works = Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success());
            assert!(
                works,
                "`{tool}` is required by the qcow2 tests but could not be run; \
                 install QEMU's tools (Debian: apt-get install qemu-utils)"
            );
        }
    });
    Command::new(name)
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs `command`, asserts it succeeded and returns its stdout.
fn run_ok(command: &mut Command) -> String {
    let out = run(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check` must report no errors and no leaks (exit status 0).
fn assert_qemu_check_clean(image: &Path) {
    let stdout = run_ok(tool("qemu-img").args(["check", "-f", "qcow2"]).arg(image));
    assert!(
        stdout.contains("No errors were found on the image"),
        "qemu-img check: {stdout}"
    );
    assert!(!stdout.contains("leaked"), "qemu-img check: {stdout}");
}

/// `qemu-img compare` must find the qcow2 image identical to the raw image.
fn assert_qemu_identical(image: &Path, raw: &Path) {
    let stdout = run_ok(
        tool("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(image)
            .arg(raw),
    );
    assert!(
        stdout.contains("Images are identical"),
        "qemu-img compare: {stdout}"
    );
}

/// Value of `"key": value` in one object of `qemu-img map --output=json`.
fn json_field<'a>(object: &'a str, key: &str) -> &'a str {
    let pattern = format!("\"{key}\":");
    let start = object
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {object}"))
        + pattern.len();
    object[start..].split(',').next().unwrap().trim()
}

/// The depth-0 entries of `qemu-img map`, as merged extents.
fn qemu_top_layer_extents(image: &Path) -> Vec<Extent> {
    let stdout = run_ok(
        tool("qemu-img")
            .args(["map", "-f", "qcow2", "--output=json"])
            .arg(image),
    );
    let mut extents = Vec::new();
    for object in stdout.split('{').skip(1) {
        let object = object.split('}').next().unwrap();
        let number = |key| json_field(object, key).parse::<u64>().unwrap();
        let flag = |key| json_field(object, key) == "true";
        if number("depth") != 0 {
            continue;
        }
        let kind = if flag("data") {
            ExtentKind::Data
        } else if flag("zero") {
            ExtentKind::Zero
        } else {
            continue;
        };
        push_extent(
            &mut extents,
            Extent {
                offset: number("start"),
                length: number("length"),
                kind,
            },
        );
    }
    extents
}

/// Writes a random raw base image of `size` bytes.
fn random_raw(path: &Path, size: u64, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = vec![0u8; usize::try_from(size).unwrap()];
    rng.fill(&mut bytes);
    fs::write(path, &bytes).unwrap();
    bytes
}

/// Writes `chunks` (index → data) to a new image at `path` in the order given, checking
/// `read_chunk` along the way, and finishes it.
fn write_image(
    path: &Path,
    virtual_size: u64,
    base: &Path,
    order: &[(u64, Chunk)],
) -> BTreeMap<u64, Chunk> {
    let writer = Qcow2Writer::create(path, virtual_size, base.to_str().unwrap(), "raw").unwrap();
    write_chunks(writer, virtual_size, order)
}

/// Writes `order` with `writer`, checking `read_chunk` along the way, and finishes it.
fn write_chunks(
    mut writer: Qcow2Writer,
    virtual_size: u64,
    order: &[(u64, Chunk)],
) -> BTreeMap<u64, Chunk> {
    let mut written = BTreeMap::new();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    for (step, (index, data)) in order.iter().enumerate() {
        writer.write_chunk(*index, data).unwrap();
        written.insert(*index, *data);
        // Check a few earlier chunks, and an unwritten one, as the decoder would.
        if step % 7 == 0 {
            for (&earlier, expected) in written.iter().take(3).chain(written.iter().rev().take(2)) {
                assert!(writer.read_chunk(earlier, &mut buf).unwrap());
                assert_eq!(&buf, expected, "read_chunk({earlier}) before finish");
            }
            let chunk_count = virtual_size.div_ceil(CHUNK_SIZE_U64);
            if let Some(unwritten) = (0..chunk_count).find(|i| !written.contains_key(i)) {
                assert!(!writer.read_chunk(unwritten, &mut buf).unwrap());
            }
        }
    }
    assert_eq!(writer.chunks_written(), written.len() as u64);
    for (&index, expected) in &written {
        assert!(writer.read_chunk(index, &mut buf).unwrap());
        assert_eq!(&buf, expected);
    }
    writer.finish().unwrap();
    written
}

/// The raw image the qcow2 image should equal: `base` with `written` applied.
fn expected_raw(path: &Path, base: &[u8], written: &BTreeMap<u64, Chunk>) {
    let mut bytes = base.to_vec();
    for (&index, data) in written {
        let start = usize::try_from(index * CHUNK_SIZE_U64).unwrap();
        let end = (start + CHUNK_SIZE_BYTES).min(bytes.len());
        bytes[start..end].copy_from_slice(&data[..end - start]);
    }
    fs::write(path, bytes).unwrap();
}

/// The extents a writer image must report: one Data range per written chunk, merged,
/// clipped to the virtual size.
fn extents_of_chunks(written: &BTreeMap<u64, Chunk>, virtual_size: u64) -> Vec<Extent> {
    let mut extents = Vec::new();
    for &index in written.keys() {
        let offset = index * CHUNK_SIZE_U64;
        push_extent(
            &mut extents,
            Extent {
                offset,
                length: CHUNK_SIZE_U64.min(virtual_size - offset),
                kind: ExtentKind::Data,
            },
        );
    }
    extents
}

/// Checks a finished writer image with QEMU and with [`Qcow2Image`].
fn verify_writer_image(
    dir: &Path,
    image: &Path,
    base_path: &Path,
    base: &[u8],
    written: &BTreeMap<u64, Chunk>,
) {
    assert_qemu_check_clean(image);
    let expected = dir.join("expected.raw");
    expected_raw(&expected, base, written);
    assert_qemu_identical(image, &expected);

    let reader = Qcow2Image::open(image).unwrap();
    let virtual_size = base.len() as u64;
    assert_eq!(reader.virtual_size(), virtual_size);
    assert_eq!(reader.cluster_size(), 4096);
    assert_eq!(reader.version(), 3);
    assert_eq!(reader.backing_file(), base_path.to_str());
    assert_eq!(reader.backing_format(), Some("raw"));
    let extents = reader.top_layer_extents().unwrap();
    assert_eq!(extents, extents_of_chunks(written, virtual_size));
    assert_eq!(extents, qemu_top_layer_extents(image));
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    for (&index, data) in written {
        let offset = index * CHUNK_SIZE_U64;
        let len = usize::try_from(CHUNK_SIZE_U64.min(virtual_size - offset)).unwrap();
        reader.read_at(offset, &mut buf[..len]).unwrap();
        assert_eq!(&buf[..len], &data[..len], "chunk {index}");
    }
    drop(reader);

    // QEMU can keep using the image: new writes allocate clusters through our refcounts.
    if virtual_size >= MIB {
        run_ok(
            tool("qemu-io")
                .args([
                    "-f",
                    "qcow2",
                    "-c",
                    "write -P 0x77 512k 64k",
                    "-c",
                    "write -z 0 8k",
                ])
                .arg(image),
        );
        assert_qemu_check_clean(image);
        let mut bytes = fs::read(&expected).unwrap();
        bytes[512 * 1024..576 * 1024].fill(0x77);
        bytes[..8192].fill(0);
        fs::write(&expected, bytes).unwrap();
        assert_qemu_identical(image, &expected);
    }
}

#[test]
fn writer_output_passes_qemu_check_and_compare() {
    // 16 MiB + 3 chunks: 9 L2 regions, the last partial, and more than 2048 clusters so
    // that two refcount blocks are needed. The second size is not a multiple of 4096.
    for (seed, virtual_size) in [(1u64, 16 * MIB + 3 * 4096), (2, 9 * MIB + 3 * 4096 + 1024)] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let base_path = dir.path().join("base.raw");
        let base = random_raw(&base_path, virtual_size, &mut rng);
        // Overwrites included: the later data must win.
        let order = random_order(&mut rng, virtual_size.div_ceil(CHUNK_SIZE_U64));

        let image = dir.path().join("out.qcow2");
        let written = write_image(&image, virtual_size, &base_path, &order);
        assert_eq!(
            fs::metadata(&image).unwrap().len() % 4096,
            0,
            "file length is whole clusters"
        );
        verify_writer_image(dir.path(), &image, &base_path, &base, &written);
    }
}

/// A random set of chunk indexes (with the edges of L2 regions and of the disk) in a
/// random order, then a few overwrites.
fn random_order(rng: &mut Rng, chunk_count: u64) -> Vec<(u64, Chunk)> {
    let mut indexes: Vec<u64> = (0..chunk_count).filter(|_| rng.below(8) < 5).collect();
    indexes.extend([0, chunk_count - 1, 511, 512, 1024]);
    indexes.sort_unstable();
    indexes.dedup();
    for i in (1..indexes.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap();
        indexes.swap(i, j);
    }
    let mut order: Vec<(u64, Chunk)> = indexes.iter().map(|&i| (i, rng.chunk())).collect();
    for k in 0..5 {
        let index = indexes[k * 3];
        order.push((index, rng.chunk()));
    }
    order
}

#[test]
fn planned_writer_is_a_valid_image_before_and_after_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(21);
    let virtual_size = 16 * MIB + 3 * 4096;
    let base_path = dir.path().join("base.raw");
    let base = random_raw(&base_path, virtual_size, &mut rng);
    let order = random_order(&mut rng, virtual_size.div_ceil(CHUNK_SIZE_U64));
    let image = dir.path().join("planned.qcow2");
    let writer = Qcow2Writer::create_planned(
        &image,
        virtual_size,
        base_path.to_str().unwrap(),
        "raw",
        order.iter().map(|(i, _)| *i),
    )
    .unwrap();
    // What QEMU sees when it opens the disk of a streamed restore: a clean image whose
    // planned chunks are still zero (holes), everything else the base's.
    assert_qemu_check_clean(&image);
    let zeros = [0u8; CHUNK_SIZE_BYTES];
    let unwritten: BTreeMap<u64, Chunk> = order.iter().map(|(i, _)| (*i, zeros)).collect();
    let expected = dir.path().join("before.raw");
    expected_raw(&expected, &base, &unwritten);
    assert_qemu_identical(&image, &expected);
    let length = fs::metadata(&image).unwrap().len();

    let written = write_chunks(writer, virtual_size, &order);
    assert_eq!(
        fs::metadata(&image).unwrap().len(),
        length,
        "chunks fill planned clusters, the file does not grow"
    );
    verify_writer_image(dir.path(), &image, &base_path, &base, &written);
}

#[test]
fn planned_writer_refuses_unplanned_and_missing_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = dir.path().join("base.raw");
    fs::write(&base_path, vec![0u8; 4 * 1024 * 1024]).unwrap();
    let backing = base_path.to_str().unwrap();
    let image = dir.path().join("a.qcow2");
    let mut writer =
        Qcow2Writer::create_planned(&image, 4 * MIB, backing, "raw", [3, 9, 700]).unwrap();
    let data = [7u8; CHUNK_SIZE_BYTES];
    let refused = writer.write_chunk(4, &data).unwrap_err().to_string();
    assert!(refused.contains("not one of the chunks"), "{refused}");
    writer.write_chunk(3, &data).unwrap();
    writer.write_chunk(700, &data).unwrap();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    assert!(
        !writer.read_chunk(9, &mut buf).unwrap(),
        "planned, not written"
    );
    assert!(writer.read_chunk(700, &mut buf).unwrap());
    assert_eq!(writer.chunks_written(), 2);
    let missing = writer.finish().unwrap_err().to_string();
    assert!(
        missing.contains("planned chunk 9 was never written"),
        "{missing}"
    );

    let out_of_range =
        Qcow2Writer::create_planned(&dir.path().join("b.qcow2"), 4 * MIB, backing, "raw", [1024]);
    assert!(out_of_range.is_err());
}

#[test]
fn empty_writer_gives_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    let virtual_size = 3 * MIB;
    let base_path = dir.path().join("base.raw");
    let base = random_raw(&base_path, virtual_size, &mut rng);
    let image = dir.path().join("empty.qcow2");
    let writer =
        Qcow2Writer::create(&image, virtual_size, base_path.to_str().unwrap(), "raw").unwrap();
    assert_eq!(writer.chunks_written(), 0);
    writer.finish().unwrap();
    assert!(Qcow2Image::open(&image)
        .unwrap()
        .top_layer_extents()
        .unwrap()
        .is_empty());
    verify_writer_image(dir.path(), &image, &base_path, &base, &BTreeMap::new());
}

#[test]
fn zero_sized_writer_image_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = dir.path().join("base.raw");
    fs::write(&base_path, b"").unwrap();
    let image = dir.path().join("zero.qcow2");
    let mut writer = Qcow2Writer::create(&image, 0, base_path.to_str().unwrap(), "raw").unwrap();
    assert!(writer.write_chunk(0, &[0; CHUNK_SIZE_BYTES]).is_err());
    writer.finish().unwrap();
    assert_qemu_check_clean(&image);
    assert_qemu_identical(&image, &base_path);
}

#[test]
fn large_sparse_image_uses_several_l1_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(4);
    // 515 L1 entries: two L1 clusters.
    let virtual_size = 1024 * MIB + 3 * 2 * MIB + 5 * 4096;
    let chunk_count = virtual_size.div_ceil(CHUNK_SIZE_U64);
    let base_path = dir.path().join("base.raw");
    let base = fs::File::create(&base_path).unwrap();
    base.set_len(virtual_size).unwrap();
    let mut some_base = vec![0u8; 256 * 1024];
    rng.fill(&mut some_base);
    base.write_all_at(&some_base, 512 * MIB).unwrap();

    let mut indexes: Vec<u64> = (0..200).map(|_| rng.below(chunk_count)).collect();
    indexes.extend([
        0,
        1,
        chunk_count - 1,
        chunk_count - 2,
        512 * 512,
        512 * 512 - 1,
    ]);
    indexes.extend((512 * MIB / 4096)..(512 * MIB / 4096 + 10));
    indexes.sort_unstable();
    indexes.dedup();
    indexes.reverse();
    let order: Vec<(u64, Chunk)> = indexes.iter().map(|&i| (i, rng.chunk())).collect();
    let image = dir.path().join("big.qcow2");
    let written = write_image(&image, virtual_size, &base_path, &order);

    assert_qemu_check_clean(&image);
    let expected = dir.path().join("expected.raw");
    fs::copy(&base_path, &expected).unwrap();
    let expected_file = fs::OpenOptions::new().write(true).open(&expected).unwrap();
    for (&index, data) in &written {
        expected_file
            .write_all_at(data, index * CHUNK_SIZE_U64)
            .unwrap();
    }
    drop(expected_file);
    assert_qemu_identical(&image, &expected);

    let reader = Qcow2Image::open(&image).unwrap();
    let extents = reader.top_layer_extents().unwrap();
    assert_eq!(extents, extents_of_chunks(&written, virtual_size));
    assert_eq!(extents, qemu_top_layer_extents(&image));
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    for (&index, data) in &written {
        reader.read_at(index * CHUNK_SIZE_U64, &mut buf).unwrap();
        assert_eq!(&buf, data);
    }
}

#[test]
fn refcount_block_boundary() {
    // With 4 L2 tables, 1 L1 cluster and 1 refcount table cluster, 2040 data clusters make
    // exactly 2048 clusters with one refcount block; one more needs a second block.
    let dir = tempfile::tempdir().unwrap();
    let virtual_size = 8 * MIB;
    let base_path = dir.path().join("base.raw");
    fs::File::create(&base_path)
        .unwrap()
        .set_len(virtual_size)
        .unwrap();
    let mut rng = Rng::new(5);
    for count in 2038..2043u64 {
        let image = dir.path().join(format!("boundary-{count}.qcow2"));
        let order: Vec<(u64, Chunk)> = (0..count).map(|i| (i, rng.chunk())).collect();
        let written = write_image(&image, virtual_size, &base_path, &order);
        assert_qemu_check_clean(&image);
        let expected = dir.path().join("expected.raw");
        expected_raw(
            &expected,
            &vec![0; usize::try_from(virtual_size).unwrap()],
            &written,
        );
        assert_qemu_identical(&image, &expected);
    }
}

#[test]
fn layout_covers_every_cluster_minimally() {
    for first_free in [
        1u64,
        2,
        100,
        2040,
        2041,
        2042,
        2043,
        2044,
        4090,
        1 << 20,
        3 << 20,
    ] {
        for l2_count in [0u64, 1, 3] {
            for l1_size in [0u64, 1, 512, 513, 4096] {
                let l = Layout::compute(first_free, l2_count, l1_size);
                assert_eq!(l.l2_start, first_free);
                assert_eq!(l.l1_start, first_free + l2_count);
                assert_eq!(l.l1_clusters, l1_size.div_ceil(512));
                assert_eq!(l.rt_start, l.l1_start + l.l1_clusters);
                assert_eq!(l.rb_start, l.rt_start + l.rt_clusters);
                assert_eq!(l.total_clusters, l.rb_start + l.rb_count);
                // Covers everything, including itself, and no block is superfluous.
                assert!(l.rb_count * 2048 >= l.total_clusters, "{l:?}");
                assert!((l.rb_count - 1) * 2048 < l.total_clusters, "{l:?}");
                assert!(l.rt_clusters * 512 >= l.rb_count, "{l:?}");
                assert!(l.rt_clusters == 1 || (l.rt_clusters - 1) * 512 < l.rb_count);
            }
        }
    }
}

#[test]
fn writer_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.qcow2");
    let bad = |size: u64, backing: &str, format: &str| {
        let err = Qcow2Writer::create(&path, size, backing, format).unwrap_err();
        assert!(matches!(err, Qcow2Error::InvalidArgument { .. }), "{err:?}");
        assert!(err.is_invalid_input());
        assert!(!path.exists());
    };
    bad(MIB + 100, "base.raw", "raw");
    bad(16 << 40, "base.raw", "raw");
    bad(MIB, "", "raw");
    bad(MIB, &"x".repeat(1024), "raw");
    bad(MIB, "base.raw", "");
    bad(MIB, "base.raw", "a-very-long-format-name");
    bad(MIB, "base\0.raw", "raw");

    let mut writer = Qcow2Writer::create(&path, MIB, &"b".repeat(1023), "raw").unwrap();
    let chunk = [7u8; CHUNK_SIZE_BYTES];
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    let err = writer.write_chunk(256, &chunk).unwrap_err();
    assert!(matches!(err, Qcow2Error::OutOfRange { .. }), "{err:?}");
    assert!(writer.read_chunk(u64::MAX, &mut buf).is_err());
    assert!(!writer.read_chunk(255, &mut buf).unwrap());
    writer.write_chunk(255, &chunk).unwrap();
    assert!(writer.read_chunk(255, &mut buf).unwrap());
    assert_eq!(buf, chunk);
    writer.finish().unwrap();
    let reader = Qcow2Image::open(&path).unwrap();
    assert_eq!(reader.backing_file(), Some("b".repeat(1023).as_str()));

    // The path must not exist.
    let err = Qcow2Writer::create(&path, MIB, "base.raw", "raw").unwrap_err();
    assert!(matches!(err, Qcow2Error::Io(ref e) if e.kind() == std::io::ErrorKind::AlreadyExists));
    assert!(!err.is_invalid_input());
}

/// Creates an image with qemu-img over a random 8 MiB base, modifies it with qemu-io, and
/// checks the reader against `qemu-img map` and `qemu-img convert`.
fn check_reader_against_qemu(create_options: &[&str], seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let virtual_size = 8 * MIB;
    let base_path = dir.path().join("base.raw");
    random_raw(&base_path, virtual_size, &mut rng);
    let image = dir.path().join("x.qcow2");
    run_ok(
        tool("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base_path)
            .args(create_options)
            .arg(&image),
    );
    run_ok(
        tool("qemu-io")
            .args(["-f", "qcow2"])
            .args(["-c", "write -P 0xab 64k 8k"])
            .args(["-c", "write -z 1M 64k"])
            .args(["-c", "write -P 0xcd 2M 192k"])
            .args(["-c", "discard 2112k 64k"])
            .args(["-c", "write -P 0x11 3M 4k"])
            .args(["-c", "write -P 0x22 3076k 4k"])
            .args(["-c", "write -z 6M 2M"])
            .args(["-c", "write -P 0x33 8188k 4k"])
            .arg(&image),
    );
    let full = dir.path().join("full.raw");
    run_ok(
        tool("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&image)
            .arg(&full),
    );
    let guest = fs::read(&full).unwrap();

    let reader = Qcow2Image::open(&image).unwrap();
    assert_eq!(reader.virtual_size(), virtual_size);
    assert_eq!(reader.backing_file(), base_path.to_str());
    assert_eq!(reader.backing_format(), Some("raw"));
    let extents = reader.top_layer_extents().unwrap();
    assert_eq!(
        extents,
        qemu_top_layer_extents(&image),
        "{create_options:?}"
    );
    assert!(!extents.is_empty());

    for extent in &extents {
        let start = usize::try_from(extent.offset).unwrap();
        let end = usize::try_from(extent.end()).unwrap();
        let mut buf = vec![0u8; end - start];
        reader.read_at(extent.offset, &mut buf).unwrap();
        assert_eq!(buf, guest[start..end], "extent {extent:?}");
        if extent.kind == ExtentKind::Zero {
            assert!(buf.iter().all(|&b| b == 0));
        }
        // Chunk-sized and unaligned reads within the extent.
        let mut chunk = [0u8; CHUNK_SIZE_BYTES];
        let mut offset = extent.offset;
        while offset + CHUNK_SIZE_U64 <= extent.end() {
            reader.read_at(offset, &mut chunk).unwrap();
            let at = usize::try_from(offset).unwrap();
            assert_eq!(chunk[..], guest[at..at + CHUNK_SIZE_BYTES]);
            offset += CHUNK_SIZE_U64;
        }
        if extent.length > 1000 {
            let mut odd = vec![0u8; usize::try_from(extent.length - 777).unwrap()];
            reader.read_at(extent.offset + 333, &mut odd).unwrap();
            assert_eq!(odd[..], guest[start + 333..end - 444]);
        }
    }
    // Written bytes are where qemu-io put them.
    let mut buf = [0u8; 4096];
    reader.read_at(3 * MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x11));
    reader.read_at(virtual_size - 4096, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x33));

    // An unallocated range (here 5 MiB, never written) and a range past the end fail.
    let err = reader.read_at(5 * MIB, &mut buf).unwrap_err();
    assert!(
        matches!(err, Qcow2Error::Unallocated { offset } if offset == 5 * MIB),
        "{err:?}"
    );
    let err = reader.read_at(virtual_size - 100, &mut buf).unwrap_err();
    assert!(matches!(err, Qcow2Error::OutOfRange { .. }), "{err:?}");
}

#[test]
fn reader_matches_qemu_default_clusters() {
    check_reader_against_qemu(&[], 10);
}

#[test]
fn reader_matches_qemu_4k_clusters() {
    check_reader_against_qemu(&["-o", "cluster_size=4096"], 11);
}

#[test]
fn reader_matches_qemu_2m_clusters() {
    check_reader_against_qemu(&["-o", "cluster_size=2M"], 12);
}

#[test]
fn reader_matches_qemu_512b_clusters() {
    check_reader_against_qemu(&["-o", "cluster_size=512"], 13);
}

#[test]
fn reader_matches_qemu_version_2() {
    check_reader_against_qemu(&["-o", "compat=0.10"], 14);
}

#[test]
fn reader_handles_image_without_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("plain.qcow2");
    run_ok(
        tool("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("5M"),
    );
    let reader = Qcow2Image::open(&image).unwrap();
    assert_eq!(reader.backing_file(), None);
    assert_eq!(reader.backing_format(), None);
    assert_eq!(reader.virtual_size(), 5 * MIB);
    assert!(reader.top_layer_extents().unwrap().is_empty());
}

// ---- corrupt and unsupported input ----

/// A small qemu-made image with data, zero and unallocated clusters (64 KiB clusters), and
/// the offsets of its first L1 entry, first L2 table and first data cluster.
struct Sample {
    bytes: Vec<u8>,
    l1_offset: usize,
    l2_offset: usize,
    data_l2_entry: usize,
    data_offset: usize,
}

fn qemu_sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        fs::File::create(&base).unwrap().set_len(4 * MIB).unwrap();
        let image = dir.path().join("s.qcow2");
        run_ok(
            tool("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&base)
                .arg(&image),
        );
        run_ok(
            tool("qemu-io")
                .args(["-f", "qcow2"])
                .args(["-c", "write -P 0x5a 128k 64k"])
                .args(["-c", "write -z 1M 64k"])
                .arg(&image),
        );
        let bytes = fs::read(&image).unwrap();
        let be64 = |at: usize| {
            let value = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            usize::try_from(value & OFFSET_MASK).unwrap()
        };
        let l1_offset = be64(40);
        let l2_offset = be64(l1_offset);
        let data_l2_entry = l2_offset + 2 * 8;
        let data_offset = be64(data_l2_entry);
        assert_ne!(data_offset, 0);
        Sample {
            bytes,
            l1_offset,
            l2_offset,
            data_l2_entry,
            data_offset,
        }
    })
}

/// Opens `bytes` as an image and exercises everything: extents, then reading every extent.
fn exercise(bytes: &[u8]) -> Result<Vec<Extent>, Qcow2Error> {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), bytes).unwrap();
    let image = Qcow2Image::open(file.path())?;
    let extents = image.top_layer_extents()?;
    for extent in &extents {
        let mut buf = vec![0u8; usize::try_from(extent.length.min(4 * MIB)).unwrap()];
        image.read_at(extent.offset, &mut buf)?;
    }
    Ok(extents)
}

fn patched(at: usize, value: &[u8]) -> Vec<u8> {
    let mut bytes = qemu_sample().bytes.clone();
    bytes[at..at + value.len()].copy_from_slice(value);
    bytes
}

fn assert_corrupt(result: Result<Vec<Extent>, Qcow2Error>) {
    match result {
        Err(err @ Qcow2Error::Corrupt { .. }) => assert!(err.is_invalid_input()),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

fn assert_unsupported(result: Result<Vec<Extent>, Qcow2Error>, expected: &str) {
    match result {
        Err(Qcow2Error::Unsupported { feature }) => assert_eq!(feature, expected),
        other => panic!("expected unsupported {expected}, got {other:?}"),
    }
}

#[test]
fn sample_is_read_correctly() {
    let extents = exercise(&qemu_sample().bytes).unwrap();
    assert_eq!(
        extents,
        vec![
            Extent {
                offset: 128 * 1024,
                length: 64 * 1024,
                kind: ExtentKind::Data
            },
            Extent {
                offset: MIB,
                length: 64 * 1024,
                kind: ExtentKind::Zero
            },
        ]
    );
}

#[test]
fn truncated_files_are_rejected() {
    let sample = qemu_sample();
    for len in [0, 1, 3] {
        assert!(matches!(
            exercise(&sample.bytes[..len]),
            Err(Qcow2Error::NotQcow2)
        ));
    }
    for len in [4, 7, 8, 20, 71, 72, 100, 103] {
        assert_corrupt(exercise(&sample.bytes[..len]));
    }
    // Up to the end of the L1 table and the L2 tables: open fails.
    for len in [
        104,
        200,
        4096,
        sample.l1_offset,
        sample.l1_offset + 4,
        sample.l2_offset,
        sample.l2_offset + 100,
    ] {
        assert_corrupt(exercise(&sample.bytes[..len]));
    }
    // Data cluster starting past the end of the file.
    assert_corrupt(exercise(&sample.bytes[..sample.data_offset]));
    // A data cluster cut short reads as zeros past the end, as in QEMU.
    if sample.data_offset > sample.l2_offset {
        let cut = &sample.bytes[..sample.data_offset + 10];
        assert!(exercise(cut).is_ok());
    }
}

#[test]
fn garbage_is_rejected() {
    let mut rng = Rng::new(99);
    for round in 0..32u64 {
        let mut bytes = vec![0u8; 64 * 1024 + usize::try_from(round * 97).unwrap()];
        rng.fill(&mut bytes);
        if bytes.starts_with(&MAGIC) {
            bytes[0] = 0;
        }
        assert!(matches!(exercise(&bytes), Err(Qcow2Error::NotQcow2)));
        bytes[..4].copy_from_slice(&MAGIC);
        assert!(exercise(&bytes).is_err());
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(exercise(&bytes).is_err());
        bytes[20..24].copy_from_slice(&16u32.to_be_bytes());
        assert!(exercise(&bytes).is_err());
    }
}

#[test]
fn bad_header_fields_are_rejected() {
    let sample = qemu_sample();
    let len = sample.bytes.len() as u64;
    for version in [0u32, 1, 4, 0xffff_ffff] {
        assert!(matches!(
            exercise(&patched(4, &version.to_be_bytes())),
            Err(Qcow2Error::UnsupportedVersion(v)) if v == version
        ));
    }
    assert_corrupt(exercise(&patched(20, &8u32.to_be_bytes())));
    assert_unsupported(
        exercise(&patched(20, &22u32.to_be_bytes())),
        "cluster size above 2 MiB",
    );
    assert_unsupported(exercise(&patched(32, &1u32.to_be_bytes())), "encryption");
    assert_unsupported(exercise(&patched(32, &2u32.to_be_bytes())), "encryption");
    assert_unsupported(
        exercise(&patched(72, &(1u64 << 2).to_be_bytes())),
        "external data file",
    );
    assert_unsupported(
        exercise(&patched(72, &(1u64 << 4).to_be_bytes())),
        "extended l2 entries",
    );
    assert_unsupported(
        exercise(&patched(72, &(1u64 << 20).to_be_bytes())),
        "unknown incompatible feature bits",
    );
    assert_corrupt(exercise(&patched(72, &(1u64 << 1).to_be_bytes())));
    // Dirty and compression-type bits are harmless for reading.
    assert!(exercise(&patched(72, &(1u64 | 1 << 3).to_be_bytes())).is_ok());
    // header_length
    for header_length in [0u32, 100, 105, 1 << 20] {
        assert_corrupt(exercise(&patched(100, &header_length.to_be_bytes())));
    }
    assert_corrupt(exercise(&patched(96, &7u32.to_be_bytes())));
    // l1_size too small for the virtual size, or absurd.
    assert_corrupt(exercise(&patched(36, &0u32.to_be_bytes())));
    assert!(exercise(&patched(36, &u32::MAX.to_be_bytes())).is_err());
    // Virtual size far beyond what the L1 table covers.
    assert_corrupt(exercise(&patched(24, &u64::MAX.to_be_bytes())));
    // L1 table offset beyond EOF, unaligned, or on the header.
    assert_corrupt(exercise(&patched(40, &(len + 65536).to_be_bytes())));
    assert_corrupt(exercise(&patched(40, &u64::MAX.to_be_bytes())));
    assert_corrupt(exercise(&patched(
        40,
        &(sample.l1_offset as u64 + 8).to_be_bytes(),
    )));
    assert_corrupt(exercise(&patched(40, &0u64.to_be_bytes())));
    // Backing file name too long or outside the header cluster.
    assert_corrupt(exercise(&patched(16, &5000u32.to_be_bytes())));
    assert_corrupt(exercise(&patched(8, &65530u64.to_be_bytes())));
    assert_corrupt(exercise(&patched(8, &u64::MAX.to_be_bytes())));
    // A header extension claiming to be longer than the header area.
    let mut bytes = patched(100, &104u32.to_be_bytes());
    bytes[104..112].copy_from_slice(&[0xe2, 0x79, 0x2a, 0xca, 0x7f, 0xff, 0xff, 0xff]);
    assert_corrupt(exercise(&bytes));
}

#[test]
fn bad_table_entries_are_rejected() {
    let sample = qemu_sample();
    let len = sample.bytes.len() as u64;
    let entry = |offset: u64| (offset | OFLAG_COPIED).to_be_bytes();
    // L1 entry: L2 table beyond EOF, straddling EOF, unaligned.
    assert_corrupt(exercise(&patched(sample.l1_offset, &entry(len + 65536))));
    assert_corrupt(exercise(&patched(sample.l1_offset, &entry(len))));
    assert_corrupt(exercise(&patched(
        sample.l1_offset,
        &entry(len.next_multiple_of(65536) * 4),
    )));
    assert_corrupt(exercise(&patched(
        sample.l1_offset,
        &entry(sample.l2_offset as u64 + 512),
    )));
    // L2 entry: data beyond EOF, unaligned, compressed.
    assert_corrupt(exercise(&patched(
        sample.data_l2_entry,
        &entry(len.next_multiple_of(65536)),
    )));
    assert_corrupt(exercise(&patched(sample.data_l2_entry, &entry(1 << 50))));
    assert_corrupt(exercise(&patched(
        sample.data_l2_entry,
        &entry(sample.data_offset as u64 + 512),
    )));
    assert_unsupported(
        exercise(&patched(
            sample.data_l2_entry,
            &(sample.data_offset as u64 | OFLAG_COMPRESSED).to_be_bytes(),
        )),
        "compressed clusters",
    );
    // A zero flag in a version 2 image.
    let mut v2 = patched(sample.data_l2_entry, &entry(sample.data_offset as u64 | 1));
    v2[4..8].copy_from_slice(&2u32.to_be_bytes());
    assert_corrupt(exercise(&v2));
    // The same flag in version 3 is a (preallocated) zero cluster.
    let zero = exercise(&patched(
        sample.data_l2_entry,
        &entry(sample.data_offset as u64 | 1),
    ))
    .unwrap();
    assert_eq!(zero[0].kind, ExtentKind::Zero);
}

/// The writer's output for a tiny image, used as the seed of the fuzz test.
fn writer_sample() -> &'static Vec<u8> {
    static SAMPLE: OnceLock<Vec<u8>> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.qcow2");
        let mut writer = Qcow2Writer::create(&path, 4 * MIB + 4096, "base.raw", "raw").unwrap();
        for index in [0u64, 3, 600, 1024] {
            writer
                .write_chunk(index, &[index.to_le_bytes()[0]; CHUNK_SIZE_BYTES])
                .unwrap();
        }
        writer.finish().unwrap();
        fs::read(&path).unwrap()
    })
}

#[test]
fn writer_sample_reads_back() {
    let extents = exercise(writer_sample()).unwrap();
    assert_eq!(extents.len(), 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random byte changes and truncation never make the reader panic.
    #[test]
    fn mutated_images_never_panic(
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = writer_sample().clone();
        for (at, value) in changes {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = exercise(&bytes);
    }

    /// Header fields set to arbitrary values never make the reader panic.
    #[test]
    fn random_header_fields_never_panic(
        field in 0usize..13,
        value in any::<u64>(),
    ) {
        let mut bytes = writer_sample().clone();
        let offsets = [8, 16, 20, 24, 32, 36, 40, 48, 56, 72, 96, 100, 104];
        let at = offsets[field];
        bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
        let _ = exercise(&bytes);
    }
}

/// Measures the writer's throughput; run with
/// `cargo test --release -p cloudlet-engine qcow2::tests::write_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn write_speed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speed.qcow2");
    let chunks: u64 = 128 * 1024; // 512 MiB
    let virtual_size = 4 * chunks * CHUNK_SIZE_U64;
    let mut rng = Rng::new(7);
    let data = rng.chunk();
    let mut writer = Qcow2Writer::create(&path, virtual_size, "base.raw", "raw").unwrap();
    let start = std::time::Instant::now();
    for i in 0..chunks {
        // Scattered order: every fourth chunk, in a shuffled-ish sequence.
        let index = (i.wrapping_mul(2_654_435_761) % chunks) * 4;
        writer.write_chunk(index, &data).unwrap();
    }
    let written = start.elapsed();
    writer.finish().unwrap();
    let total = start.elapsed();
    let mib = (chunks * CHUNK_SIZE_U64) as f64 / MIB as f64;
    println!(
        "wrote {mib:.0} MiB in {:.2?} ({:.0} MiB/s); with finish {:.2?} ({:.0} MiB/s)",
        written,
        mib / written.as_secs_f64(),
        total,
        mib / total.as_secs_f64()
    );
}
