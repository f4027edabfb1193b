//! Domain XML that arrives from outside (inside an overlay's memory snapshot, or an
//! imported base archive) decides what QEMU opens on this host. Before such a VM is
//! started it must pass [`check_confined`]: only the device kinds the daemon itself creates,
//! every host path inside the session's or base's directory, the expected emulator,
//! displays on loopback. Anything else is refused, never rewritten.

use std::path::{Component, Path};

use quick_xml::events::Event;
use quick_xml::Reader;

use super::domain_xml::attribute;
use super::VirtError;

/// Elements allowed anywhere under `<domain>` (their attributes are checked below).
const ALLOWED: &[&str] = &[
    "domain",
    "name",
    "uuid",
    "title",
    "description",
    "memory",
    "currentMemory",
    "maxMemory",
    "vcpu",
    "vcpus",
    "iothreads",
    "resource",
    "partition",
    "os",
    "type",
    "kernel",
    "initrd",
    "cmdline",
    "boot",
    "bootmenu",
    "cpu",
    "model",
    "vendor",
    "feature",
    "topology",
    "clock",
    "timer",
    "catchup",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "pm",
    "suspend-to-mem",
    "suspend-to-disk",
    "devices",
    "emulator",
    "disk",
    "driver",
    "source",
    "backingStore",
    "format",
    "target",
    "address",
    "alias",
    "readonly",
    "shareable",
    "serial",
    "console",
    "controller",
    "interface",
    "mac",
    "link",
    "input",
    "audio",
    "memballoon",
    "stats",
    "graphics",
    "listen",
    "video",
    "acceleration",
    "sound",
    "codec",
    "seclabel",
    "label",
    "imagelabel",
    "baselabel",
    "channel",
    "panic",
    "watchdog",
    "features",
    "metadata",
];

/// Elements whose text is a host path.
const PATH_TEXT: &[&str] = &["kernel", "initrd", "dtb", "loader", "nvram"];

/// `<source>` / `<listen>` attributes that name host files.
const PATH_ATTRS: &[&str] = &["file", "path", "dir", "socket"];

/// Checks that `xml` only uses allowed devices, host paths under `allowed_dirs` (after
/// lexical normalization; no `..`), and `emulator` (when given; else a
/// `/usr/bin/qemu-system-*` binary).
pub fn check_confined(
    xml: &str,
    allowed_dirs: &[&Path],
    emulator: Option<&str>,
) -> Result<(), VirtError> {
    let refuse = |what: String| Err(VirtError::InvalidArgument(format!("domain XML {what}")));
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| VirtError::Xml(format!("not well formed: {e}")))?;
        let (element, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Text(t) => {
                let Some(parent) = stack.last() else { continue };
                if stack.iter().any(|s| s == "metadata") {
                    continue;
                }
                let text = t
                    .decode()
                    .map_err(|e| VirtError::Xml(format!("bad text: {e}")))?;
                let text = text.trim();
                if PATH_TEXT.contains(&parent.as_str()) && !inside(text, allowed_dirs) {
                    return refuse(format!(
                        "names a host file outside the VM's directories: <{parent}>{text}"
                    ));
                }
                if parent == "emulator" {
                    let ok = match emulator {
                        Some(e) => text == e,
                        None => text.starts_with("/usr/bin/qemu-system-") && !text.contains(".."),
                    };
                    if !ok {
                        return refuse(format!("names an unexpected emulator: {text}"));
                    }
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
        let in_metadata = stack.iter().any(|s| s == "metadata");
        let in_flags = stack.iter().any(|s| s == "features" || s == "cpu");
        if !in_metadata && !in_flags && !ALLOWED.contains(&name.as_str()) {
            return refuse(format!("uses <{name}>, which the daemon does not allow"));
        }
        if !in_metadata {
            let kind = attribute(element, "type")?;
            let kind = kind.as_deref();
            match name.as_str() {
                "disk" if kind != Some("file") => {
                    return refuse(format!("has a disk of type {kind:?} (only files)"))
                }
                "interface" if kind != Some("user") => {
                    return refuse(format!(
                        "has a network interface of type {kind:?} (only user)"
                    ))
                }
                "serial" | "console" | "channel"
                    if !matches!(kind, Some("unix" | "pty"))
                        && stack.last().map(String::as_str) == Some("devices") =>
                {
                    return refuse(format!("has a <{name}> of type {kind:?} (only unix, pty)"))
                }
                "source" | "listen" => {
                    for key in PATH_ATTRS {
                        if let Some(path) = attribute(element, key)? {
                            if !inside(&path, allowed_dirs) {
                                return refuse(format!(
                                    "names a host file outside the VM's directories: {path}"
                                ));
                            }
                        }
                    }
                    for key in ["dev", "evdev", "network", "bridge", "protocol"] {
                        if attribute(element, key)?.is_some() {
                            return refuse(format!("has a <{name} {key}=...> (host devices and networks are not allowed)"));
                        }
                    }
                    if name == "listen" {
                        check_loopback(attribute(element, "address")?.as_deref())?;
                    }
                }
                "graphics" => check_loopback(attribute(element, "listen")?.as_deref())?,
                _ => {}
            }
        }
        if !empty {
            stack.push(name);
        }
    }
    Ok(())
}

fn check_loopback(address: Option<&str>) -> Result<(), VirtError> {
    match address {
        None | Some("127.0.0.1" | "::1" | "localhost") => Ok(()),
        Some(other) => Err(VirtError::InvalidArgument(format!(
            "domain XML listens on {other}; displays stay on loopback"
        ))),
    }
}

/// Whether `path` is absolute, free of `..`, and under one of `dirs`.
fn inside(path: &str, dirs: &[&Path]) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        && !p.components().any(|c| matches!(c, Component::ParentDir))
        && dirs.iter().any(|d| p.starts_with(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = include_str!("testdata/saved-fixture.xml");
    const DIR: &str = "/work/main/target/fixture-guest";

    fn check(xml: &str) -> Result<(), VirtError> {
        check_confined(xml, &[Path::new(DIR)], Some("/usr/bin/qemu-system-x86_64"))
    }

    #[test]
    fn a_saved_vm_of_ours_passes() {
        check(SAVED).unwrap();
        check_confined(SAVED, &[Path::new(DIR)], None).unwrap();
    }

    #[test]
    fn escapes_are_refused() {
        let disk = "<source file='/work/main/target/fixture-guest/guest-disk.img'/>";
        let cases = [
            (disk, "<source file='/etc/shadow'/>"),
            (
                disk,
                "<source file='/work/main/target/fixture-guest/../../../etc/shadow'/>",
            ),
            (
                "<kernel>/work/main/target/fixture-guest/vmlinuz</kernel>",
                "<kernel>/boot/vmlinuz</kernel>",
            ),
            (
                "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
                "<emulator>/tmp/evil</emulator>",
            ),
            (
                "<memballoon model='none'/>",
                "<hostdev mode='subsystem' type='pci'/>",
            ),
            (
                "<memballoon model='none'/>",
                "<filesystem type='mount'><source dir='/'/><target dir='r'/></filesystem>",
            ),
            (
                "<memballoon model='none'/>",
                "<qemu:commandline><qemu:arg value='-x'/></qemu:commandline>",
            ),
            (
                "<memballoon model='none'/>",
                "<disk type='block' device='disk'><source dev='/dev/sda'/></disk>",
            ),
            ("<interface type='user'>", "<interface type='bridge'>"),
            (
                "<memballoon model='none'/>",
                "<graphics type='vnc' listen='0.0.0.0'/>",
            ),
            (
                "<memballoon model='none'/>",
                "<serial type='file'><source path='/work/main/target/fixture-guest/x'/></serial>",
            ),
            (
                "<input type='mouse' bus='ps2'/>",
                "<input type='passthrough'><source evdev='/dev/input/event0'/></input>",
            ),
        ];
        for (from, to) in cases {
            assert!(SAVED.contains(from), "{from}");
            let xml = SAVED.replacen(from, to, 1);
            assert!(check(&xml).is_err(), "accepted: {to}");
        }
        let loopback = SAVED.replacen(
            "<memballoon model='none'/>",
            "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>",
            1,
        );
        check(&loopback).unwrap();
    }
}
