//! Synthesis standby (`synthesis_standby`): after a synthesis on a base (when a base is
//! made, and at start, for the bases of the newest syntheses), a restore of that base is
//! started for the next one and fed, through its FIFO, libvirt's header, the next
//! session's domain XML and every non-zero page of the base
//! ([`cloudlet_engine::decode::prime_stream`]). QEMU loads them and waits, idle, for
//! more. The next synthesis on that base writes only the overlay's pages behind them
//! (QEMU keeps the later copy of a page) and the device state; QEMU starts, opens the
//! disk, and loads the base before the overlay's first byte arrives, not after.
//!
//! One standby per base at most, and together no more guest RAM than
//! `synthesis_standby_memory_mib` (0: one standby). The base just used always gets one:
//! the standbys made longest ago make room for it. A new base, or a restart, gets one
//! only if it fits beside those there are.
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError};

use cloudlet_api::SessionKind;
use cloudlet_engine::decode::{prime_stream, PrimedStream};

use super::overlay::{base_paths, base_resume_xml, create_cow_disk, open_base};
use super::standby::{base_ram_bytes, short_of_memory};
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

/// Most bases a restart makes standbys for (newest synthesis first), the memory budget
/// permitting.
const BASES_AFTER_START: i64 = 16;

/// Whether a new synthesis standby may evict others to fit the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// The oldest standbys of other bases go until it fits (the base was just used).
    EvictOlder,
    /// Made only if it fits beside the standbys there are (a new base, a restart).
    IfFree,
}

/// One base's place for its standby: locked while the standby is made (a synthesis on
/// that base waits for it) or taken.
type Slot = Arc<tokio::sync::Mutex<Option<SynthesisStandby>>>;

/// The synthesis standbys, one per base at most, within
/// `synthesis_standby_memory_mib`.
#[derive(Default)]
pub struct SynthesisStandbys {
    /// Held by the one task that makes a standby, from its budget check to its end:
    /// standbys are made one at a time (each takes the host's cores for a moment), and
    /// only that task locks other bases' slots (to evict), so no two tasks wait on each
    /// other's slots.
    making: tokio::sync::Mutex<()>,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    /// How many are ready, for the gauge.
    ready: AtomicI64,
}

impl std::fmt::Debug for SynthesisStandbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynthesisStandbys")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl SynthesisStandbys {
    /// Base `base_id`'s slot, if it has one.
    fn slot(&self, base_id: &str) -> Option<Slot> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(base_id).cloned()
    }

    /// Base `base_id`'s slot, made if it has none.
    fn slot_or_new(&self, base_id: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(base_id.to_string()).or_default().clone()
    }

    /// Every base's slot but `except`'s.
    fn others(&self, except: Option<&str>) -> Vec<Slot> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .filter(|(base, _)| Some(base.as_str()) != except)
            .map(|(_, slot)| slot.clone())
            .collect()
    }

    /// Whether `slot` is still base `base_id`'s (not forgotten since it was handed out).
    fn is_current(&self, base_id: &str, slot: &Slot) -> bool {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(base_id).is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// Forgets base `base_id`'s slot (the base is going away).
    fn remove(&self, base_id: &str) -> Option<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.remove(base_id)
    }

    /// Counts one more (`+1`) or one fewer (`-1`) ready standby; the new count.
    fn count(&self, delta: i64) -> i64 {
        self.ready.fetch_add(delta, Ordering::Relaxed) + delta
    }
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
    /// The base's guest RAM: what the standby may come to hold, counted in the budget.
    ram_bytes: u64,
    /// When it was made: the oldest is evicted first.
    made: std::time::Instant,
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
        let slot = self.synthesis_standbys.slot(base_id)?;
        let mut slot = tokio::time::timeout(TAKE_WAIT, slot.lock()).await.ok()?;
        let taken = slot.take();
        if taken.is_some() {
            self.standby_gone();
        }
        taken
    }

    fn standby_gone(&self) {
        let n = self.synthesis_standbys.count(-1);
        self.metrics.synthesis_standby_vms(n);
    }

    /// After a synthesis on `base_id` (its session ended, or it failed): makes the
    /// standby for that base in the background, the oldest standbys of other bases
    /// making room for it, when `synthesis_standby` is on.
    pub(crate) fn refill_synthesis_standby(&self, base_id: &str) {
        self.spawn_synthesis_standbys(vec![base_id.to_string()], Room::EvictOlder);
    }

    /// A base became ready (built, added or imported): it gets a synthesis standby if
    /// one fits beside the others, so that the first synthesis on a new cloudlet's base is
    /// warm too. Standbys of other bases are kept: those bases are the ones in use.
    pub(crate) fn synthesis_standby_for_new_base(&self, base_id: &str) {
        self.spawn_synthesis_standbys(vec![base_id.to_string()], Room::IfFree);
    }

    /// At start: standbys for the bases of the newest syntheses, newest first, as many as
    /// fit; with no synthesis yet, for the newest base.
    pub(crate) async fn synthesis_standbys_after_start(&self) {
        if !self.config.synthesis_standby {
            return;
        }
        let bases = match self
            .store
            .recent_bases_of(SessionKind::Synthesis, BASES_AFTER_START)
            .await
        {
            Ok(bases) if bases.is_empty() => {
                self.newest_base_with_memory().await.into_iter().collect()
            }
            Ok(bases) => bases,
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the bases of the last syntheses");
                return;
            }
        };
        self.spawn_synthesis_standbys(bases, Room::IfFree);
    }

    /// Makes the standbys of `bases` in the background, one after the other.
    fn spawn_synthesis_standbys(&self, bases: Vec<String>, room: Room) {
        if !self.config.synthesis_standby {
            return;
        }
        let state = self.clone();
        tokio::spawn(async move {
            for base_id in bases {
                if let Err(e) = state.make_synthesis_standby(&base_id, room).await {
                    tracing::warn!(base = %base_id, error = %super::chain(&e), "cannot make a synthesis standby");
                }
            }
        });
    }

    async fn make_synthesis_standby(&self, base_id: &str, room: Room) -> Result<(), ServiceError> {
        let standbys = &self.synthesis_standbys;
        let _making = standbys.making.lock().await;
        // Held while it is made: a synthesis on this base waits for it, a base deletion
        // discards it once it is made.
        let own = standbys.slot_or_new(base_id);
        let mut slot = own.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        let base = self.store.base(base_id).await?;
        let ram_bytes = base_ram_bytes(&base);
        if !self.make_room(base_id, ram_bytes, room).await {
            tracing::debug!(base = %base.name, "no synthesis standby: the others fill synthesis_standby_memory_mib");
            return Ok(());
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
                let made = SynthesisStandby {
                    record,
                    dir,
                    restore,
                    stream,
                    xml,
                    spec,
                    ram_bytes,
                    made: std::time::Instant::now(),
                };
                // The base was deleted meanwhile: nobody would take or discard it.
                if !standbys.is_current(base_id, &own) {
                    self.discard_synthesis_standby(made, false).await;
                    return Ok(());
                }
                *slot = Some(made);
                let n = standbys.count(1);
                self.metrics.synthesis_standby_vms(n);
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

    /// Whether a standby of `ram_bytes` for `base_id` fits the memory budget beside the
    /// standbys of other bases, after evicting the oldest of them if `room` allows. One
    /// standby always fits. The caller holds `making`.
    async fn make_room(&self, base_id: &str, ram_bytes: u64, room: Room) -> bool {
        let budget = self
            .config
            .synthesis_standby_memory_mib
            .saturating_mul(1 << 20);
        let others = self.ready_standbys(Some(base_id)).await;
        let mut used: u64 = others.iter().map(|(ram, _)| ram).sum();
        let mut others = others.into_iter();
        while used.saturating_add(ram_bytes) > budget {
            if room == Room::IfFree {
                // An empty host always has room for one.
                return used == 0;
            }
            let Some((ram, mut guard)) = others.next() else {
                return true;
            };
            if let Some(old) = guard.take() {
                tracing::info!(base = %old.record.base_id, vm = %old.record.vm_name, "synthesis standby evicted: its base was used least lately");
                self.standby_gone();
                self.discard_synthesis_standby(old, false).await;
            }
            used = used.saturating_sub(ram);
        }
        true
    }

    /// The ready standbys of every base but `except`, oldest first: each one's RAM and
    /// its slot, locked. Only the holder of `making` locks several slots.
    async fn ready_standbys(
        &self,
        except: Option<&str>,
    ) -> Vec<(u64, tokio::sync::OwnedMutexGuard<Option<SynthesisStandby>>)> {
        let mut ready = Vec::new();
        for slot in self.synthesis_standbys.others(except) {
            let guard = slot.lock_owned().await;
            if let Some(s) = guard.as_ref() {
                ready.push((s.made, s.ram_bytes, guard));
            }
        }
        ready.sort_by_key(|(made, _, _)| *made);
        ready
            .into_iter()
            .map(|(_, ram, guard)| (ram, guard))
            .collect()
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

    /// Releases the oldest synthesis standby if the host has less than twice the RAM of
    /// a standby's base `available`; whether it did.
    pub(crate) async fn release_a_synthesis_standby(&self, available: u64) -> bool {
        let _making = self.synthesis_standbys.making.lock().await;
        let ready = self.ready_standbys(None).await;
        let largest = ready.iter().map(|(ram, _)| *ram).max().unwrap_or(0);
        if !short_of_memory(available, largest) {
            return false;
        }
        let Some(old) = ready
            .into_iter()
            .next()
            .and_then(|(_, mut oldest)| oldest.take())
        else {
            return false;
        };
        tracing::warn!(
            base = %old.record.base_id,
            vm = %old.record.vm_name,
            available_mib = available >> 20,
            "synthesis standby released: the host is short of memory"
        );
        self.standby_gone();
        self.discard_synthesis_standby(old, false).await;
        true
    }

    /// Destroys the synthesis standbys: all of them, or only base `base_id`'s.
    pub(crate) async fn discard_synthesis_standby_of(&self, base_id: Option<&str>) {
        let slots = match base_id {
            Some(id) => self.synthesis_standbys.remove(id).into_iter().collect(),
            None => self.synthesis_standbys.others(None),
        };
        for slot in slots {
            let taken = slot.lock().await.take();
            if let Some(standby) = taken {
                self.standby_gone();
                self.discard_synthesis_standby(standby, false).await;
            }
        }
    }
}
