//! The `overlays` table.

use cloudlet_api::ResourceState;
use sqlx::types::Json;

use super::db::{Store, StoreError};

/// One overlay, as stored (the API shows a `cloudlet_api::Overlay` made from it).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OverlayRecord {
    /// UUIDv7.
    pub id: String,
    /// The base it applies to.
    pub base_id: String,
    /// Optional human name.
    pub name: Option<String>,
    /// Lifecycle.
    #[sqlx(try_from = "String")]
    pub state: ResourceState,
    /// The overlay file.
    pub file_path: String,
    /// Its size.
    pub file_size: i64,
    /// Whether it holds no memory snapshot.
    pub disk_only: bool,
    /// Memory pages it changes.
    pub modified_memory_pages: i64,
    /// Disk chunks it changes.
    pub modified_disk_chunks: i64,
    /// Counts per encoding, sizes and timings.
    pub stats: Json<serde_json::Value>,
    /// Guest TCP ports the app listens on.
    pub guest_ports: Json<Vec<u16>>,
    /// Overlay session that made it.
    pub session_id: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// The token whose overlay session made it (`None`: from before tokens existed).
    pub owner_token: Option<String>,
}

const COLUMNS: &str = "id, base_id, name, state, file_path, file_size, disk_only, \
    modified_memory_pages, modified_disk_chunks, stats, guest_ports, session_id, created_at, \
    owner_token";

impl Store {
    /// Inserts an overlay.
    pub async fn insert_overlay(&self, o: &OverlayRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO overlays ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&o.id)
        .bind(&o.base_id)
        .bind(&o.name)
        .bind(o.state.as_str())
        .bind(&o.file_path)
        .bind(o.file_size)
        .bind(o.disk_only)
        .bind(o.modified_memory_pages)
        .bind(o.modified_disk_chunks)
        .bind(&o.stats)
        .bind(&o.guest_ports)
        .bind(&o.session_id)
        .bind(&o.created_at)
        .bind(&o.owner_token)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Changes an overlay's state.
    pub async fn set_overlay_state(
        &self,
        id: &str,
        state: ResourceState,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE overlays SET state = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("overlay {id}"),
            });
        }
        Ok(())
    }

    /// One overlay by id.
    pub async fn overlay(&self, id: &str) -> Result<OverlayRecord, StoreError> {
        sqlx::query_as::<_, OverlayRecord>(&format!("SELECT {COLUMNS} FROM overlays WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("overlay {id}"),
            })
    }

    /// Overlays, oldest first; only those of one base if given.
    pub async fn overlays(&self, base_id: Option<&str>) -> Result<Vec<OverlayRecord>, StoreError> {
        Ok(sqlx::query_as::<_, OverlayRecord>(&format!(
            "SELECT {COLUMNS} FROM overlays WHERE ?1 IS NULL OR base_id = ?1 ORDER BY created_at, id"
        ))
        .bind(base_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Removes an overlay row.
    pub async fn delete_overlay(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM overlays WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bases::sample_base;
    use crate::store::db::test_store;

    fn sample(id: &str, base: &str) -> OverlayRecord {
        OverlayRecord {
            id: id.into(),
            base_id: base.into(),
            name: None,
            state: ResourceState::Ready,
            file_path: format!("/data/overlays/{id}.overlay"),
            file_size: 1234,
            disk_only: false,
            modified_memory_pages: 10,
            modified_disk_chunks: 20,
            stats: Json(serde_json::json!({"raw": 3})),
            guest_ports: Json(vec![]),
            session_id: None,
            created_at: crate::store::now_rfc3339(),
            owner_token: None,
        }
    }

    #[tokio::test]
    async fn overlays_need_their_base_and_keep_it_alive() {
        let (store, _dir) = test_store().await;
        assert!(
            store
                .insert_overlay(&sample("o1", "missing"))
                .await
                .is_err(),
            "foreign key"
        );
        store.insert_base(&sample_base("b1", "one")).await.unwrap();
        store.insert_base(&sample_base("b2", "two")).await.unwrap();
        store.insert_overlay(&sample("o1", "b1")).await.unwrap();
        store.insert_overlay(&sample("o2", "b2")).await.unwrap();
        assert_eq!(
            store.overlay("o1").await.unwrap(),
            sample("o1", "b1").clone_with_time(&store.overlay("o1").await.unwrap())
        );
        assert_eq!(store.overlays(None).await.unwrap().len(), 2);
        assert_eq!(store.overlays(Some("b2")).await.unwrap()[0].id, "o2");
        assert!(
            store.delete_base("b1").await.is_err(),
            "base with overlays must stay"
        );
        store
            .set_overlay_state("o1", ResourceState::Deleting)
            .await
            .unwrap();
        store.delete_overlay("o1").await.unwrap();
        store.delete_base("b1").await.unwrap();
        assert!(matches!(
            store.overlay("o1").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    impl OverlayRecord {
        fn clone_with_time(mut self, other: &OverlayRecord) -> Self {
            self.created_at = other.created_at.clone();
            self
        }
    }
}
