//! `cloudlet info-overlay OVERLAY`: reads and verifies a local overlay file's header and
//! metadata (and, with `--verify`, every payload segment) and prints its summary; for an
//! OVERLAY that is no local file, shows the overlay the daemon stores under that id (prefix).

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use cloudlet_engine::format::OverlayReader;

use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use cloudlet_api::Overlay;

/// Flags of `info-overlay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The overlay file, or a stored overlay's id (unique prefix).
    pub overlay: PathBuf,
    /// Also read every payload segment and check its hash.
    #[arg(long)]
    pub verify: bool,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let json = ctx.json();
    let path = &args.overlay;
    if !path.exists() && !path.to_string_lossy().contains('/') {
        if args.verify {
            anyhow::bail!("--verify reads a local file; the daemon verifies stored overlays when it synthesizes them");
        }
        return stored(&path.to_string_lossy(), ctx);
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_size = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut reader = OverlayReader::open(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("reading overlay {}", path.display()))?;
    let mut info = reader.meta().info(file_size);
    info.format_version = reader.format_version();
    if args.verify {
        while reader
            .next_segment()
            .with_context(|| format!("verifying {}", path.display()))?
            .is_some()
        {}
        reader
            .finish()
            .with_context(|| format!("verifying {}", path.display()))?;
    }
    if json {
        output::print(&serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let counts = |c: &cloudlet_engine::format::EncodingCounts| {
        vec![
            c.unchanged.to_string(),
            c.zero.to_string(),
            c.base_ref.to_string(),
            c.self_ref.to_string(),
            c.delta.to_string(),
            c.raw.to_string(),
        ]
    };
    let mut text = String::new();
    for (k, v) in [
        ("overlay", path.display().to_string()),
        ("format", info.format_version.clone()),
        ("base", info.base_id.clone()),
        ("file size", output::size(info.file_size)),
        ("disk", output::size(info.disk_size)),
        (
            "memory",
            if info.has_memory {
                output::size(info.memory_size)
            } else {
                "none (disk-only)".into()
            },
        ),
        ("modified", output::size(info.modified_bytes)),
        (
            "compression",
            format!(
                "{:.1}x ({} segments)",
                info.compression_ratio, info.segments
            ),
        ),
    ] {
        text.push_str(&format!("{k:<12} {v}\n"));
    }
    for (k, v) in &info.properties {
        text.push_str(&format!("{k:<12} {v}\n"));
    }
    text.push('\n');
    let header = [
        "",
        "unchanged",
        "zero",
        "base-ref",
        "self-ref",
        "delta",
        "raw",
    ];
    let mut rows = vec![header.iter().map(|s| (*s).to_string()).collect::<Vec<_>>()];
    let mut mem = vec!["memory".to_string()];
    mem.extend(counts(&info.memory));
    let mut disk = vec!["disk".to_string()];
    disk.extend(counts(&info.disk));
    rows.push(mem);
    rows.push(disk);
    text.push_str(&output::table(&rows));
    if args.verify {
        text.push_str("\nevery segment verified\n");
    }
    output::print(text.trim_end());
    Ok(())
}

/// The daemon's record of a stored overlay.
fn stored(prefix: &str, ctx: &Ctx) -> anyhow::Result<()> {
    let overlay = resolve::overlay(ctx, prefix)?;
    let value = ctx
        .client()?
        .get(&format!("/api/v1/overlays/{}", overlay.id))?;
    if ctx.json() {
        output::print_json(&value);
        return Ok(());
    }
    let o: Overlay = serde_json::from_value(value)?;
    let mut text = String::new();
    for (k, v) in [
        ("overlay", o.id.clone()),
        ("name", o.name.clone().unwrap_or_else(|| "-".into())),
        ("base", o.base_id.clone()),
        ("file size", output::size(o.file_size)),
        (
            "content",
            if o.disk_only {
                "disk only"
            } else {
                "memory + disk"
            }
            .into(),
        ),
        ("mem pages", o.modified_memory_pages.to_string()),
        ("disk chunks", o.modified_disk_chunks.to_string()),
        ("created", output::time(&o.created_at)),
    ] {
        text.push_str(&format!("{k:<12} {v}\n"));
    }
    if let Some(stats) = o.stats.as_object() {
        for (k, v) in stats {
            if !v.is_object() && !v.is_array() {
                text.push_str(&format!("{k:<12} {v}\n"));
            }
        }
    }
    output::print(text.trim_end());
    Ok(())
}
