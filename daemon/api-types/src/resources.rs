//! What the API answers about bases, overlays and sessions. Internal bookkeeping (file
//! locations, domain XML, flow parameters) never appears here; host-side details an
//! operator needs are in [`SessionHost`], served by its own route.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{SessionKind, SessionState};

/// A base VM: a disk image and a memory snapshot of it booted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Base {
    /// Content id: hex blake3 of its hash list, equal on every cloudlet holding it.
    pub id: String,
    /// Unique human name.
    pub name: String,
    /// The disk image path it was created from, as the user gave it (Elijah names bases
    /// by it; a selector may use it).
    #[serde(default)]
    pub source_path: Option<String>,
    /// Disk size in bytes.
    #[serde(default)]
    pub disk_size: u64,
    /// Guest RAM in bytes (0: a disk-only base).
    #[serde(default)]
    pub memory_size: u64,
    /// Bytes per disk chunk and memory page (4096).
    #[serde(default)]
    pub chunk_size: u64,
    /// Disk chunks.
    #[serde(default)]
    pub disk_chunks: u64,
    /// Memory pages (0: a disk-only base).
    #[serde(default)]
    pub memory_pages: u64,
    /// Virtual CPUs.
    #[serde(default)]
    pub vcpus: u32,
    /// Guest TCP ports forwarded for every session of this base.
    #[serde(default)]
    pub guest_ports: Vec<u16>,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created_at: String,
}

/// A VM overlay stored on the cloudlet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Overlay {
    /// UUIDv7.
    pub id: String,
    /// The base it applies to.
    pub base_id: String,
    /// Optional human name.
    #[serde(default)]
    pub name: Option<String>,
    /// Size of the overlay file in bytes.
    #[serde(default)]
    pub file_size: u64,
    /// Made without memory (Elijah's `-d`): synthesis boots its disk.
    #[serde(default)]
    pub disk_only: bool,
    /// Memory pages that differ from the base.
    #[serde(default)]
    pub modified_memory_pages: u64,
    /// Disk chunks that differ from the base.
    #[serde(default)]
    pub modified_disk_chunks: u64,
    /// Encoder statistics: record counts per encoding, sizes, `encode_ms`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    #[serde(default)]
    pub stats: serde_json::Value,
    /// Guest TCP ports of the application (forwarded at synthesis).
    #[serde(default)]
    pub guest_ports: Vec<u16>,
    /// The overlay session that made it.
    #[serde(default)]
    pub session_id: Option<String>,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created_at: String,
}

/// One customization script run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ScriptLineResult {
    /// The command (a line, or the whole script).
    pub command: String,
    /// What it printed (stdout and stderr).
    pub output: String,
    /// Its exit status (0: success).
    pub status: i32,
}

/// A base, overlay or synthesis session. (`id`, `kind` and `state` are always present; the
/// rest may be missing in an older daemon's answer.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// UUIDv7.
    pub id: String,
    /// What it does.
    pub kind: SessionKind,
    /// Where it is.
    pub state: SessionState,
    /// The base it works on (or made, for a finished base session).
    #[serde(default)]
    pub base_id: Option<String>,
    /// The overlay it used (synthesis) or made (finished overlay session).
    #[serde(default)]
    pub overlay_id: Option<String>,
    /// Its libvirt domain (`cloudlet-<id>`).
    #[serde(default)]
    pub vm_name: Option<String>,
    /// VNC display port, on the cloudlet's loopback.
    #[serde(default)]
    pub vnc_port: Option<u16>,
    /// Guest port → host port where the application answers.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u16>))]
    #[serde(default)]
    pub host_ports: BTreeMap<u16, u16>,
    /// Step → milliseconds.
    #[serde(default)]
    pub timings: BTreeMap<String, u64>,
    /// Customization scripts run in the guest and their results.
    #[serde(default)]
    pub script_results: Vec<ScriptLineResult>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339, last change.
    #[serde(default)]
    pub updated_at: String,
    /// RFC 3339, when it reached a final state.
    #[serde(default)]
    pub ended_at: Option<String>,
}

/// Operator-only details of a session on the cloudlet's host
/// (`GET /api/v1/sessions/{id}/host`): where its files are, for `cloudlet console` and
/// debugging on the host itself. Not useful to an edge device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct SessionHost {
    /// Session id.
    pub id: String,
    /// Its libvirt domain.
    pub vm_name: Option<String>,
    /// Unix socket of its serial console, on the cloudlet's host.
    pub console_path: Option<String>,
    /// Its work directory, on the cloudlet's host.
    pub run_dir: Option<String>,
}
