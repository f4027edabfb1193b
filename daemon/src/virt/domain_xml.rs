//! Domain XML, as text: rendering a [`VmSpec`] for a VM that boots, retargeting the XML
//! stored in a save file for a VM that resumes, reading the VNC port of a live domain.
//! Pure functions, no libvirt: golden-tested below against `testdata/`.
//!
//! Rendering is a template with every value XML-escaped. Retargeting is an *edit* of the
//! saved text, never a re-rendering: QEMU restores device state by PCI slot, so every
//! address, MAC, model and controller of the saved XML must reach libvirt unchanged
//! (libvirt would otherwise assign fresh addresses to a rendered XML and the restore would
//! fail or corrupt devices). The edit parses the document with `quick-xml` to locate the
//! few elements and attributes to change, then splices the new values into the original
//! bytes, so whatever it does not touch stays byte-for-byte identical.

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
        "</domain>\n",
    ));
    x
}

/// Returns `saved_xml` (the domain XML stored in a save file) retargeted onto other files:
/// the domain `name`, the `uuid` (kept when `None`), the first disk's source file and
/// driver type (any `<backingStore>` inside that disk removed: see [`render`] for why),
/// and the path of every Unix-socket `<serial>`/`<console>` replaced. Everything else,
/// PCI addresses first of all, is kept verbatim.
///
/// Fails with [`VirtError::Xml`] when the XML is not well formed or lacks `<name>`, a
/// file-backed disk with `<driver>` and `<source file>`, or a Unix-socket serial console,
/// and with [`VirtError::InvalidArgument`] for a non-UTF-8 path.
pub fn retarget(
    saved_xml: &str,
    name: &str,
    uuid: Option<&str>,
    disk: &Path,
    disk_format: &str,
    console_socket: &Path,
) -> Result<String, VirtError> {
    let disk = utf8_path(disk)?;
    let socket = utf8_path(console_socket)?;
    let mut edits = Vec::new();
    let mut reader = Reader::from_str(saved_xml);
    let mut stack: Vec<String> = Vec::new();
    // Open elements of interest: start offset of the text after the start tag, or of the
    // element itself, and the stack depth at which they were opened.
    let mut name_text: Option<usize> = None;
    let mut name_end: Option<usize> = None;
    let mut uuid_text: Option<usize> = None;
    let mut uuid_found = false;
    let mut disk_depth: Option<usize> = None;
    let mut disk_done = false;
    let (mut driver_found, mut source_found) = (false, false);
    let mut backing_start: Option<usize> = None;
    let mut chardev_depth: Option<usize> = None;
    let mut sockets = 0usize;

    loop {
        let start = offset(reader.buffer_position())?;
        let event = reader
            .read_event()
            .map_err(|e| VirtError::Xml(format!("not well formed near byte {start}: {e}")))?;
        let end = offset(reader.buffer_position())?;
        let (element, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                let closing = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let depth = stack.len();
                match (depth, closing.as_str()) {
                    (2, "name") if in_path(&stack, &["domain", "name"]) => {
                        if let Some(text) = name_text.take() {
                            edits.push(Edit::replace(text, start, escape(name)));
                            name_end = Some(end);
                        }
                    }
                    (2, "uuid") if in_path(&stack, &["domain", "uuid"]) => {
                        if let (Some(text), Some(uuid)) = (uuid_text.take(), uuid) {
                            edits.push(Edit::replace(text, start, escape(uuid)));
                        }
                    }
                    _ => {}
                }
                if backing_start.is_some() && disk_depth.map(|d| d + 1) == Some(depth) {
                    if let Some(b) = backing_start.take() {
                        edits.push(Edit::remove_element(saved_xml, b, end));
                    }
                }
                if disk_depth == Some(depth) {
                    disk_depth = None;
                    disk_done = true;
                }
                if chardev_depth == Some(depth) {
                    chardev_depth = None;
                }
                stack.pop();
                continue;
            }
            Event::Eof => {
                unclosed(&stack)?;
                break;
            }
            _ => continue,
        };
        let local = String::from_utf8_lossy(element.local_name().as_ref()).into_owned();
        let tag = saved_xml
            .get(start..end)
            .ok_or_else(|| VirtError::Xml(format!("bad element bounds at byte {start}")))?;
        let depth = stack.len();
        if depth == 0 && local != "domain" {
            return Err(VirtError::Xml(format!(
                "root element is <{local}>, not <domain>"
            )));
        }
        let in_devices = in_path(&stack, &["domain", "devices"]);
        match local.as_str() {
            "name" if in_path(&stack, &["domain"]) => {
                if empty {
                    edits.push(Edit::replace(
                        start,
                        end,
                        format!("<name>{}</name>", escape(name)),
                    ));
                    name_end = Some(end);
                } else {
                    name_text = Some(end);
                }
            }
            "uuid" if in_path(&stack, &["domain"]) => {
                uuid_found = true;
                if !empty {
                    uuid_text = Some(end);
                } else if let Some(uuid) = uuid {
                    edits.push(Edit::replace(
                        start,
                        end,
                        format!("<uuid>{}</uuid>", escape(uuid)),
                    ));
                }
            }
            "disk" if in_devices && !disk_done && disk_depth.is_none() => {
                let device = attribute(element, "device")?;
                if device.as_deref().unwrap_or("disk") == "disk" {
                    if empty {
                        return Err(VirtError::Xml("the first disk is empty".into()));
                    }
                    disk_depth = Some(depth + 1);
                }
            }
            "driver" if disk_depth == Some(depth) => {
                driver_found = true;
                edits.push(set_attribute(tag, start, "type", disk_format));
            }
            "source" if disk_depth == Some(depth) => {
                let Some((a, b)) = attribute_span(tag, "file") else {
                    return Err(VirtError::Xml(
                        "the first disk has no <source file=...> (only file-backed disks can be \
                         retargeted)"
                            .into(),
                    ));
                };
                source_found = true;
                edits.push(Edit::replace(start + a, start + b, escape(disk)));
            }
            "backingStore" if disk_depth == Some(depth) => {
                if empty {
                    edits.push(Edit::remove_element(saved_xml, start, end));
                } else {
                    backing_start = Some(start);
                }
            }
            "serial" | "console"
                if in_devices
                    && !empty
                    && attribute(element, "type")?.as_deref() == Some("unix") =>
            {
                chardev_depth = Some(depth + 1);
            }
            "source" if chardev_depth == Some(depth) => {
                let Some((a, b)) = attribute_span(tag, "path") else {
                    return Err(VirtError::Xml(format!(
                        "a unix <{}> has a <source> without path",
                        stack.last().map_or("serial", String::as_str)
                    )));
                };
                sockets += 1;
                edits.push(Edit::replace(start + a, start + b, escape(socket)));
            }
            _ => {}
        }
        if !empty {
            stack.push(local);
        }
    }

    let Some(name_end) = name_end else {
        return Err(VirtError::Xml("no <name> element".into()));
    };
    if let (Some(uuid), false) = (uuid, uuid_found) {
        edits.push(Edit::replace(
            name_end,
            name_end,
            format!("\n  <uuid>{}</uuid>", escape(uuid)),
        ));
    }
    if !disk_done {
        return Err(VirtError::Xml("no <disk device='disk'> element".into()));
    }
    if !driver_found {
        return Err(VirtError::Xml(
            "the first disk has no <driver> element".into(),
        ));
    }
    if !source_found {
        return Err(VirtError::Xml(
            "the first disk has no <source> element".into(),
        ));
    }
    if sockets == 0 {
        return Err(VirtError::Xml(
            "no <serial type='unix'> or <console type='unix'> with a source path".into(),
        ));
    }
    Ok(apply(saved_xml, edits))
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

fn utf8_path(path: &Path) -> Result<&str, VirtError> {
    path.to_str()
        .ok_or_else(|| VirtError::InvalidArgument(format!("path {} is not UTF-8", path.display())))
}

fn offset(position: u64) -> Result<usize, VirtError> {
    usize::try_from(position).map_err(|_| VirtError::Xml("document too large".into()))
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
pub(super) fn attribute(element: &BytesStart<'_>, key: &str) -> Result<Option<String>, VirtError> {
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

/// Sets the `discard` mode (`unmap`: guest TRIM reaches the image; `ignore`: it does not)
/// of the first disk's `<driver>` in a domain XML (the disk [`retarget`] edits: the first
/// `<disk>` whose device is `disk`, not a cdrom).
pub fn set_disk_discard(xml: &str, mode: &str) -> Result<String, VirtError> {
    let is_disk = |at: usize| {
        let tag = &xml[at..xml[at..].find('>').map_or(xml.len(), |e| at + e + 1)];
        attribute_span(tag, "device").is_none_or(|(a, b)| &tag[a..b] == "disk")
    };
    let disk = xml
        .match_indices("<disk ")
        .map(|(at, _)| at)
        .find(|&at| is_disk(at))
        .ok_or_else(|| VirtError::Xml("no <disk device='disk'> element".into()))?;
    let disk_end = xml[disk..]
        .find("</disk>")
        .map(|e| disk + e)
        .ok_or_else(|| VirtError::Xml("unclosed <disk> element".into()))?;
    let driver = xml[disk..disk_end]
        .find("<driver")
        .map(|d| disk + d)
        .ok_or_else(|| VirtError::Xml("the first disk has no <driver> element".into()))?;
    let tag_end = xml[driver..]
        .find('>')
        .map(|e| driver + e + 1)
        .ok_or_else(|| VirtError::Xml("unclosed <driver> tag".into()))?;
    let edit = set_attribute(&xml[driver..tag_end], driver, "discard", mode);
    Ok(apply(xml, vec![edit]))
}

/// Byte range of attribute `key`'s raw value inside a start tag's text (`<el a='v' ...>`),
/// quotes excluded. The tag was already checked by the parser; this only locates.
fn attribute_span(tag: &str, key: &str) -> Option<(usize, usize)> {
    let b = tag.as_bytes();
    let is_space = |c: u8| c.is_ascii_whitespace();
    let mut i = 1;
    while i < b.len() && !is_space(b[i]) && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] == b'/' || b[i] == b'>' {
            return None;
        }
        let key_start = i;
        while i < b.len() && !is_space(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let this_key = &tag[key_start..i];
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let quote = *b.get(i)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        i += 1;
        let value_start = i;
        while i < b.len() && b[i] != quote {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        if this_key == key {
            return Some((value_start, i));
        }
        i += 1;
    }
}

/// Sets attribute `key` of the start tag `tag` (found at `start`), adding it when absent.
fn set_attribute(tag: &str, start: usize, key: &str, value: &str) -> Edit {
    match attribute_span(tag, key) {
        Some((a, b)) => Edit::replace(start + a, start + b, escape(value)),
        None => {
            let close = if tag.ends_with("/>") { 2 } else { 1 };
            let at = start + tag.len() - close;
            Edit::replace(at, at, format!(" {key}='{}'", escape(value)))
        }
    }
}

/// Replace bytes `start..end` of the original text with `text`.
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

impl Edit {
    fn replace(start: usize, end: usize, text: impl Into<String>) -> Self {
        Self {
            start,
            end,
            text: text.into(),
        }
    }

    /// Removes an element, with its line when nothing else is on it.
    fn remove_element(xml: &str, start: usize, end: usize) -> Self {
        let line_start = xml[..start].rfind('\n').unwrap_or(0);
        let only_indent = xml[line_start..start]
            .bytes()
            .all(|c| c == b'\n' || c == b' ' || c == b'\t');
        let start = if only_indent && line_start > 0 {
            line_start
        } else {
            start
        };
        Self::replace(start, end, String::new())
    }
}

fn apply(xml: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(xml.len() + 256);
    let mut at = 0;
    for edit in edits {
        // Edits never overlap (each targets a distinct element); skip defensively if they do.
        if edit.start < at {
            continue;
        }
        out.push_str(&xml[at..edit.start]);
        out.push_str(&edit.text);
        at = edit.end;
    }
    out.push_str(&xml[at..]);
    out
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
        let retargeted =
            retarget(&xml, "n", None, Path::new("/x"), "raw", Path::new("/y")).unwrap();
        assert!(retargeted.contains(&format!("<uuid>{escaped}</uuid>")));
        assert_eq!(vnc_port(&xml).unwrap(), None);
    }

    #[test]
    fn escape_leaves_plain_text_borrowed() {
        assert!(matches!(escape("/plain/path"), Cow::Borrowed(_)));
        assert_eq!(escape("<&>"), "&lt;&amp;&gt;");
    }

    const SAVED: &str = include_str!("testdata/saved-fixture.xml");

    #[test]
    fn retargets_a_saved_fixture_xml() {
        let out = retarget(
            SAVED,
            "cloudlet-abc",
            Some("11111111-2222-3333-4444-555555555555"),
            Path::new("/data/sessions/abc/disk.qcow2"),
            "qcow2",
            Path::new("/data/sessions/abc/console.sock"),
        )
        .unwrap();
        assert_eq!(out, include_str!("testdata/saved-fixture-retargeted.xml"));
    }

    #[test]
    fn retarget_keeps_everything_else_verbatim() {
        let out = retarget(
            SAVED,
            "cloudlet-fixture-19961",
            None,
            Path::new("/work/main/target/fixture-guest/guest-disk.img"),
            "raw",
            Path::new("/work/main/target/fixture-guest/console.sock"),
        )
        .unwrap();
        // Same values everywhere: only the empty <backingStore/> line is gone.
        assert_eq!(out, SAVED.replace("\n      <backingStore/>", ""));
        for address in SAVED.lines().filter(|l| l.contains("<address ")) {
            assert!(out.contains(address), "{address}");
        }
    }

    #[test]
    fn retarget_removes_a_nested_backing_store_and_adds_a_missing_type() {
        let xml = "<domain><name>a</name><devices>\
            <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
            <source file='/iso'/><target dev='hdc'/></disk>\
            <disk type='file'><driver name='qemu'/><source file=\"/old\" index=\"1\"/>\
            <backingStore type='file'><format type='raw'/><source file='/base'/>\
            <backingStore/></backingStore><target dev='vda'/></disk>\
            <disk type='file' device='disk'><driver type='raw'/><source file='/second'/></disk>\
            <serial type='pty'><source path='/dev/pts/3'/></serial>\
            <console type='unix'><source mode='bind' path='/old.sock'/></console>\
            </devices></domain>";
        let out = retarget(
            xml,
            "b",
            Some("u-1"),
            Path::new("/new"),
            "qcow2",
            Path::new("/new.sock"),
        )
        .unwrap();
        assert_eq!(
            out,
            "<domain><name>b</name>\n  <uuid>u-1</uuid><devices>\
            <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
            <source file='/iso'/><target dev='hdc'/></disk>\
            <disk type='file'><driver name='qemu' type='qcow2'/><source file=\"/new\" index=\"1\"/>\
            <target dev='vda'/></disk>\
            <disk type='file' device='disk'><driver type='raw'/><source file='/second'/></disk>\
            <serial type='pty'><source path='/dev/pts/3'/></serial>\
            <console type='unix'><source mode='bind' path='/new.sock'/></console>\
            </devices></domain>"
        );
    }

    #[test]
    fn retarget_escapes_new_values() {
        let out = retarget(
            SAVED,
            "a<b",
            Some("u&1"),
            Path::new("/d/it's"),
            "raw",
            Path::new("/s/\"q\""),
        )
        .unwrap();
        assert!(out.contains("<name>a&lt;b</name>"));
        assert!(out.contains("<uuid>u&amp;1</uuid>"));
        assert!(out.contains("<source file='/d/it&apos;s'/>"));
        assert_eq!(out.matches("path='/s/&quot;q&quot;'").count(), 2);
    }

    #[test]
    fn retarget_refuses_what_it_cannot_edit() {
        let d = Path::new("/d");
        let s = Path::new("/s");
        let cases: &[(&str, &str)] = &[
            ("<domain><name>a</name>", "not well formed"),
            ("<domain><name>a</nom></domain>", "not well formed"),
            ("<vm><name>a</name></vm>", "root element"),
            (
                "<domain><devices><disk><driver/><source file='/x'/></disk>\
                 <serial type='unix'><source path='/p'/></serial></devices></domain>",
                "no <name>",
            ),
            (
                "<domain><name>a</name><devices>\
                 <serial type='unix'><source path='/p'/></serial></devices></domain>",
                "no <disk",
            ),
            (
                "<domain><name>a</name><devices><disk type='block'><driver type='raw'/>\
                 <source dev='/dev/sda'/></disk>\
                 <serial type='unix'><source path='/p'/></serial></devices></domain>",
                "only file-backed",
            ),
            (
                "<domain><name>a</name><devices><disk><source file='/x'/></disk>\
                 <serial type='unix'><source path='/p'/></serial></devices></domain>",
                "no <driver>",
            ),
            (
                "<domain><name>a</name><devices><disk><driver type='raw'/></disk>\
                 <serial type='unix'><source path='/p'/></serial></devices></domain>",
                "no <source>",
            ),
            (
                "<domain><name>a</name><devices><disk><driver/><source file='/x'/></disk>\
                 <serial type='pty'/></devices></domain>",
                "no <serial",
            ),
            (
                "<domain><name>a</name><devices><disk><driver/><source file='/x'/></disk>\
                 <serial type='unix'><source mode='bind'/></serial></devices></domain>",
                "without path",
            ),
        ];
        for (xml, want) in cases {
            let err = retarget(xml, "n", None, d, "raw", s).unwrap_err();
            assert!(matches!(err, VirtError::Xml(_)), "{xml}: {err:?}");
            assert!(err.is_invalid_input());
            assert!(err.to_string().contains(want), "{xml}: {err}");
        }
    }

    #[test]
    fn retarget_refuses_non_utf8_paths() {
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/d/\xff"));
        let err = retarget(SAVED, "n", None, bad, "raw", Path::new("/s")).unwrap_err();
        assert!(matches!(err, VirtError::InvalidArgument(_)), "{err:?}");
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
        assert_eq!(vnc_port(SAVED).unwrap(), None);
        let bad = "<graphics type='vnc' port='99999'/>";
        assert!(matches!(vnc_port(&live(bad)), Err(VirtError::Xml(_))));
        assert!(vnc_port("<domain>").is_err());
    }

    #[test]
    fn sets_the_first_disks_discard_mode() {
        let xml = render(&spec());
        let off = set_disk_discard(&xml, "ignore").unwrap();
        assert!(off.contains("discard='ignore'"), "{off}");
        assert!(!off.contains("discard='unmap'"));
        assert_eq!(off.len(), xml.len() + 1); // only the value changed
        let added = set_disk_discard(
            "<domain><disk type='file'><driver name='q'/></disk>",
            "unmap",
        )
        .unwrap();
        assert_eq!(
            added,
            "<domain><disk type='file'><driver name='q' discard='unmap'/></disk>"
        );
        assert!(set_disk_discard("<domain/>", "unmap").is_err());
        let cdrom_first = "<disk type='file' device='cdrom'><driver name='a'/></disk>\
                           <disk type='file' device='disk'><driver name='b'/></disk>";
        let set = set_disk_discard(cdrom_first, "ignore").unwrap();
        assert!(set.contains("<driver name='b' discard='ignore'/>"), "{set}");
        assert!(set.contains("<driver name='a'/>"), "{set}");
    }

    #[test]
    fn attribute_spans() {
        let tag = "<source mode = 'bind' x:path=\"/a'b\" path='/p'/>";
        let (a, b) = attribute_span(tag, "mode").unwrap();
        assert_eq!(&tag[a..b], "bind");
        // Another attribute's value or a prefixed name never matches.
        let (a, b) = attribute_span(tag, "path").unwrap();
        assert_eq!(&tag[a..b], "/p");
        assert_eq!(attribute_span(tag, "file"), None);
        assert_eq!(attribute_span("<a>", "x"), None);
    }
}
