//! Request bodies and query parameters of the routes, and the small answers that are not
//! resources. Requests refuse unknown fields (a typo must not be ignored silently).

use serde::{Deserialize, Serialize};

/// `POST /api/v1/bases` (`cloudlet base DISK`): boot a disk image so that it can be set
/// up, then save it as a base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateBase {
    /// Unique name of the base (1-64 letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Disk image (raw or qcow2) inside an import directory, or `upload:<id>`; the base
    /// keeps its own copy.
    pub disk: String,
    /// Kernel for direct kernel boot (else the disk boots by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Initramfs for direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line for direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Virtual CPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest TCP ports the application will listen on (forwarded for every session).
    #[serde(default)]
    pub guest_ports: Vec<u16>,
    /// A console line the guest prints when it is ready; waited for before the script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_marker: Option<String>,
    /// A whole script run in the guest as one unit (uploaded, then run by the interpreter
    /// of its `#!` line, `sh` without one): heredocs, functions and multi-line `if`/`for`
    /// work. Runs before `script`; a non-zero exit status fails the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_text: Option<String>,
    /// Shell lines run in the guest over the serial console, in order; the first failing
    /// line fails the session.
    #[serde(default)]
    pub script: Vec<String>,
    /// Save the base right after the script (else wait for `finish`).
    #[serde(default)]
    pub finish: bool,
}

fn default_memory_mib() -> u64 {
    1024
}

fn default_vcpus() -> u32 {
    1
}

/// `POST /api/v1/bases/add` (`add-base`): register an existing disk and memory snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddBase {
    /// Unique name.
    pub name: String,
    /// Raw disk image the snapshot was taken with (import directory or `upload:<id>`).
    pub disk: String,
    /// libvirt save file of the booted VM (import directory or `upload:<id>`).
    pub save_file: String,
    /// Guest TCP ports of the application.
    #[serde(default)]
    pub guest_ports: Vec<u16>,
}

/// `POST /api/v1/overlays` (`cloudlet overlay BASE`): resume the base so that an
/// application can be installed, then encode the difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateOverlay {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// Disk-only overlay (Elijah `-d`): no memory; synthesis boots the disk.
    #[serde(default)]
    pub disk_only: bool,
    /// Guest TCP ports the application listens on, besides the base's.
    #[serde(default)]
    pub guest_ports: Vec<u16>,
    /// A whole script run in the guest as one unit (as for `CreateBase`); runs before
    /// `script`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_text: Option<String>,
    /// Shell lines run in the guest over the serial console, in order.
    #[serde(default)]
    pub script: Vec<String>,
    /// Save and encode right after the script (else wait for `finish`).
    #[serde(default)]
    pub finish: bool,
    /// Do not pass guest TRIM through to the overlay disk (Elijah `-t`).
    #[serde(default)]
    pub no_trim: bool,
    /// Right before saving, run `fstrim` on the guest's file systems, so the blocks of
    /// deleted files are zero in the overlay even where a file system is mounted without
    /// `discard`. Needs TRIM passed through (not with `no_trim`).
    #[serde(default)]
    pub fstrim: bool,
    /// Right before saving, write back and drop the guest's page cache and wait for the
    /// guest's free page reporting to hand the freed pages to the host, so cached file
    /// pages are not shipped (they read as zero in the saved memory). The app's first
    /// file reads after synthesis then come from the disk.
    #[serde(default)]
    pub drop_caches: bool,
}

/// `POST /api/v1/synthesis` (`cloudlet synthesis BASE OVERLAY`): exactly one overlay
/// source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Synthesize {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// An overlay this cloudlet stores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_id: Option<String>,
    /// An overlay file inside an import directory, or `upload:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_path: Option<String>,
    /// An overlay the cloudlet downloads itself; its origin must be in the daemon's
    /// `overlay_url_allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_url: Option<String>,
}

/// `POST /api/v1/sessions/{id}/run`: a shell line, or a multi-line script, run in the
/// guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// One shell line, or a whole script (several lines: run as one unit by the
    /// interpreter of its `#!` line, `sh` without one).
    pub command: String,
    /// Seconds to wait for it (default 60, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

/// What a command run in the guest printed, and its exit status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RunResponse {
    /// Output (stdout and stderr).
    pub output: String,
    /// Exit status.
    pub status: i32,
}

/// A file stored by `POST /api/v1/uploads`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Upload {
    /// Name it in a request as `upload:<id>`.
    pub id: String,
    /// Bytes received.
    pub size: u64,
}

/// How many ended sessions `DELETE /api/v1/sessions` (`clear-session`) removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Cleared {
    /// Finished, stopped or failed sessions removed from the history.
    pub removed: u64,
}

wire_enum! {
    /// Whether the daemon serves requests.
    HealthStatus("`ok`: the daemon serves every route; `starting`: it answers but is still \
        reconciling the previous run's VMs with libvirt (other routes answer 503 + \
        Retry-After until then).")
    {
        /// Serving.
        Ok = "ok",
        /// Reconciling the previous run's VMs; other routes answer 503 meanwhile.
        Starting = "starting",
    }
}

/// `GET /health` (no token needed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Serving state.
    pub status: HealthStatus,
    /// Daemon version.
    #[serde(default)]
    pub version: String,
    /// Ready base VMs in the catalogue.
    #[serde(default)]
    pub bases: u64,
    /// Syntheses that could start now (`max_concurrent_syntheses` minus those running):
    /// a client refused `busy` polls this before it sends its overlay again.
    #[serde(default)]
    pub synthesis_slots_free: u64,
    /// Whom the VMs' QEMU runs as, and whether sessions are kept apart.
    #[serde(default)]
    pub confinement: Confinement,
    /// How the API is carried: TLS or plain HTTP.
    #[serde(default)]
    pub tls: TlsState,
}

/// How the daemon confines the QEMU of the VMs it starts (`GET /health`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Confinement {
    /// Whom QEMU runs as: `uids 64001-64999, gid 64000` (one uid per VM), or
    /// `libvirt qemu.conf user` when not confined (root on hosts set up for it).
    pub qemu_user: String,
    /// Whether one VM's QEMU cannot read another session's files (each VM has its own
    /// uid and its session directory is 0700 and owned by it).
    pub isolated_sessions: bool,
    /// Why the VMs are not confined (setting `confinement`, a host that does not allow it);
    /// absent when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The API's transport security, as `/health` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct TlsState {
    /// The API is served over TLS (https).
    pub enabled: bool,
    /// SHA-256 of the server certificate (DER), uppercase hex pairs joined by `:`, as
    /// `cloudletd tls-fingerprint` prints it; what a device pins (`--pin-sha256`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// The certificate was generated by the daemon (no `tls_cert` configured).
    pub self_signed: bool,
    /// Plain HTTP on a non-loopback address (`tls = "off"`): the token and every body
    /// cross the network readable by anyone on it.
    pub insecure: bool,
}

/// Query of `DELETE /api/v1/bases/{selector}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct DeleteBaseQuery {
    /// Also delete the base's overlays and stop its sessions.
    #[serde(default)]
    pub force: bool,
}

/// Query of `POST /api/v1/bases/import`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ImportBaseQuery {
    /// Name of the new base (default: the name it was exported with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Query of `POST /api/v1/synthesis/upload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct SynthesizeUploadQuery {
    /// The base the overlay applies to: id, unique id prefix, name or source disk path.
    pub base: String,
}
