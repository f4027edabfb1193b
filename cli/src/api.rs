//! Wire types: the fields of the daemon's JSON answers the CLI shows. Every struct tolerates
//! unknown fields and missing optional ones, so a newer daemon does not break an older CLI.
//! `--json` output never goes through these types: it prints the daemon's JSON as received.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A base VM (`GET /api/v1/bases`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Base {
    /// Content id (blake3 of its hash list).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The disk image it was made from.
    pub source_path: Option<String>,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Memory size in bytes.
    pub memory_size: u64,
    /// 4 KiB disk chunks.
    pub disk_chunks: u64,
    /// 4 KiB memory pages.
    pub memory_pages: u64,
    /// Application ports forwarded for every session.
    pub guest_ports: Vec<u16>,
    /// Creation time.
    pub created_at: String,
}

/// A stored overlay (`GET /api/v1/overlays`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Overlay {
    /// Overlay id.
    pub id: String,
    /// The base it was made for.
    pub base_id: String,
    /// Optional name.
    pub name: Option<String>,
    /// Size of the overlay file in bytes.
    pub file_size: u64,
    /// Made without memory (Elijah's `-d`).
    pub disk_only: bool,
    /// Memory pages that differ from the base.
    pub modified_memory_pages: u64,
    /// Disk chunks that differ from the base.
    pub modified_disk_chunks: u64,
    /// Encoder statistics (shown as JSON lines).
    pub stats: serde_json::Value,
    /// Creation time.
    pub created_at: String,
}

/// One customization script line and what it did in the guest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ScriptResult {
    /// The shell line.
    pub command: String,
    /// Its output.
    pub output: String,
    /// Its exit status.
    pub status: i32,
}

/// A base, overlay or synthesis session (`GET /api/v1/sessions/{id}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// `base`, `overlay` or `synthesis`.
    pub kind: String,
    /// `starting`, `running`, `finishing`, `finished`, `stopped` or `failed`.
    pub state: String,
    /// The base it uses (or made).
    pub base_id: Option<String>,
    /// The overlay it uses (or made).
    pub overlay_id: Option<String>,
    /// The libvirt domain.
    pub vm_name: Option<String>,
    /// Unix socket of the serial console.
    pub console_path: Option<String>,
    /// VNC display port on 127.0.0.1.
    pub vnc_port: Option<u16>,
    /// Guest port → host port, on the daemon's host. (JSON object keys are strings.)
    pub host_ports: BTreeMap<String, u16>,
    /// Step → milliseconds.
    pub timings: BTreeMap<String, u64>,
    /// Customization script results.
    pub script_results: Vec<ScriptResult>,
    /// Why it failed.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// End time.
    pub ended_at: Option<String>,
}

impl Session {
    /// Whether its VM may still be running.
    pub fn is_active(&self) -> bool {
        matches!(self.state.as_str(), "starting" | "running" | "finishing")
    }
}

/// Answer of `POST /api/v1/sessions/{id}/run`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunOutput {
    /// What the command printed.
    pub output: String,
    /// Its exit status.
    pub status: i32,
}

/// Answer of `POST /api/v1/uploads`.
#[derive(Debug, Clone, Deserialize)]
pub struct Upload {
    /// Name it by `upload:<id>` in a later request.
    pub id: String,
}

/// The daemon's error body: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    /// Stable kebab-case code (docs/api.md).
    #[serde(default)]
    pub code: String,
    /// Human message.
    #[serde(default)]
    pub message: String,
}

/// One line of a progress stream (`Accept: application/x-ndjson`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// A step started.
    Step {
        /// Its name.
        step: String,
    },
    /// A step ended.
    StepDone {
        /// Its name.
        step: String,
        /// How long it took.
        #[serde(default)]
        ms: u64,
    },
    /// Work done within a stage.
    Progress {
        /// Its name.
        #[serde(default)]
        stage: String,
        /// Units done.
        #[serde(default)]
        done: u64,
        /// Units in all; `null` (or absent) when the daemon cannot know it yet.
        #[serde(default)]
        total: Option<u64>,
    },
    /// The final answer: what the plain request would have answered.
    Result {
        /// Its body (the HTTP status it stands for is not needed: 2xx).
        body: serde_json::Value,
    },
    /// The final answer: an error.
    Error {
        /// The error (its HTTP status is implied by the code).
        error: ErrorDetail,
    },
    /// A line type this CLI does not know (a newer daemon): ignored.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        let e: ProgressEvent =
            serde_json::from_str(r#"{"type":"step_done","step":"boot","ms":5012}"#).unwrap();
        assert!(matches!(e, ProgressEvent::StepDone { ms: 5012, .. }));
        let e: ProgressEvent = serde_json::from_str(
            r#"{"type":"error","status":422,"error":{"code":"script-failed","message":"x"}}"#,
        )
        .unwrap();
        assert!(matches!(e, ProgressEvent::Error { .. }));
        let e: ProgressEvent = serde_json::from_str(r#"{"type":"heartbeat","n":1}"#).unwrap();
        assert!(matches!(e, ProgressEvent::Unknown));
    }

    #[test]
    fn progress_without_a_known_total_parses() {
        let e: ProgressEvent =
            serde_json::from_str(r#"{"type":"progress","stage":"x","done":5,"total":null}"#)
                .unwrap();
        assert!(
            matches!(e, ProgressEvent::Progress { ref stage, done: 5, total: None } if stage == "x"),
            "{e:?}"
        );
        let e: ProgressEvent =
            serde_json::from_str(r#"{"type":"progress","stage":"x","done":5}"#).unwrap();
        assert!(matches!(e, ProgressEvent::Progress { total: None, .. }));
        let e: ProgressEvent =
            serde_json::from_str(r#"{"type":"progress","stage":"x","done":5,"total":10}"#).unwrap();
        assert!(matches!(
            e,
            ProgressEvent::Progress {
                total: Some(10),
                ..
            }
        ));
    }

    #[test]
    fn sessions_tolerate_unknown_and_missing_fields() {
        let s: Session = serde_json::from_str(
            r#"{"id":"x","state":"running","host_ports":{"8080":40123},"new_field":[1]}"#,
        )
        .unwrap();
        assert_eq!(s.host_ports.get("8080"), Some(&40123));
        assert!(s.is_active());
    }
}
