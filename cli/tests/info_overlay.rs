//! `cloudlet info-overlay` against real overlay files made by the engine.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudlet_engine::base::{create_base, Base, BasePaths};
use cloudlet_engine::disk::DiskSource;
use cloudlet_engine::encode::{encode, EncodeInput, EncodeOptions};
use cloudlet_engine::progress::NoProgress;
use cloudlet_engine::testkit::{generate, WorkloadSpec};

fn make_overlay(dir: &Path) -> (PathBuf, String) {
    let work = generate(dir, &WorkloadSpec::small(11)).unwrap();
    let base_dir = dir.join("base");
    std::fs::create_dir(&base_dir).unwrap();
    let paths = BasePaths::in_dir(&base_dir);
    std::fs::copy(&work.base_disk, &paths.disk).unwrap();
    let summary = create_base(&paths, work.base_save.as_deref()).unwrap();
    let base = Base::open(&paths).unwrap();
    let disk = DiskSource::raw(&work.custom_disk).unwrap();
    let input = EncodeInput {
        memory: work.custom_save.as_deref(),
        disk: &disk,
    };
    let out = dir.join("app.overlay");
    let options = EncodeOptions {
        properties: vec![("guest-ports".into(), "22,8080".into())],
        ..Default::default()
    };
    encode(&base, &input, &out, &options, &NoProgress).unwrap();
    (out, cloudlet_engine::hex::encode(&summary.id))
}

fn cloudlet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cloudlet"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn json_output_describes_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let (overlay, base_id) = make_overlay(dir.path());
    let out = cloudlet(&[
        "info-overlay",
        "--json",
        "--verify",
        overlay.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["base_id"], base_id.as_str());
    assert_eq!(v["format_version"], "2.0", "the file's version, as read");
    assert_eq!(v["file_size"], std::fs::metadata(&overlay).unwrap().len());
    assert_eq!(v["has_memory"], true);
    assert!(v["memory"]["raw"].as_u64().unwrap() > 0);
    assert!(v["disk"]["self_ref"].as_u64().unwrap() > 0);
    assert!(v["compression_ratio"].as_f64().unwrap() > 1.0);
    assert_eq!(v["properties"][0][1], "22,8080");
}

#[test]
fn human_output_has_the_counts_table() {
    let dir = tempfile::tempdir().unwrap();
    let (overlay, base_id) = make_overlay(dir.path());
    let out = cloudlet(&["info-overlay", overlay.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&base_id), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("memory ") && l.split_whitespace().count() == 7),
        "{text}"
    );
    assert!(text.contains("base-ref"), "{text}");
}

#[test]
fn damaged_or_missing_overlays_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (overlay, _) = make_overlay(dir.path());
    let mut bytes = std::fs::read(&overlay).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x40; // in the payload: only --verify can see it
    let bad = dir.path().join("bad.overlay");
    std::fs::write(&bad, &bytes).unwrap();
    let out = cloudlet(&["info-overlay", "--verify", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: ") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    std::fs::write(&bad, &bytes[..50]).unwrap();
    let out = cloudlet(&["info-overlay", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("truncated"));

    let out = cloudlet(&["info-overlay", "/nonexistent/x.overlay"]);
    assert!(!out.status.success());
}
