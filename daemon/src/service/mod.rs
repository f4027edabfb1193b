//! The daemon's use cases, one file each: base creation, overlay creation, synthesis,
//! session control. Handlers call exactly one of these; they take and return plain types,
//! never HTTP ones. Engine work runs on the blocking pool; libvirt goes through `virt`.

pub mod access;
pub mod base;
mod catalogue;
pub mod error;
mod fifo;
pub mod idempotency;
pub mod intake;
pub mod overlay;
pub mod progress;
pub mod session;
mod stall;
pub mod standby;
mod stream_restore;
mod stream_save;
pub mod synthesis;
pub mod synthesis_standby;
pub mod tokens;
pub mod transfer;
mod views;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cloudlet_api::{ProgressEvent, ResourceState};

pub use access::Caller;
pub use error::{chain, BoxError, ServiceError};

use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::AppState;

/// Runs engine work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::failed("worker task", e))?
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
        progress::emit(ProgressEvent::Step {
            step: step.to_string(),
        });
        Instant::now()
    }

    pub(crate) fn record(&mut self, step: &str, started: Instant) {
        self.record_took(step, started.elapsed());
    }

    /// Records a step that took `took` (measured elsewhere).
    pub(crate) fn record_took(&mut self, step: &str, took: std::time::Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(step, ms, "session step done");
        progress::emit(ProgressEvent::StepDone {
            step: step.to_string(),
            ms,
        });
        self.0.insert(step.to_string(), ms);
        crate::fault::point("after", step);
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
        let mut ready: Vec<BaseRecord> = found
            .into_iter()
            .filter(|b| b.state == ResourceState::Ready)
            .collect();
        // An exact id beats a name, a name beats a source path: another base's metadata
        // (an imported archive's source path, say) can never shadow an id or a name.
        for exact in [
            |b: &BaseRecord, s: &str| b.id == s,
            |b: &BaseRecord, s: &str| b.name == s,
        ] {
            if let Some(i) = ready.iter().position(|b| exact(b, selector)) {
                return Ok(ready.swap_remove(i));
            }
        }
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
        if let Some(id) = shown.strip_prefix(cloudlet_api::UPLOAD_PREFIX) {
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

    /// Loads a session's record.
    pub(crate) async fn session_record(&self, id: &str) -> Result<SessionRecord, ServiceError> {
        validate_id(id)?;
        Ok(self.store.session(id).await?)
    }

    /// Loads a session's record if `caller` may reach it (else `forbidden`).
    pub(crate) async fn session_for(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<SessionRecord, ServiceError> {
        caller.session(self.session_record(id).await?)
    }
}

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

/// Opens a file a request named, on the blocking pool, refusing anything but a regular
/// file: the path was checked when the request came in, but it may have been swapped
/// since for a FIFO (whose open would block until a writer comes) or a symlink.
/// `O_NONBLOCK` makes such an open return at once; it has no effect on regular files.
pub(crate) async fn open_regular(path: &Path) -> Result<std::fs::File, ServiceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_path_buf();
    blocking(move || {
        let shown = path.display().to_string();
        let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(i32::try_from(flags.bits()).unwrap_or(0))
            .open(&path)
            .map_err(|e| ServiceError::failed(format!("opening {shown}"), e))?;
        let meta = file
            .metadata()
            .map_err(|e| ServiceError::failed(format!("reading {shown}"), e))?;
        if !meta.is_file() {
            return Err(ServiceError::InvalidRequest(format!(
                "{shown} is not a regular file"
            )));
        }
        Ok(file)
    })
    .await
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
    use std::time::Duration;

    #[tokio::test]
    async fn a_fifo_or_symlink_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("overlay");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A plain open of a FIFO with no writer would block forever.
        let opened = tokio::time::timeout(Duration::from_secs(5), open_regular(&fifo))
            .await
            .expect("opening a FIFO must not block");
        assert!(
            matches!(opened, Err(ServiceError::InvalidRequest(_))),
            "{opened:?}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(
            open_regular(&link).await.is_err(),
            "symlinks are not followed"
        );
        assert!(open_regular(&file).await.is_ok());
    }

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
}
