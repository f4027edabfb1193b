//! `cloudlet console ID`: where to look at a session's VM: its VNC display and serial
//! console socket (both local to the cloudlet host; the socket comes from the operator
//! route `GET /api/v1/sessions/{id}/host`). `--json`: that route's answer.

use super::show_session::SessionArg;
use crate::client::ApiError;
use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use cloudlet_api::{Session, SessionHost};

/// Runs the command.
pub fn run(args: &SessionArg, ctx: &Ctx) -> anyhow::Result<()> {
    let id = resolve::session(ctx, &args.id)?;
    let client = ctx.client()?;
    let s: Session = serde_json::from_value(client.get(&format!("/api/v1/sessions/{id}"))?)?;
    let host_value = client.get(&format!("/api/v1/sessions/{id}/host"))?;
    if ctx.json() {
        output::print_json(&host_value);
        return Ok(());
    }
    let host: SessionHost = serde_json::from_value(host_value)?;
    if !s.state.is_active() {
        return Err(ApiError::local(
            "conflict",
            format!("session {} is {}: its VM is gone", s.id, s.state),
        )
        .into());
    }
    let mut text = String::new();
    if let Some(vnc) = output::vnc(&s) {
        text.push_str(&format!(
            "vnc      {vnc}   (e.g. `vncviewer {vnc}`; through ssh: `ssh -L 5900:{vnc} HOST`)\n"
        ));
    }
    if let Some(sock) = &host.console_path {
        text.push_str(&format!(
            "console  {sock}\n         attach: `socat -,raw,echo=0 UNIX-CONNECT:{sock}` \
             (Ctrl-O to quit) or `nc -U {sock}`\n"
        ));
    }
    if text.is_empty() {
        text.push_str("the session reports no VNC display and no console");
    }
    output::print(text.trim_end());
    Ok(())
}
