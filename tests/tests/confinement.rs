//! Confined QEMU: every VM the daemon starts (the base builder, overlay sessions, a
//! synthesized VM) runs as an unprivileged uid of its own, and one VM's uid cannot read
//! another session's files, while it can read its own and the base's. Where the host
//! cannot confine, `/health` says so, and `confinement = "required"` refuses to start.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{fixture_guest, require_host, Daemon};
use serde_json::{json, Value};

/// The daemon's default VM ids (`vm_gid`, `vm_uid_first`, `vm_uid_count`).
const VM_GID: u32 = 64000;
const VM_UIDS: std::ops::Range<u32> = 64001..65000;

/// The real, effective, saved and file-system uids and gids of the QEMU of `vm`.
fn qemu_ids(vm: &str) -> (Vec<u32>, Vec<u32>) {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line[key.len()..]
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (ids("Uid:"), ids("Gid:"))
}

/// The one uid the QEMU of `vm` runs as, checked: not root, in the daemon's range, with
/// the VM group and no other group.
fn vm_uid(d: &Daemon, vm: &str) -> u32 {
    let (uids, gids) = qemu_ids(vm);
    assert_eq!(uids.len(), 4, "{uids:?}");
    assert!(uids.iter().all(|u| *u == uids[0]), "{vm}: uids {uids:?}");
    assert!(VM_UIDS.contains(&uids[0]), "{vm} runs as uid {}", uids[0]);
    assert!(gids.iter().all(|g| *g == VM_GID), "{vm}: gids {gids:?}");
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    let others: Vec<&str> = groups["Groups:".len()..]
        .split_whitespace()
        .filter(|g| *g != VM_GID.to_string())
        .collect();
    assert!(others.is_empty(), "{vm}: {groups}\n{}", d.log_text());
    uids[0]
}

/// Runs `args` as `uid` and the VM group, with no other group (as QEMU runs).
fn as_vm(uid: u32, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &VM_GID.to_string(),
            "--clear-groups",
        ])
        .args(args)
        .output()
        .unwrap()
}

/// Asserts `uid` may read `path` (its first bytes), or that it is refused.
fn check_read(uid: u32, path: &Path, allowed: bool) {
    let out = as_vm(uid, &["head", "-c", "16", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if allowed {
        assert!(
            out.status.success(),
            "uid {uid} cannot read {path:?}: {stderr}"
        );
        assert!(!out.stdout.is_empty(), "{path:?} read empty");
    } else {
        assert!(!out.status.success(), "uid {uid} read {path:?}");
        assert!(stderr.contains("Permission denied"), "{path:?}: {stderr}");
    }
}

/// POSTs to `path` and checks the answer's status.
fn post(d: &Daemon, path: &str, body: Option<&Value>, want: u16) -> Value {
    let (status, answer) = d.json("POST", path, body).unwrap();
    assert_eq!(status, want, "POST {path}: {answer}\n{}", d.log_text());
    answer
}

/// POSTs an action (`finish`, `stop`, `run`) to a session.
fn act(d: &Daemon, session: &Value, action: &str, body: Option<&Value>) -> Value {
    let id = session["id"].as_str().unwrap();
    post(d, &format!("/api/v1/sessions/{id}/{action}"), body, 200)
}

fn start_overlay(d: &Daemon) -> Value {
    post(d, "/api/v1/overlays", Some(&json!({ "base": "tiny" })), 201)
}

fn session_dir(d: &Daemon, session: &Value) -> PathBuf {
    d.data_dir
        .join("sessions")
        .join(session["id"].as_str().unwrap())
}

#[test]
fn every_vm_runs_as_its_own_uid_and_cannot_read_other_sessions() {
    if !require_host("every_vm_runs_as_its_own_uid_and_cannot_read_other_sessions") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("confine").unwrap();
    let import = guest.dir.display().to_string();
    let mut d = Daemon::start_in(
        &tmp.0.join("data"),
        &[
            ("CLOUDLET_IMPORT_DIRS", &import),
            ("CLOUDLET_CONFINEMENT", "required"),
        ],
    )
    .unwrap();
    let (_, health) = d.json("GET", "/health", None).unwrap();
    assert_eq!(
        health["confinement"],
        json!({ "qemu_user": "uids 64001-64999, gid 64000", "isolated_sessions": true }),
        "{health}"
    );
    let f = |name: &str| guest.dir.join(name).display().to_string();

    // The base builder: confined while it runs; its base is then root's, group-readable.
    let spec = json!({
        "name": "tiny", "disk": f("disk.img"), "kernel": f("vmlinuz"),
        "initrd": f("initrd.img"), "cmdline": "console=ttyS0 quiet init_on_free=1",
        "memory_mib": 96, "vcpus": 1, "ready_marker": "CLOUDLET-GUEST-READY"
    });
    let base = post(&d, "/api/v1/bases", Some(&spec), 201);
    let builder = vm_uid(&d, base["vm_name"].as_str().unwrap());
    act(&d, &base, "finish", None);
    let base_dir = d.data_dir.join("bases").join(base["id"].as_str().unwrap());
    let mode = std::fs::metadata(&base_dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750, "base directory mode");

    // Two overlay sessions at once: two uids, neither can read the other's directory.
    let a = start_overlay(&d);
    let b = start_overlay(&d);
    let uid_a = vm_uid(&d, a["vm_name"].as_str().unwrap());
    let uid_b = vm_uid(&d, b["vm_name"].as_str().unwrap());
    assert_ne!(uid_a, uid_b, "two running VMs share a uid");
    let (dir_a, dir_b) = (session_dir(&d, &a), session_dir(&d, &b));
    check_read(uid_a, &dir_a.join("disk.qcow2"), true);
    check_read(uid_a, &dir_b.join("disk.qcow2"), false);
    check_read(uid_b, &dir_a.join("disk.qcow2"), false);
    let listing = as_vm(uid_a, &["ls", &dir_b.display().to_string()]);
    assert!(!listing.status.success(), "uid {uid_a} listed {dir_b:?}");
    // The base: readable (the backing file and boot files), not writable.
    check_read(uid_a, &base_dir.join("disk.raw"), true);
    check_read(uid_a, &base_dir.join("vmlinuz"), true);
    let write = as_vm(
        uid_a,
        &[
            "sh",
            "-c",
            &format!("echo x >> {}/disk.raw", base_dir.display()),
        ],
    );
    assert!(!write.status.success(), "a VM uid may write the base disk");
    // Nothing else of the daemon's: catalogue, overlays.
    check_read(uid_a, &d.data_dir.join("cloudlet.db"), false);
    let overlays = as_vm(
        uid_a,
        &["ls", &d.data_dir.join("overlays").display().to_string()],
    );
    assert!(!overlays.status.success(), "a VM uid listed the overlays");
    // The builder's uid was freed with its directory (the lowest uid is reused).
    assert!(
        uid_a == builder || uid_b == builder,
        "{builder} {uid_a} {uid_b}"
    );

    // The synthesized VM: confined too, and it works (its disk is its own).
    let done = act(&d, &a, "finish", None);
    let from = json!({ "base": "tiny", "overlay_id": done["overlay_id"] });
    let syn = post(&d, "/api/v1/synthesis", Some(&from), 201);
    let uid_s = vm_uid(&d, syn["vm_name"].as_str().unwrap());
    assert_ne!(uid_s, uid_b, "the synthesized VM shares a running VM's uid");
    check_read(uid_s, &session_dir(&d, &syn).join("disk.qcow2"), true);
    check_read(uid_s, &dir_b.join("disk.qcow2"), false);
    let write =
        json!({ "command": "echo written > /mnt/data/confined && sync && cat /mnt/data/confined" });
    let out = act(&d, &syn, "run", Some(&write));
    assert_eq!(
        out["output"].as_str().map(str::trim),
        Some("written"),
        "{out}"
    );
    for s in [&b, &syn] {
        act(&d, s, "stop", None);
    }
    d.stop().unwrap();
}

#[test]
fn a_host_that_cannot_confine_says_so() {
    if !require_host("a_host_that_cannot_confine_says_so") {
        return;
    }
    // A parent directory other users cannot pass: the VM users could not reach the data.
    let tmp = TempDir::new("unconfined").unwrap();
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut d = Daemon::start_in(&tmp.0.join("data"), &[]).unwrap();
    let (_, health) = d.json("GET", "/health", None).unwrap();
    let c = &health["confinement"];
    assert_eq!(c["isolated_sessions"], false, "{health}");
    assert_eq!(c["qemu_user"], "libvirt qemu.conf user", "{health}");
    let warning = c["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("keeps other users out"), "{warning}");
    assert!(
        !warning.contains(&*tmp.0.to_string_lossy()),
        "a path on /health: {warning}"
    );
    // The log names the directory.
    let log = d.log_text();
    assert!(
        log.contains("not confined") && log.contains("(mode 700)"),
        "{log}"
    );
    d.stop().unwrap();

    let err = Daemon::start_in(&tmp.0.join("data"), &[("CLOUDLET_CONFINEMENT", "required")])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("confinement is required"), "{err}");

    let mut d = Daemon::start_in(&tmp.0.join("data"), &[("CLOUDLET_CONFINEMENT", "off")]).unwrap();
    let (_, health) = d.json("GET", "/health", None).unwrap();
    let warning = health["confinement"]["warning"]
        .as_str()
        .unwrap_or_default();
    assert!(warning.contains("off"), "{health}");
    d.stop().unwrap();
}

/// `/dev/kvm`'s access ACL (`system.posix_acl_access`), if it has one.
fn kvm_acl() -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    rustix::fs::getxattr("/dev/kvm", "system.posix_acl_access", &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Puts `/dev/kvm`'s ACL back as it was before the test.
struct KvmAclBack(Option<Vec<u8>>);

impl Drop for KvmAclBack {
    fn drop(&mut self) {
        let name = "system.posix_acl_access";
        let _ = match &self.0 {
            Some(acl) => {
                rustix::fs::setxattr("/dev/kvm", name, acl, rustix::fs::XattrFlags::empty())
            }
            None => rustix::fs::removexattr("/dev/kvm", name),
        };
    }
}

/// Whether an ACL has an entry for group `gid` (tag 8) with read and write.
fn grants_group_rw(acl: &[u8], gid: u32) -> bool {
    acl[4..].chunks_exact(8).any(|e| {
        u16::from_le_bytes([e[0], e[1]]) == 8
            && u16::from_le_bytes([e[2], e[3]]) & 6 == 6
            && u32::from_le_bytes([e[4], e[5], e[6], e[7]]) == gid
    })
}

/// On a KVM host `/dev/kvm` is `root:kvm 0660`, and a confined QEMU is in no group but
/// the VM group: it could not open the device ("Could not access KVM kernel module:
/// Permission denied"). With `domain_type = "kvm"` the daemon gives the VM group an ACL
/// entry at start, and a VM with the daemon's seclabel then starts under KVM. (This CPU
/// may not run a guest under KVM; QEMU opening the device and starting is what counts.)
#[test]
fn with_kvm_the_vm_group_gets_the_kvm_device() {
    if !require_host("with_kvm_the_vm_group_gets_the_kvm_device") {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: this host has no /dev/kvm");
        return;
    }
    let _back = KvmAclBack(kvm_acl());
    // Whatever an earlier start left: the daemon must add the entry itself.
    let _ = rustix::fs::removexattr("/dev/kvm", "system.posix_acl_access");
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("kvm-device").unwrap();
    let d = Daemon::start_in(
        &tmp.0.join("data"),
        &[
            ("CLOUDLET_DOMAIN_TYPE", "kvm"),
            ("CLOUDLET_CONFINEMENT", "required"),
        ],
    )
    .unwrap();
    let acl = kvm_acl().unwrap_or_else(|| panic!("no ACL on /dev/kvm\n{}", d.log_text()));
    assert!(grants_group_rw(&acl, VM_GID), "{acl:?}");
    assert!(
        d.log_text().contains("access to /dev/kvm"),
        "{}",
        d.log_text()
    );

    // A VM as the daemon runs them: its own uid, the VM group, nothing relabelled.
    let name = cloudlet_e2e::unique_name("kvm-device");
    let kernel = tmp.0.join("vmlinuz");
    std::fs::copy(guest.dir.join("vmlinuz"), &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let xml = tmp.0.join("kvm.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel></os>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>\
             <seclabel type='static' model='dac' relabel='no'><label>+{}:+{VM_GID}</label></seclabel>\
             </domain>",
            kernel.display(),
            VM_UIDS.end - 1
        ),
    )
    .unwrap();
    let _guard = cloudlet_e2e::DomainGuard(name.clone());
    let created = cloudlet_e2e::virsh(&["create", xml.to_str().unwrap()]);
    assert!(
        created.is_ok(),
        "a confined KVM domain did not start: {created:?}"
    );
    let (uids, gids) = qemu_ids(&name);
    assert_eq!((uids[0], gids[0]), (VM_UIDS.end - 1, VM_GID));
}
