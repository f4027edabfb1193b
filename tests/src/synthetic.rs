//! A synthetic VM from the engine's testkit (no libvirt needed): base disk + save file, a
//! customized version, and the overlay between them. The daemon accepts such a base with
//! `add-base` and decodes such overlays; only resuming them needs a real VM.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cloudlet_engine::base::{create_base, Base, BasePaths};
use cloudlet_engine::disk::DiskSource;
use cloudlet_engine::encode::{encode, EncodeInput, EncodeOptions};
use cloudlet_engine::progress::NoProgress;
use cloudlet_engine::testkit::{generate, Workload, WorkloadSpec};

/// Files of a synthetic VM.
#[derive(Debug)]
pub struct SyntheticVm {
    /// The generated disks and save files.
    pub workload: Workload,
    /// The overlay: customized VM against base.
    pub overlay: PathBuf,
    /// Id of the base (what `add-base` will report).
    pub base_id: String,
}

impl SyntheticVm {
    /// Registers this VM's base in `d` as `name` (`POST /api/v1/bases/add`) and checks
    /// it was created with the expected id; returns the answer.
    pub fn add_base(
        &self,
        d: &crate::Daemon,
        name: &str,
        guest_ports: &[u16],
    ) -> anyhow::Result<serde_json::Value> {
        let (status, base) = d.json(
            "POST",
            "/api/v1/bases/add",
            Some(&serde_json::json!({
                "name": name,
                "disk": self.workload.base_disk,
                "save_file": self.workload.base_save,
                "guest_ports": guest_ports,
            })),
        )?;
        anyhow::ensure!(status == 201, "add-base answered {status}: {base}");
        anyhow::ensure!(
            base["id"] == self.base_id.as_str(),
            "add-base made {} instead of {}",
            base["id"],
            self.base_id
        );
        Ok(base)
    }
}

/// Generates `spec` under `dir` and encodes its overlay.
pub fn synthetic_vm(dir: &Path, spec: &WorkloadSpec) -> anyhow::Result<SyntheticVm> {
    let workload = generate(dir, spec).context("generating the workload")?;
    let base_dir = dir.join("engine-base");
    std::fs::create_dir_all(&base_dir)?;
    let paths = BasePaths::in_dir(&base_dir);
    std::fs::copy(&workload.base_disk, &paths.disk)?;
    let summary = create_base(&paths, workload.base_save.as_deref())?;
    let base = Base::open(&paths)?;
    let disk = DiskSource::raw(&workload.custom_disk)?;
    let input = EncodeInput {
        memory: workload.custom_save.as_deref(),
        disk: &disk,
    };
    let overlay = dir.join("app.overlay");
    encode(
        &base,
        &input,
        &overlay,
        &EncodeOptions::default(),
        &NoProgress,
    )?;
    std::fs::remove_dir_all(&base_dir)?;
    Ok(SyntheticVm {
        workload,
        overlay,
        base_id: cloudlet_engine::hex::encode(&summary.id),
    })
}
