//! Startup repair: whatever a crash interrupted is finished or undone, so the catalogue
//! never points at a missing file and no half-written file survives.
//!
//! - bases and overlays left `creating` or `deleting`: files and row removed;
//! - files and directories in the data dir that no row owns: removed;
//! - `incoming/` emptied (uploads, work in progress);
//! - sessions caught in a transition (starting, saving, encoding, decoding, restoring,
//!   stopping): marked failed, their work files removed (the VM layer, which knows about
//!   libvirt domains, destroys their VMs);
//! - sessions that were `running` are kept with their files: their VMs run on without
//!   the daemon, and the VM layer re-adopts them (or fails those whose VM is gone).

use std::collections::HashSet;
use std::path::Path;

use super::{DataDir, Store, StoreError};
use cloudlet_api::{ResourceState, SessionState};

/// What reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repairs {
    /// Rows removed.
    pub rows_removed: u64,
    /// Files or directories removed.
    pub paths_removed: u64,
    /// Sessions marked failed.
    pub sessions_failed: u64,
    /// Running sessions kept for re-adoption.
    pub sessions_kept: u64,
}

/// Runs every repair.
pub async fn reconcile(store: &Store, data: &DataDir) -> Result<Repairs, StoreError> {
    let mut repairs = Repairs::default();
    // Sessions first: a running session's work directory must survive the sweeps below
    // (a base session's lives under bases/).
    let mut kept_dirs: HashSet<String> = HashSet::new();
    for mut s in store.active_sessions().await? {
        if s.state() == SessionState::Running {
            kept_dirs.extend(s.run_dir.clone());
            repairs.sessions_kept += 1;
            continue;
        }
        let was = s.state();
        if s.advance(SessionState::Failed).is_err() {
            continue; // cannot happen: every active state may fail
        }
        s.error = Some(format!(
            "the daemon restarted while this {} session was {was}",
            s.kind
        ));
        store.update_session(&s).await?;
        repairs.sessions_failed += 1;
    }
    for o in store.overlays(None).await? {
        if o.state != ResourceState::Ready {
            remove_path(Path::new(&o.file_path), &mut repairs);
            store.delete_overlay(&o.id).await?;
            repairs.rows_removed += 1;
        }
    }
    for b in store.bases().await? {
        if b.state != ResourceState::Ready && store.overlays(Some(&b.id)).await?.is_empty() {
            remove_path(Path::new(&b.dir), &mut repairs);
            store.delete_base(&b.id).await?;
            repairs.rows_removed += 1;
        }
    }
    let all_bases = store.bases().await?;
    let bases: HashSet<String> = all_bases.iter().map(|b| b.dir.clone()).collect();
    remove_unowned(
        &data.bases(),
        |p| {
            let p = p.display().to_string();
            bases.contains(&p) || kept_dirs.contains(&p)
        },
        &mut repairs,
    );
    // A cached export is kept only while its base exists (and is complete: no `.part`).
    let exports: HashSet<String> = all_bases
        .iter()
        .map(|b| data.export_file(&b.id).display().to_string())
        .collect();
    remove_unowned(
        &data.exports(),
        |p| exports.contains(&p.display().to_string()),
        &mut repairs,
    );
    let overlays: HashSet<String> = store
        .overlays(None)
        .await?
        .into_iter()
        .map(|o| o.file_path)
        .collect();
    remove_unowned(
        &data.overlays(),
        |p| overlays.contains(&p.display().to_string()),
        &mut repairs,
    );
    remove_unowned(&data.incoming(), |_| false, &mut repairs);

    // Work files of sessions that are over (or were just failed) are worthless.
    remove_unowned(
        &data.sessions(),
        |p| kept_dirs.contains(&p.display().to_string()),
        &mut repairs,
    );
    if repairs.rows_removed + repairs.paths_removed + repairs.sessions_failed > 0 {
        tracing::warn!(?repairs, "repaired state left by an interrupted run");
    }
    Ok(repairs)
}

fn remove_unowned(dir: &Path, owned: impl Fn(&Path) -> bool, repairs: &mut Repairs) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !owned(&path) {
            remove_path(&path, repairs);
        }
    }
}

fn remove_path(path: &Path, repairs: &mut Repairs) {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => repairs.paths_removed += 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bases::sample_base;
    use crate::store::sessions::SessionRecord;
    use cloudlet_api::SessionKind;

    #[tokio::test]
    async fn interrupted_work_is_undone_and_ready_data_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::create(&tmp.path().join("d")).unwrap();
        let store = Store::open(&data.database()).await.unwrap();

        let mut ready = sample_base("ready1", "ready");
        ready.dir = data.base_dir("ready1").display().to_string();
        std::fs::create_dir(&ready.dir).unwrap();
        std::fs::write(Path::new(&ready.dir).join("disk.raw"), b"x").unwrap();
        store.insert_base(&ready).await.unwrap();

        let mut half = sample_base("half1", "half");
        half.state = ResourceState::Creating;
        half.dir = data.base_dir("half1").display().to_string();
        std::fs::create_dir(&half.dir).unwrap();
        store.insert_base(&half).await.unwrap();

        std::fs::create_dir(data.base_dir("orphan")).unwrap();
        std::fs::write(data.overlays().join(".x.overlay.tmp-1-2"), b"partial").unwrap();
        std::fs::write(data.incoming().join("upload"), b"partial").unwrap();
        let session = SessionRecord::new(SessionKind::Synthesis, Some("ready1".into()));
        store.insert_session(&session).await.unwrap();
        // A running session keeps its files (its VM runs on without the daemon).
        let mut running = SessionRecord::new(SessionKind::Synthesis, Some("ready1".into()));
        for next in [
            SessionState::Decoding,
            SessionState::Restoring,
            SessionState::Running,
        ] {
            running.advance(next).unwrap();
        }
        let run_dir = data.session_dir(&running.id);
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(run_dir.join("disk.qcow2"), b"vm disk").unwrap();
        running.run_dir = Some(run_dir.display().to_string());
        store.insert_session(&running).await.unwrap();

        let r = reconcile(&store, &data).await.unwrap();
        assert_eq!(
            r,
            Repairs {
                rows_removed: 1,
                paths_removed: 4,
                sessions_failed: 1,
                sessions_kept: 1,
            }
        );
        assert!(Path::new(&ready.dir).join("disk.raw").exists());
        assert!(!Path::new(&half.dir).exists());
        assert!(store.base("half1").await.is_err());
        assert_eq!(
            store.session(&session.id).await.unwrap().state(),
            SessionState::Failed
        );
        assert_eq!(
            store.session(&running.id).await.unwrap().state(),
            SessionState::Running
        );
        assert!(
            run_dir.join("disk.qcow2").exists(),
            "a running session's files stay"
        );
        assert_eq!(
            reconcile(&store, &data).await.unwrap(),
            Repairs {
                sessions_kept: 1,
                ..Repairs::default()
            },
            "second run has nothing to repair"
        );
    }
}
