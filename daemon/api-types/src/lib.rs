//! The contract between `cloudletd` and its clients (the `cloudlet` CLI, edge devices):
//! every request and response body of the REST API under `/api/v1`, the states a session
//! or a stored item goes through, the error codes, and the lines of a progress stream.
//!
//! The daemon serializes exactly these types and generates its OpenAPI document from them
//! (feature `openapi`); clients deserialize them. Enumerations travel as strings and a
//! value this version does not know (a newer daemon) reads as `Unknown`, so older clients
//! keep working. Nothing here names a host path of the cloudlet except the fields of
//! [`SessionHost`], which only an operator on the cloudlet's host needs.
//!
//! This crate has no I/O and no runtime: serde only (and utoipa behind `openapi`).

#[macro_use]
mod wire_enum;

pub mod error;
pub mod progress;
pub mod requests;
pub mod resources;
pub mod state;
pub mod tokens;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use progress::{ProgressEvent, ProgressLine};
pub use requests::{
    AddBase, Cleared, Confinement, CreateBase, CreateOverlay, DeleteBaseQuery, Health,
    HealthStatus, ImportBaseQuery, RunRequest, RunResponse, Synthesize, SynthesizeUploadQuery,
    TlsState, Upload,
};
pub use resources::{Base, Overlay, ScriptLineResult, Session, SessionHost};
pub use state::{ResourceState, SessionKind, SessionState};
pub use tokens::{CreateToken, CreatedToken, Token, TokenRole};

/// The prefix of every versioned route.
pub const API_PREFIX: &str = "/api/v1";

/// Media type of progress streams (send it in `Accept` on a long operation).
pub const NDJSON: &str = "application/x-ndjson";

/// How a request names a file sent earlier to `POST /api/v1/uploads` (`upload:<id>`).
pub const UPLOAD_PREFIX: &str = "upload:";
