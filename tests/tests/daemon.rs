//! The real daemon binary: starts on an empty data dir, answers /health, stops cleanly on
//! SIGTERM, keeps its catalogue across restarts, repairs leftovers, refuses bad config.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use cloudlet_e2e::daemon::{binary, TempDir};
use cloudlet_e2e::Daemon;

#[test]
fn serves_health_and_restarts_on_the_same_data() {
    let mut d = Daemon::start("health").unwrap();
    let (status, body) = d.get("/health").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["bases"], 0);
    assert!(d.data_dir.join("cloudlet.db").exists());
    for sub in ["bases", "overlays", "sessions", "incoming"] {
        assert!(d.data_dir.join(sub).is_dir(), "{sub} missing");
    }
    let (status, _) = d.get("/no-such-route").unwrap();
    assert_eq!(status, 404);

    let status = d.stop().unwrap();
    assert!(
        status.success(),
        "SIGTERM should stop the daemon cleanly: {status}"
    );

    // Leftovers of an interrupted run are repaired at the next start.
    std::fs::write(d.data_dir.join("incoming/upload-in-progress"), b"partial").unwrap();
    std::fs::create_dir(d.data_dir.join("bases/orphan")).unwrap();
    let again = Daemon::start_in(&d.data_dir, &[]).unwrap();
    assert_eq!(again.get("/health").unwrap().0, 200);
    assert!(!d.data_dir.join("incoming/upload-in-progress").exists());
    assert!(!d.data_dir.join("bases/orphan").exists());
    assert!(
        again.log_text().contains("repaired"),
        "{}",
        again.log_text()
    );
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let tmp = TempDir::new("badconfig").unwrap();
    let out = std::process::Command::new(binary("cloudletd").unwrap())
        .env("CLOUDLET_DATA_DIR", tmp.0.join("data"))
        .env("CLOUDLET_DOMAIN_TYPE", "xen")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("domain_type"), "{err}");

    let config = tmp.0.join("c.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nunknown_key = 3\n").unwrap();
    let out = std::process::Command::new(binary("cloudletd").unwrap())
        .args(["--config", config.to_str().unwrap(), "print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_key"));

    std::fs::write(&config, "data_dir = \"/srv/x\"\ndomain_type = \"qemu\"\n").unwrap();
    let out = std::process::Command::new(binary("cloudletd").unwrap())
        .args(["--config", config.to_str().unwrap(), "print-config"])
        .env_remove("CLOUDLET_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("data_dir = \"/srv/x\"") && text.contains("domain_type = \"qemu\""),
        "{text}"
    );
}

#[test]
fn a_second_daemon_cannot_take_the_same_port() {
    let d = Daemon::start("port").unwrap();
    let tmp = TempDir::new("port2").unwrap();
    let mut child = std::process::Command::new(binary("cloudletd").unwrap())
        .env("CLOUDLET_LISTEN", d.addr.to_string())
        .env("CLOUDLET_DATA_DIR", tmp.0.join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        cloudlet_e2e::wait_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let status = status.expect("second daemon should exit");
    assert!(!status.success());
}
