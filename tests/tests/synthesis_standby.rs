//! `synthesis_standby`: when a base is made (and no base has a standby), after a synthesis
//! session on a base ends, and at a restart, a restore of that base is started and fed the
//! base's pages; the next synthesis on it writes only the overlay's pages into that
//! restore. Checked on the fixture guest through the real daemon: the warm synthesis
//! finishes the standby's restore (its VM, app, forwarded port
//! and the overlay's files on the disk rewritten under the waiting QEMU); a corrupt
//! overlay fails cleanly and costs only the standby; a disk-only overlay, which cannot
//! finish it, boots in its place; a `kill -9` leaves no standby VM behind the restart,
//! which makes a new one for the first synthesis after it.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{
    domains_with_prefix, fixture_guest, greeting, require_host, run_when_up, Daemon,
};
use serde_json::{json, Value};

const APP: &str = "nc -ll -p 8080 -e echo hello-from-guest >/dev/null 2>&1 &";

/// The `cloudlet_synthesis_standby_vms` gauge.
fn standby_gauge(d: &Daemon) -> u64 {
    d.metric("cloudlet_synthesis_standby_vms").unwrap()
}

/// Waits (up to 60 s) until the daemon reports a standby ready; returns its VM (the
/// `cloudlet-*` VM of this data directory that no session has).
fn wait_for_standby(d: &Daemon) -> String {
    wait_for_standbys(d, 1, &[]).remove(0)
}

/// Waits (up to 60 s) until the daemon reports `n` standbys ready and runs `n` standby
/// VMs (`cloudlet-*` VMs of this data directory that no session has), none of them in
/// `gone`; returns those VMs.
fn wait_for_standbys(d: &Daemon, n: usize, gone: &[String]) -> Vec<String> {
    let standbys = || d.standby_vms().unwrap();
    let ready = cloudlet_e2e::wait_until(Duration::from_secs(60), || {
        let vms = standbys();
        (standby_gauge(d) == n as u64 && vms.len() == n && !vms.iter().any(|v| gone.contains(v)))
            .then_some(vms)
    });
    ready.unwrap_or_else(|| {
        panic!(
            "not {n} standbys (gauge {}, VMs {:?}, gone {gone:?}) after 60 s\n{}",
            standby_gauge(d),
            standbys(),
            d.log_text()
        )
    })
}

fn synthesize(d: &Daemon, overlay: &str) -> Value {
    synthesize_on(d, "tiny", overlay)
}

fn synthesize_on(d: &Daemon, base: &str, overlay: &str) -> Value {
    let (status, s) = d
        .json(
            "POST",
            "/api/v1/synthesis",
            Some(&json!({ "base": base, "overlay_id": overlay })),
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

/// Makes an overlay on `tiny` running `script` (then finished).
fn make_overlay(d: &Daemon, script: &[&str], disk_only: bool) -> String {
    make_overlay_on(d, "tiny", script, disk_only)
}

fn make_overlay_on(d: &Daemon, base: &str, script: &[&str], disk_only: bool) -> String {
    let (status, done) = d
        .json(
            "POST",
            "/api/v1/overlays",
            Some(&json!({
                "base": base, "script": script, "guest_ports": [8080],
                "disk_only": disk_only, "finish": true,
            })),
        )
        .unwrap();
    assert_eq!(status, 201, "{done}\n{}", d.log_text());
    done["overlay_id"].as_str().unwrap().to_string()
}

/// The synthesized VM answers on its forwarded port and has the overlay's file.
fn check_app(d: &Daemon, session: &Value) {
    let port = session["host_ports"]["8080"].as_u64().unwrap();
    assert_eq!(greeting(port).unwrap(), "hello-from-guest");
    let id = session["id"].as_str().unwrap();
    let (_, out) = d
        .json(
            "POST",
            &format!("/api/v1/sessions/{id}/run"),
            Some(&json!({ "command": "cat /mnt/data/marker" })),
        )
        .unwrap();
    assert_eq!(out["output"].as_str().unwrap().trim(), "primed", "{out}");
}

#[test]
fn the_next_synthesis_finishes_a_primed_restore() {
    if !require_host("the_next_synthesis_finishes_a_primed_restore") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("synstandby").unwrap();
    let data = tmp.0.join("data");
    let import = format!("{}:{}", guest.dir.display(), tmp.0.display());
    let env = [
        ("CLOUDLET_IMPORT_DIRS", import.as_str()),
        ("CLOUDLET_SYNTHESIS_STANDBY", "true"),
    ];
    let mut d = Daemon::start_in(&data, &env).unwrap();
    assert_eq!(standby_gauge(&d), 0, "no base yet");
    let (status, base) = d
        .json("POST", "/api/v1/bases", Some(&guest.base_request("tiny")))
        .unwrap();
    assert_eq!(status, 201, "{base}\n{}", d.log_text());

    // 1. A new base gets the standby at once (no other base has one); a restart before
    // any synthesis makes it again, for the newest base.
    let first = wait_for_standby(&d);
    d.stop().unwrap();
    d = Daemon::start_in(&data, &env).unwrap();
    let remade = wait_for_standby(&d);
    assert_ne!(remade, first, "a new standby after the restart");
    let overlay = make_overlay(&d, &[APP, "echo primed > /mnt/data/marker && sync"], false);

    // 2. The first synthesis finishes it (same VM, app, port and disk files), and so does
    // the next one: each synthesis' end makes the next standby.
    for _ in 0..2 {
        let standby = wait_for_standby(&d);
        let warm = synthesize(&d, &overlay);
        let t = &warm["timings"];
        assert!(
            t["restore_standby"].is_u64() && t.get("restore_stream").is_none(),
            "the standby's restore: {t}"
        );
        assert_eq!(warm["vm_name"], standby.as_str(), "{warm}");
        assert_eq!(standby_gauge(&d), 0, "taken");
        check_app(&d, &warm);
        eprintln!("warm synthesis timings {t}");
        stop(&d, &warm);
    }

    // 3. A corrupt overlay fails cleanly: the standby goes with it, the next is made, and
    // a good overlay then synthesizes warm again.
    let standby = wait_for_standby(&d);
    let url = format!("/api/v1/overlays/{overlay}/file");
    let (status, mut bytes) = d.send("GET", &url, &[], &[]).unwrap();
    assert_eq!(status, 200);
    let at = bytes.len() - bytes.len() / 4; // in a late segment
    bytes[at] ^= 0x40;
    let (status, v) = d
        .upload("/api/v1/synthesis/upload?base=tiny", &bytes)
        .unwrap();
    assert_eq!(status, 422, "{v}\n{}", d.log_text());
    assert_eq!(v["error"]["code"], "overlay-corrupt", "{v}");
    assert!(
        !domains_with_prefix("cloudlet-").contains(&standby),
        "the standby's VM outlived the failed synthesis"
    );
    let next = wait_for_standby(&d);
    assert_ne!(next, standby);
    let warm = synthesize(&d, &overlay);
    assert!(warm["timings"]["restore_standby"].is_u64(), "{warm}");
    check_app(&d, &warm);
    stop(&d, &warm);

    // 4. A disk-only overlay cannot finish a restore: it boots, in the standby's place.
    let disk_only = make_overlay(&d, &["echo primed > /mnt/data/marker && sync"], true);
    let standby = wait_for_standby(&d);
    let booted = synthesize(&d, &disk_only);
    assert!(
        booted["timings"]["boot"].is_u64() && booted["timings"].get("restore_standby").is_none(),
        "{booted}"
    );
    // Its directory and VM name were the standby's: the standby's restore is gone, and
    // the VM of that name is the booted one.
    assert_eq!(booted["vm_name"], standby.as_str(), "{booted}");
    assert_eq!(standby_gauge(&d), 0);
    let id = booted["id"].as_str().unwrap();
    assert_eq!(run_when_up(&d, id, "cat /mnt/data/marker"), "primed");
    stop(&d, &booted);

    // 5. A crash leaves a standby; the restart destroys it and removes its directory.
    let left = wait_for_standby(&d);
    d.kill();
    let d = Daemon::start_in(&data, &env).unwrap();
    let gone = cloudlet_e2e::wait_until(Duration::from_secs(30), || {
        (!domains_with_prefix("cloudlet-").contains(&left)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the standby of the killed daemon still runs\n{}",
        d.log_text()
    );
    assert!(!data
        .join("sessions")
        .join(left.trim_start_matches("cloudlet-"))
        .exists());
    // The restarted daemon makes a new standby for the base of the last synthesis, and the
    // first synthesis after the restart finishes it.
    let remade = wait_for_standby(&d);
    assert_ne!(remade, left);
    let warm = synthesize(&d, &overlay);
    assert!(warm["timings"]["restore_standby"].is_u64(), "{warm}");
    assert_eq!(warm["vm_name"], remade.as_str());
    check_app(&d, &warm);
}

/// Whether `session` finished a standby's restore (else it restored cold).
fn warm(session: &Value) -> bool {
    let t = &session["timings"];
    match (t["restore_standby"].is_u64(), t["restore_stream"].is_u64()) {
        (true, false) => true,
        (false, true) => false,
        _ => panic!("neither a warm nor a cold restore: {t}"),
    }
}

#[test]
fn the_bases_used_lately_keep_standbys_within_a_memory_budget() {
    if !require_host("the_bases_used_lately_keep_standbys_within_a_memory_budget") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("synstandbys").unwrap();
    let data = tmp.0.join("data");
    let import = format!("{}:{}", guest.dir.display(), tmp.0.display());
    // The fixture's bases have 96 MiB of RAM: 1024 MiB holds both standbys; 1 MiB holds
    // none, but the base just used always gets one.
    let env = |budget_mib| {
        [
            ("CLOUDLET_IMPORT_DIRS", import.clone()),
            ("CLOUDLET_SYNTHESIS_STANDBY", "true".to_string()),
            ("CLOUDLET_SYNTHESIS_STANDBY_MEMORY_MIB", budget_mib),
        ]
    };
    let start = |budget: &str| {
        let env = env(budget.to_string());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Daemon::start_in(&data, &env).unwrap()
    };
    let mut d = start("1024");
    let mut overlays = Vec::new();
    for (i, base) in ["tiny", "tiny2"].into_iter().enumerate() {
        let (status, made) = d
            .json("POST", "/api/v1/bases", Some(&guest.base_request(base)))
            .unwrap();
        assert_eq!(status, 201, "{made}\n{}", d.log_text());
        // 1. Each new base gets a standby while both fit.
        wait_for_standbys(&d, i + 1, &[]);
        overlays.push(make_overlay_on(
            &d,
            base,
            &[APP, "echo primed > /mnt/data/marker && sync"],
            false,
        ));
    }
    // 2. A synthesis on either base is warm, and its end makes that base's standby again.
    for (base, overlay) in ["tiny2", "tiny"].into_iter().zip(overlays.iter().rev()) {
        let s = synthesize_on(&d, base, overlay);
        assert!(warm(&s), "{base}: {s}");
        check_app(&d, &s);
        stop(&d, &s);
        wait_for_standbys(&d, 2, &[]);
    }

    // 3. Restarted with room for one: the base of the newest synthesis (tiny) gets it.
    d.stop().unwrap();
    let d = start("1");
    let only = wait_for_standbys(&d, 1, &[]);
    let s = synthesize_on(&d, "tiny2", &overlays[1]);
    assert!(!warm(&s), "tiny2 has no standby: {s}");
    check_app(&d, &s);
    stop(&d, &s);
    // tiny2, just used, gets the standby: tiny's makes room.
    let tiny2s = wait_for_standbys(&d, 1, &only);
    let s = synthesize_on(&d, "tiny", &overlays[0]);
    assert!(!warm(&s), "tiny's standby was evicted: {s}");
    stop(&d, &s);
    wait_for_standbys(&d, 1, &tiny2s);
    let s = synthesize_on(&d, "tiny", &overlays[0]);
    assert!(warm(&s), "tiny's standby is back: {s}");
    check_app(&d, &s);
}
