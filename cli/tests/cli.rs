//! `cloudlet` against the real daemon binary (no VM: bases are registered with `add-base`
//! from the engine's synthetic VMs, which the daemon decodes overlays against). Every
//! command's exit code, one-line errors with the daemon's code, `--json` shapes, transfers.
//! The VM flows through the CLI are in tests/tests/cli_flows.rs.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::synthetic::{synthetic_vm, SyntheticVm};
use cloudlet_e2e::{wait_until, Daemon};
use cloudlet_engine::testkit::WorkloadSpec;
use serde_json::Value;

/// `cloudlet` pointed at `d` with its token file.
fn cli(d: &Daemon) -> Command {
    let mut c = Command::cargo_bin("cloudlet").unwrap();
    c.env("CLOUDLET_URL", format!("http://{}", d.addr))
        .env("CLOUDLET_TOKEN_FILE", &d.token_file)
        .env_remove("CLOUDLET_TOKEN");
    c
}

/// `cloudlet` with no daemon configuration at all.
fn local() -> Command {
    let mut c = Command::cargo_bin("cloudlet").unwrap();
    c.env("CLOUDLET_URL", "http://127.0.0.1:1")
        .env("CLOUDLET_TOKEN_FILE", "/nonexistent/token")
        .env_remove("CLOUDLET_TOKEN");
    c
}

/// Runs `c`; asserts exit 0 and returns stdout.
fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `c --json`; asserts exit 0 and parses stdout.
fn ok_json(c: &mut Command) -> Value {
    let text = ok(c.arg("--json"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Runs `c`; asserts exit 1 and one line `error: ... (code)` on stderr (any line when
/// `code` is empty); returns that line.
fn fails_with(c: &mut Command, code: &str) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{c:?}: {err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "not one line: {err}");
    assert!(
        errors[0].starts_with("error: ")
            && (code.is_empty() || errors[0].contains(&format!("({code})"))),
        "expected `error: ... ({code})`, got: {err}"
    );
    errors[0].to_string()
}

/// A daemon whose import directory is `dir` (where the synthetic VMs are).
fn daemon_with_imports(tmp: &TempDir, name: &str) -> Daemon {
    let imports = tmp.0.display().to_string();
    Daemon::start_in(&tmp.0.join(name), &[("CLOUDLET_IMPORT_DIRS", &imports)]).unwrap()
}

/// `cloudlet_received_bytes_total` of the daemon: request bodies it read (uploads).
fn received_bytes(d: &Daemon) -> u64 {
    let (status, text) = d.get("/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("cloudlet_received_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cloudlet_received_bytes_total in {text}"))
}

fn make_vm(tmp: &TempDir, name: &str, seed: u64) -> SyntheticVm {
    let dir = tmp.0.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    synthetic_vm(&dir, &WorkloadSpec::small(seed)).unwrap()
}

fn add_base(d: &Daemon, vm: &SyntheticVm, name: &str) -> Value {
    ok_json(cli(d).args([
        "add-base",
        vm.workload.base_disk.to_str().unwrap(),
        vm.workload.base_save.as_ref().unwrap().to_str().unwrap(),
        "--name",
        name,
        "--port",
        "8080",
    ]))
}

#[test]
fn lists_and_clear_on_an_empty_daemon() {
    let d = Daemon::start("cli-empty").unwrap();
    assert!(ok(cli(&d).arg("list-base")).contains("no base VMs"));
    assert!(ok(cli(&d).arg("list-overlay")).contains("no overlays"));
    assert!(ok(cli(&d).arg("list-session")).contains("no active sessions"));
    for cmd in ["list-base", "list-overlay", "list-session"] {
        assert_eq!(ok_json(cli(&d).arg(cmd)), Value::Array(vec![]), "{cmd}");
    }
    assert_eq!(
        ok_json(cli(&d).args(["list-session", "--all"])),
        Value::Array(vec![])
    );
    assert_eq!(ok_json(cli(&d).arg("clear-session"))["removed"], 0);
    assert!(ok(cli(&d).arg("clear-session")).contains("removed 0"));
    // Sessions and stored overlays are named by unique prefix.
    for cmd in ["show-session", "finish-session", "stop-session", "console"] {
        let line = fails_with(cli(&d).args([cmd, "0abc"]), "not-found");
        assert!(line.contains("no session matches `0abc`"), "{line}");
    }
    fails_with(
        cli(&d).args(["run", "0abc", "--", "uname", "-a"]),
        "not-found",
    );
    fails_with(cli(&d).args(["info-overlay", "0abc"]), "not-found");
    fails_with(cli(&d).args(["del-base", "nope"]), "not-found");
    let tmp = TempDir::new("cli-empty-files").unwrap();
    let never = tmp.0.join("never");
    fails_with(
        cli(&d).args(["export-base", "nope", never.to_str().unwrap()]),
        "not-found",
    );
    let line = fails_with(
        cli(&d).args(["download-overlay", "0abc", "-o", never.to_str().unwrap()]),
        "not-found",
    );
    assert!(line.contains("no overlay matches `0abc`"), "{line}");
    assert_eq!(
        std::fs::read_dir(&tmp.0).unwrap().count(),
        0,
        "no file and no .part left"
    );
    fails_with(cli(&d).args(["overlay", "nope", "--finish"]), "not-found");
}

#[test]
fn add_info_export_import_and_delete_a_base() {
    let tmp = TempDir::new("cli-bases").unwrap();
    let vm = make_vm(&tmp, "vm", 11);
    let d = daemon_with_imports(&tmp, "data");

    let base = add_base(&d, &vm, "tiny");
    assert_eq!(base["id"], vm.base_id.as_str(), "{base}");
    assert_eq!(base["name"], "tiny");
    assert_eq!(base["guest_ports"], serde_json::json!([8080]));
    fails_with(
        cli(&d).args([
            "add-base",
            vm.workload.base_disk.to_str().unwrap(),
            vm.workload.base_save.as_ref().unwrap().to_str().unwrap(),
            "--name",
            "tiny",
        ]),
        "conflict",
    );
    let table = ok(cli(&d).arg("list-base"));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("tiny") && table.contains(&vm.base_id[..12]),
        "{table}"
    );
    assert_eq!(
        ok_json(cli(&d).arg("list-base"))[0]["id"],
        vm.base_id.as_str()
    );

    // info-overlay on a local file needs no daemon.
    let info = ok_json(local().args(["info-overlay", vm.overlay.to_str().unwrap()]));
    assert_eq!(info["base_id"], vm.base_id.as_str());

    // export → a complete file, no .part left; an interrupted download resumes.
    let archive = tmp.0.join("tiny.cloudlet-base");
    let got = ok_json(cli(&d).args(["export-base", "tiny", archive.to_str().unwrap()]));
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(got["bytes"], bytes.len() as u64, "{got}");
    assert_eq!(got["resumed_from"], 0);
    assert!(!tmp.0.join("tiny.cloudlet-base.part").exists());
    let again = tmp.0.join("again.cloudlet-base");
    let half = bytes.len() / 2;
    std::fs::write(tmp.0.join("again.cloudlet-base.part"), &bytes[..half]).unwrap();
    let got = ok_json(cli(&d).args(["export-base", &vm.base_id[..10], again.to_str().unwrap()]));
    assert_eq!(got["resumed_from"], half as u64, "{got}");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        bytes,
        "resumed download differs"
    );
    let text = ok(cli(&d).args(["export-base", "tiny", again.to_str().unwrap()]));
    assert!(text.starts_with("exported base to"), "{text}");
    // A .part already complete (416, `bytes */N` = its size): just renamed.
    let whole = tmp.0.join("whole.cloudlet-base");
    std::fs::write(tmp.0.join("whole.cloudlet-base.part"), &bytes).unwrap();
    let got = ok_json(cli(&d).args(["export-base", "tiny", whole.to_str().unwrap()]));
    assert_eq!(got["resumed_from"], bytes.len() as u64, "{got}");
    assert_eq!(got["bytes"], bytes.len() as u64, "{got}");
    assert_eq!(std::fs::read(&whole).unwrap(), bytes);
    // A .part longer than the file (another file's): discarded, downloaded afresh.
    let longer = tmp.0.join("longer.cloudlet-base");
    let mut junk = bytes.clone();
    junk.extend_from_slice(b"trailing junk");
    std::fs::write(tmp.0.join("longer.cloudlet-base.part"), &junk).unwrap();
    let got = ok_json(cli(&d).args(["export-base", "tiny", longer.to_str().unwrap()]));
    assert_eq!(got["resumed_from"], 0, "{got}");
    assert_eq!(std::fs::read(&longer).unwrap(), bytes);
    for leftover in ["whole", "longer", "again", "tiny"] {
        for ext in ["part", "part.modified"] {
            let p = tmp.0.join(format!("{leftover}.cloudlet-base.{ext}"));
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }

    // import on a second cloudlet: same content id.
    let other = Daemon::start("cli-import").unwrap();
    let imported =
        ok_json(cli(&other).args(["import-base", archive.to_str().unwrap(), "--name", "copy"]));
    assert_eq!(imported["id"], vm.base_id.as_str(), "{imported}");
    assert_eq!(imported["name"], "copy");
    let mut damaged = bytes.clone();
    damaged[half] ^= 1;
    let bad = tmp.0.join("damaged.cloudlet-base");
    std::fs::write(&bad, &damaged).unwrap();
    fails_with(
        cli(&other).args(["import-base", bad.to_str().unwrap(), "--name", "broken"]),
        "invalid-request",
    );

    // del-base by source disk path (canonical), then it is gone.
    let deleted = ok_json(cli(&d).args(["del-base", vm.workload.base_disk.to_str().unwrap()]));
    assert_eq!(deleted["id"], vm.base_id.as_str(), "{deleted}");
    fails_with(cli(&d).args(["del-base", "tiny"]), "not-found");
    // The daemon on `localhost` runs here: files go as paths, nothing is uploaded.
    let base = ok_json(cli(&d).args([
        "--url",
        &format!("http://localhost:{}", d.addr.port()),
        "add-base",
        vm.workload.base_disk.to_str().unwrap(),
        vm.workload.base_save.as_ref().unwrap().to_str().unwrap(),
        "--name",
        "by-path",
    ]));
    assert_eq!(base["name"], "by-path", "{base}");
    assert_eq!(received_bytes(&d), 0, "nothing uploaded");
    ok(cli(&d).args(["del-base", "by-path"]));
    assert!(ok(cli(&other).args(["del-base", "copy"])).starts_with("deleted base `copy`"));
}

#[test]
fn files_outside_the_import_dirs_are_uploaded() {
    let tmp = TempDir::new("cli-upload").unwrap();
    let vm = make_vm(&tmp, "vm", 12);
    let d = Daemon::start("cli-upload-d").unwrap(); // no import directories at all
    let base = add_base(&d, &vm, "uploaded");
    assert_eq!(base["id"], vm.base_id.as_str(), "{base}");
    let other = make_vm(&tmp, "vm2", 13);
    let forced = ok_json(cli(&d).args([
        "add-base",
        "--upload",
        other.workload.base_disk.to_str().unwrap(),
        other.workload.base_save.as_ref().unwrap().to_str().unwrap(),
    ]));
    assert_eq!(
        forced["name"], "base-disk",
        "named after the disk's stem: {forced}"
    );
    assert!(received_bytes(&d) > 0);
    // Every upload was consumed by the request that named it.
    let incoming = d.data_dir.join("incoming");
    let emptied = wait_until(Duration::from_secs(5), || {
        std::fs::read_dir(&incoming)
            .unwrap()
            .next()
            .is_none()
            .then_some(())
    });
    assert!(
        emptied.is_some(),
        "uploads left in {}: {:?}",
        incoming.display(),
        std::fs::read_dir(&incoming).unwrap().collect::<Vec<_>>()
    );
}

#[test]
fn synthesis_errors_are_one_line_with_the_daemon_code() {
    let tmp = TempDir::new("cli-synerr").unwrap();
    let a = make_vm(&tmp, "a", 21);
    let b = make_vm(&tmp, "b", 22);
    let d = daemon_with_imports(&tmp, "data");
    add_base(&d, &a, "a");
    add_base(&d, &b, "b");
    let overlay = a.overlay.to_str().unwrap();

    let line = fails_with(cli(&d).args(["synthesis", "nope", overlay]), "not-found");
    assert!(line.contains("nope"), "{line}");
    fails_with(
        cli(&d).args(["synthesis", "b", overlay]),
        "overlay-base-mismatch",
    );
    let mut bytes = std::fs::read(&a.overlay).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    let corrupt = tmp.0.join("corrupt.overlay");
    std::fs::write(&corrupt, &bytes).unwrap();
    fails_with(
        cli(&d).args(["synthesis", "a", corrupt.to_str().unwrap()]),
        "overlay-corrupt",
    );
    std::fs::write(&corrupt, b"not an overlay").unwrap();
    fails_with(
        cli(&d).args(["synthesis", "a", corrupt.to_str().unwrap()]),
        "overlay-corrupt",
    );
    // Not a file, not a URL: a stored overlay id, and there is none.
    fails_with(cli(&d).args(["synthesis", "a", "0123abcd"]), "not-found");
    let out = cli(&d)
        .args(["synthesis", "a", "./missing.overlay"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Trailing qemu options are reported, never dropped silently.
    let out = cli(&d)
        .args([
            "synthesis",
            "nope",
            overlay,
            "--",
            "-enable-kvm",
            "-vga",
            "std",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("warning: ignoring unsupported qemu option(s): -enable-kvm -vga std"),
        "{err}"
    );
    // Nothing was left running by the refused syntheses.
    assert_eq!(ok_json(cli(&d).arg("list-session")), Value::Array(vec![]));
}

#[test]
fn unreachable_daemon_and_missing_token_are_explained() {
    let line = fails_with(local().arg("list-base"), "");
    assert!(
        line.contains("cannot reach cloudletd at http://127.0.0.1:1")
            && line.contains("systemctl start cloudletd")
            && line.contains("CLOUDLET_URL"),
        "{line}"
    );
    let d = Daemon::start("cli-auth").unwrap();
    let line = fails_with(
        cli(&d)
            .env("CLOUDLET_TOKEN_FILE", "/nonexistent/token")
            .arg("list-base"),
        "unauthorized",
    );
    assert!(
        line.contains("/nonexistent/token") && line.contains("--token"),
        "{line}"
    );
    let line = fails_with(
        cli(&d).args(["--token", "wrong", "list-base"]),
        "unauthorized",
    );
    assert!(line.contains("refused"), "{line}");
    // The token on the command line or in the environment works too.
    ok(cli(&d)
        .env("CLOUDLET_TOKEN_FILE", "/nonexistent/token")
        .args(["--token", &d.token, "list-base"]));
    ok(cli(&d)
        .env("CLOUDLET_TOKEN_FILE", "/nonexistent/token")
        .env("CLOUDLET_TOKEN", &d.token)
        .arg("list-base"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["base"][..],
        &["synthesis", "only-base"],
        &["run", "abc"],
        &["no-such-command"],
        &["list-base", "--bogus"],
    ] {
        let out = local().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn completions_and_man_pages() {
    let bash = ok(local().args(["completions", "bash"]));
    assert!(
        bash.contains("cloudlet") && bash.contains("info-overlay"),
        "{bash}"
    );
    let zsh = ok_json(local().args(["completions", "zsh"]));
    assert_eq!(zsh["shell"], "zsh");
    assert!(zsh["script"]
        .as_str()
        .unwrap()
        .contains("#compdef cloudlet"));
    let page = ok(local().arg("man"));
    assert!(page.contains(".TH cloudlet 1"), "{page}");
    assert!(page.contains("synthesis"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let wrote = ok_json(local().args(["man", "--dir", dir.path().to_str().unwrap()]));
    let files = wrote["files"].as_array().unwrap();
    assert!(files.len() > 15, "{wrote}");
    let base = std::fs::read_to_string(dir.path().join("cloudlet-base.1")).unwrap();
    assert!(
        base.contains("cloudlet-base") && base.contains("ready"),
        "{base}"
    );
    assert!(dir.path().join("cloudlet.1").exists());
}

/// Runs `c --json`; asserts exit 1, nothing on stdout and one JSON line on stderr
/// `{"error":{"code","message"}}` with `code`; returns the message.
fn fails_json(c: &mut Command, code: &str) -> String {
    let out = c.arg("--json").output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{c:?}: {err}");
    assert!(out.stdout.is_empty(), "{c:?}: stdout {:?}", out.stdout);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    let v: Value = serde_json::from_str(&err).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap().to_string();
    assert!(
        !message.is_empty() && !message.contains(&format!("({code})")),
        "{v}"
    );
    message
}

#[test]
fn json_errors_on_stderr() {
    let d = Daemon::start("cli-json-errors").unwrap();
    let m = fails_json(cli(&d).args(["del-base", "nope"]), "not-found");
    assert!(m.contains("nope"), "{m}");
    let m = fails_json(cli(&d).args(["show-session", "0abc"]), "not-found");
    assert_eq!(m, "no session matches `0abc`");
    let m = fails_json(
        cli(&d)
            .env("CLOUDLET_TOKEN_FILE", "/nonexistent/token")
            .arg("list-base"),
        "unauthorized",
    );
    assert!(m.contains("/nonexistent/token"), "{m}");
    let m = fails_json(local().arg("list-base"), "unreachable");
    assert!(
        m.contains("cannot reach cloudletd at http://127.0.0.1:1"),
        "{m}"
    );
    let tmp = TempDir::new("cli-json-errors-files").unwrap();
    let missing = tmp.0.join("missing.overlay");
    let m = fails_json(
        local().args(["info-overlay", missing.to_str().unwrap()]),
        "local",
    );
    assert!(m.contains("missing.overlay"), "{m}");
    // Usage errors stay clap's text, exit 2.
    let out = local()
        .args(["--json", "list-base", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

/// A stand-in daemon for what the real one cannot show (it ignores If-Range): answers the
/// n-th connection with `replies[n]` and returns the request heads, lowercased.
fn fake_daemon(replies: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for reply in replies {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            heads.push(String::from_utf8_lossy(&head).to_lowercase());
            // The CLI may hang up on an answer it discards.
            let _ = conn.write_all(&reply);
        }
        heads
    });
    (url, served)
}

fn reply(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn resumed_downloads_check_the_file_version_and_the_range() {
    let tmp = TempDir::new("cli-resume").unwrap();
    let export = |url: &str, file: &Path| {
        ok_json(local().args([
            "--url",
            url,
            "--token",
            "t",
            "export-base",
            "x",
            file.to_str().unwrap(),
        ]))
    };
    // If-Range carries the Last-Modified the .part began with.
    let modified = "Wed, 21 Oct 2015 07:28:00 GMT";
    let file = tmp.0.join("a.base");
    std::fs::write(tmp.0.join("a.base.part"), b"hello").unwrap();
    std::fs::write(tmp.0.join("a.base.part.modified"), modified).unwrap();
    let (url, served) = fake_daemon(vec![reply(
        "206 Partial Content",
        &["content-range: bytes 5-9/10"],
        b"world",
    )]);
    let got = export(&url, &file);
    let heads = served.join().unwrap();
    assert!(
        heads[0].starts_with("get /api/v1/bases/x/export "),
        "{heads:?}"
    );
    assert!(heads[0].contains("range: bytes=5-"), "{heads:?}");
    assert!(
        heads[0].contains(&format!("if-range: {}", modified.to_lowercase())),
        "{heads:?}"
    );
    assert_eq!(got["resumed_from"], 5, "{got}");
    assert_eq!(std::fs::read(&file).unwrap(), b"helloworld");
    assert!(!tmp.0.join("a.base.part.modified").exists());

    // A 206 that does not start where the .part ends: start over without a range.
    let file = tmp.0.join("b.base");
    std::fs::write(tmp.0.join("b.base.part"), b"HELLO").unwrap();
    let (url, served) = fake_daemon(vec![
        reply(
            "206 Partial Content",
            &["content-range: bytes 0-9/10"],
            b"helloworld",
        ),
        reply(
            "200 OK",
            &[&format!("last-modified: {modified}")],
            b"helloworld",
        ),
    ]);
    let got = export(&url, &file);
    let heads = served.join().unwrap();
    assert!(
        heads[0].contains("range: bytes=5-") && !heads[0].contains("if-range"),
        "{heads:?}"
    );
    assert!(!heads[1].contains("range:"), "{heads:?}");
    assert_eq!(got["resumed_from"], 0, "{got}");
    assert_eq!(std::fs::read(&file).unwrap(), b"helloworld");
    assert!(!tmp.0.join("b.base.part").exists() && !tmp.0.join("b.base.part.modified").exists());

    // Interrupted: the .part and the Last-Modified it began with stay for the next run.
    let file = tmp.0.join("c.base");
    let mut cut = reply(
        "200 OK",
        &[&format!("last-modified: {modified}")],
        b"helloworld",
    );
    cut.truncate(cut.len() - 5);
    let (url, served) = fake_daemon(vec![cut]);
    let line = fails_with(
        local().args([
            "--url",
            &url,
            "--token",
            "t",
            "export-base",
            "x",
            file.to_str().unwrap(),
        ]),
        "",
    );
    served.join().unwrap();
    assert!(line.contains("run the command again to resume"), "{line}");
    assert_eq!(std::fs::read(tmp.0.join("c.base.part")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read_to_string(tmp.0.join("c.base.part.modified")).unwrap(),
        modified
    );
}

/// Stores `file` in `d` as overlay `id` of base `base_id`, as a finished overlay session
/// would (only VM sessions make overlays; this test has no VM). Writes the catalogue with
/// the `sqlite3` tool (installed by scripts/setup-host.sh; its absence fails the test).
fn seed_overlay(d: &Daemon, id: &str, base_id: &str, file: &Path) {
    let stored = d.data_dir.join("overlays").join(format!("{id}.overlay"));
    std::fs::copy(file, &stored).unwrap();
    let size = std::fs::metadata(&stored).unwrap().len();
    let sql = format!(
        ".timeout 5000\nINSERT INTO overlays (id, base_id, state, file_path, file_size, created_at) \
         VALUES ('{id}', '{base_id}', 'ready', '{}', {size}, '2026-01-01T00:00:00Z');",
        stored.display()
    );
    let mut child = std::process::Command::new("sqlite3")
        .arg(d.data_dir.join("cloudlet.db"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("the sqlite3 tool is needed: run scripts/setup-host.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sqlite3 failed");
}

#[test]
fn download_overlay_by_prefix_and_resumed() {
    let tmp = TempDir::new("cli-dl-overlay").unwrap();
    let vm = make_vm(&tmp, "vm", 31);
    let d = daemon_with_imports(&tmp, "data");
    add_base(&d, &vm, "tiny");
    let one = "0190aaaa-0000-7000-8000-000000000001";
    let two = "0190bbbb-0000-7000-8000-000000000002";
    seed_overlay(&d, one, &vm.base_id, &vm.overlay);
    seed_overlay(&d, two, &vm.base_id, &vm.overlay);
    let bytes = std::fs::read(&vm.overlay).unwrap();

    let line = fails_with(cli(&d).args(["download-overlay", "0190"]), "ambiguous");
    assert!(
        line.contains("0190aaaa") && line.contains("0190bbbb"),
        "{line}"
    );
    // Default file: ./<id>.overlay.
    let text = ok(cli(&d)
        .current_dir(&tmp.0)
        .args(["download-overlay", "0190a"]));
    assert!(
        text.starts_with(&format!("downloaded overlay {one} to {one}.overlay")),
        "{text}"
    );
    assert_eq!(
        std::fs::read(tmp.0.join(format!("{one}.overlay"))).unwrap(),
        bytes
    );
    // -o FILE, resumed from a .part.
    let file = tmp.0.join("app.overlay");
    let half = bytes.len() / 2;
    std::fs::write(tmp.0.join("app.overlay.part"), &bytes[..half]).unwrap();
    let got = ok_json(cli(&d).args(["download-overlay", "0190b", "-o", file.to_str().unwrap()]));
    assert_eq!(got["file"], file.to_str().unwrap(), "{got}");
    assert_eq!(got["bytes"], bytes.len() as u64, "{got}");
    assert_eq!(got["resumed_from"], half as u64, "{got}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // The file is an overlay for the base it was stored with.
    let info = ok_json(local().args(["info-overlay", file.to_str().unwrap()]));
    assert_eq!(info["base_id"], vm.base_id.as_str());
}

#[test]
fn sessions_in_every_active_state_are_listed_and_have_a_console() {
    let tmp = TempDir::new("cli-active-states").unwrap();
    let vm = make_vm(&tmp, "vm", 41);
    let d = daemon_with_imports(&tmp, "data");
    add_base(&d, &vm, "tiny");
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let held = d.stalled_upload("/api/v1/synthesis/upload?base=tiny", &overlay[..4096]);
    let listed = wait_until(Duration::from_secs(20), || {
        let v = ok_json(cli(&d).arg("list-session"));
        let s = v.as_array()?.first()?.clone();
        (s["state"] == "decoding").then_some(s)
    })
    .expect("the held synthesis is listed while decoding");
    let id = listed["id"].as_str().unwrap();
    // The table shows it too, and `console` does not refuse it.
    let table = ok(cli(&d).arg("list-session"));
    assert!(table.contains("decoding"), "{table}");
    let console = ok(cli(&d).args(["console", id]));
    assert!(console.contains("console.sock"), "{console}");
    let host = ok_json(cli(&d).args(["console", id]));
    assert_eq!(host["id"], id, "{host}");
    drop(held);
}

#[test]
fn refused_uploads_show_the_daemons_answer() {
    // The daemon answers before it has read a whole upload (wrong base, a corrupt segment,
    // no free slot). With 48 MiB more to send than socket buffers hold, the CLI is still
    // sending when the answer comes: it must print that answer, not a transport error.
    let tmp = TempDir::new("cli-early").unwrap();
    let a = make_vm(&tmp, "a", 31);
    let b = make_vm(&tmp, "b", 32);
    let d = Daemon::start("cli-early-d").unwrap(); // no import directories: files are uploaded
    add_base(&d, &a, "a");
    add_base(&d, &b, "b");
    let overlay = std::fs::read(&a.overlay).unwrap();
    let padded = |mut bytes: Vec<u8>| {
        bytes.resize(bytes.len() + (48 << 20), 0x5a);
        bytes
    };
    let wrong_base = tmp.0.join("for-a.overlay");
    std::fs::write(&wrong_base, padded(overlay.clone())).unwrap();
    fails_with(
        cli(&d).args(["synthesis", "b", wrong_base.to_str().unwrap()]),
        "overlay-base-mismatch",
    );
    let mut corrupt = overlay.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x10;
    let corrupt_file = tmp.0.join("corrupt.overlay");
    std::fs::write(&corrupt_file, padded(corrupt)).unwrap();
    fails_with(
        cli(&d).args(["synthesis", "a", corrupt_file.to_str().unwrap()]),
        "overlay-corrupt",
    );
    // Both synthesis slots held by stalled uploads: the third is refused before its body.
    let held: Vec<_> = (0..2)
        .map(|_| d.stalled_upload("/api/v1/synthesis/upload?base=a", &overlay[..4096]))
        .collect();
    let busy = wait_until(Duration::from_secs(20), || {
        let v = ok_json(cli(&d).arg("list-session"));
        (v.as_array()?.len() == 2).then_some(())
    });
    assert!(
        busy.is_some(),
        "the two stalled uploads never held both slots"
    );
    // --no-wait: refused at once (without it the CLI waits: tests/tests/cli_flows.rs).
    let line = fails_with(
        cli(&d).args(["synthesis", "--no-wait", "a", wrong_base.to_str().unwrap()]),
        "busy",
    );
    assert!(line.contains("--no-wait"), "{line}");
    // A wait that runs out says so (--quiet: no waiting lines, only the error).
    let line = fails_with(
        cli(&d).args([
            "--quiet",
            "synthesis",
            "--max-wait",
            "3",
            "a",
            wrong_base.to_str().unwrap(),
        ]),
        "busy",
    );
    assert!(line.contains("within 3 s"), "{line}");
    drop(held);

    // The same for the other uploads: a base archive refused from its first bytes...
    let archive = tmp.0.join("a.cloudlet-base");
    ok_json(cli(&d).args(["export-base", "a", archive.to_str().unwrap()]));
    let mut damaged = std::fs::read(&archive).unwrap();
    for b in damaged.iter_mut().take(64) {
        *b ^= 0xff;
    }
    let damaged_file = tmp.0.join("damaged.cloudlet-base");
    std::fs::write(&damaged_file, padded(damaged)).unwrap();
    fails_with(
        cli(&d).args([
            "import-base",
            damaged_file.to_str().unwrap(),
            "--name",
            "broken",
        ]),
        "invalid-request",
    );
    // ... and a disk image over the daemon's max_upload_bytes, refused from its length.
    let small = Daemon::start_in(
        &tmp.0.join("small-limit"),
        &[("CLOUDLET_MAX_UPLOAD_BYTES", "8388608")],
    )
    .unwrap();
    let big_disk = tmp.0.join("big-disk.img");
    std::fs::write(&big_disk, padded(Vec::new())).unwrap();
    fails_with(
        cli(&small).args([
            "add-base",
            big_disk.to_str().unwrap(),
            a.workload.base_save.as_ref().unwrap().to_str().unwrap(),
            "--name",
            "too-big",
        ]),
        "too-large",
    );
}
