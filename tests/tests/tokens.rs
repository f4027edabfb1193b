//! Per-device tokens against the real daemon: roles per route (a device token gets 403 on
//! every admin route), session and overlay ownership (403 on another device's, listings
//! show only its own), revocation effective on the very next request, secrets never
//! listed, the token file still the admin token, and `cloudlet token`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use cloudlet_e2e::cli::Cli;
use cloudlet_e2e::daemon::{send, Reply, TempDir};
use cloudlet_e2e::synthetic::{synthetic_vm, SyntheticVm};
use cloudlet_e2e::{fixture_guest, require_host, Daemon};
use cloudlet_engine::testkit::WorkloadSpec;
use serde_json::{json, Value};

/// A daemon whose import dir holds a small synthetic VM, registered as base `syn`.
fn daemon_with_syn(tag: &str) -> (TempDir, Daemon, SyntheticVm) {
    let tmp = TempDir::new(tag).unwrap();
    let files = tmp.0.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let vm = synthetic_vm(&files, &WorkloadSpec::small(3)).unwrap();
    let import = files.display().to_string();
    let d = Daemon::start_in(&tmp.0.join("data"), &[("CLOUDLET_IMPORT_DIRS", &import)]).unwrap();
    vm.add_base(&d, "syn", &[8080]).unwrap();
    (tmp, d, vm)
}

/// A request with `token`; JSON bodies get their content type.
fn call(d: &Daemon, token: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let auth = format!("Bearer {token}");
    let text = body.map(Value::to_string).unwrap_or_default();
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    send(d.addr, method, path, &headers, text.as_bytes()).unwrap()
}

fn code(r: &Reply) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or("<no error code>")
        .to_string()
}

/// Creates a token with the admin token; returns (id, secret).
fn create_token(d: &Daemon, name: &str, role: &str) -> (String, String) {
    let r = call(
        d,
        &d.token,
        "POST",
        "/api/v1/tokens",
        Some(&json!({ "name": name, "role": role })),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    let v = r.json();
    assert_eq!(
        (v["name"].as_str(), v["role"].as_str()),
        (Some(name), Some(role))
    );
    let secret = v["token"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 64, "256 bits as hex: {secret}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    (v["id"].as_str().unwrap().to_string(), secret)
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn device_tokens_reach_device_routes_and_only_their_own_sessions() {
    let (_tmp, mut d, vm) = daemon_with_syn("tokens");
    let admin = d.token.clone();
    let (_, phone_a) = create_token(&d, "phone-a", "device");
    let (b_id, phone_b) = create_token(&d, "phone-b", "device");
    // A live name cannot be taken twice.
    let twin = call(
        &d,
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(&json!({"name": "phone-a", "role": "device"})),
    );
    assert_eq!((twin.status, code(&twin)), (409, "conflict".into()));
    let bad_role = call(
        &d,
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(&json!({"name": "x", "role": "root"})),
    );
    assert_eq!(bad_role.status, 400, "{}", bad_role.json());

    // The list shows every token and no secret.
    let listed = call(&d, &admin, "GET", "/api/v1/tokens", None);
    assert_eq!(listed.status, 200);
    let text = String::from_utf8_lossy(&listed.body).into_owned();
    for secret in [&admin, &phone_a, &phone_b] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret is listed: {text}"
        );
    }
    let tokens = listed.json();
    let names: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bootstrap", "phone-a", "phone-b"], "{tokens}");
    assert_eq!(
        tokens[0]["role"], "admin",
        "the token file is the admin token"
    );
    assert!(tokens
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none()));

    // Device routes answer a device.
    for path in ["/api/v1/bases", "/api/v1/bases/syn", "/api/v1/openapi.json"] {
        assert_eq!(call(&d, &phone_a, "GET", path, None).status, 200, "{path}");
    }
    // Every admin route refuses it, before doing anything.
    let overlay_body = json!({"name": "b2", "disk": vm.workload.base_disk});
    let admin_routes: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/api/v1/bases".into(), Some(overlay_body.clone())),
        ("POST", "/api/v1/bases/add".into(), Some(overlay_body)),
        (
            "POST",
            "/api/v1/bases/import".into(),
            Some(json!("x".repeat(2 << 20))),
        ),
        ("DELETE", "/api/v1/bases/syn?force=true".into(), None),
        ("GET", "/api/v1/bases/syn/export".into(), None),
        (
            "DELETE",
            format!("/api/v1/overlays/{}", cloudlet_e2e::random_uuid()),
            None,
        ),
        ("POST", "/api/v1/uploads".into(), None),
        ("DELETE", "/api/v1/sessions".into(), None),
        ("GET", "/api/v1/tokens".into(), None),
        (
            "POST",
            "/api/v1/tokens".into(),
            Some(json!({"name": "mine", "role": "admin"})),
        ),
        ("DELETE", "/api/v1/tokens/phone-b".into(), None),
        ("DELETE", format!("/api/v1/tokens/{b_id}"), None),
        ("GET", "/metrics".into(), None),
    ];
    for (method, path, body) in &admin_routes {
        let r = call(&d, &phone_a, method, path, body.as_ref());
        assert_eq!(
            (r.status, code(&r)),
            (403, "forbidden".into()),
            "{method} {path}"
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("admin"), "{message}");
    }
    // Nothing happened: the base is there, phone-b still works, no admin token was made.
    assert_eq!(
        call(&d, &admin, "GET", "/api/v1/bases/syn", None).status,
        200
    );
    assert_eq!(call(&d, &phone_b, "GET", "/api/v1/bases", None).status, 200);
    let after = call(&d, &admin, "GET", "/api/v1/tokens", None).json();
    assert_eq!(after.as_array().unwrap().len(), 3, "{after}");

    // A device's synthesis is its own session (this one fails at the restore: the
    // synthetic VM is no real VM, but its session row is what matters here).
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let auth_a = format!("Bearer {phone_a}");
    let up = send(
        d.addr,
        "POST",
        "/api/v1/synthesis/upload?base=syn",
        &[
            ("Authorization", &auth_a),
            ("Content-Type", "application/octet-stream"),
        ],
        &overlay,
    )
    .unwrap();
    assert_ne!(
        up.status,
        201,
        "a synthetic VM does not resume: {}",
        up.json()
    );
    let a_sessions = ids(&call(&d, &phone_a, "GET", "/api/v1/sessions", None).json());
    assert_eq!(a_sessions.len(), 1, "{a_sessions:?}");
    let sid = &a_sessions[0];
    // An admin's session, invisible to devices.
    let admin_session = call(
        &d,
        &admin,
        "POST",
        "/api/v1/synthesis",
        Some(&json!({"base": "syn", "overlay_path": vm.overlay})),
    );
    assert_ne!(admin_session.status, 201, "{}", admin_session.json());
    let all = ids(&call(&d, &admin, "GET", "/api/v1/sessions", None).json());
    assert_eq!(all.len(), 2, "admin sees every session: {all:?}");
    assert!(all.contains(sid));
    assert_eq!(
        ids(&call(&d, &phone_b, "GET", "/api/v1/sessions", None).json()),
        Vec::<String>::new(),
        "phone-b sees none of the others' sessions"
    );
    let admins = all.iter().find(|id| *id != sid).unwrap();
    for (who, token, session) in [("phone-b", &phone_b, sid), ("phone-a", &phone_a, admins)] {
        for (method, suffix, body) in [
            ("GET", "", None),
            ("GET", "/host", None),
            ("POST", "/run", Some(json!({"command": "true"}))),
            ("POST", "/stop", None),
            ("POST", "/finish", None),
        ] {
            let path = format!("/api/v1/sessions/{session}{suffix}");
            let r = call(&d, token, method, &path, body.as_ref());
            assert_eq!(
                (r.status, code(&r)),
                (403, "forbidden".into()),
                "{who}: {method} {path}"
            );
        }
    }
    // The owner reaches its session: shown, host details, stop (a no-op, it failed),
    // run refused for its state, not its owner.
    let own = format!("/api/v1/sessions/{sid}");
    assert_eq!(call(&d, &phone_a, "GET", &own, None).status, 200);
    assert_eq!(
        call(&d, &phone_a, "GET", &format!("{own}/host"), None).status,
        200
    );
    assert_eq!(
        call(&d, &phone_a, "POST", &format!("{own}/stop"), None).status,
        200
    );
    let run = call(
        &d,
        &phone_a,
        "POST",
        &format!("{own}/run"),
        Some(&json!({"command": "true"})),
    );
    assert_eq!((run.status, code(&run)), (409, "conflict".into()));
    // Local paths are the operator's; a device names overlays by id or URL.
    let by_path = call(
        &d,
        &phone_a,
        "POST",
        "/api/v1/synthesis",
        Some(&json!({"base": "syn", "overlay_path": vm.overlay})),
    );
    assert_eq!((by_path.status, code(&by_path)), (403, "forbidden".into()));

    // Revocation holds from the very next request, without a restart.
    let revoked = call(&d, &admin, "DELETE", "/api/v1/tokens/phone-a", None);
    assert_eq!(revoked.status, 200, "{}", revoked.json());
    assert!(revoked.json()["revoked_at"].is_string());
    let r = call(&d, &phone_a, "GET", "/api/v1/bases", None);
    assert_eq!((r.status, code(&r)), (401, "unauthorized".into()));
    assert_eq!(call(&d, &phone_b, "GET", "/api/v1/bases", None).status, 200);
    let again = call(&d, &admin, "DELETE", "/api/v1/tokens/phone-a", None);
    assert_eq!(
        again.status,
        404,
        "a revoked name names nothing: {}",
        again.json()
    );

    // The last live admin token stays.
    let last = call(&d, &admin, "DELETE", "/api/v1/tokens/bootstrap", None);
    assert_eq!((last.status, code(&last)), (409, "conflict".into()));
    assert!(last.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last live admin"));
    let (_, ops) = create_token(&d, "ops", "admin");
    let r = call(&d, &ops, "DELETE", "/api/v1/tokens/bootstrap", None);
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(call(&d, &admin, "GET", "/api/v1/bases", None).status, 401);

    // A restart does not bring the revoked token file back.
    d.stop().unwrap();
    let import = vm.overlay.parent().unwrap().display().to_string();
    let d2 = Daemon::start_in(&d.data_dir, &[("CLOUDLET_IMPORT_DIRS", &import)]).unwrap();
    assert_eq!(d2.token, admin, "the same token file");
    assert_eq!(call(&d2, &admin, "GET", "/api/v1/bases", None).status, 401);
    assert_eq!(call(&d2, &ops, "GET", "/api/v1/bases", None).status, 200);
    assert_eq!(
        call(&d2, &phone_b, "GET", "/api/v1/bases", None).status,
        200
    );
    assert_eq!(
        call(&d2, &phone_a, "GET", "/api/v1/bases", None).status,
        401
    );
    assert!(
        d2.log_text().contains("token file's token is revoked"),
        "{}",
        d2.log_text()
    );
}

#[test]
fn token_commands_of_the_cli() {
    let (_tmp, d, _vm) = daemon_with_syn("token-cli");
    let cli = Cli::new(&d);
    let human = cli.ok(&["token", "create", "--role", "device", "--name", "phone-7"]);
    let secret = human
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no secret printed: {human}"))
        .to_string();
    assert!(human.contains("shown only now"), "{human}");
    let made = cli.json(&["token", "create", "--role", "admin", "--name", "ops-2"]);
    assert_eq!(made["role"], "admin");
    let listed = cli.ok(&["token", "list"]);
    assert!(
        listed.contains("phone-7") && listed.contains("bootstrap"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "{listed}");
    let json_list = cli.json(&["token", "list"]);
    assert!(!json_list.to_string().contains(&secret));
    assert_eq!(json_list.as_array().unwrap().len(), 3);

    // The device's token works from the flag, the environment and a file.
    let device = |env: &[(&str, &str)], args: &[&str]| {
        std::process::Command::new(cloudlet_e2e::daemon::binary("cloudlet").unwrap())
            .env("CLOUDLET_URL", format!("http://{}", d.addr))
            .env("CLOUDLET_TOKEN_FILE", "/nonexistent/token")
            .env_remove("CLOUDLET_TOKEN")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    };
    let out = device(&[], &["--token", &secret, "list-base"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("syn"));
    assert!(device(&[("CLOUDLET_TOKEN", &secret)], &["list-base"])
        .status
        .success());
    let file = d.data_dir.with_extension("device-token");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let by_file = file.display().to_string();
    assert!(device(&[("CLOUDLET_TOKEN_FILE", &by_file)], &["list-base"])
        .status
        .success());
    // An admin command with it: 403 `forbidden`, exit 1.
    let out = device(&[("CLOUDLET_TOKEN", &secret)], &["del-base", "syn"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(forbidden)"), "{err}");

    let revoked = cli.ok(&["token", "revoke", "phone-7"]);
    assert!(
        revoked.contains("revoked device token `phone-7`"),
        "{revoked}"
    );
    let out = device(&[("CLOUDLET_TOKEN", &secret)], &["list-base"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(unauthorized)"));
    let listed = cli.json(&["token", "list"]);
    let phone = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "phone-7")
        .unwrap();
    assert!(phone["revoked_at"].is_string(), "{phone}");
    let _ = std::fs::remove_file(&file);
}

/// With real VMs: a device makes an overlay on the admin's base, downloads it, and
/// synthesizes from it; another device can neither download it, synthesize from it, nor
/// touch the running session.
#[test]
fn a_device_drives_its_own_vm_and_downloads_only_its_own_overlays() {
    if !require_host("a_device_drives_its_own_vm_and_downloads_only_its_own_overlays") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("tokens-vm").unwrap();
    let import = guest.dir.display().to_string();
    let d = Daemon::start_in(&tmp.0.join("data"), &[("CLOUDLET_IMPORT_DIRS", &import)]).unwrap();
    let (status, base) = d
        .json("POST", "/api/v1/bases", Some(&guest.base_request("tiny")))
        .unwrap();
    assert_eq!(status, 201, "{base}\n{}", d.log_text());
    let (_, phone_a) = create_token(&d, "phone-a", "device");
    let (_, phone_b) = create_token(&d, "phone-b", "device");

    let made = call(
        &d,
        &phone_a,
        "POST",
        "/api/v1/overlays",
        Some(&json!({"base": "tiny", "script": ["echo made-by-a > /root/mark"], "finish": true})),
    );
    assert_eq!(made.status, 201, "{}\n{}", made.json(), d.log_text());
    let overlay = made.json()["overlay_id"].as_str().unwrap().to_string();
    let file = format!("/api/v1/overlays/{overlay}/file");
    let mine = call(&d, &phone_a, "GET", &file, None);
    assert_eq!(mine.status, 200);
    assert!(mine.body.len() > 1000, "{} bytes", mine.body.len());
    assert_eq!(
        call(&d, &d.token, "GET", &file, None).body,
        mine.body,
        "admins reach it"
    );
    assert_eq!(
        ids(&call(&d, &phone_a, "GET", "/api/v1/overlays", None).json()),
        vec![overlay.clone()]
    );
    assert!(ids(&call(&d, &phone_b, "GET", "/api/v1/overlays", None).json()).is_empty());
    for path in [file.clone(), format!("/api/v1/overlays/{overlay}")] {
        let r = call(&d, &phone_b, "GET", &path, None);
        assert_eq!((r.status, code(&r)), (403, "forbidden".into()), "{path}");
    }
    let steal = call(
        &d,
        &phone_b,
        "POST",
        "/api/v1/synthesis",
        Some(&json!({"base": "tiny", "overlay_id": overlay})),
    );
    assert_eq!((steal.status, code(&steal)), (403, "forbidden".into()));

    let synth = call(
        &d,
        &phone_a,
        "POST",
        "/api/v1/synthesis",
        Some(&json!({"base": "tiny", "overlay_id": overlay})),
    );
    assert_eq!(synth.status, 201, "{}\n{}", synth.json(), d.log_text());
    let sid = synth.json()["id"].as_str().unwrap().to_string();
    let own = format!("/api/v1/sessions/{sid}");
    for (method, suffix, body) in [
        ("GET", "", None),
        ("GET", "/host", None),
        ("POST", "/run", Some(json!({"command": "cat /root/mark"}))),
        ("POST", "/stop", None),
    ] {
        let r = call(
            &d,
            &phone_b,
            method,
            &format!("{own}{suffix}"),
            body.as_ref(),
        );
        assert_eq!(
            (r.status, code(&r)),
            (403, "forbidden".into()),
            "{method} {suffix}"
        );
    }
    let ran = call(
        &d,
        &phone_a,
        "POST",
        &format!("{own}/run"),
        Some(&json!({"command": "cat /root/mark"})),
    );
    assert_eq!(ran.status, 200, "{}", ran.json());
    assert_eq!(ran.json()["output"].as_str().unwrap().trim(), "made-by-a");
    assert_eq!(
        call(&d, &phone_a, "GET", &own, None).json()["state"],
        "running"
    );
    let stopped = call(&d, &phone_a, "POST", &format!("{own}/stop"), None);
    assert_eq!(stopped.json()["state"], "stopped", "{}", stopped.json());
}
