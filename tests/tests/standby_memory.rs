//! Standbys give way to memory: a synthesis standby is kept only while the host has
//! twice its base's RAM available, and released when the host runs short. Checked on the
//! fixture guest with a base whose RAM is sized from the host's available memory (2-4
//! GiB), so that its standby is made with some to spare; then this test takes 1 GiB
//! more than the spare.
//!
//! A test binary of its own: the memory it takes is the whole host's, and would release
//! the standbys of any test running beside it.
#![allow(clippy::unwrap_used)] // test helpers outside test fns

use std::time::Duration;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::{fixture_guest, require_host, Daemon};

/// The host's `MemAvailable`, in MiB.
fn available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("MemAvailable in /proc/meminfo")
        / 1024
}

/// The `cloudlet_synthesis_standby_vms` gauge.
fn standby_gauge(d: &Daemon) -> u64 {
    d.metric("cloudlet_synthesis_standby_vms").unwrap()
}

/// `mib` MiB of the host's memory, held until the file is dropped: a memory file
/// (`memfd`) with its pages allocated (`fallocate`). Shared memory cannot be reclaimed
/// without swap, so `MemAvailable` drops by as much, and the kernel allocates it far
/// faster than a process touching pages one fault at a time.
fn take_memory(mib: u64) -> std::os::fd::OwnedFd {
    use rustix::fs::{fallocate, memfd_create, FallocateFlags, MemfdFlags};
    let fd = memfd_create("standby-memory-test", MemfdFlags::CLOEXEC).unwrap();
    fallocate(&fd, FallocateFlags::empty(), 0, mib << 20).unwrap();
    fd
}

#[test]
fn a_synthesis_standby_is_released_when_the_host_runs_short_of_memory() {
    if !require_host("a_synthesis_standby_is_released_when_the_host_runs_short_of_memory") {
        return;
    }
    let available = available_mib();
    // A standby needs twice its base's RAM available. The base's RAM costs time (the
    // guest's kernel clears it at boot, the daemon hashes it), so it is at most 4 GiB,
    // and the memory taken later makes the difference: 1 GiB more than the spare.
    let ram_mib = (available.saturating_sub(3 << 10) / 2).min(4 << 10);
    if ram_mib < 2 << 10 {
        eprintln!("skipped: the host has only {available} MiB available");
        return;
    }
    let take_mib = available - 2 * ram_mib + (1 << 10);
    let guest = fixture_guest().unwrap();
    let tmp = TempDir::new("standbymem").unwrap();
    let data = tmp.0.join("data");
    let import = format!("{}:{}", guest.dir.display(), tmp.0.display());
    let env = [
        ("CLOUDLET_IMPORT_DIRS", import.as_str()),
        ("CLOUDLET_SYNTHESIS_STANDBY", "true"),
    ];
    let d = Daemon::start_in(&data, &env).unwrap();
    let mut request = guest.base_request("big");
    request["memory_mib"] = ram_mib.into();
    let (status, base) = d.json("POST", "/api/v1/bases", Some(&request)).unwrap();
    assert_eq!(status, 201, "{base}\n{}", d.log_text());
    let made = cloudlet_e2e::wait_until(Duration::from_secs(60), || {
        (standby_gauge(&d) == 1).then_some(())
    });
    assert!(
        made.is_some(),
        "no standby for a {ram_mib} MiB base with {} MiB available\n{}",
        available_mib(),
        d.log_text()
    );
    let vms = || d.standby_vms().unwrap();
    assert_eq!(vms().len(), 1, "the standby's VM: {:?}", vms());

    let hog = take_memory(take_mib);
    let released = cloudlet_e2e::wait_until(Duration::from_secs(30), || {
        (standby_gauge(&d) == 0 && vms().is_empty()).then_some(())
    });
    let left = available_mib();
    drop(hog);
    assert!(
        released.is_some(),
        "the standby of a {ram_mib} MiB base outlived {left} MiB available\n{}",
        d.log_text()
    );
    assert!(
        d.log_text()
            .contains("synthesis standby released: the host is short of memory"),
        "{}",
        d.log_text()
    );
}
