//! `cloudlet synthesis BASE OVERLAY`: rebuild the customized VM from a base and an overlay
//! and resume it. OVERLAY is a local file (streamed to the daemon, decoded as it arrives),
//! an http(s) URL (the daemon fetches it), or a stored overlay's id or unique prefix.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::client::Client;
use crate::ctx::Ctx;
use crate::elijah::QemuOptions;
use crate::output;
use crate::resolve;
use crate::retry;
use crate::transfer;
use cloudlet_api::Session;

/// The request header that makes a retried synthesis safe (docs/api.md).
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Flags of `synthesis`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// Overlay file, http(s) URL, or stored overlay id (prefix).
    pub overlay: String,
    /// Fail at once when the cloudlet is busy instead of waiting for a free slot.
    #[arg(long)]
    pub no_wait: bool,
    /// Longest to wait for a free synthesis slot, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub max_wait: u64,
    /// Elijah's trailing QEMU options: the VM resumes as it was saved, so all are reported.
    #[arg(last = true, value_name = "QEMU_OPTIONS")]
    pub qemu: Vec<String>,
}

/// Where the overlay comes from.
enum Source<'a> {
    /// The daemon fetches it, or has it: a JSON request.
    Json(serde_json::Value),
    /// A local file streamed as the body.
    File(&'a Path),
}

/// One synthesis request, sent again (same key) by [`retry::synthesis`].
struct Request<'a> {
    ctx: &'a Ctx,
    client: &'a Client,
    base: String,
    source: Source<'a>,
}

impl retry::Attempt for Request<'_> {
    fn send(&mut self, key: &str) -> anyhow::Result<serde_json::Value> {
        match &self.source {
            Source::Json(body) => {
                let rb = self
                    .client
                    .request(Method::POST, "/api/v1/synthesis")
                    .header(IDEMPOTENCY_KEY, key)
                    .json(body);
                let steps = self.ctx.progress().steps("synthesis");
                self.client.with_progress(rb, |e| steps.event(e))
            }
            Source::File(path) => {
                let rb = self
                    .client
                    .request(Method::POST, "/api/v1/synthesis/upload")
                    .header(IDEMPOTENCY_KEY, key)
                    .query(&[("base", &self.base)]);
                let (rb, bar) = transfer::with_file_body(
                    rb,
                    path,
                    self.ctx.progress(),
                    &format!("sending {}", path.display()),
                )?;
                // The spinner replaces the byte bar once the daemon reports its first step.
                let mut steps = None;
                let answer = self.client.with_progress(rb, |e| {
                    bar.finish_and_clear();
                    steps
                        .get_or_insert_with(|| self.ctx.progress().steps("synthesis"))
                        .event(e)
                });
                bar.finish_and_clear();
                answer
            }
        }
    }

    fn uploads(&self) -> bool {
        matches!(self.source, Source::File(_))
    }
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let qemu = QemuOptions::parse(&args.qemu, false);
    qemu.warn();
    let client = ctx.client()?;
    let base = resolve::base_selector(&args.base);
    let path = Path::new(&args.overlay);
    let source = if args.overlay.starts_with("http://") || args.overlay.starts_with("https://") {
        Source::Json(json!({ "base": base, "overlay_url": args.overlay }))
    } else if path.is_file() {
        // Refuse an unknown base before sending the whole overlay.
        client.get(&resolve::base_path(&args.base))?;
        Source::File(path)
    } else if args.overlay.contains('/') {
        anyhow::bail!("{}: no such file", args.overlay);
    } else {
        let overlay = resolve::overlay(ctx, &args.overlay)?;
        Source::Json(json!({ "base": base, "overlay_id": overlay.id }))
    };
    let wait = retry::SlotWait {
        limit: if args.no_wait {
            Duration::ZERO
        } else {
            Duration::from_secs(args.max_wait)
        },
        verbose: !ctx.global.quiet,
    };
    let mut request = Request {
        ctx,
        client,
        base,
        source,
    };
    let mut value = retry::synthesis(client, wait, &mut request)?;
    if ctx.json() {
        qemu.annotate(&mut value);
        output::print_json(&value);
    } else {
        let s: Session = serde_json::from_value(value)?;
        output::print(&output::session(&s, &ctx.api_host()));
    }
    Ok(())
}
