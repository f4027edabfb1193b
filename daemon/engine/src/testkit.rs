//! Synthetic VMs for tests and benchmarks: base and customized disks and memory snapshots
//! with the kinds of chunks real customizations produce (zero, duplicated, slightly
//! modified, random, compressible), generated deterministically from a seed and streamed
//! to files chunk by chunk so that large workloads need little memory.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::chunk::{Chunk, CHUNK_SIZE_BYTES, CHUNK_SIZE_U64};
use crate::savefile::{RamBlock, SaveFileLayout, SaveFileWriter};

/// A small, fast, deterministic random generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Incompressible chunk.
pub fn random_chunk(rng: &mut Rng) -> Box<Chunk> {
    let mut c = Box::new([0u8; CHUNK_SIZE_BYTES]);
    rng.fill(&mut c[..]);
    c
}

/// Compressible chunk (words from a small vocabulary, like text or code), unique per seed.
pub fn text_chunk(seed: u64) -> Box<Chunk> {
    const WORDS: [&[u8]; 12] = [
        b"kernel ",
        b"page ",
        b"cache ",
        b"inode ",
        b"0x7f3a ",
        b"return ",
        b"struct ",
        b"mov ",
        b"eax, ",
        b"libc.so ",
        b"\n",
        b"cloudlet ",
    ];
    let mut rng = Rng::new(seed);
    let mut c = Box::new([0u8; CHUNK_SIZE_BYTES]);
    let mut at = 0;
    // A unique tag first, so that no two seeds give the same chunk.
    let tag = format!("[{seed:016x}] ");
    c[..tag.len()].copy_from_slice(tag.as_bytes());
    at += tag.len();
    while at < CHUNK_SIZE_BYTES {
        let w = WORDS[usize::try_from(rng.below(WORDS.len() as u64)).unwrap_or(0)];
        let n = w.len().min(CHUNK_SIZE_BYTES - at);
        c[at..at + n].copy_from_slice(&w[..n]);
        at += n;
    }
    c
}

/// `chunk` with a few bytes changed (what a field update in a page looks like).
pub fn slightly_modified(chunk: &Chunk, rng: &mut Rng) -> Box<Chunk> {
    let mut c = Box::new(*chunk);
    for _ in 0..4 {
        let at = usize::try_from(rng.below(CHUNK_SIZE_BYTES as u64 - 8)).unwrap_or(0);
        rng.fill(&mut c[at..at + 8]);
    }
    c
}

/// A minimal but valid save-file layout with the given RAM blocks (name, bytes).
pub fn test_layout(blocks: &[(&str, u64)]) -> SaveFileLayout {
    let machine = b"pc-i440fx-7.2";
    let mut preamble = Vec::new();
    preamble.extend_from_slice(&0x5145_564d_u32.to_be_bytes());
    preamble.extend_from_slice(&3u32.to_be_bytes());
    preamble.push(0x07);
    preamble.extend_from_slice(&13u32.to_be_bytes()); // machine.len()
    preamble.extend_from_slice(machine);
    // A domain as libvirt saves one the daemon built (disk boot, no display), so that the
    // daemon's domain-definition rule accepts it and a synthesis gets as far as restoring.
    let mut xml_area = b"<domain type='qemu'><name>testkit</name>\
        <uuid>00000000-0000-4000-8000-000000000001</uuid>\
        <memory unit='KiB'>65536</memory><currentMemory unit='KiB'>65536</currentMemory>\
        <vcpu placement='static'>1</vcpu>\
        <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>\
        <clock offset='utc'/><on_poweroff>destroy</on_poweroff>\
        <on_reboot>destroy</on_reboot><on_crash>destroy</on_crash><devices>\
        <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
        <source file='/testkit/disk.raw'/><target dev='vda' bus='virtio'/>\
        <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></disk>\
        <interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/>\
        <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>\
        </interface><serial type='unix'>\
        <source mode='bind' path='/testkit/console.sock'/>\
        <target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>\
        <console type='unix'><source mode='bind' path='/testkit/console.sock'/>\
        <target type='serial' port='0'/></console><memballoon model='none'/>\
        </devices></domain>\0"
        .to_vec();
    xml_area.resize(4096, 0);
    SaveFileLayout {
        libvirt_version: 2,
        was_running: 1,
        xml_area,
        cookie_offset: 0,
        qemu_preamble: preamble,
        ram_section_id: 2,
        ram_instance_id: 0,
        ram_version_id: 4,
        blocks: blocks
            .iter()
            .map(|(n, l)| RamBlock {
                name: (*n).to_string(),
                length: *l,
            })
            .collect(),
    }
}

/// Writes a save file whose page `i` is `page(i)`, in a shuffled-by-stride order (QEMU
/// sends pages in its own order, not ascending).
pub fn write_save_file(
    path: &Path,
    layout: &SaveFileLayout,
    device_state: &[u8],
    mut page: impl FnMut(u64) -> Box<Chunk>,
) -> io::Result<()> {
    let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut w = SaveFileWriter::new(file, layout, None).map_err(io::Error::other)?;
    let n = layout.page_count();
    // Two passes (odd pages, then even ones) so order differs from index order.
    for i in (1..n).step_by(2).chain((0..n).step_by(2)) {
        w.write_page(i, &page(i)).map_err(io::Error::other)?;
    }
    let mut out = w.finish(device_state).map_err(io::Error::other)?;
    out.flush()
}

/// Shape of a generated workload.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Seed of everything random.
    pub seed: u64,
    /// Disk size in bytes (multiple of 4096 not required).
    pub disk_bytes: u64,
    /// Guest RAM (the `pc.ram` block) in bytes; 0: disk-only.
    pub ram_bytes: u64,
    /// Percent of base disk chunks / memory pages that hold data (the rest are zero).
    pub base_fill_percent: u64,
    /// Random (incompressible) bytes written to the disk, also left in the page cache.
    pub disk_random_bytes: u64,
    /// Compressible bytes written to the disk (e.g. a binary being copied), also cached.
    pub disk_text_bytes: u64,
    /// Base disk chunks slightly modified (metadata updates: deltas).
    pub disk_tweaked_chunks: u64,
    /// Base disk chunks overwritten with copies of other base chunks.
    pub disk_copied_chunks: u64,
    /// Base disk chunks discarded (zeroed).
    pub disk_trimmed_chunks: u64,
    /// Memory pages slightly modified.
    pub mem_tweaked_pages: u64,
    /// Memory pages that now hold copies of other base pages.
    pub mem_copied_pages: u64,
    /// Memory pages with new random content.
    pub mem_random_pages: u64,
    /// Memory pages freed (zeroed).
    pub mem_zeroed_pages: u64,
}

impl WorkloadSpec {
    /// The reference customization (a small application install: docs/benchmarks.md), scaled to a guest
    /// with `ram_bytes` of RAM and a `disk_bytes` disk: 4 MiB random file + 1.1 MB copied
    /// binary + a background process (~2,100 changed pages, ~500 of them copies of base
    /// pages).
    pub fn reference(disk_bytes: u64, ram_bytes: u64) -> Self {
        Self {
            seed: 42,
            disk_bytes,
            ram_bytes,
            base_fill_percent: 35,
            disk_random_bytes: 4 << 20,
            disk_text_bytes: 1_100_000,
            disk_tweaked_chunks: 60,
            disk_copied_chunks: 40,
            disk_trimmed_chunks: 16,
            mem_tweaked_pages: 400,
            mem_copied_pages: 496,
            mem_random_pages: 200,
            mem_zeroed_pages: 100,
        }
    }

    /// A small workload for unit tests.
    pub fn small(seed: u64) -> Self {
        Self {
            seed,
            disk_bytes: 2 << 20,
            ram_bytes: 1 << 20,
            base_fill_percent: 50,
            disk_random_bytes: 64 << 10,
            disk_text_bytes: 40 << 10,
            disk_tweaked_chunks: 10,
            disk_copied_chunks: 8,
            disk_trimmed_chunks: 4,
            mem_tweaked_pages: 12,
            mem_copied_pages: 9,
            mem_random_pages: 7,
            mem_zeroed_pages: 5,
        }
    }
}

/// Files of a generated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Base disk (raw).
    pub base_disk: PathBuf,
    /// Base memory snapshot (save file), if the spec has RAM.
    pub base_save: Option<PathBuf>,
    /// Customized disk (raw, same size).
    pub custom_disk: PathBuf,
    /// Customized memory snapshot.
    pub custom_save: Option<PathBuf>,
    /// Byte ranges of the disk that the customization wrote (what a qcow2 map reports).
    pub written_ranges: Vec<Range<u64>>,
    /// Bytes the customization changed (disk + memory), for throughput figures.
    pub modified_bytes: u64,
}

fn base_disk_chunk(seed: u64, fill: u64, i: u64) -> Option<Box<Chunk>> {
    let mut r = Rng::new(seed ^ (i.wrapping_mul(0x1000_0000_01B3)));
    (r.below(100) < fill).then(|| text_chunk(seed.wrapping_add(i << 1)))
}

fn base_memory_page(seed: u64, fill: u64, i: u64) -> Option<Box<Chunk>> {
    let mut r = Rng::new(!seed ^ i.wrapping_mul(0x0100_0000_01B3));
    (r.below(100) < fill).then(|| text_chunk(seed.wrapping_add((i << 1) | 1)))
}

/// Generates a workload into `dir`.
pub fn generate(dir: &Path, spec: &WorkloadSpec) -> io::Result<Workload> {
    use std::collections::HashMap;
    use std::os::unix::fs::FileExt;

    let fill = spec.base_fill_percent;
    let seed = spec.seed;
    let chunks = crate::chunk::chunk_count(spec.disk_bytes);
    let mut rng = Rng::new(seed ^ 0xC0FFEE);

    // Base disk, streamed.
    let base_disk = dir.join("base-disk.raw");
    {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&base_disk)?);
        for i in 0..chunks {
            let c =
                base_disk_chunk(seed, fill, i).unwrap_or_else(|| Box::new([0; CHUNK_SIZE_BYTES]));
            let len = usize::try_from((spec.disk_bytes - i * CHUNK_SIZE_U64).min(CHUNK_SIZE_U64))
                .unwrap_or(0);
            w.write_all(&c[..len])?;
        }
        w.flush()?;
    }

    // Customized disk: a copy with changes; the written file data also goes to the page cache.
    let custom_disk = dir.join("custom-disk.raw");
    std::fs::copy(&base_disk, &custom_disk)?;
    let disk = File::options().write(true).open(&custom_disk)?;
    let mut written: Vec<Range<u64>> = Vec::new();
    let mut cached: Vec<Box<Chunk>> = Vec::new();
    let write_chunk = |i: u64, c: &Chunk, written: &mut Vec<Range<u64>>| -> io::Result<()> {
        if i >= chunks {
            return Ok(());
        }
        let off = i * CHUNK_SIZE_U64;
        let len = usize::try_from((spec.disk_bytes - off).min(CHUNK_SIZE_U64)).unwrap_or(0);
        disk.write_all_at(&c[..len], off)?;
        written.push(off..off + len as u64);
        Ok(())
    };
    // Files go to a contiguous free area two thirds into the disk (wrapping on tiny disks).
    let mut next_free = chunks * 2 / 3;
    let file_chunks = |bytes: u64| bytes.div_ceil(CHUNK_SIZE_U64);
    for _ in 0..file_chunks(spec.disk_random_bytes) {
        let c = random_chunk(&mut rng);
        write_chunk(next_free % chunks.max(1), &c, &mut written)?;
        next_free += 1;
        cached.push(c);
    }
    for k in 0..file_chunks(spec.disk_text_bytes) {
        let c = text_chunk(seed ^ 0xB1A5 ^ (k << 20));
        write_chunk(next_free % chunks.max(1), &c, &mut written)?;
        next_free += 1;
        cached.push(c);
    }
    let data_chunks: Vec<u64> = (0..chunks)
        .filter(|&i| base_disk_chunk(seed, fill, i).is_some())
        .collect();
    let pick = |rng: &mut Rng, v: &[u64]| {
        v.get(usize::try_from(rng.below(v.len() as u64)).unwrap_or(0))
            .copied()
    };
    for _ in 0..spec.disk_tweaked_chunks {
        if let Some(i) = pick(&mut rng, &data_chunks) {
            if let Some(c) = base_disk_chunk(seed, fill, i) {
                write_chunk(i, &slightly_modified(&c, &mut rng), &mut written)?;
            }
        }
    }
    for _ in 0..spec.disk_copied_chunks {
        if let (Some(from), Some(to)) = (pick(&mut rng, &data_chunks), pick(&mut rng, &data_chunks))
        {
            if let Some(c) = base_disk_chunk(seed, fill, from) {
                write_chunk(to, &c, &mut written)?;
            }
        }
    }
    for _ in 0..spec.disk_trimmed_chunks {
        if let Some(i) = pick(&mut rng, &data_chunks) {
            write_chunk(i, &[0; CHUNK_SIZE_BYTES], &mut written)?;
        }
    }
    disk.sync_all()?;
    let mut modified_bytes = written.iter().map(|r| r.end - r.start).sum::<u64>();

    let (base_save, custom_save) = if spec.ram_bytes > 0 {
        let layout = test_layout(&[
            ("pc.ram", spec.ram_bytes.next_multiple_of(CHUNK_SIZE_U64)),
            ("pc.bios", 256 << 10),
        ]);
        let pages = layout.page_count();
        let device_state: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let base_save = dir.join("base.save");
        let page_of = |i: u64| {
            base_memory_page(seed, fill, i).unwrap_or_else(|| Box::new([0; CHUNK_SIZE_BYTES]))
        };
        write_save_file(&base_save, &layout, &device_state, page_of)?;

        // Customized memory: decide each changed page up front (sparse map).
        let mut changed: HashMap<u64, Box<Chunk>> = HashMap::new();
        let data_pages: Vec<u64> = (0..pages)
            .filter(|&i| base_memory_page(seed, fill, i).is_some())
            .collect();
        let zero_pages: Vec<u64> = (0..pages)
            .filter(|&i| base_memory_page(seed, fill, i).is_none())
            .collect();
        for c in cached {
            if let Some(i) = pick(&mut rng, &zero_pages) {
                changed.insert(i, c);
            }
        }
        for _ in 0..spec.mem_tweaked_pages {
            if let Some(i) = pick(&mut rng, &data_pages) {
                changed.insert(i, slightly_modified(&page_of(i), &mut rng));
            }
        }
        for _ in 0..spec.mem_copied_pages {
            if let (Some(from), Some(to)) =
                (pick(&mut rng, &data_pages), pick(&mut rng, &zero_pages))
            {
                changed.insert(to, page_of(from));
            }
        }
        for _ in 0..spec.mem_random_pages {
            if let Some(i) = pick(&mut rng, &zero_pages) {
                changed.insert(i, random_chunk(&mut rng));
            }
        }
        for _ in 0..spec.mem_zeroed_pages {
            if let Some(i) = pick(&mut rng, &data_pages) {
                changed.insert(i, Box::new([0; CHUNK_SIZE_BYTES]));
            }
        }
        modified_bytes += changed.len() as u64 * CHUNK_SIZE_U64;
        let custom_save = dir.join("custom.save");
        let mut custom_state = device_state.clone();
        custom_state[100..108].copy_from_slice(b"CUSTOM!!");
        write_save_file(&custom_save, &layout, &custom_state, |i| {
            changed.get(&i).map_or_else(|| page_of(i), |c| c.clone())
        })?;
        (Some(base_save), Some(custom_save))
    } else {
        (None, None)
    };

    Ok(Workload {
        base_disk,
        base_save,
        custom_disk,
        custom_save,
        written_ranges: written,
        modified_bytes,
    })
}
