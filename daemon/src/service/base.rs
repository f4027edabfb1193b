//! Base VMs: create one from a disk image (boot, customize, save, hash), register an
//! existing disk + save file, delete one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudlet_api::{
    AddBase, Base, CreateBase, ResourceState, ScriptLineResult, Session, SessionKind, SessionState,
};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use super::session::session_params;
use super::{blocking, validate_name, Caller, ServiceError, StepTimer};
use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::virt::{domain_xml, Console, VmSpec, MAX_MEMORY_MIB, MAX_VCPUS};
use crate::AppState;
use cloudlet_engine::base::{create_base, create_base_with_progress, BaseError, BasePaths};

/// How long a freshly started VM may take to print its ready marker.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the console's shell may take to answer once the ready marker was seen.
const SHELL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one customization script line may run.
pub const SCRIPT_LINE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a whole customization script may run (an install may download and build).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Most application ports one VM forwards.
const MAX_GUEST_PORTS: usize = 64;

/// Refuses port lists no VM needs (each port costs a host port and a monitor command).
pub(crate) fn check_ports(ports: &[u16]) -> Result<(), ServiceError> {
    if ports.len() > MAX_GUEST_PORTS || ports.contains(&0) {
        return Err(ServiceError::InvalidRequest(format!(
            "guest_ports takes at most {MAX_GUEST_PORTS} ports, none of them 0"
        )));
    }
    Ok(())
}

/// What a base session remembers until it finishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BaseParams {
    pub name: String,
    pub source_path: String,
    pub spec: VmSpec,
    pub guest_ports: Vec<u16>,
    pub dir: PathBuf,
}

impl AppState {
    /// Starts a base session: copies the disk into a new base directory, boots it, runs the
    /// script; with `finish`, saves the base too.
    pub async fn create_base(
        &self,
        caller: &Caller,
        req: CreateBase,
    ) -> Result<Session, ServiceError> {
        validate_name(&req.name)?;
        if !self
            .store
            .find_bases(&req.name)
            .await?
            .iter()
            .all(|b| b.name != req.name)
        {
            return Err(ServiceError::Conflict(format!(
                "a base named `{}` exists",
                req.name
            )));
        }
        let disk = self.import_path(Path::new(&req.disk))?;
        let kernel = req
            .kernel
            .as_deref()
            .map(|p| self.import_path(Path::new(p)))
            .transpose()?;
        let initrd = req
            .initrd
            .as_deref()
            .map(|p| self.import_path(Path::new(p)))
            .transpose()?;
        if !(16..=MAX_MEMORY_MIB).contains(&req.memory_mib) || !(1..=MAX_VCPUS).contains(&req.vcpus)
        {
            return Err(ServiceError::InvalidRequest(format!(
                "memory_mib must be 16..={MAX_MEMORY_MIB} and vcpus 1..={MAX_VCPUS}"
            )));
        }
        check_ports(&req.guest_ports)?;

        let mut session = SessionRecord::new(SessionKind::Base, None);
        session.owner_token = caller.owner();
        let vm_name = session.vm_name.clone().unwrap_or_default();
        // The base directory is named after the session: the VM runs on its final files (a
        // direct-boot kernel path in the saved XML stays valid); a daemon restart removes it.
        let dir = self.data.bases().join(&session.id);
        // The base VM's own while it runs (see crate::confine); shared once it is a base.
        let identity = self.confine.create_vm_dir(&dir)?;
        session.run_dir = Some(dir.display().to_string());
        self.store.insert_session(&session).await?;

        let mut timer = StepTimer::default();
        let result = async {
            let paths = BasePaths::in_dir(&dir);
            let copy_started = StepTimer::begin("copy_disk");
            import_disk(&disk, &paths.disk).await?;
            let kernel = copy_boot_file(kernel.as_deref(), &dir, "vmlinuz")?;
            let initrd = copy_boot_file(initrd.as_deref(), &dir, "initrd.img")?;
            timer.record("copy_disk", copy_started);
            let spec = VmSpec {
                name: vm_name.clone(),
                uuid: None,
                domain_type: self.config.domain_type,
                memory_mib: req.memory_mib,
                vcpus: req.vcpus,
                kernel,
                initrd,
                cmdline: req.cmdline.clone(),
                disk: paths.disk.clone(),
                disk_format: "raw".into(),
                console_socket: dir.join("console.sock"),
                vnc: true,
                identity,
            };
            self.confine.hand_over(&dir)?;
            let mut console = timer
                .time("boot", async {
                    self.hv.start(&domain_xml::render(&spec)).await?;
                    let mut console = Console::connect(&spec.console_socket, BOOT_TIMEOUT).await?;
                    if let Some(marker) = &req.ready_marker {
                        console
                            .wait_for_boot_marker(marker, BOOT_TIMEOUT, spec.domain_type)
                            .await?;
                        // The marker can come before the console's shell exists (Debian
                        // starts its serial getty once boot has finished, then login). A
                        // base saved then replays getty and login after every restore,
                        // and they discard what is typed before the prompt: each overlay
                        // session's first command was lost, a 3-6 s wait. Saved at the
                        // prompt, the first command is answered at once.
                        if let Err(e) = console.wait_ready(SHELL_TIMEOUT).await {
                            tracing::warn!(
                                error = %e,
                                "no shell answered on the guest's console after its ready \
                                 marker; saving the base anyway (scripts need one)"
                            );
                        }
                    }
                    Ok::<_, ServiceError>(console)
                })
                .await?;
            session.console_path = Some(spec.console_socket.display().to_string());
            session.vnc_port = self
                .hv
                .vnc_port(&vm_name)
                .await
                .ok()
                .flatten()
                .map(i64::from);
            let params = BaseParams {
                name: req.name.clone(),
                source_path: req.disk.clone(),
                spec,
                guest_ports: req.guest_ports.clone(),
                dir: dir.clone(),
            };
            session.params = Json(
                serde_json::to_value(&params)
                    .map_err(|e| ServiceError::failed("recording the session's parameters", e))?,
            );
            session.advance(SessionState::Running)?;
            timer.merge_into(&mut session);
            self.store.update_session(&session).await?;
            run_script(
                &mut console,
                req.script_text.as_deref(),
                &req.script,
                &mut session,
            )
            .await?;
            Ok::<_, ServiceError>(())
        }
        .await;
        self.settle_start(&mut session, &timer, result).await?;
        if req.finish {
            return Ok(Session::from(
                &self.finish_session_record(&session.id).await?,
            ));
        }
        Ok(Session::from(&session))
    }

    /// Saves a running base session's VM and turns it into a base.
    pub(crate) async fn finish_base(
        &self,
        session: &mut SessionRecord,
    ) -> Result<(), ServiceError> {
        let params: BaseParams = session_params(session)?;
        let paths = BasePaths::in_dir(&params.dir);
        let save = params.dir.join("memory.save");
        let mut timer = StepTimer::default();
        self.save_session_vm(session, &save, &mut timer).await?;
        let started = StepTimer::begin("hash");
        let summary = {
            let (paths, save) = (paths.clone(), save.to_path_buf());
            let reporter = super::progress::engine_reporter();
            blocking(move || {
                create_base_with_progress(&paths, Some(&save), &reporter)
                    .map_err(|e| ServiceError::failed("hashing the base", e))
            })
            .await?
        };
        let _ = std::fs::remove_file(&save); // the canonical form (page image + meta) replaces it
        timer.record("hash", started);
        // Every VM may now read the base, none may write it; its builder's uid is free.
        self.confine.share_base(&params.dir)?;
        // The base's template names no VM user: each VM built from it gets its own.
        let template = VmSpec {
            identity: None,
            ..params.spec.clone()
        };
        let record = base_record(&params, &paths, &summary, domain_xml::render(&template));
        self.store.insert_base(&record).await?;
        self.synthesis_standby_for_new_base(&record.id);
        session.base_id = Some(record.id.clone());
        timer.merge_into(session);
        Ok(())
    }

    /// Registers an existing disk + save file as a base (Elijah's `add-base`).
    pub async fn add_base(&self, req: AddBase) -> Result<Base, ServiceError> {
        validate_name(&req.name)?;
        check_ports(&req.guest_ports)?;
        let disk = self.import_path(Path::new(&req.disk))?;
        let save = self.import_path(Path::new(&req.save_file))?;
        let key = crate::store::new_id();
        let dir = self.data.bases().join(&key);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServiceError::failed("creating the base directory", e))?;
        let result = async {
            let paths = BasePaths::in_dir(&dir);
            import_disk(&disk, &paths.disk).await?;
            let summary = {
                let (paths, save) = (paths.clone(), save.to_path_buf());
                blocking(move || {
                    create_base(&paths, Some(&save)).map_err(|e| match e {
                        // The user's save file is not one the engine can use.
                        BaseError::SaveFile { .. } | BaseError::Inconsistent(_) => {
                            ServiceError::invalid_input("the save file", e)
                        }
                        _ => ServiceError::failed("hashing the base", e),
                    })
                })
                .await?
            };
            let (layout, _) = {
                let meta = paths.memory_meta.clone();
                blocking(move || {
                    cloudlet_engine::base::read_memory_meta(&meta)
                        .map_err(|e| ServiceError::failed("reading the memory layout", e))
                })
                .await?
            };
            let xml = layout
                .domain_xml()
                .map_err(|e| ServiceError::invalid_input("the save file's domain XML", e))?
                .to_string();
            let params = BaseParams {
                name: req.name.clone(),
                source_path: req.disk.clone(),
                spec: spec_placeholder(&paths),
                guest_ports: req.guest_ports.clone(),
                dir: dir.clone(),
            };
            let record = base_record(&params, &paths, &summary, xml);
            self.store.insert_base(&record).await?;
            self.synthesis_standby_for_new_base(&record.id);
            Ok(Base::from(&record))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Deletes a base; refused while overlays or active sessions use it, unless `force`
    /// (which deletes its overlays and stops its sessions too).
    pub async fn delete_base(&self, selector: &str, force: bool) -> Result<Base, ServiceError> {
        let base = self.resolve_base(selector).await?;
        let overlays = self.store.overlays(Some(&base.id)).await?;
        let sessions: Vec<SessionRecord> = self
            .store
            .active_sessions()
            .await?
            .into_iter()
            .filter(|s| s.base_id.as_deref() == Some(&base.id))
            .collect();
        if !force && (!overlays.is_empty() || !sessions.is_empty()) {
            return Err(ServiceError::Conflict(format!(
                "base `{}` is used by {} overlay(s) and {} running session(s); use force to delete them too",
                base.name,
                overlays.len(),
                sessions.len()
            )));
        }
        for s in sessions {
            self.stop_session_record(s).await?;
        }
        for o in &overlays {
            self.remove_overlay(o).await?;
        }
        self.store
            .set_base_state(&base.id, ResourceState::Deleting)
            .await?;
        // After the state change: a standby being made now waits for it, or sees it.
        self.discard_standby_of(&base.id).await;
        let _ = std::fs::remove_file(self.data.export_file(&base.id));
        if let Err(e) = std::fs::remove_dir_all(&base.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(ServiceError::failed("removing the base's files", e));
            }
        }
        self.store.delete_base(&base.id).await?;
        Ok(Base::from(&base))
    }
}

/// Runs a customization: the whole script first (if any), then the lines in order;
/// records each result; fails on the first error.
pub(crate) async fn run_script(
    console: &mut Console,
    text: Option<&str>,
    script: &[String],
    session: &mut SessionRecord,
) -> Result<(), ServiceError> {
    if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
        let out = console.run_script(text, SCRIPT_TIMEOUT).await?;
        let command = script_label(text);
        session.script_results.0.push(ScriptLineResult {
            command: command.clone(),
            output: out.output,
            status: out.status,
        });
        if out.status != 0 {
            return Err(ServiceError::ScriptFailed {
                command,
                status: out.status,
            });
        }
    }
    for line in script {
        let out = console.run(line, SCRIPT_LINE_TIMEOUT).await?;
        session.script_results.0.push(ScriptLineResult {
            command: line.clone(),
            output: out.output.clone(),
            status: out.status,
        });
        if out.status != 0 {
            return Err(ServiceError::ScriptFailed {
                command: line.clone(),
                status: out.status,
            });
        }
    }
    Ok(())
}

/// How a whole script is named in results: its line count and first command line.
fn script_label(text: &str) -> String {
    let lines = text.lines().count();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    format!("script ({lines} lines): {first}")
}

/// Copies a disk image to `dest` as raw (qcow2 is converted), sparse.
async fn import_disk(src: &Path, dest: &Path) -> Result<(), ServiceError> {
    let format = if cloudlet_engine::qcow2::Qcow2Image::open(src).is_ok() {
        "qcow2"
    } else {
        "raw"
    };
    let out = tokio::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", format, "-O", "raw"])
        .arg(src)
        .arg(dest)
        .output()
        .await
        .map_err(|e| ServiceError::failed("running qemu-img", e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No space left on device") {
            return Err(ServiceError::failed(
                "copying the disk image",
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ));
        }
        return Err(ServiceError::InvalidRequest(format!(
            "cannot read disk image {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn copy_boot_file(
    src: Option<&Path>,
    dir: &Path,
    name: &str,
) -> Result<Option<PathBuf>, ServiceError> {
    let Some(src) = src else { return Ok(None) };
    let dest = dir.join(name);
    std::fs::copy(src, &dest).map_err(|e| ServiceError::failed("copying a boot file", e))?;
    Ok(Some(dest))
}

fn spec_placeholder(paths: &BasePaths) -> VmSpec {
    VmSpec {
        name: String::new(),
        uuid: None,
        domain_type: crate::config::DomainType::Qemu,
        memory_mib: 0,
        vcpus: 1,
        kernel: None,
        initrd: None,
        cmdline: None,
        disk: paths.disk.clone(),
        disk_format: "raw".into(),
        console_socket: PathBuf::new(),
        vnc: false,
        identity: None,
    }
}

fn base_record(
    params: &BaseParams,
    paths: &BasePaths,
    summary: &cloudlet_engine::base::BaseSummary,
    domain_xml: String,
) -> BaseRecord {
    let s = |p: &Path| p.display().to_string();
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    BaseRecord {
        id: cloudlet_engine::hex::encode(&summary.id),
        name: params.name.clone(),
        state: ResourceState::Ready,
        source_path: Some(params.source_path.clone()),
        dir: s(&params.dir),
        disk_path: s(&paths.disk),
        memory_pages_path: (summary.memory_pages > 0).then(|| s(&paths.memory_pages)),
        memory_meta_path: (summary.memory_pages > 0).then(|| s(&paths.memory_meta)),
        hash_list_path: s(&paths.hash_list),
        index_path: s(&paths.index),
        disk_size: i(summary.disk_size),
        memory_size: i(summary.memory_pages * 4096),
        chunk_size: 4096,
        disk_chunks: i(summary.disk_size.div_ceil(4096)),
        memory_pages: i(summary.memory_pages),
        domain_xml,
        vcpus: i64::from(params.spec.vcpus),
        guest_ports: Json(params.guest_ports.clone()),
        created_at: crate::store::now_rfc3339(),
    }
}
