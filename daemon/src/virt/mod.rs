//! Virtual machines: the only module of the workspace that talks to libvirt.
//!
//! ```text
//! VmSpec ──domain_xml::render──▶ XML ──Hypervisor::start──▶ running VM (boots)
//! SessionSpec + saved XML ──foreign::resume_xml──▶ the daemon's XML (compared with saved)
//!           ──engine: save file with it──▶ Hypervisor::restore ──▶ running VM (resumes)
//! running VM ──ports::forward_port──▶ ports_address:<free port> → guest port (user network)
//!            ──console::Console──▶ the guest shell on its serial Unix socket
//! ```
//!
//! - [`domain_xml`]: pure XML rendering (no libvirt, golden-tested).
//! - [`foreign`]: the domain-definition rule: what the daemon takes from a domain XML that
//!   comes from outside, and the definition it builds for a VM that resumes
//!   (`saved_values`: the typed values and their readers; `xml_tree`: the strict reader
//!   and comparison under them).
//! - [`libvirt`]: [`Hypervisor`], every libvirt call, each on tokio's blocking pool. It is
//!   the only file with `use ::virt` (the crate) and the only `unsafe` of the daemon (the
//!   save call the `virt` crate does not wrap).
//! - [`ports`]: host port forwarding through QEMU's monitor (`hostfwd_add`).
//! - [`console`]: an async client for the guest's serial console.
//!
//! Host pitfalls this module encodes (each measured on the project's machines):
//! the domain type must be configurable (`kvm` hangs nested guests on the project's
//! machines, tests use `qemu` = TCG) and no `host-passthrough`/`host-model` CPU is ever
//! asked for (QEMU aborts on MSR 0x10a); a qcow2 disk must not carry an empty
//! `<backingStore/>` (the guest would read zeros instead of the base); a VM resumed from a
//! save file must keep the saved PCI addresses, MAC and device set (hence
//! [`foreign::resume_xml`] renders them from the saved XML's values and compares); QEMU
//! drops serial output while no client is connected (hence [`Console::wait_for_line`]
//! probes the shell when the marker was missed).

pub mod console;
pub mod domain_xml;
pub mod foreign;
pub mod libvirt;
pub mod ports;
mod saved_values;
mod xml_tree;

use std::path::PathBuf;

pub use crate::config::DomainType;
pub use console::{CommandOutput, Console};
pub use foreign::{boot_xml, resume_xml, Discard, SessionSpec};
pub use libvirt::Hypervisor;
pub use ports::forward_port;

/// Largest guest RAM a VM may have (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most virtual CPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;

/// Errors of VM operations.
#[derive(Debug, thiserror::Error)]
pub enum VirtError {
    /// A libvirt call failed; `message` is libvirt's own.
    #[error("libvirt {op} failed: {message}")]
    Libvirt {
        /// The operation (`start`, `save`, `restore`, ...).
        op: &'static str,
        /// libvirt's error message.
        message: String,
    },
    /// No domain has this name.
    #[error("no domain named {name}")]
    NotFound {
        /// The domain name looked up.
        name: String,
    },
    /// A domain XML could not be parsed or lacks an element that is needed.
    #[error("domain xml: {0}")]
    Xml(String),
    /// A domain XML from outside asks for something the daemon does not build; the text
    /// says what.
    #[error("domain xml refused: {0}")]
    Refused(String),
    /// An argument cannot be handed to libvirt or the guest (NUL byte, non-UTF-8 path,
    /// multi-line command, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The guest console misbehaved (closed, flooded, unparsable reply).
    #[error("console: {0}")]
    Console(String),
    /// QEMU refused to forward a host port.
    #[error("cannot forward a host port to guest port {guest_port}: {message}")]
    PortForward {
        /// The port in the guest.
        guest_port: u16,
        /// What QEMU's monitor answered.
        message: String,
    },
    /// Something did not happen in time; the text says what was awaited.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The guest console did not show what was awaited in time; `detail` says what it
    /// showed last, or that it showed nothing.
    #[error("timed out waiting for {what}: {detail}")]
    ConsoleTimeout {
        /// What was awaited, and for how long.
        what: String,
        /// The console's last (escape-stripped) output, or that there was none.
        detail: String,
    },
    /// QEMU stopped moving a memory stream (stopped, wedged) without dying; the daemon
    /// destroyed the VM rather than wait for ever.
    #[error("QEMU made no progress {what} for {secs} s (setting stream_stall_timeout_s); the VM was destroyed")]
    Stalled {
        /// Which stream: "with the restore stream", "with the save stream".
        what: &'static str,
        /// How long it was given.
        secs: u64,
    },
    /// An I/O error (console socket, local port probe).
    #[error("i/o error")]
    Io(#[source] std::io::Error),
    /// A blocking libvirt task panicked or was cancelled.
    #[error("libvirt worker task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl VirtError {
    /// Whether the error is caused by the caller's input (a bad saved XML, an unusable
    /// argument, an unknown domain) rather than by the host.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::Xml(_) | Self::Refused(_) | Self::InvalidArgument(_) | Self::NotFound { .. }
        )
    }
}

/// What a VM is made of; rendered to domain XML by [`domain_xml::render`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    /// libvirt domain name, always `cloudlet-<session id>` (so that the daemon can find
    /// every VM it started, see [`Hypervisor::list_with_prefix`]).
    pub name: String,
    /// Domain UUID; libvirt generates one when `None`.
    pub uuid: Option<String>,
    /// `kvm` or `qemu` (TCG).
    pub domain_type: DomainType,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Direct kernel boot when `Some`; otherwise the VM boots from its disk.
    pub kernel: Option<PathBuf>,
    /// Initramfs for direct kernel boot.
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct kernel boot.
    pub cmdline: Option<String>,
    /// The disk image (virtio `vda`).
    pub disk: PathBuf,
    /// Disk image format: `raw` or `qcow2`.
    pub disk_format: String,
    /// Unix socket (libvirt binds it) of the serial console `ttyS0`.
    pub console_socket: PathBuf,
    /// A VNC display on 127.0.0.1 with a port libvirt picks.
    pub vnc: bool,
    /// The unprivileged user QEMU runs as (a static DAC seclabel); `None`: libvirt's
    /// global `qemu.conf` user (confinement off or unavailable, see `crate::confine`).
    #[serde(default)]
    pub identity: Option<VmIdentity>,
}

/// The uid and gid one VM's QEMU runs as, rendered as a static DAC seclabel with
/// `relabel='no'`: libvirt starts QEMU under these ids and changes no file's owner (the
/// daemon gives the VM its files itself, see `crate::confine`), whatever `user`,
/// `dynamic_ownership` and `remember_owner` the host's `qemu.conf` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmIdentity {
    /// The VM's own uid (one per running VM).
    pub uid: u32,
    /// The group every VM shares (it may read the base files, nothing else).
    pub gid: u32,
}

impl VmIdentity {
    /// The `<seclabel>` element, indented as a child of `<domain>`, in libvirt's form (a
    /// saved domain XML carries it back exactly so, see [`foreign`]).
    pub fn seclabel(self) -> String {
        format!(
            "  <seclabel type='static' model='dac' relabel='no'>\n    \
             <label>+{}:+{}</label>\n  </seclabel>\n",
            self.uid, self.gid
        )
    }
}
