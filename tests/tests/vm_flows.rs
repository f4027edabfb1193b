//! The three flows through the real daemon, on real VMs (libvirt + QEMU/TCG): create a base
//! from the fixture guest, customize it into an overlay (files, a TCP server, a process
//! counting in memory), synthesize it from an upload, and check the synthesized VM resumed
//! exactly where the customized one was saved. Bad overlays are refused with nothing left
//! running.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{
    domains_with_prefix, fixture_guest, greeting, require_host, run_when_up, Daemon,
};
use serde_json::json;

const CUSTOMIZE: [&str; 6] = [
    "dd if=/dev/urandom of=/mnt/data/random.bin bs=1024 count=4096 2>/dev/null",
    "cp /mnt/data/random.bin /mnt/data/random-copy.bin && cp /bin/busybox /mnt/data/busybox.copy",
    "seq 1 20000 > /mnt/data/numbers.txt && sync",
    "(i=0; while :; do i=$((i+1)); echo $i > /counter; sleep 0.1; done) >/dev/null 2>&1 & echo $! > /counter.pid",
    "nc -ll -p 8080 -e echo hello-from-guest >/dev/null 2>&1 &",
    "true",
];
const SUMS: &str = "cd /mnt/data && md5sum random.bin random-copy.bin busybox.copy numbers.txt";

fn run(d: &Daemon, session: &str, command: &str) -> String {
    let (status, out) = d
        .json(
            "POST",
            &format!("/api/v1/sessions/{session}/run"),
            Some(&json!({ "command": command })),
        )
        .unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["status"], 0, "`{command}` failed: {out}");
    out["output"].as_str().unwrap().trim().to_string()
}

/// The pid of session `id`'s QEMU, if one runs.
fn qemu_pid(id: &str) -> Option<String> {
    let pid = cloudlet_e2e::run("pgrep", &["-f", &format!("guest=cloudlet-{id},")]).ok()?;
    Some(pid.trim().to_string())
}

/// Whether session `id`'s QEMU is gone within 30 s.
fn qemu_ends(id: &str) -> bool {
    cloudlet_e2e::wait_until(Duration::from_secs(30), || {
        qemu_pid(id).is_none().then_some(())
    })
    .is_some()
}

fn session_vms(d: &Daemon) -> Vec<String> {
    let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
    let ours: Vec<String> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["vm_name"].as_str().map(String::from))
        .collect();
    domains_with_prefix("cloudlet-")
        .into_iter()
        .filter(|d| ours.contains(d))
        .collect()
}

#[test]
fn base_overlay_synthesis_through_the_daemon() {
    if !require_host("base_overlay_synthesis_through_the_daemon") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("flows").unwrap();
    let import = format!("{}:{}", guest.dir.display(), tmp.0.display());
    // A QEMU that stops moving a stream is destroyed after 8 s (32 s while libvirt starts
    // it: 4b, 4c), not 60.
    let mut d = Daemon::start_in(
        &tmp.0.join("data"),
        &[
            ("CLOUDLET_IMPORT_DIRS", &import),
            ("CLOUDLET_STREAM_STALL_TIMEOUT_S", "8"),
        ],
    )
    .unwrap();
    let f = |name: &str| guest.dir.join(name).display().to_string();

    // 1. base: boot the fixture disk, wait for its shell, save, hash.
    let (status, base_session) = d
        .json(
            "POST",
            "/api/v1/bases",
            Some(&json!({
                "name": "tiny", "disk": f("disk.img"), "kernel": f("vmlinuz"), "initrd": f("initrd.img"),
                "cmdline": "console=ttyS0 quiet init_on_free=1", "memory_mib": 96, "vcpus": 1,
                "guest_ports": [8080], "ready_marker": "CLOUDLET-GUEST-READY", "finish": true
            })),
        )
        .unwrap();
    assert_eq!(status, 201, "{base_session}\n{}", d.log_text());
    assert_eq!(base_session["state"], "finished");
    let base_id = base_session["base_id"].as_str().unwrap().to_string();
    let (_, bases) = d.json("GET", "/api/v1/bases", None).unwrap();
    assert_eq!(bases.as_array().unwrap().len(), 1);
    assert_eq!(bases[0]["id"], base_id.as_str());
    assert_eq!(
        d.json("GET", "/api/v1/bases/tiny", None).unwrap().1["id"],
        base_id.as_str()
    );

    // 2. overlay: resume the base, customize with a script, check the app, finish.
    let (status, ov) = d
        .json(
            "POST",
            "/api/v1/overlays",
            Some(&json!({ "base": "tiny", "script": CUSTOMIZE })),
        )
        .unwrap();
    assert_eq!(status, 201, "{ov}\n{}", d.log_text());
    assert_eq!(ov["state"], "running");
    assert!(
        ov["script_results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 0),
        "{ov}"
    );
    let ov_id = ov["id"].as_str().unwrap().to_string();
    assert_eq!(
        greeting(ov["host_ports"]["8080"].as_u64().unwrap()).unwrap(),
        "hello-from-guest"
    );
    let sums = run(&d, &ov_id, SUMS);
    let pid = run(&d, &ov_id, "cat /counter.pid");
    std::thread::sleep(Duration::from_millis(300));
    let counter_before: u64 = run(&d, &ov_id, "cat /counter").parse().unwrap();
    // Finish watched as a progress stream: save and encode steps, then the session.
    let reply = d
        .send_full(
            "POST",
            &format!("/api/v1/sessions/{ov_id}/finish"),
            &[("Accept", "application/x-ndjson")],
            &[],
        )
        .unwrap();
    assert_eq!(reply.status, 200);
    let lines: Vec<serde_json::Value> = String::from_utf8(reply.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "step")
        .filter_map(|l| l["step"].as_str())
        .collect();
    // Pipelined: the save into a FIFO and the encode start together.
    assert_eq!(steps, ["save_stream", "encode"], "{lines:?}");
    assert!(lines.iter().any(|l| l["type"] == "progress"), "{lines:?}");
    let end = lines.last().unwrap();
    assert_eq!(
        (&end["type"], &end["status"]),
        (&json!("result"), &json!(200)),
        "{end}"
    );
    let done = end["body"].clone();
    assert_eq!(done["state"], "finished");
    let overlay_id = done["overlay_id"].as_str().unwrap().to_string();
    let (_, overlay) = d
        .json("GET", &format!("/api/v1/overlays/{overlay_id}"), None)
        .unwrap();
    assert!(
        overlay.get("file_path").is_none(),
        "no host path on the wire: {overlay}"
    );
    // Downloads: whole, and resumed from an offset.
    let url = format!("/api/v1/overlays/{overlay_id}/file");
    let (status, bytes) = d.send("GET", &url, &[], &[]).unwrap();
    assert_eq!(status, 200);
    assert_eq!(bytes.len() as u64, overlay["file_size"].as_u64().unwrap());
    eprintln!("overlay: {} bytes, stats {}", bytes.len(), overlay["stats"]);
    let tail = d
        .send_full("GET", &url, &[("Range", "bytes=4096-")], &[])
        .unwrap();
    assert_eq!((tail.status, &tail.body[..]), (206, &bytes[4096..]));
    eprintln!("base session timings {}", base_session["timings"]);
    eprintln!("overlay session timings {}", done["timings"]);

    // 3. synthesis from an upload: resumed, same files, same process, counter continued.
    let (status, syn) = d
        .upload("/api/v1/synthesis/upload?base=tiny", &bytes)
        .unwrap();
    assert_eq!(status, 201, "{syn}\n{}", d.log_text());
    assert_eq!(syn["state"], "running");
    eprintln!("synthesis timings {}", syn["timings"]);
    let syn_id = syn["id"].as_str().unwrap().to_string();
    // The memory was streamed into the restore: no save file was written, none is left.
    assert!(
        syn["timings"]["restore_stream"].is_u64() && syn["timings"].get("restore").is_none(),
        "a streamed restore: {}",
        syn["timings"]
    );
    let session_dir = d.data_dir.join("sessions").join(&syn_id);
    assert_eq!(
        file_names(&session_dir),
        ["console.sock", "disk.qcow2"],
        "only the VM's files stay"
    );
    assert_eq!(
        greeting(syn["host_ports"]["8080"].as_u64().unwrap()).unwrap(),
        "hello-from-guest"
    );
    assert_eq!(run(&d, &syn_id, SUMS), sums);
    assert!(
        !listens_on_all_addresses(syn["host_ports"]["8080"].as_u64().unwrap()),
        "by default a guest port is forwarded on the API's loopback address only"
    );
    assert_eq!(
        run(&d, &syn_id, &format!("kill -0 {pid} && echo alive")),
        "alive"
    );
    let after: u64 = run(&d, &syn_id, "cat /counter").parse().unwrap();
    assert!(
        after >= counter_before,
        "counter went back: {counter_before} → {after}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let later: u64 = run(&d, &syn_id, "cat /counter").parse().unwrap();
    assert!(later > after, "counter stopped: {after} → {later}");

    // Synthesis from the stored overlay, by id, works too.
    let (status, syn2) = d
        .json(
            "POST",
            "/api/v1/synthesis",
            Some(&json!({ "base": base_id, "overlay_id": overlay_id })),
        )
        .unwrap();
    assert_eq!(status, 201, "{syn2}");
    assert_eq!(run(&d, syn2["id"].as_str().unwrap(), SUMS), sums);

    // 4. bad overlays: refused with a clear error, no VM left behind.
    let vms_before = session_vms(&d);
    let mut corrupt = bytes.clone();
    let at = corrupt.len() - 1000;
    corrupt[at] ^= 0x10;
    let (status, err) = d
        .upload("/api/v1/synthesis/upload?base=tiny", &corrupt)
        .unwrap();
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["code"], "overlay-corrupt", "{err}");
    let (status, err) = d
        .upload(
            "/api/v1/synthesis/upload?base=tiny",
            &bytes[..bytes.len() / 2],
        )
        .unwrap();
    assert_eq!(status, 422, "{err}");
    let (status, err) = d
        .upload(
            "/api/v1/synthesis/upload?base=tiny",
            b"not an overlay at all",
        )
        .unwrap();
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("overlay-corrupt")),
        "{err}"
    );

    // An overlay for another base: register the fixture's own snapshot as a second base.
    let (status, other) = d
        .json("POST", "/api/v1/bases/add", Some(&json!({ "name": "other", "disk": f("guest-disk.img"), "save_file": f("guest.save") })))
        .unwrap();
    assert_eq!(status, 201, "{other}");
    let (status, err) = d
        .upload("/api/v1/synthesis/upload?base=other", &bytes)
        .unwrap();
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("overlay-base-mismatch")),
        "{err}"
    );
    assert_eq!(
        session_vms(&d),
        vms_before,
        "a refused synthesis left a VM running"
    );

    // 4b. a streamed restore whose stream breaks: the device goes away mid-upload, QEMU
    // dies mid-restore, or QEMU stops (SIGSTOP: alive, reading nothing). Each fails with a
    // clear error, leaves no VM, no files and no stuck libvirt job (the syntheses below
    // still work); the stopped one is destroyed once the stall limit passed.
    let part = &bytes[..bytes.len() / 2];
    let rest = &bytes[bytes.len() / 2..];
    for cause in ["device gone", "qemu killed", "qemu stopped"] {
        let mut held = d.stalled_upload("/api/v1/synthesis/upload?base=tiny", part);
        let (id, qemu) = cloudlet_e2e::wait_until(Duration::from_secs(60), || {
            let (_, sessions) = d.json("GET", "/api/v1/sessions", None).ok()?;
            let s = sessions
                .as_array()?
                .iter()
                .find(|s| s["state"] == "decoding")?
                .clone();
            // QEMU runs once libvirt has read the stream's header: the restore started.
            let vm = s["vm_name"].as_str()?;
            let pid = cloudlet_e2e::run("pgrep", &["-f", &format!("guest={vm},")]).ok()?;
            Some((s["id"].as_str()?.to_string(), pid.trim().to_string()))
        })
        .unwrap_or_else(|| panic!("{cause}: no restore started\n{}", d.log_text()));
        let (status, text) = if cause == "device gone" {
            drop(held);
            (None, String::new())
        } else {
            let signal = if cause == "qemu killed" {
                "-9"
            } else {
                "-STOP"
            };
            cloudlet_e2e::run("kill", &[signal, &qemu]).unwrap();
            use std::io::{Read, Write};
            let _ = held
                .write_all(format!("{:x}\r\n", rest.len()).as_bytes())
                .and_then(|()| held.write_all(rest))
                .and_then(|()| held.write_all(b"\r\n0\r\n\r\n"));
            let mut text = String::new();
            let _ = held.read_to_string(&mut text);
            let status = text.split_whitespace().nth(1).map(String::from);
            (status, text)
        };
        let failed = cloudlet_e2e::wait_until(Duration::from_secs(60), || {
            let (_, s) = d
                .json("GET", &format!("/api/v1/sessions/{id}"), None)
                .ok()?;
            (s["state"] == "failed").then_some(s)
        })
        .unwrap_or_else(|| panic!("{cause}: session {id} did not fail\n{}", d.log_text()));
        eprintln!("{cause}: {}", failed["error"]);
        if let Some(status) = status {
            assert_eq!(status, "502", "{cause}: {text}");
            assert!(text.contains("hypervisor-error"), "{cause}: {text}");
            assert!(text.contains("restore"), "{cause}: {text}");
            if cause == "qemu stopped" {
                assert!(
                    text.contains("made no progress with the restore stream"),
                    "{cause}: {text}"
                );
            }
        }
        assert!(
            !d.data_dir.join("sessions").join(&id).exists(),
            "{cause}: files left"
        );
        assert!(qemu_ends(&id), "{cause}: QEMU of session {id} still runs");
        assert_eq!(session_vms(&d), vms_before, "{cause}: a VM was left");
    }

    // 4c. a QEMU that stops during a streamed save: the finish fails once the stall limit
    // passed, the VM is destroyed, and the session says why.
    let (status, stuck) = d
        .json("POST", "/api/v1/overlays", Some(&json!({ "base": "tiny" })))
        .unwrap();
    assert_eq!(status, 201, "{stuck}");
    let stuck_id = stuck["id"].as_str().unwrap().to_string();
    let qemu = qemu_pid(&stuck_id).unwrap();
    cloudlet_e2e::run("kill", &["-STOP", &qemu]).unwrap();
    let asked = std::time::Instant::now();
    let (status, err) = d
        .json("POST", &format!("/api/v1/sessions/{stuck_id}/finish"), None)
        .unwrap();
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (502, Some("hypervisor-error")),
        "{err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("made no progress with the save stream"),
        "{err}"
    );
    eprintln!("stalled save refused after {:?}: {err}", asked.elapsed());
    let (_, failed) = d
        .json("GET", &format!("/api/v1/sessions/{stuck_id}"), None)
        .unwrap();
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        qemu_ends(&stuck_id),
        "the stopped QEMU of {stuck_id} still runs"
    );
    assert_eq!(session_vms(&d), vms_before, "the stalled save left a VM");

    // 5. paths outside the import directories are refused.
    let (status, err) = d
        .json(
            "POST",
            "/api/v1/synthesis",
            Some(&json!({ "base": "tiny", "overlay_path": "/etc/passwd" })),
        )
        .unwrap();
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (403, Some("path-not-allowed")),
        "{err}"
    );

    // 6. export the base, import it into a second cloudlet, synthesize the overlay there.
    let (status, archive) = d
        .send("GET", "/api/v1/bases/tiny/export", &[], &[])
        .unwrap();
    assert_eq!(status, 200);
    // This one forwards guest ports on every address, for devices on the network.
    // Its syntheses write a save file and restore it (the path before streaming).
    let other_cloudlet = Daemon::start_in(
        &tmp.0.join("data2"),
        &[
            ("CLOUDLET_PORTS_ADDRESS", "0.0.0.0"),
            ("CLOUDLET_RESTORE_STREAM", "off"),
        ],
    )
    .unwrap();
    let (status, imported) = other_cloudlet
        .upload("/api/v1/bases/import?name=tiny-copy", &archive)
        .unwrap();
    assert_eq!(status, 201, "{imported}");
    assert_eq!(
        imported["id"],
        base_id.as_str(),
        "a base's id is its content: equal on every cloudlet"
    );
    let mut damaged = archive.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 1;
    let (status, err) = other_cloudlet
        .upload("/api/v1/bases/import?name=broken", &damaged)
        .unwrap();
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid-request")),
        "{err}"
    );
    let (status, remote) = other_cloudlet
        .upload("/api/v1/synthesis/upload?base=tiny-copy", &bytes)
        .unwrap();
    assert_eq!(status, 201, "{remote}\n{}", other_cloudlet.log_text());
    let remote_id = remote["id"].as_str().unwrap().to_string();
    assert!(
        remote["timings"]["restore"].is_u64() && remote["timings"].get("restore_stream").is_none(),
        "restore_stream off restores a file: {}",
        remote["timings"]
    );
    assert_eq!(run(&other_cloudlet, &remote_id, SUMS), sums);
    let remote_port = remote["host_ports"]["8080"].as_u64().unwrap();
    assert_eq!(greeting(remote_port).unwrap(), "hello-from-guest");
    assert!(
        listens_on_all_addresses(remote_port),
        "ports_address 0.0.0.0 was not applied to port {remote_port}"
    );
    let (status, _) = other_cloudlet
        .json("POST", &format!("/api/v1/sessions/{remote_id}/stop"), None)
        .unwrap();
    assert_eq!(status, 200);
    drop(other_cloudlet);

    // 7. the daemon is killed (kill -9) and started again: both synthesized VMs run on,
    // are re-adopted, answer on their ports and keep their state.
    d.kill();
    let d = Daemon::start_in(&tmp.0.join("data"), &[("CLOUDLET_IMPORT_DIRS", &import)]).unwrap();
    for s in [&syn, &syn2] {
        let id = s["id"].as_str().unwrap();
        let (_, now) = d
            .json("GET", &format!("/api/v1/sessions/{id}"), None)
            .unwrap();
        assert_eq!(
            now["state"],
            "running",
            "re-adopted: {now}\n{}",
            d.log_text()
        );
        assert_eq!(
            greeting(s["host_ports"]["8080"].as_u64().unwrap()).unwrap(),
            "hello-from-guest"
        );
        assert_eq!(run(&d, id, SUMS), sums);
    }

    // 8. clean up: deleting a base with overlays needs force; stopping sessions removes VMs.
    let (status, _) = d.json("DELETE", "/api/v1/bases/tiny", None).unwrap();
    assert_eq!(status, 409);
    for id in [&syn_id, syn2["id"].as_str().unwrap()] {
        let (status, s) = d
            .json("POST", &format!("/api/v1/sessions/{id}/stop"), None)
            .unwrap();
        assert_eq!((status, s["state"].as_str()), (200, Some("stopped")));
    }
    let (status, _) = d
        .json("DELETE", "/api/v1/bases/tiny?force=true", None)
        .unwrap();
    assert_eq!(status, 200);
    let overlay_file = d.data_dir.join(format!("overlays/{overlay_id}.overlay"));
    assert!(
        !overlay_file.exists(),
        "the overlay file goes with its base"
    );
    assert!(
        session_vms(&d).is_empty(),
        "VMs left: {:?}",
        session_vms(&d)
    );
}

#[test]
fn disk_only_overlay_boots_and_survives_a_restart() {
    if !require_host("disk_only_overlay_boots_and_survives_a_restart") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("diskonly").unwrap();
    let import = guest.dir.display().to_string();
    let data = tmp.0.join("data");
    let mut d = Daemon::start_in(&data, &[("CLOUDLET_IMPORT_DIRS", &import)]).unwrap();
    let f = |name: &str| guest.dir.join(name).display().to_string();
    let (status, base) = d
        .json(
            "POST",
            "/api/v1/bases",
            Some(&json!({
                "name": "tiny", "disk": f("disk.img"), "kernel": f("vmlinuz"), "initrd": f("initrd.img"),
                "cmdline": "console=ttyS0 quiet init_on_free=1", "memory_mib": 96,
                "ready_marker": "CLOUDLET-GUEST-READY", "finish": true
            })),
        )
        .unwrap();
    assert_eq!(status, 201, "{base}");

    // Elijah's -d: only the disk changes travel; synthesis boots the VM from that disk.
    let script = [
        "echo disk-only-$((6*7)) > /mnt/data/marker.txt && sync",
        "echo in-memory > /memory-only",
    ];
    let (status, ov) = d
        .json(
            "POST",
            "/api/v1/overlays",
            Some(&json!({ "base": "tiny", "disk_only": true, "script": script, "finish": true })),
        )
        .unwrap();
    assert_eq!(status, 201, "{ov}");
    let (_, overlay) = d
        .json(
            "GET",
            &format!("/api/v1/overlays/{}", ov["overlay_id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert_eq!(overlay["disk_only"], true);
    assert_eq!(overlay["stats"]["has_memory"], false);
    let (status, syn) = d
        .json(
            "POST",
            "/api/v1/synthesis",
            Some(&json!({ "base": "tiny", "overlay_id": overlay["id"] })),
        )
        .unwrap();
    assert_eq!(status, 201, "{syn}\n{}", d.log_text());
    assert!(
        syn["timings"]["boot"].is_u64(),
        "a disk-only synthesis boots: {syn}"
    );
    let syn_id = syn["id"].as_str().unwrap();
    assert_eq!(
        run_when_up(&d, syn_id, "cat /mnt/data/marker.txt"),
        "disk-only-42"
    );
    assert_eq!(
        run_when_up(&d, syn_id, "test -e /memory-only || echo fresh-boot"),
        "fresh-boot"
    );

    // A daemon killed (kill -9) with a VM running and a synthesis caught mid-decode: the
    // next start re-adopts the running VM (it answers, `run` and `stop` work on it) and
    // fails the interrupted synthesis, whose files are removed.
    let vm = syn["vm_name"].as_str().unwrap().to_string();
    assert_eq!(domains_with_prefix(&vm), vec![vm.clone()]);
    let overlay_bytes = d
        .send(
            "GET",
            &format!("/api/v1/overlays/{}/file", overlay["id"].as_str().unwrap()),
            &[],
            &[],
        )
        .unwrap()
        .1;
    let half = &overlay_bytes[..overlay_bytes.len() / 2];
    let held = d.stalled_upload("/api/v1/synthesis/upload?base=tiny", half);
    let decoding = cloudlet_e2e::wait_until(Duration::from_secs(20), || {
        let (_, sessions) = d.json("GET", "/api/v1/sessions", None).ok()?;
        sessions
            .as_array()?
            .iter()
            .find(|s| s["state"] == "decoding")
            .map(|s| s["id"].as_str().unwrap_or_default().to_string())
    })
    .expect("a synthesis held in decoding");

    d.kill();
    drop(held);
    let d = Daemon::start_in(&data, &[("CLOUDLET_IMPORT_DIRS", &import)]).unwrap();
    let (_, s) = d
        .json("GET", &format!("/api/v1/sessions/{syn_id}"), None)
        .unwrap();
    assert_eq!(s["state"], "running", "re-adopted: {s}");
    assert_eq!(
        domains_with_prefix(&vm),
        vec![vm.clone()],
        "the VM survived the restart"
    );
    assert_eq!(
        run_when_up(&d, syn_id, "cat /mnt/data/marker.txt"),
        "disk-only-42"
    );
    let (_, interrupted) = d
        .json("GET", &format!("/api/v1/sessions/{decoding}"), None)
        .unwrap();
    assert_eq!(interrupted["state"], "failed", "{interrupted}");
    assert!(
        interrupted["error"].as_str().unwrap().contains("restarted"),
        "{interrupted}"
    );
    assert!(!data.join("sessions").join(&decoding).exists());
    let (status, stopped) = d
        .json("POST", &format!("/api/v1/sessions/{syn_id}/stop"), None)
        .unwrap();
    assert_eq!((status, stopped["state"].as_str()), (200, Some("stopped")));
    assert!(
        domains_with_prefix(&vm).is_empty(),
        "VM {vm} survived its stop"
    );
}

/// The names in `dir`, sorted.
fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether a TCP socket listens on 0.0.0.0:`port` (from `/proc/net/tcp`; state 0A is LISTEN).
fn listens_on_all_addresses(port: u64) -> bool {
    let wanted = format!("00000000:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A")
        })
}
