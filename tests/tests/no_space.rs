//! A full data disk, at every step that writes (a base import, an upload, the decode of a
//! synthesis), answers 507 `no-space` and leaves nothing behind. The data directory is a
//! small tmpfs, shrunk to what is already used plus a little once the base is in.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::Path;
use std::process::Command;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::synthetic::synthetic_vm;
use cloudlet_e2e::Daemon;
use cloudlet_engine::testkit::WorkloadSpec;
use serde_json::{json, Value};

/// A tmpfs mounted at `dir` (unmounted on drop).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                &dir.display().to_string(),
            ],
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Bytes in use.
    fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }

    /// Shrinks (or grows) the file system to `bytes`.
    fn resize(&self, bytes: u64) {
        run(
            "mount",
            &[
                "-o",
                &format!("remount,size={bytes}"),
                &self.0.display().to_string(),
            ],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Entries of a data directory's subdirectory.
fn entries(data: &Path, sub: &str) -> Vec<String> {
    std::fs::read_dir(data.join(sub))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_full_data_disk_answers_no_space_and_keeps_nothing() {
    if !cloudlet_e2e::require_root("a_full_data_disk_answers_no_space_and_keeps_nothing") {
        return;
    }
    let tmp = TempDir::new("nospace").unwrap();
    let files = tmp.0.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let spec = WorkloadSpec {
        disk_bytes: 24 << 20,
        ram_bytes: 24 << 20,
        ..WorkloadSpec::small(11)
    };
    let vm = synthetic_vm(&files, &spec).unwrap();
    let import = files.display().to_string();
    let data = tmp.0.join("data");
    let fs = Tmpfs::mount(&data, "256m");
    let d = Daemon::start_in(&data, &[("CLOUDLET_IMPORT_DIRS", import.as_str())]).unwrap();
    let (status, base) = d
        .json(
            "POST",
            "/api/v1/bases/add",
            Some(&json!({
                "name": "syn",
                "disk": vm.workload.base_disk,
                "save_file": vm.workload.base_save,
            })),
        )
        .unwrap();
    assert_eq!(status, 201, "{base}");
    let (status, archive) = d.send("GET", "/api/v1/bases/syn/export", &[], &[]).unwrap();
    assert_eq!(status, 200);
    // The cached export is not needed any more: drop it, then leave 2 MiB free.
    for e in entries(&data, "exports") {
        std::fs::remove_file(data.join("exports").join(e)).unwrap();
    }
    fs.resize(fs.used() + (2 << 20));
    let bases_before = entries(&data, "bases");

    // Decode of a synthesis: the rebuilt memory does not fit.
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let reply = d
        .send_full(
            "POST",
            "/api/v1/synthesis/upload?base=syn",
            &[("Content-Type", "application/octet-stream")],
            &overlay,
        )
        .unwrap();
    assert_eq!(
        (reply.status, code(&reply.json())),
        (507, "no-space"),
        "{:?}",
        reply.json()
    );
    assert!(
        entries(&data, "sessions").is_empty(),
        "{:?}",
        entries(&data, "sessions")
    );
    let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
    let failed = &sessions.as_array().unwrap()[0];
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("data disk is full"),
        "{failed}"
    );

    // An upload that does not fit.
    let big = vec![0x5a_u8; 4 << 20];
    let (status, v) = d.upload("/api/v1/uploads", &big).unwrap();
    assert_eq!((status, code(&v)), (507, "no-space"), "{v}");
    assert!(entries(&data, "incoming").is_empty());

    // A base import that does not fit (the archive's files are written before the base
    // appears): 507, not "archive is corrupt".
    let (status, v) = d
        .upload("/api/v1/bases/import?name=again", &archive)
        .unwrap();
    assert_eq!((status, code(&v)), (507, "no-space"), "{v}");
    assert!(entries(&data, "incoming").is_empty());
    assert_eq!(entries(&data, "bases"), bases_before);
    let (_, bases) = d.json("GET", "/api/v1/bases", None).unwrap();
    assert_eq!(bases.as_array().unwrap().len(), 1, "{bases}");

    // With room again, the same synthesis input and import work (nothing was poisoned).
    fs.resize(256 << 20);
    let (status, v) = d.upload("/api/v1/uploads", &overlay).unwrap();
    assert_eq!(status, 201, "{v}");
    drop(d);
}
