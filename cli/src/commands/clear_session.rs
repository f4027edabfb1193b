//! `cloudlet clear-session`: forget ended sessions (their VMs are gone already).

use reqwest::Method;

use crate::ctx::Ctx;
use crate::output;

/// Runs the command.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let value = ctx
        .client()?
        .json(Method::DELETE, "/api/v1/sessions", None)?;
    if ctx.json() {
        output::print_json(&value);
    } else {
        let n = value["removed"].as_u64().unwrap_or(0);
        output::print(&format!("removed {n} ended session(s)"));
    }
    Ok(())
}
