//! The overlay engine on a real VM, driven with virsh (the daemon automates these steps in
//! its own flows): a real libvirt save file round-trips through the codec and restores;
//! an overlay of a real customization synthesizes a VM that resumes where the customized
//! one was saved, with its files on disk and its processes and memory state intact.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{fixture_guest, require_host, unique_name, virsh, xml, Console, DomainGuard};
use cloudlet_engine::base::{create_base, write_base_save_file, Base, BasePaths};
use cloudlet_engine::chunk::{ImageKind, CHUNK_SIZE_BYTES};
use cloudlet_engine::decode::{decode, DecodeOutputs};
use cloudlet_engine::disk::{DiskOutputFormat, DiskSource};
use cloudlet_engine::encode::{encode, EncodeInput, EncodeOptions};
use cloudlet_engine::format::OverlayReader;
use cloudlet_engine::progress::NoProgress;
use cloudlet_engine::savefile::{SaveFileReader, SaveFileWriter};

const BOOT: Duration = Duration::from_secs(60);
const CMD: Duration = Duration::from_secs(60);

fn retarget(save: &Path, name: &str, disk: &Path, format: &str, console: &Path) -> String {
    xml::retarget_saved(save, name, disk, format, console).unwrap()
}

fn restore(save: &Path, name: &str, console: &Path) -> (DomainGuard, Console) {
    let guard = DomainGuard(name.to_string());
    virsh(&["restore", save.to_str().unwrap()]).unwrap();
    let mut con = Console::connect(console, BOOT).unwrap();
    con.wait_ready(BOOT).unwrap();
    (guard, con)
}

#[test]
fn real_save_file_parses_rewrites_and_restores() {
    if !require_host("real_save_file_parses_rewrites_and_restores") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("codec").unwrap();
    let name = unique_name("codec");
    let disk = tmp.0.join("disk.img");
    std::fs::copy(&guest.disk, &disk).unwrap();
    let console = tmp.0.join("console.sock");

    // Parse the real file page by page, then write it back through our writer with a
    // retargeted XML.
    let mut reader =
        SaveFileReader::open(BufReader::new(File::open(&guest.save).unwrap())).unwrap();
    let layout = reader.layout().clone();
    assert!(
        layout.blocks.iter().any(|b| b.name == "pc.ram"),
        "{:?}",
        layout.blocks
    );
    let new_xml = retarget(&guest.save, &name, &disk, "raw", &console);
    let rebuilt = tmp.0.join("rebuilt.save");
    let mut writer = SaveFileWriter::new(
        BufWriter::new(File::create(&rebuilt).unwrap()),
        &layout,
        Some(&new_xml),
    )
    .unwrap();
    let mut page = [0u8; CHUNK_SIZE_BYTES];
    let mut pages = 0u64;
    while let Some(index) = reader.next_page(&mut page).unwrap() {
        writer.write_page(index, &page).unwrap();
        pages += 1;
    }
    assert_eq!(
        pages,
        layout.page_count(),
        "every page of every block appears once"
    );
    let device_state = reader.finish().unwrap();
    assert!(device_state.len() > 10_000);
    writer.finish(&device_state).unwrap().flush().unwrap();

    // The rebuilt file has the same pages and device state ...
    let mut a = SaveFileReader::open(BufReader::new(File::open(&rebuilt).unwrap())).unwrap();
    assert_eq!(a.layout().domain_xml().unwrap(), new_xml);
    let mut seen = 0u64;
    while a.next_page(&mut page).unwrap().is_some() {
        seen += 1;
    }
    assert_eq!(seen, pages);
    assert_eq!(a.finish().unwrap(), device_state);

    // ... and QEMU resumes it: the guest answers and the process started before the save lives.
    let (_guard, mut con) = restore(&rebuilt, &name, &console);
    assert_eq!(
        con.check("cat /mnt/data/hello.txt | cut -c1-8", CMD)
            .unwrap(),
        "fixture-"
    );
    assert_eq!(
        con.check("pidof sleep >/dev/null && echo alive", CMD)
            .unwrap(),
        "alive"
    );
}

struct Timings(Vec<(&'static str, Duration)>);

impl Timings {
    fn time<T>(&mut self, step: &'static str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let v = f();
        self.0.push((step, started.elapsed()));
        v
    }
}

#[test]
fn overlay_of_a_real_customization_synthesizes_a_resumed_vm() {
    if !require_host("overlay_of_a_real_customization_synthesizes_a_resumed_vm") {
        return;
    }
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("synth").unwrap();
    let mut t = Timings(Vec::new());

    // Base: the fixture's disk and memory snapshot.
    let base_dir = tmp.0.join("base");
    std::fs::create_dir(&base_dir).unwrap();
    let paths = BasePaths::in_dir(&base_dir);
    std::fs::copy(&guest.disk, &paths.disk).unwrap();
    t.time("create base", || {
        create_base(&paths, Some(&guest.save)).unwrap()
    });
    let base = Base::open(&paths).unwrap();

    // Customize: resume the base on a qcow2 backed by the base disk, write files, start a
    // process that counts in memory, save.
    let custom_name = unique_name("custom");
    let custom_disk = tmp.0.join("custom.qcow2");
    let custom_console = tmp.0.join("custom.sock");
    cloudlet_e2e::create_cow_disk(&paths.disk, &custom_disk).unwrap();
    let resume_save = tmp.0.join("resume.save");
    let resume_xml = retarget(
        &guest.save,
        &custom_name,
        &custom_disk,
        "qcow2",
        &custom_console,
    );
    write_base_save_file(&base, &resume_save, Some(&resume_xml)).unwrap();
    let (guard, mut con) = t.time("resume base", || {
        restore(&resume_save, &custom_name, &custom_console)
    });
    let script = [
        "dd if=/dev/urandom of=/mnt/data/random.bin bs=1024 count=4096 2>/dev/null",
        "cp /mnt/data/random.bin /mnt/data/random-copy.bin",
        "cp /bin/busybox /mnt/data/busybox.copy",
        "seq 1 20000 > /mnt/data/numbers.txt",
        "sync",
        "(i=0; while :; do i=$((i+1)); echo $i > /counter; sleep 0.1; done) >/dev/null 2>&1 & echo $! > /counter.pid",
    ];
    t.time("customize", || {
        for line in script {
            con.check(line, CMD).unwrap();
        }
    });
    let sums = con
        .check(
            "cd /mnt/data && md5sum random.bin random-copy.bin busybox.copy numbers.txt",
            CMD,
        )
        .unwrap();
    let pid = con.check("cat /counter.pid", CMD).unwrap();
    assert!(pid.parse::<u32>().is_ok(), "background pid: {pid:?}");
    std::thread::sleep(Duration::from_millis(500));
    let counter_at_save: u64 = con.check("cat /counter", CMD).unwrap().parse().unwrap();
    let custom_save = tmp.0.join("custom.save");
    drop(con);
    t.time("save customized", || {
        virsh(&["save", &custom_name, custom_save.to_str().unwrap()]).unwrap()
    });
    drop(guard);

    // Encode from the qcow2's own clusters and the saved memory.
    let overlay = tmp.0.join("app.overlay");
    let disk_source = DiskSource::qcow2(&custom_disk, &paths.disk).unwrap();
    let input = EncodeInput {
        memory: Some(&custom_save),
        disk: &disk_source,
    };
    let summary = t.time("encode", || {
        encode(
            &base,
            &input,
            &overlay,
            &EncodeOptions::default(),
            &NoProgress,
        )
        .unwrap()
    });
    let mem = summary.meta.counts(ImageKind::Memory);
    let dsk = summary.meta.counts(ImageKind::Disk);
    eprintln!(
        "overlay {} bytes; memory {mem:?}; disk {dsk:?}",
        summary.file_size
    );
    assert!(
        dsk.modified() >= 2048,
        "the 8 MiB of files must be in the overlay: {dsk:?}"
    );
    // The fixture's ext4 has 4 KiB blocks (as real guests): the copy's 1024 chunks all
    // reference the original's, and the page cache's copies reference the disk chunks.
    assert!(
        dsk.self_ref >= 1024,
        "the copied 4 MiB file must be stored once: {dsk:?}"
    );
    assert!(
        mem.self_ref >= 1000,
        "the page cache's copy of the files must reference the disk chunks: {mem:?}"
    );
    let modified_bytes = (mem.modified() + dsk.modified()) * CHUNK_SIZE_BYTES as u64;
    assert!(
        summary.file_size * 3 < modified_bytes * 2,
        "overlay {} bytes for {modified_bytes} modified bytes: dedup and compression must save a third",
        summary.file_size
    );

    // Synthesize and resume.
    let synth_name = unique_name("synth");
    let synth_disk = tmp.0.join("synth.qcow2");
    let synth_save = tmp.0.join("synth.save");
    let synth_console = tmp.0.join("synth.sock");
    let synth_xml = retarget(
        &custom_save,
        &synth_name,
        &synth_disk,
        "qcow2",
        &synth_console,
    );
    let outputs = DecodeOutputs {
        disk: &synth_disk,
        disk_format: DiskOutputFormat::Qcow2,
        memory: &synth_save,
        domain_xml: Some(&synth_xml),
        durable: false,
        threads: 0,
    };
    t.time("decode", || {
        let reader = OverlayReader::open(BufReader::new(File::open(&overlay).unwrap())).unwrap();
        decode(reader, &base, &outputs, &NoProgress).unwrap()
    });
    let (_guard, mut con) = t.time("restore synthesized", || {
        restore(&synth_save, &synth_name, &synth_console)
    });
    assert_eq!(
        con.check(
            "cd /mnt/data && md5sum random.bin random-copy.bin busybox.copy numbers.txt",
            CMD
        )
        .unwrap(),
        sums
    );
    assert_eq!(
        con.check(&format!("kill -0 {pid} && echo alive"), CMD)
            .unwrap(),
        "alive",
        "same process, same pid"
    );
    let first: u64 = con.check("cat /counter", CMD).unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second: u64 = con.check("cat /counter", CMD).unwrap().parse().unwrap();
    assert!(
        first >= counter_at_save,
        "counter went back: {counter_at_save} at save, {first} after"
    );
    assert!(
        second > first,
        "counter is not running: {first} then {second}"
    );

    eprintln!("step timings (fixture guest, TCG):");
    for (step, d) in &t.0 {
        eprintln!("  {step:<22} {:>8.2} s", d.as_secs_f64());
    }
}
