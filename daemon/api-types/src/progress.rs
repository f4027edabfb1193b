//! Progress streams: a long operation sent with `Accept: application/x-ndjson` answers
//! `200` at once with one JSON object per line: events, then one `result` or `error` line
//! standing for the plain answer.

use serde::{Deserialize, Serialize};

use crate::error::ErrorDetail;

/// What a running operation reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// A step began (`boot`, `save`, `encode`, `decode`, `restore`, ...).
    Step {
        /// Step name (as in the session's `timings`).
        step: String,
    },
    /// A step ended.
    StepDone {
        /// Step name.
        step: String,
        /// How long it took, in milliseconds.
        ms: u64,
    },
    /// Work done inside a long engine stage.
    Progress {
        /// Engine stage (`read`, `rebuild`, `encode`, ...).
        stage: String,
        /// Units (bytes or chunks) done so far.
        done: u64,
        /// Units in all, when known.
        total: Option<u64>,
    },
}

/// One line of a progress stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressLine {
    /// A step began.
    Step {
        /// Step name.
        step: String,
    },
    /// A step ended.
    StepDone {
        /// Step name.
        step: String,
        /// Milliseconds.
        #[serde(default)]
        ms: u64,
    },
    /// Work done inside a stage.
    Progress {
        /// Stage name.
        #[serde(default)]
        stage: String,
        /// Units done.
        #[serde(default)]
        done: u64,
        /// Units in all; absent or `null` while unknown.
        #[serde(default)]
        total: Option<u64>,
    },
    /// The last line of a successful operation: the plain answer's status and body.
    Result {
        /// HTTP status the plain answer would have had.
        #[serde(default)]
        status: u16,
        /// Its body (a `Session` for every streamed route).
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        body: serde_json::Value,
    },
    /// The last line of a failed operation.
    Error {
        /// HTTP status the plain answer would have had.
        #[serde(default)]
        status: u16,
        /// The error.
        error: ErrorDetail,
    },
}

impl ProgressLine {
    /// Reads one line of a stream; `None` for a line type this version does not know (a
    /// newer daemon's), which a client should skip.
    pub fn parse(line: &str) -> Result<Option<Self>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Tag {
            #[serde(rename = "type")]
            kind: String,
        }
        const KNOWN: [&str; 5] = ["step", "step_done", "progress", "result", "error"];
        let tag: Tag = serde_json::from_str(line)?;
        if !KNOWN.contains(&tag.kind.as_str()) {
            return Ok(None);
        }
        serde_json::from_str(line).map(Some)
    }
}

impl From<ProgressEvent> for ProgressLine {
    fn from(e: ProgressEvent) -> Self {
        match e {
            ProgressEvent::Step { step } => ProgressLine::Step { step },
            ProgressEvent::StepDone { step, ms } => ProgressLine::StepDone { step, ms },
            ProgressEvent::Progress { stage, done, total } => {
                ProgressLine::Progress { stage, done, total }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn lines_parse_and_unknown_types_are_ignored() {
        let parse = |l: &str| ProgressLine::parse(l).unwrap();
        let e = parse(r#"{"type":"step_done","step":"boot","ms":5012}"#);
        assert!(matches!(e, Some(ProgressLine::StepDone { ms: 5012, .. })));
        let e = parse(
            r#"{"type":"error","status":422,"error":{"code":"script-failed","message":"x"}}"#,
        );
        assert!(
            matches!(e, Some(ProgressLine::Error { status: 422, ref error }) if error.code == ErrorCode::ScriptFailed)
        );
        assert_eq!(parse(r#"{"type":"heartbeat","n":1}"#), None);
        let e = parse(r#"{"type":"progress","stage":"x","done":5}"#);
        assert!(matches!(
            e,
            Some(ProgressLine::Progress { total: None, .. })
        ));
        assert!(
            ProgressLine::parse(r#"{"type":"step"}"#).is_err(),
            "known type, bad line"
        );
    }

    #[test]
    fn events_serialize_as_their_lines() {
        let event = ProgressEvent::Progress {
            stage: "apply".into(),
            done: 4,
            total: Some(10),
        };
        let as_event = serde_json::to_value(&event).unwrap();
        let as_line = serde_json::to_value(ProgressLine::from(event)).unwrap();
        assert_eq!(as_event, as_line);
    }
}
