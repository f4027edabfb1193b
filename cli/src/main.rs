//! `cloudlet`: the command line of a cloudlet. Commands keep CMU Elijah's names and drive
//! the daemon `cloudletd` over its HTTP API; `info-overlay`, `completions` and `man` also
//! work without one. Exit codes: 0 success, 1 error (one line `error: ...` on stderr, or
//! `{"error":{..}}` with `--json`), 2 usage, and `run` exits with the guest command's status.
#![forbid(unsafe_code)]

mod client;
mod commands;
mod ctx;
mod elijah;
mod localfile;
mod output;
mod progress;
mod report;
mod resolve;
mod retry;
mod tls;
mod transfer;

use std::process::ExitCode;

use clap::Parser;

/// cloudlet: VM synthesis for edge devices (Elijah-compatible command line).
#[derive(Debug, Parser)]
#[command(name = "cloudlet", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: ctx::GlobalArgs,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = ctx::Ctx::new(cli.global);
    match commands::run(&cli.command, &ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(commands::GuestStatus(status)) = e.downcast_ref() {
                return ExitCode::from(u8::try_from(*status).ok().filter(|s| *s != 0).unwrap_or(1));
            }
            report::error(&e, ctx.json());
            ExitCode::FAILURE
        }
    }
}
