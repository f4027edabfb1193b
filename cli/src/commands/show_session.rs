//! `cloudlet show-session ID`: one session: state, VM addresses, ports, script results,
//! timing breakdown.

use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use cloudlet_api::Session;

/// Flags of the commands that name one session.
#[derive(Debug, clap::Args)]
pub struct SessionArg {
    /// Session id or unique prefix.
    pub id: String,
}

/// Runs the command.
pub fn run(args: &SessionArg, ctx: &Ctx) -> anyhow::Result<()> {
    let id = resolve::session(ctx, &args.id)?;
    let value = ctx.client()?.get(&format!("/api/v1/sessions/{id}"))?;
    if ctx.json() {
        output::print_json(&value);
    } else {
        let s: Session = serde_json::from_value(value)?;
        output::print(&output::session(&s, &ctx.api_host()));
    }
    Ok(())
}
