//! `cloudlet export-base BASE FILE`: download a base VM as one portable archive (resumable:
//! an interrupted download continues from `FILE.part`).

use std::path::PathBuf;

use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use crate::transfer;

/// Flags of `export-base`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// The archive to write.
    pub file: PathBuf,
}

/// Runs the command. `--json`: `{"file","bytes","resumed_from"}`.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let path = format!("{}/export", resolve::base_path(&args.base));
    let got = transfer::download(
        ctx.client()?,
        &path,
        &args.file,
        ctx.progress(),
        "run the command again",
    )?;
    if ctx.json() {
        output::print_json(&serde_json::to_value(&got)?);
    } else {
        output::print(&format!("exported base to {}", got.summary()));
    }
    Ok(())
}
