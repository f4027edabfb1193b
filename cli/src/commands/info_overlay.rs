//! `cloudlet info-overlay OVERLAY`: reads and verifies the overlay's header and metadata
//! (and, with `--verify`, every payload segment) and prints its summary.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use cloudlet_engine::format::OverlayReader;

use crate::output;

/// Flags of `info-overlay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The overlay file.
    pub overlay: PathBuf,
    /// Also read every payload segment and check its hash.
    #[arg(long)]
    pub verify: bool,
}

/// Runs the command.
pub fn run(args: &Args, json: bool) -> anyhow::Result<()> {
    let path = &args.overlay;
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_size = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut reader = OverlayReader::open(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("reading overlay {}", path.display()))?;
    let info = reader.meta().info(file_size);
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
