//! `cloudlet run ID -- CMD...`: one shell line in a session's guest over its serial console
//! (`cloudlet run ID -` reads a whole script from stdin and runs it as one unit); prints
//! its output and exits with its status.

use anyhow::Context;
use reqwest::Method;
use serde_json::json;

use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use cloudlet_api::RunResponse;

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Session id or unique prefix.
    pub id: String,
    /// Seconds to wait for the command.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The shell line (words are joined with spaces); `-` reads a script from stdin.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The guest command's non-zero exit status: the CLI exits with it.
#[derive(Debug)]
pub struct GuestStatus(pub i32);

impl std::fmt::Display for GuestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest command exited with status {}", self.0)
    }
}

impl std::error::Error for GuestStatus {}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let id = resolve::session(ctx, &args.id)?;
    let command = if args.command == ["-"] {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the script from stdin")?;
        text
    } else {
        args.command.join(" ")
    };
    let body = json!({ "command": command, "timeout_s": args.timeout });
    let value = ctx.client()?.json(
        Method::POST,
        &format!("/api/v1/sessions/{id}/run"),
        Some(&body),
    )?;
    let out: RunResponse = serde_json::from_value(value.clone())?;
    if ctx.json() {
        output::print_json(&value);
    } else if !out.output.is_empty() {
        output::print(out.output.trim_end_matches('\n'));
    }
    if out.status != 0 {
        return Err(GuestStatus(out.status).into());
    }
    Ok(())
}
