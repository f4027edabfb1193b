//! `cloudlet del-base BASE`: remove a base VM (refused while overlays or sessions use it,
//! unless `--force`, which removes those too).

use reqwest::Method;

use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use cloudlet_api::Base;

/// Flags of `del-base`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// Also delete its overlays and stop its sessions.
    #[arg(long)]
    pub force: bool,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let mut path = resolve::base_path(&args.base);
    if args.force {
        path.push_str("?force=true");
    }
    let value = ctx.client()?.json(Method::DELETE, &path, None)?;
    if ctx.json() {
        output::print_json(&value);
    } else {
        let b: Base = serde_json::from_value(value)?;
        output::print(&format!("deleted base `{}` ({})", b.name, b.id));
    }
    Ok(())
}
