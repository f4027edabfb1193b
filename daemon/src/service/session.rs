//! Sessions: the VM of a base, overlay or synthesis session, and its life cycle. The
//! states and their legal changes are `cloudlet_api::SessionState`'s (one table, checked
//! by [`SessionRecord::advance`]); a failure destroys the VM and removes the work files.

use std::path::Path;
use std::time::Duration;

use cloudlet_api::{RunRequest, RunResponse, Session, SessionKind, SessionState};

use super::{Caller, ServiceError, StepTimer};
use crate::store::sessions::SessionRecord;
use crate::virt::{CommandOutput, Console};
use crate::AppState;

const CONSOLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`AppState::adopt_running_vms`] found at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Running sessions whose VM was alive: kept running.
    pub adopted: u64,
    /// Running sessions whose VM was gone: failed.
    pub failed: u64,
    /// VMs of sessions a restart interrupted: destroyed.
    pub destroyed: u64,
    /// `cloudlet-*` VMs without a session row here: left alone.
    pub foreign: u64,
    /// Standby VMs of the previous run (`overlay_standby`): destroyed.
    pub standbys_destroyed: u64,
}

/// The flow-specific parameters a session stored when it started.
pub(crate) fn session_params<T: serde::de::DeserializeOwned>(
    session: &SessionRecord,
) -> Result<T, ServiceError> {
    serde_json::from_value(session.params.0.clone())
        .map_err(|e| ServiceError::failed("reading the session's parameters", e))
}

impl AppState {
    /// A new session of `kind` on `base_id`, owned by `owner`, with its own work directory (created; recorded
    /// as `run_dir`). Not yet stored: callers fill in their parameters first.
    pub(crate) fn new_session_with_dir(
        &self,
        kind: SessionKind,
        base_id: &str,
        owner: &Caller,
    ) -> Result<(SessionRecord, std::path::PathBuf), ServiceError> {
        let mut session = SessionRecord::new(kind, Some(base_id.to_string()));
        session.owner_token = owner.owner();
        let dir = self.data.session_dir(&session.id);
        // Owned by the VM's own uid when confined (see crate::confine).
        self.confine.create_vm_dir(&dir)?;
        session.run_dir = Some(dir.display().to_string());
        Ok((session, dir))
    }

    /// Saves a base or overlay session's VM to `path` (the VM stops), recording the state
    /// changes and the step's time; the session is then `encoding`.
    pub(crate) async fn save_session_vm(
        &self,
        session: &mut SessionRecord,
        path: &Path,
        timer: &mut StepTimer,
    ) -> Result<(), ServiceError> {
        let vm = session.vm_name.clone().unwrap_or_default();
        session.advance(SessionState::Saving)?;
        self.store.update_session(session).await?;
        timer.time("save", self.hv.save(&vm, path)).await?;
        session.advance(SessionState::Encoding)?;
        self.store.update_session(session).await?;
        Ok(())
    }

    /// After the starting steps of a session: on error, undo everything and record why.
    pub(crate) async fn settle_start(
        &self,
        session: &mut SessionRecord,
        timer: &StepTimer,
        result: Result<(), ServiceError>,
    ) -> Result<(), ServiceError> {
        timer.merge_into(session);
        match result {
            Ok(()) => {
                self.store.update_session(session).await?;
                Ok(())
            }
            Err(e) => {
                self.fail_session(session, &e).await;
                Err(e)
            }
        }
    }

    /// Marks a session failed: destroys its VM and removes its work files.
    pub(crate) async fn fail_session(&self, session: &mut SessionRecord, error: &ServiceError) {
        let message = error.session_message();
        tracing::warn!(session = %session.id, error = %super::chain(error), "session failed");
        self.teardown(session).await;
        if let Err(e) = session.advance(SessionState::Failed) {
            tracing::error!(session = %session.id, error = %e, "session cannot be marked failed");
            return;
        }
        session.error = Some(message);
        if let Err(e) = self.store.update_session(session).await {
            tracing::error!(session = %session.id, error = %e, "cannot record failed session");
        }
    }

    /// Destroys the session's VM and removes its directory (unless the directory became a
    /// base).
    async fn teardown(&self, session: &SessionRecord) {
        if let Some(vm) = &session.vm_name {
            if let Err(e) = self.hv.destroy(vm).await {
                tracing::warn!(vm, error = %e, "cannot destroy VM");
            }
        }
        if let Some(dir) = &session.run_dir {
            let owned_by_base = match &session.base_id {
                Some(id) if session.kind == SessionKind::Base => self.store.base(id).await.is_ok(),
                _ => false,
            };
            if !owned_by_base {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Finishes a base or overlay session: save the VM, build the base or overlay.
    pub async fn finish_session(&self, caller: &Caller, id: &str) -> Result<Session, ServiceError> {
        self.session_for(caller, id).await?;
        Ok(Session::from(&self.finish_session_record(id).await?))
    }

    pub(crate) async fn finish_session_record(
        &self,
        id: &str,
    ) -> Result<SessionRecord, ServiceError> {
        let mut session = self.session_record(id).await?;
        if session.kind == SessionKind::Synthesis {
            return Err(ServiceError::InvalidRequest(
                "a synthesis session is stopped, not finished".into(),
            ));
        }
        if session.state() != SessionState::Running {
            return Err(ServiceError::Conflict(format!(
                "session {id} is {}, not running",
                session.state()
            )));
        }
        let result = match session.kind {
            SessionKind::Base => self.finish_base(&mut session).await.map(|()| None),
            _ => self.finish_overlay(&mut session).await,
        };
        match result {
            Ok(stopping) => {
                let recorded = self.record_finished(&mut session).await;
                match stopping {
                    // The overlay is ready; libvirt is still stopping the saved VM (it
                    // polls QEMU's exit every 200 ms): its files go once it is gone.
                    Some(tail) => {
                        let (state, done) = (self.clone(), session.clone());
                        tokio::spawn(async move {
                            let (result, took) = tail.wait().await;
                            match result {
                                Ok(()) => tracing::debug!(
                                    session = %done.id,
                                    save_ms = took.as_millis(),
                                    "the saved VM is stopped"
                                ),
                                Err(e) => tracing::warn!(
                                    session = %done.id,
                                    error = %super::chain(&e),
                                    "the save was complete, but its call failed"
                                ),
                            }
                            state.after_finish(&done);
                        });
                    }
                    None => self.after_finish(&session),
                }
                recorded.map(|()| session)
            }
            Err(e) => {
                self.after_session(&session);
                self.fail_session(&mut session, &e).await;
                Err(e)
            }
        }
    }

    /// Marks a session finished.
    async fn record_finished(&self, session: &mut SessionRecord) -> Result<(), ServiceError> {
        session.advance(SessionState::Finished)?;
        self.store.update_session(session).await?;
        Ok(())
    }

    /// A finished session's VM is gone (saved): its scratch files go too, unless they are
    /// the base, and the standby of its kind is made.
    fn after_finish(&self, session: &SessionRecord) {
        if session.kind == SessionKind::Overlay {
            if let Some(dir) = &session.run_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        self.after_session(session);
    }

    /// Stops a session `caller` may reach (see [`Self::stop_session_record`]).
    pub async fn stop_session(&self, caller: &Caller, id: &str) -> Result<Session, ServiceError> {
        self.stop_session_record(self.session_for(caller, id).await?)
            .await
    }

    /// Stops a session: destroys its VM and removes its files (a base being created is
    /// abandoned). Stopping a session that is over is a no-op.
    pub(crate) async fn stop_session_record(
        &self,
        mut session: SessionRecord,
    ) -> Result<Session, ServiceError> {
        if session.state().is_final() {
            return Ok(Session::from(&session));
        }
        session.advance(SessionState::Stopping)?;
        self.store.update_session(&session).await?;
        self.teardown(&session).await;
        session.advance(SessionState::Stopped)?;
        self.store.update_session(&session).await?;
        self.after_session(&session);
        Ok(Session::from(&session))
    }

    /// An overlay or synthesis session's VM is gone (saved or destroyed): the standby of
    /// its kind for its base is made now, while the machine is idle, not when the next
    /// session starts.
    pub(crate) fn after_session(&self, session: &SessionRecord) {
        if let Some(base_id) = &session.base_id {
            self.refill_standby_for(session.kind, base_id);
        }
    }

    /// Runs a shell line, or a multi-line script as one unit, in a running session's guest
    /// over its serial console.
    pub async fn run_in_session(
        &self,
        caller: &Caller,
        id: &str,
        req: RunRequest,
    ) -> Result<RunResponse, ServiceError> {
        let timeout = Duration::from_secs(req.timeout_s.unwrap_or(60).clamp(1, 3600));
        let session = self.session_for(caller, id).await?;
        if session.state() != SessionState::Running {
            return Err(ServiceError::Conflict(format!(
                "session {id} is {}, not running",
                session.state()
            )));
        }
        let path = session
            .console_path
            .as_deref()
            .ok_or_else(|| ServiceError::Conflict("session has no console".into()))?;
        let mut console = Console::connect(Path::new(path), CONSOLE_CONNECT_TIMEOUT).await?;
        let command = req.command.trim_end_matches('\n');
        let CommandOutput { output, status } = if command.contains('\n') {
            console.run_script(command, timeout).await?
        } else {
            console.run(command, timeout).await?
        };
        Ok(RunResponse { output, status })
    }

    /// After a restart: re-adopts the VMs of sessions that were running (they ran on
    /// without the daemon: their forwarded ports live in QEMU, their console socket and
    /// files are where the session row says), fails running sessions whose VM is gone,
    /// and destroys the VMs of sessions that reconciliation failed (caught mid-transition).
    /// A `cloudlet-*` VM without a session row is reported and left alone: it may belong to
    /// another daemon on this host.
    pub async fn adopt_running_vms(&self) -> Result<Adoption, ServiceError> {
        let mut adoption = Adoption {
            // First, so that their VMs are not counted as foreign below.
            standbys_destroyed: self.destroy_left_standbys().await?,
            ..Adoption::default()
        };
        let alive = self.hv.list_with_prefix("cloudlet-").await?;
        for mut session in self.store.active_sessions().await? {
            let vm = session.vm_name.clone().unwrap_or_default();
            if session.state() == SessionState::Running && alive.contains(&vm) {
                tracing::info!(session = %session.id, vm, "re-adopted a running VM");
                adoption.adopted += 1;
                continue;
            }
            let gone =
                ServiceError::Conflict(format!("its VM {vm} was gone when the daemon restarted"));
            self.fail_session(&mut session, &gone).await;
            adoption.failed += 1;
        }
        for vm in &alive {
            let session_id = vm.trim_start_matches("cloudlet-");
            match self.store.session(session_id).await {
                Ok(s) if s.state() == SessionState::Failed => {
                    if self.hv.destroy(vm).await.unwrap_or(false) {
                        tracing::warn!(vm, "destroyed the VM of a session a restart interrupted");
                        adoption.destroyed += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(vm, "a cloudlet VM without a session here: left alone");
                    adoption.foreign += 1;
                }
            }
        }
        Ok(adoption)
    }
}
