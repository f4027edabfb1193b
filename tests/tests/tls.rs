//! Transport security (docs/api.md, "Transport security"): the daemon serves TLS with a
//! certificate it makes (and reuses) off loopback, the CLI trusts it by pin or CA file and
//! says which certificate it refused, plain HTTP off loopback is refused before anything
//! is sent, the token never crosses the wire in clear over https, bad certificate files
//! stop the daemon with their name, and a silent TLS client loses its slot.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudlet_e2e::cli::Cli;
use cloudlet_e2e::daemon::{binary, non_loopback_ipv4, send_over, Launch, TempDir};
use cloudlet_e2e::{wait_until, Daemon};
use serde_json::Value;

/// The `--json` error of a failed CLI run: (code, message).
fn json_error(out: &Output) -> (String, String) {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
    (
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// `cloudletd tls-fingerprint` for the daemon `d` (same token file and listen address).
fn printed_fingerprint(d: &Daemon, tls_env: &str) -> String {
    let out = Command::new(binary("cloudletd").unwrap())
        .arg("tls-fingerprint")
        .env("CLOUDLET_TOKEN_FILE", &d.token_file)
        .env("CLOUDLET_LISTEN", d.addr.to_string())
        .env("CLOUDLET_DATA_DIR", &d.data_dir)
        .env("CLOUDLET_TLS", tls_env)
        .output()
        .unwrap();
    assert_ok(&out);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn the_cli_pins_or_trusts_the_daemons_certificate() {
    let d = Daemon::start_tls("tls-cli").unwrap();
    let fp = d.fingerprint().unwrap().to_string();

    // The API over https through the harness' TLS client; /health tells the fingerprint.
    let (status, body) = d.get("/health").unwrap();
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["tls"]["enabled"], true, "{health}");
    assert_eq!(health["tls"]["self_signed"], true, "{health}");
    assert_eq!(health["tls"]["insecure"], false, "{health}");
    assert_eq!(health["tls"]["fingerprint_sha256"], fp.as_str(), "{health}");
    assert_eq!(d.get("/api/v1/bases").unwrap().0, 200);
    assert!(
        d.log_text().contains(&fp),
        "the fingerprint is logged at start"
    );
    assert_eq!(printed_fingerprint(&d, "on"), fp);
    // Plain HTTP to the TLS port gets no answer.
    assert!(send_over(d.addr, None, "GET", "/health", &[], &[]).is_err());

    // The helper pins by default (CLOUDLET_PIN_SHA256).
    let cli = Cli::new(&d);
    assert_eq!(cli.json(&["list-base"]), serde_json::json!([]));
    // The pin in lowercase without colons, as a flag.
    let lower = fp.replace(':', "").to_lowercase();
    assert_ok(&run(&cli, None, &["--pin-sha256", &lower, "list-session"]));

    // No pin, no CA: refused, with the fingerprint and what to compare it with.
    let (code, message) = json_error(&run(&cli, None, &["--json", "list-base"]));
    assert_eq!(code, "tls-unknown-certificate", "{message}");
    assert!(message.contains(&fp), "{message}");
    assert!(message.contains("cloudletd tls-fingerprint"), "{message}");
    assert!(message.contains(&format!("--pin-sha256 {fp}")), "{message}");
    // The human form: one `error:` line.
    let out = run(&cli, None, &["list-base"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("(tls-unknown-certificate)"),
        "{err}"
    );

    // A wrong pin: the distinct, alarming error.
    let wrong = vec!["00"; 32].join(":");
    let (code, message) = json_error(&run(&cli, Some(&wrong), &["--json", "list-base"]));
    assert_eq!(code, "tls-pin-mismatch", "{message}");
    assert!(
        message.contains("MISMATCH") && message.contains(&fp) && message.contains(&wrong),
        "{message}"
    );
    // A pin that is not one.
    let out = run(&cli, Some("abc"), &["--json", "list-base"]);
    assert_eq!(json_error(&out).0, "bad-pin");

    // --ca-cert with the daemon's certificate: trusted by chain, no pin.
    let cert = d.cert_file().display().to_string();
    assert_ok(&run(
        &cli,
        None,
        &["--json", "--ca-cert", &cert, "list-base"],
    ));
    // A CA file that holds no certificate is named.
    let not_pem = d.token_file.display().to_string();
    let out = run(&cli, None, &["--json", "--ca-cert", &not_pem, "list-base"]);
    let (code, message) = json_error(&out);
    assert_eq!(code, "bad-ca-cert", "{message}");
    assert!(message.contains(&not_pem), "{message}");
}

/// `cloudlet ARGS` for the helper's daemon, pinning `pin` (none: no pin at all).
fn run(cli: &Cli, pin: Option<&str>, args: &[&str]) -> Output {
    let mut c = cli.command();
    c.env_remove("CLOUDLET_PIN_SHA256");
    if let Some(pin) = pin {
        c.env("CLOUDLET_PIN_SHA256", pin);
    }
    c.args(args).output().unwrap()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Accepts connections on `listener` and relays each to `to`, recording every byte
/// either way in `seen`.
fn relay(listener: TcpListener, to: SocketAddr, seen: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(to) else {
                return;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn the_token_never_crosses_the_wire_in_clear() {
    // https through a recording relay: the command works, the token is not in the bytes.
    let d = Daemon::start_tls("tls-wire").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    relay(listener, d.addr, seen.clone());
    let cli = Cli::new(&d);
    let out = cli
        .command()
        .env("CLOUDLET_URL", format!("https://{relay_addr}"))
        .args(["--json", "list-base"])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let bytes = seen.lock().unwrap().clone();
    assert!(bytes.len() > 1000, "the relay carried the exchange");
    assert!(
        !contains(&bytes, &d.token),
        "the token crossed in clear text"
    );
    assert!(
        !contains(&bytes, "Bearer"),
        "a request head crossed in clear text"
    );

    // Control: the same relay in front of a plain daemon sees the token, so the check
    // above can fail (loopback: plain http is allowed).
    let plain = Daemon::start("tls-wire-plain").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    relay(listener, plain.addr, seen.clone());
    let out = Cli::new(&plain)
        .command()
        .env("CLOUDLET_URL", format!("http://{relay_addr}"))
        .arg("list-base")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(contains(&seen.lock().unwrap(), &plain.token));
}

#[test]
fn plain_http_off_loopback_is_refused_before_connecting() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address");
        return;
    };
    // A listener standing in for a daemon on the network; it records what reaches it.
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let tmp = TempDir::new("tls-refuse").unwrap();
    let token_file = tmp.0.join("token");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token_file, token).unwrap();
    let cli = |extra: &[&str]| {
        Command::new(binary("cloudlet").unwrap())
            .env("CLOUDLET_URL", format!("http://{addr}"))
            .env("CLOUDLET_TOKEN_FILE", &token_file)
            .env_remove("CLOUDLET_TOKEN")
            .env_remove("CLOUDLET_ALLOW_INSECURE")
            .env_remove("CLOUDLET_PIN_SHA256")
            .env_remove("CLOUDLET_CA_CERT")
            .args(extra)
            .args(["--json", "list-base"])
            .output()
            .unwrap()
    };
    let (code, message) = json_error(&cli(&[]));
    assert_eq!(code, "insecure-url", "{message}");
    assert!(message.contains("--allow-insecure"), "{message}");
    // A pin over plain http would check nothing: refused, not ignored, even if allowed.
    let pin = "ab".repeat(32);
    let (code, message) = json_error(&cli(&["--allow-insecure", "--pin-sha256", &pin]));
    assert_eq!(code, "trust-without-tls", "{message}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the refused command connected"
    );

    // With --allow-insecure it does connect, and the token goes out in clear text.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf).unwrap_or(0);
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 2\r\nconnection: close\r\n\r\n[]",
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let out = cli(&["--allow-insecure"]);
    server.join().unwrap();
    assert_ok(&out);
    assert!(contains(&seen.lock().unwrap(), token));
}

#[test]
fn a_network_listen_makes_a_certificate_once_and_keeps_it() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address");
        return;
    };
    let tmp = TempDir::new("tls-network").unwrap();
    let data = tmp.0.join("data");
    let how = Launch {
        tls: false,
        ip: Some(ip),
    };
    let mut d = Daemon::launch(&data, &[], how).unwrap();
    let fp = d.fingerprint().expect("TLS off loopback").to_string();
    assert!(d.url().starts_with("https://"));
    assert!(d.log_text().contains(&fp), "{}", d.log_text());
    assert_eq!(printed_fingerprint(&d, "auto"), fp);
    let key = d.token_file.with_file_name("tls-key.pem");
    assert_eq!(key.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    let (_, body) = d.get("/health").unwrap();
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["tls"]["fingerprint_sha256"], fp.as_str(), "{health}");

    // The certificate names the listen address: --ca-cert verifies it by name.
    let cert = d.cert_file().display().to_string();
    assert_ok(&run(
        &Cli::new(&d),
        None,
        &["--ca-cert", &cert, "list-base"],
    ));

    // Restarted: the same certificate.
    d.stop().unwrap();
    let again = Daemon::launch(&data, &[], how).unwrap();
    assert_eq!(again.fingerprint(), Some(fp.as_str()));
    drop(again);

    // tls = "off" on the network: allowed only loudly.
    let insecure = Daemon::launch(&tmp.0.join("data2"), &[("CLOUDLET_TLS", "off")], how).unwrap();
    assert!(insecure.url().starts_with("http://"));
    let (_, body) = insecure.get("/health").unwrap();
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["tls"]["enabled"], false, "{health}");
    assert_eq!(health["tls"]["insecure"], true, "{health}");
    assert!(
        insecure.log_text().contains("INSECURE"),
        "{}",
        insecure.log_text()
    );
}

/// Starts cloudletd with `env`; expects it to exit on its own within 30 s: its stderr.
fn start_failure(tmp: &TempDir, env: &[(&str, &std::path::Path)]) -> String {
    let mut child = Command::new(binary("cloudletd").unwrap())
        .env("CLOUDLET_LISTEN", "127.0.0.1:0")
        .env("CLOUDLET_DATA_DIR", tmp.0.join("data"))
        .env("CLOUDLET_TOKEN_FILE", tmp.0.join("token"))
        .env("CLOUDLET_DOMAIN_TYPE", "qemu")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "cloudletd should refuse to start: {status:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_certificate_files_stop_the_daemon_with_their_name() {
    let tmp = TempDir::new("tls-bad").unwrap();
    let cert = tmp.0.join("broken-cert.pem");
    let key = tmp.0.join("missing-key.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let err = start_failure(
        &tmp,
        &[("CLOUDLET_TLS_CERT", &cert), ("CLOUDLET_TLS_KEY", &key)],
    );
    assert!(err.contains("broken-cert.pem"), "{err}");

    // A good certificate (one a daemon made) with a key file that is not there.
    let d = Daemon::start_tls("tls-bad-src").unwrap();
    let good = d.cert_file();
    let err = start_failure(
        &tmp,
        &[("CLOUDLET_TLS_CERT", &good), ("CLOUDLET_TLS_KEY", &key)],
    );
    assert!(
        err.contains("missing-key.pem") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn a_silent_tls_client_gives_its_slot_back() {
    let tmp = TempDir::new("tls-silent").unwrap();
    let how = Launch {
        tls: true,
        ip: None,
    };
    let d = Daemon::launch(
        &tmp.0.join("data"),
        &[
            ("CLOUDLET_HEADER_TIMEOUT_S", "2"),
            ("CLOUDLET_MAX_CONNECTIONS", "1"),
        ],
        how,
    )
    .unwrap();
    // Connects and never starts the handshake: holds the only slot... once the daemon has
    // it to give (the start-up probe's connection may still hold it for a moment; a TLS
    // connection turned away is closed at once, so a silent one still open after 300 ms
    // holds the slot).
    let mut silent = (0..20)
        .find_map(|_| {
            let mut s = TcpStream::connect(d.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            match s.read(&mut [0u8; 1]) {
                Ok(0) => None,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    Some(s)
                }
                other => panic!("a silent connection: {other:?}"),
            }
        })
        .expect("no connection held the slot in 20 tries");
    assert!(
        d.get("/health").is_err(),
        "a second connection must be turned away while the slot is held"
    );
    // ...until the handshake limit closes it; then the daemon answers again.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(
        silent.read(&mut buf).unwrap_or(0),
        0,
        "closed by the daemon"
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    let ok = wait_until(Duration::from_secs(5), || {
        d.get("/health").ok().filter(|(s, _)| *s == 200)
    });
    assert!(ok.is_some(), "{}", d.log_text());
}
