//! The three Elijah flows driven only through the `cloudlet` binary against the real daemon
//! on a real VM (libvirt + QEMU/TCG): `base --finish`, `overlay --finish -o FILE` with a
//! script, `synthesis BASE FILE`, then `run` / `console` / `stop-session` on the result.
//! The API-level checks of the same flows are in vm_flows.rs.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use cloudlet_e2e::cli::Background;
use cloudlet_e2e::cli::Cli;
use cloudlet_e2e::daemon::{Launch, TempDir};
use cloudlet_e2e::relay::Relay;
use cloudlet_e2e::{fixture_guest, greeting, require_host, wait_until, Daemon, DomainGuard};
use serde_json::Value;

const SCRIPT: &str = r#"#!/bin/sh
# customization of the app VM: one script, run as a unit (functions, loops, heredocs)
set -e
write_data() {
    dd if=/dev/urandom of=/mnt/data/random.bin bs=1024 count=4096 2>/dev/null
    cp /mnt/data/random.bin /mnt/data/random-copy.bin
}
write_data
for i in 1 2 3; do
    echo "line $i"
done > /mnt/data/lines.txt
cat > /mnt/data/config.ini <<EOF
[app]
name = demo
EOF
seq 1 20000 > /mnt/data/numbers.txt && sync
(i=0; while :; do i=$((i+1)); echo $i > /counter; sleep 0.1; done) >/dev/null 2>&1 &
echo $! > /counter.pid
echo customized
"#;
const SERVER: &str = "nc -ll -p 8080 -e echo hello-from-guest >/dev/null 2>&1 &";

#[test]
fn base_overlay_synthesis_through_the_cli() {
    if !require_host("base_overlay_synthesis_through_the_cli") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("cliflows").unwrap();
    let import = guest.dir.display().to_string();
    // Over https, the CLI pinning the daemon's certificate (the helper's default with TLS).
    let how = Launch {
        tls: true,
        ip: None,
    };
    let d = Daemon::launch(
        &tmp.0.join("data"),
        &[("CLOUDLET_IMPORT_DIRS", &import)],
        how,
    )
    .unwrap();
    let cli = Cli::new(&d);
    let f = |name: &str| guest.dir.join(name).display().to_string();
    let mut guards = Vec::new();

    // 1. base, Elijah style: `cloudlet base DISK -- -m 96`; unknown qemu options reported.
    let base = cli.json(&[
        "base",
        &f("disk.img"),
        "--name",
        "tiny",
        "--kernel",
        &f("vmlinuz"),
        "--initrd",
        &f("initrd.img"),
        "--append",
        "console=ttyS0 quiet init_on_free=1",
        "--port",
        "8080",
        "--ready-marker",
        "CLOUDLET-GUEST-READY",
        "-e",
        "echo base > /base-marker",
        "--finish",
        "--",
        "-m",
        "96",
        "-smp",
        "1",
        "-enable-kvm",
    ]);
    assert_eq!(base["state"], "finished", "{base}");
    assert_eq!(
        base["ignored_qemu_options"],
        serde_json::json!(["-enable-kvm"])
    );
    let base_id = base["base_id"].as_str().unwrap().to_string();
    let list = cli.ok(&["list-base"]);
    assert!(
        list.contains("tiny") && list.contains(&base_id[..12]),
        "{list}"
    );

    // 2. overlay from a script file plus -e, saved and downloaded.
    let script = tmp.0.join("customize.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let file = tmp.0.join("app.overlay");
    let ov = cli.json(&[
        "overlay",
        "tiny",
        "--script",
        script.to_str().unwrap(),
        "-e",
        SERVER,
        "--finish",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(ov["state"], "finished", "{ov}");
    assert_eq!(ov["overlay_file"], file.to_str().unwrap());
    let results = ov["script_results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "the script as one unit, then -e: {ov}");
    assert_eq!(results[0]["status"], 0, "{ov}");
    assert!(
        results[0]["output"]
            .as_str()
            .unwrap()
            .contains("customized"),
        "{ov}"
    );
    let overlay_id = ov["overlay_id"].as_str().unwrap().to_string();
    let stored = cli.json(&["info-overlay", &overlay_id[..overlay_id.len() - 4]]);
    assert_eq!(stored["id"], overlay_id.as_str());
    assert_eq!(
        stored["file_size"],
        std::fs::metadata(&file).unwrap().len(),
        "downloaded overlay is complete"
    );
    let local = cli.json(&["info-overlay", "--verify", file.to_str().unwrap()]);
    assert_eq!(local["base_id"], base_id.as_str());
    // The stored overlay downloads again, by id prefix, identical.
    let again = tmp.0.join("again.overlay");
    let got = cli.json(&[
        "download-overlay",
        &overlay_id[..overlay_id.len() - 4],
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        got["bytes"],
        std::fs::metadata(&file).unwrap().len(),
        "{got}"
    );
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // Elijah's -t: the overlay VM's disk does not pass guest TRIM through (default: unmap).
    let untrimmed = cli.json(&["overlay", "tiny", "-t"]);
    assert_eq!(untrimmed["state"], "running", "{untrimmed}");
    let vm = untrimmed["vm_name"].as_str().unwrap().to_string();
    guards.push(DomainGuard(vm.clone()));
    let xml = cloudlet_e2e::virsh(&["dumpxml", &vm]).unwrap();
    assert!(xml.contains("discard='ignore'"), "{xml}");
    assert_eq!(
        cli.json(&["stop-session", untrimmed["id"].as_str().unwrap()])["state"],
        "stopped"
    );

    // The edge device gets a token of its own from the operator; it synthesizes and drives
    // its sessions with it, over https, pinning the daemon's certificate.
    let created = cli.json(&["token", "create", "--role", "device", "--name", "phone-7"]);
    assert_eq!(created["role"], "device", "{created}");
    let phone = Cli::with_token(&d, created["token"].as_str().unwrap());
    assert!(d.url().starts_with("https://"), "{}", d.url());

    // 3. synthesis from the downloaded file: resumed, app answering, counter counting.
    let syn = phone.json(&[
        "synthesis",
        "tiny",
        file.to_str().unwrap(),
        "--",
        "-vga",
        "std",
    ]);
    assert_eq!(syn["state"], "running", "{syn}");
    assert_eq!(syn["ignored_qemu_options"], serde_json::json!(["-vga std"]));
    guards.push(DomainGuard(syn["vm_name"].as_str().unwrap().to_string()));
    let syn_id = syn["id"].as_str().unwrap().to_string();
    assert_eq!(
        greeting(syn["host_ports"]["8080"].as_u64().unwrap()).unwrap(),
        "hello-from-guest"
    );
    // A unique prefix (session ids are UUIDv7: their first digits are a timestamp).
    let prefix = &syn_id[..syn_id.len() - 4];
    assert_eq!(
        phone.run(
            prefix,
            "cmp /mnt/data/random.bin /mnt/data/random-copy.bin && wc -l < /mnt/data/numbers.txt"
        ),
        "20000"
    );
    assert_eq!(phone.run(prefix, "cat /base-marker"), "base");
    assert_eq!(
        phone.run(
            prefix,
            "tail -1 /mnt/data/lines.txt; grep name /mnt/data/config.ini"
        ),
        "line 3\nname = demo"
    );
    // A multi-line script on stdin runs as one unit.
    let piped = phone.with_stdin(
        &["run", prefix, "-"],
        "x=0\nfor i in 1 2 3; do\n  x=$((x+i))\ndone\necho sum=$x\n",
    );
    assert_eq!(piped.trim(), "sum=6");
    assert_eq!(
        phone.run(prefix, "kill -0 $(cat /counter.pid) && echo alive"),
        "alive"
    );
    let before: u64 = phone.run(prefix, "cat /counter").parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after: u64 = phone.run(prefix, "cat /counter").parse().unwrap();
    assert!(after > before, "counter stopped: {before} → {after}");
    // `run` exits with the guest command's status.
    assert_eq!(
        phone
            .output(&["run", prefix, "--", "sh", "-c", "'exit 3'"])
            .status
            .code(),
        Some(3)
    );
    let ran = phone.json(&["run", prefix, "--", "echo", "hi"]);
    assert_eq!(
        (
            ran["output"].as_str().map(str::trim),
            ran["status"].as_i64()
        ),
        (Some("hi"), Some(0))
    );

    // The human views of the running session.
    let shown = phone.ok(&["show-session", prefix]);
    assert!(
        shown.contains("running") && shown.contains("guest 8080"),
        "{shown}"
    );
    let console = phone.ok(&["console", prefix]);
    assert!(
        console.contains("socat") && console.contains("127.0.0.1:"),
        "{console}"
    );
    let sessions = phone.json(&["list-session"]);
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");

    // 4. synthesis from the stored overlay, by id prefix.
    let syn2 = cli.json(&[
        "synthesis",
        &base_id[..12],
        &overlay_id[..overlay_id.len() - 4],
    ]);
    assert_eq!(syn2["state"], "running", "{syn2}");
    guards.push(DomainGuard(syn2["vm_name"].as_str().unwrap().to_string()));
    let syn2_id = syn2["id"].as_str().unwrap().to_string();
    assert_eq!(cli.run(&syn2_id, "cat /base-marker"), "base");

    // 5. A busy cloudlet is waited out: both synthesis slots held by stalled uploads, the
    // CLI says it waits, then synthesizes once they are free.
    let overlay_bytes = std::fs::read(&file).unwrap();
    let held: Vec<_> = (0..2)
        .map(|_| d.held_upload("/api/v1/synthesis/upload?base=tiny", &overlay_bytes[..4096]))
        .collect();
    let decoding = |n: usize| {
        wait_until(Duration::from_secs(30), || {
            let all = cli.json(&["list-session"]);
            let count = all
                .as_array()?
                .iter()
                .filter(|s| s["state"] == "decoding")
                .count();
            (count == n).then_some(())
        })
    };
    assert!(
        decoding(2).is_some(),
        "the stalled uploads never held both slots"
    );
    let mut waiting = Background::spawn(phone.command_via(
        d.addr,
        &["--json", "synthesis", "tiny", file.to_str().unwrap()],
    ));
    assert!(
        waiting.stderr_shows("waiting for a free synthesis slot", Duration::from_secs(30)),
        "no waiting line: {}",
        waiting.stderr()
    );
    drop(held);
    let waited = waiting.finish_json();
    assert_eq!(waited["state"], "running", "{waited}");
    guards.push(DomainGuard(waited["vm_name"].as_str().unwrap().to_string()));
    let waited_id = waited["id"].as_str().unwrap().to_string();

    // 6. The link goes down after the overlay was sent: the CLI retries with the same
    // Idempotency-Key and gets the session the first attempt started; no second VM.
    let known: Vec<String> = session_ids(&cli.json(&["list-session", "--all"]));
    let relay = Relay::start(d.addr).unwrap();
    let mut cut = Background::spawn(phone.command_via(
        relay.addr,
        &["--json", "synthesis", "tiny", file.to_str().unwrap()],
    ));
    let first = wait_until(Duration::from_secs(60), || {
        let all = cli.json(&["list-session", "--all"]);
        all.as_array()?
            .iter()
            .find(|s| !known.contains(&s["id"].as_str().unwrap_or_default().to_string()))
            .cloned()
    })
    .expect("the relayed synthesis started");
    let first_id = first["id"].as_str().unwrap().to_string();
    relay.freeze(); // the answer never reaches the CLI
    let ran = wait_until(Duration::from_secs(120), || {
        let s = cli.json(&["show-session", &first_id]);
        (s["state"] != "decoding" && s["state"] != "restoring").then_some(s)
    })
    .unwrap();
    assert_eq!(ran["state"], "running", "{ran}");
    relay.cut();
    let retried = cut.finish_json();
    assert_eq!(retried["id"], first_id.as_str(), "{retried}");
    assert!(
        cut.stderr().contains("same Idempotency-Key"),
        "{}",
        cut.stderr()
    );
    assert!(relay.connections() >= 2, "the CLI never reconnected");
    guards.push(DomainGuard(ran["vm_name"].as_str().unwrap().to_string()));
    let new: Vec<String> = session_ids(&cli.json(&["list-session", "--all"]))
        .into_iter()
        .filter(|id| !known.contains(id))
        .collect();
    assert_eq!(new, vec![first_id.clone()], "a second session was started");
    let domains = cloudlet_e2e::virsh(&["list", "--name"]).unwrap();
    assert!(
        domains.contains(ran["vm_name"].as_str().unwrap()),
        "{domains}"
    );

    // 7. clean up through the CLI: del-base needs --force while overlays exist.
    for id in [&syn_id, &syn2_id, &waited_id, &first_id] {
        assert_eq!(cli.json(&["stop-session", id])["state"], "stopped");
    }
    assert_eq!(cli.json(&["list-session"]), Value::Array(vec![]));
    assert!(
        cli.json(&["list-session", "--all"])
            .as_array()
            .unwrap()
            .len()
            >= 4
    );
    let out = cli.output(&["del-base", "tiny"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(conflict)"));
    cli.ok(&["del-base", "tiny", "--force"]);
    assert!(cli.json(&["clear-session"])["removed"].as_u64().unwrap() >= 4);
    assert_eq!(cli.json(&["list-overlay"]), Value::Array(vec![]));
}

fn session_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
