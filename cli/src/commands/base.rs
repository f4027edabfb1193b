//! `cloudlet base DISK`: boot a disk image, customize it (script and/or by hand), save it as
//! a base VM (memory snapshot + hash lists).

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use super::session_flow::{self, Customize, Outcome};
use crate::ctx::Ctx;
use crate::elijah::QemuOptions;
use crate::localfile::{self, FileField};
use crate::output;

/// Flags of `base`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The disk image (raw or qcow2).
    pub disk: PathBuf,
    /// Name of the base (default: the disk's file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Kernel for direct boot.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct boot.
    #[arg(long, requires = "kernel")]
    pub append: Option<String>,
    /// Guest memory in MiB (daemon default: 1024).
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u64>,
    /// Virtual CPUs (daemon default: 1).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// A console line that says the guest is up (wait for it before the script).
    #[arg(long, value_name = "TEXT")]
    pub ready_marker: Option<String>,
    #[command(flatten)]
    pub customize: Customize,
    /// Upload the files instead of letting the daemon read them from its import directories.
    #[arg(long)]
    pub upload: bool,
    /// Elijah's trailing QEMU options: `-m` and `-smp` are honoured, others reported.
    #[arg(last = true, value_name = "QEMU_OPTIONS")]
    pub qemu: Vec<String>,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let qemu = QemuOptions::parse(&args.qemu, true);
    qemu.warn();
    let name = localfile::base_name(args.name.as_deref(), &args.disk)?;
    let mut body = json!({
        "name": name,
        "guest_ports": args.customize.ports,
        "finish": args.customize.finish,
    });
    args.customize.add_to(&mut body)?;
    let optional = [
        ("cmdline", args.append.clone().map(Value::from)),
        (
            "memory_mib",
            args.memory.or(qemu.memory_mib).map(Value::from),
        ),
        ("vcpus", args.vcpus.or(qemu.vcpus).map(Value::from)),
        ("ready_marker", args.ready_marker.clone().map(Value::from)),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    let mut files = vec![FileField {
        field: "disk",
        path: args.disk.clone(),
    }];
    for (field, path) in [("kernel", &args.kernel), ("initrd", &args.initrd)] {
        if let Some(p) = path {
            files.push(FileField {
                field,
                path: p.clone(),
            });
        }
    }
    let client = ctx.client()?;
    let steps = ctx.progress().steps("base");
    let session = localfile::send_with_files(ctx, body, &files, args.upload, |b| {
        client.with_progress(client.request(Method::POST, "/api/v1/bases").json(b), |e| {
            steps.event(e)
        })
    });
    steps.finish();
    let outcome = session_flow::after_create(ctx, session?, "a base")?;
    let (mut value, finished) = match outcome {
        Outcome::Finished(v) => (v, true),
        Outcome::Running(v) | Outcome::Stopped(v) => (v, false),
    };
    if ctx.json() {
        qemu.annotate(&mut value);
        output::print_json(&value);
    } else if finished {
        let s: cloudlet_api::Session = serde_json::from_value(value)?;
        output::print(&output::session(&s, &ctx.api_host()));
        output::print(&format!(
            "\nbase `{name}` saved: {}",
            s.base_id.as_deref().unwrap_or("-")
        ));
    }
    Ok(())
}
