//! A QEMU that stops moving a memory stream without dying (stopped, wedged, starved)
//! would block the daemon's side of the FIFO forever, holding a synthesis slot or a
//! session. The side doing the blocking I/O marks when it entered a read or write
//! ([`StallClock`], via [`Watched`]); a watchdog task destroys the VM once one call has
//! been blocked for `stream_stall_timeout_s`. The destroyed QEMU closes its end, the
//! blocked call returns (broken pipe, or end of stream), and the caller reports
//! [`VirtError::Stalled`] instead of what the torn stream looked like.
//!
//! Only time spent *inside* a call counts: a decoder waiting for a slow upload, or an
//! encoder busy compressing, is not a stalled QEMU. And until QEMU has shown that it
//! moves the stream ([`ARMED_AFTER`] bytes through the FIFO: more than its pipe holds),
//! the wait is libvirt starting QEMU, which on a loaded host takes seconds to tens of
//! seconds: that phase gets [`START_FACTOR`] times the limit.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::virt::{Hypervisor, VirtError};

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(500);

/// Bytes through the FIFO after which its peer is known to be QEMU at work: twice what
/// the pipe holds (`fifo::PIPE_BYTES`), so some of it was read by the other side.
const ARMED_AFTER: u64 = 2 << 20; // the unit test writes this much

/// Before that, how many times the limit the peer is given (libvirt starting QEMU).
const START_FACTOR: u32 = 4;

/// When the current blocking call on a FIFO began, if one is in progress, and how many
/// bytes went through.
#[derive(Clone, Default)]
pub(crate) struct StallClock(Arc<Marks>);

#[derive(Default)]
struct Marks {
    since: AtomicU64,
    moved: AtomicU64,
}

/// Milliseconds since the daemon's first use of a clock, plus one (0 means "none").
fn now_mark() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

impl StallClock {
    /// Runs one blocking call, marking it in progress meanwhile.
    pub(crate) fn during<T>(&self, call: impl FnOnce() -> T) -> T {
        self.0.since.store(now_mark(), Ordering::Relaxed);
        let out = call();
        self.0.since.store(0, Ordering::Relaxed);
        out
    }

    /// Counts bytes that went through.
    fn moved(&self, bytes: usize) {
        self.0.moved.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// How long the call in progress has been blocked (None: no call in progress).
    pub(crate) fn stuck_for(&self) -> Option<Duration> {
        match self.0.since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now_mark().saturating_sub(since))),
        }
    }

    /// The limit that applies now: `limit` once QEMU has shown that it moves the stream,
    /// [`START_FACTOR`] times it before.
    fn limit(&self, limit: Duration) -> Duration {
        if self.0.moved.load(Ordering::Relaxed) >= ARMED_AFTER {
            limit
        } else {
            limit * START_FACTOR
        }
    }
}

/// A reader or writer whose every call is timed on a [`StallClock`].
pub(crate) struct Watched<T> {
    inner: T,
    clock: StallClock,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, clock: StallClock) -> Self {
        Self { inner, clock }
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Self { inner, clock } = self;
        let n = clock.during(|| inner.write(buf))?;
        clock.moved(n);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let Self { inner, clock } = self;
        clock.during(|| inner.flush())
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Self { inner, clock } = self;
        let n = clock.during(|| inner.read(buf))?;
        clock.moved(n);
        Ok(n)
    }
}

/// The watchdog of one streamed restore or save. Dropping it stops it.
pub(crate) struct Watchdog {
    task: JoinHandle<()>,
    watched: Arc<Watching>,
}

/// What the watchdog task and its handle share.
struct Watching {
    hv: Hypervisor,
    vm: String,
    clock: StallClock,
    limit: Duration,
    /// Names the stream in the error: "with the restore stream".
    what: &'static str,
    /// The limit (s) that ran out, once the VM was destroyed; 0 before.
    tripped: AtomicU64,
}

impl Watching {
    /// How long a stalled QEMU is given now (longer while it has moved nothing yet).
    fn limit(&self) -> Duration {
        self.clock.limit(self.limit)
    }

    /// Destroys the VM (once), recording the limit that ran out.
    async fn trip(&self) {
        let limit = self.limit();
        if self.tripped.swap(limit.as_secs().max(1), Ordering::Relaxed) != 0 {
            return;
        }
        tracing::error!(
            vm = %self.vm,
            limit_s = limit.as_secs(),
            "QEMU made no progress {}; destroying the VM",
            self.what
        );
        if let Err(e) = self.hv.destroy(&self.vm).await {
            tracing::warn!(vm = %self.vm, error = %e, "destroying the stalled VM failed");
        }
    }
}

impl Watchdog {
    /// Watches `clock`: once a call has been blocked for `limit`, destroys `vm`.
    /// `what` names the stream for the error ("with the restore stream").
    pub(crate) fn start(
        hv: &Hypervisor,
        vm: &str,
        clock: StallClock,
        limit: Duration,
        what: &'static str,
    ) -> Self {
        let watched = Arc::new(Watching {
            hv: hv.clone(),
            vm: vm.to_string(),
            clock,
            limit,
            what,
            tripped: AtomicU64::new(0),
        });
        let task = {
            let watched = watched.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TICK).await;
                    let limit = watched.limit();
                    if watched.clock.stuck_for().is_some_and(|t| t >= limit) {
                        watched.trip().await;
                        return;
                    }
                }
            })
        };
        Self { task, watched }
    }

    /// Destroys the VM now: its QEMU did not finish within [`Self::limit`] after the
    /// stream.
    pub(crate) async fn trip_now(&self) {
        self.task.abort();
        self.watched.trip().await;
    }

    /// How long a stalled QEMU is given now (longer while it has moved nothing yet).
    pub(crate) fn limit(&self) -> Duration {
        self.watched.limit()
    }

    /// The error to report if the watchdog destroyed the VM.
    pub(crate) fn verdict(&self) -> Option<VirtError> {
        match self.watched.tripped.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(VirtError::Stalled {
                what: self.watched.what,
                secs,
            }),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_in_progress_counts() {
        let clock = StallClock::default();
        assert_eq!(clock.stuck_for(), None);
        let seen = clock.during(|| {
            std::thread::sleep(Duration::from_millis(30));
            clock.stuck_for()
        });
        assert!(
            seen.is_some_and(|t| t >= Duration::from_millis(25)),
            "{seen:?}"
        );
        assert_eq!(clock.stuck_for(), None, "the call ended");
    }

    #[test]
    fn a_watched_writer_times_its_calls() {
        let clock = StallClock::default();
        let mut w = Watched::new(Vec::new(), clock.clone());
        w.write_all(b"abc").unwrap();
        assert_eq!(w.inner, b"abc");
        assert_eq!(clock.stuck_for(), None);
    }

    #[test]
    fn the_start_gets_longer_until_the_stream_moves() {
        let clock = StallClock::default();
        let limit = Duration::from_secs(10);
        assert_eq!(clock.limit(limit), limit * START_FACTOR);
        let mut w = Watched::new(std::io::sink(), clock.clone());
        w.write_all(&vec![0u8; 2 << 20]).unwrap();
        assert_eq!(clock.limit(limit), limit);
    }
}
