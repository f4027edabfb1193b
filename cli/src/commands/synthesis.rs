//! `cloudlet synthesis BASE OVERLAY`: rebuild the customized VM from a base and an overlay
//! and resume it. OVERLAY is a local file (streamed to the daemon, decoded as it arrives),
//! an http(s) URL (the daemon fetches it), or a stored overlay's id or unique prefix.

use std::path::Path;

use reqwest::Method;
use serde_json::json;

use crate::ctx::Ctx;
use crate::elijah::QemuOptions;
use crate::output;
use crate::resolve;
use crate::transfer;
use cloudlet_api::Session;

/// Flags of `synthesis`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base: id, unique id prefix, name or source disk path.
    pub base: String,
    /// Overlay file, http(s) URL, or stored overlay id (prefix).
    pub overlay: String,
    /// Elijah's trailing QEMU options: the VM resumes as it was saved, so all are reported.
    #[arg(last = true, value_name = "QEMU_OPTIONS")]
    pub qemu: Vec<String>,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let qemu = QemuOptions::parse(&args.qemu, false);
    qemu.warn();
    let client = ctx.client()?;
    let base = resolve::base_selector(&args.base);
    let path = Path::new(&args.overlay);
    let answer = if args.overlay.starts_with("http://") || args.overlay.starts_with("https://") {
        let body = json!({ "base": base, "overlay_url": args.overlay });
        with_steps(
            ctx,
            client
                .request(Method::POST, "/api/v1/synthesis")
                .json(&body),
        )
    } else if path.is_file() {
        // Refuse an unknown base before sending the whole overlay.
        client.get(&resolve::base_path(&args.base))?;
        let rb = client
            .request(Method::POST, "/api/v1/synthesis/upload")
            .query(&[("base", &base)]);
        let (rb, bar) = transfer::with_file_body(
            rb,
            path,
            ctx.progress(),
            &format!("sending {}", path.display()),
        )?;
        // The spinner replaces the byte bar once the daemon reports its first step.
        let mut steps = None;
        let answer = client.with_progress(rb, |e| {
            bar.finish_and_clear();
            steps
                .get_or_insert_with(|| ctx.progress().steps("synthesis"))
                .event(e)
        });
        bar.finish_and_clear();
        answer
    } else if args.overlay.contains('/') {
        anyhow::bail!("{}: no such file", args.overlay);
    } else {
        let overlay = resolve::overlay(ctx, &args.overlay)?;
        let body = json!({ "base": base, "overlay_id": overlay.id });
        with_steps(
            ctx,
            client
                .request(Method::POST, "/api/v1/synthesis")
                .json(&body),
        )
    };
    let mut value = answer?;
    if ctx.json() {
        qemu.annotate(&mut value);
        output::print_json(&value);
    } else {
        let s: Session = serde_json::from_value(value)?;
        output::print(&output::session(&s, &ctx.api_host()));
    }
    Ok(())
}

fn with_steps(
    ctx: &Ctx,
    rb: reqwest::blocking::RequestBuilder,
) -> anyhow::Result<serde_json::Value> {
    let steps = ctx.progress().steps("synthesis");
    ctx.client()?.with_progress(rb, |e| steps.event(e))
}
