//! `overlay_standby`: after an overlay session ends, its base is restored again and kept
//! paused; the next overlay session on that base starts by resuming it. Checked on the
//! fixture guest through the real daemon: the warm start is a resume (and the VM works:
//! console, forwarded port, an overlay made from it synthesizes), a `kill -9` leaves no
//! standby VM behind after the restart (which makes a new one), and deleting the base
//! destroys its standby.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{domains_with_prefix, fixture_guest, greeting, require_host, Daemon};
use serde_json::{json, Value};

const APP: &str = "nc -ll -p 8080 -e echo hello-from-guest >/dev/null 2>&1 &";

/// The `cloudlet_standby_vms` gauge.
fn standby_gauge(d: &Daemon) -> u64 {
    d.metric("cloudlet_standby_vms").unwrap()
}

/// Waits (up to 60 s) until the daemon reports a standby ready.
fn wait_for_standby(d: &Daemon) {
    let ready = cloudlet_e2e::wait_until(Duration::from_secs(60), || {
        (standby_gauge(d) == 1).then_some(())
    });
    assert!(ready.is_some(), "no standby after 60 s\n{}", d.log_text());
}

fn start_session(d: &Daemon, script: &[&str]) -> Value {
    let (status, s) = d
        .json(
            "POST",
            "/api/v1/overlays",
            Some(&json!({ "base": "tiny", "script": script, "guest_ports": [8080] })),
        )
        .unwrap();
    assert_eq!(status, 201, "{s}\n{}", d.log_text());
    assert_eq!(s["state"], "running", "{s}");
    s
}

fn stop(d: &Daemon, session: &Value) {
    let id = session["id"].as_str().unwrap();
    let (status, s) = d
        .json("POST", &format!("/api/v1/sessions/{id}/stop"), None)
        .unwrap();
    assert_eq!(status, 200, "{s}");
}

#[test]
fn the_next_overlay_session_resumes_a_standby() {
    if !require_host("the_next_overlay_session_resumes_a_standby") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("standby").unwrap();
    let data = tmp.0.join("data");
    let import = format!("{}:{}", guest.dir.display(), tmp.0.display());
    let env = [
        ("CLOUDLET_IMPORT_DIRS", import.as_str()),
        ("CLOUDLET_OVERLAY_STANDBY", "true"),
    ];
    let mut d = Daemon::start_in(&data, &env).unwrap();
    let (status, base) = d
        .json("POST", "/api/v1/bases", Some(&guest.base_request("tiny")))
        .unwrap();
    assert_eq!(status, 201, "{base}\n{}", d.log_text());
    assert_eq!(standby_gauge(&d), 0, "no overlay session ended yet");

    // 1. The first session restores the base itself; its end makes the standby.
    let cold = start_session(&d, &["true"]);
    assert!(cold["timings"].get("resume_standby").is_none(), "{cold}");
    stop(&d, &cold);
    wait_for_standby(&d);
    let standby = d.standby_vms().unwrap();
    assert_eq!(standby.len(), 1, "one paused standby VM: {standby:?}");
    let state = cloudlet_e2e::virsh(&["domstate", &standby[0]]).unwrap();
    assert_eq!(state.trim(), "paused");

    // 2. The next one is that VM, resumed: console, app and forwarded port work, and the
    // overlay made from it synthesizes into a VM that answers.
    let warm = start_session(&d, &[APP, "echo standby > /mnt/data/marker && sync"]);
    let t = &warm["timings"];
    assert!(
        t["resume_standby"].is_u64()
            && t.get("resume_stream").is_none()
            && t.get("resume").is_none(),
        "a resume, not a restore: {t}"
    );
    assert_eq!(warm["vm_name"], standby[0].as_str(), "{warm}");
    assert_eq!(standby_gauge(&d), 0, "taken");
    let port = warm["host_ports"]["8080"].as_u64().unwrap();
    assert_eq!(greeting(port).unwrap(), "hello-from-guest");
    eprintln!("cold start timings {}, warm {}", cold["timings"], t);
    let id = warm["id"].as_str().unwrap();
    let (status, done) = d
        .json("POST", &format!("/api/v1/sessions/{id}/finish"), None)
        .unwrap();
    assert_eq!(status, 200, "{done}\n{}", d.log_text());
    let overlay = done["overlay_id"].as_str().unwrap();
    let (status, syn) = d
        .json(
            "POST",
            "/api/v1/synthesis",
            Some(&json!({ "base": "tiny", "overlay_id": overlay })),
        )
        .unwrap();
    assert_eq!(status, 201, "{syn}\n{}", d.log_text());
    assert_eq!(
        greeting(syn["host_ports"]["8080"].as_u64().unwrap()).unwrap(),
        "hello-from-guest"
    );
    let syn_id = syn["id"].as_str().unwrap();
    let (_, out) = d
        .json(
            "POST",
            &format!("/api/v1/sessions/{syn_id}/run"),
            Some(&json!({ "command": "cat /mnt/data/marker" })),
        )
        .unwrap();
    assert_eq!(out["output"].as_str().unwrap().trim(), "standby", "{out}");
    stop(&d, &syn);

    // 3. The finish made a new standby; a crash leaves it, the restart destroys it.
    wait_for_standby(&d);
    let left = d.standby_vms().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    d.kill();
    let d = Daemon::start_in(&data, &env).unwrap();
    let gone = cloudlet_e2e::wait_until(Duration::from_secs(30), || {
        (!domains_with_prefix("cloudlet-").contains(&left[0])).then_some(())
    });
    assert!(
        gone.is_some(),
        "the standby of the killed daemon still runs\n{}",
        d.log_text()
    );
    assert!(!data
        .join("sessions")
        .join(left[0].trim_start_matches("cloudlet-"))
        .exists());
    // The restarted daemon makes a new standby for the base of the last overlay session:
    // the first session after a restart starts warm too.
    wait_for_standby(&d);
    let remade = d.standby_vms().unwrap();
    assert!(remade.len() == 1 && remade[0] != left[0], "{remade:?}");

    // 4. Deleting the base destroys its standby.
    let again = start_session(&d, &["true"]);
    stop(&d, &again);
    wait_for_standby(&d);
    let standby = d.standby_vms().unwrap();
    assert_eq!(standby.len(), 1, "{standby:?}");
    let (status, out) = d
        .json("DELETE", "/api/v1/bases/tiny?force=true", None)
        .unwrap();
    assert_eq!(status, 200, "{out}\n{}", d.log_text());
    assert!(!domains_with_prefix("cloudlet-").contains(&standby[0]));
    assert_eq!(standby_gauge(&d), 0);
}
