//! `cloudlet`: the command line. Commands keep CMU Elijah's names; `info-overlay` works on
//! a local file without a daemon. (Commands that drive the daemon arrive with its REST API.)
#![forbid(unsafe_code)]

mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// cloudlet: VM synthesis for edge devices (Elijah-compatible command line).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Print JSON instead of human-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli.command, cli.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
