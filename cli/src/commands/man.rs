//! `cloudlet man [--dir DIR]`: man pages generated from the command definitions: cloudlet.1
//! on stdout, or with `--dir` cloudlet.1 plus cloudlet-<command>.1 for every command
//! (`--json`: `{"dir","files"}`, or `{"page"}` without `--dir`).

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

use crate::ctx::Ctx;
use crate::output;

/// Flags of `man`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write every page into this directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let cmd = crate::Cli::command();
    let Some(dir) = &args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        let page = String::from_utf8(page)?;
        if ctx.json() {
            output::print_json(&serde_json::json!({ "page": page }));
        } else {
            output::print(page.trim_end());
        }
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut write = |name: String, cmd: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        // The page's title is the full command name, as in `man cloudlet-base`.
        clap_mangen::Man::new(cmd).title(name).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        files.push(path.display().to_string());
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write(format!("cloudlet-{}", sub.get_name()), sub.clone())?;
    }
    write("cloudlet".into(), cmd)?;
    if ctx.json() {
        output::print_json(
            &serde_json::json!({ "dir": dir.display().to_string(), "files": files }),
        );
    } else {
        output::print(&format!("wrote {} pages to {}", files.len(), dir.display()));
    }
    Ok(())
}
