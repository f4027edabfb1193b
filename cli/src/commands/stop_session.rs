//! `cloudlet stop-session ID`: destroy a session's VM and its files (a base or overlay
//! session is discarded without saving).

use reqwest::Method;

use super::show_session::SessionArg;
use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use cloudlet_api::Session;

/// Runs the command.
pub fn run(args: &SessionArg, ctx: &Ctx) -> anyhow::Result<()> {
    let id = resolve::session(ctx, &args.id)?;
    let value = ctx
        .client()?
        .json(Method::POST, &format!("/api/v1/sessions/{id}/stop"), None)?;
    if ctx.json() {
        output::print_json(&value);
    } else {
        let s: Session = serde_json::from_value(value)?;
        output::print(&format!("session {} {}", s.id, s.state));
    }
    Ok(())
}
