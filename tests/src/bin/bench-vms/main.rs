//! Benchmark on real VMs (issue 5): cloudlet's overlay against what a user would do by hand,
//! on the same customized VM files in the same run.
//!
//! For each workload: resume the fixture guest's base snapshot on a fresh qcow2, run the
//! workload over the serial console, save; then measure
//! - cloudlet: overlay size, encode time; synthesis = decode + `virsh restore`;
//! - (a) `xz -6` and `zstd -19` of the qcow2 delta and the customized memory snapshot;
//! - (b) `xdelta3 -e -s base.save` of the snapshot + `zstd -19` of the qcow2 delta;
//! - (c) `zstd -19 --long=27 --patch-from=base.save` of the snapshot + `zstd -19` of the
//!   qcow2 delta;
//! - the floor: `virsh restore` of the customized save file itself.
//!
//! Prints a table and writes JSON (`--json FILE`). Run: `bash scripts/bench-vms.sh`.
//! `--big`, `--scale` and `--stream` (see `stream.rs`) drive a real daemon instead.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a report tool

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{fixture_guest, unique_name, virsh, xml, Console, DomainGuard};
use cloudlet_engine::base::{create_base, write_base_save_file, Base, BasePaths};
use cloudlet_engine::decode::{decode, DecodeOutputs};
use cloudlet_engine::disk::{DiskOutputFormat, DiskSource};
use cloudlet_engine::encode::{encode, EncodeInput, EncodeOptions};
use cloudlet_engine::format::OverlayReader;
use cloudlet_engine::progress::NoProgress;
use serde_json::json;

mod stream;

const BOOT: Duration = Duration::from_secs(120);
const CMD: Duration = Duration::from_secs(300);

/// A customization run in the guest over its serial console.
struct Workload {
    name: String,
    about: String,
    script: Vec<String>,
}

impl Workload {
    fn new(name: &str, about: &str, script: &[&str]) -> Self {
        Self {
            name: name.into(),
            about: about.into(),
            script: script.iter().map(|l| (*l).to_string()).collect(),
        }
    }
}

/// The comparison workloads.
fn workloads() -> Vec<Workload> {
    vec![
        Workload::new(
            "reference",
            "4 MiB random file + copy of a 1.1 MB binary + a background process",
            &[
                "dd if=/dev/urandom of=/mnt/data/random.bin bs=1024 count=4096 2>/dev/null",
                "cp /bin/busybox /mnt/data/busybox.copy && sync",
                "(i=0; while :; do i=$((i+1)); echo $i > /counter; sleep 0.1; done) >/dev/null 2>&1 &",
            ],
        ),
        Workload::new(
            "text-files",
            "400 small text files (~1.3 MB of numbers)",
            &["mkdir -p /mnt/data/src && i=0 && while [ $i -lt 400 ]; do seq $i $((i+400)) > /mnt/data/src/f$i.txt; i=$((i+1)); done && sync"],
        ),
        Workload::new(
            "memory-only",
            "16 MiB of random data held in RAM (initramfs root), no disk writes",
            &["dd if=/dev/urandom of=/memory-blob bs=1024 count=16384 2>/dev/null"],
        ),
    ]
}

struct Args {
    runs: usize,
    json: Option<PathBuf>,
    skip_xz: bool,
    only: Option<String>,
    scale: bool,
    big: bool,
    stream: bool,
    /// `--stream` on the stock Debian 12 guest instead of the fixture.
    debian: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 3,
        json: None,
        skip_xz: false,
        only: None,
        scale: false,
        big: false,
        stream: false,
        debian: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => args.runs = it.next().context("--runs N")?.parse()?,
            "--json" => args.json = Some(it.next().context("--json FILE")?.into()),
            "--skip-xz" => args.skip_xz = true,
            "--scale" => args.scale = true,
            "--big" => args.big = true,
            "--stream" => args.stream = true,
            "--debian" => args.debian = true,
            "--only" => args.only = Some(it.next().context("--only WORKLOAD")?),
            "-h" | "--help" => {
                println!(
                    "bench-vms [--runs N] [--json FILE] [--skip-xz] [--only WORKLOAD] [--scale | --big | --stream [--debian] [--only PARTS]]\n\
                     workloads: {}\n\
                     --stream parts (comma-separated): creation, start, synthesis, link, standby (default: all)",
                    workloads()
                        .iter()
                        .map(|w| w.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.debian && !args.stream {
        bail!("--debian goes with --stream");
    }
    Ok(args)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn size(p: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| p.display().to_string())?
        .len())
}

/// Runs a shell command line (the alternatives are shell pipelines); its duration.
fn timed_sh(line: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("bash").args(["-c", line]).status()?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(started.elapsed())
}

/// Reads a file once, so that it is in the page cache: this machine's DAMON "pageout"
/// scheme evicts page cache idle for a minute, which otherwise decides timings at random.
fn warm(p: &Path) -> anyhow::Result<()> {
    std::io::copy(&mut File::open(p)?, &mut std::io::sink())?;
    Ok(())
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// The domain XML of a save file, retargeted to a new name, a qcow2 disk and a console.
fn retarget(save: &Path, name: &str, disk: &Path, console: &Path) -> anyhow::Result<String> {
    xml::retarget_saved(save, name, disk, "qcow2", console)
}

/// A real daemon (release build) with one base booted from the fixture kernel and
/// initramfs on a copy of the fixture disk grown to `disk_bytes`: `--big` and `--scale`
/// drive it through the REST API like a client would.
struct DaemonBase {
    d: cloudlet_e2e::Daemon,
    name: &'static str,
    base: serde_json::Value,
    /// `CLOUDLET_IMPORT_DIRS` of the daemon.
    import: String,
}

impl DaemonBase {
    fn boot(
        fixture: &Path,
        tmp: &Path,
        name: &'static str,
        disk_bytes: u64,
        memory_mib: u64,
    ) -> anyhow::Result<Self> {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir)?;
        let disk = dir.join("disk.img");
        std::fs::copy(fixture.join("disk.img"), &disk)?;
        File::options()
            .write(true)
            .open(&disk)?
            .set_len(disk_bytes)?;
        let import = format!("{}:{}", fixture.display(), dir.display());
        let f = |n: &str| fixture.join(n).display().to_string();
        let request = json!({
            "name": name, "disk": disk, "kernel": f("vmlinuz"), "initrd": f("initrd.img"),
            "cmdline": "console=ttyS0 quiet init_on_free=1", "memory_mib": memory_mib,
            "vcpus": 1, "ready_marker": "CLOUDLET-GUEST-READY", "finish": true,
        });
        Self::create(&dir, import, name, request)
    }

    /// Starts a daemon on `dir/data` importing from `import` and makes the base.
    fn create(
        dir: &Path,
        import: String,
        name: &'static str,
        request: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let d = cloudlet_e2e::Daemon::start_in(
            &dir.join("data"),
            &[("CLOUDLET_IMPORT_DIRS", &import)],
        )?;
        let mut me = Self {
            d,
            name,
            base: serde_json::Value::Null,
            import,
        };
        me.base = me.call("POST", "/api/v1/bases", request)?;
        Ok(me)
    }

    /// A base from a disk that boots by itself (its own boot loader and kernel), ready
    /// when its console shows `marker`, with guest port 8080 forwarded.
    fn boot_disk(
        disk: &Path,
        tmp: &Path,
        name: &'static str,
        memory_mib: u64,
        marker: &str,
    ) -> anyhow::Result<Self> {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir)?;
        let import = disk
            .parent()
            .context("the disk's directory")?
            .display()
            .to_string();
        let request = json!({
            "name": name, "disk": disk, "memory_mib": memory_mib, "vcpus": 1,
            "guest_ports": [8080], "ready_marker": marker, "finish": true,
        });
        Self::create(&dir, import, name, request)
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same data with `env`.
    fn restart(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let data = self.d.data_dir.clone();
        self.d.stop()?;
        let mut all = vec![("CLOUDLET_IMPORT_DIRS", self.import.as_str())];
        all.extend_from_slice(env);
        self.d = cloudlet_e2e::Daemon::start_in(&data, &all)?;
        Ok(())
    }

    /// Stops a session (its VM goes).
    fn stop(&self, session: &serde_json::Value) -> anyhow::Result<()> {
        let id = session["id"].as_str().context("session id")?;
        let (status, v) = self
            .d
            .json("POST", &format!("/api/v1/sessions/{id}/stop"), None)?;
        if status != 200 {
            bail!("stopping session {id}: {status} {v}");
        }
        Ok(())
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let started = Instant::now();
        let (status, v) = self.d.json(method, path, Some(&body))?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {v}\n{}", self.d.log_text());
        }
        println!(
            "  {method} {path}: {:.1} s, timings {}",
            started.elapsed().as_secs_f64(),
            v["timings"]
        );
        Ok(v)
    }

    /// Creates an overlay by running `script` in the resumed base, synthesizes it by id
    /// and stops the synthesized VM. Returns (overlay response, overlay record, synthesis
    /// response).
    fn overlay_and_synthesis(
        &self,
        script: &[String],
    ) -> anyhow::Result<(serde_json::Value, serde_json::Value, serde_json::Value)> {
        let overlay = self.call(
            "POST",
            "/api/v1/overlays",
            json!({ "base": self.name, "script": script, "finish": true }),
        )?;
        let overlay_id = overlay["overlay_id"]
            .as_str()
            .context("overlay id")?
            .to_string();
        let (_, record) = self
            .d
            .json("GET", &format!("/api/v1/overlays/{overlay_id}"), None)?;
        let synthesis = self.call(
            "POST",
            "/api/v1/synthesis",
            json!({ "base": self.name, "overlay_id": overlay_id }),
        )?;
        self.stop(&synthesis)?;
        Ok((overlay, record, synthesis))
    }

    fn peak_rss_mib(&self) -> anyhow::Result<u64> {
        let pid = self.d.pid().context("daemon pid")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let peak_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmHWM")?;
        Ok(peak_kib / 1024)
    }
}

/// `--big`: base (1 GiB RAM, 2 GiB disk), overlay (reference customization) and synthesis
/// through the real daemon, reporting each step's time and the daemon's peak RSS.
fn big_guest_through_the_daemon(fixture: &Path, tmp: &Path) -> anyhow::Result<serde_json::Value> {
    println!("== 1 GiB RAM / 2 GiB disk guest through the daemon");
    let b = DaemonBase::boot(fixture, tmp, "big", 2 << 30, 1024)?;
    let script = workloads()
        .into_iter()
        .find(|w| w.name == "reference")
        .context("reference workload")?
        .script;
    let (overlay, record, synthesis) = b.overlay_and_synthesis(&script)?;
    let peak = b.peak_rss_mib()?;
    println!("  daemon peak RSS: {peak} MiB (target ≤ 256)");
    Ok(json!({
        "guest": "1 GiB RAM, 2 GiB disk",
        "base_timings": b.base["timings"],
        "overlay_timings": overlay["timings"],
        "overlay_bytes": record["file_size"],
        "synthesis_timings": synthesis["timings"],
        "daemon_peak_rss_mib": peak,
    }))
}

/// Data written per step of `--scale`, in MiB.
const SCALE_MIB: [u64; 5] = [4, 16, 64, 128, 256];

/// `--scale`: how overlay creation and synthesis grow with the data the guest writes.
/// A base with 256 MiB of RAM and a 512 MiB disk (the fixture's 64 MiB ext4 at its start)
/// is booted through the daemon; each step writes N MiB of random data to the disk
/// behind the file system (`dd` to /dev/vda past 64 MiB: the guest kernel saw the grown
/// disk at boot), which reaches the qcow2 and the guest's page cache like file data.
fn scale_through_the_daemon(
    fixture: &Path,
    tmp: &Path,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    println!("== scale: N MiB written, 256 MiB RAM / 512 MiB disk guest through the daemon");
    let b = DaemonBase::boot(fixture, tmp, "scale", 512 << 20, 256)?;
    let mut steps = Vec::new();
    for mib in SCALE_MIB {
        let script = vec![format!(
            "dd if=/dev/urandom of=/dev/vda bs=65536 seek=1024 count={} 2>/dev/null && sync",
            mib * 16
        )];
        for run in 0..runs {
            println!("-- {mib} MiB written, run {}", run + 1);
            let (overlay, record, synthesis) = b.overlay_and_synthesis(&script)?;
            let step_s = |v: &serde_json::Value, step: &str| {
                v["timings"][step].as_f64().map(|ms| ms / 1000.0)
            };
            steps.push(json!({
                "written_mib": mib,
                "overlay_bytes": record["file_size"],
                "modified_memory_pages": record["modified_memory_pages"],
                "modified_disk_chunks": record["modified_disk_chunks"],
                "encode_s": step_s(&overlay, "encode"),
                "decode_s": step_s(&synthesis, "decode"),
                "restore_s": step_s(&synthesis, "restore")
                    .or_else(|| step_s(&synthesis, "restore_stream")),
                "overlay_timings": overlay["timings"],
                "synthesis_timings": synthesis["timings"],
            }));
        }
    }
    let peak = b.peak_rss_mib()?;
    println!("  daemon peak RSS: {peak} MiB");
    Ok(json!({
        "guest": "256 MiB RAM, 512 MiB disk",
        "steps": steps,
        "daemon_peak_rss_mib": peak,
    }))
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// One alternative's result: total size and creation time.
struct Alt {
    name: &'static str,
    bytes: u64,
    time: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let guest = fixture_guest()?;
    let tmp = TempDir::new("bench-vms")?;
    if args.big || args.scale || args.stream {
        let result = if args.big {
            big_guest_through_the_daemon(&guest.dir, &tmp.0)?
        } else if args.stream {
            let on = if args.debian {
                stream::Guest::Debian(cloudlet_e2e::debian_guest()?)
            } else {
                stream::Guest::Fixture(guest.dir.clone())
            };
            let parts = stream::Parts::parse(args.only.as_deref())?;
            stream::stream_vs_file(&on, &tmp.0, args.runs, &parts)?
        } else {
            scale_through_the_daemon(&guest.dir, &tmp.0, args.runs)?
        };
        println!("{}", serde_json::to_string_pretty(&result)?);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&result)? + "\n")?;
        }
        return Ok(());
    }
    let base_dir = tmp.0.join("base");
    std::fs::create_dir_all(&base_dir)?;
    let paths = BasePaths::in_dir(&base_dir);
    std::fs::copy(&guest.disk, &paths.disk)?;
    create_base(&paths, Some(&guest.save))?;
    let base = Base::open(&paths)?;
    let base_save = &guest.save;
    println!(
        "fixture guest: base snapshot {} MB, disk {} MB; {} run(s) per timing",
        size(base_save)? / 1_000_000,
        size(&paths.disk)? / 1_000_000,
        args.runs
    );

    let mut report = Vec::new();
    for w in &workloads() {
        if args.only.as_deref().is_some_and(|o| o != w.name) {
            continue;
        }
        println!("\n== {} ({})", w.name, w.about);
        let dir = tmp.0.join(&w.name);
        std::fs::create_dir_all(&dir)?;

        // The customized VM: base resumed on a fresh qcow2, workload, saved.
        let name = unique_name(&format!("bench-{}", w.name));
        let disk = dir.join("custom.qcow2");
        let console = dir.join("console.sock");
        cloudlet_e2e::create_cow_disk(&paths.disk, &disk)?;
        let resume = dir.join("resume.save");
        write_base_save_file(
            &base,
            &resume,
            Some(&retarget(base_save, &name, &disk, &console)?),
        )?;
        let custom_save = dir.join("custom.save");
        {
            let guard = DomainGuard(name.clone());
            virsh(&["restore", resume.to_str().context("path")?])?;
            let mut con = Console::connect(&console, BOOT)?;
            con.wait_ready(BOOT)?;
            let started = Instant::now();
            for line in &w.script {
                con.check(line, CMD)
                    .with_context(|| format!("workload line `{line}`"))?;
            }
            println!(
                "  customize        {:>8.2} s",
                started.elapsed().as_secs_f64()
            );
            drop(con);
            virsh(&["save", &name, custom_save.to_str().context("path")?])?;
            drop(guard);
        }
        std::fs::remove_file(&resume)?;
        let (mem_bytes, disk_bytes) = (size(&custom_save)?, size(&disk)?);

        // cloudlet: encode, then synthesis = decode + restore.
        // cloudlet's overlay at the daemon's default zstd level, and at level 19 to separate
        // what the chunk pipeline saves from what the compressor level buys.
        let encode_at = |zstd_level: i32, out: &Path| -> anyhow::Result<Duration> {
            let started = Instant::now();
            let source = DiskSource::qcow2(&disk, &paths.disk)?;
            let input = EncodeInput {
                memory: Some(&custom_save),
                disk: &source,
            };
            let options = EncodeOptions {
                zstd_level,
                ..EncodeOptions::default()
            };
            encode(&base, &input, out, &options, &NoProgress)?;
            Ok(started.elapsed())
        };
        let overlay = dir.join("app.overlay");
        let encode_times = (0..args.runs)
            .map(|_| encode_at(EncodeOptions::default().zstd_level, &overlay))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let overlay_bytes = size(&overlay)?;
        let overlay19 = dir.join("app-z19.overlay");
        let encode19_t = encode_at(19, &overlay19)?;
        let overlay19_bytes = size(&overlay19)?;
        let (mut decode_times, mut restore_times) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let sname = unique_name(&format!("bench-synth-{}", w.name));
            let (sdisk, ssave, sconsole) = (
                dir.join("synth.qcow2"),
                dir.join("synth.save"),
                dir.join("synth.sock"),
            );
            let sxml = retarget(&custom_save, &sname, &sdisk, &sconsole)?;
            let outputs = DecodeOutputs {
                disk: &sdisk,
                disk_format: DiskOutputFormat::Qcow2,
                memory: &ssave,
                domain_xml: Some(&sxml),
                durable: false,
                threads: 0,
            };
            // A base in use and an overlay just received are in the page cache.
            warm(&paths.memory_pages)?;
            warm(&overlay)?;
            let started = Instant::now();
            let reader =
                OverlayReader::open(BufReader::with_capacity(1 << 20, File::open(&overlay)?))?;
            decode(reader, &base, &outputs, &NoProgress)?;
            decode_times.push(started.elapsed());
            let _guard = DomainGuard(sname.clone());
            let started = Instant::now();
            virsh(&["restore", ssave.to_str().context("path")?])?;
            restore_times.push(started.elapsed());
            std::fs::remove_file(&ssave)?;
        }
        let (encode_t, decode_t, restore_t) = (
            median(encode_times),
            median(decode_times),
            median(restore_times),
        );
        // The alternatives, on the same files (before the floor restore touches the disk).
        let out = dir.join("alt");
        std::fs::create_dir_all(&out)?;
        let o = |n: &str| out.join(n);
        let mut alts = Vec::new();
        let zstd_disk = timed_sh(&format!(
            "zstd -q -19 -T1 -f {} -o {}",
            q(&disk),
            q(&o("disk.zst"))
        ))?;
        let zstd_disk_bytes = size(&o("disk.zst"))?;
        if !args.skip_xz {
            let t = timed_sh(&format!(
                "xz -6 -T1 -c {} > {} && xz -6 -T1 -c {} > {}",
                q(&disk),
                q(&o("disk.xz")),
                q(&custom_save),
                q(&o("mem.xz"))
            ))?;
            alts.push(Alt {
                name: "(a) xz -6",
                bytes: size(&o("disk.xz"))? + size(&o("mem.xz"))?,
                time: t,
            });
        }
        let t = timed_sh(&format!(
            "zstd -q -19 -T1 -f {} -o {}",
            q(&custom_save),
            q(&o("mem.zst"))
        ))?;
        alts.push(Alt {
            name: "(a) zstd -19",
            bytes: zstd_disk_bytes + size(&o("mem.zst"))?,
            time: t + zstd_disk,
        });
        let xdelta_mem = timed_sh(&format!(
            "xdelta3 -e -f -s {} {} {}",
            q(base_save),
            q(&custom_save),
            q(&o("mem.xd3"))
        ))?;
        alts.push(Alt {
            name: "(b) xdelta3 + zstd",
            bytes: size(&o("mem.xd3"))? + zstd_disk_bytes,
            time: xdelta_mem + zstd_disk,
        });
        let t = timed_sh(&format!(
            "zstd -q -19 -T1 --long=27 -f --patch-from={} {} -o {} 2>/dev/null",
            q(base_save),
            q(&custom_save),
            q(&o("mem.patch.zst"))
        ))?;
        alts.push(Alt {
            name: "(c) zstd --patch-from",
            bytes: size(&o("mem.patch.zst"))? + zstd_disk_bytes,
            time: t + zstd_disk,
        });

        // The floor: resume the customized save file as is.
        let mut floor_times = Vec::new();
        for _ in 0..args.runs {
            let _guard = DomainGuard(name.clone());
            warm(&custom_save)?;
            let started = Instant::now();
            virsh(&["restore", custom_save.to_str().context("path")?])?;
            floor_times.push(started.elapsed());
        }
        let floor_t = median(floor_times);

        let synth_t = decode_t + restore_t;
        let b = alts
            .iter()
            .find(|a| a.name.starts_with("(b)"))
            .context("alternative b")?;
        println!(
            "  customized VM: memory snapshot {} MB, qcow2 delta {} MB",
            mem_bytes / 1_000_000,
            disk_bytes / 1_000_000
        );
        println!(
            "  {:<26} {:>10} {:>10} {:>9}",
            "method", "size MB", "create s", "size/ours"
        );
        println!(
            "  {:<26} {:>10.2} {:>10.2} {:>9}",
            "cloudlet overlay",
            overlay_bytes as f64 / 1e6,
            encode_t.as_secs_f64(),
            "1.00"
        );
        println!(
            "  {:<26} {:>10.2} {:>10.2} {:>9.2}",
            "cloudlet overlay, zstd 19",
            overlay19_bytes as f64 / 1e6,
            encode19_t.as_secs_f64(),
            overlay19_bytes as f64 / overlay_bytes as f64
        );
        for a in &alts {
            println!(
                "  {:<26} {:>10.2} {:>10.2} {:>9.2}",
                a.name,
                a.bytes as f64 / 1e6,
                a.time.as_secs_f64(),
                a.bytes as f64 / overlay_bytes as f64
            );
        }
        println!(
            "  synthesis {:.2} s (decode {:.2} + restore {:.2}); floor: virsh restore of the customized save {:.2} s",
            synth_t.as_secs_f64(), decode_t.as_secs_f64(), restore_t.as_secs_f64(), floor_t.as_secs_f64()
        );
        let target = |ok: bool| if ok { "met" } else { "MISSED" };
        let size_ratio = overlay_bytes as f64 / b.bytes as f64;
        let create_ratio = encode_t.as_secs_f64() / xdelta_mem.as_secs_f64();
        let synth_ratio = synth_t.as_secs_f64() / floor_t.as_secs_f64();
        println!("  targets: size {size_ratio:.2} × (b) (≤ 0.6: {}), creation {create_ratio:.2} × xdelta3 on memory (≤ 1.5: {}), synthesis {synth_ratio:.2} × restore (≤ 1.3: {})",
            target(size_ratio <= 0.6), target(create_ratio <= 1.5), target(synth_ratio <= 1.3));
        report.push(json!({
            "workload": w.name,
            "about": w.about,
            "memory_snapshot_bytes": mem_bytes,
            "qcow2_delta_bytes": disk_bytes,
            "cloudlet": {
                "overlay_bytes": overlay_bytes,
                "encode_s": encode_t.as_secs_f64(),
                "decode_s": decode_t.as_secs_f64(),
                "restore_s": restore_t.as_secs_f64(),
                "synthesis_s": synth_t.as_secs_f64(),
                "overlay_bytes_zstd19": overlay19_bytes,
                "encode_s_zstd19": encode19_t.as_secs_f64(),
            },
            "alternatives": alts.iter().map(|a| json!({
                "method": a.name, "bytes": a.bytes, "create_s": a.time.as_secs_f64(),
                "size_vs_cloudlet": a.bytes as f64 / overlay_bytes as f64,
            })).collect::<Vec<_>>(),
            "xdelta3_memory_only_s": xdelta_mem.as_secs_f64(),
            "floor_virsh_restore_s": floor_t.as_secs_f64(),
            "targets": {
                "size_vs_b": size_ratio,
                "creation_vs_xdelta3_memory": create_ratio,
                "synthesis_vs_restore": synth_ratio,
            },
        }));
    }
    let rss = peak_rss_mib();
    println!("\nengine peak RSS (this process, encode + decode in-process): {rss} MiB");
    if let Some(path) = &args.json {
        let doc = json!({ "runs": args.runs, "engine_peak_rss_mib": rss, "workloads": report });
        let mut f = File::create(path)?;
        writeln!(f, "{}", serde_json::to_string_pretty(&doc)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
