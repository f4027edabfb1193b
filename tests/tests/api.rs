//! The REST API's guarantees against the real daemon (no VM needed): authentication,
//! JSON errors with stable codes, path escapes refused, upload/stall/concurrency limits,
//! resumable downloads, uploads consumed by the request that names them, progress
//! streams, overlay URLs limited to allowed origins, metrics, bounded memory on a large
//! streamed upload.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use cloudlet_e2e::daemon::{get, send, TempDir};
use cloudlet_e2e::synthetic::{synthetic_vm, SyntheticVm};
use cloudlet_e2e::Daemon;
use cloudlet_engine::testkit::WorkloadSpec;
use serde_json::{json, Value};

/// A daemon whose import dir holds a small synthetic VM, registered as base `syn`.
fn daemon_with_base(tag: &str, env: &[(&str, &str)]) -> (TempDir, Daemon, SyntheticVm) {
    daemon_with_workload(tag, &WorkloadSpec::small(7), env)
}

/// A daemon whose import dir holds the synthetic VM `spec`, registered as base `syn`.
fn daemon_with_workload(
    tag: &str,
    spec: &WorkloadSpec,
    env: &[(&str, &str)],
) -> (TempDir, Daemon, SyntheticVm) {
    let tmp = TempDir::new(tag).unwrap();
    let files = tmp.0.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let vm = synthetic_vm(&files, spec).unwrap();
    let import = files.display().to_string();
    // A synthetic VM never resumes: with a save file the whole overlay decodes before the
    // restore fails, which is what these tests observe (a streamed restore stops the
    // decode as soon as QEMU refuses the stream: `qemu_refusing_a_streamed_restore_...`).
    let mut all = vec![
        ("CLOUDLET_IMPORT_DIRS", import.as_str()),
        ("CLOUDLET_RESTORE_STREAM", "off"),
    ];
    all.extend_from_slice(env);
    let d = Daemon::start_in(&tmp.0.join("data"), &all).unwrap();
    vm.add_base(&d, "syn", &[8080]).unwrap();
    (tmp, d, vm)
}

#[test]
fn qemu_refusing_a_streamed_restore_fails_cleanly() {
    if !cloudlet_e2e::require_host("qemu_refusing_a_streamed_restore_fails_cleanly") {
        return;
    }
    // QEMU refuses the synthetic VM's memory stream part way: the answer is the restore's
    // error, and nothing is left (no VM, no session files, no FIFO, no libvirt job: the
    // same request fails the same way again, promptly).
    let (_tmp, d, vm) = daemon_with_base("refused", &[("CLOUDLET_RESTORE_STREAM", "on")]);
    let bytes = std::fs::read(&vm.overlay).unwrap();
    for attempt in 0..2 {
        let started = std::time::Instant::now();
        let (status, v) = d
            .upload("/api/v1/synthesis/upload?base=syn", &bytes)
            .unwrap();
        assert_eq!((status, code(&v)), (502, "hypervisor-error"), "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("restore"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
        let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
        let sessions = sessions.as_array().unwrap();
        assert_eq!(sessions.len(), attempt + 1);
        for s in sessions {
            assert_eq!(s["state"], "failed", "{s}");
            assert!(s["timings"].get("restore").is_none(), "no save file: {s}");
            let vm = s["vm_name"].as_str().unwrap();
            assert!(
                cloudlet_e2e::domains_with_prefix(vm).is_empty(),
                "{vm} left"
            );
        }
        let left: Vec<_> = std::fs::read_dir(d.data_dir.join("sessions"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "session files left: {left:?}");
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[test]
fn every_route_but_health_needs_the_token() {
    let d = Daemon::start("auth").unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&d.token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "token file must be private");
    assert_eq!(get(d.addr, "/health").unwrap().0, 200);
    for path in [
        "/api/v1/bases",
        "/api/v1/sessions",
        "/metrics",
        "/api/v1/openapi.json",
    ] {
        let reply = send(d.addr, "GET", path, &[], &[]).unwrap();
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(code(&reply.json()), "unauthorized", "{path}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let wrong = send(
            d.addr,
            "GET",
            path,
            &[("Authorization", "Bearer nope")],
            &[],
        )
        .unwrap();
        assert_eq!(wrong.status, 401, "{path}");
        let basic = format!("Basic {}", d.token);
        let other = send(d.addr, "GET", path, &[("Authorization", &basic)], &[]).unwrap();
        assert_eq!(other.status, 401, "{path}");
        let lower = format!("bearer {}", d.token);
        let any_case = send(d.addr, "GET", path, &[("Authorization", &lower)], &[]).unwrap();
        assert_eq!(
            any_case.status, 200,
            "the scheme is case-insensitive: {path}"
        );
        assert_eq!(d.send("GET", path, &[], &[]).unwrap().0, 200, "{path}");
    }
    // Refused before the body is looked at: an unauthenticated upload stores nothing.
    let reply = send(d.addr, "POST", "/api/v1/uploads", &[], &[1; 4096]).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(
        std::fs::read_dir(d.data_dir.join("incoming"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn errors_are_json_with_stable_codes_and_paths_cannot_escape() {
    let d = Daemon::start("errors").unwrap();
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        ("GET", "/api/v1/nope", None, 404, "not-found"),
        ("PUT", "/api/v1/bases", None, 405, "method-not-allowed"),
        (
            "POST",
            "/api/v1/synthesis",
            Some("{not json"),
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/api/v1/synthesis",
            Some(r#"{"base":"x","bogus":1}"#),
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/api/v1/synthesis",
            Some(r#"{"base":"x"}"#),
            400,
            "invalid-request",
        ),
        // Local paths outside the import dirs, however they are spelled.
        (
            "POST",
            "/api/v1/bases",
            Some(r#"{"name":"b","disk":"/etc/passwd"}"#),
            403,
            "path-not-allowed",
        ),
        (
            "POST",
            "/api/v1/bases",
            Some(r#"{"name":"b","disk":"../../../../etc/shadow"}"#),
            403,
            "path-not-allowed",
        ),
        (
            "POST",
            "/api/v1/synthesis",
            Some(r#"{"base":"x","overlay_path":"upload:../../cloudlet.db"}"#),
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/api/v1/bases/add",
            Some(r#"{"name":"b","disk":"/proc/self/environ","save_file":"/etc/hosts"}"#),
            403,
            "path-not-allowed",
        ),
        // Ids and names are validated before they reach a path or a query.
        (
            "GET",
            "/api/v1/overlays/..%2F..%2Fcloudlet.db/file",
            None,
            400,
            "invalid-request",
        ),
        (
            "GET",
            "/api/v1/sessions/x%20y",
            None,
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/api/v1/bases",
            Some(r#"{"name":"../evil","disk":"/x"}"#),
            400,
            "invalid-request",
        ),
        ("GET", "/api/v1/bases/nothing-here", None, 404, "not-found"),
        (
            "POST",
            "/api/v1/synthesis",
            Some(r#"{"base":"x","overlay_url":"http://127.0.0.1:1/o"}"#),
            403,
            "url-not-allowed",
        ),
        (
            "POST",
            "/api/v1/synthesis",
            Some(r#"{"base":"x","overlay_url":"file:///etc/passwd"}"#),
            403,
            "url-not-allowed",
        ),
    ];
    for (method, path, body, status, want) in cases {
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let reply = d
            .send_full(method, path, headers, body.unwrap_or("").as_bytes())
            .unwrap();
        let v = reply.json();
        assert_eq!(
            (reply.status, code(&v)),
            (status, want),
            "{method} {path} {body:?} → {v}"
        );
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

#[test]
fn downloads_resume_uploads_are_consumed_and_progress_streams() {
    let (_tmp, d, vm) = daemon_with_base("files", &[]);

    // Export: a file with Content-Length, resumable with Range.
    let full = d
        .send_full("GET", "/api/v1/bases/syn/export", &[], &[])
        .unwrap();
    assert_eq!(full.status, 200);
    assert_eq!(
        full.header("content-length"),
        Some(full.body.len().to_string().as_str())
    );
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let tail = d
        .send_full(
            "GET",
            "/api/v1/bases/syn/export",
            &[("Range", "bytes=1000-")],
            &[],
        )
        .unwrap();
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, full.body[1000..]);
    // If-Range: the range only holds for the same version of the file.
    let modified = full.header("last-modified").unwrap().to_string();
    for (validator, status, len) in [
        (modified.as_str(), 206, full.body.len() - 1000),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 200, full.body.len()),
    ] {
        let reply = d
            .send_full(
                "GET",
                "/api/v1/bases/syn/export",
                &[("Range", "bytes=1000-"), ("If-Range", validator)],
                &[],
            )
            .unwrap();
        assert_eq!(
            (reply.status, reply.body.len()),
            (status, len),
            "{validator}"
        );
    }
    let beyond = format!("bytes={}-", full.body.len() + 10);
    let reply = d
        .send_full(
            "GET",
            "/api/v1/bases/syn/export",
            &[("Range", &beyond)],
            &[],
        )
        .unwrap();
    assert_eq!(reply.status, 416);
    assert_eq!(code(&reply.json()), "range-not-satisfiable");
    assert_eq!(
        reply.header("content-range").map(str::to_string),
        Some(format!("bytes */{}", full.body.len()))
    );
    // Ranges in unknown units or that do not parse are ignored (RFC 9110): the whole file.
    for ignored in ["bytes=abc", "items=0-1"] {
        let reply = d
            .send_full(
                "GET",
                "/api/v1/bases/syn/export",
                &[("Range", ignored)],
                &[],
            )
            .unwrap();
        assert_eq!(
            (reply.status, reply.body.len()),
            (200, full.body.len()),
            "{ignored}"
        );
    }
    let reply = d
        .send_full(
            "GET",
            "/api/v1/bases/syn/export",
            &[("Range", "BYTES=0-9")],
            &[],
        )
        .unwrap();
    assert_eq!(
        (reply.status, reply.body.len()),
        (206, 10),
        "the unit is case-insensitive"
    );
    // The archive is the base: importing it here again is a conflict, a damaged copy is refused.
    let (status, v) = d
        .upload("/api/v1/bases/import?name=again", &full.body)
        .unwrap();
    assert_eq!((status, code(&v)), (409, "conflict"), "{v}");
    let (status, v) = d
        .upload("/api/v1/bases/import", &full.body[..full.body.len() / 2])
        .unwrap();
    assert_eq!((status, code(&v)), (400, "invalid-request"), "{v}");

    // An upload named by a request is consumed by it, success or not.
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let (status, up) = d.upload("/api/v1/uploads", &overlay).unwrap();
    assert_eq!(status, 201, "{up}");
    assert_eq!(up["size"], overlay.len());
    let id = up["id"].as_str().unwrap();
    let stored = d.data_dir.join(format!("incoming/upload-{id}"));
    assert!(stored.is_file());

    // Synthesis from it, watched as a progress stream: decoding runs (the synthetic VM
    // cannot resume, so it ends with a hypervisor error, reported in the stream).
    let body = json!({ "base": "syn", "overlay_path": format!("upload:{id}") }).to_string();
    let reply = d
        .send_full(
            "POST",
            "/api/v1/synthesis",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/x-ndjson"),
            ],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = String::from_utf8(reply.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        json!({"type": "step", "step": "decode"}),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "step_done" && l["step"] == "decode"),
        "{lines:?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "error", "{lines:?}");
    assert_eq!(last["error"]["code"], "hypervisor-error", "{lines:?}");
    assert!(!stored.exists(), "the upload must be consumed");
    let (status, v) = d
        .json(
            "POST",
            "/api/v1/synthesis",
            Some(&json!({"base": "syn", "overlay_path": format!("upload:{id}")})),
        )
        .unwrap();
    assert_eq!((status, code(&v)), (404, "not-found"), "{v}");

    // A corrupt overlay is refused as such, and counted.
    let mut corrupt = overlay.clone();
    corrupt[100] ^= 0xff;
    let (status, v) = d
        .upload("/api/v1/synthesis/upload?base=syn", &corrupt)
        .unwrap();
    assert_eq!((status, code(&v)), (422, "overlay-corrupt"), "{v}");
    let (_, metrics) = d.get("/metrics").unwrap();
    assert!(
        metrics.contains("cloudlet_syntheses_total{result=\"error\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("cloudlet_sent_bytes_total"), "{metrics}");
}

/// Serves `body` at any path of 127.0.0.1:<port>, or redirects to `redirect` when set.
fn tiny_http_server(body: Vec<u8>, redirect: Option<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = match &redirect {
                Some(to) => {
                    format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
                }
                None => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()),
            };
            let _ = stream.write_all(head.as_bytes());
            if redirect.is_none() {
                let _ = stream.write_all(&body);
            }
        }
    });
    port
}

#[test]
fn overlay_urls_are_fetched_only_from_allowed_origins() {
    let tmp_files = TempDir::new("url-files").unwrap();
    let vm = synthetic_vm(&tmp_files.0, &WorkloadSpec::small(8)).unwrap();
    let good = tiny_http_server(std::fs::read(&vm.overlay).unwrap(), None);
    let elsewhere = tiny_http_server(Vec::new(), None);
    let redirector = tiny_http_server(Vec::new(), Some(format!("http://127.0.0.1:{elsewhere}/o")));
    let allow = format!("http://127.0.0.1:{good},http://127.0.0.1:{redirector}");
    let (_tmp, d, _) = daemon_with_base("url", &[("CLOUDLET_OVERLAY_URL_ALLOW", &allow)]);
    let synth = |url: String| {
        d.json(
            "POST",
            "/api/v1/synthesis",
            Some(&json!({"base": "syn", "overlay_url": url})),
        )
        .unwrap()
    };
    // Allowed: fetched and decoded (this overlay belongs to another synthetic base).
    let (status, v) = synth(format!("http://127.0.0.1:{good}/app.overlay"));
    assert_eq!((status, code(&v)), (422, "overlay-base-mismatch"), "{v}");
    // Another port of the same host is another origin.
    let (status, v) = synth(format!("http://127.0.0.1:{elsewhere}/app.overlay"));
    assert_eq!((status, code(&v)), (403, "url-not-allowed"), "{v}");
    // A redirect out of the allowed origins is not followed.
    let (status, v) = synth(format!("http://127.0.0.1:{redirector}/app.overlay"));
    assert_eq!((status, code(&v)), (502, "fetch-failed"), "{v}");
}

fn read_status(mut s: TcpStream) -> (u16, String) {
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn size_stall_and_concurrency_limits() {
    let (_tmp, d, vm) = daemon_with_base(
        "limits",
        &[
            ("CLOUDLET_MAX_UPLOAD_BYTES", "1048576"),
            ("CLOUDLET_MAX_CONCURRENT_SYNTHESES", "1"),
            ("CLOUDLET_BODY_IDLE_TIMEOUT_S", "3"),
        ],
    );
    // Declared too large: refused before reading.
    let (status, v) = d.upload("/api/v1/uploads", &vec![0u8; 2 << 20]).unwrap();
    assert_eq!((status, code(&v)), (413, "too-large"), "{v}");
    // Undeclared (chunked) and too large: refused when the limit is crossed, nothing kept.
    let mut s = d.stalled_upload("/api/v1/uploads", &vec![1u8; 1 << 19]);
    for _ in 0..3 {
        let chunk = vec![2u8; 1 << 19];
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break; // the daemon answered and closed
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let (status, text) = read_status(s);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("too-large"), "{text}");

    // One synthesis at a time: a second one gets 503 + Retry-After while the first waits
    // for its (stalled) upload; the stalled one ends with a timeout.
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let first = d.stalled_upload("/api/v1/synthesis/upload?base=syn", &overlay[..4096]);
    // Wait until it holds the slot (its session is decoding).
    let decoding = cloudlet_e2e::wait_until(Duration::from_secs(20), || {
        let (_, sessions) = d.json("GET", "/api/v1/sessions", None).ok()?;
        sessions
            .as_array()?
            .iter()
            .any(|s| s["state"] == "decoding")
            .then_some(())
    });
    assert!(
        decoding.is_some(),
        "the stalled synthesis never started decoding"
    );
    let busy = d
        .send_full(
            "POST",
            "/api/v1/synthesis/upload?base=syn",
            &[("Content-Type", "application/octet-stream")],
            &overlay,
        )
        .unwrap();
    assert_eq!(
        (busy.status, code(&busy.json())),
        (503, "busy"),
        "{:?}",
        busy.json()
    );
    assert_eq!(busy.header("retry-after"), Some("2"));
    let (status, text) = read_status(first);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_idle_timeout_s"), "{text}");
    // The slot is free again.
    let (status, v) = d
        .upload("/api/v1/synthesis/upload?base=syn", &overlay)
        .unwrap();
    assert_eq!((status, code(&v)), (502, "hypervisor-error"), "{v}");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_large_overlay_streamed_into_synthesis_keeps_daemon_memory_bounded() {
    // 512 MiB of incompressible disk changes: the overlay is about as large.
    let spec = WorkloadSpec {
        seed: 9,
        disk_bytes: 640 << 20,
        ram_bytes: 8 << 20,
        base_fill_percent: 5,
        disk_random_bytes: 512 << 20,
        disk_text_bytes: 1 << 20,
        disk_tweaked_chunks: 64,
        disk_copied_chunks: 64,
        disk_trimmed_chunks: 0,
        mem_tweaked_pages: 64,
        mem_copied_pages: 16,
        mem_random_pages: 64,
        mem_zeroed_pages: 16,
    };
    let (_tmp, d, vm) = daemon_with_workload("rss", &spec, &[]);
    let overlay_len = std::fs::metadata(&vm.overlay).unwrap().len();
    assert!(overlay_len > 500 << 20, "overlay only {overlay_len} bytes");
    let before = peak_rss_kib(d.pid().unwrap());

    // Streamed chunked (no Content-Length), 1 MiB at a time, as a device would send it.
    let mut file = std::fs::File::open(&vm.overlay).unwrap();
    let mut s = d.stalled_upload("/api/v1/synthesis/upload?base=syn", b"");
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0usize;
    loop {
        let n = file.read(&mut buf).unwrap();
        let chunk = [format!("{n:x}\r\n").as_bytes(), &buf[..n], b"\r\n"].concat();
        if s.write_all(&chunk).is_err() {
            break; // the daemon answered early: the answer below says why
        }
        sent += n;
        if n == 0 {
            break; // that was the last, empty chunk
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let (status, text) = read_status(s);
    // The whole overlay was decoded (the synthetic VM then cannot resume under libvirt).
    assert_eq!(status, 502, "after {sent} bytes sent: {text}");
    assert!(text.contains("hypervisor-error"), "{text}");
    let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
    let decode_ms = &sessions[0]["timings"]["decode"];
    assert!(decode_ms.is_u64(), "decode did not complete: {sessions}");

    let peak = peak_rss_kib(d.pid().unwrap());
    eprintln!(
        "daemon peak RSS: {before} KiB before, {peak} KiB after synthesizing from a {} MiB \
         overlay streamed in (decode {decode_ms} ms)",
        overlay_len >> 20
    );
    assert!(
        peak < before + 192 * 1024,
        "peak RSS grew from {before} KiB to {peak} KiB while a {overlay_len}-byte overlay streamed in"
    );
}

/// No answer names a file of the daemon's data directory, except the operator route
/// `/sessions/{id}/host`: not the lists, not a session (even a failed one, whose libvirt
/// error names its files), not an error answer.
#[test]
fn no_answer_names_a_path_of_the_data_directory() {
    let (_tmp, d, vm) = daemon_with_base("nopaths", &[]);
    let root = d.data_dir.display().to_string();
    let overlay = std::fs::read(&vm.overlay).unwrap();
    // A synthesis that decodes, then fails in libvirt (the synthetic VM cannot resume).
    let (status, failed) = d
        .upload("/api/v1/synthesis/upload?base=syn", &overlay)
        .unwrap();
    assert_eq!(
        (status, code(&failed)),
        (502, "hypervisor-error"),
        "{failed}"
    );
    let mut answers = vec![("POST /synthesis/upload".to_string(), failed.to_string())];
    let (_, up) = d.upload("/api/v1/uploads", b"x").unwrap();
    answers.push(("POST /uploads".into(), up.to_string()));
    let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
    let id = sessions[0]["id"].as_str().unwrap().to_string();
    assert_eq!(sessions[0]["state"], "failed", "{sessions}");
    for path in [
        "/api/v1/bases".to_string(),
        "/api/v1/bases/syn".into(),
        "/api/v1/bases/nope".into(),
        "/api/v1/overlays".into(),
        "/api/v1/overlays/0190aaaa-0000-7000-8000-000000000001".into(),
        "/api/v1/sessions".into(),
        format!("/api/v1/sessions/{id}"),
        "/api/v1/openapi.json".into(),
        "/metrics".into(),
    ] {
        let (_, text) = d.get(&path).unwrap();
        answers.push((format!("GET {path}"), text));
    }
    answers.push(("GET /health".into(), get(d.addr, "/health").unwrap().1));
    for (method, path, body) in [
        ("POST", format!("/api/v1/sessions/{id}/finish"), json!(null)),
        (
            "POST",
            format!("/api/v1/sessions/{id}/run"),
            json!({"command": "true"}),
        ),
        ("POST", format!("/api/v1/sessions/{id}/stop"), json!(null)),
        (
            "POST",
            "/api/v1/synthesis".into(),
            json!({"base": "syn", "overlay_path": "/etc/passwd"}),
        ),
        (
            "POST",
            "/api/v1/overlays".into(),
            json!({"base": "syn", "bogus": 1}),
        ),
    ] {
        let body = (!body.is_null()).then_some(&body);
        let (_, v) = d.json(method, &path, body).unwrap();
        answers.push((format!("{method} {path}"), v.to_string()));
    }
    for (what, text) in &answers {
        assert!(
            !text.contains(&root),
            "{what} names the data directory: {text}"
        );
    }
    // The operator route does, on purpose.
    let (status, host) = d.get(&format!("/api/v1/sessions/{id}/host")).unwrap();
    assert_eq!(status, 200, "{host}");
    let host: Value = serde_json::from_str(&host).unwrap();
    assert!(
        host["run_dir"].as_str().unwrap().starts_with(&root),
        "{host}"
    );
    let (status, cleared) = d.json("DELETE", "/api/v1/sessions", None).unwrap();
    assert_eq!(status, 200, "{cleared}");
    assert!(!cleared.to_string().contains(&root));
}

/// An exact id beats a name that spells it (and a name beats a source path), so another
/// base's metadata cannot make a base unreachable; requests asking for absurd VMs are
/// refused before anything is made.
#[test]
fn exact_ids_win_over_names_and_vm_requests_are_bounded() {
    let (tmp, d, vm) = daemon_with_base("selectors", &[]);
    // A second base named like the first one's id.
    let other_dir = tmp.0.join("files/other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = synthetic_vm(&other_dir, &WorkloadSpec::small(8)).unwrap();
    other.add_base(&d, &vm.base_id, &[]).unwrap();
    let (status, got) = d
        .json("GET", &format!("/api/v1/bases/{}", vm.base_id), None)
        .unwrap();
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (got["id"].as_str(), got["name"].as_str()),
        (Some(vm.base_id.as_str()), Some("syn"))
    );
    // By the squatter's own id it is still found.
    let (status, got) = d
        .json("GET", &format!("/api/v1/bases/{}", other.base_id), None)
        .unwrap();
    assert_eq!(
        (status, got["name"].as_str()),
        (200, Some(vm.base_id.as_str()))
    );

    let disk = vm.workload.base_disk.display().to_string();
    for (what, body) in [
        (
            "1 TiB + 1 MiB of RAM",
            json!({"name": "x", "disk": disk, "memory_mib": (1u64 << 20) + 1}),
        ),
        (
            "65 ports",
            json!({"name": "x", "disk": disk, "guest_ports": (1..=65).collect::<Vec<u16>>()}),
        ),
        (
            "port 0",
            json!({"name": "x", "disk": disk, "guest_ports": [0]}),
        ),
    ] {
        let (status, v) = d.json("POST", "/api/v1/bases", Some(&body)).unwrap();
        assert_eq!((status, code(&v)), (400, "invalid-request"), "{what}: {v}");
    }
    let (status, v) = d
        .json(
            "POST",
            "/api/v1/overlays",
            Some(&json!({"base": "syn", "guest_ports": [0]})),
        )
        .unwrap();
    assert_eq!((status, code(&v)), (400, "invalid-request"), "{v}");
    let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
    assert_eq!(sessions, json!([]), "nothing was started");
}

/// A body the client breaks (a malformed chunk, or fewer bytes than its Content-Length
/// before it stops sending) is the client's error: 400, not 500, and nothing is kept.
#[test]
fn broken_request_bodies_are_client_errors() {
    let (_tmp, d, _vm) = daemon_with_base("broken-bodies", &[]);
    let head = |extra: &str| {
        format!(
            "POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n{extra}\r\n",
            d.token
        )
    };
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(head("Transfer-Encoding: chunked\r\n").as_bytes())
        .unwrap();
    s.write_all(b"4\r\nabcd\r\nzz-not-a-size\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (status, text) = read_status(s);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid-request"), "{text}");

    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(head("Content-Length: 100000\r\n").as_bytes())
        .unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (status, text) = read_status(s);
    assert_eq!(status, 400, "{text}");
    let incoming: Vec<_> = std::fs::read_dir(d.data_dir.join("incoming"))
        .unwrap()
        .collect();
    assert!(incoming.is_empty(), "{incoming:?}");
}

/// A trickling upload cannot hold a synthesis slot past the request deadline: the client
/// gets 504, the synthesis is abandoned (its session failed with the reason) and the slot
/// is free for the next device.
#[test]
fn the_request_deadline_frees_the_synthesis_slot() {
    let (_tmp, d, vm) = daemon_with_base(
        "deadline-slot",
        &[
            ("CLOUDLET_REQUEST_TIMEOUT_S", "3"),
            ("CLOUDLET_MAX_CONCURRENT_SYNTHESES", "1"),
        ],
    );
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let mut s = d.stalled_upload("/api/v1/synthesis/upload?base=syn", &overlay[..4096]);
    // Keep the body alive, slower than the deadline allows.
    let trickle = std::thread::spawn(move || {
        for chunk in overlay[4096..].chunks(512).take(20) {
            let sent = s
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|()| s.write_all(chunk))
                .and_then(|()| s.write_all(b"\r\n"));
            if sent.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        read_status(s)
    });
    let (status, text) = trickle.join().unwrap();
    assert_eq!(status, 504, "{text}");
    let failed = cloudlet_e2e::wait_until(Duration::from_secs(20), || {
        let (_, sessions) = d.json("GET", "/api/v1/sessions", None).ok()?;
        let s = sessions.as_array()?.first()?.clone();
        (s["state"] == "failed").then_some(s)
    })
    .expect("the abandoned synthesis ends");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("request_timeout_s"),
        "{failed}"
    );
    // The slot is free: the next synthesis is admitted (it then fails because a synthetic
    // VM cannot resume, or runs into the short deadline itself) instead of 503 `busy`.
    let overlay = std::fs::read(&vm.overlay).unwrap();
    let (status, v) = d
        .upload("/api/v1/synthesis/upload?base=syn", &overlay)
        .unwrap();
    assert!(
        [(502, "hypervisor-error"), (504, "deadline")].contains(&(status, code(&v))),
        "{status} {v}"
    );
}

/// Slow or silent clients cannot hold the daemon: a connection that does not complete
/// its headers within `header_timeout_s` (new or kept alive) is closed, and connections
/// over `max_connections` are answered 503 and closed; once the silent ones are dropped,
/// the daemon answers again.
#[test]
fn silent_and_slow_connections_are_closed_and_capped() {
    let d = Daemon::start_in(
        &TempDir::new("conn-limits").unwrap().0.join("data"),
        &[
            ("CLOUDLET_HEADER_TIMEOUT_S", "2"),
            ("CLOUDLET_MAX_CONNECTIONS", "8"),
        ],
    )
    .unwrap();
    // Closed by the daemon, not by the test: read until EOF (or reset) within 10 s.
    let closed_within = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        started.elapsed()
    };
    let mut slow = TcpStream::connect(d.addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(
        closed_within(slow) < Duration::from_secs(8),
        "a slow header is dropped"
    );
    let silent = TcpStream::connect(d.addr).unwrap();
    assert!(
        closed_within(silent) < Duration::from_secs(8),
        "a silent connection is dropped"
    );

    // Eight silent connections fill the daemon; a ninth is told so at once.
    let held: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(d.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut ninth = TcpStream::connect(d.addr).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = String::new();
    let _ = ninth.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("\"busy\"") && text.contains("max_connections"),
        "{text}"
    );
    // The held ones time out; the daemon answers again.
    let back = cloudlet_e2e::wait_until(Duration::from_secs(15), || {
        (get(d.addr, "/health").ok()?.0 == 200).then_some(())
    });
    assert!(back.is_some(), "the daemon never answered again");
    drop(held);
}

/// Base archive header: magic, major 1, minor 0 (the stream after it is zstd).
const ARCHIVE_HEAD: &[u8; 12] = b"CLDBASEX\x01\x00\x00\x00";

/// `stream` (an archive's decompressed content without its trailer) as an archive, with
/// the trailing hash it needs.
fn seal_archive(stream: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(ARCHIVE_HEAD.to_vec(), 3).unwrap();
    enc.write_all(stream).unwrap();
    enc.write_all(blake3::hash(stream).as_bytes()).unwrap();
    enc.finish().unwrap()
}

/// A valid-looking archive of a disk-only base whose `disk.raw` is `size` zero bytes,
/// compressed as it is written: a few tens of KB however large `size` is.
fn zero_disk_archive(size: u64) -> Vec<u8> {
    let meta = json!({"id": "00", "name": "zeros", "guest_ports": [], "vcpus": 1,
        "domain_xml": "<domain/>", "source_path": null})
    .to_string();
    let zeros = vec![0u8; 1 << 20];
    let mut file_hash = blake3::Hasher::new();
    for _ in 0..size >> 20 {
        file_hash.update(&zeros);
    }
    let mut table = Vec::new();
    table.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    table.extend_from_slice(meta.as_bytes());
    table.extend_from_slice(&1u32.to_le_bytes());
    table.extend_from_slice(&8u16.to_le_bytes());
    table.extend_from_slice(b"disk.raw");
    table.extend_from_slice(&size.to_le_bytes());
    table.extend_from_slice(file_hash.finalize().as_bytes());
    let mut stream_hash = blake3::Hasher::new();
    stream_hash.update(&table);
    let mut enc = zstd::stream::Encoder::new(ARCHIVE_HEAD.to_vec(), 3).unwrap();
    enc.write_all(&table).unwrap();
    for _ in 0..size >> 20 {
        stream_hash.update(&zeros);
        enc.write_all(&zeros).unwrap();
    }
    enc.write_all(stream_hash.finalize().as_bytes()).unwrap();
    enc.finish().unwrap()
}

/// `archive` with its metadata (JSON) edited by `edit` and its trailer recomputed.
fn with_archive_meta(archive: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let stream = zstd::stream::decode_all(&archive[12..]).unwrap();
    let len = usize::try_from(u64::from_le_bytes(stream[..8].try_into().unwrap())).unwrap();
    let mut meta: Value = serde_json::from_slice(&stream[8..8 + len]).unwrap();
    edit(&mut meta);
    let meta = meta.to_string();
    let mut out = (meta.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(&stream[8 + len..stream.len() - 32]);
    seal_archive(&out)
}

fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A small archive cannot expand into a large base: declared sizes over
/// `max_import_bytes` are refused (413) before anything is written, and a legitimate
/// archive's zero runs are stored as holes.
#[test]
fn base_archives_expand_within_limits_and_sparsely() {
    let limit = (64u64 << 20).to_string();
    let (_tmp, d, vm) = daemon_with_base("import-bounds", &[("CLOUDLET_MAX_IMPORT_BYTES", &limit)]);
    let bomb = zero_disk_archive(256 << 20);
    assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
    let (status, v) = d.upload("/api/v1/bases/import?name=bomb", &bomb).unwrap();
    assert_eq!((status, code(&v)), (413, "too-large"), "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_import_bytes"), "{message}");
    // Nothing kept: no work directory, no base directory, no row.
    let entries = |dir: &str| std::fs::read_dir(d.data_dir.join(dir)).unwrap().count();
    assert_eq!(entries("incoming"), 0);
    assert_eq!(entries("bases"), 1, "only syn's");
    let (_, bases) = d.json("GET", "/api/v1/bases", None).unwrap();
    assert_eq!(bases.as_array().map(Vec::len), Some(1), "{bases}");

    // A real base's archive, imported again after the base is gone.
    let archive = d
        .send_full("GET", "/api/v1/bases/syn/export", &[], b"")
        .unwrap()
        .body;
    let (status, v) = d
        .json("DELETE", "/api/v1/bases/syn?force=true", None)
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let (status, v) = d.upload("/api/v1/bases/import", &archive).unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["id"], vm.base_id.as_str());
    let dir = std::fs::read_dir(d.data_dir.join("bases"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("disk.raw").is_file())
        .unwrap();
    // Half the synthetic disk's chunks and most memory pages are zero.
    for file in ["disk.raw", "memory.pages"] {
        let path = dir.join(file);
        let (len, used) = (
            std::fs::metadata(&path).unwrap().len(),
            allocated_bytes(&path),
        );
        assert!(
            used < len * 3 / 4,
            "{file}: {used} bytes allocated of {len}"
        );
    }
}

/// An imported archive's metadata cannot squat another base's selectors: a source path
/// or name that spells another base's id, an id prefix or a name is refused (400), and
/// the other base stays selectable by id and by name.
#[test]
fn imported_metadata_cannot_squat_another_bases_selectors() {
    let (tmp, d, vm) = daemon_with_base("import-squat", &[]);
    let other_dir = tmp.0.join("files/other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = synthetic_vm(&other_dir, &WorkloadSpec::small(8)).unwrap();
    other.add_base(&d, "other", &[]).unwrap();
    let archive = d
        .send_full("GET", "/api/v1/bases/other/export", &[], b"")
        .unwrap()
        .body;
    let (status, v) = d.json("DELETE", "/api/v1/bases/other", None).unwrap();
    assert_eq!(status, 200, "{v}");

    let id = vm.base_id.clone();
    let prefix = id[..8].to_string();
    // (what, field, value)
    let cases = [
        ("source_path = syn's id", "source_path", json!(id)),
        ("source_path = syn's name", "source_path", json!("syn")),
        ("name = syn's id prefix", "name", json!(prefix)),
        ("name = syn's id", "name", json!(id)),
        (
            "a control character in source_path",
            "source_path",
            json!("/images/a\nb.img"),
        ),
        (
            "a 5000-byte source_path",
            "source_path",
            json!(format!("/{}", "a".repeat(5000))),
        ),
        ("0 vcpus", "vcpus", json!(0)),
    ];
    for (what, field, value) in cases {
        let crafted = with_archive_meta(&archive, |m| m[field] = value);
        let (status, v) = d.upload("/api/v1/bases/import", &crafted).unwrap();
        assert_eq!((status, code(&v)), (400, "invalid-request"), "{what}: {v}");
        for selector in [vm.base_id.as_str(), "syn"] {
            let (status, got) = d
                .json("GET", &format!("/api/v1/bases/{selector}"), None)
                .unwrap();
            assert_eq!(
                (status, got["id"].as_str()),
                (200, Some(id.as_str())),
                "{what}: {got}"
            );
        }
        let (_, bases) = d.json("GET", "/api/v1/bases", None).unwrap();
        assert_eq!(bases.as_array().map(Vec::len), Some(1), "{what}: {bases}");
    }
    // A hex-looking name in the archive is fine when the importer names the base.
    let crafted = with_archive_meta(&archive, |m| m["name"] = json!("cafe"));
    let (status, v) = d
        .upload("/api/v1/bases/import?name=other", &crafted)
        .unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["id"], other.base_id.as_str());
    for selector in [vm.base_id.as_str(), "syn", &prefix] {
        let (status, got) = d
            .json("GET", &format!("/api/v1/bases/{selector}"), None)
            .unwrap();
        assert_eq!(
            (status, got["id"].as_str()),
            (200, Some(id.as_str())),
            "{got}"
        );
    }
}

/// Sends `request` as it is and reads the answer to the end: (status, head, body).
fn raw_exchange(d: &Daemon, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let (status, text) = read_status(s);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Request heads hyper refuses before the router sees them (a bad or conflicting
/// Content-Length, a URI over 65,534 bytes, over 100 headers) are answered with the
/// JSON error body too.
#[test]
fn request_heads_hyper_refuses_are_answered_in_json() {
    let d = Daemon::start("head-errors").unwrap();
    let long_uri = format!("/api/v1/bases?x={}", "a".repeat(70_000));
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (
            "conflicting Content-Length",
            "POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
             Content-Length: 6\r\n\r\nhello!"
                .to_string(),
            400,
            "invalid-request",
        ),
        (
            "Content-Length not a number",
            "POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello"
                .to_string(),
            400,
            "invalid-request",
        ),
        (
            "a request line that does not parse",
            "GET /health HTTP/9.9 extra\r\nHost: x\r\n\r\n".to_string(),
            400,
            "invalid-request",
        ),
        (
            "a 70,000-byte URI",
            format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n"),
            414,
            "uri-too-long",
        ),
        (
            "101 headers",
            format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            431,
            "headers-too-large",
        ),
    ];
    for (what, request, status, expected) in cases {
        let (got, head, body) = raw_exchange(&d, request.as_bytes());
        assert_eq!(got, status, "{what}: {head}\n{body}");
        assert!(
            head.contains("content-type: application/json"),
            "{what}: {head}"
        );
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body:?}"));
        assert_eq!(code(&v), expected, "{what}: {v}");
    }
    // The daemon still answers.
    assert_eq!(d.get("/health").unwrap().0, 200);
}

/// An HTTP server on 127.0.0.1:<port> that runs `answer` on every connection (after
/// reading the request).
fn scripted_http_server(answer: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                answer(stream);
            });
        }
    });
    port
}

/// A synthesis from an overlay URL whose server cuts the body short is the server's fault
/// (502 `fetch-failed`); one whose server stalls, before or after its headers, is a stall
/// (408 `timeout`, `body_idle_timeout_s`). Either way the session fails with the reason,
/// nothing is kept and the slot is free.
#[test]
fn overlay_urls_cut_short_or_stalled_are_502_and_408() {
    let tmp_files = TempDir::new("url-errors-files").unwrap();
    let overlay = std::fs::read(
        &synthetic_vm(&tmp_files.0, &WorkloadSpec::small(7))
            .unwrap()
            .overlay,
    )
    .unwrap();
    let half = overlay.len() / 2;
    let full_len = overlay.len();
    let o = overlay.clone();
    let cut_short = scripted_http_server(move |mut s| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {full_len}\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&o[..half]);
        // Closed here: fewer bytes than Content-Length said.
    });
    let o = overlay.clone();
    let chunked_cut = scripted_http_server(move |mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let _ = s.write_all(format!("{half:x}\r\n").as_bytes());
        let _ = s.write_all(&o[..half]);
        let _ = s.write_all(b"\r\n");
        // Closed without the last chunk.
    });
    let o = overlay.clone();
    let stalled_body = scripted_http_server(move |mut s| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {full_len}\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&o[..4096]);
        std::thread::sleep(Duration::from_secs(30));
    });
    let stalled_head = scripted_http_server(|_s| std::thread::sleep(Duration::from_secs(30)));
    let o = overlay.clone();
    let close_delimited = scripted_http_server(move |mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(&o[..half]);
    });
    let allow = [
        cut_short,
        chunked_cut,
        stalled_body,
        stalled_head,
        close_delimited,
    ]
    .map(|p| format!("http://127.0.0.1:{p}"))
    .join(",");
    // The synthetic VM of seed 7 is base `syn`: its overlay decodes until the bytes stop.
    let (_tmp, d, _vm) = daemon_with_base(
        "url-errors",
        &[
            ("CLOUDLET_OVERLAY_URL_ALLOW", &allow),
            ("CLOUDLET_BODY_IDLE_TIMEOUT_S", "2"),
            ("CLOUDLET_MAX_CONCURRENT_SYNTHESES", "1"),
        ],
    );
    for (what, port, status, expected) in [
        ("Content-Length cut short", cut_short, 502, "fetch-failed"),
        ("chunked body cut short", chunked_cut, 502, "fetch-failed"),
        ("body stalled", stalled_body, 408, "timeout"),
        ("no answer at all", stalled_head, 408, "timeout"),
        // Without a length, the end of the connection is the end of the body: a short
        // one cannot be told from a truncated overlay.
        (
            "close-delimited body cut short",
            close_delimited,
            422,
            "overlay-corrupt",
        ),
    ] {
        let started = std::time::Instant::now();
        let (got, v) = d
            .json(
                "POST",
                "/api/v1/synthesis",
                Some(&json!({"base": "syn", "overlay_url": format!("http://127.0.0.1:{port}/app.overlay")})),
            )
            .unwrap();
        assert_eq!((got, code(&v)), (status, expected), "{what}: {v}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: answered after {:?}",
            started.elapsed()
        );
    }
    // Every synthesis that started is failed with its reason; nothing is left running.
    let (_, sessions) = d.json("GET", "/api/v1/sessions", None).unwrap();
    for s in sessions.as_array().unwrap() {
        assert_eq!(s["state"], "failed", "{s}");
        assert!(s["error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
    }
    let incoming: Vec<_> = std::fs::read_dir(d.data_dir.join("incoming"))
        .unwrap()
        .collect();
    assert!(incoming.is_empty(), "{incoming:?}");
    let session_dirs: Vec<_> = std::fs::read_dir(d.data_dir.join("sessions"))
        .unwrap()
        .collect();
    assert!(session_dirs.is_empty(), "{session_dirs:?}");
}

/// An overlay that names the base but claims an 8 TiB disk (valid on its own: a 256 MiB
/// chunk bitmap for its checks) is refused 422 `overlay-corrupt` from its first metadata
/// bytes, with the synthesis failed and nothing kept.
#[test]
fn an_overlay_claiming_another_disk_size_than_its_base_is_corrupt() {
    use cloudlet_engine::format::{OverlayMeta, OverlayWriter};
    let (tmp, d, vm) = daemon_with_base("wrong-shape", &[]);
    let path = tmp.0.join("huge.overlay");
    let meta = OverlayMeta {
        base_id: cloudlet_engine::hex::decode(&vm.base_id).unwrap(),
        disk_size: 8 << 40,
        memory: None,
        properties: vec![],
        unchanged_memory: 0,
        unchanged_disk: 0,
        segments: vec![],
        records: vec![],
    };
    OverlayWriter::create(&path).unwrap().finish(meta).unwrap();
    let overlay = std::fs::read(&path).unwrap();
    let (status, v) = d
        .upload("/api/v1/synthesis/upload?base=syn", &overlay)
        .unwrap();
    assert_eq!((status, code(&v)), (422, "overlay-corrupt"), "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("8796093022208 disk bytes"), "{message}");
    let session_dirs: Vec<_> = std::fs::read_dir(d.data_dir.join("sessions"))
        .unwrap()
        .collect();
    assert!(session_dirs.is_empty(), "{session_dirs:?}");
}
