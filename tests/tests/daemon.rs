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

/// A libvirtd that accepts connections and never answers cannot make the daemon
/// unreachable: `/health` answers at once with `starting`, other routes 503 + Retry-After,
/// and after `libvirt_timeout_s` the daemon serves without libvirt and says why in its log.
#[test]
fn a_wedged_libvirtd_does_not_make_the_daemon_unreachable() {
    use cloudlet_e2e::daemon::{get, send};
    use std::net::SocketAddr;
    use std::process::{Command, Stdio};

    let tmp = TempDir::new("wedged-libvirt").unwrap();
    let sock = tmp.0.join("libvirt-sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new(); // accepted, never answered
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let log = tmp.0.join("daemon.log");
    let mut child = Command::new(binary("cloudletd").unwrap())
        .env("CLOUDLET_LISTEN", addr.to_string())
        .env("CLOUDLET_TOKEN_FILE", tmp.0.join("token"))
        .env("CLOUDLET_DATA_DIR", tmp.0.join("data"))
        .env(
            "CLOUDLET_LIBVIRT_URI",
            format!("qemu+unix:///system?socket={}", sock.display()),
        )
        .env("CLOUDLET_LIBVIRT_TIMEOUT_S", "4")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let starting =
        cloudlet_e2e::wait_until(Duration::from_secs(10), || match get(addr, "/health") {
            Ok((200, body)) => Some(body),
            _ => None,
        })
        .expect("/health answers while libvirt hangs");
    assert!(starting.contains(r#""status":"starting""#), "{starting}");
    let busy = send(addr, "GET", "/api/v1/bases", &[], &[]).unwrap();
    assert_eq!(busy.status, 503, "{:?}", busy.json());
    assert_eq!(busy.header("retry-after"), Some("2"));
    assert_eq!(busy.json()["error"]["code"], "busy");
    let ready = cloudlet_e2e::wait_until(Duration::from_secs(20), || {
        let (status, body) = get(addr, "/health").ok()?;
        (status == 200 && body.contains(r#""status":"ok""#)).then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready.is_some(), "never ready:\n{log}");
    assert!(log.contains("libvirt did not answer"), "{log}");
}

#[test]
fn every_request_has_an_id_in_its_answer_its_error_and_the_access_log() {
    let d = Daemon::start("access-log").unwrap();
    // The client's own id is kept, answered, carried by the error and logged.
    let reply = d
        .send_full(
            "GET",
            "/api/v1/bases/no-such-base?x=secret-query",
            &[("X-Request-Id", "client-req-42")],
            &[],
        )
        .unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-request-id"), Some("client-req-42"));
    assert_eq!(reply.json()["error"]["request_id"], "client-req-42");
    // A missing token (401) and an id that is not a sane token get a fresh id.
    let unauth = cloudlet_e2e::daemon::send(
        d.addr,
        "GET",
        "/api/v1/bases",
        &[("X-Request-Id", "bad id with spaces")],
        &[],
    )
    .unwrap();
    assert_eq!(unauth.status, 401);
    let fresh = unauth.header("x-request-id").unwrap().to_string();
    assert_ne!(fresh, "bad id with spaces");
    assert_eq!(unauth.json()["error"]["request_id"], fresh.as_str());
    let ok = d.send_full("GET", "/api/v1/bases", &[], &[]).unwrap();
    assert_eq!(ok.status, 200);
    assert!(ok.header("x-request-id").is_some_and(|v| !v.is_empty()));

    let log = cloudlet_e2e::wait_until(Duration::from_secs(5), || {
        let log = d.log_text();
        log.contains(&fresh).then_some(log)
    })
    .expect("the 401 is in the access log");
    let line = log
        .lines()
        .find(|l| l.contains("client-req-42") && l.contains("answered"))
        .unwrap_or_else(|| panic!("no access line for client-req-42:\n{log}"));
    assert!(
        line.contains("status=404") && line.contains("/api/v1/bases/no-such-base"),
        "{line}"
    );
    // Neither the token nor the query string reaches the log.
    assert!(!log.contains(&d.token), "the token is in the log:\n{log}");
    assert!(!log.contains("secret-query"), "{log}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_request_span() {
    let tmp = TempDir::new("json-log").unwrap();
    let d = Daemon::start_in(&tmp.0.join("data"), &[("CLOUDLET_LOG_FORMAT", "json")]).unwrap();
    let reply = d
        .send_full(
            "GET",
            "/api/v1/overlays",
            &[("X-Request-Id", "json-req-7")],
            &[],
        )
        .unwrap();
    assert_eq!(reply.status, 200);
    let line = cloudlet_e2e::wait_until(Duration::from_secs(5), || {
        d.log_text()
            .lines()
            .find(|l| l.contains("json-req-7"))
            .map(str::to_string)
    })
    .expect("the access line");
    let text = d.log_text();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
    }
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["status"], 200, "{v}");
    assert_eq!(v["span"]["id"], "json-req-7", "{v}");
    assert_eq!(v["span"]["path"], "/api/v1/overlays", "{v}");
    // A bad value is refused at start, naming the key.
    let out = std::process::Command::new(binary("cloudletd").unwrap())
        .arg("print-config")
        .env("CLOUDLET_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("log_format"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_hears_ready_after_reconciling_and_stopping_at_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let tmp = TempDir::new("notify").unwrap();
    let socket = tmp.0.join("notify.sock");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut d = Daemon::start_in(
        &tmp.0.join("data"),
        &[("NOTIFY_SOCKET", socket.to_str().unwrap())],
    )
    .unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    while !messages.iter().any(|m: &String| m.contains("READY=1")) {
        let n = listener
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}); got {messages:?}"));
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // The status line before READY, READY only once /health says ok (Daemon::start waited
    // for that; READY must not come from a daemon still reconciling).
    assert!(messages[0].starts_with("STATUS="), "{messages:?}");
    let (_, health) = d.get("/health").unwrap();
    assert!(health.contains(r#""status":"ok""#), "{health}");
    assert!(d.stop().unwrap().success());
    let n = listener.recv(&mut buf).expect("STOPPING=1 at SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
