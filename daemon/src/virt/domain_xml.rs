//! Domain XML, as text: rendering a [`VmSpec`] for a VM that boots, reading the VNC port
//! of a live domain. Pure functions, no libvirt: golden-tested below against `testdata/`.
//! The definition of a VM that resumes from a save file is built in [`super::foreign`].
//!
//! Rendering is a template with every value XML-escaped.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{DomainType, VirtError, VmSpec};

/// Renders the domain XML of a VM that boots from `spec`.
///
/// Paths are written as UTF-8 (`Path::display`); a non-UTF-8 path would reach libvirt
/// altered and the start fails on a missing file, loudly. No `<cpu>` element: libvirt's
/// default model (qemu64 under TCG) is portable, whereas `host-passthrough` and
/// `host-model` make QEMU abort on nested hosts (measured: MSR 0x10a).
pub fn render(spec: &VmSpec) -> String {
    let mut x = String::with_capacity(2048);
    let kind = match spec.domain_type {
        DomainType::Kvm => "kvm",
        DomainType::Qemu => "qemu",
    };
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(x, "<domain type='{kind}'>");
    let _ = writeln!(x, "  <name>{}</name>", escape(&spec.name));
    if let Some(uuid) = &spec.uuid {
        let _ = writeln!(x, "  <uuid>{}</uuid>", escape(uuid));
    }
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", spec.memory_mib);
    let _ = writeln!(
        x,
        "  <currentMemory unit='MiB'>{}</currentMemory>",
        spec.memory_mib
    );
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", spec.vcpus);
    x.push_str("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n");
    match &spec.kernel {
        Some(kernel) => {
            let _ = writeln!(x, "    <kernel>{}</kernel>", escape_path(kernel));
            if let Some(initrd) = &spec.initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", escape_path(initrd));
            }
            if let Some(cmdline) = &spec.cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(cmdline));
            }
        }
        None => x.push_str("    <boot dev='hd'/>\n"),
    }
    x.push_str(concat!(
        "  </os>\n",
        "  <features>\n    <acpi/>\n    <apic/>\n  </features>\n",
        "  <clock offset='utc'/>\n",
        "  <on_poweroff>destroy</on_poweroff>\n",
        "  <on_reboot>destroy</on_reboot>\n",
        "  <on_crash>destroy</on_crash>\n",
        "  <devices>\n",
    ));
    // A qcow2 disk gets no <backingStore/> element: an *empty* one tells libvirt the image
    // has no backing file, and a synthesized disk (a qcow2 backed by the base disk) then
    // reads zeros for every base block (ext4 checksum errors in the guest). Without the
    // element libvirt probes the backing chain from the qcow2 header, which is what we want.
    // (Measured by hand: `virsh restore` of a save whose XML kept `<backingStore/>`.)
    // discard='unmap' passes guest TRIM through: discarded ranges become zero clusters in
    // the overlay qcow2, which the encoder records as modified-to-zero.
    let _ = write!(
        x,
        concat!(
            "    <disk type='file' device='disk'>\n",
            "      <driver name='qemu' type='{format}' discard='unmap'/>\n",
            "      <source file='{disk}'/>\n",
            "      <target dev='vda' bus='virtio'/>\n",
            "    </disk>\n",
        ),
        format = escape(&spec.disk_format),
        disk = escape_path(&spec.disk),
    );
    // QEMU names this NIC's netdev `hostnet0`: ports::forward_port relies on it.
    x.push_str("    <interface type='user'>\n      <model type='virtio'/>\n    </interface>\n");
    let sock = escape_path(&spec.console_socket);
    let _ = write!(
        x,
        concat!(
            "    <serial type='unix'>\n",
            "      <source mode='bind' path='{sock}'/>\n",
            "      <target port='0'/>\n",
            "    </serial>\n",
            "    <console type='unix'>\n",
            "      <source mode='bind' path='{sock}'/>\n",
            "      <target type='serial' port='0'/>\n",
            "    </console>\n",
        ),
        sock = sock,
    );
    if spec.vnc {
        x.push_str("    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>\n");
    }
    // No USB or sound: each extra device adds state to every save file and nothing the VM
    // needs. A virtio balloon with free page reporting, though: a guest whose kernel has
    // virtio_balloon (Debian's and Ubuntu's do) reports the pages it frees, QEMU discards
    // them, and a save (hence an overlay) carries them as zero pages instead of stale data
    // (measured by hand with virsh save on a Debian 12 guest: 64 MiB written to /dev/shm and
    // removed, save file 171 MB with the balloon, 272 MB without; not yet a benchmark here).
    x.push_str(concat!(
        "    <controller type='usb' model='none'/>\n",
        "    <memballoon model='virtio' freePageReporting='on'/>\n",
        "  </devices>\n",
    ));
    if let Some(identity) = spec.identity {
        x.push_str(&identity.seclabel());
    }
    x.push_str("</domain>\n");
    x
}

/// The VNC port of a live domain XML: `Some` once libvirt assigned it (`port` is `-1`
/// before that, and the attribute is absent in an inactive definition), `None` without a
/// VNC display.
pub fn vnc_port(live_xml: &str) -> Result<Option<u16>, VirtError> {
    let mut reader = Reader::from_str(live_xml);
    let mut stack: Vec<String> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| VirtError::Xml(format!("live domain xml is not well formed: {e}")))?;
        let (element, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Eof => return unclosed(&stack).map(|()| None),
            _ => continue,
        };
        let local = String::from_utf8_lossy(element.local_name().as_ref()).into_owned();
        if local == "graphics"
            && in_path(&stack, &["domain", "devices"])
            && attribute(element, "type")?.as_deref() == Some("vnc")
        {
            return match attribute(element, "port")?.as_deref() {
                None | Some("-1") => Ok(None),
                Some(p) => p
                    .parse()
                    .map(Some)
                    .map_err(|_| VirtError::Xml(format!("vnc port `{p}` is not a port"))),
            };
        }
        if !empty {
            stack.push(local);
        }
    }
}

/// Escapes the five XML special characters (for text and for attributes in either quote).
pub fn escape(value: &str) -> Cow<'_, str> {
    if !value.contains(['&', '<', '>', '\'', '"']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn escape_path(path: &Path) -> String {
    escape(&path.display().to_string()).into_owned()
}

/// quick-xml reports a document that ends inside an element as a plain end of file.
fn unclosed(stack: &[String]) -> Result<(), VirtError> {
    match stack.last() {
        Some(open) => Err(VirtError::Xml(format!(
            "not well formed: <{open}> is never closed"
        ))),
        None => Ok(()),
    }
}

/// Whether the open elements are exactly `path`.
fn in_path(stack: &[String], path: &[&str]) -> bool {
    stack.len() == path.len() && stack.iter().zip(path).all(|(a, b)| a == b)
}

/// An attribute's unescaped value.
fn attribute(element: &BytesStart<'_>, key: &str) -> Result<Option<String>, VirtError> {
    for attr in element.attributes() {
        let attr = attr.map_err(|e| VirtError::Xml(format!("bad attribute: {e}")))?;
        if attr.key.as_ref() == key.as_bytes() {
            let raw = std::str::from_utf8(&attr.value)
                .map_err(|_| VirtError::Xml("attribute is not UTF-8".into()))?;
            let value = quick_xml::escape::unescape(raw)
                .map_err(|e| VirtError::Xml(format!("bad attribute value: {e}")))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "cloudlet-0192".into(),
            uuid: Some("6f1c5e7a-1b2c-4d3e-8f90-0123456789ab".into()),
            domain_type: DomainType::Qemu,
            memory_mib: 72,
            vcpus: 1,
            kernel: Some(PathBuf::from("/var/lib/cloudlet/k/vmlinuz")),
            initrd: Some(PathBuf::from("/var/lib/cloudlet/k/initrd.img")),
            cmdline: Some("console=ttyS0 quiet init_on_free=1".into()),
            disk: PathBuf::from("/var/lib/cloudlet/sessions/0192/disk.raw"),
            disk_format: "raw".into(),
            console_socket: PathBuf::from("/var/lib/cloudlet/sessions/0192/console.sock"),
            vnc: true,
            identity: None,
        }
    }

    #[test]
    fn renders_direct_kernel_boot() {
        assert_eq!(
            render(&spec()),
            include_str!("testdata/render-direct-kernel.xml")
        );
    }

    #[test]
    fn renders_disk_boot_with_qcow2_kvm_and_no_vnc() {
        let s = VmSpec {
            uuid: None,
            domain_type: DomainType::Kvm,
            memory_mib: 2048,
            vcpus: 2,
            kernel: None,
            initrd: None,
            cmdline: None,
            disk: PathBuf::from("/data/disk.qcow2"),
            disk_format: "qcow2".into(),
            vnc: false,
            ..spec()
        };
        let xml = render(&s);
        assert_eq!(xml, include_str!("testdata/render-disk-boot.xml"));
        assert!(!xml.contains("backingStore"), "pitfall: empty backingStore");
    }

    #[test]
    fn kernel_without_initrd_or_cmdline() {
        let s = VmSpec {
            initrd: None,
            cmdline: None,
            ..spec()
        };
        let xml = render(&s);
        assert!(xml.contains("<kernel>/var/lib/cloudlet/k/vmlinuz</kernel>\n  </os>"));
        assert!(!xml.contains("<boot"));
    }

    #[test]
    fn every_value_is_escaped() {
        let evil = "a&b<c>d'e\"f";
        let s = VmSpec {
            name: evil.into(),
            uuid: Some(evil.into()),
            cmdline: Some(evil.into()),
            kernel: Some(PathBuf::from(format!("/k/{evil}"))),
            initrd: Some(PathBuf::from(format!("/i/{evil}"))),
            disk: PathBuf::from(format!("/d/{evil}")),
            disk_format: evil.into(),
            console_socket: PathBuf::from(format!("/s/{evil}")),
            ..spec()
        };
        let xml = render(&s);
        let escaped = "a&amp;b&lt;c&gt;d&apos;e&quot;f";
        assert!(!xml.contains(evil));
        // name, uuid, cmdline, kernel, initrd, disk format, disk, serial + console paths
        assert_eq!(xml.matches(escaped).count(), 9, "{xml}");
        // Well formed, and the values read back unescaped.
        let tree = super::super::xml_tree::parse(&xml).unwrap();
        assert_eq!(tree.required("uuid").unwrap().text, evil);
        assert_eq!(vnc_port(&xml).unwrap(), None);
    }

    #[test]
    fn a_confined_vm_names_its_user_in_a_static_dac_seclabel() {
        let s = VmSpec {
            identity: Some(crate::virt::VmIdentity {
                uid: 64002,
                gid: 64000,
            }),
            ..spec()
        };
        let xml = render(&s);
        assert!(
            xml.ends_with(
                "  </devices>\n  <seclabel type='static' model='dac' relabel='no'>\n    \
                 <label>+64002:+64000</label>\n  </seclabel>\n</domain>\n"
            ),
            "{xml}"
        );
        let tree = super::super::xml_tree::parse(&xml).unwrap();
        assert_eq!(tree.required("seclabel").unwrap().children.len(), 1);
        assert!(!render(&spec()).contains("seclabel"));
    }

    #[test]
    fn escape_leaves_plain_text_borrowed() {
        assert!(matches!(escape("/plain/path"), Cow::Borrowed(_)));
        assert_eq!(escape("<&>"), "&lt;&amp;&gt;");
    }

    #[test]
    fn reads_the_vnc_port_of_a_live_xml() {
        let live = |graphics: &str| {
            format!(
                "<domain type='qemu' id='3'><name>a</name><devices>\
                 <graphics type='spice' port='5901'/>{graphics}</devices></domain>"
            )
        };
        let port = "<graphics type='vnc' port='5900' autoport='yes' listen='127.0.0.1'>\
                    <listen type='address' address='127.0.0.1'/></graphics>";
        assert_eq!(vnc_port(&live(port)).unwrap(), Some(5900));
        let unassigned = "<graphics type='vnc' port='-1' autoport='yes'/>";
        assert_eq!(vnc_port(&live(unassigned)).unwrap(), None);
        assert_eq!(vnc_port(&live("")).unwrap(), None);
        assert_eq!(
            vnc_port(include_str!("testdata/saved-base.xml")).unwrap(),
            None
        );
        let bad = "<graphics type='vnc' port='99999'/>";
        assert!(matches!(vnc_port(&live(bad)), Err(VirtError::Xml(_))));
        assert!(vnc_port("<domain>").is_err());
    }
}
