//! The domain-definition rule: every domain the daemon starts is **built by the daemon**;
//! a domain XML that comes from outside (stored with an overlay's memory snapshot, with an
//! imported base, or in a save file given to `add-base`) only lends it a validated, typed
//! set of values ([`SavedDomain`]).
//!
//! A VM that *boots* (a disk-only synthesis) takes [`BootValues`] (memory, vCPUs, kernel
//! command line, whether it boots a kernel, whether it has VNC) and is rendered by
//! [`render`](super::domain_xml::render) like a new base.
//!
//! A VM that *resumes* must look to QEMU exactly like the machine that was saved (device
//! state is restored by device and PCI slot). [`resume_xml`] therefore reads the saved XML
//! into a [`SavedDomain`] (machine type, CPU model, devices present, their PCI addresses,
//! the MAC, ...), renders the resume definition from the daemon's [`SessionSpec`] (name,
//! UUID, domain type, the disk it created, its console socket, the base's boot files) plus
//! those values, and then compares the saved XML with that rendering: any difference
//! outside the accepted set refuses the VM. The accepted set is the values that name this
//! host or this VM (name, UUID, domain type, disk file and format, discard mode, console
//! socket paths, kernel and initrd paths), which the daemon replaces, the `<emulator>`,
//! which must be a known QEMU binary and is left to this host's libvirt, and an empty
//! `<backingStore/>`, which the daemon never writes (see [`render`](super::domain_xml::render)).
//! Nothing else of the foreign text reaches libvirt.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::domain_xml::escape;
use super::saved_values::{
    balloon, cmdline, controller, cpu, feature, input, kib, mac, machine, number, only, pci,
    refuse, vcpus, video, Balloon, Controller, Cpu, Feature, Input, PciAddress, Video,
};
use super::xml_tree::{self, Element};
use super::{DomainType, VirtError, VmIdentity, VmSpec, MAX_MEMORY_MIB};

/// QEMU binaries a saved domain may name (libvirt's default for x86_64 on Debian/Ubuntu,
/// Fedora and RHEL). The value is checked, not used: this host's libvirt picks its own.
const EMULATORS: &[&str] = &[
    "/usr/bin/qemu-system-x86_64",
    "/usr/libexec/qemu-kvm",
    "/usr/bin/qemu-kvm",
];

/// What the daemon decides about a VM it builds from a base for a session: everything of
/// its definition that names this host or this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// Domain name, `cloudlet-<session id>`.
    pub name: String,
    /// Domain UUID (a fresh one per session).
    pub uuid: String,
    /// This daemon's domain type.
    pub domain_type: DomainType,
    /// The disk the session created (virtio `vda`).
    pub disk: PathBuf,
    /// Its format: `raw` or `qcow2`.
    pub disk_format: String,
    /// Discard mode of the disk; `None` keeps the saved one (a VM that boots gets
    /// [`render`](super::domain_xml::render)'s `unmap`).
    pub discard: Option<Discard>,
    /// The session's console socket (serial `ttyS0`).
    pub console_socket: PathBuf,
    /// The base's kernel, when it has one (needed when the foreign VM booted a kernel).
    pub kernel: Option<PathBuf>,
    /// The base's initramfs, when it has one.
    pub initrd: Option<PathBuf>,
    /// The user the VM's QEMU runs as; `None`: libvirt's global one.
    pub identity: Option<VmIdentity>,
}

/// A disk's discard mode: whether guest TRIM reaches the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// TRIM punches holes (zero clusters in a qcow2).
    Unmap,
    /// TRIM is ignored.
    Ignore,
}

impl Discard {
    fn as_str(self) -> &'static str {
        match self {
            Discard::Unmap => "unmap",
            Discard::Ignore => "ignore",
        }
    }
}

/// The values a saved domain XML lends to the definition the daemon renders for it. Each
/// is validated; anything the type cannot hold is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDomain {
    memory_kib: u64,
    current_memory_kib: u64,
    vcpus: u32,
    resource_partition: bool,
    machine: String,
    kernel: bool,
    initrd: bool,
    cmdline: Option<String>,
    boot_hd: bool,
    features: Vec<Feature>,
    cpu: Option<Cpu>,
    disk_discard: Option<Discard>,
    disk_address: PciAddress,
    controllers: Vec<Controller>,
    mac: [u8; 6],
    nic_address: PciAddress,
    inputs: Vec<Input>,
    vnc: bool,
    audio: bool,
    video: Option<Video>,
    balloon: Option<Balloon>,
}

/// Renders the definition of a VM that resumes from a save file whose domain XML is
/// `saved_xml` and whose save cookie is `cookie`: built from `spec` and the
/// [`SavedDomain`] values of `saved_xml`, and refused ([`VirtError::Refused`]) when
/// `saved_xml` differs from it anywhere outside the accepted set (see the module docs).
///
/// The cookie (`<cookie><cpu>...</cpu></cookie>`, which libvirt stores after the domain
/// XML: the CPU QEMU ran with, which a restore starts QEMU with again) reaches libvirt with
/// the save file too: it must be exactly the daemon's rendering of a typed CPU model.
pub fn resume_xml(
    saved_xml: &str,
    cookie: Option<&[u8]>,
    spec: &SessionSpec,
) -> Result<String, VirtError> {
    check_cookie(cookie)?;
    let mut found = xml_tree::parse(saved_xml)?;
    let saved = SavedDomain::read(&found)?;
    let xml = saved.render(spec)?;
    let mut expected = xml_tree::parse(&xml)?;
    accept(&mut found);
    accept(&mut expected);
    match xml_tree::first_difference(&found, &expected) {
        None => Ok(xml),
        Some(difference) => Err(VirtError::Refused(format!(
            "differs from the domain the daemon builds {difference}"
        ))),
    }
}

/// Refuses a save cookie that is not `<cookie>` with at most one typed `<cpu>`.
fn check_cookie(cookie: Option<&[u8]>) -> Result<(), VirtError> {
    let Some(bytes) = cookie else { return Ok(()) };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| VirtError::Xml("the save cookie is not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Ok(());
    }
    let found = xml_tree::parse(text)?;
    if found.name != "cookie" {
        return refuse(format!("a save cookie <{}>", found.name));
    }
    let mut rendered = String::from("<cookie>\n");
    if let Some(c) = found.one("cpu")?.map(cpu).transpose()? {
        c.render(&mut rendered, "  ");
    }
    rendered.push_str("</cookie>\n");
    match xml_tree::first_difference(&found, &xml_tree::parse(&rendered)?) {
        None => Ok(()),
        Some(difference) => Err(VirtError::Refused(format!(
            "the save cookie differs from the one the daemon builds {difference}"
        ))),
    }
}

/// Blanks the accepted values (replaced by the daemon's) and removes the accepted
/// elements (checked by [`SavedDomain::read`]) so that the comparison skips them.
fn accept(domain: &mut Element) {
    domain.attrs.remove("type");
    // The daemon's own seclabel (a VM confined to an unprivileged uid, see
    // `VmIdentity`): its ids name this host's VM users, and the daemon writes its own
    // (or none). A seclabel of any other form, or naming root, stays and is refused.
    domain.children.retain(|c| !is_daemon_seclabel(c));
    for child in &mut domain.children {
        match child.name.as_str() {
            "name" | "uuid" => child.text.clear(),
            "os" => {
                for boot_file in &mut child.children {
                    if matches!(boot_file.name.as_str(), "kernel" | "initrd") {
                        boot_file.text.clear();
                    }
                }
            }
            "devices" => {
                child.children.retain(|d| d.name != "emulator");
                for disk in child.all_mut("disk") {
                    disk.children.retain(|d| d.name != "backingStore");
                    for part in &mut disk.children {
                        match part.name.as_str() {
                            "driver" => {
                                part.attrs.remove("type");
                                part.attrs.remove("discard");
                            }
                            "source" => {
                                part.attrs.remove("file");
                            }
                            _ => {}
                        }
                    }
                }
                for chardev in &mut child.children {
                    if matches!(chardev.name.as_str(), "serial" | "console") {
                        for source in chardev.all_mut("source") {
                            source.attrs.remove("path");
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether `element` is `<seclabel type='static' model='dac' relabel='no'>` with only a
/// `<label>+UID:+GID</label>` naming ids other than root's: the form
/// [`VmIdentity::seclabel`] writes.
fn is_daemon_seclabel(element: &Element) -> bool {
    let attrs_ok = element.name == "seclabel"
        && element.attrs.len() == 3
        && element.attr("type") == Some("static")
        && element.attr("model") == Some("dac")
        && element.attr("relabel") == Some("no")
        && element.text.trim().is_empty();
    let [label] = element.children.as_slice() else {
        return false;
    };
    let ids = label
        .text
        .split_once(':')
        .and_then(|(u, g)| Some((id(u)?, id(g)?)));
    attrs_ok
        && label.name == "label"
        && label.attrs.is_empty()
        && label.children.is_empty()
        && matches!(ids, Some((u, g)) if u != 0 && g != 0)
}

/// A `+N` DAC id (libvirt's numeric form; a name would be looked up on this host).
fn id(text: &str) -> Option<u32> {
    let digits = text.strip_prefix('+')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl SavedDomain {
    /// Takes the typed values of a saved domain; refuses values out of their range and
    /// devices the daemon does not build. What is not read here is compared by
    /// [`resume_xml`].
    fn read(domain: &Element) -> Result<Self, VirtError> {
        if domain.name != "domain" {
            return refuse(format!("the root element is <{}>", domain.name));
        }
        match domain.attr("type") {
            Some("kvm" | "qemu") => {}
            other => return refuse(format!("domain type {other:?}")),
        }
        let memory_kib = kib(domain.required("memory")?)?;
        let current_memory_kib = match domain.one("currentMemory")? {
            Some(m) => kib(m)?,
            None => memory_kib,
        };
        if current_memory_kib > memory_kib {
            return refuse("currentMemory above memory");
        }
        let vcpus = vcpus(&domain.required("vcpu")?.text)?;
        let os = domain.required("os")?;
        let machine = machine(os.required("type")?.attr("machine"))?;
        let cmdline = os.one("cmdline")?.map(|c| cmdline(&c.text)).transpose()?;
        let features = match domain.one("features")? {
            Some(f) => f.children.iter().map(feature).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let cpu = domain.one("cpu")?.map(cpu).transpose()?;

        let devices = domain.required("devices")?;
        if let Some(emulator) = devices.one("emulator")? {
            if !EMULATORS.contains(&emulator.text.as_str()) {
                return refuse(format!("the emulator {}", emulator.text));
            }
        }
        let disk = only(devices, "disk")?;
        for backing in disk.all("backingStore") {
            if !backing.attrs.is_empty() || !backing.children.is_empty() {
                return refuse("a disk with a backing store of its own");
            }
        }
        let disk_discard = match disk.required("driver")?.attr("discard") {
            None => None,
            Some("unmap") => Some(Discard::Unmap),
            Some("ignore") => Some(Discard::Ignore),
            Some(other) => return refuse(format!("discard mode {other}")),
        };
        let disk_address = pci(disk)?;
        let controllers = devices
            .all("controller")
            .map(controller)
            .collect::<Result<_, _>>()?;
        let nic = only(devices, "interface")?;
        let mac = mac(nic.required("mac")?.attr("address"))?;
        let nic_address = pci(nic)?;
        let inputs = devices.all("input").map(input).collect::<Result<_, _>>()?;
        let video = devices.one("video")?.map(video).transpose()?;
        let balloon = balloon(devices.required("memballoon")?)?;
        Ok(Self {
            memory_kib,
            current_memory_kib,
            vcpus,
            resource_partition: domain.one("resource")?.is_some(),
            machine,
            kernel: os.one("kernel")?.is_some(),
            initrd: os.one("initrd")?.is_some(),
            cmdline,
            boot_hd: os.one("boot")?.is_some(),
            features,
            cpu,
            disk_discard,
            disk_address,
            controllers,
            mac,
            nic_address,
            inputs,
            vnc: devices.one("graphics")?.is_some(),
            audio: devices.one("audio")?.is_some(),
            video,
            balloon,
        })
    }

    /// The resume definition: `spec` for what names this host, `self` for the machine.
    /// Written in libvirt's own element order, so that it compares with the saved XML.
    fn render(&self, spec: &SessionSpec) -> Result<String, VirtError> {
        let kernel = match (self.kernel, &spec.kernel) {
            (false, _) => None,
            (true, Some(k)) => Some(path(k)?),
            (true, None) => return refuse("a kernel boot, and the base has no kernel"),
        };
        let initrd = match (self.initrd, &spec.initrd) {
            (false, _) => None,
            (true, Some(i)) => Some(path(i)?),
            (true, None) => return refuse("an initramfs, and the base has none"),
        };
        let disk = path(&spec.disk)?;
        let socket = path(&spec.console_socket)?;
        let kind = match spec.domain_type {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        };
        let mut x = String::with_capacity(4096);
        // `write!` into a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(x, "<domain type='{kind}'>");
        let _ = writeln!(x, "  <name>{}</name>", escape(&spec.name));
        let _ = writeln!(x, "  <uuid>{}</uuid>", escape(&spec.uuid));
        let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", self.memory_kib);
        let _ = writeln!(
            x,
            "  <currentMemory unit='KiB'>{}</currentMemory>",
            self.current_memory_kib
        );
        let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", self.vcpus);
        if self.resource_partition {
            x.push_str("  <resource>\n    <partition>/machine</partition>\n  </resource>\n");
        }
        let _ = writeln!(
            x,
            "  <os>\n    <type arch='x86_64' machine='{}'>hvm</type>",
            escape(&self.machine)
        );
        if let Some(k) = &kernel {
            let _ = writeln!(x, "    <kernel>{}</kernel>", escape(k));
        }
        if let Some(i) = &initrd {
            let _ = writeln!(x, "    <initrd>{}</initrd>", escape(i));
        }
        if let Some(c) = &self.cmdline {
            let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(c));
        }
        if self.boot_hd {
            x.push_str("    <boot dev='hd'/>\n");
        }
        x.push_str("  </os>\n");
        if !self.features.is_empty() {
            x.push_str("  <features>\n");
            for f in &self.features {
                let _ = writeln!(x, "    <{}/>", f.name());
            }
            x.push_str("  </features>\n");
        }
        if let Some(cpu) = &self.cpu {
            cpu.render(&mut x, "  ");
        }
        x.push_str(concat!(
            "  <clock offset='utc'/>\n",
            "  <on_poweroff>destroy</on_poweroff>\n",
            "  <on_reboot>destroy</on_reboot>\n",
            "  <on_crash>destroy</on_crash>\n",
            "  <devices>\n",
            "    <disk type='file' device='disk'>\n",
        ));
        // No <backingStore/>: see domain_xml::render for why.
        let discard = match spec.discard.or(self.disk_discard) {
            Some(d) => format!(" discard='{}'", d.as_str()),
            None => String::new(),
        };
        let _ = write!(
            x,
            concat!(
                "      <driver name='qemu' type='{format}'{discard}/>\n",
                "      <source file='{disk}'/>\n",
                "      <target dev='vda' bus='virtio'/>\n",
                "{address}",
                "    </disk>\n",
            ),
            format = escape(&spec.disk_format),
            discard = discard,
            disk = escape(disk),
            address = self.disk_address.render(),
        );
        for c in &self.controllers {
            x.push_str(c.xml());
        }
        let m = self.mac;
        let _ = write!(
            x,
            concat!(
                "    <interface type='user'>\n",
                "      <mac address='{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}'/>\n",
                "      <model type='virtio'/>\n",
                "{}",
                "    </interface>\n",
            ),
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            self.nic_address.render(),
        );
        let _ = write!(
            x,
            concat!(
                "    <serial type='unix'>\n",
                "      <source mode='bind' path='{sock}'/>\n",
                "      <target type='isa-serial' port='0'>\n",
                "        <model name='isa-serial'/>\n",
                "      </target>\n",
                "    </serial>\n",
                "    <console type='unix'>\n",
                "      <source mode='bind' path='{sock}'/>\n",
                "      <target type='serial' port='0'/>\n",
                "    </console>\n",
            ),
            sock = escape(socket),
        );
        for input in &self.inputs {
            let _ = writeln!(x, "    <input type='{}' bus='ps2'/>", input.kind());
        }
        if self.vnc {
            x.push_str(concat!(
                "    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>\n",
                "      <listen type='address' address='127.0.0.1'/>\n",
                "    </graphics>\n",
            ));
        }
        if self.audio {
            x.push_str("    <audio id='1' type='none'/>\n");
        }
        if let Some(v) = &self.video {
            v.render(&mut x);
        }
        Balloon::render(self.balloon.as_ref(), &mut x);
        x.push_str("  </devices>\n");
        if let Some(identity) = spec.identity {
            x.push_str(&identity.seclabel());
        }
        x.push_str("</domain>\n");
        Ok(x)
    }
}

/// What a domain XML lends to a VM that boots (a disk-only synthesis): the rest of its
/// definition is the daemon's, rendered by [`render`](super::domain_xml::render).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootValues {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Whether the VM boots a kernel directly (the base's copy).
    pub kernel: bool,
    /// Whether it has an initramfs (the base's copy).
    pub initrd: bool,
    /// The kernel command line.
    pub cmdline: Option<String>,
    /// Whether it has a VNC display.
    pub vnc: bool,
}

/// Renders the definition of a VM that boots (a disk-only synthesis) from `spec` and the
/// [`BootValues`] of `xml`, the base's domain XML.
pub fn boot_xml(xml: &str, spec: &SessionSpec) -> Result<String, VirtError> {
    let values = boot_values(xml)?;
    let kernel = match (values.kernel, &spec.kernel) {
        (false, _) => None,
        (true, Some(k)) => Some(k.clone()),
        (true, None) => return refuse("a kernel boot, and the base has no kernel"),
    };
    let initrd = match (values.initrd, &spec.initrd) {
        (false, _) => None,
        (true, Some(i)) => Some(i.clone()),
        (true, None) => return refuse("an initramfs, and the base has none"),
    };
    for p in [&spec.disk, &spec.console_socket] {
        path(p)?;
    }
    Ok(super::domain_xml::render(&VmSpec {
        name: spec.name.clone(),
        uuid: Some(spec.uuid.clone()),
        domain_type: spec.domain_type,
        memory_mib: values.memory_mib,
        vcpus: values.vcpus,
        kernel,
        initrd,
        cmdline: values.cmdline,
        disk: spec.disk.clone(),
        disk_format: spec.disk_format.clone(),
        console_socket: spec.console_socket.clone(),
        vnc: values.vnc,
        identity: spec.identity,
    }))
}

/// Reads the [`BootValues`] of a domain XML (the daemon's rendering of a base, or a saved
/// domain). Nothing else of it is used.
pub fn boot_values(xml: &str) -> Result<BootValues, VirtError> {
    let domain = xml_tree::parse(xml)?;
    if domain.name != "domain" {
        return refuse(format!("the root element is <{}>", domain.name));
    }
    let memory = domain.required("memory")?;
    let memory_mib = match memory.attr("unit") {
        Some("MiB") => number(&memory.text, "memory")?,
        _ => kib(memory)? / 1024,
    };
    if !(16..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return refuse(format!("{memory_mib} MiB of memory"));
    }
    let os = domain.required("os")?;
    let devices = domain.required("devices")?;
    let vnc = match devices.one("graphics")? {
        None => false,
        Some(g) if g.attr("type") == Some("vnc") => true,
        Some(g) => return refuse(format!("a {:?} display", g.attr("type"))),
    };
    Ok(BootValues {
        memory_mib,
        vcpus: vcpus(&domain.required("vcpu")?.text)?,
        kernel: os.one("kernel")?.is_some(),
        initrd: os.one("initrd")?.is_some(),
        cmdline: os.one("cmdline")?.map(|c| cmdline(&c.text)).transpose()?,
        vnc,
    })
}

fn path(p: &Path) -> Result<&str, VirtError> {
    p.to_str()
        .ok_or_else(|| VirtError::InvalidArgument(format!("path {} is not UTF-8", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virt::domain_xml;

    /// A base of the daemon, saved by libvirt 9.0 / QEMU 7.2 (`virsh save-image-dumpxml`
    /// of a VM booted from `domain_xml::render`).
    const BASE: &str = include_str!("testdata/saved-base.xml");
    /// An older fixture's saved XML: no VNC, no balloon, no `<features>`.
    const FIXTURE: &str = include_str!("testdata/saved-fixture.xml");
    const BASE_DIR: &str = "/var/lib/cloudlet/bases/0192";
    const SESSION_DIR: &str = "/var/lib/cloudlet/sessions/77";

    fn spec() -> SessionSpec {
        SessionSpec {
            name: "cloudlet-77".into(),
            uuid: "11111111-2222-3333-4444-555555555555".into(),
            domain_type: DomainType::Qemu,
            disk: format!("{SESSION_DIR}/disk.qcow2").into(),
            disk_format: "qcow2".into(),
            discard: None,
            console_socket: format!("{SESSION_DIR}/console.sock").into(),
            kernel: Some(format!("{BASE_DIR}/vmlinuz").into()),
            initrd: Some(format!("{BASE_DIR}/initrd.img").into()),
            identity: None,
        }
    }

    #[test]
    fn a_saved_base_resumes_as_the_daemon_builds_it() {
        let xml = resume_xml(BASE, None, &spec()).unwrap();
        assert_eq!(xml, include_str!("testdata/resume-base.xml"));
    }

    /// Every absolute path of a domain XML (attributes and text): the files it opens.
    fn paths(xml: &str) -> Vec<String> {
        let mut out = Vec::new();
        for piece in xml.split(['\'', '"', '<', '>']) {
            // A path has two components at least; "/name" is a closing tag.
            if piece.starts_with('/') && piece[1..].contains('/') {
                out.push(piece.to_string());
            }
        }
        out
    }

    #[test]
    fn only_the_daemons_files_reach_the_definition() {
        let xml = resume_xml(BASE, None, &spec()).unwrap();
        for p in paths(&xml) {
            assert!(
                p.starts_with(SESSION_DIR) || p.starts_with(BASE_DIR),
                "{p} in\n{xml}"
            );
        }
        // The base's own paths are replaced, even when they pointed elsewhere.
        let elsewhere = BASE
            .replace(BASE_DIR, "/etc")
            .replace("<name>cloudlet-0192", "<name>evil");
        let xml = resume_xml(&elsewhere, None, &spec()).unwrap();
        assert!(!xml.contains("/etc") && !xml.contains("evil"), "{xml}");
        assert_eq!(xml, include_str!("testdata/resume-base.xml"));
    }

    #[test]
    fn the_saved_machine_is_kept() {
        let xml = resume_xml(BASE, None, &spec()).unwrap();
        for kept in [
            "machine='pc-i440fx-7.2'",
            "<mac address='52:54:00:12:68:9c'/>",
            "slot='0x02'",
            "slot='0x03'",
            "slot='0x04'",
            "slot='0x05'",
            "<model type='cirrus' vram='16384' heads='1' primary='yes'/>",
            "<memballoon model='virtio' freePageReporting='on'>",
            "<memory unit='KiB'>98304</memory>",
            "<model fallback='forbid'>qemu64</model>",
        ] {
            assert!(xml.contains(kept), "{kept}");
        }
        // An older save (no VNC, no balloon, no <features>) keeps its own devices.
        let old = resume_xml(FIXTURE, None, &spec()).unwrap();
        assert!(old.contains("<memballoon model='none'/>"), "{old}");
        assert!(
            !old.contains("<graphics") && !old.contains("<features>"),
            "{old}"
        );
        assert!(!old.contains("discard="), "{old}");
    }

    #[test]
    fn the_daemon_decides_name_type_disk_discard_and_boot_files() {
        let own = SessionSpec {
            domain_type: DomainType::Kvm,
            disk_format: "raw".into(),
            discard: Some(Discard::Ignore),
            ..spec()
        };
        let xml = resume_xml(BASE, None, &own).unwrap();
        assert!(xml.starts_with("<domain type='kvm'>\n  <name>cloudlet-77</name>\n"));
        assert!(xml.contains("<driver name='qemu' type='raw' discard='ignore'/>"));
        // An overlay session's save: qcow2, no backingStore, discard as the session had it.
        let session = BASE
            .replace(
                "type='raw' discard='unmap'",
                "type='qcow2' discard='ignore'",
            )
            .replace("      <backingStore/>\n", "");
        let xml = resume_xml(&session, None, &spec()).unwrap();
        assert!(xml.contains("<driver name='qemu' type='qcow2' discard='ignore'/>"));
        // A saved kernel boot needs the base's own kernel.
        let none = SessionSpec {
            kernel: None,
            ..spec()
        };
        let err = resume_xml(BASE, None, &none).unwrap_err();
        assert!(err.to_string().contains("no kernel"), "{err}");
    }

    #[test]
    fn the_daemons_own_seclabel_is_replaced_and_no_other_is_taken() {
        let confined = SessionSpec {
            identity: Some(VmIdentity {
                uid: 64007,
                gid: 64000,
            }),
            ..spec()
        };
        let label = |uid: u32| VmIdentity { uid, gid: 64000 }.seclabel();
        // A save made before confinement (no seclabel) resumes confined.
        let xml = resume_xml(BASE, None, &confined).unwrap();
        assert!(xml.ends_with(&format!("  </devices>\n{}</domain>\n", label(64007))));
        // A save of a confined VM (libvirt keeps the seclabel) resumes with this VM's ids,
        // confined or not.
        let saved = BASE.replacen("</devices>\n", &format!("</devices>\n{}", label(64003)), 1);
        let xml = resume_xml(&saved, None, &confined).unwrap();
        assert!(
            xml.contains("+64007:+64000") && !xml.contains("+64003"),
            "{xml}"
        );
        let xml = resume_xml(&saved, None, &spec()).unwrap();
        assert!(!xml.contains("seclabel"), "{xml}");
        // Any other seclabel is refused.
        for other in [
            label(64003).replace("relabel='no'", "relabel='yes'"),
            label(64003).replace("type='static'", "type='dynamic'"),
            label(64003).replace("model='dac'", "model='selinux'"),
            label(64003).replace("+64003:+64000", "+0:+64000"),
            label(64003).replace("+64003:+64000", "+64003:+0"),
            label(64003).replace("+64003:+64000", "qemu:qemu"),
            label(64003).replace("+64003:+64000", "+:+64000"),
            label(64003).replace("</label>", "</label><imagelabel>+0:+0</imagelabel>"),
            label(64003).replace("relabel='no'", "relabel='no' extra='1'"),
        ] {
            let hostile = BASE.replacen("</devices>\n", &format!("</devices>\n{other}"), 1);
            let err = resume_xml(&hostile, None, &confined).unwrap_err();
            assert!(err.to_string().contains("seclabel"), "{other}: {err}");
        }
    }

    /// The cookie of the same save (libvirt writes the CPU QEMU ran with).
    const COOKIE: &str = "<cookie>\n  <cpu mode='custom' match='exact' check='full'>\n    \
        <model fallback='forbid'>qemu64</model>\n    \
        <feature policy='require' name='hypervisor'/>\n    \
        <feature policy='require' name='lahf_lm'/>\n  </cpu>\n</cookie>\n";

    #[test]
    fn the_save_cookie_must_be_a_typed_cpu_model() {
        resume_xml(BASE, Some(COOKIE.as_bytes()), &spec()).unwrap();
        resume_xml(BASE, Some(b"<cookie/>"), &spec()).unwrap();
        resume_xml(BASE, Some(b""), &spec()).unwrap();
        // The cookie was never looked at before: each of these reached libvirt.
        let cases: &[(&str, &str, &str)] = &[
            (
                "check='full'>",
                "check='full'><topology sockets='1'/>",
                "<topology>",
            ),
            (
                "<cpu mode='custom' match='exact' check='full'>",
                "<cpu mode='host-passthrough' check='none'>",
                "mode",
            ),
            ("</cookie>", "<slirpHelper/></cookie>", "<slirpHelper>"),
            ("name='hypervisor'", "name='hypervisor' extra='1'", "extra"),
            ("qemu64", "<![CDATA[qemu64]]>", "CDATA"),
            ("<cookie>", "<cooky>", "<cooky>"),
        ];
        for (from, to, want) in cases {
            assert!(COOKIE.contains(from), "{from}");
            let cookie = COOKIE.replacen(from, to, 1);
            let cookie = if to == &"<cooky>" {
                cookie.replace("</cookie>", "</cooky>")
            } else {
                cookie
            };
            let err = resume_xml(BASE, Some(cookie.as_bytes()), &spec()).unwrap_err();
            assert!(err.is_invalid_input(), "{to}: {err:?}");
            assert!(err.to_string().contains(want), "{to}: {err}");
        }
        assert!(resume_xml(BASE, Some(b"\xff"), &spec()).is_err());
    }

    #[test]
    fn a_kvm_cpu_model_with_features_is_a_typed_value() {
        let kvm = BASE.replace(
            "check='none'>\n    <model fallback='forbid'>qemu64</model>\n",
            "check='full'>\n    <model fallback='forbid'>qemu64</model>\n    \
             <feature policy='require' name='x2apic'/>\n    \
             <feature policy='disable' name='svm'/>\n",
        );
        assert_ne!(kvm, BASE);
        let xml = resume_xml(&kvm, None, &spec()).unwrap();
        assert!(
            xml.contains("<feature policy='disable' name='svm'/>"),
            "{xml}"
        );
    }

    /// Constructs the deny-list scanner that this module replaced (`confine::check_confined`)
    /// let through (each checked against it before it was removed): each is refused now.
    /// `(saved text, replacement)`, applied once to [`BASE`].
    const ONCE_ACCEPTED: &[(&str, &str)] = &[
        // A kernel, initramfs or emulator hidden in CDATA (the scanner read text events).
        (
            "<kernel>/var/lib/cloudlet/bases/0192/vmlinuz</kernel>",
            "<kernel><![CDATA[/etc/shadow]]></kernel>",
        ),
        (
            "<initrd>/var/lib/cloudlet/bases/0192/initrd.img</initrd>",
            "<initrd><![CDATA[/etc/shadow]]></initrd>",
        ),
        (
            "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
            "<emulator><![CDATA[/tmp/evil]]></emulator>",
        ),
        // ... or in an entity the DOCTYPE defines.
        (
            "<kernel>/var/lib/cloudlet/bases/0192/vmlinuz</kernel>",
            "<kernel>&k;</kernel>",
        ),
        // Host files through attributes the scanner did not read.
        (
            "<audio id='1' type='none'/>",
            "<audio id='1' type='file' path='/tmp/cloudlet-audio.wav'/>",
        ),
        (
            "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>",
            "<graphics type='vnc' socket='/run/evil.sock'>",
        ),
        (
            "<model type='cirrus' vram='16384' heads='1' primary='yes'/>",
            "<model type='virtio' heads='1' primary='yes'>\
             <acceleration accel3d='yes' rendernode='/dev/dri/renderD128'/></model>",
        ),
        // Security labels: QEMU as root, or unconfined.
        (
            "</devices>",
            "</devices>\n  <seclabel type='static' model='dac' relabel='no'>\
             <label>+0:+0</label></seclabel>",
        ),
        ("</devices>", "</devices>\n  <seclabel type='none'/>"),
        // Anything under <features> or <cpu>.
        (
            "<apic/>",
            "<apic/>\n    <smm state='on'/>\n    <kvm><hidden state='on'/></kvm>",
        ),
        (
            "<cpu mode='custom' match='exact' check='none'>",
            "<cpu mode='host-passthrough' check='none' migratable='on'>",
        ),
        (
            "<model fallback='forbid'>qemu64</model>",
            "<model fallback='forbid'>qemu64</model>\
             <numa><cell id='0' cpus='0' memory='98304' unit='KiB' memAccess='shared'/></numa>",
        ),
        // Options smuggled into QEMU's -machine argument.
        (
            "machine='pc-i440fx-7.2'",
            "machine='pc-i440fx-7.2,dump-guest-core=on'",
        ),
        // Unknown elements where the scanner looked away, devices it allowed.
        (
            "<on_crash>destroy</on_crash>",
            "<on_crash>destroy</on_crash>\n  <metadata><x/></metadata>",
        ),
        (
            "<memballoon model='virtio'",
            "<disk type='file' device='cdrom'><source file='/var/lib/cloudlet/bases/0192/x.iso'/>\
             <target dev='hdc'/></disk>\n    <memballoon model='virtio'",
        ),
        (
            "<memballoon model='virtio'",
            "<channel type='unix'><source mode='bind' path='/var/lib/cloudlet/bases/0192/ga'/>\
             <target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n    \
             <memballoon model='virtio'",
        ),
        (
            "<memballoon model='virtio'",
            "<sound model='ich6'/>\n    <memballoon model='virtio'",
        ),
        (
            "<memballoon model='virtio'",
            "<serial type='pty'><target port='1'/></serial>\n    <memballoon model='virtio'",
        ),
        (
            "<memballoon model='virtio' freePageReporting='on'>",
            "<memballoon model='virtio' freePageReporting='on'><stats period='1'/>",
        ),
    ];

    fn hostile(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from}");
        let xml = BASE.replacen(from, to, 1);
        if to.contains("&k;") {
            format!("<!DOCTYPE domain [<!ENTITY k '/etc/shadow'>]>\n{xml}")
        } else {
            xml
        }
    }

    #[test]
    fn constructs_the_old_scanner_let_through_are_refused() {
        for (from, to) in ONCE_ACCEPTED {
            let err = resume_xml(&hostile(from, to), None, &spec()).unwrap_err();
            assert!(err.is_invalid_input(), "{to}: {err:?}");
            assert!(
                matches!(err, VirtError::Refused(_)),
                "{to}: refused as {err:?}"
            );
        }
    }

    #[test]
    fn other_foreign_constructs_are_refused() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
                "<emulator>/tmp/evil</emulator>",
                "emulator /tmp/evil",
            ),
            (
                "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
                "<emulator>/usr/bin/qemu-system-x86_64/../../../tmp/evil</emulator>",
                "emulator",
            ),
            (
                "<backingStore/>",
                "<backingStore type='file'><format type='raw'/>\
              <source file='/etc/shadow'/><backingStore/></backingStore>",
                "backing store",
            ),
            (
                "<memballoon model='virtio'",
                "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0' \
                 slot='0' function='0'/></source></hostdev>\n    <memballoon model='virtio'",
                "<hostdev>",
            ),
            (
                "<memballoon model='virtio'",
                "<filesystem type='mount'><source dir='/'/><target dir='r'/></filesystem>\n    \
                 <memballoon model='virtio'",
                "<filesystem>",
            ),
            (
                "<memballoon model='virtio'",
                "<qemu:commandline><qemu:arg value='-x'/></qemu:commandline>\n    \
                 <memballoon model='virtio'",
                "namespaced",
            ),
            (
                "<interface type='user'>",
                "<interface type='bridge'>",
                "type='bridge'",
            ),
            (
                "<source file='/var/lib/cloudlet/bases/0192/disk.raw'/>",
                "<source file='/var/lib/cloudlet/bases/0192/disk.raw'/>\
                 <source file='/etc/shadow'/>",
                "<source> where <target> belongs",
            ),
            (
                "<disk type='file' device='disk'>",
                "<disk type='block' device='disk'>",
                "type='block'",
            ),
            (
                "<serial type='unix'>",
                "<serial type='file'>",
                "type='file'",
            ),
            (
                "<input type='mouse' bus='ps2'/>",
                "<input type='passthrough' bus='virtio'>\
                 <source evdev='/dev/input/event0'/></input>",
                "passthrough",
            ),
            ("listen='127.0.0.1'>", "listen='0.0.0.0'>", "0.0.0.0"),
            ("slot='0x04'", "slot='0x40'", "slot"),
            (
                "bus='0x00' slot='0x03'",
                "bus='0x01' slot='0x03'",
                "PCI bus",
            ),
            ("52:54:00:12:68:9c", "52:54:00:12:68", "MAC"),
            (
                "<vcpu placement='static'>1</vcpu>",
                "<vcpu placement='static'>999</vcpu>",
                "vCPUs",
            ),
            (
                "<memory unit='KiB'>98304</memory>",
                "<memory unit='KiB'>1</memory>",
                "KiB of memory",
            ),
            (
                "<cpu mode='custom' match='exact' check='none'>",
                "<cpu mode='custom' match='exact' check='none'>\
                 <topology sockets='1' dies='1' cores='1' threads='1'/>",
                "<topology>",
            ),
            (
                "<partition>/machine</partition>",
                "<partition>/machine/../evil</partition>",
                "/machine/../evil",
            ),
            (
                "<boot dev='hd'/>",
                "<boot dev='hd'/><loader>/etc/shadow</loader>",
                "<loader>",
            ),
            ("<os>", "<os firmware='efi'>", "firmware"),
            (
                "<on_crash>destroy</on_crash>",
                "<on_crash>coredump-restart</on_crash>",
                "coredump",
            ),
            ("<domain type='qemu'>", "<domain type='xen'>", "domain type"),
            (
                "<memory unit='KiB'>98304</memory>",
                "<memory unit='KiB'>98304</memory>\n  <memoryBacking><source type='memfd'/>\
                 <access mode='shared'/></memoryBacking>",
                "<memoryBacking>",
            ),
        ];
        for (from, to, want) in cases {
            let err = resume_xml(&hostile(from, to), None, &spec()).unwrap_err();
            assert!(err.is_invalid_input(), "{to}: {err:?}");
            assert!(err.to_string().contains(want), "{to}: {err}");
        }
    }

    #[test]
    fn boots_build_everything_but_memory_cpus_and_command_line() {
        let base = domain_xml::render(&VmSpec {
            name: "cloudlet-0192".into(),
            uuid: None,
            domain_type: DomainType::Qemu,
            memory_mib: 96,
            vcpus: 2,
            kernel: Some(format!("{BASE_DIR}/vmlinuz").into()),
            initrd: Some(format!("{BASE_DIR}/initrd.img").into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            disk: format!("{BASE_DIR}/disk.raw").into(),
            disk_format: "raw".into(),
            console_socket: format!("{BASE_DIR}/console.sock").into(),
            vnc: true,
            identity: None,
        });
        let own = spec();
        let want = domain_xml::render(&VmSpec {
            name: own.name.clone(),
            uuid: Some(own.uuid.clone()),
            domain_type: DomainType::Qemu,
            memory_mib: 96,
            vcpus: 2,
            kernel: own.kernel.clone(),
            initrd: own.initrd.clone(),
            cmdline: Some("console=ttyS0 quiet".into()),
            disk: own.disk.clone(),
            disk_format: "qcow2".into(),
            console_socket: own.console_socket.clone(),
            vnc: true,
            identity: None,
        });
        assert_eq!(boot_xml(&base, &own).unwrap(), want);
        // A saved domain lends the same values (memory in KiB); nothing else of it is used.
        let hostile = BASE
            .replacen(
                "<audio id='1' type='none'/>",
                "<audio id='1' type='file' path='/tmp/a'/>",
                1,
            )
            .replacen("</devices>", "<hostdev/></devices>", 1);
        let xml = boot_xml(&hostile, &own).unwrap();
        assert!(xml.contains("<memory unit='MiB'>96</memory>"), "{xml}");
        assert!(!xml.contains("audio") && !xml.contains("hostdev"), "{xml}");
        for p in paths(&xml) {
            assert!(p.starts_with(SESSION_DIR) || p.starts_with(BASE_DIR), "{p}");
        }
        // What the values cannot hold, or the strict reader refuses, is refused.
        for (bad, want) in [
            (
                BASE.replacen(
                    "<vcpu placement='static'>1<",
                    "<vcpu placement='static'>0<",
                    1,
                ),
                "vCPUs",
            ),
            (BASE.replacen("type='vnc'", "type='spice'", 1), "display"),
            (
                BASE.replacen("console=ttyS0", "<![CDATA[console=ttyS0]]>", 1),
                "CDATA",
            ),
        ] {
            let err = boot_xml(&bad, &own).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        let no_kernel = SessionSpec {
            kernel: None,
            ..spec()
        };
        assert!(boot_xml(&base, &no_kernel).is_err());
    }
}
