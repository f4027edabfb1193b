//! `cloudlet finish-session ID`: save a base or overlay session's VM (what Enter does in
//! the interactive `base` / `overlay`), for sessions left running.

use super::session_flow;
use super::show_session::SessionArg;
use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use cloudlet_api::{Session, SessionKind, SessionState};

/// Runs the command.
pub fn run(args: &SessionArg, ctx: &Ctx) -> anyhow::Result<()> {
    let id = resolve::session(ctx, &args.id)?;
    let value = session_flow::finish(ctx, &id)?;
    if ctx.json() {
        output::print_json(&value);
    } else {
        let s: Session = serde_json::from_value(value)?;
        output::print(&output::session(&s, &ctx.api_host()));
        if let (true, Some(id)) = (s.state == SessionState::Finished, &s.overlay_id) {
            if s.kind == SessionKind::Overlay {
                output::print(&format!(
                    "\noverlay {id} saved on the cloudlet (download it with `cloudlet download-overlay {id}`)"
                ));
            }
        }
    }
    Ok(())
}
