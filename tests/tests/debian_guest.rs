//! A stock Debian 12 guest (tests/fixtures/build-debian.sh: extlinux in the MBR, systemd,
//! root's bash on ttyS0 as Debian ships it, DHCP) through every flow, driven only through
//! the `cloudlet` binary: a base from the bare disk image with a ready marker, an overlay
//! made by a multi-line script that installs and starts a web app, synthesis (the app
//! answers with its in-memory state continued), `run -- uname -a`. Then what overlays cost
//! for memory the guest freed and for files it deleted (free page reporting, TRIM).
//! The busybox fixture keeps the fast tests; this one is the real-distro check.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use cloudlet_e2e::cli::Cli;
use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{debian_guest, http_get, repo_root, require_host, Daemon, DomainGuard};
use serde_json::Value;

/// 64 MiB of data the guest allocates (tmpfs pages) and frees again, then time for free
/// page reporting.
const FREE_64_MIB: &str =
    "dd if=/dev/urandom of=/dev/shm/x bs=1M count=64 2>/dev/null; rm /dev/shm/x; sleep 8";
/// Its control: the same commands, no data (the overlays differ by the 64 MiB alone).
const FREE_NOTHING: &str =
    "dd if=/dev/urandom of=/dev/shm/x bs=1M count=0 2>/dev/null; rm /dev/shm/x; sleep 8";
/// A 32 MiB file written to the root file system and deleted again.
const DELETED_32_MIB: &str =
    "dd if=/dev/urandom of=/root/big bs=1M count=32 2>/dev/null; sync; rm /root/big; sync; sleep 2";
const MB: u64 = 1_000_000;

/// An overlay made from `debian` with ARGS (`-e` lines, flags), kept on the daemon: its
/// stored description.
fn overlay(cli: &Cli, args: &[&str]) -> Value {
    let mut all = vec!["overlay", "debian", "--finish", "--no-download"];
    all.extend_from_slice(args);
    let session = cli.json(&all);
    assert_eq!(session["state"], "finished", "{session}");
    let id = session["overlay_id"].as_str().unwrap();
    cli.json(&["info-overlay", id])
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn stock_debian_guest_through_the_cli() {
    if !require_host("stock_debian_guest_through_the_cli") {
        return;
    }
    let guest = debian_guest().unwrap();
    let tmp = TempDir::new("debian").unwrap();
    let import = guest.dir.display().to_string();
    let d = Daemon::start_in(&tmp.0.join("data"), &[("CLOUDLET_IMPORT_DIRS", &import)]).unwrap();
    let cli = Cli::new(&d);
    let mut guards = Vec::new();

    // 1. The base: the disk boots by itself (extlinux), the marker comes from a unit.
    let base = cli.json(&[
        "base",
        guest.disk.to_str().unwrap(),
        "--name",
        "debian",
        "--memory",
        "512",
        "--port",
        "8080",
        "--ready-marker",
        &guest.ready_marker,
        "--finish",
    ]);
    assert_eq!(base["state"], "finished", "{base}");

    // 2. The overlay: a multi-line bash script (heredocs, a loop, systemd) installs the app.
    let app = repo_root().join("tests/fixtures/demo-app.sh");
    let file = tmp.0.join("demo.overlay");
    let ov = cli.json(&[
        "overlay",
        "debian",
        "--script",
        app.to_str().unwrap(),
        "--finish",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(ov["state"], "finished", "{ov}");
    // The base was saved at the shell's prompt: the first probe after the resume is
    // answered (a lost one costs a whole 3 s attempt: getty and login ran again).
    let console_ms = ov["timings"]["console"].as_u64().unwrap_or(u64::MAX);
    assert!(
        console_ms < 3000,
        "the shell answered after {console_ms} ms: {ov}"
    );
    let result = &ov["script_results"][0];
    assert_eq!(result["status"], 0, "{ov}");
    let installed = result["output"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("demo answers: "))
        .unwrap_or_else(|| panic!("the app never answered in the overlay VM: {ov}"))
        .to_string();
    let fields = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let before = fields(&installed); // token, hits, pid

    // 3. Synthesis from the downloaded file: the app resumes with its memory intact.
    let syn = cli.json(&["synthesis", "debian", file.to_str().unwrap()]);
    assert_eq!(syn["state"], "running", "{syn}");
    guards.push(DomainGuard(syn["vm_name"].as_str().unwrap().to_string()));
    let port = n(&syn["host_ports"], "8080");
    let after = fields(&http_get(port).unwrap());
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[0], before[0], "the app's in-memory token changed");
    assert_eq!(after[2], before[2], "the app was restarted, not resumed");
    assert_eq!(
        after[1].parse::<u64>().unwrap(),
        before[1].parse::<u64>().unwrap() + 1,
        "the hit counter did not continue"
    );
    for (what, v) in [("base", &base), ("overlay", &ov), ("synthesis", &syn)] {
        eprintln!("{what} step times (ms): {}", v["timings"]);
    }
    eprintln!(
        "app overlay: {} bytes",
        std::fs::metadata(&file).unwrap().len()
    );
    let id = syn["id"].as_str().unwrap().to_string();
    let uname = cli.ok(&["run", &id, "--", "uname", "-a"]);
    assert!(
        uname.starts_with("Linux cloudlet-debian ") && uname.contains("cloud-amd64"),
        "{uname}"
    );
    let multi = cli.with_stdin(
        &["run", &id, "-"],
        "#!/bin/bash\nfor i in 1 2 3; do\n  echo \"line $i\"\ndone | wc -l\n",
    );
    assert_eq!(multi.trim(), "3");
    assert_eq!(cli.json(&["stop-session", &id])["state"], "stopped");

    // 4. Freed memory: with -m (drop caches, fine-grained free page reporting) 64 MiB the
    // guest allocated and freed costs at most 4 MB over the control (measured: +2.3 kB,
    // +1.9 MB and +2.3 MB on three machines: the guest's own activity in between); by
    // default, the balloon alone still keeps it far below the 64 MiB it would cost
    // without one. By default only free blocks of 2 MiB and up are reported, and how much
    // of the 64 MiB merges back into such blocks depends on the guest's fragmentation:
    // +1.9 MB here, +8.1 MB on a CI machine. The bounds (1/16 and 1/4) still fail a guest
    // whose balloon reports nothing (+68.5 MB).
    let reference = overlay(&cli, &["-m", "-e", FREE_NOTHING]);
    let freed = overlay(&cli, &["-m", "-e", FREE_64_MIB]);
    let freed_default = overlay(&cli, &["-e", FREE_64_MIB]);
    let (r, f, fd) = (
        n(&reference, "file_size"),
        n(&freed, "file_size"),
        n(&freed_default, "file_size"),
    );
    eprintln!("overlay bytes: reference {r}, 64 MiB freed with -m {f}, without -m {fd}");
    assert!(
        f <= r + 4 * MB,
        "64 MiB freed cost {} bytes with -m",
        f - r.min(f)
    );
    assert!(
        fd <= r + 16 * MB,
        "64 MiB freed cost {} bytes without -m: did the balloon report it?",
        fd - r.min(fd)
    );

    // 5. Deleted files: zero in the overlay disk when the guest discards (mount option)
    // or when the daemon runs fstrim before the save; a control without either shows
    // the workload's 8192 chunks.
    let chunks = |v: &Value| n(v, "modified_disk_chunks");
    let discard = overlay(
        &cli,
        &["-e", "mount -o remount,discard /", "-e", DELETED_32_MIB],
    );
    let trimmed = overlay(&cli, &["--fstrim", "-e", DELETED_32_MIB]);
    let control = overlay(&cli, &["-e", DELETED_32_MIB]);
    eprintln!(
        "modified disk chunks: reference {}, discard {}, fstrim {}, neither {}",
        chunks(&reference),
        chunks(&discard),
        chunks(&trimmed),
        chunks(&control)
    );
    for (what, v) in [("discard", &discard), ("fstrim", &trimmed)] {
        assert!(
            chunks(v) <= chunks(&reference) + 1024,
            "{what}: the deleted file's blocks were shipped: {v}"
        );
    }
    assert!(
        chunks(&control) >= chunks(&reference) + 7000,
        "the control overlay should carry the deleted file: {control}"
    );
    let prepared = cli.json(&["list-session", "--all"]);
    assert!(
        prepared
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["script_results"].as_array().cloned().unwrap_or_default())
            .any(|r| r["command"].as_str().unwrap_or("").contains("fstrim") && r["status"] == 0),
        "the fstrim before the save is not in any session's results: {prepared}"
    );
    drop(guards);
}
