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
//! answering on its forwarded port. The reference is a plain `virsh restore` of the
//! customized VM's save file from the page cache, timed right before every synthesis
//! but the first (which makes that file), so that floor and synthesis see the same host.
//!
//! With `overlay_standby` on, overlay session starts that resume the standby VM are timed
//! too (part `standby`); with `synthesis_standby` on, syntheses that finish the standby's
//! primed restore, local and over the paced link, each with the floor timed right before
//! it (part `synthesis-standby`).
//!
//! The guest is the fixture (busybox; its memory mostly zero pages) or, with `--debian`,
//! the stock Debian 12 guest (systemd, a Python app installed by
//! `tests/fixtures/demo-app.sh`), whose memory is mostly written pages.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
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
    /// Plain restores of the reference save file, each right before a synthesis.
    floor: Vec<Value>,
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
    standby: bool,
    synthesis_standby: bool,
}

impl Parts {
    pub(super) fn parse(only: Option<&str>) -> anyhow::Result<Self> {
        let Some(only) = only else {
            return Ok(Self {
                creation: true,
                start: true,
                synthesis: true,
                link: true,
                standby: true,
                synthesis_standby: true,
            });
        };
        let mut parts = Self {
            creation: false,
            start: false,
            synthesis: false,
            link: false,
            standby: false,
            synthesis_standby: false,
        };
        for part in only.split(',') {
            match part {
                "creation" => parts.creation = true,
                "start" => parts.start = true,
                "synthesis" => parts.synthesis = true,
                "link" => parts.link = true,
                "standby" => parts.standby = true,
                "synthesis-standby" => parts.synthesis_standby = true,
                other => bail!(
                    "unknown --stream part {other}: creation, start, synthesis, link, \
                     standby, synthesis-standby"
                ),
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
    let mut reference: Option<Reference> = None;
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
                // The floor, measured right before each synthesis (from the second one on:
                // its save file comes from the first), so that both see the same host.
                if let Some(reference) = &reference {
                    acc.floor.push(reference.restore()?);
                }
                let pid = b.d.pid().context("daemon pid")?;
                let written_before = written_bytes(pid)?;
                let read_before = io_counter(pid, "read_bytes")?;
                let stalls = compaction_stalls()?;
                let started = Instant::now();
                let s = b.call(
                    "POST",
                    "/api/v1/synthesis",
                    json!({ "base": b.name, "overlay_id": overlay_id }),
                )?;
                guest.app_answers(&s)?;
                let app_s = started.elapsed().as_secs_f64();
                let written = written_bytes(pid)? - written_before;
                let read = io_counter(pid, "read_bytes")? - read_before;
                let disk = session_disk(&b, &s)?;
                acc.syntheses.push(json!({
                    "app_answering_s": app_s,
                    "daemon_bytes_written": written,
                    "daemon_bytes_read_from_storage": read,
                    "qcow2_bytes": disk,
                    "compact_stalls": compaction_stalls()? - stalls,
                    "timings": s["timings"],
                }));
                if reference.is_none() {
                    reference = Some(Reference::save(&b, &s)?);
                }
                b.stop(&s)?;
            }
            for mbit in LINK_MBIT.into_iter().filter(|_| parts.link) {
                let (sample, s) = link_sample(guest, &b, &bytes, (mbit, run), "")?;
                acc.link.push(sample);
                b.stop(&s)?;
            }
            // Each restart starts a new daemon process: the mode's peak is the largest.
            acc.peak_rss_mib = acc.peak_rss_mib.max(b.peak_rss_mib()?);
        }
    }
    let mut modes = serde_json::Map::new();
    for (mode, acc) in MODES.into_iter().zip(acc) {
        let synth_s = seconds(&acc.syntheses, "app_answering_s");
        let floor_s = seconds(&acc.floor, "restore_s");
        println!(
            "{mode}: overlay session start {:.2} s, synthesis to app answering {:.2} s, \
             plain restores before its syntheses {:.2} s (medians), daemon peak RSS {} MiB \
             (target ≤ 256)",
            median_s(&acc.starts),
            median_s(&synth_s),
            median_s(&floor_s),
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
                "plain_virsh_restores": acc.floor,
            }),
        );
    }
    let standby = if parts.standby {
        standby_starts(&mut b, runs)?
    } else {
        Value::Null
    };
    let synthesis_standby = if parts.synthesis_standby {
        let warm = WarmSynthesis {
            guest,
            overlay_id: &overlay_id,
            overlay: &bytes,
        };
        warm.runs(&mut b, runs, &mut reference)?
    } else {
        Value::Null
    };
    Ok(json!({
        "guest": what,
        "overlay_bytes": bytes.len(),
        "restore_stream": modes,
        "overlay_standby": standby,
        "synthesis_standby": synthesis_standby,
        "plain_virsh_restore": reference.map(Reference::finish).transpose()?,
    }))
}

/// Overlay session starts with `overlay_standby` on (streams on): per run, a session
/// is started and stopped (its end makes the standby), and once the standby is ready the
/// next start, a resume, is timed.
fn standby_starts(b: &mut DaemonBase, runs: usize) -> anyhow::Result<Value> {
    b.restart(&[
        ("CLOUDLET_RESTORE_STREAM", "on"),
        ("CLOUDLET_SAVE_STREAM", "on"),
        ("CLOUDLET_OVERLAY_STANDBY", "true"),
    ])?;
    println!("-- overlay_standby = true");
    let body = || json!({ "base": b.name, "script": ["true"] });
    let mut starts = Vec::new();
    let mut timings = Vec::new();
    let first = b.call("POST", "/api/v1/overlays", body())?;
    b.stop(&first)?;
    for _ in 0..runs {
        let waited = Instant::now();
        let ready = cloudlet_e2e::wait_until(Duration::from_secs(120), || {
            (standby_gauge(b).ok()? == 1).then_some(())
        });
        ready.context("no standby VM within 120 s")?;
        println!(
            "  standby ready {:.2} s after the session stopped",
            waited.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let s = b.call("POST", "/api/v1/overlays", body())?;
        starts.push(started.elapsed());
        if s["timings"].get("resume_standby").is_none() {
            bail!("the session did not resume the standby: {}", s["timings"]);
        }
        timings.push(s["timings"].clone());
        b.stop(&s)?;
    }
    println!(
        "standby: overlay session start {:.2} s (median)",
        median_s(&starts)
    );
    Ok(json!({
        "overlay_session_start_s": median_s(&starts),
        "overlay_session_starts_s": starts.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        "overlay_session_timings": timings,
    }))
}

/// Syntheses with `synthesis_standby` on (streams on), from the stored overlay and over
/// the paced link.
struct WarmSynthesis<'a> {
    guest: &'a Guest,
    overlay_id: &'a str,
    overlay: &'a [u8],
}

impl WarmSynthesis<'_> {
    /// Per run: once the standby is ready, the floor (a plain restore), then a synthesis
    /// from the stored overlay timed to the app answering, then one over the link at each
    /// speed; every synthesis is stopped, which makes the next standby. The first
    /// synthesis, cold, makes the first standby (and the reference, if not made yet).
    fn runs(
        &self,
        b: &mut DaemonBase,
        runs: usize,
        reference: &mut Option<Reference>,
    ) -> anyhow::Result<Value> {
        b.restart(&[
            ("CLOUDLET_RESTORE_STREAM", "on"),
            ("CLOUDLET_SAVE_STREAM", "on"),
            ("CLOUDLET_SYNTHESIS_STANDBY", "true"),
        ])?;
        println!("-- synthesis_standby = true");
        let body = json!({ "base": b.name, "overlay_id": self.overlay_id });
        let first = b.call("POST", "/api/v1/synthesis", body.clone())?;
        if reference.is_none() {
            *reference = Some(Reference::save(b, &first)?);
        }
        b.stop(&first)?;
        let (mut syntheses, mut floor, mut link) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            Self::wait_ready(b)?;
            if let Some(reference) = reference.as_ref() {
                floor.push(reference.restore()?);
            }
            let started = Instant::now();
            let s = b.call("POST", "/api/v1/synthesis", body.clone())?;
            self.guest.app_answers(&s)?;
            let app_s = started.elapsed().as_secs_f64();
            Self::check_warm(&s)?;
            println!("  synthesis from the standby: app answering {app_s:.2} s");
            syntheses.push(json!({ "app_answering_s": app_s, "timings": s["timings"] }));
            b.stop(&s)?;
            for mbit in LINK_MBIT {
                Self::wait_ready(b)?;
                let (sample, s) = link_sample(
                    self.guest,
                    b,
                    self.overlay,
                    (mbit, run),
                    " from the standby",
                )?;
                Self::check_warm(&s)?;
                link.push(sample);
                b.stop(&s)?;
            }
        }
        let synth_s = seconds(&syntheses, "app_answering_s");
        let floor_s = seconds(&floor, "restore_s");
        println!(
            "synthesis standby: synthesis to app answering {:.2} s, plain restores before \
             them {:.2} s (medians), daemon peak RSS {} MiB",
            median_s(&synth_s),
            median_s(&floor_s),
            b.peak_rss_mib()?
        );
        Ok(json!({
            "synthesis_to_app_s": median_s(&synth_s),
            "syntheses": syntheses,
            "link": link,
            "plain_virsh_restores": floor,
            "daemon_peak_rss_mib": b.peak_rss_mib()?,
        }))
    }

    fn wait_ready(b: &DaemonBase) -> anyhow::Result<()> {
        let waited = Instant::now();
        let ready = cloudlet_e2e::wait_until(Duration::from_secs(120), || {
            (b.d.metric("cloudlet_synthesis_standby_vms").ok()? == 1).then_some(())
        });
        ready.context("no synthesis standby within 120 s")?;
        println!(
            "  synthesis standby ready {:.2} s after the session stopped",
            waited.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn check_warm(s: &Value) -> anyhow::Result<()> {
        if s["timings"].get("restore_standby").is_none() {
            bail!("the synthesis did not use the standby: {}", s["timings"]);
        }
        Ok(())
    }
}

/// The daemon's `cloudlet_standby_vms` gauge.
fn standby_gauge(b: &DaemonBase) -> anyhow::Result<u64> {
    b.d.metric("cloudlet_standby_vms")
}

/// The `key` field (seconds) of each sample.
fn seconds(samples: &[Value], key: &str) -> Vec<Duration> {
    samples
        .iter()
        .filter_map(|s| s[key].as_f64())
        .map(Duration::from_secs_f64)
        .collect()
}

/// Bytes `pid` caused to be written (`/proc/PID/io` write_bytes: counted when pages are
/// dirtied, so page-cache writes count before they reach the disk).
fn written_bytes(pid: u32) -> anyhow::Result<u64> {
    io_counter(pid, "write_bytes")
}

/// A counter of `/proc/PID/io` (`read_bytes`: bytes fetched from storage, page-cache hits
/// not counted).
fn io_counter(pid: u32, name: &str) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{name} in /proc/PID/io"))
}

/// Size of a running session's disk.
fn session_disk(b: &DaemonBase, session: &Value) -> anyhow::Result<u64> {
    let id = session["id"].as_str().context("session id")?;
    let disk = b.d.data_dir.join("sessions").join(id).join("disk.qcow2");
    Ok(std::fs::metadata(disk)?.len())
}

/// One synthesis over the paced link at `mbit` Mbit/s, in run `run` (from 0), printed
/// (`what` says how it ran): its JSON sample and the session.
fn link_sample(
    guest: &Guest,
    b: &DaemonBase,
    overlay: &[u8],
    (mbit, run): (u64, usize),
    what: &str,
) -> anyhow::Result<(Value, Value)> {
    let (app_s, s) = paced_synthesis(guest, b, overlay, mbit)?;
    let transfer_s = overlay.len() as f64 * 8.0 / (mbit as f64 * 1e6);
    println!(
        "  {mbit:>3} Mbit/s{what}: app answering {app_s:.2} s after the first byte \
         (transfer {transfer_s:.2} s, + {:.2} s)",
        app_s - transfer_s
    );
    let sample = json!({
        "run": run + 1,
        "mbit_s": mbit,
        "transfer_s": transfer_s,
        "app_answering_s": app_s,
        "over_transfer_s": app_s - transfer_s,
        "timings": s["timings"],
    });
    Ok((sample, s))
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

/// The reference: the save file of a synthesized VM (`virsh save`), restored with a plain
/// `virsh restore` from the page cache right before each later synthesis. It lives in a
/// directory of its own with a copy of the session's disk (the session is stopped, and
/// the daemon's restarts clean its data directory), the save file's XML pointing there.
struct Reference {
    dir: PathBuf,
    save: PathBuf,
    vm: String,
    size: u64,
}

impl Reference {
    /// Saves the synthesized VM of `session` (the session's VM is gone afterwards) and
    /// restores it once, which reads the file into the page cache.
    fn save(b: &DaemonBase, session: &Value) -> anyhow::Result<Self> {
        let vm = session["vm_name"].as_str().context("vm name")?.to_string();
        let id = session["id"].as_str().context("session id")?;
        let session_dir = b.d.data_dir.join("sessions").join(id);
        let dir = b.d.data_dir.with_file_name("reference");
        std::fs::create_dir_all(&dir)?;
        let save = dir.join("reference.save");
        cloudlet_e2e::virsh(&["save", &vm, path_str(&save)?])?;
        // The copies belong to the VM's own uid, as the session's files do (confinement).
        let disk = dir.join("disk.qcow2");
        std::fs::copy(session_dir.join("disk.qcow2"), &disk)?;
        let owner = std::fs::metadata(&session_dir)?;
        for path in [&dir, &disk] {
            std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))?;
        }
        let xml = cloudlet_e2e::virsh(&["save-image-dumpxml", path_str(&save)?])?
            .replace(path_str(&session_dir)?, path_str(&dir)?);
        let xml_path = dir.join("domain.xml");
        std::fs::write(&xml_path, xml)?;
        cloudlet_e2e::virsh(&["save-image-define", path_str(&save)?, path_str(&xml_path)?])?;
        let size = std::fs::metadata(&save)?.len();
        let reference = Self {
            dir,
            save,
            vm,
            size,
        };
        reference.restore()?;
        Ok(reference)
    }

    /// One timed `virsh restore` (then a destroy), with the host's THP direct-compaction
    /// stalls during it (a source of noise: docs/benchmarks.md, "Noise").
    fn restore(&self) -> anyhow::Result<Value> {
        let stalls = compaction_stalls()?;
        let started = Instant::now();
        cloudlet_e2e::virsh(&["restore", path_str(&self.save)?])?;
        let restore_s = started.elapsed().as_secs_f64();
        let stalls = compaction_stalls()? - stalls;
        cloudlet_e2e::virsh(&["destroy", &self.vm])?;
        println!("  plain virsh restore of the customized save file: {restore_s:.2} s");
        Ok(json!({ "restore_s": restore_s, "compact_stalls": stalls }))
    }

    /// Removes its files; the save file's size for the report.
    fn finish(self) -> anyhow::Result<Value> {
        std::fs::remove_dir_all(&self.dir)?;
        Ok(json!({ "save_file_bytes": self.size }))
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// The host's count of direct-compaction stalls so far (`/proc/vmstat`).
fn compaction_stalls() -> anyhow::Result<u64> {
    std::fs::read_to_string("/proc/vmstat")?
        .lines()
        .find_map(|l| l.strip_prefix("compact_stall "))
        .and_then(|v| v.trim().parse().ok())
        .context("compact_stall in /proc/vmstat")
}
