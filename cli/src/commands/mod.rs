//! One module per command.

mod info_overlay;

use clap::Subcommand;

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what an overlay holds: its base, sizes, chunk counts per encoding, ratio.
    #[command(name = "info-overlay")]
    InfoOverlay(info_overlay::Args),
}

/// Runs one command.
pub fn run(command: Command, json: bool) -> anyhow::Result<()> {
    match command {
        Command::InfoOverlay(args) => info_overlay::run(&args, json),
    }
}
