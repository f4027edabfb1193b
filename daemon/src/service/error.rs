//! Errors of the use cases. Each keeps its cause as a `#[source]` (never flattened into a
//! string), and one classifier, [`ServiceError::code`], decides the client-facing code:
//! a full disk anywhere in the chain is `no-space`, whatever step hit it.

use cloudlet_api::ErrorCode;

use crate::store::sessions::IllegalTransition;
use crate::store::StoreError;
use crate::virt::VirtError;

/// Any error, as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the use cases. Messages are lowercase and never repeat their source; the
/// API shows the whole chain for client errors ([`chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such base, overlay, session or upload.
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
    /// Input the request carries or names is unusable (a damaged archive, a save file the
    /// engine refuses, a domain XML the daemon will not run).
    #[error("{context}")]
    InvalidInput {
        /// What was being read.
        context: String,
        /// Why it was refused.
        #[source]
        source: BoxError,
    },
    /// The caller's token may not do this (its role, or another token owns the item).
    #[error("{0}")]
    Forbidden(String),
    /// A path outside the configured import directories.
    #[error("{0} is not inside an import directory of this daemon (setting import_dirs)")]
    PathNotAllowed(String),
    /// The overlay is damaged, truncated or not an overlay.
    #[error("overlay is corrupt")]
    OverlayCorrupt(#[source] BoxError),
    /// The overlay was made for another base.
    #[error("overlay does not apply to this base")]
    OverlayBaseMismatch(#[source] BoxError),
    /// A customization script failed in the guest.
    #[error("script failed with status {status}: {command}")]
    ScriptFailed {
        /// The script (or line).
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
    /// A request body over the configured limit.
    #[error("the body exceeds this daemon's limit of {limit} bytes (setting max_upload_bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A base archive that expands past its own declared sizes or `max_import_bytes`.
    #[error("base archive refused (setting max_import_bytes)")]
    ArchiveTooLarge(#[source] BoxError),
    /// A request body stalled.
    #[error("no request data for {idle_s} s (setting body_idle_timeout_s)")]
    Timeout {
        /// The allowed stall in seconds.
        idle_s: u64,
    },
    /// The request's deadline passed while its body was still arriving; the work was
    /// abandoned (and its synthesis slot freed).
    #[error(
        "the request deadline (setting request_timeout_s) passed while its body was still arriving"
    )]
    DeadlinePassed,
    /// Too much work at once; retry later.
    #[error("{what}; retry in {retry_after_s} s")]
    Busy {
        /// What is saturated.
        what: String,
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// Another request with the same `Idempotency-Key` claimed it first; retry to get its
    /// session.
    #[error(
        "a request with the same Idempotency-Key is being admitted; retry in 1 s to get its session"
    )]
    IdempotencyInProgress,
    /// libvirt or QEMU failed.
    #[error("hypervisor")]
    Hypervisor(#[source] VirtError),
    /// The catalogue failed.
    #[error("catalogue")]
    Store(#[source] StoreError),
    /// A step on the host failed (I/O, the engine, a tool); `context` says which.
    #[error("{context}")]
    Failed {
        /// The step.
        context: String,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// A broken invariant of the daemon itself.
    #[error("{0}")]
    Bug(String),
}

impl ServiceError {
    /// A failed step on the host, keeping its cause.
    pub(crate) fn failed(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ServiceError::Failed {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Unusable input, keeping why.
    pub(crate) fn invalid_input(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ServiceError::InvalidInput {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The client-facing code: `no-space` when the data disk is full anywhere in the
    /// chain, else the variant's own.
    pub fn code(&self) -> ErrorCode {
        if disk_full(self) {
            return ErrorCode::NoSpace;
        }
        match self {
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::Ambiguous { .. } => ErrorCode::Ambiguous,
            ServiceError::Conflict(_) => ErrorCode::Conflict,
            ServiceError::InvalidRequest(_) | ServiceError::InvalidInput { .. } => {
                ErrorCode::InvalidRequest
            }
            ServiceError::PathNotAllowed(_) => ErrorCode::PathNotAllowed,
            ServiceError::Forbidden(_) => ErrorCode::Forbidden,
            ServiceError::OverlayCorrupt(_) => ErrorCode::OverlayCorrupt,
            ServiceError::OverlayBaseMismatch(_) => ErrorCode::OverlayBaseMismatch,
            ServiceError::ScriptFailed { .. } => ErrorCode::ScriptFailed,
            ServiceError::UrlNotAllowed(_) => ErrorCode::UrlNotAllowed,
            ServiceError::FetchFailed(_) => ErrorCode::FetchFailed,
            ServiceError::TooLarge { .. } | ServiceError::ArchiveTooLarge(_) => ErrorCode::TooLarge,
            ServiceError::Timeout { .. } => ErrorCode::Timeout,
            ServiceError::DeadlinePassed => ErrorCode::Deadline,
            ServiceError::Busy { .. } => ErrorCode::Busy,
            ServiceError::IdempotencyInProgress => ErrorCode::IdempotencyInProgress,
            ServiceError::Hypervisor(_) => ErrorCode::HypervisorError,
            ServiceError::Store(_) | ServiceError::Failed { .. } | ServiceError::Bug(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// What the client is told: the whole chain for its own errors; for a full disk, the
    /// step and that fact. (Internal errors are answered generically by the API edge.)
    pub fn public_message(&self) -> String {
        if self.code() == ErrorCode::NoSpace {
            return format!("{self}: the cloudlet's data disk is full (nothing was kept)");
        }
        redact_data_dir(&chain(self))
    }

    /// What a failed session records as its `error`: the public message, except that a
    /// fault of the host keeps only its step (the cause, which may name the daemon's
    /// files, goes to the log).
    pub fn session_message(&self) -> String {
        if self.code() == ErrorCode::Internal {
            // The step's own text may name a file of the daemon (`opening <path>`).
            redact_data_dir(&format!("internal error while {self}; see the daemon log"))
        } else {
            self.public_message()
        }
    }

    /// Seconds after which a retry may succeed (`Retry-After`).
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ServiceError::Busy { retry_after_s, .. } => Some(*retry_after_s),
            ServiceError::IdempotencyInProgress => Some(1),
            _ => None,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => ServiceError::NotFound(what),
            StoreError::Conflict { what } => {
                ServiceError::Conflict(format!("{what} already exists"))
            }
            other => ServiceError::Store(other),
        }
    }
}

impl From<VirtError> for ServiceError {
    fn from(e: VirtError) -> Self {
        if e.is_invalid_input() {
            ServiceError::invalid_input("the VM definition was refused", e)
        } else {
            ServiceError::Hypervisor(e)
        }
    }
}

impl From<IllegalTransition> for ServiceError {
    fn from(e: IllegalTransition) -> Self {
        ServiceError::Conflict(e.to_string())
    }
}

/// The data directory, as the daemon was started with it (for [`redact_data_dir`]).
static DATA_DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the data directory whose paths messages must not show (once, at start).
pub(crate) fn set_data_dir(root: &std::path::Path) {
    let _ = DATA_DIR.set(root.display().to_string());
}

/// `text` with the data directory's path replaced by `$DATA_DIR`: messages from libvirt,
/// QEMU or tools may name the daemon's files, and clients are not told where they are.
pub fn redact_data_dir(text: &str) -> String {
    match DATA_DIR.get() {
        Some(root) if !root.is_empty() && root != "/" => text.replace(root.as_str(), "$DATA_DIR"),
        _ => text.to_string(),
    }
}

/// An error and its sources, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut last = text.clone();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // A source whose text is already part of the chain (an error that also prints its
        // cause), or that says what the error wrapping it said ("overlay is corrupt" of
        // the service over the engine's), is not repeated.
        if !text.ends_with(&next) && next != last {
            text.push_str(": ");
            text.push_str(&next);
        }
        last = next;
        source = s.source();
    }
    text
}

/// Whether a full disk (ENOSPC, EDQUOT, SQLite's "database or disk is full", or libvirt
/// and tools reporting it in text) caused `e`.
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                return true;
            }
            // An io::Error wrapping another error does not list it as its source.
            if let Some(inner) = io.get_ref() {
                if disk_full(inner) {
                    return true;
                }
            }
        }
        let text = err.to_string();
        if text.contains("No space left on device") || text.contains("database or disk is full") {
            return true;
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_no_space_wherever_it_happens() {
        let enospc = || std::io::Error::from_raw_os_error(28);
        assert_eq!(
            ServiceError::failed("encoding the overlay", enospc()).code(),
            ErrorCode::NoSpace
        );
        // Wrapped by an engine error inside an io::Error, under "invalid input".
        let wrapped = std::io::Error::other(ServiceError::failed("writing", enospc()));
        let e = ServiceError::invalid_input("base archive", wrapped);
        assert_eq!(e.code(), ErrorCode::NoSpace);
        assert_eq!(e.code().status(), 507);
        assert!(
            e.public_message().contains("data disk is full"),
            "{}",
            e.public_message()
        );
        let libvirt = VirtError::Libvirt {
            op: "save",
            message: "operation failed: No space left on device".into(),
        };
        assert_eq!(ServiceError::from(libvirt).code(), ErrorCode::NoSpace);
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(ServiceError::failed("x", other).code(), ErrorCode::Internal);
    }

    #[test]
    fn codes_and_chains() {
        assert_eq!(
            ServiceError::PathNotAllowed("x".into()).code(),
            ErrorCode::PathNotAllowed
        );
        let e = ServiceError::from(StoreError::NotFound {
            what: "base x".into(),
        });
        assert_eq!(e.code(), ErrorCode::NotFound);
        let e = ServiceError::OverlayCorrupt("segment 52 fails its checksum".into());
        assert_eq!(e.code(), ErrorCode::OverlayCorrupt);
        assert_eq!(
            e.public_message(),
            "overlay is corrupt: segment 52 fails its checksum"
        );
        // The engine's own "overlay is corrupt" under the service's: said once.
        let engine = cloudlet_engine::decode::DecodeError::Format(
            cloudlet_engine::format::FormatError::Truncated {
                what: "overlay segment 52",
            },
        );
        let e = ServiceError::OverlayCorrupt(Box::new(engine));
        assert_eq!(e.public_message().matches("overlay is corrupt").count(), 1);
        assert_eq!(
            ServiceError::Busy {
                what: "x".into(),
                retry_after_s: 2
            }
            .retry_after_s(),
            Some(2)
        );
    }
}
