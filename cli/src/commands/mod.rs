//! One module per command; Elijah's names (`base`, `overlay`, `synthesis`, `info-overlay`,
//! `list-base`, ...) plus the session commands the daemon makes possible.

mod add_base;
mod base;
mod clear_session;
mod completions;
mod console;
mod del_base;
mod download_overlay;
mod export_base;
mod finish_session;
mod import_base;
mod info_overlay;
mod list_base;
mod list_overlay;
mod list_session;
mod man;
mod overlay;
mod run;
mod session_flow;
mod show_session;
mod stop_session;
mod synthesis;
mod token;

use clap::Subcommand;

use crate::ctx::Ctx;
pub use run::GuestStatus;

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a base VM: boot a disk image, customize it, save its memory and hash lists.
    Base(base::Args),
    /// Create an overlay: resume a base VM, customize it, save it, encode the difference.
    Overlay(overlay::Args),
    /// Rebuild a customized VM from a base and an overlay and resume it.
    Synthesis(synthesis::Args),
    /// Show what an overlay holds: its base, sizes, chunk counts per encoding, ratio.
    #[command(name = "info-overlay")]
    InfoOverlay(info_overlay::Args),
    /// List the base VMs.
    #[command(name = "list-base")]
    ListBase,
    /// List the stored overlays.
    #[command(name = "list-overlay")]
    ListOverlay,
    /// List the sessions (running VMs; --all: also ended ones).
    #[command(name = "list-session")]
    ListSession(list_session::Args),
    /// Forget ended sessions.
    #[command(name = "clear-session")]
    ClearSession,
    /// Register an existing base VM: its disk and a memory snapshot (save file).
    #[command(name = "add-base")]
    AddBase(add_base::Args),
    /// Remove a base VM.
    #[command(name = "del-base")]
    DelBase(del_base::Args),
    /// Import a base VM from an archive made by export-base.
    #[command(name = "import-base")]
    ImportBase(import_base::Args),
    /// Write a base VM into one portable archive (resumable download).
    #[command(name = "export-base")]
    ExportBase(export_base::Args),
    /// Download a stored overlay's file (resumable download).
    #[command(name = "download-overlay")]
    DownloadOverlay(download_overlay::Args),
    /// Show one session: state, VM addresses, ports, timings.
    #[command(name = "show-session")]
    ShowSession(show_session::SessionArg),
    /// Save a base / overlay session's VM (builds the base / overlay).
    #[command(name = "finish-session")]
    FinishSession(show_session::SessionArg),
    /// Destroy a session's VM (a base / overlay session is discarded).
    #[command(name = "stop-session")]
    StopSession(show_session::SessionArg),
    /// Print how to reach a session's VNC display and serial console.
    Console(show_session::SessionArg),
    /// Run one shell line in a session's guest; exits with its status.
    Run(run::Args),
    /// Manage the daemon's API tokens: create (per device, with a role), list, revoke.
    Token(token::Args),
    /// Print a shell completion script.
    Completions(completions::Args),
    /// Print or write the man pages.
    Man(man::Args),
}

/// Runs one command.
pub fn run(command: &Command, ctx: &Ctx) -> anyhow::Result<()> {
    match command {
        Command::Base(a) => base::run(a, ctx),
        Command::Overlay(a) => overlay::run(a, ctx),
        Command::Synthesis(a) => synthesis::run(a, ctx),
        Command::InfoOverlay(a) => info_overlay::run(a, ctx),
        Command::ListBase => list_base::run(ctx),
        Command::ListOverlay => list_overlay::run(ctx),
        Command::ListSession(a) => list_session::run(a, ctx),
        Command::ClearSession => clear_session::run(ctx),
        Command::AddBase(a) => add_base::run(a, ctx),
        Command::DelBase(a) => del_base::run(a, ctx),
        Command::ImportBase(a) => import_base::run(a, ctx),
        Command::ExportBase(a) => export_base::run(a, ctx),
        Command::DownloadOverlay(a) => download_overlay::run(a, ctx),
        Command::ShowSession(a) => show_session::run(a, ctx),
        Command::FinishSession(a) => finish_session::run(a, ctx),
        Command::StopSession(a) => stop_session::run(a, ctx),
        Command::Console(a) => console::run(a, ctx),
        Command::Run(a) => run::run(a, ctx),
        Command::Token(a) => token::run(a, ctx),
        Command::Completions(a) => completions::run(a, ctx),
        Command::Man(a) => man::run(a, ctx),
    }
}
