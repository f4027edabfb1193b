//! `scripts/detect-domain-type.sh`, which install.sh and setup-host.sh use to choose
//! `kvm` or `qemu`, on fake `/proc/cpuinfo` files and fake KVM devices (no libvirt asked).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudlet_e2e::daemon::TempDir;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/detect-domain-type.sh")
}

/// What the script prints on stdout and stderr for these files.
fn detect(cpuinfo: &Path, device: &Path) -> (String, String) {
    let out = Command::new("bash")
        .arg(script())
        .arg("--no-libvirt")
        .args([cpuinfo, device])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const PLAIN: &str = "processor\t: 0\nmodel name\t: AMD EPYC (vmx in the name)\n\
    flags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm\nbugs\t\t: sysret_ss_attrs\n";

#[test]
fn kvm_only_with_cpu_flags_and_a_usable_device() {
    let dir = TempDir::new("detect").unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let intel = write("intel", &PLAIN.replace("hypervisor", "vmx hypervisor"));
    let amd = write("amd", &PLAIN.replace("lahf_lm", "lahf_lm svm"));
    let plain = write("plain", PLAIN);
    let lookalike = write("lookalike", &PLAIN.replace("lahf_lm", "vmxx svm_lock"));
    // /dev/null is a character device that opens read-write: it stands for a usable
    // /dev/kvm. A regular file or a missing path is no KVM device.
    let usable = Path::new("/dev/null");
    let missing = dir.0.join("no-kvm");
    let regular = write("not-a-device", "");

    assert_eq!(detect(&intel, usable).0, "kvm");
    assert_eq!(detect(&amd, usable).0, "kvm");
    // This machine kind: /dev/kvm exists and opens, but the CPU has no vmx/svm.
    let (choice, why) = detect(&plain, usable);
    assert_eq!(choice, "qemu");
    assert!(why.contains("no vmx/svm"), "{why}");
    assert_eq!(detect(&lookalike, usable).0, "qemu");
    let (choice, why) = detect(&intel, &missing);
    assert_eq!(choice, "qemu");
    assert!(why.contains("does not exist"), "{why}");
    assert_eq!(detect(&intel, &regular).0, "qemu");
    assert_eq!(detect(&dir.0.join("no-cpuinfo"), usable).0, "qemu");
}

/// On this host: never kvm where /proc/cpuinfo has no vmx/svm, whatever /dev/kvm is.
#[test]
fn this_host_gets_qemu_without_cpu_support() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let has_flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let (choice, _) = detect(Path::new("/proc/cpuinfo"), Path::new("/dev/kvm"));
    if !has_flags {
        assert_eq!(choice, "qemu");
    }
}
