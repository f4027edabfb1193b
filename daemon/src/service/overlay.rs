//! Overlay sessions: resume the base on a copy-on-write disk, customize it, save it, and
//! encode the difference into an overlay file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloudlet_api::{
    CreateOverlay, Overlay, ResourceState, ScriptLineResult, Session, SessionKind, SessionState,
};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use super::base::{check_ports, run_script};
use super::stream_restore::{broke_the_stream, Outcome};
use super::stream_save::{SaveEnd, SaveTail, StreamedSave};
use super::{blocking, Caller, ServiceError, StepTimer};
use crate::config::StreamMode;
use crate::store::bases::BaseRecord;
use crate::store::overlays::OverlayRecord;
use crate::store::sessions::SessionRecord;
use crate::virt::{forward_port, resume_xml, Console, Discard, SessionSpec};
use crate::AppState;
use cloudlet_engine::base::{stream_base_save_file, write_base_save_file, Base, BasePaths};
use cloudlet_engine::chunk::ImageKind;
use cloudlet_engine::disk::DiskSource;
use cloudlet_engine::encode::{encode, encode_streamed, EncodeInput, EncodeOptions, EncodeSummary};

const RESUME_TIMEOUT: Duration = Duration::from_secs(120);

/// Free page reporting hands memory freed in the guest to QEMU in batches, about 2 s after
/// it was freed (the kernel's PAGE_REPORTING_DELAY); the save must come after that.
const REPORTING_SETTLE: Duration = Duration::from_secs(4);
/// One guest preparation command (`fstrim`, dropping caches) before the save.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);
const PREPARE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OverlayParams {
    disk_only: bool,
    guest_ports: Vec<u16>,
    /// Sessions recorded by an older daemon lack these.
    #[serde(default)]
    fstrim: bool,
    #[serde(default)]
    drop_caches: bool,
}

impl OverlayParams {
    /// Guest commands run right before the save, in order: trim first (it reads file
    /// system metadata), then drop the page cache that reading filled.
    fn before_save(&self) -> Vec<&'static str> {
        let mut commands = Vec::new();
        if self.fstrim {
            // util-linux trims every mounted file system; busybox's fstrim takes one.
            commands.push("sync; fstrim -a 2>/dev/null || fstrim /");
        }
        if self.drop_caches {
            // Free page reporting skips free blocks below its order (2 MiB by default): at
            // 4 KiB, freed memory scattered in small blocks is handed back too.
            commands.push(
                "echo 0 > /sys/module/page_reporting/parameters/page_reporting_order 2>/dev/null; \
                 sync; echo 3 > /proc/sys/vm/drop_caches",
            );
        }
        commands
    }
}

/// The base's files as the engine names them.
pub(crate) fn base_paths(base: &BaseRecord) -> BasePaths {
    BasePaths::in_dir(Path::new(&base.dir))
}

/// Opens a base's engine view on the blocking pool.
pub(crate) async fn open_base(base: &BaseRecord) -> Result<Base, ServiceError> {
    let paths = base_paths(base);
    blocking(move || Base::open(&paths).map_err(|e| ServiceError::failed("opening the base", e)))
        .await
}

/// Guest ports of a base plus extra ones, sorted, unique.
pub(crate) fn merge_ports(base: &BaseRecord, extra: &[u16]) -> Vec<u16> {
    let mut ports: Vec<u16> = base.guest_ports.0.iter().chain(extra).copied().collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

impl AppState {
    /// Starts an overlay session.
    pub async fn create_overlay(
        &self,
        caller: &Caller,
        req: CreateOverlay,
    ) -> Result<Session, ServiceError> {
        check_ports(&req.guest_ports)?;
        if req.fstrim && req.no_trim {
            return Err(ServiceError::InvalidRequest(
                "fstrim needs TRIM passed through to the overlay disk: not with no_trim".into(),
            ));
        }
        let base = self.resolve_base(&req.base).await?;
        if base.memory_pages == 0 {
            return Err(ServiceError::InvalidRequest(format!(
                "base `{}` has no memory snapshot to resume",
                base.name
            )));
        }
        let discard = if req.no_trim {
            Discard::Ignore
        } else {
            Discard::Unmap
        };
        // A warm standby of this base (service::standby) is this session's VM, if one is
        // ready and was made for the same disk options.
        let standby = match discard {
            Discard::Unmap => self.take_standby(&base.id).await,
            _ => None,
        };
        let (mut session, dir) = match &standby {
            Some(s) => s.session(caller),
            None => self.new_session_with_dir(SessionKind::Overlay, &base.id, caller)?,
        };
        let vm = session.vm_name.clone().unwrap_or_default();
        let ports = merge_ports(&base, &req.guest_ports);
        session.params = Json(
            serde_json::to_value(OverlayParams {
                disk_only: req.disk_only,
                guest_ports: ports.clone(),
                fstrim: req.fstrim,
                drop_caches: req.drop_caches,
            })
            .map_err(|e| ServiceError::failed("recording the session's parameters", e))?,
        );
        self.store.insert_session(&session).await?;

        let mut timer = StepTimer::default();
        let result = async {
            let console_path = dir.join("console.sock");
            let resumed = match standby {
                Some(standby) => {
                    // Announced only here: a cold start's watchers see prepare and resume.
                    let started = StepTimer::begin("resume_standby");
                    match self.resume_standby(standby).await {
                        Ok(()) => {
                            timer.record("resume_standby", started);
                            true
                        }
                        // Its VM died or was destroyed meanwhile: the session restores the
                        // base itself, in the standby's directory.
                        Err(e) => {
                            tracing::warn!(error = %super::chain(&e), "the standby VM did not resume; restoring the base");
                            false
                        }
                    }
                }
                None => false,
            };
            if !resumed {
                self.restore_base(&base, &dir, &vm, (discard, false), &mut timer)
                    .await?;
            }
            session.console_path = Some(console_path.display().to_string());
            session.vnc_port = self.hv.vnc_port(&vm).await.ok().flatten().map(i64::from);
            let started = StepTimer::begin("ports");
            for port in &ports {
                let host =
                    forward_port(&self.hv, &vm, self.config.effective_ports_address(), *port)
                        .await?;
                session.host_ports.0.insert(*port, host);
            }
            timer.record("ports", started);
            session.advance(SessionState::Running)?;
            timer.merge_into(&mut session);
            self.store.update_session(&session).await?;
            if !req.script.is_empty() || req.script_text.is_some() {
                // Timed: a base saved before its console shell was up makes this wait
                // for getty and login after every resume (seconds, not milliseconds).
                let started = StepTimer::begin("console");
                let mut console = Console::connect(&console_path, RESUME_TIMEOUT).await?;
                console.wait_ready(RESUME_TIMEOUT).await?;
                timer.record("console", started);
                run_script(
                    &mut console,
                    req.script_text.as_deref(),
                    &req.script,
                    &mut session,
                )
                .await?;
            }
            Ok(())
        }
        .await;
        self.settle_start(&mut session, &timer, result).await?;
        if req.finish {
            return Ok(Session::from(
                &self.finish_session_record(&session.id).await?,
            ));
        }
        Ok(Session::from(&session))
    }

    /// Restores `base`'s snapshot as VM `vm` of session directory `dir` (its copy-on-write
    /// disk made here, discarding as `discard` says), left running or `paused`. The
    /// memory goes straight into the restore through a FIFO when it can (step
    /// `resume_stream`), else into a save file that is restored next (`prepare`, then
    /// `resume`).
    pub(crate) async fn restore_base(
        &self,
        base: &BaseRecord,
        dir: &Path,
        vm: &str,
        (discard, paused): (Discard, bool),
        timer: &mut StepTimer,
    ) -> Result<(), ServiceError> {
        let started = StepTimer::begin("prepare");
        let engine_base = open_base(base).await?;
        let disk = dir.join("disk.qcow2");
        let console_path = dir.join("console.sock");
        create_cow_disk(&base_paths(base).disk, &disk).await?;
        let resume = dir.join("resume.save");
        let (stream, opener) = self.streamed_restore(base, dir, vm, paused)?.unzip();
        let streamed = {
            let spec = self.session_spec(base, vm, &disk, &console_path, Some(discard));
            let resume = resume.clone();
            blocking(move || {
                let xml = base_resume_xml(&engine_base, &spec)?;
                let writing = |e| ServiceError::failed("writing the base snapshot", e);
                let opened = match opener {
                    Some(open) => {
                        open().map_err(|e| ServiceError::failed("opening the restore stream", e))?
                    }
                    None => None,
                };
                match opened {
                    Some(out) => {
                        stream_base_save_file(&engine_base, out, Some(&xml)).map_err(writing)?;
                        Ok(true)
                    }
                    None => {
                        write_base_save_file(&engine_base, &resume, Some(&xml)).map_err(writing)?;
                        Ok(false)
                    }
                }
            })
            .await
        };
        if matches!(streamed, Ok(true)) {
            timer.record("prepare", started);
        }
        let restored = match stream {
            Some(s) => {
                if matches!(streamed, Ok(true)) {
                    StepTimer::begin("resume_stream");
                }
                s.outcome().await
            }
            None => Outcome::NotStreamed,
        };
        match (streamed, restored) {
            // A stream whose reader went away is explained by the restore's error.
            (Err(e), Outcome::Finished(Err(v), _)) if broke_the_stream(&e) => {
                tracing::warn!(error = %super::chain(&e), "base snapshot stopped: the restore failed");
                Err(v.into())
            }
            (Err(e), _) => Err(e),
            (Ok(_), Outcome::Finished(result, took)) => {
                result?;
                timer.record_took("resume_stream", took);
                Ok(())
            }
            (Ok(_), Outcome::NotStreamed) => {
                timer.record("prepare", started);
                self.give_vm_its_files(base, dir)?;
                let restoring = if paused {
                    self.hv.restore_paused(&resume).await
                } else {
                    timer.time("resume", self.hv.restore(&resume)).await
                };
                let _ = std::fs::remove_file(&resume); // QEMU has loaded it (or failed)
                Ok(restoring?)
            }
        }
    }

    /// Saves the customized VM and encodes the overlay. `Some` when the overlay is done
    /// while libvirt is still stopping the saved VM: the caller waits for that before
    /// removing the VM's files.
    pub(crate) async fn finish_overlay(
        &self,
        session: &mut SessionRecord,
    ) -> Result<Option<SaveTail>, ServiceError> {
        let params: OverlayParams = super::session::session_params(session)?;
        let base_id = session
            .base_id
            .clone()
            .ok_or_else(|| ServiceError::Bug("overlay session without base".into()))?;
        let base = self.store.base(&base_id).await?;
        let dir = PathBuf::from(session.run_dir.clone().unwrap_or_default());
        let save = dir.join("custom.save");
        let mut timer = StepTimer::default();
        let commands = params.before_save();
        if !commands.is_empty() {
            let started = StepTimer::begin("prepare_save");
            self.prepare_guest_for_save(session, &commands).await;
            if params.drop_caches {
                tokio::time::sleep(REPORTING_SETTLE).await;
            }
            timer.record("prepare_save", started);
        }
        let overlay_id = crate::store::new_id();
        let out = self.data.overlay_file(&overlay_id);
        let engine_base = std::sync::Arc::new(open_base(&base).await?);
        let options = EncodeOptions {
            zstd_level: self.config.zstd_level,
            threads: self.config.threads,
            properties: vec![(
                "guest-ports".into(),
                params
                    .guest_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )],
        };
        let base_disk = base_paths(&base).disk;
        let customized_disk = dir.join("disk.qcow2");
        let mut streamed = None;
        if !params.disk_only && self.config.save_stream != StreamMode::Off {
            streamed = self
                .save_and_encode_streamed(
                    session,
                    (&engine_base, &base_disk, &customized_disk),
                    (&out, &options),
                    &mut timer,
                )
                .await?;
        }
        let (summary, started, stopping) = match streamed {
            Some(done) => done,
            None => {
                if session.state() == SessionState::Saving {
                    // A streamed save that failed with the VM still running: save it
                    // to a file.
                    let vm = session.vm_name.clone().unwrap_or_default();
                    timer.time("save", self.hv.save(&vm, &save)).await?;
                    session.advance(SessionState::Encoding)?;
                    self.store.update_session(session).await?;
                } else {
                    self.save_session_vm(session, &save, &mut timer).await?;
                }
                let started = StepTimer::begin("encode");
                let (out, disk_only) = (out.clone(), params.disk_only);
                let reporter = super::progress::engine_reporter();
                let summary = blocking(move || {
                    let disk = DiskSource::qcow2(&customized_disk, &base_disk)
                        .map_err(|e| ServiceError::failed("reading the customized disk", e))?;
                    let input = EncodeInput {
                        memory: (!disk_only).then_some(save.as_path()),
                        disk: &disk,
                    };
                    encode(&engine_base, &input, &out, &options, &reporter)
                        .map_err(|e| ServiceError::failed("encoding the overlay", e))
                })
                .await?;
                timer.record("encode", started);
                (summary, started, None)
            }
        };
        let info = summary.meta.info(summary.file_size);
        let mut stats = serde_json::to_value(&info)
            .map_err(|e| ServiceError::failed("recording statistics", e))?;
        if let Some(obj) = stats.as_object_mut() {
            obj.insert("encode_ms".into(), serde_json::json!(timer_ms(started)));
        }
        let record = OverlayRecord {
            id: overlay_id.clone(),
            base_id: base.id.clone(),
            name: None,
            state: ResourceState::Ready,
            file_path: out.display().to_string(),
            file_size: i64::try_from(summary.file_size).unwrap_or(i64::MAX),
            disk_only: params.disk_only,
            modified_memory_pages: i64::try_from(summary.meta.counts(ImageKind::Memory).modified())
                .unwrap_or(0),
            modified_disk_chunks: i64::try_from(summary.meta.counts(ImageKind::Disk).modified())
                .unwrap_or(0),
            stats: Json(stats),
            guest_ports: Json(params.guest_ports.clone()),
            session_id: Some(session.id.clone()),
            created_at: crate::store::now_rfc3339(),
            // The overlay is its session's owner's: a device downloads what it made.
            owner_token: session.owner_token.clone(),
        };
        if let Err(e) = self.store.insert_overlay(&record).await {
            let _ = std::fs::remove_file(&out);
            return Err(e.into());
        }
        session.overlay_id = Some(overlay_id);
        timer.merge_into(session);
        Ok(stopping)
    }

    /// Saves the session's VM into a FIFO and encodes the overlay from it as it is written
    /// (see `stream_save`). `None`, with the session `saving` and its VM still running,
    /// when the save failed and `save_stream = auto`: the caller saves to a file instead.
    /// With the overlay: when the encode began, and the save's end if libvirt is still
    /// stopping the VM.
    async fn save_and_encode_streamed(
        &self,
        session: &mut SessionRecord,
        (engine_base, base_disk, customized_disk): (&std::sync::Arc<Base>, &Path, &Path),
        (out, options): (&Path, &EncodeOptions),
        timer: &mut StepTimer,
    ) -> Result<Option<(EncodeSummary, std::time::Instant, Option<SaveTail>)>, ServiceError> {
        let required = self.config.save_stream == StreamMode::On;
        let vm = session.vm_name.clone().unwrap_or_default();
        let dir = PathBuf::from(session.run_dir.clone().unwrap_or_default());
        session.advance(SessionState::Saving)?;
        self.store.update_session(session).await?;
        let stall_limit = std::time::Duration::from_secs(self.config.stream_stall_timeout_s);
        let saving = match StreamedSave::start(&self.hv, &vm, &dir, stall_limit) {
            Ok(saving) => saving,
            Err(e) if required => return Err(ServiceError::failed("making the save's FIFO", e)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the save's FIFO; saving to a file");
                return Ok(None);
            }
        };
        // Both steps start now and overlap (progress watchers see both begin).
        StepTimer::begin("save_stream");
        let started = StepTimer::begin("encode");
        let work = {
            let mut reader = saving.reader();
            let (engine_base, base_disk, disk) = (
                engine_base.clone(),
                base_disk.to_path_buf(),
                customized_disk.to_path_buf(),
            );
            let (out, options) = (out.to_path_buf(), options.clone());
            let reporter = super::progress::engine_reporter();
            blocking(move || {
                // The disk is opened once the memory stream ended: QEMU has flushed it by
                // then (before its last section).
                encode_streamed(
                    &engine_base,
                    &mut reader,
                    "save stream",
                    || DiskSource::qcow2(&disk, &base_disk),
                    &out,
                    &options,
                    &reporter,
                )
                .map_err(|e| ServiceError::failed("encoding the overlay", e))
            })
        };
        // The encode goes on after the save returned (the disk, the overlay's end): the
        // session says `encoding` meanwhile.
        let (saved_early, mut heard) = tokio::sync::oneshot::channel();
        let finishing = saving.finish(work, saved_early);
        tokio::pin!(finishing);
        let mut listening = true;
        let (encoded, save_end) = loop {
            tokio::select! {
                out = &mut finishing => break out,
                said = &mut heard, if listening => {
                    listening = false; // a oneshot answers once (or never: dropped)
                    if said.is_ok() && session.advance(SessionState::Encoding).is_ok() {
                        if let Err(e) = self.store.update_session(session).await {
                            tracing::warn!(error = %e, "recording the session's encoding state");
                        }
                    }
                }
            }
        };
        // libvirt marked the save complete, or the save returned.
        let (saved, save_took, stopping) = match save_end {
            SaveEnd::Stopping(took, tail) => (Ok(()), took, Some(tail)),
            SaveEnd::Returned(result, took) => (result, took, None),
        };
        match (encoded, saved) {
            (Ok(summary), Ok(())) => {
                tracing::debug!(
                    memory_ms = summary.memory_time.as_millis(),
                    disk_ms = summary.disk_time.as_millis(),
                    finish_ms = summary.finish_time.as_millis(),
                    "save stream: encode steps"
                );
                timer.record_took("save_stream", save_took);
                timer.record("encode", started);
                if session.state() == SessionState::Saving {
                    session.advance(SessionState::Encoding)?;
                    self.store.update_session(session).await?;
                }
                Ok(Some((summary, started, stopping)))
            }
            // The save failed, so libvirt resumed the VM: nothing is lost yet.
            (encoded, Err(e)) => {
                match &encoded {
                    // No row will name it: the file path writes its own, or none is made.
                    Ok(_) => {
                        let _ = std::fs::remove_file(out);
                    }
                    Err(encode) => {
                        tracing::debug!(error = %super::chain(encode), "encode stopped with the save");
                    }
                }
                if required || !self.hv.is_running(&vm).await.unwrap_or(false) {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "saving into a FIFO failed; saving to a file");
                Ok(None)
            }
            // The VM is saved (gone, or going: the failed session's teardown waits for
            // libvirt) and the stream read, but not encoded.
            (Err(e), Ok(())) => Err(e),
        }
    }

    /// Runs the commands that make the saved VM smaller. They only shrink the overlay, so
    /// a failure is recorded in the session's script results and logged, and the save goes
    /// on: the overlay is still correct, only bigger.
    async fn prepare_guest_for_save(&self, session: &mut SessionRecord, commands: &[&str]) {
        let Some(path) = session.console_path.clone() else {
            return;
        };
        let mut console = match Console::connect(Path::new(&path), PREPARE_CONNECT_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "cannot prepare the guest for the save");
                session.script_results.0.push(ScriptLineResult {
                    command: commands.join("; "),
                    output: format!("not run: {e}"),
                    status: -1,
                });
                return;
            }
        };
        for command in commands {
            let (output, status) = match console.run(command, PREPARE_TIMEOUT).await {
                Ok(out) => (out.output, out.status),
                Err(e) => (format!("not finished: {e}"), -1),
            };
            if status != 0 {
                tracing::warn!(session = %session.id, command, status, "guest preparation for the save failed");
            }
            session.script_results.0.push(ScriptLineResult {
                command: (*command).to_string(),
                output,
                status,
            });
        }
    }

    /// Deletes an overlay and its file.
    pub async fn delete_overlay(&self, id: &str) -> Result<Overlay, ServiceError> {
        let overlay = self.ready_overlay(id).await?;
        self.remove_overlay(&overlay).await?;
        Ok(Overlay::from(&overlay))
    }

    /// Removes an overlay's row and file (marked `deleting` first, so that a crash in
    /// between is finished by reconciliation).
    pub(crate) async fn remove_overlay(&self, overlay: &OverlayRecord) -> Result<(), ServiceError> {
        let id = &overlay.id;
        self.store
            .set_overlay_state(id, ResourceState::Deleting)
            .await?;
        if let Err(e) = std::fs::remove_file(&overlay.file_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(ServiceError::failed("removing the overlay file", e));
            }
        }
        self.store.delete_overlay(id).await?;
        Ok(())
    }
}

fn timer_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A fresh random UUID for a domain (each session's VM gets its own, so that several can
/// run from one base at once).
pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl AppState {
    /// What the daemon decides of a session VM built from `base`: its name, a fresh UUID,
    /// this daemon's domain type, the session's qcow2 disk and console socket, the base's
    /// boot files, and the disk's discard mode (`None`: as saved).
    pub(crate) fn session_spec(
        &self,
        base: &BaseRecord,
        vm: &str,
        disk: &Path,
        console_socket: &Path,
        discard: Option<Discard>,
    ) -> SessionSpec {
        let (kernel, initrd) = base_boot_files(Path::new(&base.dir));
        // The session directory's owner is the VM's uid (see crate::confine).
        let identity = disk.parent().and_then(|dir| self.confine.identity_of(dir));
        SessionSpec {
            name: vm.to_string(),
            uuid: new_uuid(),
            domain_type: self.config.domain_type,
            disk: disk.to_path_buf(),
            disk_format: "qcow2".into(),
            discard,
            console_socket: console_socket.to_path_buf(),
            kernel,
            initrd,
            identity,
        }
    }

    /// Right before a session VM on `base` starts: every VM may read the base (made or
    /// imported before confinement, it is root's only), and this one gets its files.
    pub(crate) fn give_vm_its_files(
        &self,
        base: &BaseRecord,
        dir: &Path,
    ) -> Result<(), ServiceError> {
        self.confine.share_base(Path::new(&base.dir))?;
        self.confine.hand_over(dir)?;
        Ok(())
    }
}

/// The base's copies of its direct-boot kernel and initramfs, those it has: a VM built
/// from the base boots (or resumes with) these, whatever path a domain XML names.
pub(crate) fn base_boot_files(base_dir: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let file = |name: &str| Some(base_dir.join(name)).filter(|p| p.is_file());
    (file("vmlinuz"), file("initrd.img"))
}

/// The definition of a VM resuming `base`'s snapshot as `spec` says. A base's XML may
/// come from an imported archive or a user's save file: the daemon builds the
/// definition, the saved XML lends values.
pub(crate) fn base_resume_xml(base: &Base, spec: &SessionSpec) -> Result<String, ServiceError> {
    let layout = base
        .memory_layout()
        .ok_or_else(|| ServiceError::InvalidRequest("base has no memory".into()))?;
    let saved = layout
        .domain_xml()
        .map_err(|e| ServiceError::failed("reading the base's domain XML", e))?;
    Ok(resume_xml(saved, layout.cookie(), spec)?)
}

/// `qemu-img create -f qcow2 -b BASE -F raw DISK`: the copy-on-write disk a resumed base
/// writes to.
pub(crate) async fn create_cow_disk(base_disk: &Path, disk: &Path) -> Result<(), ServiceError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base_disk)
        .arg(disk)
        .output()
        .await
        .map_err(|e| ServiceError::failed("running qemu-img", e))?;
    if !out.status.success() {
        return Err(ServiceError::failed(
            "creating the copy-on-write disk",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_files_are_the_bases_own_when_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        assert_eq!(
            base_boot_files(dir.path()),
            (Some(dir.path().join("vmlinuz")), None)
        );
    }
}
