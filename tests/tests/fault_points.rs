//! The restart fault test: the daemon is killed (SIGKILL, by the `CLOUDLET_FAULT_POINT`
//! hook, as `kill -9` at that moment would) at named points of base creation, overlay
//! creation and synthesis, after each step and in the middle of the long ones, then started
//! again. After each restart:
//! - the catalogue and the data directory agree: no row points at a missing file, no file
//!   or directory is left that no row owns, `incoming/` is empty;
//! - the interrupted session is failed, says the daemon restarted, and its VM is gone;
//! - a VM synthesized before all this is still running, re-adopted, and answers on its port;
//! - the same request made again succeeds.
//!
//! docs/testing.md reports the points and their outcomes.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{domains_with_prefix, fixture_guest, greeting, require_host, Daemon};
use serde_json::{json, Value};

/// Points of base creation: after each step, and during both hashing stages.
const BASE_POINTS: &[&str] = &[
    "after:copy_disk",
    "after:boot",
    "after:save",
    "during:memory",
    "during:disk",
    "after:hash",
];
/// Points of overlay creation (with `finish`): resume, then save and encode.
const OVERLAY_POINTS: &[&str] = &[
    "after:prepare",
    "after:resume_stream",
    "after:ports",
    "after:save_stream",
    "during:memory",
    "during:disk",
    "after:encode",
];
/// Points of a synthesis from a stored overlay.
const SYNTHESIS_POINTS: &[&str] = &[
    "during:apply",
    "after:decode",
    "after:restore_stream",
    "after:ports",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Base,
    Overlay,
    Synthesis,
}

/// The fixture guest and the shared data directory.
struct Bench {
    data: PathBuf,
    import: String,
    guest_dir: PathBuf,
    /// A stored overlay of `tiny` (for synthesis).
    overlay_id: String,
}

impl Bench {
    fn start(&self, point: Option<&str>) -> Daemon {
        let mut env = vec![("CLOUDLET_IMPORT_DIRS", self.import.as_str())];
        if let Some(p) = point {
            env.push(("CLOUDLET_FAULT_POINT", p));
        }
        Daemon::start_in(&self.data, &env).unwrap()
    }

    fn base_body(&self, name: &str) -> Value {
        let f = |n: &str| self.guest_dir.join(n).display().to_string();
        json!({
            "name": name, "disk": f("disk.img"), "kernel": f("vmlinuz"), "initrd": f("initrd.img"),
            "cmdline": "console=ttyS0 quiet", "memory_mib": 96, "vcpus": 1,
            "guest_ports": [8080], "ready_marker": "CLOUDLET-GUEST-READY", "finish": true
        })
    }

    /// The flow's request: (status, body), or the transport error of a daemon that died.
    fn request(&self, d: &Daemon, flow: Flow, name: &str) -> anyhow::Result<(u16, Value)> {
        match flow {
            Flow::Base => d.json("POST", "/api/v1/bases", Some(&self.base_body(name))),
            Flow::Overlay => d.json(
                "POST",
                "/api/v1/overlays",
                Some(&json!({
                    "base": "tiny", "finish": true,
                    "script": ["dd if=/dev/urandom of=/mnt/data/app.bin bs=1024 count=2048 2>/dev/null && sync"]
                })),
            ),
            Flow::Synthesis => d.json(
                "POST",
                "/api/v1/synthesis",
                Some(&json!({ "base": "tiny", "overlay_id": self.overlay_id })),
            ),
        }
    }

    /// Makes the same request again on a healthy daemon: it must succeed. What it made is
    /// removed again (the next point starts from the same catalogue).
    fn retry_succeeds(&self, d: &Daemon, flow: Flow, n: usize) {
        let name = format!("retry-{n}");
        let (status, made) = self.request(d, flow, &name).unwrap();
        assert_eq!(status, 201, "retry of {flow:?}: {made}\n{}", d.log_text());
        let (status, gone) = match flow {
            Flow::Base => {
                assert_eq!(made["state"], "finished", "{made}");
                d.json("DELETE", &format!("/api/v1/bases/{name}"), None)
            }
            Flow::Overlay => {
                assert_eq!(made["state"], "finished", "{made}");
                // The overlay is handed over once libvirt marked the save complete; the
                // session's files go once libvirt has stopped the VM (≥ 200 ms later).
                let dir = self
                    .data
                    .join("sessions")
                    .join(made["id"].as_str().unwrap());
                let gone = cloudlet_e2e::wait_until(Duration::from_secs(30), || {
                    (!dir.exists()).then_some(())
                });
                assert!(
                    gone.is_some(),
                    "{} is left\n{}",
                    dir.display(),
                    d.log_text()
                );
                let id = made["overlay_id"].as_str().unwrap();
                d.json("DELETE", &format!("/api/v1/overlays/{id}"), None)
            }
            Flow::Synthesis => {
                assert_eq!(made["state"], "running", "{made}");
                assert_eq!(
                    greeting(made["host_ports"]["8080"].as_u64().unwrap()).unwrap(),
                    "hello-from-guest"
                );
                let id = made["id"].as_str().unwrap();
                d.json("POST", &format!("/api/v1/sessions/{id}/stop"), None)
            }
        }
        .unwrap();
        assert_eq!(status, 200, "{gone}");
    }
}

/// Every session, newest last.
fn sessions(d: &Daemon) -> Vec<Value> {
    let (status, all) = d.json("GET", "/api/v1/sessions", None).unwrap();
    assert_eq!(status, 200, "{all}");
    let mut all = all.as_array().unwrap().clone();
    all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str())); // UUIDv7: time order
    all
}

/// `sqlite3 -readonly` on the daemon's catalogue: one column per line.
fn query(data: &Path, sql: &str) -> Vec<String> {
    let db = data.join("cloudlet.db").display().to_string();
    cloudlet_e2e::run("sqlite3", &["-readonly", &db, sql])
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// The catalogue and the data directory agree.
fn check_files(data: &Path, point: &str) {
    let mut owned: HashSet<String> = HashSet::new();
    owned.extend(query(data, "SELECT dir FROM bases"));
    owned.extend(query(data, "SELECT file_path FROM overlays"));
    owned.extend(query(
        data,
        "SELECT run_dir FROM sessions WHERE run_dir IS NOT NULL AND state = 'running'",
    ));
    for path in &owned {
        assert!(
            Path::new(path).exists(),
            "{point}: the catalogue names a missing file {path}"
        );
    }
    for top in ["bases", "overlays", "sessions"] {
        let Ok(entries) = std::fs::read_dir(data.join(top)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path().display().to_string();
            assert!(
                owned.contains(&path),
                "{point}: {path} is left and no row owns it (owned: {owned:?})"
            );
        }
    }
    let incoming: Vec<_> = std::fs::read_dir(data.join("incoming"))
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(incoming.is_empty(), "{point}: incoming/ holds {incoming:?}");
    let transient = query(
        data,
        "SELECT id FROM bases WHERE state != 'ready' UNION ALL \
         SELECT id FROM overlays WHERE state != 'ready'",
    );
    assert!(
        transient.is_empty(),
        "{point}: rows left in a transient state: {transient:?}"
    );
}

#[test]
fn killed_at_every_step_the_daemon_recovers() {
    if !require_host("killed_at_every_step_the_daemon_recovers") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("faults").unwrap();
    let mut bench = Bench {
        data: tmp.0.join("data"),
        import: guest.dir.display().to_string(),
        guest_dir: guest.dir.clone(),
        overlay_id: String::new(),
    };

    // A base, a stored overlay with a server, and a synthesized VM that must outlive every
    // crash below.
    let mut d = bench.start(None);
    let (status, base) = bench.request(&d, Flow::Base, "tiny").unwrap();
    assert_eq!(
        (status, base["state"].as_str()),
        (201, Some("finished")),
        "{base}"
    );
    let (status, ov) = d
        .json(
            "POST",
            "/api/v1/overlays",
            Some(&json!({
                "base": "tiny", "finish": true,
                "script": ["nc -ll -p 8080 -e echo hello-from-guest >/dev/null 2>&1 &"]
            })),
        )
        .unwrap();
    assert_eq!(
        (status, ov["state"].as_str()),
        (201, Some("finished")),
        "{ov}"
    );
    bench.overlay_id = ov["overlay_id"].as_str().unwrap().to_string();
    let (status, keeper) = bench.request(&d, Flow::Synthesis, "").unwrap();
    assert_eq!(
        (status, keeper["state"].as_str()),
        (201, Some("running")),
        "{keeper}"
    );
    let keeper_id = keeper["id"].as_str().unwrap().to_string();
    let keeper_port = keeper["host_ports"]["8080"].as_u64().unwrap();

    let mut outcomes = Vec::new();
    let flows = [
        (Flow::Base, BASE_POINTS),
        (Flow::Overlay, OVERLAY_POINTS),
        (Flow::Synthesis, SYNTHESIS_POINTS),
    ];
    for (flow, points) in flows {
        for point in points {
            let n = outcomes.len();
            d.kill();
            let mut armed = bench.start(Some(point));
            let known: HashSet<String> = sessions(&armed)
                .iter()
                .filter_map(|s| s["id"].as_str().map(String::from))
                .collect();
            let reply = bench.request(&armed, flow, &format!("killed-{n}"));
            let died = armed.wait_exit(Duration::from_secs(120));
            let log = armed.log_text();
            assert!(
                died.is_some(),
                "{flow:?} {point}: the daemon did not die (reply {reply:?})\n{log}"
            );
            assert!(
                log.contains("the daemon kills itself here"),
                "{flow:?} {point}: died elsewhere\n{log}"
            );
            drop(armed);

            d = bench.start(None);
            let all = sessions(&d);
            let interrupted = all
                .iter()
                .rfind(|s| !known.contains(s["id"].as_str().unwrap()))
                .unwrap_or_else(|| panic!("{flow:?} {point}: no session was started"));
            assert_eq!(interrupted["state"], "failed", "{point}: {interrupted}");
            assert!(
                interrupted["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("restarted"),
                "{point}: {interrupted}"
            );
            if let Some(vm) = interrupted["vm_name"].as_str() {
                assert!(
                    !domains_with_prefix(vm).contains(&vm.to_string()),
                    "{flow:?} {point}: the interrupted session's VM {vm} is left"
                );
            }
            let active: Vec<&str> = all
                .iter()
                .filter(|s| !matches!(s["state"].as_str(), Some("finished" | "stopped" | "failed")))
                .filter_map(|s| s["id"].as_str())
                .collect();
            assert_eq!(active, vec![keeper_id.as_str()], "{point}: active sessions");
            assert_eq!(
                greeting(keeper_port).unwrap(),
                "hello-from-guest",
                "{point}: the synthesized VM no longer answers"
            );
            check_files(&bench.data, point);
            bench.retry_succeeds(&d, flow, n);
            check_files(&bench.data, point);
            outcomes.push(format!(
                "{flow:?} {point}: session {} ({}), retry ok",
                interrupted["state"].as_str().unwrap_or("?"),
                interrupted["error"].as_str().unwrap_or("")
            ));
        }
    }
    eprintln!("{} fault points:\n{}", outcomes.len(), outcomes.join("\n"));
    assert!(outcomes.len() >= 10);
    let (status, stopped) = d
        .json("POST", &format!("/api/v1/sessions/{keeper_id}/stop"), None)
        .unwrap();
    assert_eq!((status, stopped["state"].as_str()), (200, Some("stopped")));
}
