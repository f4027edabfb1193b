//! The typed values a foreign domain XML may lend (see [`super::foreign`]): each reader
//! takes one from the strict tree and refuses what its type cannot hold; each type renders
//! itself in libvirt's form, so that the rendering compares with the saved XML.

use std::fmt::Write as _;

use super::domain_xml::escape;
use super::xml_tree::Element;
use super::{VirtError, MAX_MEMORY_MIB, MAX_VCPUS};

/// Longest kernel command line taken (Linux's x86 limit is 2048).
const MAX_CMDLINE_BYTES: usize = 4096;

/// A `<features>` flag (others change the machine: `smm`, `kvm`, `hyperv`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Feature {
    Acpi,
    Apic,
    Pae,
}

/// A named CPU model (`mode='custom' match='exact'`) with required/disabled features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cpu {
    check: &'static str,
    fallback: &'static str,
    model: String,
    features: Vec<(&'static str, String)>,
}

/// A controller libvirt adds to the daemon's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Controller {
    UsbNone,
    PciRoot,
}

/// A ps2 input device libvirt adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Input {
    Mouse,
    Keyboard,
}

/// The video device libvirt adds for VNC (no acceleration, no render node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Video {
    model: &'static str,
    vram: Option<u32>,
    heads: u32,
    address: PciAddress,
}

/// A virtio memory balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Balloon {
    free_page_reporting: Option<bool>,
    address: PciAddress,
}

/// A slot on the i440FX root bus (domain 0, bus 0: the only bus the daemon's VMs have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PciAddress {
    slot: u8,
    function: u8,
}

impl Cpu {
    /// Appends `<cpu>` at indentation `indent` (the domain's and the cookie's are alike).
    pub(super) fn render(&self, x: &mut String, indent: &str) {
        let _ = writeln!(
            x,
            "{indent}<cpu mode='custom' match='exact' check='{}'>\n\
             {indent}  <model fallback='{}'>{}</model>",
            self.check,
            self.fallback,
            escape(&self.model)
        );
        for (policy, name) in &self.features {
            let _ = writeln!(
                x,
                "{indent}  <feature policy='{policy}' name='{}'/>",
                escape(name)
            );
        }
        let _ = writeln!(x, "{indent}</cpu>");
    }
}

impl PciAddress {
    pub(super) fn render(self) -> String {
        format!(
            "      <address type='pci' domain='0x0000' bus='0x00' slot='0x{:02x}' \
             function='0x{:x}'/>\n",
            self.slot, self.function
        )
    }
}

impl Feature {
    pub(super) fn name(self) -> &'static str {
        match self {
            Feature::Acpi => "acpi",
            Feature::Apic => "apic",
            Feature::Pae => "pae",
        }
    }
}

impl Controller {
    pub(super) fn xml(self) -> &'static str {
        match self {
            Controller::UsbNone => "    <controller type='usb' index='0' model='none'/>\n",
            Controller::PciRoot => "    <controller type='pci' index='0' model='pci-root'/>\n",
        }
    }
}

impl Input {
    pub(super) fn kind(self) -> &'static str {
        match self {
            Input::Mouse => "mouse",
            Input::Keyboard => "keyboard",
        }
    }
}

impl Video {
    pub(super) fn render(&self, x: &mut String) {
        let vram = self
            .vram
            .map(|n| format!(" vram='{n}'"))
            .unwrap_or_default();
        let _ = write!(
            x,
            concat!(
                "    <video>\n",
                "      <model type='{}'{} heads='{}' primary='yes'/>\n",
                "{}",
                "    </video>\n",
            ),
            self.model,
            vram,
            self.heads,
            self.address.render(),
        );
    }
}

impl Balloon {
    /// Appends the `<memballoon>` (`model='none'` without one).
    pub(super) fn render(balloon: Option<&Balloon>, x: &mut String) {
        let Some(b) = balloon else {
            x.push_str("    <memballoon model='none'/>\n");
            return;
        };
        let reporting = match b.free_page_reporting {
            None => "",
            Some(true) => " freePageReporting='on'",
            Some(false) => " freePageReporting='off'",
        };
        let _ = write!(
            x,
            "    <memballoon model='virtio'{reporting}>\n{}    </memballoon>\n",
            b.address.render()
        );
    }
}

pub(super) fn refuse<T>(what: impl std::fmt::Display) -> Result<T, VirtError> {
    Err(VirtError::Refused(format!("asks for {what}")))
}

pub(super) fn only<'a>(devices: &'a Element, kind: &str) -> Result<&'a Element, VirtError> {
    let mut all = devices.children.iter().filter(|c| c.name == kind);
    match (all.next(), all.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => refuse(format!("no <{kind}>")),
        (Some(_), Some(_)) => refuse(format!("more than one <{kind}>")),
    }
}

pub(super) fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, VirtError> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return refuse(format!("{what} '{t}'"));
    }
    t.parse()
        .or_else(|_| refuse(format!("{what} '{t}' (out of range)")))
}

/// A `<memory>`/`<currentMemory>` in KiB (libvirt's unit in a saved domain).
pub(super) fn kib(el: &Element) -> Result<u64, VirtError> {
    if !matches!(el.attr("unit"), None | Some("KiB")) {
        return refuse(format!("<{}> in unit {:?}", el.name, el.attr("unit")));
    }
    let n: u64 = number(&el.text, &el.name)?;
    if !(16 * 1024..=MAX_MEMORY_MIB * 1024).contains(&n) {
        return refuse(format!("{n} KiB of memory"));
    }
    Ok(n)
}

pub(super) fn vcpus(text: &str) -> Result<u32, VirtError> {
    let n: u32 = number(text, "vcpu")?;
    if !(1..=MAX_VCPUS).contains(&n) {
        return refuse(format!("{n} vCPUs"));
    }
    Ok(n)
}

/// The i440FX machine the daemon asks for (`pc`), as QEMU versions it (`pc-i440fx-7.2`).
pub(super) fn machine(value: Option<&str>) -> Result<String, VirtError> {
    let ok = |v: &str| {
        v == "pc"
            || v.strip_prefix("pc-i440fx-").is_some_and(|rest| {
                !rest.is_empty()
                    && rest.len() <= 16
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
            })
    };
    match value {
        Some(v) if ok(v) => Ok(v.to_string()),
        other => refuse(format!("the machine type {other:?}")),
    }
}

pub(super) fn cmdline(text: &str) -> Result<String, VirtError> {
    if text.len() > MAX_CMDLINE_BYTES || text.chars().any(char::is_control) {
        return refuse("a kernel command line with control characters or over 4096 bytes");
    }
    Ok(text.to_string())
}

pub(super) fn feature(el: &Element) -> Result<Feature, VirtError> {
    match el.name.as_str() {
        "acpi" => Ok(Feature::Acpi),
        "apic" => Ok(Feature::Apic),
        "pae" => Ok(Feature::Pae),
        other => refuse(format!("the feature <{other}>")),
    }
}

/// A CPU model by name: never `host-passthrough`/`host-model` (QEMU aborts with them on
/// nested hosts, and they expose the host), no topology, NUMA or cache settings.
pub(super) fn cpu(el: &Element) -> Result<Cpu, VirtError> {
    if el.attr("mode") != Some("custom") || el.attr("match") != Some("exact") {
        return refuse(format!(
            "a CPU of mode {:?}, match {:?}",
            el.attr("mode"),
            el.attr("match")
        ));
    }
    let check = match el.attr("check") {
        Some("none") => "none",
        Some("partial") => "partial",
        Some("full") => "full",
        other => return refuse(format!("CPU check {other:?}")),
    };
    let model = el.required("model")?;
    let fallback = match model.attr("fallback") {
        Some("forbid") => "forbid",
        Some("allow") => "allow",
        other => return refuse(format!("CPU model fallback {other:?}")),
    };
    let features = el
        .all("feature")
        .map(|f| {
            let policy = match f.attr("policy") {
                Some("require") => "require",
                Some("disable") => "disable",
                other => return refuse(format!("CPU feature policy {other:?}")),
            };
            Ok((policy, token(f.attr("name").unwrap_or(""), "CPU feature")?))
        })
        .collect::<Result<_, _>>()?;
    Ok(Cpu {
        check,
        fallback,
        model: token(&model.text, "CPU model")?,
        features,
    })
}

fn token(value: &str, what: &str) -> Result<String, VirtError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return refuse(format!("the {what} '{value}'"));
    }
    Ok(value.to_string())
}

pub(super) fn video(el: &Element) -> Result<Video, VirtError> {
    let m = el.required("model")?;
    let model = match m.attr("type") {
        Some("cirrus") => "cirrus",
        Some("vga") => "vga",
        Some("virtio") => "virtio",
        Some("bochs") => "bochs",
        other => return refuse(format!("a video model {other:?}")),
    };
    let vram = m
        .attr("vram")
        .map(|v| number::<u32>(v, "video memory"))
        .transpose()?;
    if vram.is_some_and(|v| v > 256 * 1024) {
        return refuse("more than 256 MiB of video memory");
    }
    let heads = number::<u32>(m.attr("heads").unwrap_or("1"), "video heads")?;
    if !(1..=4).contains(&heads) {
        return refuse(format!("{heads} video heads"));
    }
    Ok(Video {
        model,
        vram,
        heads,
        address: pci(el)?,
    })
}

/// The device's `<address type='pci'>` on the root bus.
pub(super) fn pci(device: &Element) -> Result<PciAddress, VirtError> {
    let a = device.required("address")?;
    let hex = |key: &str, max: u8| -> Result<u8, VirtError> {
        let v = a.attr(key).unwrap_or("");
        match v.strip_prefix("0x").map(|h| u8::from_str_radix(h, 16)) {
            Some(Ok(n)) if n <= max => Ok(n),
            _ => refuse(format!("the PCI {key} '{v}' of a <{}>", device.name)),
        }
    };
    if a.attr("type") != Some("pci") || hex("domain", 0)? != 0 || hex("bus", 0)? != 0 {
        return refuse(format!("a <{}> off the root PCI bus", device.name));
    }
    let slot = hex("slot", 0x1f)?;
    if slot == 0 {
        return refuse(format!("a <{}> in PCI slot 0", device.name));
    }
    Ok(PciAddress {
        slot,
        function: hex("function", 7)?,
    })
}

pub(super) fn mac(value: Option<&str>) -> Result<[u8; 6], VirtError> {
    let v = value.unwrap_or("");
    let mut out = [0u8; 6];
    let mut parts = v.split(':');
    for byte in &mut out {
        match parts.next().map(|p| (p.len(), u8::from_str_radix(p, 16))) {
            Some((2, Ok(b))) => *byte = b,
            _ => return refuse(format!("the MAC address '{v}'")),
        }
    }
    if parts.next().is_some() {
        return refuse(format!("the MAC address '{v}'"));
    }
    Ok(out)
}

/// The `<memballoon>`: none, or virtio with its slot.
pub(super) fn balloon(b: &Element) -> Result<Option<Balloon>, VirtError> {
    match b.attr("model") {
        Some("none") => Ok(None),
        Some("virtio") => Ok(Some(Balloon {
            free_page_reporting: match b.attr("freePageReporting") {
                None => None,
                Some("on") => Some(true),
                Some("off") => Some(false),
                Some(other) => return refuse(format!("freePageReporting={other}")),
            },
            address: pci(b)?,
        })),
        other => refuse(format!("a memory balloon of model {other:?}")),
    }
}

/// The controllers libvirt adds to the daemon's VMs: no USB, the PCI root.
pub(super) fn controller(c: &Element) -> Result<Controller, VirtError> {
    match (c.attr("type"), c.attr("model")) {
        (Some("usb"), Some("none")) => Ok(Controller::UsbNone),
        (Some("pci"), Some("pci-root")) => Ok(Controller::PciRoot),
        (kind, model) => refuse(format!("a {kind:?} controller of model {model:?}")),
    }
}

/// A ps2 input device (the bus is compared with the rendering).
pub(super) fn input(i: &Element) -> Result<Input, VirtError> {
    match i.attr("type") {
        Some("mouse") => Ok(Input::Mouse),
        Some("keyboard") => Ok(Input::Keyboard),
        other => refuse(format!("an input device of type {other:?}")),
    }
}
