//! Store rows → the API's wire types. The one place that decides what a client sees of a
//! row: no file location, domain XML or flow parameter crosses this boundary (operator
//! details go to [`host_view`] only).

use cloudlet_api::{Base, Overlay, Session, SessionHost};

use crate::store::bases::BaseRecord;
use crate::store::overlays::OverlayRecord;
use crate::store::sessions::SessionRecord;

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl From<&BaseRecord> for Base {
    fn from(b: &BaseRecord) -> Self {
        Base {
            id: b.id.clone(),
            name: b.name.clone(),
            source_path: b.source_path.clone(),
            disk_size: count(b.disk_size),
            memory_size: count(b.memory_size),
            chunk_size: count(b.chunk_size),
            disk_chunks: count(b.disk_chunks),
            memory_pages: count(b.memory_pages),
            vcpus: u32::try_from(b.vcpus).unwrap_or(0),
            guest_ports: b.guest_ports.0.clone(),
            created_at: b.created_at.clone(),
        }
    }
}

impl From<&OverlayRecord> for Overlay {
    fn from(o: &OverlayRecord) -> Self {
        Overlay {
            id: o.id.clone(),
            base_id: o.base_id.clone(),
            name: o.name.clone(),
            file_size: count(o.file_size),
            disk_only: o.disk_only,
            modified_memory_pages: count(o.modified_memory_pages),
            modified_disk_chunks: count(o.modified_disk_chunks),
            stats: o.stats.0.clone(),
            guest_ports: o.guest_ports.0.clone(),
            session_id: o.session_id.clone(),
            created_at: o.created_at.clone(),
        }
    }
}

impl From<&SessionRecord> for Session {
    fn from(s: &SessionRecord) -> Self {
        Session {
            id: s.id.clone(),
            kind: s.kind,
            state: s.state(),
            base_id: s.base_id.clone(),
            overlay_id: s.overlay_id.clone(),
            vm_name: s.vm_name.clone(),
            vnc_port: s.vnc_port.and_then(|p| u16::try_from(p).ok()),
            host_ports: s.host_ports.0.clone(),
            timings: s.timings.0.clone(),
            script_results: s.script_results.0.clone(),
            error: s.error.clone(),
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
            ended_at: s.ended_at.clone(),
        }
    }
}

/// The operator-only details of a session.
pub(crate) fn host_view(s: &SessionRecord) -> SessionHost {
    SessionHost {
        id: s.id.clone(),
        vm_name: s.vm_name.clone(),
        console_path: s.console_path.clone(),
        run_dir: s.run_dir.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bases::sample_base;
    use cloudlet_api::SessionKind;

    #[test]
    fn no_host_path_reaches_the_wire() {
        let base = sample_base("abcd", "debian");
        let json = serde_json::to_string(&Base::from(&base)).unwrap();
        assert!(!json.contains("/data/"), "{json}");
        assert!(!json.contains("domain"), "{json}");
        let mut s = SessionRecord::new(SessionKind::Overlay, Some("abcd".into()));
        s.run_dir = Some("/data/sessions/x".into());
        s.console_path = Some("/data/sessions/x/console.sock".into());
        s.params = sqlx::types::Json(serde_json::json!({"dir": "/data/bases/y"}));
        let json = serde_json::to_string(&Session::from(&s)).unwrap();
        assert!(!json.contains("/data/"), "{json}");
        assert_eq!(
            host_view(&s).console_path.as_deref(),
            Some("/data/sessions/x/console.sock")
        );
    }
}
