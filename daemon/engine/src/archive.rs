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
//! before anything is kept. Sparse memory images compress to almost nothing.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
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
}

impl ArchiveError {
    /// Whether the archive itself is bad (as opposed to a local failure).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ArchiveError::Io(e) => e.kind() == io::ErrorKind::UnexpectedEof,
            _ => true,
        }
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

/// Reads an archive into `dir` (which must exist and be empty), verifies it and opens the
/// result as a base. Returns the meta and the base's identity. On error `dir` may hold
/// partial files: the caller removes it.
pub fn import_base<R: Read>(input: R, dir: &Path) -> Result<(Vec<u8>, ChunkHash), ArchiveError> {
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
        inner: decoder,
        hasher: blake3::Hasher::new(),
    };
    let corrupt = |what: &str| ArchiveError::Corrupt(what.to_string());
    let read_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
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
    for (name, size, hash) in &table {
        let mut file = BufWriter::with_capacity(
            COPY_BUFFER_BYTES,
            File::options()
                .write(true)
                .create_new(true)
                .open(dir.join(name))
                .map_err(ArchiveError::Io)?,
        );
        let mut content = HashingReader {
            inner: (&mut r).take(*size),
            hasher: blake3::Hasher::new(),
        };
        let copied = io::copy(&mut content, &mut file).map_err(read_err)?;
        if copied != *size {
            return Err(ArchiveError::Corrupt(format!("{name} is truncated")));
        }
        if content.hasher.finalize().as_bytes() != hash {
            return Err(ArchiveError::Corrupt(format!(
                "{name} does not match its hash"
            )));
        }
        let file = file
            .into_inner()
            .map_err(|e| ArchiveError::Io(e.into_error()))?;
        file.sync_all().map_err(ArchiveError::Io)?;
    }
    let expected = *r.hasher.finalize().as_bytes();
    let mut trailer = [0u8; 32];
    r.inner.read_exact(&mut trailer).map_err(read_err)?;
    if trailer != expected {
        return Err(corrupt("archive hash mismatch"));
    }
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
        let (meta, got) = import_base(&archive[..], &into).unwrap();
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
            assert!(import_base(&bad[..], &into).is_err(), "case {i} accepted");
        }
    }
}
