//! Reading the catalogue: what the list and show routes answer, the daemon's health, the
//! metrics' session counts. Only items that are `ready` are shown; rows still being
//! written or removed are invisible to clients.

use std::path::PathBuf;

use cloudlet_api::{
    Base, Cleared, Health, HealthStatus, Overlay, ResourceState, Session, SessionHost,
};

use super::views::host_view;
use super::{validate_id, Caller, ServiceError};
use crate::store::overlays::OverlayRecord;
use crate::AppState;

impl AppState {
    /// Ready bases (`list-base`).
    pub async fn list_bases(&self) -> Result<Vec<Base>, ServiceError> {
        Ok(self
            .store
            .bases()
            .await?
            .iter()
            .filter(|b| b.state == ResourceState::Ready)
            .map(Base::from)
            .collect())
    }

    /// The ready base a selector means.
    pub async fn base(&self, selector: &str) -> Result<Base, ServiceError> {
        Ok(Base::from(&self.resolve_base(selector).await?))
    }

    /// Ready overlays (`list-overlay`) `caller` may reach.
    pub async fn list_overlays(&self, caller: &Caller) -> Result<Vec<Overlay>, ServiceError> {
        Ok(self
            .store
            .overlays(None)
            .await?
            .iter()
            .filter(|o| o.state == ResourceState::Ready && caller.owns(o.owner_token.as_deref()))
            .map(Overlay::from)
            .collect())
    }

    /// A ready overlay's row.
    pub(crate) async fn ready_overlay(&self, id: &str) -> Result<OverlayRecord, ServiceError> {
        validate_id(id)?;
        let overlay = self.store.overlay(id).await?;
        if overlay.state != ResourceState::Ready {
            return Err(ServiceError::NotFound(format!("overlay {id}")));
        }
        Ok(overlay)
    }

    /// A ready overlay's row, if `caller` may reach it.
    pub(crate) async fn overlay_for(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<OverlayRecord, ServiceError> {
        caller.overlay(self.ready_overlay(id).await?)
    }

    /// One ready overlay.
    pub async fn overlay(&self, caller: &Caller, id: &str) -> Result<Overlay, ServiceError> {
        Ok(Overlay::from(&self.overlay_for(caller, id).await?))
    }

    /// A ready overlay's file, for download: (file name, path).
    pub async fn overlay_file(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(String, PathBuf), ServiceError> {
        let overlay = self.overlay_for(caller, id).await?;
        Ok((format!("{id}.overlay"), PathBuf::from(overlay.file_path)))
    }

    /// Every session `caller` may reach (`list-session`), oldest first.
    pub async fn list_sessions(&self, caller: &Caller) -> Result<Vec<Session>, ServiceError> {
        Ok(self
            .store
            .sessions()
            .await?
            .iter()
            .filter(|s| caller.owns(s.owner_token.as_deref()))
            .map(Session::from)
            .collect())
    }

    /// One session.
    pub async fn session(&self, caller: &Caller, id: &str) -> Result<Session, ServiceError> {
        Ok(Session::from(&self.session_for(caller, id).await?))
    }

    /// Where a session's files are on this host (operators only).
    pub async fn session_host(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<SessionHost, ServiceError> {
        Ok(host_view(&self.session_for(caller, id).await?))
    }

    /// Removes ended sessions from the history (`clear-session`).
    pub async fn clear_sessions(&self) -> Result<Cleared, ServiceError> {
        let removed = self.store.clear_finished_sessions().await?;
        Ok(Cleared { removed })
    }

    /// Liveness: the daemon answers and its catalogue responds.
    pub async fn health(&self) -> Result<Health, ServiceError> {
        let bases = self.list_bases().await.map_err(|e| {
            tracing::error!(error = %super::chain(&e), "health check: catalogue unavailable");
            ServiceError::Busy {
                what: "the catalogue is unavailable".into(),
                retry_after_s: 5,
            }
        })?;
        let ready = self.ready.load(std::sync::atomic::Ordering::Acquire);
        Ok(Health {
            status: if ready {
                HealthStatus::Ok
            } else {
                HealthStatus::Starting
            },
            version: env!("CARGO_PKG_VERSION").to_string(),
            bases: u64::try_from(bases.len()).unwrap_or(u64::MAX),
            synthesis_slots_free: u64::try_from(self.synthesis_slots.available_permits())
                .unwrap_or(u64::MAX),
            confinement: self.confine.status(),
            tls: self.transport.state(),
        })
    }

    /// Metrics text, with the active sessions counted by kind.
    pub async fn metrics_text(&self) -> Result<String, ServiceError> {
        let mut active: Vec<(String, i64)> = Vec::new();
        for session in self.store.active_sessions().await? {
            let kind = session.kind.as_str();
            match active.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n += 1,
                None => active.push((kind.to_string(), 1)),
            }
        }
        Ok(self.metrics.render(&active))
    }
}
