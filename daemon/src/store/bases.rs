//! The `bases` table.

use cloudlet_api::ResourceState;
use sqlx::types::Json;

use super::db::{Store, StoreError};

/// One base VM, as stored (the API shows a `cloudlet_api::Base` made from it).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BaseRecord {
    /// Hex blake3 of the hash list.
    pub id: String,
    /// Unique human name.
    pub name: String,
    /// Lifecycle.
    #[sqlx(try_from = "String")]
    pub state: ResourceState,
    /// Disk path the user created it from.
    pub source_path: Option<String>,
    /// Directory holding its files.
    pub dir: String,
    /// Raw disk.
    pub disk_path: String,
    /// Memory page image (None: disk-only).
    pub memory_pages_path: Option<String>,
    /// Memory layout + device state.
    pub memory_meta_path: Option<String>,
    /// Hash list.
    pub hash_list_path: String,
    /// Hash index.
    pub index_path: String,
    /// Disk bytes.
    pub disk_size: i64,
    /// Guest RAM bytes.
    pub memory_size: i64,
    /// Chunk size (4096).
    pub chunk_size: i64,
    /// Disk chunks.
    pub disk_chunks: i64,
    /// Memory pages.
    pub memory_pages: i64,
    /// Domain XML template.
    pub domain_xml: String,
    /// Virtual CPUs.
    pub vcpus: i64,
    /// Guest TCP ports the app listens on.
    pub guest_ports: Json<Vec<u16>>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

const COLUMNS: &str = "id, name, state, source_path, dir, disk_path, memory_pages_path, \
    memory_meta_path, hash_list_path, index_path, disk_size, memory_size, chunk_size, \
    disk_chunks, memory_pages, domain_xml, vcpus, guest_ports, created_at";

impl Store {
    /// Inserts a base (normally in state `creating`).
    pub async fn insert_base(&self, b: &BaseRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO bases ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&b.id)
        .bind(&b.name)
        .bind(b.state.as_str())
        .bind(&b.source_path)
        .bind(&b.dir)
        .bind(&b.disk_path)
        .bind(&b.memory_pages_path)
        .bind(&b.memory_meta_path)
        .bind(&b.hash_list_path)
        .bind(&b.index_path)
        .bind(b.disk_size)
        .bind(b.memory_size)
        .bind(b.chunk_size)
        .bind(b.disk_chunks)
        .bind(b.memory_pages)
        .bind(&b.domain_xml)
        .bind(b.vcpus)
        .bind(&b.guest_ports)
        .bind(&b.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict { .. } => StoreError::Conflict { what: format!("base {} or name {}", b.id, b.name) },
            other => other,
        })?;
        Ok(())
    }

    /// Changes a base's state.
    pub async fn set_base_state(&self, id: &str, state: ResourceState) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE bases SET state = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("base {id}"),
            });
        }
        Ok(())
    }

    /// One base by exact id.
    pub async fn base(&self, id: &str) -> Result<BaseRecord, StoreError> {
        sqlx::query_as::<_, BaseRecord>(&format!("SELECT {COLUMNS} FROM bases WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("base {id}"),
            })
    }

    /// Every base, oldest first.
    pub async fn bases(&self) -> Result<Vec<BaseRecord>, StoreError> {
        Ok(sqlx::query_as::<_, BaseRecord>(&format!(
            "SELECT {COLUMNS} FROM bases ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// Bases a user's selector may mean: exact id or name or source path, else id prefix.
    pub async fn find_bases(&self, selector: &str) -> Result<Vec<BaseRecord>, StoreError> {
        let exact = sqlx::query_as::<_, BaseRecord>(&format!(
            "SELECT {COLUMNS} FROM bases WHERE id = ?1 OR name = ?1 OR source_path = ?1 ORDER BY id"
        ))
        .bind(selector)
        .fetch_all(self.pool())
        .await?;
        if !exact.is_empty() {
            return Ok(exact);
        }
        let escaped: String = selector
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        Ok(sqlx::query_as::<_, BaseRecord>(&format!(
            "SELECT {COLUMNS} FROM bases WHERE id LIKE ?1 || '%' ESCAPE '\\' ORDER BY id"
        ))
        .bind(escaped)
        .fetch_all(self.pool())
        .await?)
    }

    /// Removes a base row (its overlays must be gone: the foreign key refuses otherwise).
    pub async fn delete_base(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM bases WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn sample_base(id: &str, name: &str) -> BaseRecord {
    BaseRecord {
        id: id.into(),
        name: name.into(),
        state: ResourceState::Ready,
        source_path: Some(format!("/images/{name}.img")),
        dir: format!("/data/bases/{id}"),
        disk_path: "disk.raw".into(),
        memory_pages_path: Some("memory.pages".into()),
        memory_meta_path: Some("memory.meta".into()),
        hash_list_path: "hashes.bin".into(),
        index_path: "hashes.idx".into(),
        disk_size: 1 << 30,
        memory_size: 256 << 20,
        chunk_size: 4096,
        disk_chunks: 262_144,
        memory_pages: 65_536,
        domain_xml: "<domain/>".into(),
        vcpus: 1,
        guest_ports: Json(vec![22, 8080]),
        created_at: super::now_rfc3339(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::test_store;

    #[tokio::test]
    async fn insert_get_find_delete() {
        let (store, _dir) = test_store().await;
        let a = sample_base("abcd1234", "ubuntu");
        store.insert_base(&a).await.unwrap();
        store
            .insert_base(&sample_base("abff0000", "debian"))
            .await
            .unwrap();
        assert_eq!(store.base("abcd1234").await.unwrap(), a);
        assert!(matches!(
            store.base("nope").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.insert_base(&sample_base("x", "ubuntu")).await,
            Err(StoreError::Conflict { .. })
        ));

        let by = |s: &'static str| {
            let store = store.clone();
            async move {
                store
                    .find_bases(s)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(by("ubuntu").await, ["ubuntu"]);
        assert_eq!(by("/images/debian.img").await, ["debian"]);
        assert_eq!(by("abcd").await, ["ubuntu"]);
        assert_eq!(by("ab").await, ["ubuntu", "debian"]);
        assert!(by("a%").await.is_empty(), "LIKE wildcards must be literal");
        assert!(by("zz").await.is_empty());

        store
            .set_base_state("abcd1234", ResourceState::Deleting)
            .await
            .unwrap();
        assert_eq!(
            store.base("abcd1234").await.unwrap().state,
            ResourceState::Deleting
        );
        store.delete_base("abcd1234").await.unwrap();
        assert_eq!(store.bases().await.unwrap().len(), 1);
        assert!(store
            .set_base_state("abcd1234", ResourceState::Ready)
            .await
            .is_err());
    }
}
