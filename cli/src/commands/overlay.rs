//! `cloudlet overlay BASE`: resume the base VM on a copy-on-write disk, customize it, save
//! it, encode the overlay, and download the overlay file.

use std::path::PathBuf;

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use super::download_overlay;
use super::session_flow::{self, Customize, Outcome};
use crate::ctx::Ctx;
use crate::elijah::QemuOptions;
use crate::output;
use crate::resolve;
use cloudlet_api::Session;

/// Flags of `overlay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// Disk-only overlay: no memory; synthesis boots the VM (Elijah's -d).
    #[arg(short = 'd', long = "disk")]
    pub disk_only: bool,
    /// Do not pass the guest's TRIM through to the overlay disk (Elijah's -t).
    #[arg(short = 't', long)]
    pub no_trim: bool,
    /// Before saving, run `fstrim` in the guest: deleted files cost nothing in the overlay
    /// even on file systems mounted without `discard`.
    #[arg(long, conflicts_with = "no_trim")]
    pub fstrim: bool,
    /// Before saving, drop the guest's page cache and let free page reporting return the
    /// freed memory, so cached file pages are not shipped (Elijah's -m). Memory the guest
    /// frees by itself is never shipped: the VMs have a free-page-reporting balloon.
    #[arg(short = 'm', long, visible_alias = "extract-free-memory")]
    pub drop_caches: bool,
    /// Accepted for Elijah compatibility: an overlay is always one compressed file.
    #[arg(short = 'z', long)]
    pub zip: bool,
    #[command(flatten)]
    pub customize: Customize,
    /// Where to download the overlay (default: ./<overlay-id>.overlay).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Keep the overlay on the daemon only.
    #[arg(long, conflicts_with = "output")]
    pub no_download: bool,
    /// Elijah's trailing QEMU options: the VM resumes the base as saved, so all are reported.
    #[arg(last = true, value_name = "QEMU_OPTIONS")]
    pub qemu: Vec<String>,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let qemu = QemuOptions::parse(&args.qemu, false);
    qemu.warn();
    if args.zip {
        output::warn("-z has no effect: an overlay is always one compressed file");
    }
    let mut body = json!({
        "base": resolve::base_selector(&args.base),
        "disk_only": args.disk_only,
        "guest_ports": args.customize.ports,
        "finish": args.customize.finish,
    });
    args.customize.add_to(&mut body)?;
    // Sent only when set: a daemon without the field refuses unknown fields.
    for (set, field) in [
        (args.no_trim, "no_trim"),
        (args.fstrim, "fstrim"),
        (args.drop_caches, "drop_caches"),
    ] {
        if set {
            body[field] = Value::Bool(true);
        }
    }
    let client = ctx.client()?;
    let steps = ctx.progress().steps("overlay");
    let session = client.with_progress(
        client.request(Method::POST, "/api/v1/overlays").json(&body),
        |e| steps.event(e),
    );
    steps.finish();
    let (mut value, finished) = match session_flow::after_create(ctx, session?, "an overlay")? {
        Outcome::Finished(v) => (v, true),
        Outcome::Running(v) | Outcome::Stopped(v) => (v, false),
    };
    let s: Session = serde_json::from_value(value.clone())?;
    let mut file = None;
    if finished && !args.no_download {
        let id = s
            .overlay_id
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the finished session {} names no overlay", s.id))?;
        let dest = args
            .output
            .clone()
            .unwrap_or_else(|| download_overlay::default_file(&id));
        // The overlay is safe on the cloudlet whatever happens to this download.
        let got = download_overlay::download(ctx, &id, &dest).with_context(|| {
            format!("overlay {id} saved on the cloudlet, but downloading it failed")
        })?;
        file = Some(got);
    }
    if ctx.json() {
        qemu.annotate(&mut value);
        if let (Some(f), Some(obj)) = (&file, value.as_object_mut()) {
            obj.insert("overlay_file".into(), f.file.display().to_string().into());
        }
        output::print_json(&value);
    } else if finished {
        output::print(&output::session(&s, &ctx.api_host()));
        let id = s.overlay_id.as_deref().unwrap_or("-");
        match &file {
            Some(f) => output::print(&format!(
                "\noverlay {id} saved: {} ({})",
                f.file.display(),
                output::size(f.bytes)
            )),
            None => output::print(&format!(
                "\noverlay {id} saved on the cloudlet (download it with `cloudlet download-overlay {id}`)"
            )),
        }
    }
    Ok(())
}
