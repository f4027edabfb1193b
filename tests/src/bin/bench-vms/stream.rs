//! `--stream`: synthesis and overlay-session start with the memory streamed into the
//! restore and the overlay encoded from the save as it is written (`restore_stream =
//! save_stream = on`) against the save-file path (`off`), on one 1 GiB-RAM
//! guest, in one run: the same daemon data directory, restarted for each mode, the modes
//! alternating run by run (on/off, off/on, ...).
//!
//! Per mode and run: an overlay creation (save + encode), an overlay session's start
//! (prepare + resume), a synthesis from the stored overlay (wall time to the app
//! answering, the bytes the daemon wrote, the qcow2's size), and syntheses uploaded over
//! a paced link (10, 40, 100 Mbit/s) measured from the first byte sent to the app
//! answering on its forwarded port. The reference is a
//! plain `virsh restore` of the customized VM's save file from the page cache.
//!
//! The guest is the fixture (busybox; its memory mostly zero pages) or, with `--debian`,
//! the stock Debian 12 guest (systemd, a Python app installed by
//! `tests/fixtures/demo-app.sh`), whose memory is mostly written pages.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{median, workloads, DaemonBase};

/// Upload speeds of the link series, in Mbit/s.
const LINK_MBIT: [u64; 3] = [10, 40, 100];

/// The app the fixture's overlay carries: answers on guest port 8080.
const APP: &str = "nc -ll -p 8080 -e echo hello-from-guest >/dev/null 2>&1 &";

/// The two modes compared: `restore_stream = save_stream =` this.
const MODES: [&str; 2] = ["on", "off"];

/// One mode's measurements, gathered over the runs.
#[derive(Default)]
struct ModeRuns {
    creations: Vec<Value>,
    starts: Vec<Duration>,
    session_timings: Vec<Value>,
    syntheses: Vec<Value>,
    link: Vec<Value>,
    peak_rss_mib: u64,
}

/// The median in seconds; NaN (null in the JSON) for a part not run.
fn median_s(v: &[Duration]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        median(v.to_vec()).as_secs_f64()
    }
}

/// The parts of the comparison to run (`--only creation,start,...`; all by default).
pub(super) struct Parts {
    creation: bool,
    start: bool,
    synthesis: bool,
    link: bool,
}

impl Parts {
    pub(super) fn parse(only: Option<&str>) -> anyhow::Result<Self> {
        let Some(only) = only else {
            return Ok(Self {
                creation: true,
                start: true,
                synthesis: true,
                link: true,
            });
        };
        let mut parts = Self {
            creation: false,
            start: false,
            synthesis: false,
            link: false,
        };
        for part in only.split(',') {
            match part {
                "creation" => parts.creation = true,
                "start" => parts.start = true,
                "synthesis" => parts.synthesis = true,
                "link" => parts.link = true,
                other => bail!("unknown --stream part {other}: creation, start, synthesis, link"),
            }
        }
        Ok(parts)
    }
}

/// The guest measured.
pub(super) enum Guest {
    /// The fixture guest's directory (kernel, initramfs, disk).
    Fixture(PathBuf),
    /// The stock Debian 12 guest.
    Debian(cloudlet_e2e::DebianGuest),
}

impl Guest {
    /// The base (1 GiB of RAM), the overlay's customization (a create request's fields)
    /// and what the guest is.
    fn boot(&self, tmp: &Path) -> anyhow::Result<(DaemonBase, Value, &'static str)> {
        Ok(match self {
            Guest::Fixture(dir) => {
                let b = DaemonBase::boot(dir, tmp, "stream", 2 << 30, 1024)?;
                let mut script = workloads()
                    .into_iter()
                    .find(|w| w.name == "reference")
                    .context("reference workload")?
                    .script;
                script.push(APP.to_string());
                let what = "1 GiB RAM, 2 GiB disk (fixture kernel + initramfs)";
                (b, json!({ "script": script }), what)
            }
            Guest::Debian(g) => {
                let b = DaemonBase::boot_disk(&g.disk, tmp, "stream", 1024, &g.ready_marker)?;
                let app = cloudlet_e2e::repo_root().join("tests/fixtures/demo-app.sh");
                let script = std::fs::read_to_string(app)?;
                let what = "1 GiB RAM, stock Debian 12 (systemd, python3 app), 1.5 GiB disk";
                (b, json!({ "script_text": script }), what)
            }
        })
    }

    /// Waits for the session's app (guest port 8080) to answer; returns its answer.
    fn app_answers(&self, session: &Value) -> anyhow::Result<String> {
        let port = session["host_ports"]["8080"]
            .as_u64()
            .context("no forwarded port 8080")?;
        match self {
            Guest::Fixture(_) => cloudlet_e2e::greeting(port),
            Guest::Debian(_) => cloudlet_e2e::http_get(port),
        }
    }
}

pub(super) fn stream_vs_file(
    guest: &Guest,
    tmp: &Path,
    runs: usize,
    parts: &Parts,
) -> anyhow::Result<Value> {
    let (mut b, customization, what) = guest.boot(tmp)?;
    println!("== streamed restore vs save file: {what}, through the daemon");
    let create = |b: &DaemonBase| {
        let mut body = json!({ "base": b.name, "finish": true, "guest_ports": [8080] });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), customization.as_object()) {
            body.extend(extra.clone());
        }
        b.call("POST", "/api/v1/overlays", body)
    };
    let overlay = create(&b)?;
    let overlay_id = overlay["overlay_id"]
        .as_str()
        .context("overlay id")?
        .to_string();
    let (status, bytes) = b.d.send(
        "GET",
        &format!("/api/v1/overlays/{overlay_id}/file"),
        &[],
        &[],
    )?;
    if status != 200 {
        bail!("overlay download: {status}");
    }
    println!("  overlay: {} bytes", bytes.len());

    // Modes alternate run by run (on/off, then off/on, ...), each in a daemon restarted
    // for it: a mode measured first after a restart pays for memory the machine took
    // back meanwhile (docs/benchmarks.md, "Noise"), so running one mode's runs all before
    // the other's biased the comparison.
    let mut acc = [ModeRuns::default(), ModeRuns::default()];
    let mut reference = Value::Null;
    for run in 0..runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for m in order {
            let mode = MODES[m];
            b.restart(&[
                ("CLOUDLET_RESTORE_STREAM", mode),
                ("CLOUDLET_SAVE_STREAM", mode),
            ])?;
            println!("-- run {}, restore_stream = save_stream = {mode}", run + 1);
            let acc = &mut acc[m];
            if parts.creation {
                // Overlay creation: save + encode (pipelined when streamed).
                let made = create(&b)?;
                let t = &made["timings"];
                let ms = |k: &str| t[k].as_f64().unwrap_or(0.0) / 1000.0;
                // Pipelined, save and encode overlap: the step is the longer of the two.
                let save_encode_s = match mode {
                    "on" => ms("save_stream").max(ms("encode")),
                    _ => ms("save") + ms("encode"),
                };
                println!("  overlay creation: save + encode {save_encode_s:.2} s ({t})");
                acc.creations
                    .push(json!({ "save_encode_s": save_encode_s, "timings": t }));
                let id = made["overlay_id"].as_str().context("overlay id")?;
                b.d.json("DELETE", &format!("/api/v1/overlays/{id}"), None)?;
            }
            if parts.start {
                let started = Instant::now();
                let s = b.call(
                    "POST",
                    "/api/v1/overlays",
                    json!({ "base": b.name, "script": ["true"] }),
                )?;
                acc.starts.push(started.elapsed());
                acc.session_timings.push(s["timings"].clone());
                b.stop(&s)?;
            }
            if parts.synthesis {
                let pid = b.d.pid().context("daemon pid")?;
                let written_before = written_bytes(pid)?;
                let started = Instant::now();
                let s = b.call(
                    "POST",
                    "/api/v1/synthesis",
                    json!({ "base": b.name, "overlay_id": overlay_id }),
                )?;
                guest.app_answers(&s)?;
                let app_s = started.elapsed().as_secs_f64();
                let written = written_bytes(pid)? - written_before;
                let disk = session_disk(&b, &s)?;
                acc.syntheses.push(json!({
                    "app_answering_s": app_s,
                    "daemon_bytes_written": written,
                    "qcow2_bytes": disk,
                    "timings": s["timings"],
                }));
                if mode == "off" && run + 1 == runs {
                    reference = plain_restore(&b, &s, runs)?;
                }
                b.stop(&s)?;
            }
            for mbit in LINK_MBIT.into_iter().filter(|_| parts.link) {
                let (app_s, s) = paced_synthesis(guest, &b, &bytes, mbit)?;
                let transfer_s = bytes.len() as f64 * 8.0 / (mbit as f64 * 1e6);
                println!(
                    "  {mbit:>3} Mbit/s: app answering {app_s:.2} s after the first byte \
                     (transfer {transfer_s:.2} s, + {:.2} s)",
                    app_s - transfer_s
                );
                acc.link.push(json!({
                    "run": run + 1,
                    "mbit_s": mbit,
                    "transfer_s": transfer_s,
                    "app_answering_s": app_s,
                    "over_transfer_s": app_s - transfer_s,
                    "timings": s["timings"],
                }));
                b.stop(&s)?;
            }
            // Each restart starts a new daemon process: the mode's peak is the largest.
            acc.peak_rss_mib = acc.peak_rss_mib.max(b.peak_rss_mib()?);
        }
    }
    let mut modes = serde_json::Map::new();
    for (mode, acc) in MODES.into_iter().zip(acc) {
        let synth_s: Vec<Duration> = acc
            .syntheses
            .iter()
            .filter_map(|s| s["app_answering_s"].as_f64())
            .map(Duration::from_secs_f64)
            .collect();
        println!(
            "{mode}: overlay session start {:.2} s, synthesis to app answering {:.2} s \
             (medians), daemon peak RSS {} MiB (target ≤ 256)",
            median_s(&acc.starts),
            median_s(&synth_s),
            acc.peak_rss_mib
        );
        modes.insert(
            mode.to_string(),
            json!({
                "daemon_peak_rss_mib": acc.peak_rss_mib,
                "overlay_creation": acc.creations,
                "overlay_session_start_s": median_s(&acc.starts),
                "overlay_session_timings": acc.session_timings,
                "synthesis_to_app_s": median_s(&synth_s),
                "syntheses": acc.syntheses,
                "link": acc.link,
            }),
        );
    }
    Ok(json!({
        "guest": what,
        "overlay_bytes": bytes.len(),
        "restore_stream": modes,
        "plain_virsh_restore": reference,
    }))
}

/// Bytes `pid` caused to be written (`/proc/PID/io` write_bytes: counted when pages are
/// dirtied, so page-cache writes count before they reach the disk).
fn written_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .context("write_bytes in /proc/PID/io")
}

/// Size of a running session's disk.
fn session_disk(b: &DaemonBase, session: &Value) -> anyhow::Result<u64> {
    let id = session["id"].as_str().context("session id")?;
    let disk = b.d.data_dir.join("sessions").join(id).join("disk.qcow2");
    Ok(std::fs::metadata(disk)?.len())
}

/// Uploads `overlay` for synthesis at `mbit` Mbit/s (paced by the client); returns the
/// time from the first byte sent to the app answering, and the session.
fn paced_synthesis(
    guest: &Guest,
    b: &DaemonBase,
    overlay: &[u8],
    mbit: u64,
) -> anyhow::Result<(f64, Value)> {
    let mut s = TcpStream::connect(b.d.addr)?;
    s.set_nodelay(true)?;
    let head = format!(
        "POST /api/v1/synthesis/upload?base={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        b.name,
        b.d.token,
        overlay.len()
    );
    s.write_all(head.as_bytes())?;
    let bytes_per_s = mbit as f64 * 1e6 / 8.0;
    let started = Instant::now();
    let mut sent = 0usize;
    for piece in overlay.chunks(16 << 10) {
        s.write_all(piece)?;
        sent += piece.len();
        let due = Duration::from_secs_f64(sent as f64 / bytes_per_s);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let session: Value = serde_json::from_str(body)
        .with_context(|| format!("synthesis answer: {}", reply.lines().next().unwrap_or("")))?;
    if session["state"] != "running" {
        bail!("paced synthesis: {reply}");
    }
    guest.app_answers(&session)?;
    Ok((started.elapsed().as_secs_f64(), session))
}

/// The reference: `virsh save` of a synthesized VM, then `virsh restore` of that file
/// from the page cache (`runs` times, each after a destroy): the median.
fn plain_restore(b: &DaemonBase, session: &Value, runs: usize) -> anyhow::Result<Value> {
    let vm = session["vm_name"].as_str().context("vm name")?;
    let save = b.d.data_dir.join("reference.save");
    let save_s = save.to_str().context("path")?;
    cloudlet_e2e::virsh(&["save", vm, save_s])?;
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let started = Instant::now();
        cloudlet_e2e::virsh(&["restore", save_s])?;
        times.push(started.elapsed());
        cloudlet_e2e::virsh(&["destroy", vm])?;
    }
    times.remove(0); // the first run reads the file into the page cache
    let size = std::fs::metadata(&save)?.len();
    std::fs::remove_file(&save)?;
    let restore_s = median(times).as_secs_f64();
    println!("  plain virsh restore of the customized save file ({size} bytes): {restore_s:.2} s");
    Ok(json!({ "save_file_bytes": size, "restore_s": restore_s }))
}
