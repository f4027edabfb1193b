//! `cloudlet download-overlay ID [-o FILE]`: fetch a stored overlay's file (one made by
//! `overlay --no-download`, left by `finish-session`, or whose download was interrupted:
//! it resumes from `FILE.part` like `export-base`).

use std::path::{Path, PathBuf};

use crate::ctx::Ctx;
use crate::output;
use crate::resolve;
use crate::transfer;

/// Flags of `download-overlay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stored overlay's id (or unique prefix; see list-overlay).
    pub id: String,
    /// Where to write it (default: ./<overlay-id>.overlay).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs the command. `--json`: `{"file","bytes","resumed_from"}`.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let id = resolve::overlay(ctx, &args.id)?.id;
    let dest = args.output.clone().unwrap_or_else(|| default_file(&id));
    let got = download(ctx, &id, &dest)?;
    if ctx.json() {
        output::print_json(&serde_json::to_value(&got)?);
    } else {
        output::print(&format!("downloaded overlay {id} to {}", got.summary()));
    }
    Ok(())
}

/// `./<id>.overlay`.
pub fn default_file(id: &str) -> PathBuf {
    PathBuf::from(format!("{id}.overlay"))
}

/// Downloads overlay `id` (a full id) to `dest`; an interruption names this command.
pub fn download(ctx: &Ctx, id: &str, dest: &Path) -> anyhow::Result<transfer::Downloaded> {
    transfer::download(
        ctx.client()?,
        &format!("/api/v1/overlays/{id}/file"),
        dest,
        ctx.progress(),
        &format!("run `{}`", command(id, dest)),
    )
}

/// The command that (re)downloads overlay `id` to `dest`.
pub fn command(id: &str, dest: &Path) -> String {
    if dest == default_file(id) {
        format!("cloudlet download-overlay {id}")
    } else {
        format!(
            "cloudlet download-overlay {id} -o {}",
            shell_word(&dest.display().to_string())
        )
    }
}

/// `word` quoted for a POSIX shell when it holds anything but plain path characters.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_commands_can_be_pasted() {
        assert_eq!(
            command("0193ab", Path::new("0193ab.overlay")),
            "cloudlet download-overlay 0193ab"
        );
        assert_eq!(
            command("0193ab", Path::new("/tmp/app.overlay")),
            "cloudlet download-overlay 0193ab -o /tmp/app.overlay"
        );
        assert_eq!(
            command("0193ab", Path::new("my app's.overlay")),
            r"cloudlet download-overlay 0193ab -o 'my app'\''s.overlay'"
        );
    }
}
