//! `cloudlet completions SHELL`: shell completion script on stdout, generated from the
//! command definitions (`--json`: `{"shell","script"}`).

use clap::CommandFactory;
use clap_complete::Shell;

use crate::ctx::Ctx;
use crate::output;

/// Flags of `completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "cloudlet", &mut script);
    let script = String::from_utf8(script)?;
    if ctx.json() {
        output::print_json(&serde_json::json!({
            "shell": args.shell.to_string(),
            "script": script,
        }));
    } else {
        output::print(script.trim_end());
    }
    Ok(())
}
