//! The catalogue (SQLite via sqlx) and the data directory the daemon owns. All SQL lives
//! in this module; callers see typed records.

pub mod bases;
pub mod db;
pub mod files;
pub mod idempotency;
pub mod overlays;
pub mod reconcile;
pub mod sessions;
pub mod standbys;
pub mod tokens;

pub use db::{Store, StoreError};
pub use files::DataDir;

/// Current time as RFC 3339 UTC, the format every timestamp column holds.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A fresh time-ordered id (UUIDv7, hyphenated lower-case).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
