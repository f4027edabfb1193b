//! Moving a base between cloudlets as one file (`export-base` / `import-base`), streamed
//! both ways; the archive format is the engine's (`cloudlet_engine::archive`).

use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use cloudlet_api::{Base, ResourceState, Upload};

use super::{blocking, validate_name, ServiceError};
use crate::store::bases::BaseRecord;
use crate::AppState;
use cloudlet_engine::archive::{export_base, import_base, ArchiveError, ImportLimits};
use cloudlet_engine::base::BasePaths;

/// Bytes an unprivileged writer may still store on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Result<u64, ServiceError> {
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| ServiceError::failed("reading the data disk's free space", e))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn archive_meta(base: &BaseRecord) -> Result<Vec<u8>, ServiceError> {
    let meta = ArchiveMeta {
        id: base.id.clone(),
        name: base.name.clone(),
        guest_ports: base.guest_ports.0.clone(),
        vcpus: base.vcpus,
        domain_xml: base.domain_xml.clone(),
        source_path: base.source_path.clone(),
    };
    serde_json::to_vec(&meta).map_err(|e| ServiceError::failed("writing the archive's metadata", e))
}

/// What an archive carries besides the files.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ArchiveMeta {
    id: String,
    name: String,
    guest_ports: Vec<u16>,
    vcpus: i64,
    domain_xml: String,
    source_path: Option<String>,
}

/// Longest source path an archive may name (PATH_MAX).
const MAX_SOURCE_PATH_BYTES: usize = 4096;
/// Largest domain XML an archive may carry (libvirt's own XML of a VM is a few KiB).
const MAX_DOMAIN_XML_BYTES: usize = 1 << 20;

/// Whether `s` could be taken for a base id or an id prefix (only hex digits): another
/// base's selector would then find the imported one (a name beats an id prefix).
fn looks_like_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

impl ArchiveMeta {
    /// Refuses metadata an export of this daemon never writes. An archive comes from
    /// anywhere: its name and source path become selectors of the imported base, so they
    /// must not be able to shadow another base's id, id prefix or name.
    fn validate(&self, name_from_archive: bool) -> Result<(), ServiceError> {
        let bad = |what: String| {
            Err(ServiceError::InvalidRequest(format!(
                "base archive metadata: {what}"
            )))
        };
        if self.id.len() != 64 || !self.id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return bad("id is not a base id (64 lowercase hex digits)".into());
        }
        if name_from_archive {
            validate_name(&self.name)?;
            if looks_like_id(&self.name) {
                return bad(format!(
                    "name `{}` looks like a base id; import it with ?name=",
                    self.name
                ));
            }
        }
        if let Some(path) = &self.source_path {
            let is_upload = path
                .strip_prefix(cloudlet_api::UPLOAD_PREFIX)
                .is_some_and(|id| super::validate_id(id).is_ok());
            if path.len() > MAX_SOURCE_PATH_BYTES
                || path.chars().any(char::is_control)
                || !(path.starts_with('/') || is_upload)
            {
                return bad(
                    "source_path is not an absolute path or upload:<id> (at most 4096 bytes, \
                     no control characters)"
                        .into(),
                );
            }
        }
        if !(1..=64).contains(&self.vcpus) {
            return bad(format!("vcpus {} is not 1..=64", self.vcpus));
        }
        super::base::check_ports(&self.guest_ports)?;
        if self.domain_xml.trim().is_empty()
            || self.domain_xml.len() > MAX_DOMAIN_XML_BYTES
            || self.domain_xml.contains('\0')
        {
            return bad("domain_xml is empty, over 1 MiB or holds a NUL byte".into());
        }
        Ok(())
    }
}

impl AppState {
    /// The archive of base `selector` as a file (for downloads with Content-Length and
    /// Range): built on first request, kept until the base is deleted.
    /// Answers (file name, path).
    pub async fn export_file(&self, selector: &str) -> Result<(String, PathBuf), ServiceError> {
        let base = self.resolve_base(selector).await?;
        let path = self.data.export_file(&base.id);
        // One build at a time: concurrent first downloads wait for it instead of each
        // writing a base-sized copy.
        let _building = self.export_lock.lock().await;
        let name = format!("{}.cldbase", base.name);
        if path.is_file() {
            return Ok((name, path));
        }
        let meta = archive_meta(&base)?;
        let (dir, out) = (PathBuf::from(&base.dir), path.clone());
        // Cleanup on the blocking side: it completes even if the request is gone.
        blocking(move || {
            let part = out.with_extension("part");
            let build = || {
                let file = std::fs::File::create(&part)?;
                let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
                export_base(&dir, &meta, &mut writer).map_err(std::io::Error::other)?;
                let file = writer.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                std::fs::rename(&part, &out)
            };
            build().map_err(|e| {
                let _ = std::fs::remove_file(&part);
                ServiceError::failed("exporting the base", e)
            })
        })
        .await?;
        Ok((name, path))
    }

    /// Stores an uploaded file for a later request, which names it `upload:<id>`.
    pub async fn store_upload<R: Read + Send + 'static>(
        &self,
        mut input: R,
    ) -> Result<Upload, ServiceError> {
        let id = crate::store::new_id();
        let path = self.data.upload_file(&id);
        let part = path.with_extension("part");
        // Cleanup happens on the blocking side: it runs to its end even when the request
        // that started it is gone.
        let size = blocking(move || {
            let mut store = || {
                let mut file = std::fs::File::create(&part)?;
                let size = std::io::copy(&mut input, &mut file)?;
                file.sync_all()?;
                std::fs::rename(&part, &path)?;
                Ok::<_, std::io::Error>(size)
            };
            store().map_err(|e| {
                let _ = std::fs::remove_file(&part);
                ServiceError::failed("storing the upload", e)
            })
        })
        .await?;
        Ok(Upload { id, size })
    }

    /// Imports a base archive read from `input`, under `name` (or the name it was exported
    /// with). Verified completely before the base appears.
    pub async fn import_base<R: Read + Send + 'static>(
        &self,
        input: R,
        name: Option<String>,
    ) -> Result<Base, ServiceError> {
        if let Some(n) = &name {
            validate_name(n)?;
        }
        let key = crate::store::new_id();
        let work = self.data.incoming().join(&key);
        std::fs::create_dir_all(&work)
            .map_err(|e| ServiceError::failed("creating the import directory", e))?;
        let result = async {
            let limits = ImportLimits {
                max_file_bytes: match self.config.max_import_bytes {
                    0 => u64::MAX,
                    n => n,
                },
                max_stored_bytes: free_bytes(&work)?,
            };
            let (meta, id) = {
                let work = work.clone();
                blocking(move || {
                    import_base(input, &work, &limits).map_err(|e| match e {
                        e if e.is_too_large() => ServiceError::ArchiveTooLarge(Box::new(e)),
                        // Classified like any full disk: 507 no-space.
                        e @ ArchiveError::NoSpace { .. } => ServiceError::failed(
                            "importing the base",
                            std::io::Error::new(std::io::ErrorKind::StorageFull, e),
                        ),
                        e if e.is_invalid_input() => ServiceError::invalid_input("base archive", e),
                        e => ServiceError::failed("importing the base", e),
                    })
                })
                .await?
            };
            let meta: ArchiveMeta = serde_json::from_slice(&meta)
                .map_err(|e| ServiceError::invalid_input("base archive metadata", e))?;
            meta.validate(name.is_none())?;
            let id = cloudlet_engine::hex::encode(&id);
            if id != meta.id {
                return Err(ServiceError::InvalidRequest(format!(
                    "base archive claims id {} but its files have id {id}",
                    meta.id
                )));
            }
            if self.store.base(&id).await.is_ok() {
                return Err(ServiceError::Conflict(format!(
                    "base {id} is already on this cloudlet"
                )));
            }
            let name = name.unwrap_or(meta.name.clone());
            validate_name(&name)?;
            let dir = self.data.bases().join(&key);
            std::fs::rename(&work, &dir)
                .map_err(|e| ServiceError::failed("moving the imported base", e))?;
            let paths = BasePaths::in_dir(&dir);
            let list = cloudlet_engine::hashlist::HashList::open(&paths.hash_list)
                .map_err(|e| ServiceError::failed("reading the hash list", e))?;
            let s = |p: &std::path::Path| p.display().to_string();
            let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let has_memory = list.memory_pages() > 0;
            let record = BaseRecord {
                id,
                name,
                state: ResourceState::Ready,
                source_path: meta.source_path,
                dir: s(&dir),
                disk_path: s(&paths.disk),
                memory_pages_path: has_memory.then(|| s(&paths.memory_pages)),
                memory_meta_path: has_memory.then(|| s(&paths.memory_meta)),
                hash_list_path: s(&paths.hash_list),
                index_path: s(&paths.index),
                disk_size: i(list.disk_size()),
                memory_size: i(list.memory_pages() * 4096),
                chunk_size: 4096,
                disk_chunks: i(list.disk_chunks()),
                memory_pages: i(list.memory_pages()),
                domain_xml: meta.domain_xml,
                vcpus: meta.vcpus,
                guest_ports: Json(meta.guest_ports),
                created_at: crate::store::now_rfc3339(),
            };
            if let Err(e) = self.store.insert_base(&record).await {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
            self.synthesis_standby_for_new_base(&record.id);
            Ok(Base::from(&record))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        result
    }
}
