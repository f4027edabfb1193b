//! The `standbys` table: warm standby VMs (see `service::standby`), so that a restart
//! finds and destroys those a previous run left.

use super::db::{Store, StoreError};

/// One standby VM, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StandbyRecord {
    /// The id its overlay session will have (its directory is `sessions/<id>`).
    pub id: String,
    /// The base it is a snapshot of.
    pub base_id: String,
    /// Its libvirt domain.
    pub vm_name: String,
    /// RFC 3339.
    pub created_at: String,
}

impl Store {
    /// Records a standby before its VM is started.
    pub async fn insert_standby(&self, s: &StandbyRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO standbys (id, base_id, vm_name, created_at) VALUES (?, ?, ?, ?)")
            .bind(&s.id)
            .bind(&s.base_id)
            .bind(&s.vm_name)
            .bind(&s.created_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets a standby (its VM became a session's, or is gone).
    pub async fn delete_standby(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM standbys WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every standby recorded.
    pub async fn standbys(&self) -> Result<Vec<StandbyRecord>, StoreError> {
        Ok(sqlx::query_as::<_, StandbyRecord>(
            "SELECT id, base_id, vm_name, created_at FROM standbys ORDER BY created_at",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bases::sample_base;
    use crate::store::db::test_store;

    #[tokio::test]
    async fn standbys_are_listed_until_deleted_and_need_their_base() {
        let (store, _dir) = test_store().await;
        let standby = StandbyRecord {
            id: "s1".into(),
            base_id: "b1".into(),
            vm_name: "cloudlet-s1".into(),
            created_at: crate::store::now_rfc3339(),
        };
        // The base must exist (a standby is discarded before its base goes).
        assert!(store.insert_standby(&standby).await.is_err());
        store.insert_base(&sample_base("b1", "tiny")).await.unwrap();
        store.insert_standby(&standby).await.unwrap();
        assert_eq!(store.standbys().await.unwrap(), vec![standby.clone()]);
        assert!(
            store.delete_base("b1").await.is_err(),
            "its standby holds it"
        );
        store.delete_standby("s1").await.unwrap();
        assert!(store.standbys().await.unwrap().is_empty());
        store.delete_standby("s1").await.unwrap(); // already gone: fine
        store.delete_base("b1").await.unwrap();
    }
}
