//! The daemon's use cases, one file each: base creation, overlay creation, synthesis,
//! session control. Handlers call exactly one of these; they take and return plain types,
//! never HTTP ones. Engine work runs on the blocking pool; libvirt goes through `virt`.

pub mod base;
pub mod intake;
pub mod overlay;
pub mod progress;
pub mod session;
pub mod synthesis;
pub mod transfer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::store::StoreError;
use crate::virt::VirtError;
use crate::AppState;

/// Errors of the use cases, each with a stable machine-readable code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such base, overlay or session.
    #[error("{0} not found")]
    NotFound(String),
    /// A selector matches several bases.
    #[error("`{selector}` matches several bases: {}", candidates.join(", "))]
    Ambiguous {
        /// What the user typed.
        selector: String,
        /// Ids of the matches.
        candidates: Vec<String>,
    },
    /// The request conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    InvalidRequest(String),
    /// A path outside the configured import directories.
    #[error("{0} is not inside an import directory of this daemon (setting import_dirs)")]
    PathNotAllowed(String),
    /// The overlay is damaged, truncated or not an overlay.
    #[error("overlay is corrupt: {0}")]
    OverlayCorrupt(String),
    /// The overlay was made for another base.
    #[error("{0}")]
    OverlayBaseMismatch(String),
    /// A customization script line failed in the guest.
    #[error("script line failed with status {status}: {command}")]
    ScriptFailed {
        /// The line.
        command: String,
        /// Its exit status.
        status: i32,
    },
    /// An overlay URL outside the configured origins.
    #[error("{0} is not an allowed overlay origin of this daemon (setting overlay_url_allow)")]
    UrlNotAllowed(String),
    /// Fetching an overlay URL failed.
    #[error("fetching the overlay failed: {0}")]
    FetchFailed(String),
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token (see the daemon's token_file)")]
    Unauthorized,
    /// A request body over the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// A request body stalled or a request ran past its deadline.
    #[error("{0}")]
    Timeout(String),
    /// No answer within the request deadline (the work itself may still complete).
    #[error("{0}")]
    Deadline(String),
    /// Too much work at once; retry later.
    #[error("{what}; retry in {retry_after_s} s")]
    Busy {
        /// What is saturated.
        what: String,
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// libvirt or QEMU failed.
    #[error("hypervisor: {0}")]
    Hypervisor(String),
    /// The data directory's file system is full.
    #[error("{0}")]
    NoSpace(String),
    /// Anything else (I/O on the host, database): details in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Stable code for clients (kebab-case).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::NotFound(_) => "not-found",
            ServiceError::Ambiguous { .. } => "ambiguous",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::InvalidRequest(_) => "invalid-request",
            ServiceError::PathNotAllowed(_) => "path-not-allowed",
            ServiceError::OverlayCorrupt(_) => "overlay-corrupt",
            ServiceError::OverlayBaseMismatch(_) => "overlay-base-mismatch",
            ServiceError::ScriptFailed { .. } => "script-failed",
            ServiceError::UrlNotAllowed(_) => "url-not-allowed",
            ServiceError::FetchFailed(_) => "fetch-failed",
            ServiceError::Unauthorized => "unauthorized",
            ServiceError::TooLarge(_) => "too-large",
            ServiceError::Timeout(_) => "timeout",
            ServiceError::Busy { .. } => "busy",
            ServiceError::Deadline(_) => "deadline",
            ServiceError::MethodNotAllowed => "method-not-allowed",
            ServiceError::Hypervisor(_) => "hypervisor-error",
            ServiceError::NoSpace(_) => "no-space",
            ServiceError::Internal(_) => "internal",
        }
    }

    pub(crate) fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        ServiceError::Internal(format!("{context}: {e}"))
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => ServiceError::NotFound(what),
            StoreError::Conflict { what } => {
                ServiceError::Conflict(format!("{what} already exists"))
            }
            other => ServiceError::internal("catalogue", error_chain(&other)),
        }
    }
}

impl From<VirtError> for ServiceError {
    fn from(e: VirtError) -> Self {
        if e.is_invalid_input() {
            ServiceError::InvalidRequest(error_chain(&e))
        } else {
            ServiceError::Hypervisor(error_chain(&e))
        }
    }
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs engine work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::internal("worker task", e))?
}

/// Step timings of a session, in milliseconds.
#[derive(Debug, Default)]
pub(crate) struct StepTimer(BTreeMap<String, u64>);

impl StepTimer {
    pub(crate) async fn time<T, F: std::future::Future<Output = T>>(
        &mut self,
        step: &str,
        f: F,
    ) -> T {
        let started = Self::begin(step);
        let v = f.await;
        self.record(step, started);
        v
    }

    /// Announces `step` to progress watchers; returns its start for [`Self::record`].
    pub(crate) fn begin(step: &str) -> Instant {
        progress::emit(progress::Event::Step {
            step: step.to_string(),
        });
        Instant::now()
    }

    pub(crate) fn record(&mut self, step: &str, started: Instant) {
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(step, ms, "session step done");
        progress::emit(progress::Event::StepDone {
            step: step.to_string(),
            ms,
        });
        self.0.insert(step.to_string(), ms);
    }

    pub(crate) fn merge_into(&self, session: &mut SessionRecord) {
        for (k, v) in &self.0 {
            session.timings.0.insert(k.clone(), *v);
        }
    }
}

impl AppState {
    /// The base a user means: exact id, name or source path, else a unique id prefix.
    pub async fn resolve_base(&self, selector: &str) -> Result<BaseRecord, ServiceError> {
        if selector.trim().is_empty() {
            return Err(ServiceError::InvalidRequest("empty base selector".into()));
        }
        let found = self.store.find_bases(selector).await?;
        let ready: Vec<BaseRecord> = found.into_iter().filter(|b| b.state == "ready").collect();
        match ready.len() {
            0 => Err(ServiceError::NotFound(format!("base `{selector}`"))),
            1 => ready
                .into_iter()
                .next()
                .ok_or_else(|| ServiceError::NotFound(format!("base `{selector}`"))),
            _ => Err(ServiceError::Ambiguous {
                selector: selector.to_string(),
                candidates: ready.into_iter().map(|b| b.id).collect(),
            }),
        }
    }

    /// A local file a request names: `upload:<id>` (a file sent to `POST /uploads`,
    /// consumed when the returned guard drops), or a path that must exist and lie inside an
    /// import directory (after resolving symlinks and `..`).
    pub fn import_path(&self, path: &Path) -> Result<LocalInput, ServiceError> {
        let shown = path.display().to_string();
        if let Some(id) = shown.strip_prefix(UPLOAD_PREFIX) {
            validate_id(id)?;
            let upload = self.data.upload_file(id);
            if !upload.is_file() {
                return Err(ServiceError::NotFound(format!("upload {id}")));
            }
            return Ok(LocalInput {
                path: upload,
                consume: true,
            });
        }
        let real =
            std::fs::canonicalize(path).map_err(|_| ServiceError::PathNotAllowed(shown.clone()))?;
        let allowed = self
            .config
            .import_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .any(|d| real.starts_with(&d));
        if !allowed || !real.is_file() {
            return Err(ServiceError::PathNotAllowed(shown));
        }
        Ok(LocalInput {
            path: real,
            consume: false,
        })
    }

    /// Loads a session.
    pub async fn session(&self, id: &str) -> Result<SessionRecord, ServiceError> {
        validate_id(id)?;
        Ok(self.store.session(id).await?)
    }
}

/// How a request names an uploaded file instead of a local path.
pub const UPLOAD_PREFIX: &str = "upload:";

/// A file a request reads; an upload is deleted once the request is done with it.
#[derive(Debug)]
pub struct LocalInput {
    path: PathBuf,
    consume: bool,
}

impl LocalInput {
    /// A file the daemon already owns (never deleted by this guard).
    pub fn owned_by_daemon(path: PathBuf) -> Self {
        Self {
            path,
            consume: false,
        }
    }
}

impl std::ops::Deref for LocalInput {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for LocalInput {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalInput {
    fn drop(&mut self) {
        if self.consume {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An engine or I/O failure: a full data disk (anywhere in the error's sources) becomes
/// `no-space`, anything else `internal`.
pub(crate) fn failure(context: &str, e: &(dyn std::error::Error + 'static)) -> ServiceError {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull {
                return ServiceError::NoSpace(format!(
                    "{context}: the cloudlet's data disk is full"
                ));
            }
        }
        source = err.source();
    }
    ServiceError::internal(context, error_chain(e))
}

/// Ids are UUIDs or hex hashes: anything else is refused before it reaches a path or query.
pub fn validate_id(id: &str) -> Result<(), ServiceError> {
    let ok =
        !id.is_empty() && id.len() <= 80 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidRequest(format!(
            "`{id}` is not a valid id"
        )))
    }
}

/// Names of bases: 1-64 characters of letters, digits, `._-`.
pub fn validate_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidRequest(format!(
            "`{name}` is not a valid name (1-64 letters, digits, '.', '_', '-')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert!(validate_id("0190a3b2-1c2d-7e3f-8a9b-0c1d2e3f4a5b").is_ok());
        assert!(validate_id("ab12").is_ok());
        for bad in ["", "../x", "a/b", "x y", "g1"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert!(validate_name("debian-12.base_1").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(
            ServiceError::PathNotAllowed("x".into()).code(),
            "path-not-allowed"
        );
        assert_eq!(
            ServiceError::OverlayCorrupt("x".into()).code(),
            "overlay-corrupt"
        );
        let e = ServiceError::from(StoreError::NotFound {
            what: "base x".into(),
        });
        assert_eq!(e.code(), "not-found");
    }
}
