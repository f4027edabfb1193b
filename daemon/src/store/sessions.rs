//! The `sessions` table: every base, overlay and synthesis session, with its state and
//! the timing of each step.

use std::collections::BTreeMap;

use cloudlet_api::{ScriptLineResult, SessionKind, SessionState};
use sqlx::types::Json;

use super::db::{Store, StoreError};

/// One session, as stored (the API shows a `cloudlet_api::Session` made from it).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    /// UUIDv7.
    pub id: String,
    /// What it does.
    #[sqlx(try_from = "String")]
    pub kind: SessionKind,
    /// Where it is; changed only through [`SessionRecord::advance`].
    #[sqlx(try_from = "String")]
    state: SessionState,
    /// Base it works on.
    pub base_id: Option<String>,
    /// Overlay it made or used.
    pub overlay_id: Option<String>,
    /// libvirt domain name (`cloudlet-<id>`).
    pub vm_name: Option<String>,
    /// Per-session directory.
    pub run_dir: Option<String>,
    /// Serial console Unix socket.
    pub console_path: Option<String>,
    /// VNC port on loopback.
    pub vnc_port: Option<i64>,
    /// Guest port → host port.
    pub host_ports: Json<BTreeMap<u16, u16>>,
    /// Step → milliseconds.
    pub timings: Json<BTreeMap<String, u64>>,
    /// Why it failed.
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, when it reached a final state.
    pub ended_at: Option<String>,
    /// What the session needs to finish its work (flow-specific JSON).
    pub params: Json<serde_json::Value>,
    /// Results of customization scripts: command, output, status.
    pub script_results: Json<Vec<ScriptLineResult>>,
    /// The token that started it (`None`: from before tokens existed, admins' only).
    pub owner_token: Option<String>,
}

/// A state change the session state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} session cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The session's kind.
    pub kind: SessionKind,
    /// Its state.
    pub from: SessionState,
    /// The state asked for.
    pub to: SessionState,
}

const COLUMNS: &str = "id, kind, state, base_id, overlay_id, vm_name, run_dir, console_path, \
    vnc_port, host_ports, timings, error, created_at, updated_at, ended_at, params, script_results, \
    owner_token";

impl SessionRecord {
    /// A new session in state `starting`.
    pub fn new(kind: SessionKind, base_id: Option<String>) -> Self {
        let id = super::new_id();
        let now = super::now_rfc3339();
        Self {
            vm_name: Some(format!("cloudlet-{id}")),
            id,
            kind,
            state: SessionState::Starting,
            base_id,
            overlay_id: None,
            run_dir: None,
            console_path: None,
            vnc_port: None,
            host_ports: Json(BTreeMap::new()),
            timings: Json(BTreeMap::new()),
            error: None,
            created_at: now.clone(),
            updated_at: now,
            ended_at: None,
            params: Json(serde_json::Value::Object(Default::default())),
            script_results: Json(Vec::new()),
            owner_token: None,
        }
    }

    /// Where the session is.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Moves the session to `next`, if its state machine allows it
    /// ([`SessionState::can_become`]); the caller stores the change.
    pub fn advance(&mut self, next: SessionState) -> Result<(), IllegalTransition> {
        if !self.state.can_become(next, self.kind) {
            return Err(IllegalTransition {
                kind: self.kind,
                from: self.state,
                to: next,
            });
        }
        self.state = next;
        Ok(())
    }
}

/// `('finished', 'stopped', 'failed')`, for SQL.
fn final_states_sql() -> String {
    let names: Vec<String> = SessionState::FINAL
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("({})", names.join(", "))
}

impl Store {
    /// Inserts a session.
    pub async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&s.id)
        .bind(s.kind.as_str())
        .bind(s.state.as_str())
        .bind(&s.base_id)
        .bind(&s.overlay_id)
        .bind(&s.vm_name)
        .bind(&s.run_dir)
        .bind(&s.console_path)
        .bind(s.vnc_port)
        .bind(&s.host_ports)
        .bind(&s.timings)
        .bind(&s.error)
        .bind(&s.created_at)
        .bind(&s.updated_at)
        .bind(&s.ended_at)
        .bind(&s.params)
        .bind(&s.script_results)
        .bind(&s.owner_token)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Writes back every mutable field of a session (state, ports, timings, error...);
    /// stamps `updated_at`, and `ended_at` on reaching a final state.
    pub async fn update_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let now = super::now_rfc3339();
        let ended = s
            .state
            .is_final()
            .then(|| s.ended_at.clone().unwrap_or(now.clone()));
        let done = sqlx::query(
            "UPDATE sessions SET state = ?, overlay_id = ?, run_dir = ?, console_path = ?, vnc_port = ?, \
             host_ports = ?, timings = ?, error = ?, updated_at = ?, ended_at = ?, params = ?, \
             script_results = ? WHERE id = ?",
        )
        .bind(s.state.as_str())
        .bind(&s.overlay_id)
        .bind(&s.run_dir)
        .bind(&s.console_path)
        .bind(s.vnc_port)
        .bind(&s.host_ports)
        .bind(&s.timings)
        .bind(&s.error)
        .bind(&now)
        .bind(ended)
        .bind(&s.params)
        .bind(&s.script_results)
        .bind(&s.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("session {}", s.id),
            });
        }
        Ok(())
    }

    /// One session by id.
    pub async fn session(&self, id: &str) -> Result<SessionRecord, StoreError> {
        sqlx::query_as::<_, SessionRecord>(&format!("SELECT {COLUMNS} FROM sessions WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("session {id}"),
            })
    }

    /// Every session, oldest first.
    pub async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(sqlx::query_as::<_, SessionRecord>(&format!(
            "SELECT {COLUMNS} FROM sessions ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// Sessions not in a final state.
    pub async fn active_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(sqlx::query_as::<_, SessionRecord>(&format!(
            "SELECT {COLUMNS} FROM sessions WHERE state NOT IN {} ORDER BY created_at",
            final_states_sql()
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// The bases of sessions of `kind`, the base of the newest session first, each once;
    /// at most `limit`.
    pub async fn recent_bases_of(
        &self,
        kind: SessionKind,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT base_id FROM sessions WHERE kind = ? AND base_id IS NOT NULL \
             GROUP BY base_id ORDER BY MAX(created_at) DESC, base_id LIMIT ?",
        )
        .bind(kind.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Removes finished sessions' rows (Elijah's `clear-session`); returns how many.
    pub async fn clear_finished_sessions(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "DELETE FROM sessions WHERE state IN {}",
            final_states_sql()
        ))
        .execute(self.pool())
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::test_store;

    #[tokio::test]
    async fn lifecycle_with_timings_and_ports() {
        let (store, _dir) = test_store().await;
        let mut s = SessionRecord::new(SessionKind::Synthesis, None);
        store.insert_session(&s).await.unwrap();
        assert_eq!(store.active_sessions().await.unwrap().len(), 1);
        s.advance(SessionState::Decoding).unwrap();
        s.advance(SessionState::Restoring).unwrap();
        s.advance(SessionState::Running).unwrap();
        s.host_ports.0.insert(22, 40022);
        s.timings.0.insert("decode".into(), 120);
        store.update_session(&s).await.unwrap();
        let got = store.session(&s.id).await.unwrap();
        assert_eq!(got.host_ports.0.get(&22), Some(&40022));
        assert_eq!(got.timings.0.get("decode"), Some(&120));
        assert!(got.ended_at.is_none());
        assert!(
            s.advance(SessionState::Saving).is_err(),
            "synthesis never saves"
        );
        s.advance(SessionState::Failed).unwrap();
        s.error = Some("boom".into());
        store.update_session(&s).await.unwrap();
        let got = store.session(&s.id).await.unwrap();
        assert!(got.ended_at.is_some());
        assert_eq!(got.state(), SessionState::Failed);
        assert!(
            s.clone().advance(SessionState::Running).is_err(),
            "failed is final"
        );
        assert!(store.active_sessions().await.unwrap().is_empty());
        assert_eq!(
            store
                .recent_bases_of(SessionKind::Synthesis, 1)
                .await
                .unwrap(),
            Vec::<String>::new(),
            "no base"
        );
        assert_eq!(store.clear_finished_sessions().await.unwrap(), 1);
        assert!(store.sessions().await.unwrap().is_empty());
        assert!(matches!(
            store.update_session(&s).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn the_recent_bases_of_a_kind_are_those_of_its_newest_sessions() {
        let (store, _dir) = test_store().await;
        for id in ["b1", "b2", "b3"] {
            store
                .insert_base(&crate::store::bases::sample_base(id, id))
                .await
                .unwrap();
        }
        for (kind, base) in [
            (SessionKind::Synthesis, "b1"),
            (SessionKind::Overlay, "b3"),
            (SessionKind::Synthesis, "b2"),
            (SessionKind::Overlay, "b1"),
            (SessionKind::Synthesis, "b1"),
        ] {
            let s = SessionRecord::new(kind, Some(base.into()));
            store.insert_session(&s).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let recent = |kind, limit| store.recent_bases_of(kind, limit);
        assert_eq!(
            recent(SessionKind::Synthesis, 16).await.unwrap(),
            ["b1", "b2"],
            "each base once, the newest session's first"
        );
        assert_eq!(recent(SessionKind::Synthesis, 1).await.unwrap(), ["b1"]);
        assert_eq!(
            recent(SessionKind::Overlay, 16).await.unwrap(),
            ["b1", "b3"]
        );
        assert!(recent(SessionKind::Base, 16).await.unwrap().is_empty());
    }
}
