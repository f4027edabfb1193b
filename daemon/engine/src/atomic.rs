//! Crash-safe file creation: write under a temporary name in the same directory, fsync,
//! rename over the final name, fsync the directory. A crash at any point leaves either no
//! file or the complete file under the final name, never a half-written one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// A temporary name next to `final_path`, for a file that someone else creates and
/// writes (a writer that wants a path, e.g. the qcow2 writer). Nothing is created here;
/// whatever is at the temporary name is removed on drop unless committed.
#[derive(Debug)]
pub struct AtomicPath {
    tmp_path: PathBuf,
    final_path: PathBuf,
    committed: bool,
}

impl AtomicPath {
    /// Picks a fresh temporary name for `final_path` (which may already exist: commit
    /// replaces it).
    pub fn new(final_path: &Path) -> io::Result<Self> {
        let name = final_path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}-{}", std::process::id(), unique_suffix()));
        Ok(Self {
            tmp_path: parent_dir(final_path).join(tmp_name),
            final_path: final_path.to_path_buf(),
            committed: false,
        })
    }

    /// Path of the temporary file.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Renames the temporary file to its final name; with `durable`, fsyncs the directory
    /// too. The file's data is the writer's to fsync before.
    pub fn commit_with(mut self, durable: bool) -> io::Result<PathBuf> {
        self.committed = true;
        if let Err(e) = std::fs::rename(&self.tmp_path, &self.final_path) {
            let _ = std::fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        if durable {
            sync_dir(parent_dir(&self.final_path))?;
        }
        Ok(std::mem::take(&mut self.final_path))
    }
}

impl Drop for AtomicPath {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// A file being written; it appears under its final name only on [`AtomicFile::commit`].
/// Dropped without commit, the temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    path: AtomicPath,
}

impl AtomicFile {
    /// Starts writing `final_path` (which may already exist: commit replaces it).
    pub fn create(final_path: &Path) -> io::Result<Self> {
        let path = AtomicPath::new(final_path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path.tmp_path())?;
        Ok(Self { file, path })
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Path of the temporary file (for tools that need a path, e.g. to reopen it).
    pub fn tmp_path(&self) -> &Path {
        self.path.tmp_path()
    }

    /// fsyncs the data, renames it to its final name and fsyncs the directory.
    pub fn commit(self) -> io::Result<PathBuf> {
        self.commit_with(true)
    }

    /// Renames to the final name; with `durable`, fsyncs data and directory too. Files
    /// that a crash makes worthless anyway (a running VM's synthesized images) skip the
    /// fsyncs, which cost more than the rest of synthesis.
    pub fn commit_with(self, durable: bool) -> io::Result<PathBuf> {
        if durable {
            self.file.sync_all()?;
        }
        drop(self.file);
        self.path.commit_with(durable)
    }
}

impl io::Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

/// fsyncs a directory, so that a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(nanos) << 20) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"hello").unwrap();
        assert!(!path.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.bin");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn path_removes_what_was_created_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bin");
        let tmp = AtomicPath::new(&path).unwrap();
        std::fs::write(tmp.tmp_path(), b"x").unwrap();
        drop(tmp);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let tmp = AtomicPath::new(&path).unwrap();
        std::fs::write(tmp.tmp_path(), b"y").unwrap();
        assert!(!path.exists());
        tmp.commit_with(false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"y");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
