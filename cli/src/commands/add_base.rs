//! `cloudlet add-base DISK SAVE_FILE`: register an existing base VM (its disk and a libvirt
//! save file of it running) without booting anything.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::json;

use crate::ctx::Ctx;
use crate::localfile::{self, FileField};
use crate::output;
use cloudlet_api::Base;

/// Flags of `add-base`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The disk image (raw or qcow2).
    pub disk: PathBuf,
    /// The VM's memory snapshot (`virsh save` file).
    pub save_file: PathBuf,
    /// Name of the base (default: the disk's file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Application port in the guest to forward in every session (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Upload the files instead of letting the daemon read them from its import directories.
    #[arg(long)]
    pub upload: bool,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let name = localfile::base_name(args.name.as_deref(), &args.disk)?;
    let body = json!({ "name": name, "guest_ports": args.ports });
    let files = [
        FileField {
            field: "disk",
            path: args.disk.clone(),
        },
        FileField {
            field: "save_file",
            path: args.save_file.clone(),
        },
    ];
    let client = ctx.client()?;
    let value = localfile::send_with_files(ctx, body, &files, args.upload, |b| {
        client.json(Method::POST, "/api/v1/bases/add", Some(b))
    })?;
    if ctx.json() {
        output::print_json(&value);
    } else {
        let b: Base = serde_json::from_value(value)?;
        output::print(&format!("added base `{}`: {}", b.name, b.id));
    }
    Ok(())
}
