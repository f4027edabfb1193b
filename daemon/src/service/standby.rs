//! Warm standby for overlay sessions (`overlay_standby`): after an overlay session on a
//! base ends, that base's snapshot is restored again, paused, as the VM of the next
//! session (its directory, copy-on-write disk, console socket and uid ready). The next
//! overlay session on that base then starts with a resume instead of a restore.
//!
//! A restore costs the same whichever way the memory reaches QEMU (file or stream): QEMU
//! starts and loads every non-zero page. Only a VM restored ahead of time takes that off
//! the session's start. One standby at most (the base used last), so the cost is bounded:
//! one paused VM, about the base snapshot's non-zero pages in host memory.
//!
//! Rows in the `standbys` table let a restarted daemon find and destroy the VM of a
//! standby the previous run left (its directory, which no session row owns, is removed
//! by the startup repair).

use std::path::PathBuf;
use std::time::Duration;

use cloudlet_api::{ResourceState, SessionKind};

use super::{Caller, ServiceError, StepTimer};
use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::store::standbys::StandbyRecord;
use crate::virt::Discard;
use crate::AppState;
use cloudlet_engine::chunk::CHUNK_SIZE_BYTES;

/// Longest a session start waits for a standby being made (it is then nearly ready, and
/// beats a restore of its own); past it the session restores the base itself.
const TAKE_WAIT: Duration = Duration::from_secs(5);

/// A paused VM of a base, ready to be the next overlay session's.
#[derive(Debug)]
pub struct Standby {
    record: StandbyRecord,
    dir: PathBuf,
}

impl Standby {
    /// The session this standby becomes, owned by `owner`: its id, VM and directory are
    /// the standby's.
    pub(crate) fn session(&self, owner: &Caller) -> (SessionRecord, PathBuf) {
        let mut session =
            SessionRecord::new(SessionKind::Overlay, Some(self.record.base_id.clone()));
        session.id.clone_from(&self.record.id);
        session.vm_name = Some(self.record.vm_name.clone());
        session.run_dir = Some(self.dir.display().to_string());
        session.owner_token = owner.owner();
        (session, self.dir.clone())
    }
}

impl AppState {
    /// The standby of base `base_id`, taken (a standby being made for it is waited for,
    /// up to [`TAKE_WAIT`]); `None` when `overlay_standby` is off or there is none.
    pub(crate) async fn take_standby(&self, base_id: &str) -> Option<Standby> {
        if !self.config.overlay_standby {
            return None;
        }
        let mut slot = tokio::time::timeout(TAKE_WAIT, self.standby.lock())
            .await
            .ok()?;
        let taken = slot.take_if(|s| s.record.base_id == base_id);
        if taken.is_some() {
            self.metrics.standby_vms(0);
        }
        taken
    }

    /// Runs a taken standby's VM: it is its session's from now on (the caller stored the
    /// session row). On failure the VM is destroyed; its directory stays the session's.
    pub(crate) async fn resume_standby(&self, standby: Standby) -> Result<(), ServiceError> {
        let resumed = self.hv.resume(&standby.record.vm_name).await;
        if resumed.is_err() {
            let _ = self.hv.destroy(&standby.record.vm_name).await;
        }
        if let Err(e) = self.store.delete_standby(&standby.record.id).await {
            tracing::warn!(error = %e, "forgetting a taken standby");
        }
        Ok(resumed?)
    }

    /// Makes the standby of sessions of `kind` (overlay or synthesis) for `base_id` in
    /// the background, when its setting is on.
    pub(crate) fn refill_standby_for(&self, kind: SessionKind, base_id: &str) {
        match kind {
            SessionKind::Overlay => self.refill_standby(base_id),
            SessionKind::Synthesis => self.refill_synthesis_standby(base_id),
            _ => {}
        }
    }

    /// Once the previous run's VMs are reconciled: the standbys (of the settings turned
    /// on) for the bases the newest overlay and synthesis sessions used, so that the
    /// first session after a restart starts warm too.
    pub async fn standbys_after_start(&self) {
        if self.config.overlay_standby || self.config.synthesis_standby {
            tokio::spawn(self.clone().release_standbys_under_pressure());
        }
        self.synthesis_standbys_after_start().await;
        if !self.config.overlay_standby {
            return;
        }
        match self.store.recent_bases_of(SessionKind::Overlay, 1).await {
            Ok(bases) => bases.iter().for_each(|b| self.refill_standby(b)),
            Err(e) => tracing::warn!(error = %e, "cannot find the base of the last session"),
        }
    }

    /// For as long as the daemon runs: every [`PRESSURE_CHECK`], standbys are released
    /// while the host has less memory available than twice the RAM of a standby's base,
    /// the rule they were made under (the oldest synthesis standby first, the overlay
    /// standby last). Memory the sessions need comes before VMs kept for later ones.
    async fn release_standbys_under_pressure(self) {
        let mut tick = tokio::time::interval(PRESSURE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            while let Some(available) = host_mem_available() {
                if !self.release_a_synthesis_standby(available).await
                    && !self.release_the_overlay_standby(available).await
                {
                    break;
                }
            }
        }
    }

    /// Releases the overlay standby if the host has less than twice its base's RAM
    /// `available`; whether it did.
    async fn release_the_overlay_standby(&self, available: u64) -> bool {
        let mut slot = self.standby.lock().await;
        let Some(base_id) = slot.as_ref().map(|s| s.record.base_id.clone()) else {
            return false;
        };
        let ram = match self.store.base(&base_id).await {
            Ok(base) => base_ram_bytes(&base),
            Err(_) => 0,
        };
        if !short_of_memory(available, ram) {
            return false;
        }
        let Some(standby) = slot.take() else {
            return false;
        };
        drop(slot);
        tracing::warn!(
            vm = %standby.record.vm_name,
            available_mib = available >> 20,
            "overlay standby released: the host is short of memory"
        );
        self.metrics.standby_vms(0);
        self.discard(standby).await;
        true
    }

    /// The id of the newest ready base that has a memory snapshot.
    pub(crate) async fn newest_base_with_memory(&self) -> Option<String> {
        let bases = match self.store.bases().await {
            Ok(bases) => bases,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the bases");
                return None;
            }
        };
        bases
            .into_iter()
            .filter(|b| b.state == ResourceState::Ready && b.memory_pages > 0)
            .max_by(|a, b| a.created_at.cmp(&b.created_at))
            .map(|b| b.id)
    }

    /// After an overlay session on `base_id` ended: makes the standby for that base in
    /// the background (replacing one of another base), when `overlay_standby` is on.
    pub(crate) fn refill_standby(&self, base_id: &str) {
        if !self.config.overlay_standby {
            return;
        }
        let (state, base_id) = (self.clone(), base_id.to_string());
        tokio::spawn(async move {
            if let Err(e) = state.make_standby(&base_id).await {
                tracing::warn!(base = %base_id, error = %super::chain(&e), "cannot make a standby VM");
            }
        });
    }

    async fn make_standby(&self, base_id: &str) -> Result<(), ServiceError> {
        // Held while the VM is made: a session start waits for it, a base deletion
        // discards it once it is made.
        let mut slot = self.standby.lock().await;
        if slot.as_ref().is_some_and(|s| s.record.base_id == base_id) {
            return Ok(());
        }
        if let Some(old) = slot.take() {
            self.metrics.standby_vms(0);
            self.discard(old).await;
        }
        let Some((base, record, dir)) = self.new_standby(SessionKind::Overlay, base_id).await?
        else {
            return Ok(());
        };
        if let Err(e) = self.confine.create_vm_dir(&dir) {
            let _ = self.store.delete_standby(&record.id).await;
            return Err(e.into());
        }
        let standby = Standby { record, dir };
        let started = std::time::Instant::now();
        let mut timer = StepTimer::default();
        let made = self
            .restore_base(
                &base,
                &standby.dir,
                &standby.record.vm_name,
                (Discard::Unmap, true),
                &mut timer,
            )
            .await;
        match made {
            Ok(()) => {
                tracing::info!(
                    base = %base.name,
                    vm = %standby.record.vm_name,
                    took_ms = started.elapsed().as_millis(),
                    "standby VM ready for the next overlay session"
                );
                *slot = Some(standby);
                self.metrics.standby_vms(1);
                Ok(())
            }
            Err(e) => {
                self.discard(standby).await;
                Err(e)
            }
        }
    }

    /// The base, row and directory of a new standby for the next session of `kind` on
    /// `base_id`, its row stored; `None` if that base is not ready or has no memory.
    pub(crate) async fn new_standby(
        &self,
        kind: SessionKind,
        base_id: &str,
    ) -> Result<Option<(BaseRecord, StandbyRecord, PathBuf)>, ServiceError> {
        let base = self.store.base(base_id).await?;
        if base.state != ResourceState::Ready || base.memory_pages == 0 {
            return Ok(None);
        }
        let ram = base_ram_bytes(&base);
        if let Some(available) = host_mem_available().filter(|&a| short_of_memory(a, ram)) {
            tracing::info!(
                base = %base.name,
                available_mib = available >> 20,
                ram_mib = ram >> 20,
                "no standby: the host has less memory available than twice the base's RAM"
            );
            return Ok(None);
        }
        // Named like the session it becomes (the id and VM name rules are the sessions').
        let future = SessionRecord::new(kind, Some(base_id.to_string()));
        let record = StandbyRecord {
            id: future.id.clone(),
            base_id: base_id.to_string(),
            vm_name: future.vm_name.clone().unwrap_or_default(),
            created_at: crate::store::now_rfc3339(),
        };
        // Recorded before anything exists, so that a crash from here on is cleaned up.
        self.store.insert_standby(&record).await?;
        let dir = self.data.session_dir(&record.id);
        Ok(Some((base, record, dir)))
    }

    /// Destroys the standbys of base `base_id` (overlay and synthesis), if there are any
    /// (the base is going away).
    pub(crate) async fn discard_standby_of(&self, base_id: &str) {
        self.discard_synthesis_standby_of(Some(base_id)).await;
        let taken = self
            .standby
            .lock()
            .await
            .take_if(|s| s.record.base_id == base_id);
        if let Some(standby) = taken {
            self.metrics.standby_vms(0);
            self.discard(standby).await;
        }
    }

    /// Destroys the standbys, if any (the daemon stops).
    pub async fn discard_standby(&self) {
        self.discard_synthesis_standby_of(None).await;
        let taken = self.standby.lock().await.take();
        if let Some(standby) = taken {
            self.metrics.standby_vms(0);
            self.discard(standby).await;
        }
    }

    async fn discard(&self, standby: Standby) {
        if let Err(e) = self.hv.destroy(&standby.record.vm_name).await {
            tracing::warn!(vm = %standby.record.vm_name, error = %e, "cannot destroy a standby VM");
        }
        let _ = std::fs::remove_dir_all(&standby.dir);
        if let Err(e) = self.store.delete_standby(&standby.record.id).await {
            tracing::warn!(error = %e, "forgetting a standby");
        }
    }

    /// At start: destroys the VMs of the standbys a previous run left; returns how many
    /// there were.
    pub(crate) async fn destroy_left_standbys(&self) -> Result<u64, ServiceError> {
        let left = self.store.standbys().await?;
        for s in &left {
            match self.hv.destroy(&s.vm_name).await {
                Ok(destroyed) => {
                    if destroyed {
                        tracing::info!(vm = %s.vm_name, "destroyed a standby VM of the previous run");
                    }
                    self.store.delete_standby(&s.id).await?;
                }
                // Kept for the next start; the running sessions are still reconciled.
                Err(e) => {
                    tracing::warn!(vm = %s.vm_name, error = %e, "cannot destroy a standby VM of the previous run")
                }
            }
        }
        Ok(left.len() as u64)
    }
}

/// How often the host's available memory is checked against the standbys.
const PRESSURE_CHECK: Duration = Duration::from_secs(5);

/// Whether a host with `available` bytes of memory is too short for a standby of a base
/// with `ram` bytes of RAM. A standby is made and kept only while the host has at least
/// twice the base's RAM available: the standby may come to hold it all (a paused VM
/// resumed, a restore finished), and the sessions it serves need room beside it.
pub(crate) fn short_of_memory(available: u64, ram: u64) -> bool {
    available < ram.saturating_mul(2)
}

/// A base's guest RAM in bytes: the most its standby can come to hold.
pub(crate) fn base_ram_bytes(base: &BaseRecord) -> u64 {
    u64::try_from(base.memory_pages)
        .unwrap_or(0)
        .saturating_mul(CHUNK_SIZE_BYTES as u64)
}

/// The host's `MemAvailable`, in bytes; `None` if it cannot be read.
pub(crate) fn host_mem_available() -> Option<u64> {
    mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::{mem_available, short_of_memory};

    #[test]
    fn a_standby_needs_twice_its_base_ram_available() {
        let gib = 1 << 30;
        assert!(!short_of_memory(2 * gib, gib));
        assert!(short_of_memory(2 * gib - 1, gib));
        assert!(!short_of_memory(0, 0), "a base without RAM costs nothing");
        assert!(short_of_memory(u64::MAX - 1, u64::MAX), "no overflow");
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24684132 kB\nMemFree:        20000000 kB\n\
                       MemAvailable:   23311000 kB\nBuffers:           1234 kB\n";
        assert_eq!(mem_available(meminfo), Some(23_311_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
        assert_eq!(mem_available(""), None);
    }
}
