//! Synthesis standby (`synthesis_standby`): after a synthesis on a base (and at start,
//! for the base of the newest synthesis), a restore of
//! that base is started for the next one and fed, through its FIFO, libvirt's header,
//! the next session's domain XML and every non-zero page of the base
//! ([`cloudlet_engine::decode::prime_stream`]). QEMU loads them and waits, idle, for
//! more. The next synthesis on that base writes only the overlay's pages behind them
//! (QEMU keeps the later copy of a page) and the device state; QEMU starts, opens the
//! disk, and loads the base before the overlay's first byte arrives, not after.
//!
//! The standby's session directory, copy-on-write disk, console socket and VM name are
//! the next session's. The decoder rewrites the disk in place (the waiting QEMU opened
//! it; it reads its metadata again when the restore completes).
//!
//! An overlay the standby cannot finish (a disk-only overlay, another domain definition,
//! a save file that starts otherwise) costs nothing but the standby: it is destroyed and
//! the synthesis runs cold in the same directory. A daemon that dies closes the FIFO: QEMU
//! sees the stream end early, the restore fails, and libvirt removes the domain; the
//! `standbys` row (shared with the overlay standby) makes the next start destroy it in
//! case it did not, and the startup repair removes its directory.

use std::path::{Path, PathBuf};

use cloudlet_api::SessionKind;
use cloudlet_engine::decode::{prime_stream, PrimedStream};

use super::overlay::{base_paths, base_resume_xml, create_cow_disk, open_base};
use super::stream_restore::StreamedRestore;
use super::{blocking, Caller, ServiceError};
use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::store::standbys::StandbyRecord;
use crate::virt::SessionSpec;
use crate::AppState;

/// Longest a synthesis waits for a standby being made (it is then nearly ready, and
/// beats a restore of its own); past it the synthesis runs cold.
const TAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a new synthesis standby may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// A standby of another base.
    Other,
    /// Nothing: made only if the slot is empty.
    Nothing,
}

/// A restore of a base, started and fed the base's pages, for the next synthesis.
pub struct SynthesisStandby {
    record: StandbyRecord,
    dir: PathBuf,
    /// The restore reading the stream, libvirt's call in flight.
    restore: StreamedRestore,
    stream: PrimedStream,
    /// The definition the restore was started with, and what it was built from.
    xml: String,
    spec: SessionSpec,
}

impl std::fmt::Debug for SynthesisStandby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynthesisStandby")
            .field("record", &self.record)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl SynthesisStandby {
    /// The session this standby becomes, owned by `owner`: its id, VM and directory are
    /// the standby's.
    pub(crate) fn session(&self, owner: &Caller) -> (SessionRecord, PathBuf) {
        let mut session =
            SessionRecord::new(SessionKind::Synthesis, Some(self.record.base_id.clone()));
        session.id.clone_from(&self.record.id);
        session.vm_name = Some(self.record.vm_name.clone());
        session.run_dir = Some(self.dir.display().to_string());
        session.owner_token = owner.owner();
        (session, self.dir.clone())
    }

    /// The session definition the standby's VM was started with.
    pub(crate) fn spec(&self) -> &SessionSpec {
        &self.spec
    }

    /// Whether an overlay whose VM definition is `xml` and metadata `meta` can finish the
    /// standby's stream.
    pub(crate) fn fits(&self, xml: &str, meta: &cloudlet_engine::format::OverlayMeta) -> bool {
        self.xml == xml && self.stream.fits(meta)
    }

    /// The stream and its restore, for the synthesis that finishes them; the standby's
    /// row is the caller's to forget once its session row is stored.
    pub(crate) fn into_parts(self) -> (StandbyRecord, StreamedRestore, PrimedStream) {
        (self.record, self.restore, self.stream)
    }
}

impl AppState {
    /// The synthesis standby of base `base_id`, taken (one being made is waited for, up
    /// to [`TAKE_WAIT`]); `None` when `synthesis_standby` is off or there is none.
    pub(crate) async fn take_synthesis_standby(&self, base_id: &str) -> Option<SynthesisStandby> {
        if !self.config.synthesis_standby {
            return None;
        }
        let mut slot = tokio::time::timeout(TAKE_WAIT, self.synthesis_standby.lock())
            .await
            .ok()?;
        let taken = slot.take_if(|s| s.record.base_id == base_id);
        if taken.is_some() {
            self.metrics.synthesis_standby_vms(0);
        }
        taken
    }

    /// After a synthesis on `base_id` (its session ended, or it failed): makes the
    /// standby for that base in the background (replacing one of another base), when
    /// `synthesis_standby` is on.
    pub(crate) fn refill_synthesis_standby(&self, base_id: &str) {
        self.spawn_synthesis_standby(base_id, Replace::Other);
    }

    /// A base became ready (built, added or imported): it gets the synthesis standby if
    /// no base has one, so that the first synthesis on a new cloudlet's base is warm too.
    /// A standby of another base is kept: that base is the one in use.
    pub(crate) fn synthesis_standby_for_new_base(&self, base_id: &str) {
        self.spawn_synthesis_standby(base_id, Replace::Nothing);
    }

    fn spawn_synthesis_standby(&self, base_id: &str, replace: Replace) {
        if !self.config.synthesis_standby {
            return;
        }
        let (state, base_id) = (self.clone(), base_id.to_string());
        tokio::spawn(async move {
            if let Err(e) = state.make_synthesis_standby(&base_id, replace).await {
                tracing::warn!(base = %base_id, error = %super::chain(&e), "cannot make a synthesis standby");
            }
        });
    }

    async fn make_synthesis_standby(
        &self,
        base_id: &str,
        replace: Replace,
    ) -> Result<(), ServiceError> {
        // Held while it is made: a synthesis waits for it, a base deletion discards it
        // once it is made.
        let mut slot = self.synthesis_standby.lock().await;
        match slot.as_ref() {
            Some(s) if s.record.base_id == base_id => return Ok(()),
            Some(_) if replace == Replace::Nothing => return Ok(()),
            _ => {}
        }
        if let Some(old) = slot.take() {
            self.metrics.synthesis_standby_vms(0);
            self.discard_synthesis_standby(old, false).await;
        }
        let Some((base, record, dir)) = self.new_standby(SessionKind::Synthesis, base_id).await?
        else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let made = match self.confine.create_vm_dir(&dir) {
            Ok(_) => self.prime_restore(&base, &dir, &record.vm_name).await,
            Err(e) => Err(e.into()),
        };
        match made {
            Ok((restore, stream, xml, spec)) => {
                tracing::info!(
                    base = %base.name,
                    vm = %record.vm_name,
                    primed_bytes = stream.bytes_written(),
                    took_ms = started.elapsed().as_millis(),
                    "synthesis standby ready: the base's pages are loaded"
                );
                *slot = Some(SynthesisStandby {
                    record,
                    dir,
                    restore,
                    stream,
                    xml,
                    spec,
                });
                self.metrics.synthesis_standby_vms(1);
                Ok(())
            }
            Err(e) => {
                // In case the restore outlived its stream.
                let _ = self.hv.destroy(&record.vm_name).await;
                self.forget_standby_vm(&record, &dir, false).await;
                Err(e)
            }
        }
    }

    /// Starts a streamed restore of `base` as VM `vm` in `dir` and writes the base's pages
    /// into it.
    async fn prime_restore(
        &self,
        base: &BaseRecord,
        dir: &Path,
        vm: &str,
    ) -> Result<(StreamedRestore, PrimedStream, String, SessionSpec), ServiceError> {
        let engine_base = open_base(base).await?;
        let disk = dir.join("disk.qcow2");
        let console = dir.join("console.sock");
        // The disk the restore opens; the synthesis rewrites it in place.
        create_cow_disk(&base_paths(base).disk, &disk).await?;
        let Some((restore, open)) = self.streamed_restore(base, dir, vm, false)? else {
            return Err(ServiceError::InvalidRequest(
                "synthesis_standby needs restore_stream auto or on".into(),
            ));
        };
        let spec = self.session_spec(base, vm, &disk, &console, None);
        let primed = {
            let spec = spec.clone();
            blocking(move || {
                let xml = base_resume_xml(&engine_base, &spec)?;
                let out = open()
                    .map_err(|e| ServiceError::failed("opening the restore stream", e))?
                    .ok_or_else(|| {
                        ServiceError::failed("starting the restore", "it did not open its stream")
                    })?;
                let stream = prime_stream(&engine_base, out, Some(&xml))
                    .map_err(|e| ServiceError::failed("writing the base's pages", e))?;
                Ok((stream, xml))
            })
            .await
        };
        match primed {
            Ok((stream, xml)) => Ok((restore, stream, xml, spec)),
            Err(e) => {
                // The stream is closed: the restore fails and its VM goes.
                let _ = restore.outcome().await;
                Err(e)
            }
        }
    }

    /// Ends a standby: closes its stream (the restore fails, its VM goes), destroys the
    /// VM in case, forgets its row, and removes its directory unless `keep_dir` (the
    /// synthesis that took it runs cold there; only its disk and console go).
    pub(crate) async fn discard_synthesis_standby(
        &self,
        standby: SynthesisStandby,
        keep_dir: bool,
    ) {
        let SynthesisStandby {
            record,
            dir,
            restore,
            stream,
            ..
        } = standby;
        drop(stream);
        if let Err(e) = self.hv.destroy(&record.vm_name).await {
            tracing::warn!(vm = %record.vm_name, error = %e, "cannot destroy a synthesis standby");
        }
        let _ = restore.outcome().await;
        self.forget_standby_vm(&record, &dir, keep_dir).await;
    }

    /// Removes a standby's files (all of its directory, or only its disk and console
    /// when `keep_dir`) and its row; its VM is gone.
    async fn forget_standby_vm(&self, record: &StandbyRecord, dir: &Path, keep_dir: bool) {
        if keep_dir {
            for name in ["disk.qcow2", "console.sock"] {
                let _ = std::fs::remove_file(dir.join(name));
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Err(e) = self.store.delete_standby(&record.id).await {
            tracing::warn!(error = %e, "forgetting a synthesis standby");
        }
    }

    /// Destroys the synthesis standby, if any, or only base `base_id`'s.
    pub(crate) async fn discard_synthesis_standby_of(&self, base_id: Option<&str>) {
        let taken = self
            .synthesis_standby
            .lock()
            .await
            .take_if(|s| base_id.is_none_or(|b| s.record.base_id == b));
        if let Some(standby) = taken {
            self.metrics.synthesis_standby_vms(0);
            self.discard_synthesis_standby(standby, false).await;
        }
    }
}
