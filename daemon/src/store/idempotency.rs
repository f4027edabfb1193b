//! The `idempotency_keys` table: which session a retried `POST /synthesis*` belongs to.

use super::db::{Store, StoreError};
use super::sessions::SessionRecord;

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Store {
    /// The session claimed by `key_hash` within the last `window_s` seconds.
    pub async fn idempotent_session(
        &self,
        key_hash: &str,
        window_s: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let cutoff = unix_now().saturating_sub(i64::try_from(window_s).unwrap_or(i64::MAX));
        let id: Option<(String,)> = sqlx::query_as(
            "SELECT session_id FROM idempotency_keys WHERE key_hash = ? AND created_unix >= ?",
        )
        .bind(key_hash)
        .bind(cutoff)
        .fetch_optional(self.pool())
        .await?;
        match id {
            Some((id,)) => Ok(Some(self.session(&id).await?)),
            None => Ok(None),
        }
    }

    /// Ties `key_hash` to `session_id`. Keys older than `window_s` are forgotten first;
    /// a live key held by another session is a [`StoreError::Conflict`].
    pub async fn claim_idempotency_key(
        &self,
        key_hash: &str,
        session_id: &str,
        window_s: u64,
    ) -> Result<(), StoreError> {
        let now = unix_now();
        let cutoff = now.saturating_sub(i64::try_from(window_s).unwrap_or(i64::MAX));
        sqlx::query("DELETE FROM idempotency_keys WHERE created_unix < ?")
            .bind(cutoff)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO idempotency_keys (key_hash, session_id, created_unix) VALUES (?, ?, ?)",
        )
        .bind(key_hash)
        .bind(session_id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Frees `key_hash` if it still names `session_id` (a failed attempt: the retry may
    /// start afresh).
    pub async fn release_idempotency_key(
        &self,
        key_hash: &str,
        session_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE key_hash = ? AND session_id = ?")
            .bind(key_hash)
            .bind(session_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::test_store;
    use cloudlet_api::SessionKind;

    #[tokio::test]
    async fn a_key_names_one_session_until_released() {
        let (store, _dir) = test_store().await;
        let a = SessionRecord::new(SessionKind::Synthesis, None);
        let b = SessionRecord::new(SessionKind::Synthesis, None);
        store.insert_session(&a).await.unwrap();
        store.insert_session(&b).await.unwrap();

        assert!(store.idempotent_session("k", 60).await.unwrap().is_none());
        store.claim_idempotency_key("k", &a.id, 60).await.unwrap();
        let found = store.idempotent_session("k", 60).await.unwrap().unwrap();
        assert_eq!(found.id, a.id);
        let taken = store.claim_idempotency_key("k", &b.id, 60).await;
        assert!(
            matches!(taken, Err(StoreError::Conflict { .. })),
            "{taken:?}"
        );

        // Releasing for another session does nothing; for its own, frees the key.
        store.release_idempotency_key("k", &b.id).await.unwrap();
        assert!(store.idempotent_session("k", 60).await.unwrap().is_some());
        store.release_idempotency_key("k", &a.id).await.unwrap();
        assert!(store.idempotent_session("k", 60).await.unwrap().is_none());
        store.claim_idempotency_key("k", &b.id, 60).await.unwrap();
    }
}
