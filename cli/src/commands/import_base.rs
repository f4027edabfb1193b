//! `cloudlet import-base FILE`: send a base archive (made by `export-base`) to the cloudlet,
//! streamed; the daemon verifies it as it arrives.

use std::path::PathBuf;

use reqwest::Method;

use crate::ctx::Ctx;
use crate::output;
use crate::transfer;
use cloudlet_api::Base;

/// Flags of `import-base`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base archive.
    pub file: PathBuf,
    /// Name of the imported base (default: its name on the cloudlet it came from).
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let mut rb = client.request(Method::POST, "/api/v1/bases/import");
    if let Some(n) = &args.name {
        rb = rb.query(&[("name", n)]);
    }
    let (rb, bar) = transfer::with_file_body(
        rb,
        &args.file,
        ctx.progress(),
        &format!("importing {}", args.file.display()),
    )?;
    let resp = client.send(rb);
    bar.finish_and_clear();
    let value = crate::client::read_json(resp?)?;
    if ctx.json() {
        output::print_json(&value);
    } else {
        let b: Base = serde_json::from_value(value)?;
        output::print(&format!("imported base `{}`: {}", b.name, b.id));
    }
    Ok(())
}
