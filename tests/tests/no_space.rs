//! A full data disk, at every step that writes (a base import, an upload, the decode of a
//! synthesis), answers 507 `no-space` and leaves nothing behind. The data directory is a
//! small tmpfs, shrunk to what is already used plus a little once the base is in.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::synthetic::synthetic_vm;
use cloudlet_e2e::tmpfs::Tmpfs;
use cloudlet_e2e::Daemon;
use cloudlet_engine::testkit::WorkloadSpec;
use serde_json::{json, Value};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
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
    let fs = Tmpfs::mount(&data, "256m").unwrap();
    // The save-file path: its rebuilt memory is what does not fit (a synthetic VM never
    // resumes, so a streamed restore would fail on QEMU's refusal first).
    let d = Daemon::start_in(
        &data,
        &[
            ("CLOUDLET_IMPORT_DIRS", import.as_str()),
            ("CLOUDLET_RESTORE_STREAM", "off"),
        ],
    )
    .unwrap();
    vm.add_base(&d, "syn", &[]).unwrap();
    let (status, archive) = d.send("GET", "/api/v1/bases/syn/export", &[], &[]).unwrap();
    assert_eq!(status, 200);
    // The cached export is not needed any more: drop it, then leave 2 MiB free.
    for e in fs.entries("exports") {
        std::fs::remove_file(data.join("exports").join(e)).unwrap();
    }
    fs.resize(fs.used().unwrap() + (2 << 20)).unwrap();
    let bases_before = fs.entries("bases");

    // Decode of a synthesis: the rebuilt memory does not fit.
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let (status, v) = d
        .upload("/api/v1/synthesis/upload?base=syn", &overlay)
        .unwrap();
    assert_eq!((status, code(&v)), (507, "no-space"), "{v}");
    assert!(
        fs.entries("sessions").is_empty(),
        "{:?}",
        fs.entries("sessions")
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
    assert!(fs.entries("incoming").is_empty());

    // A base import that does not fit (the archive's files are written before the base
    // appears): 507, not "archive is corrupt".
    let (status, v) = d
        .upload("/api/v1/bases/import?name=again", &archive)
        .unwrap();
    assert_eq!((status, code(&v)), (507, "no-space"), "{v}");
    assert!(fs.entries("incoming").is_empty());
    assert_eq!(fs.entries("bases"), bases_before);
    let (_, bases) = d.json("GET", "/api/v1/bases", None).unwrap();
    assert_eq!(bases.as_array().unwrap().len(), 1, "{bases}");

    // With room again, the same synthesis input and import work (nothing was poisoned).
    fs.resize(256 << 20).unwrap();
    let (status, v) = d.upload("/api/v1/uploads", &overlay).unwrap();
    assert_eq!(status, 201, "{v}");
    drop(d);
}

/// With a real VM: a full disk while a base is saved, and while an overlay is encoded,
/// answers 507 `no-space`, leaves no base, overlay or session file behind, and the
/// session records why.
#[test]
fn a_full_data_disk_during_base_creation_and_encode_is_no_space() {
    if !cloudlet_e2e::require_host("a_full_data_disk_during_base_creation_and_encode_is_no_space") {
        return;
    }
    let guest = cloudlet_e2e::fixture_guest().unwrap();
    let tmp = TempDir::new("nospace-vm").unwrap();
    let import = guest.dir.display().to_string();
    let f = |name: &str| guest.dir.join(name).display().to_string();
    let base_request = json!({
        "name": "tiny", "disk": f("disk.img"), "kernel": f("vmlinuz"), "initrd": f("initrd.img"),
        "cmdline": "console=ttyS0 quiet init_on_free=1", "memory_mib": 96, "vcpus": 1,
        "ready_marker": "CLOUDLET-GUEST-READY", "finish": true
    });
    // A daemon on a tmpfs of `size` that was asked to create the fixture base.
    let daemon_creating_a_base = |dir: &str, size: &str| {
        let data = tmp.0.join(dir);
        let fs = Tmpfs::mount(&data, size).unwrap();
        let d = Daemon::start_in(&data, &[("CLOUDLET_IMPORT_DIRS", import.as_str())]).unwrap();
        let (status, v) = d
            .json("POST", "/api/v1/bases", Some(&base_request))
            .unwrap();
        (fs, d, status, v)
    };

    // Base creation: the disk and boot files fit, the saved memory does not.
    let (fs, d, status, v) = daemon_creating_a_base("small", "32m");
    assert_eq!(
        (status, code(&v)),
        (507, "no-space"),
        "{v}\n{}",
        d.log_text()
    );
    assert!(fs.entries("bases").is_empty(), "{:?}", fs.entries("bases"));
    let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
    assert_eq!(sessions[0]["state"], "failed", "{sessions}");
    assert!(cloudlet_e2e::domains_with_prefix(&format!(
        "cloudlet-{}",
        sessions[0]["id"].as_str().unwrap()
    ))
    .is_empty());
    drop(d);
    drop(fs);

    // Encode: the customized VM is saved, its overlay does not fit.
    let (fs, d, status, v) = daemon_creating_a_base("big", "512m");
    assert_eq!(status, 201, "{v}\n{}", d.log_text());
    let base_id = v["base_id"].as_str().unwrap().to_string();
    // 24 MiB of random data on the disk (incompressible: the overlay needs ~24 MiB), and
    // the page cache dropped so that the save stays near the base's size.
    let (status, ov) = d
        .json(
            "POST",
            "/api/v1/overlays",
            Some(&json!({"base": "tiny", "script": [
                "dd if=/dev/urandom of=/mnt/data/big.bin bs=1024 count=24576 2>/dev/null && sync",
                "echo 3 > /proc/sys/vm/drop_caches",
            ]})),
        )
        .unwrap();
    assert_eq!(status, 201, "{ov}\n{}", d.log_text());
    let id = ov["id"].as_str().unwrap().to_string();
    let _guard = cloudlet_e2e::DomainGuard(format!("cloudlet-{id}"));
    // The overlay is encoded while the VM is saved into a FIFO (no save file): 12 MiB free
    // hold the session's files but not the ~24 MiB overlay.
    fs.resize(fs.used().unwrap() + (12 << 20)).unwrap();
    let (status, v) = d
        .json("POST", &format!("/api/v1/sessions/{id}/finish"), None)
        .unwrap();
    assert_eq!(
        (status, code(&v)),
        (507, "no-space"),
        "{v}\n{}",
        d.log_text()
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("encoding"),
        "{v}"
    );
    assert!(
        fs.entries("overlays").is_empty(),
        "{:?}",
        fs.entries("overlays")
    );
    assert!(
        fs.entries("sessions").is_empty(),
        "{:?}",
        fs.entries("sessions")
    );
    let (_, overlays) = d.json("GET", "/api/v1/overlays", None).unwrap();
    assert_eq!(overlays, json!([]));
    let (_, s) = d
        .json("GET", &format!("/api/v1/sessions/{id}"), None)
        .unwrap();
    assert_eq!(s["state"], "failed", "{s}");
    // The base is intact.
    let (status, _) = d
        .json("GET", &format!("/api/v1/bases/{base_id}"), None)
        .unwrap();
    assert_eq!(status, 200);
}
