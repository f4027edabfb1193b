//! The data directory's layout. The daemon owns everything under it:
//!
//! ```text
//! <data_dir>/cloudlet.db          catalogue (+ -wal, -shm)
//! <data_dir>/bases/<base-id>/     disk.raw, memory.pages, memory.meta, hashes.bin, hashes.idx
//! <data_dir>/overlays/<id>.overlay
//! <data_dir>/sessions/<id>/       a running VM's disk, save file, console socket
//! <data_dir>/exports/<base-id>.cldbase  base archives, cached for resumable downloads
//! <data_dir>/incoming/            uploads and work in progress (emptied at start)
//! ```

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory tree (mode 0700: images may hold private data). A root that
    /// exists already is set to 0700 too (a `mkdir` by hand leaves it 0755).
    pub fn create(root: &Path) -> io::Result<Self> {
        let dir = Self {
            root: root.to_path_buf(),
        };
        for d in [
            dir.root.clone(),
            dir.bases(),
            dir.overlays(),
            dir.sessions(),
            dir.incoming(),
            dir.exports(),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)?;
        }
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalogue database.
    pub fn database(&self) -> PathBuf {
        self.root.join("cloudlet.db")
    }

    /// Parent of every base directory.
    pub fn bases(&self) -> PathBuf {
        self.root.join("bases")
    }

    /// One base's directory.
    pub fn base_dir(&self, base_id: &str) -> PathBuf {
        self.bases().join(base_id)
    }

    /// Parent of every overlay file.
    pub fn overlays(&self) -> PathBuf {
        self.root.join("overlays")
    }

    /// One overlay's file.
    pub fn overlay_file(&self, overlay_id: &str) -> PathBuf {
        self.overlays().join(format!("{overlay_id}.overlay"))
    }

    /// Parent of every session directory.
    pub fn sessions(&self) -> PathBuf {
        self.root.join("sessions")
    }

    /// One session's directory.
    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.sessions().join(session_id)
    }

    /// A file uploaded for a later request (`upload:<id>`).
    pub fn upload_file(&self, id: &str) -> PathBuf {
        self.incoming().join(format!("upload-{id}"))
    }

    /// Parent of cached base archives (built on the first download, removed with the base).
    pub fn exports(&self) -> PathBuf {
        self.root.join("exports")
    }

    /// The cached archive of a base.
    pub fn export_file(&self, base_id: &str) -> PathBuf {
        self.exports().join(format!("{base_id}.cldbase"))
    }

    /// Work in progress (uploads, bases being built); emptied at every start.
    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_private_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DataDir::create(&tmp.path().join("data")).unwrap();
        for p in [d.bases(), d.overlays(), d.sessions(), d.incoming()] {
            assert!(p.is_dir());
        }
        let mode = std::fs::metadata(d.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(d.overlay_file("x").ends_with("overlays/x.overlay"));
        DataDir::create(d.root()).unwrap(); // idempotent
                                            // A root made by hand with the usual umask is made private too.
        let by_hand = tmp.path().join("by-hand");
        std::fs::create_dir(&by_hand).unwrap();
        std::fs::set_permissions(&by_hand, std::fs::Permissions::from_mode(0o755)).unwrap();
        DataDir::create(&by_hand).unwrap();
        let mode = std::fs::metadata(&by_hand).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
