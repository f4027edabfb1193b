//! `bench-engine` (scripts/bench-engine.sh): measures the overlay engine (base creation, encode, decode, index
//! lookups, peak memory) on a generated workload that mimics the reference customization
//! of docs/benchmarks.md (install a package, write app files), scaled to a chosen guest. Real VMs are measured by
//! the end-to-end benchmark; this one isolates the engine.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use cloudlet_engine::base::{create_base, Base, BasePaths};
use cloudlet_engine::chunk::{hash_chunk, ImageKind};
use cloudlet_engine::decode::{decode, DecodeOutputs};
use cloudlet_engine::disk::{DiskOutputFormat, DiskSource};
use cloudlet_engine::encode::{encode, EncodeInput, EncodeOptions};
use cloudlet_engine::format::OverlayReader;
use cloudlet_engine::progress::NoProgress;
use cloudlet_engine::testkit::{generate, Rng, WorkloadSpec};
use serde::Serialize;

/// Flags of `bench-engine`.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Measures the overlay engine on a generated workload")]
pub struct BenchArgs {
    /// Guest disk size in MiB.
    #[arg(long, default_value_t = 2048)]
    pub disk_mib: u64,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    pub ram_mib: u64,
    /// Extra data the customization writes to disk (half random, half compressible), in
    /// MiB, on top of the reference customization; it also lands in the page cache.
    #[arg(long, default_value_t = 0)]
    pub extra_mib: u64,
    /// Timed runs of encode and decode (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Scratch directory (needs room for ~3x disk + 3x RAM).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Measured figures.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    disk_mib: u64,
    ram_mib: u64,
    modified_mib: f64,
    base_create_s: f64,
    base_create_peak_rss_mib: f64,
    index_entries: u64,
    index_lookups_per_s: f64,
    overlay_bytes: u64,
    overlay_mb: f64,
    encode_s: f64,
    encode_modified_mb_per_s: f64,
    encode_input_mb_per_s: f64,
    encode_peak_rss_mib: f64,
    /// CPU seconds (user + system, all threads) of the median encode run.
    encode_cpu_s: f64,
    decode_s: f64,
    decode_modified_mb_per_s: f64,
    decode_output_mb_per_s: f64,
    decode_peak_rss_mib: f64,
    /// CPU seconds of the median decode run.
    decode_cpu_s: f64,
    /// Every encode run's wall time, in run order.
    encode_runs_s: Vec<f64>,
    /// Every decode run's wall time, in run order (the first often differs: it is the
    /// first to take fresh memory for its output files, see docs/benchmarks.md).
    decode_runs_s: Vec<f64>,
    encode_phases: String,
    decode_phases: String,
    counts_memory: String,
    counts_disk: String,
}

/// Runs the benchmark and prints its report.
fn main() -> anyhow::Result<()> {
    run(&<BenchArgs as clap::Parser>::parse())
}

fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile_dir(&args.dir)?;
    let result = bench_in(args, scratch.path());
    drop(scratch);
    let report = result?;
    let out = if args.json {
        serde_json::to_string_pretty(&report)?
    } else {
        table(&report)
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    Ok(())
}

fn bench_in(args: &BenchArgs, dir: &Path) -> anyhow::Result<BenchReport> {
    let mut spec = WorkloadSpec::reference(args.disk_mib << 20, args.ram_mib << 20);
    spec.disk_random_bytes += (args.extra_mib << 20) / 2;
    spec.disk_text_bytes += (args.extra_mib << 20) / 2;
    let work = generate(dir, &spec).context("generating the workload")?;

    let base_dir = dir.join("base");
    std::fs::create_dir(&base_dir)?;
    let paths = BasePaths::in_dir(&base_dir);
    std::fs::rename(&work.base_disk, &paths.disk)?;
    std::fs::copy(&paths.disk, &work.base_disk)?;
    reset_peak_rss();
    let started = Instant::now();
    let summary = create_base(&paths, work.base_save.as_deref()).context("creating the base")?;
    let base_create = started.elapsed();
    let base_rss = peak_rss_mib();
    let base = Base::open(&paths)?;
    // Let the workload's gigabytes reach the disk now, not in the middle of a measurement.
    settle();

    // Index lookups: half hits (hashes of base chunks), half misses.
    let lookups = 1_000_000u64;
    let mut rng = Rng::new(7);
    let probes: Vec<_> = (0..lookups)
        .map(|i| {
            if i % 2 == 0 {
                let kind = if rng.below(2) == 0 {
                    ImageKind::Disk
                } else {
                    ImageKind::Memory
                };
                let n = base.hashes().len(kind).max(1);
                let loc = cloudlet_engine::hashlist::Location {
                    kind,
                    index: rng.below(n),
                };
                base.hash_at(loc).copied().unwrap_or_default()
            } else {
                hash_chunk(&rng.next_u64().to_le_bytes())
            }
        })
        .collect();
    let started = Instant::now();
    let hits = probes.iter().filter(|h| base.find(h).is_some()).count();
    let lookup_time = started.elapsed();
    // Half the probes are base chunks: an index that finds none of them is broken, and its
    // lookup time would mean nothing.
    anyhow::ensure!(
        hits > 0,
        "index lookups found none of the base chunks probed"
    );

    let disk = DiskSource::raw_ranges(&work.custom_disk, &work.written_ranges)?;
    let input = EncodeInput {
        memory: work.custom_save.as_deref(),
        disk: &disk,
    };
    let options = EncodeOptions {
        zstd_level: args.zstd_level,
        threads: args.threads,
        properties: vec![],
    };
    let overlay = dir.join("bench.overlay");
    let mut encode_times = Vec::new();
    let mut encode_cpu = Vec::new();
    let mut encode_rss = 0f64;
    let mut last = None;
    for _ in 0..args.runs.max(1) {
        settle();
        // Overlay creation follows the save of the customized VM, whose files are then in
        // the page cache; this machine's DAMON pageout scheme may have evicted them since.
        warm(work.custom_save.as_deref());
        warm(Some(&work.custom_disk));
        reset_peak_rss();
        let cpu = cpu_time();
        let started = Instant::now();
        let s = encode(&base, &input, &overlay, &options, &NoProgress).context("encoding")?;
        encode_times.push(started.elapsed());
        encode_cpu.push(cpu_time().saturating_sub(cpu));
        encode_rss = encode_rss.max(peak_rss_mib());
        last = Some(s);
    }
    let summary_enc = last.context("no encode run")?;

    let mut decode_times = Vec::new();
    let mut decode_cpu = Vec::new();
    let mut decode_summary = None;
    let mut decode_rss = 0f64;
    let out_disk = dir.join("synth.qcow2");
    let out_mem = dir.join("synth.save");
    for _ in 0..args.runs.max(1) {
        let _ = std::fs::remove_file(&out_disk);
        let _ = std::fs::remove_file(&out_mem);
        settle();
        // A base in use is in the page cache, as is an overlay just received.
        warm(Some(&paths.memory_pages));
        warm(Some(&overlay));
        reset_peak_rss();
        let cpu = cpu_time();
        let started = Instant::now();
        let reader = OverlayReader::open(BufReader::with_capacity(1 << 20, File::open(&overlay)?))?;
        let outputs = DecodeOutputs {
            disk: &out_disk,
            disk_format: DiskOutputFormat::Qcow2,
            memory: &out_mem,
            domain_xml: None,
            durable: false,
            threads: args.threads,
        };
        decode_summary = Some(decode(reader, &base, &outputs, &NoProgress).context("decoding")?);
        decode_times.push(started.elapsed());
        decode_cpu.push(cpu_time().saturating_sub(cpu));
        decode_rss = decode_rss.max(peak_rss_mib());
    }
    let save_size = std::fs::metadata(&out_mem).map(|m| m.len()).unwrap_or(0);
    let input_bytes = work
        .custom_save
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
        + disk
            .candidates()
            .iter()
            .map(|r| (r.end - r.start) * 4096)
            .sum::<u64>();

    let secs = |times: &[Duration]| times.iter().map(Duration::as_secs_f64).collect();
    let (encode_runs_s, decode_runs_s) = (secs(&encode_times), secs(&decode_times));
    let enc = median(&mut encode_times);
    let dec = median(&mut decode_times);
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let meta = &summary_enc.meta;
    let counts = |k| {
        let c = meta.counts(k);
        format!(
            "unchanged {} zero {} base-ref {} self-ref {} delta {} raw {}",
            c.unchanged, c.zero, c.base_ref, c.self_ref, c.delta, c.raw
        )
    };
    Ok(BenchReport {
        disk_mib: args.disk_mib,
        ram_mib: args.ram_mib,
        modified_mib: work.modified_bytes as f64 / f64::from(1u32 << 20),
        base_create_s: base_create.as_secs_f64(),
        base_create_peak_rss_mib: base_rss,
        index_entries: summary.indexed_chunks,
        index_lookups_per_s: lookups as f64 / lookup_time.as_secs_f64(),
        overlay_bytes: summary_enc.file_size,
        overlay_mb: mb(summary_enc.file_size),
        encode_s: enc.as_secs_f64(),
        encode_modified_mb_per_s: mb(work.modified_bytes) / enc.as_secs_f64(),
        encode_input_mb_per_s: mb(input_bytes) / enc.as_secs_f64(),
        encode_peak_rss_mib: encode_rss,
        encode_cpu_s: median(&mut encode_cpu).as_secs_f64(),
        decode_s: dec.as_secs_f64(),
        decode_modified_mb_per_s: mb(work.modified_bytes) / dec.as_secs_f64(),
        decode_output_mb_per_s: mb(save_size + meta.counts(ImageKind::Disk).modified() * 4096)
            / dec.as_secs_f64(),
        decode_peak_rss_mib: decode_rss,
        decode_cpu_s: median(&mut decode_cpu).as_secs_f64(),
        encode_runs_s,
        decode_runs_s,
        encode_phases: format!(
            "memory {:.3} s, disk {:.3} s, write {:.3} s",
            summary_enc.memory_time.as_secs_f64(),
            summary_enc.disk_time.as_secs_f64(),
            summary_enc.finish_time.as_secs_f64()
        ),
        decode_phases: decode_summary.map_or_else(String::new, |d| {
            format!(
                "read {:.3} s, rebuild {:.3} s, apply {:.3} s, base pages {:.3} s (beside those), finish {:.3} s",
                d.read_time.as_secs_f64(),
                d.rebuild_time.as_secs_f64(),
                d.apply_time.as_secs_f64(),
                d.base_pages_time.as_secs_f64(),
                d.finish_time.as_secs_f64()
            )
        }),
        counts_memory: counts(ImageKind::Memory),
        counts_disk: counts(ImageKind::Disk),
    })
}

fn table(r: &BenchReport) -> String {
    format!(
        "workload: {disk} MiB disk, {ram} MiB RAM, {modified:.1} MiB modified\n\
         base creation      {bc:>8.2} s   peak RSS {brss:.0} MiB   ({entries} index entries)\n\
         index lookups      {lk:>8.0} /s\n\
         overlay            {ov:>8.2} MB\n\
         encode             {es:>8.3} s   {emb:>7.0} MB/s modified   {eib:>7.0} MB/s input   peak RSS {erss:.0} MiB   CPU {ecpu:.2} s\n\
         decode             {ds:>8.3} s   {dmb:>7.0} MB/s modified   {dob:>7.0} MB/s output  peak RSS {drss:.0} MiB   CPU {dcpu:.2} s\n\
         runs enc / dec     {er} / {dr} s\n\
         encode phases      {ep}\n\
         decode phases      {dp}\n\
         memory records     {cm}\n\
         disk records       {cd}",
        disk = r.disk_mib,
        ram = r.ram_mib,
        modified = r.modified_mib,
        bc = r.base_create_s,
        brss = r.base_create_peak_rss_mib,
        entries = r.index_entries,
        lk = r.index_lookups_per_s,
        ov = r.overlay_mb,
        es = r.encode_s,
        emb = r.encode_modified_mb_per_s,
        eib = r.encode_input_mb_per_s,
        erss = r.encode_peak_rss_mib,
        ecpu = r.encode_cpu_s,
        ds = r.decode_s,
        dmb = r.decode_modified_mb_per_s,
        dob = r.decode_output_mb_per_s,
        drss = r.decode_peak_rss_mib,
        dcpu = r.decode_cpu_s,
        er = runs(&r.encode_runs_s),
        dr = runs(&r.decode_runs_s),
        ep = r.encode_phases,
        dp = r.decode_phases,
        cm = r.counts_memory,
        cd = r.counts_disk,
    )
}

/// Run times, space-separated.
fn runs(times: &[f64]) -> String {
    let all: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    all.join(" ")
}

/// Waits for dirty pages to be written back (`sync`), so writeback of earlier steps does not
/// land inside a timed step.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// Reads a file once so that it is in the page cache.
fn warm(path: Option<&Path>) {
    if let Some(mut file) = path.and_then(|p| File::open(p).ok()) {
        let _ = std::io::copy(&mut file, &mut std::io::sink());
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// CPU time (user + system) this process has used, all threads, from `/proc/self/stat`:
/// less noisy than wall time on a shared machine, so it shows what a change saves.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on every Linux architecture the daemon runs on.
    Duration::from_secs_f64((ticks(11) + ticks(12)) / 100.0)
}

/// Resets the kernel's peak-RSS counter of this process (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS (VmHWM) since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(parent: &Path) -> anyhow::Result<Scratch> {
    let dir = parent.join(format!("cloudlet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Scratch(dir))
}
