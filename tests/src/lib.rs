//! End-to-end test harness: the real `cloudletd` binary on a free port with a temporary
//! data directory, the fixture guest (a tiny real Linux VM), its serial console, and
//! `virsh` for the steps the daemon does not drive yet.
//!
//! Tests that need libvirt call [`require_host`]: without root and a running libvirtd they
//! fail with "run scripts/setup-host.sh", unless `CLOUDLET_SKIP_E2E=1` is set, which skips
//! them with a loud message.

pub mod cli;
pub mod console;
pub mod daemon;
pub mod relay;
pub mod synthetic;
pub mod tmpfs;
pub mod xml;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use console::Console;
pub use daemon::Daemon;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The libvirt URI tests use.
pub const LIBVIRT_URI: &str = "qemu:///system";

/// Whether VM tests can run here. Panics (failing the test) when they cannot, unless
/// `CLOUDLET_SKIP_E2E=1`, in which case it prints why and returns false.
pub fn require_host(test: &str) -> bool {
    let problem = if !is_root() {
        Some("tests that run VMs must run as root".to_string())
    } else if virsh(&["version"]).is_err() {
        Some(format!("libvirtd does not answer on {LIBVIRT_URI}"))
    } else {
        None
    };
    proceed_or_skip(test, problem)
}

/// Whether tests that need root (mounts) can run here; fails or skips like
/// [`require_host`].
pub fn require_root(test: &str) -> bool {
    let problem = (!is_root()).then(|| "this test mounts a tmpfs: it must run as root".to_string());
    proceed_or_skip(test, problem)
}

fn proceed_or_skip(test: &str, problem: Option<String>) -> bool {
    match problem {
        None => true,
        Some(p) if std::env::var("CLOUDLET_SKIP_E2E").as_deref() == Ok("1") => {
            eprintln!("SKIPPED {test}: {p} (CLOUDLET_SKIP_E2E=1)");
            false
        }
        Some(p) => {
            panic!("{p}: run scripts/setup-host.sh as root (or set CLOUDLET_SKIP_E2E=1 to skip)")
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Runs `virsh -c qemu:///system ARGS`; its stdout on success.
pub fn virsh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(LIBVIRT_URI)
        .args(args)
        .output()
        .context("running virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The fixture guest: a base disk and a memory snapshot of it booted, made by
/// `tests/fixtures/make-savefile.sh` (cached under `target/fixture-guest`).
#[derive(Debug, Clone)]
pub struct FixtureGuest {
    /// Output directory.
    pub dir: PathBuf,
    /// Memory snapshot (libvirt save file).
    pub save: PathBuf,
    /// The disk the snapshot was taken with (raw).
    pub disk: PathBuf,
}

impl FixtureGuest {
    /// `POST /api/v1/bases` for the fixture guest as base `name`: direct kernel boot,
    /// 96 MiB, one vCPU, guest port 8080, finished (saved) once its shell is up.
    pub fn base_request(&self, name: &str) -> serde_json::Value {
        let f = |file: &str| self.dir.join(file).display().to_string();
        serde_json::json!({
            "name": name, "disk": f("disk.img"), "kernel": f("vmlinuz"), "initrd": f("initrd.img"),
            "cmdline": "console=ttyS0 quiet init_on_free=1", "memory_mib": 96, "vcpus": 1,
            "guest_ports": [8080], "ready_marker": console::READY_MARKER, "finish": true
        })
    }
}

/// Runs a fixture builder `tests/fixtures/SCRIPT` with its output directory
/// `target/NAME` (the scripts cache their output there and return at once when it is up
/// to date); the directory.
fn build_fixture(script: &str, name: &str) -> Result<PathBuf, String> {
    let dir = repo_root().join("target").join(name);
    let out = Command::new("bash")
        .arg(repo_root().join("tests/fixtures").join(script))
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{script} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir)
}

/// Builds (once per machine, cached) and returns the fixture guest.
pub fn fixture_guest() -> anyhow::Result<FixtureGuest> {
    static BUILT: OnceLock<Result<FixtureGuest, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = build_fixture("make-savefile.sh", "fixture-guest")?;
            Ok(FixtureGuest {
                save: dir.join("guest.save"),
                disk: dir.join("guest-disk.img"),
                dir,
            })
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A stock Debian 12 guest disk (bootloader, systemd, bash on the serial console), built
/// by `tests/fixtures/build-debian.sh` and cached under `target/debian-guest`.
#[derive(Debug, Clone)]
pub struct DebianGuest {
    /// Output directory (an import directory for the daemon).
    pub dir: PathBuf,
    /// The raw disk image.
    pub disk: PathBuf,
    /// What the guest prints on its console once it is up.
    pub ready_marker: String,
}

/// Builds (once per machine, cached; a few minutes the first time) and returns the Debian
/// guest.
pub fn debian_guest() -> anyhow::Result<DebianGuest> {
    static BUILT: OnceLock<Result<DebianGuest, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = build_fixture("build-debian.sh", "debian-guest")?;
            let marker = std::fs::read_to_string(dir.join("marker")).map_err(|e| e.to_string())?;
            Ok(DebianGuest {
                disk: dir.join("disk.img"),
                ready_marker: marker.trim().to_string(),
                dir,
            })
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A unique name for a test resource: `cloudlet-test-<test>-<pid>-<n>`.
pub fn unique_name(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "cloudlet-test-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh random UUID (from the kernel).
pub fn random_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Polls `cond` until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Destroys a domain when dropped (tests must leave no VM behind, even when they fail).
pub struct DomainGuard(pub String);

impl Drop for DomainGuard {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0]);
    }
}

/// Names of running or defined domains starting with `prefix`.
pub fn domains_with_prefix(prefix: &str) -> Vec<String> {
    virsh(&["list", "--all", "--name"])
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Runs `command` in session `session`'s guest over its console, retrying for 60 s until
/// it exits 0 (a booting guest has no shell yet); returns its output, trimmed.
pub fn run_when_up(d: &Daemon, session: &str, command: &str) -> String {
    for _ in 0..60 {
        let body = serde_json::json!({ "command": command, "timeout_s": 5 });
        if let Ok((200, out)) = d.json(
            "POST",
            &format!("/api/v1/sessions/{session}/run"),
            Some(&body),
        ) {
            if out["status"] == 0 {
                return out["output"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("`{command}` never succeeded in session {session}");
}

/// Connects to an application port forwarded to 127.0.0.1 and reads its greeting,
/// retrying for 10 s (the guest's server loop restarts `nc` between connections).
pub fn greeting(port: u64) -> anyhow::Result<String> {
    use std::io::Read;
    let port = u16::try_from(port)?;
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if !text.is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("nothing answered on 127.0.0.1:{port}")
}

/// `GET /` of an HTTP app on a forwarded port (retried while it does not answer yet): the
/// response body.
pub fn http_get(port: u64) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let port = u16::try_from(port)?;
    let mut last = String::new();
    for _ in 0..50 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")?;
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                if let Some((_, body)) = text.split_once("\r\n\r\n") {
                    return Ok(body.trim().to_string());
                }
                last = format!("no HTTP answer: {text:?}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("no HTTP answer on 127.0.0.1:{port}: {last}")
}

/// `qemu-img create -f qcow2 -b BACKING -F raw DISK`: a copy-on-write disk over a raw base
/// disk, as the daemon creates for an overlay session.
pub fn create_cow_disk(backing: &Path, disk: &Path) -> anyhow::Result<()> {
    let path = |p: &Path| p.to_str().map(String::from).context("non-UTF-8 path");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &path(backing)?,
            "-F",
            "raw",
            &path(disk)?,
        ],
    )?;
    Ok(())
}
