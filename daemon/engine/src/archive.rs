//! One-file export of a base (Elijah's `export-base` / `import-base`), streamed both ways.
//!
//! ```text
//! "CLDBASEX" | u16 major = 1 | u16 minor = 0 | zstd stream of:
//!     u64 meta_len | meta                     opaque to the engine (the daemon's JSON)
//!     u32 file_count | per file: u16 name_len | name | u64 size | blake3 (32)
//!     every file's bytes, in table order
//!     blake3 (32) of everything above in the stream
//! ```
//!
//! Import verifies every file's size and hash and the trailing hash, accepts only the file
//! names a base has, and opens the result as a base (its files must agree with each other),
//! before anything is kept. Sparse memory images compress to almost nothing, so a small
//! archive can declare huge files: import refuses declared sizes over its limit before it
//! writes anything, counts every decompressed byte against what the archive declared,
//! writes all-zero blocks as holes, and counts the bytes it does store against the disk's
//! free space.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::base::{Base, BaseError, BasePaths};
use crate::chunk::ChunkHash;
use crate::cursor::Cursor;

const MAGIC: &[u8; 8] = b"CLDBASEX";
const MAJOR: u16 = 1;
const MINOR: u16 = 0;
/// Files an archive may carry (a base's files plus direct-boot kernel and initramfs).
pub const BASE_FILES: [&str; 7] = [
    "disk.raw",
    "memory.pages",
    "memory.meta",
    "hashes.bin",
    "hashes.idx",
    "vmlinuz",
    "initrd.img",
];
const MAX_META_BYTES: u64 = 16 << 20;
const COPY_BUFFER_BYTES: usize = 1 << 20;
/// Blocks of this size that are all zero are left as holes on import.
const HOLE_BLOCK_BYTES: usize = 4096;

/// Bounds on what an archive may expand to on import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Most bytes the archive's files may hold in all (their declared sizes; checked
    /// before anything is written).
    pub max_file_bytes: u64,
    /// Most bytes the imported files may occupy: all-zero blocks are holes and count
    /// nothing, every other block counts (typically the data disk's free space).
    pub max_stored_bytes: u64,
}

impl ImportLimits {
    /// No bounds but the archive's own declared sizes.
    pub const UNLIMITED: Self = Self {
        max_file_bytes: u64::MAX,
        max_stored_bytes: u64::MAX,
    };
}

/// Errors exporting or importing a base archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("i/o error in base archive")]
    Io(#[source] io::Error),
    /// Not a base archive, or another version.
    #[error("not a cloudlet base archive (or an unsupported version)")]
    BadHeader,
    /// The archive is damaged or truncated.
    #[error("base archive is corrupt: {0}")]
    Corrupt(String),
    /// The imported files do not form a valid base.
    #[error("imported base is invalid")]
    Base(#[source] BaseError),
    /// The archive's files declare more bytes than the import limit allows (refused before
    /// anything is written).
    #[error(
        "base archive declares {declared} bytes of files, more than the limit of {limit} bytes"
    )]
    TooLarge {
        /// Sum of the declared file sizes (saturating).
        declared: u64,
        /// The limit ([`ImportLimits::max_file_bytes`]).
        limit: u64,
    },
    /// The archive decompresses to more than its table declares (a decompression bomb).
    #[error("base archive decompresses to more than the {declared} bytes it declares")]
    ExpandsPastDeclared {
        /// Bytes the archive's stream declares in all.
        declared: u64,
    },
    /// The data the archive's files hold (holes aside) exceeds what may be stored.
    #[error("base archive holds more than the {limit} bytes of data that may be stored")]
    NoSpace {
        /// The limit ([`ImportLimits::max_stored_bytes`]).
        limit: u64,
    },
}

impl ArchiveError {
    /// Whether the archive itself is bad (as opposed to a local failure).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ArchiveError::Io(e) => e.kind() == io::ErrorKind::UnexpectedEof,
            ArchiveError::NoSpace { .. } => false,
            _ => true,
        }
    }

    /// Whether the archive expands past its own declared sizes or the import limit.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            ArchiveError::TooLarge { .. } | ArchiveError::ExpandsPastDeclared { .. }
        )
    }
}

/// A writer that hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the base in `dir` (standard file names; optional kernel/initramfs) with `meta`
/// to `out`. Returns the bytes of the archive's files (uncompressed).
pub fn export_base<W: Write>(dir: &Path, meta: &[u8], out: W) -> Result<u64, ArchiveError> {
    let present: Vec<&str> = BASE_FILES
        .iter()
        .copied()
        .filter(|n| dir.join(n).is_file())
        .collect();
    let mut table = Vec::new();
    for name in &present {
        let path = dir.join(name);
        let size = std::fs::metadata(&path).map_err(ArchiveError::Io)?.len();
        table.push((*name, size, hash_file(&path)?));
    }
    let mut out = out;
    out.write_all(MAGIC).map_err(ArchiveError::Io)?;
    out.write_all(&MAJOR.to_le_bytes())
        .map_err(ArchiveError::Io)?;
    out.write_all(&MINOR.to_le_bytes())
        .map_err(ArchiveError::Io)?;
    let encoder = zstd::stream::Encoder::new(out, 3).map_err(ArchiveError::Io)?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(COPY_BUFFER_BYTES, encoder),
        hasher: blake3::Hasher::new(),
    };
    (|| -> io::Result<()> {
        w.write_all(&(meta.len() as u64).to_le_bytes())?;
        w.write_all(meta)?;
        w.write_all(&u32::try_from(table.len()).unwrap_or(0).to_le_bytes())?;
        for (name, size, hash) in &table {
            w.write_all(&u16::try_from(name.len()).unwrap_or(0).to_le_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&size.to_le_bytes())?;
            w.write_all(hash)?;
        }
        for (name, size, _) in &table {
            let copied = io::copy(&mut File::open(dir.join(name))?, &mut w)?;
            if copied != *size {
                return Err(io::Error::other(format!(
                    "{name} changed size during export"
                )));
            }
        }
        let trailer = *w.hasher.finalize().as_bytes();
        w.inner.write_all(&trailer)?;
        let encoder = w.inner.into_inner().map_err(|e| e.into_error())?;
        encoder.finish()?.flush()
    })()
    .map_err(ArchiveError::Io)?;
    Ok(table.iter().map(|(_, s, _)| s).sum())
}

fn hash_file(path: &Path) -> Result<ChunkHash, ArchiveError> {
    let mut hasher = blake3::Hasher::new();
    let mut f = BufReader::with_capacity(
        COPY_BUFFER_BYTES,
        File::open(path).map_err(ArchiveError::Io)?,
    );
    io::copy(&mut f, &mut hasher).map_err(ArchiveError::Io)?;
    Ok(*hasher.finalize().as_bytes())
}

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Marks the error a [`Counted`] reader returns past its limit.
#[derive(Debug, thiserror::Error)]
#[error("decompressed past the declared {limit} bytes")]
struct PastDeclared {
    limit: u64,
}

/// A reader that counts what passes through and fails once more than `limit` bytes did:
/// the decompressor can never produce more than the archive declared.
struct Counted<R> {
    inner: R,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count = self.count.saturating_add(n as u64);
        if self.count > self.limit {
            let limit = self.limit;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                PastDeclared { limit },
            ));
        }
        Ok(n)
    }
}

/// Copies all of `input` into the fresh, empty `file`, leaving every all-zero
/// [`HOLE_BLOCK_BYTES`] block as a hole, and takes the bytes it writes from `budget`
/// ([`ArchiveError::NoSpace`] once it is spent). Returns the bytes copied.
fn copy_sparse(input: &mut impl Read, file: &File, budget: &mut u64) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut offset = 0u64;
    loop {
        // Fill the buffer, so that blocks stay aligned to the file's offsets.
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(buf.get_mut(filled..).unwrap_or_default()) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        let data = buf.get(..filled).unwrap_or_default();
        // Runs of non-zero blocks are written with one call each.
        let mut run_start = None;
        for (i, block) in data.chunks(HOLE_BLOCK_BYTES).enumerate() {
            let at = i * HOLE_BLOCK_BYTES;
            let zero = block.iter().all(|&b| b == 0);
            match (zero, run_start) {
                (false, None) => run_start = Some(at),
                (true, Some(start)) => {
                    write_run(
                        file,
                        data.get(start..at).unwrap_or_default(),
                        offset,
                        start,
                        budget,
                    )?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run_start {
            write_run(
                file,
                data.get(start..).unwrap_or_default(),
                offset,
                start,
                budget,
            )?;
        }
        offset += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    // A trailing hole is not written: the length makes it.
    file.set_len(offset).map_err(CopyError::Write)?;
    Ok(offset)
}

fn write_run(
    file: &File,
    run: &[u8],
    buf_offset: u64,
    start: usize,
    budget: &mut u64,
) -> Result<(), CopyError> {
    *budget = budget
        .checked_sub(run.len() as u64)
        .ok_or(CopyError::Budget)?;
    file.write_all_at(run, buf_offset + start as u64)
        .map_err(CopyError::Write)
}

/// Why [`copy_sparse`] stopped.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Budget,
}

/// Reads an archive into `dir` (which must exist and be empty), verifies it and opens the
/// result as a base. Returns the meta and the base's identity. On error `dir` may hold
/// partial files: the caller removes it.
pub fn import_base<R: Read>(
    input: R,
    dir: &Path,
    limits: &ImportLimits,
) -> Result<(Vec<u8>, ChunkHash), ArchiveError> {
    let mut input = input;
    let mut head = [0u8; 12];
    input
        .read_exact(&mut head)
        .map_err(|_| ArchiveError::BadHeader)?;
    if &head[..8] != MAGIC || Cursor::at(&head, MAGIC.len()).u16_le() != Ok(MAJOR) {
        return Err(ArchiveError::BadHeader);
    }
    let decoder = zstd::stream::Decoder::new(input).map_err(ArchiveError::Io)?;
    let mut r = HashingReader {
        // Until the file table is read, only its own fields' caps bound the stream.
        inner: Counted {
            inner: decoder,
            count: 0,
            limit: u64::MAX,
        },
        hasher: blake3::Hasher::new(),
    };
    let corrupt = |what: &str| ArchiveError::Corrupt(what.to_string());
    let read_err = |e: io::Error| {
        if let Some(past) = e.get_ref().and_then(|i| i.downcast_ref::<PastDeclared>()) {
            ArchiveError::ExpandsPastDeclared {
                declared: past.limit,
            }
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            ArchiveError::Corrupt("truncated".into())
        } else {
            ArchiveError::Corrupt(format!("unreadable: {e}"))
        }
    };

    let meta_len = read_u64(&mut r).map_err(read_err)?;
    if meta_len > MAX_META_BYTES {
        return Err(corrupt("metadata too large"));
    }
    let mut meta = vec![0u8; usize::try_from(meta_len).map_err(|_| corrupt("metadata too large"))?];
    r.read_exact(&mut meta).map_err(read_err)?;
    let mut count = [0u8; 4];
    r.read_exact(&mut count).map_err(read_err)?;
    let count = u32::from_le_bytes(count);
    if count as usize > BASE_FILES.len() {
        return Err(corrupt("too many files"));
    }
    let mut table = Vec::new();
    for _ in 0..count {
        let mut len = [0u8; 2];
        r.read_exact(&mut len).map_err(read_err)?;
        let mut name = vec![0u8; usize::from(u16::from_le_bytes(len))];
        r.read_exact(&mut name).map_err(read_err)?;
        let name = String::from_utf8(name).map_err(|_| corrupt("file name not utf-8"))?;
        let Some(known) = BASE_FILES.iter().find(|n| **n == name) else {
            return Err(ArchiveError::Corrupt(format!("unexpected file {name:?}")));
        };
        if table.iter().any(|(n, _, _)| n == known) {
            return Err(corrupt("file listed twice"));
        }
        let size = read_u64(&mut r).map_err(read_err)?;
        let mut hash = [0u8; 32];
        r.read_exact(&mut hash).map_err(read_err)?;
        table.push((*known, size, hash));
    }
    let declared = table
        .iter()
        .fold(0u64, |sum, (_, size, _)| sum.saturating_add(*size));
    if declared > limits.max_file_bytes {
        return Err(ArchiveError::TooLarge {
            declared,
            limit: limits.max_file_bytes,
        });
    }
    // From here the stream holds exactly the files and the trailing hash.
    r.inner.limit = r.inner.count.saturating_add(declared).saturating_add(32);
    let mut budget = limits.max_stored_bytes;
    for (name, size, hash) in &table {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(dir.join(name))
            .map_err(ArchiveError::Io)?;
        let mut content = HashingReader {
            inner: (&mut r).take(*size),
            hasher: blake3::Hasher::new(),
        };
        let copied = copy_sparse(&mut content, &file, &mut budget).map_err(|e| match e {
            CopyError::Read(e) => read_err(e),
            CopyError::Write(e) => ArchiveError::Io(e),
            CopyError::Budget => ArchiveError::NoSpace {
                limit: limits.max_stored_bytes,
            },
        })?;
        if copied != *size {
            return Err(ArchiveError::Corrupt(format!("{name} is truncated")));
        }
        if content.hasher.finalize().as_bytes() != hash {
            return Err(ArchiveError::Corrupt(format!(
                "{name} does not match its hash"
            )));
        }
        file.sync_all().map_err(ArchiveError::Io)?;
    }
    let expected = *r.hasher.finalize().as_bytes();
    let mut trailer = [0u8; 32];
    r.inner.read_exact(&mut trailer).map_err(read_err)?;
    if trailer != expected {
        return Err(corrupt("archive hash mismatch"));
    }
    // One byte more than declared is refused by the count (ExpandsPastDeclared).
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(read_err)? != 0 {
        return Err(corrupt("trailing data"));
    }
    let base = Base::open(&BasePaths::in_dir(dir)).map_err(ArchiveError::Base)?;
    Ok((meta, *base.id()))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::create_base;
    use crate::testkit::{generate, WorkloadSpec};

    fn base_dir(root: &Path) -> (std::path::PathBuf, ChunkHash) {
        let work = generate(root, &WorkloadSpec::small(21)).unwrap();
        let dir = root.join("base");
        std::fs::create_dir(&dir).unwrap();
        let paths = BasePaths::in_dir(&dir);
        std::fs::copy(&work.base_disk, &paths.disk).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"kernel bytes").unwrap();
        let id = create_base(&paths, work.base_save.as_deref()).unwrap().id;
        (dir, id)
    }

    #[test]
    fn export_import_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, id) = base_dir(tmp.path());
        let mut archive = Vec::new();
        export_base(&dir, b"{\"name\":\"x\"}", &mut archive).unwrap();
        let into = tmp.path().join("imported");
        std::fs::create_dir(&into).unwrap();
        let (meta, got) = import_base(&archive[..], &into, &ImportLimits::UNLIMITED).unwrap();
        assert_eq!(meta, b"{\"name\":\"x\"}");
        assert_eq!(got, id);
        let present: Vec<&str> = BASE_FILES
            .into_iter()
            .filter(|n| dir.join(n).exists())
            .collect();
        assert_eq!(present.len(), 6, "{present:?}"); // all but initrd.img
        for name in present {
            assert_eq!(
                std::fs::read(dir.join(name)).unwrap(),
                std::fs::read(into.join(name)).unwrap(),
                "{name}"
            );
        }
        assert!(!into.join("initrd.img").exists());
    }

    #[test]
    fn damaged_archives_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = base_dir(tmp.path());
        let mut archive = Vec::new();
        export_base(&dir, b"{}", &mut archive).unwrap();
        let len = archive.len();
        let mut cases: Vec<Vec<u8>> = vec![
            archive[..len / 2].to_vec(),
            archive[..len - 1].to_vec(),
            b"nope".to_vec(),
        ];
        for at in [0, 9, 20, len / 3, len / 2, len - 20] {
            let mut bad = archive.clone();
            bad[at] ^= 0x04;
            cases.push(bad);
        }
        let mut longer = archive.clone();
        longer.extend_from_slice(&archive[12..40]);
        cases.push(longer);
        for (i, bad) in cases.iter().enumerate() {
            let into = tmp.path().join(format!("bad{i}"));
            std::fs::create_dir(&into).unwrap();
            assert!(
                import_base(&bad[..], &into, &ImportLimits::UNLIMITED).is_err(),
                "case {i} accepted"
            );
        }
    }

    /// A disk-only base whose disk is 1 MiB of data, 8 MiB of zeros, 4 KiB of data.
    fn sparse_base(root: &Path) -> std::path::PathBuf {
        let dir = root.join("sparse");
        std::fs::create_dir(&dir).unwrap();
        let paths = BasePaths::in_dir(&dir);
        let mut disk = vec![0x5au8; 1 << 20];
        disk.resize((9 << 20) + 4096, 0);
        disk[(9 << 20)..].fill(0xa5);
        std::fs::write(&paths.disk, &disk).unwrap();
        create_base(&paths, None).unwrap();
        dir
    }

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn zero_runs_are_imported_as_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sparse_base(tmp.path());
        let mut archive = Vec::new();
        export_base(&dir, b"{}", &mut archive).unwrap();
        assert!(archive.len() < 64 << 10, "{} bytes", archive.len());
        let into = tmp.path().join("imported");
        std::fs::create_dir(&into).unwrap();
        import_base(&archive[..], &into, &ImportLimits::UNLIMITED).unwrap();
        let disk = into.join("disk.raw");
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            std::fs::read(dir.join("disk.raw")).unwrap()
        );
        // 1 MiB + 4 KiB of data; the 8 MiB of zeros take no blocks (a little slack for
        // file systems that allocate a few blocks more).
        let used = allocated(&disk);
        assert!(used < 2 << 20, "{used} bytes allocated for a 9 MiB disk");
    }

    #[test]
    fn declared_sizes_over_the_limit_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sparse_base(tmp.path());
        let mut archive = Vec::new();
        export_base(&dir, b"{}", &mut archive).unwrap();
        let into = tmp.path().join("imported");
        std::fs::create_dir(&into).unwrap();
        let limits = ImportLimits {
            max_file_bytes: 4 << 20,
            ..ImportLimits::UNLIMITED
        };
        let err = import_base(&archive[..], &into, &limits).expect_err("over the limit");
        assert!(
            matches!(err, ArchiveError::TooLarge { declared, limit: 4194304 } if declared > 9 << 20),
            "{err:?}"
        );
        assert!(err.is_too_large() && err.is_invalid_input());
        assert_eq!(
            std::fs::read_dir(&into).unwrap().count(),
            0,
            "nothing written"
        );

        // Stored data (holes aside) over its budget: refused as a local limit.
        let limits = ImportLimits {
            max_stored_bytes: 512 << 10,
            ..ImportLimits::UNLIMITED
        };
        let into = tmp.path().join("imported2");
        std::fs::create_dir(&into).unwrap();
        let err = import_base(&archive[..], &into, &limits).expect_err("over the budget");
        assert!(matches!(err, ArchiveError::NoSpace { .. }), "{err:?}");
        assert!(!err.is_invalid_input());
    }

    #[test]
    fn a_stream_longer_than_declared_is_refused_after_one_byte_more() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sparse_base(tmp.path());
        let mut archive = Vec::new();
        export_base(&dir, b"{}", &mut archive).unwrap();
        // The same archive whose stream goes on with 1 GiB of zeros after its trailer.
        let mut stream = zstd::stream::decode_all(&archive[12..]).unwrap();
        let declared = stream.len() as u64;
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        enc.write_all(&stream).unwrap();
        stream.clear();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            enc.write_all(&zeros).unwrap();
        }
        let mut bomb = archive[..12].to_vec();
        bomb.extend_from_slice(&enc.finish().unwrap());
        assert!(bomb.len() < 256 << 10, "{} bytes", bomb.len());
        let into = tmp.path().join("imported");
        std::fs::create_dir(&into).unwrap();
        let err = import_base(&bomb[..], &into, &ImportLimits::UNLIMITED).expect_err("bomb");
        assert!(
            matches!(err, ArchiveError::ExpandsPastDeclared { declared: d } if d == declared),
            "{err:?}"
        );
        assert!(err.is_too_large());
    }
}
