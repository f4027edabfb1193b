//! A small tmpfs as a daemon's data directory, to fill its disk on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A tmpfs mounted at a directory (lazily unmounted on drop). Needs root.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `256m`) at `dir`, mode 0700.
    pub fn mount(dir: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let options = format!("size={size},mode=0700");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &options,
                "tmpfs",
                &dir.display().to_string(),
            ],
        )?;
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Bytes in use.
    pub fn used(&self) -> anyhow::Result<u64> {
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(&self.0)
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("parsing df's answer")
    }

    /// Shrinks (or grows) the file system to `bytes`.
    pub fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        let options = format!("remount,size={bytes}");
        run("mount", &["-o", &options, &self.0.display().to_string()])
    }

    /// Names in `sub` (a subdirectory of the mount), sorted.
    pub fn entries(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
