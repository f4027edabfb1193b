//! `cloudlet list-session`: the sessions whose VM may be running; `--all` adds the history
//! (finished, stopped and failed sessions, until `clear-session`).

use crate::ctx::Ctx;
use crate::output;
use cloudlet_api::Session;

/// Flags of `list-session`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also show ended sessions (finished, stopped, failed).
    #[arg(short, long)]
    pub all: bool,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let value = ctx.client()?.get("/api/v1/sessions")?;
    let raw = value.as_array().cloned().unwrap_or_default();
    let mut shown = Vec::new();
    let mut sessions = Vec::new();
    for v in raw {
        let s: Session = serde_json::from_value(v.clone())?;
        if args.all || s.state.is_active() {
            shown.push(v);
            sessions.push(s);
        }
    }
    if ctx.json() {
        output::print_json(&serde_json::Value::Array(shown));
        return Ok(());
    }
    let hidden = value.as_array().map_or(0, Vec::len) - sessions.len();
    let mut rows = vec![["ID", "KIND", "STATE", "BASE", "PORTS", "CREATED", "ENDED"]
        .map(String::from)
        .to_vec()];
    for s in &sessions {
        let ports: Vec<String> = s
            .host_ports
            .iter()
            .map(|(g, h)| format!("{g}\u{2192}{h}"))
            .collect();
        rows.push(vec![
            s.id.clone(),
            s.kind.to_string(),
            s.state.to_string(),
            s.base_id.as_deref().map_or("-".into(), output::short_id),
            if ports.is_empty() || !s.state.is_active() {
                "-".into()
            } else {
                ports.join(",")
            },
            output::time(&s.created_at),
            s.ended_at.as_deref().map_or("-".into(), output::time),
        ]);
    }
    let mut text = if sessions.is_empty() {
        "no active sessions".to_string()
    } else {
        output::table(&rows).trim_end().to_string()
    };
    if hidden > 0 {
        text.push_str(&format!(
            "\n({hidden} ended sessions not shown: --all shows them)"
        ));
    }
    output::print(&text);
    Ok(())
}
