//! What `base` and `overlay` share: the customization options, and what happens after the
//! daemon started the VM. Elijah opened a VNC window and saved the VM when it was closed;
//! here the VM runs headless and the user says when: Enter saves it, `q` or Ctrl-C discards
//! it, Ctrl-D leaves it running (finish it later with `cloudlet finish-session ID`).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use crate::ctx::Ctx;
use crate::output;
use cloudlet_api::{Session, SessionState};

/// How the VM is customized.
#[derive(Debug, Clone, clap::Args)]
pub struct Customize {
    /// Application port in the guest to forward to a host port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// A script to run in the guest over its serial console, as one unit: uploaded, then
    /// run by the interpreter of its `#!` line (`sh` without one), so heredocs, functions
    /// and multi-line `if`/`for` work; a non-zero exit status fails the session.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// One shell line to run in the guest (repeatable; after --script).
    #[arg(short = 'e', long = "exec", value_name = "CMD")]
    pub exec: Vec<String>,
    /// Save the VM right after the script instead of waiting for you.
    #[arg(long)]
    pub finish: bool,
}

impl Customize {
    /// Adds the customization to a create request: `script_text` (the `--script` file,
    /// whole) and `script` (the `-e` lines).
    pub fn add_to(&self, body: &mut serde_json::Value) -> anyhow::Result<()> {
        if let Some(path) = &self.script {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading script {}", path.display()))?;
            body["script_text"] = text.into();
        }
        body["script"] = self.exec.clone().into();
        Ok(())
    }
}

/// How a base / overlay session ended up.
pub enum Outcome {
    /// Saved: the base / overlay exists. The session JSON.
    Finished(Value),
    /// Still running (no TTY, `--json`, or detached).
    Running(Value),
    /// Discarded.
    Stopped(Value),
}

/// After the create request answered `session`: wait for the user when it is still running
/// and stdin is a terminal (and not `--json`), else return it as it is.
pub fn after_create(ctx: &Ctx, session: Value, what: &str) -> anyhow::Result<Outcome> {
    let s: Session = serde_json::from_value(session.clone())?;
    if s.state == SessionState::Finished {
        return Ok(Outcome::Finished(session));
    }
    if !s.state.is_active() {
        return Ok(Outcome::Stopped(session));
    }
    if ctx.json() || !std::io::stdin().is_terminal() {
        if !ctx.json() {
            output::print(&output::session(&s, &ctx.api_host()));
            output::print(&format!(
                "\nthe VM is running: save it as {what} with `cloudlet finish-session {id}`, \
                 or discard it with `cloudlet stop-session {id}`",
                id = s.id
            ));
        }
        return Ok(Outcome::Running(session));
    }
    output::print(&output::session(&s, &ctx.api_host()));
    output::print(&format!(
        "\nCustomize the VM (VNC {}, serial console: `cloudlet console {}`).\n\
         Press Enter to save it as {what}, q then Enter (or Ctrl-C) to discard it, \
         Ctrl-D to leave it running.",
        output::vnc(&s).unwrap_or_else(|| "-".into()),
        s.id,
    ));
    match wait_for_user() {
        Choice::Save => Ok(Outcome::Finished(finish(ctx, &s.id)?)),
        Choice::Discard => {
            let stopped = ctx.client()?.json(
                Method::POST,
                &format!("/api/v1/sessions/{}/stop", s.id),
                None,
            )?;
            output::print(&format!("discarded session {}", s.id));
            Ok(Outcome::Stopped(stopped))
        }
        Choice::Detach => {
            output::print(&format!(
                "left running: `cloudlet finish-session {id}` saves it, `cloudlet stop-session {id}` discards it",
                id = s.id
            ));
            Ok(Outcome::Running(session))
        }
    }
}

/// Saves a session's VM (`POST /sessions/{id}/finish`) showing the daemon's steps.
pub fn finish(ctx: &Ctx, id: &str) -> anyhow::Result<Value> {
    let client = ctx.client()?;
    let steps = ctx.progress().steps("saving");
    let done = client.with_progress(
        client.request(Method::POST, &format!("/api/v1/sessions/{id}/finish")),
        |e| steps.event(e),
    );
    steps.finish();
    done
}

enum Choice {
    Save,
    Discard,
    Detach,
}

fn wait_for_user() -> Choice {
    let (tx, rx) = mpsc::channel();
    let on_interrupt = tx.clone();
    // Ctrl-C while waiting means "discard", not "leave a VM behind".
    // Once the choice is made nobody listens: Ctrl-C then ends the CLI as usual.
    let _ = ctrlc::set_handler(move || {
        if on_interrupt.send(Choice::Discard).is_err() {
            std::process::exit(130);
        }
    });
    std::thread::spawn(move || {
        let mut line = String::new();
        let choice = match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => Choice::Detach,
            Ok(_) if matches!(line.trim(), "q" | "quit" | "stop") => Choice::Discard,
            Ok(_) => Choice::Save,
        };
        let _ = tx.send(choice);
    });
    rx.recv().unwrap_or(Choice::Detach)
}
