//! Synthesis: base + overlay → the customized VM, resumed (or booted, for a disk-only
//! overlay), its application ports forwarded to fresh host ports.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::overlay::{merge_ports, new_uuid, open_base, set_boot_files};
use super::{blocking, error_chain, ServiceError, StepTimer};
use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::virt::{domain_xml, forward_port};
use crate::AppState;
use cloudlet_engine::decode::{decode, DecodeError, DecodeOutputs};
use cloudlet_engine::disk::DiskOutputFormat;
use cloudlet_engine::format::OverlayReader;
use cloudlet_engine::progress::NoProgress;

/// `cloudlet synthesis BASE OVERLAY`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Synthesize {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// An overlay this cloudlet stores.
    #[serde(default)]
    pub overlay_id: Option<String>,
    /// An overlay file inside an import directory.
    #[serde(default)]
    pub overlay_path: Option<PathBuf>,
}

/// Maps a decode failure to the error a client sees.
fn decode_error(e: DecodeError) -> ServiceError {
    match &e {
        DecodeError::BaseMismatch { .. } => ServiceError::OverlayBaseMismatch(error_chain(&e)),
        _ if e.is_invalid_input() => ServiceError::OverlayCorrupt(error_chain(&e)),
        _ => ServiceError::internal("synthesis", error_chain(&e)),
    }
}

impl AppState {
    /// Synthesizes from an overlay stored here or in an import directory.
    pub async fn synthesize(&self, req: Synthesize) -> Result<SessionRecord, ServiceError> {
        let path = match (&req.overlay_id, &req.overlay_path) {
            (Some(id), None) => {
                super::validate_id(id)?;
                PathBuf::from(self.store.overlay(id).await?.file_path)
            }
            (None, Some(p)) => self.import_path(p)?,
            _ => {
                return Err(ServiceError::InvalidRequest(
                    "give exactly one of overlay_id and overlay_path".into(),
                ))
            }
        };
        let base = self.resolve_base(&req.base).await?;
        let file = File::open(&path).map_err(|e| ServiceError::internal("opening overlay", e))?;
        self.synthesize_from(
            base,
            BufReader::with_capacity(1 << 20, file),
            req.overlay_id,
        )
        .await
    }

    /// Synthesizes from overlay bytes read from `reader` (a file, or an upload streaming
    /// in: decoding starts with the first segment).
    pub async fn synthesize_from<R: Read + Send + 'static>(
        &self,
        base: BaseRecord,
        reader: R,
        overlay_id: Option<String>,
    ) -> Result<SessionRecord, ServiceError> {
        let (mut session, dir) = self.new_session_with_dir("synthesis", &base.id)?;
        session.overlay_id = overlay_id;
        let vm = session.vm_name.clone().unwrap_or_default();
        session.state = "decoding".into();
        self.store.insert_session(&session).await?;

        let mut timer = StepTimer::default();
        let result = async {
            let started = Instant::now();
            let engine_base = open_base(&base).await?;
            let disk = dir.join("disk.qcow2");
            let memory = dir.join("memory.save");
            let console = dir.join("console.sock");
            let (has_memory, guest_ports, decode_summary) = {
                let (vm, disk, memory, console, base_dir, template) = (
                    vm.clone(),
                    disk.clone(),
                    memory.clone(),
                    console.clone(),
                    PathBuf::from(&base.dir),
                    base.domain_xml.clone(),
                );
                blocking(move || {
                    let overlay =
                        OverlayReader::open(reader).map_err(|e| decode_error(e.into()))?;
                    let meta = overlay.meta();
                    let ports: Vec<u16> = meta
                        .property("guest-ports")
                        .unwrap_or_default()
                        .split(',')
                        .filter_map(|p| p.trim().parse().ok())
                        .collect();
                    let saved_xml = match &meta.memory {
                        Some(m) => m
                            .layout
                            .domain_xml()
                            .map_err(|e| ServiceError::OverlayCorrupt(e.to_string()))?
                            .to_string(),
                        None => template,
                    };
                    let xml = domain_xml::retarget(
                        &saved_xml,
                        &vm,
                        Some(&new_uuid()),
                        &disk,
                        "qcow2",
                        &console,
                    )?;
                    let xml = set_boot_files(&xml, &base_dir);
                    let has_memory = meta.memory.is_some();
                    let outputs = DecodeOutputs {
                        disk: &disk,
                        disk_format: DiskOutputFormat::Qcow2,
                        memory: &memory,
                        domain_xml: Some(&xml),
                        durable: false,
                        threads: 0,
                    };
                    let summary = decode(overlay, &engine_base, &outputs, &NoProgress)
                        .map_err(decode_error)?;
                    Ok((has_memory, ports, (summary, xml)))
                })
                .await?
            };
            let (summary, xml) = decode_summary;
            timer.record("decode", started);
            session
                .timings
                .0
                .insert("decode_read".into(), ms(summary.read_time));
            session
                .timings
                .0
                .insert("decode_rebuild".into(), ms(summary.rebuild_time));
            session.timings.0.insert(
                "decode_apply".into(),
                ms(summary.apply_time + summary.finish_time),
            );

            session.state = "restoring".into();
            self.store.update_session(&session).await?;
            if has_memory {
                timer.time("restore", self.hv.restore(&memory)).await?;
                let _ = std::fs::remove_file(&memory); // QEMU has loaded it
            } else {
                timer.time("boot", self.hv.start(&xml)).await?;
            }
            session.console_path = Some(console.display().to_string());
            session.vnc_port = self.hv.vnc_port(&vm).await.ok().flatten().map(i64::from);
            let started = Instant::now();
            for port in merge_ports(&base, &guest_ports) {
                let host = forward_port(&self.hv, &vm, port).await?;
                session.host_ports.0.insert(port, host);
            }
            timer.record("ports", started);
            session.state = "running".into();
            Ok(())
        }
        .await;
        self.settle_start(&mut session, &timer, result).await?;
        Ok(session)
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
