//! A restore that reads the save file while it is being decoded: libvirt restores from a
//! FIFO in the session directory, the decoder writes the save file into it.
//!
//! libvirt opens the path, reads its header and the domain XML, starts QEMU (which opens
//! the VM's disk) and hands the rest of the stream to QEMU's incoming migration. So the
//! order is: the decoder creates the disk (a valid image from the start), then
//! [`StreamedRestore::opener`] starts the restore and opens the FIFO's write end once
//! libvirt has opened its read end, then the decoder streams the pages and, once the whole
//! overlay verified and the disk is complete, the device state that lets the restore
//! finish. A decode that fails closes the FIFO early: QEMU sees a truncated stream, the
//! restore fails, libvirt removes the half-started domain.
//!
//! A QEMU that stops reading (or, once the stream is written, does not finish the
//! restore) within `stream_stall_timeout_s` is destroyed by a [`Watchdog`], and the
//! restore reports [`VirtError::Stalled`].
//!
//! If libvirt never opens the FIFO (it refused the restore before reading, or did not
//! open it within [`OPEN_TIMEOUT`]), the opener declines the stream and the decoder writes
//! a save file instead (unless streaming is required).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cloudlet_engine::decode::OpenStream;
use rustix::fs::{Mode, OFlags};
use tokio::task::JoinHandle;

use super::stall::{StallClock, Watchdog, Watched};
use super::ServiceError;
use crate::config::StreamMode;
use crate::store::bases::BaseRecord;
use crate::virt::{Hypervisor, VirtError};
use crate::AppState;

/// Longest libvirt may take to open the FIFO once the restore started.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the opener looks again while libvirt has not opened the FIFO.
const OPEN_POLL: Duration = Duration::from_millis(2);

/// A FIFO in a session directory and the restore reading it, once started.
pub(crate) struct StreamedRestore {
    fifo: PathBuf,
    restore: Arc<Mutex<Option<Started>>>,
    /// Timed by the FIFO's writer.
    clock: StallClock,
    watchdog: Watchdog,
}

/// The restore, started by the opener.
struct Started {
    task: JoinHandle<Result<(), VirtError>>,
    at: Instant,
    /// Whether the opener handed the FIFO to the decoder.
    streamed: bool,
}

/// How a streamed restore ended.
pub(crate) enum Outcome {
    /// No stream: the opener was not called (the decode failed first, or the overlay has
    /// no memory) or declined the stream (the decoder wrote a save file instead).
    NotStreamed,
    /// The restore read the stream and returned this, after this long.
    Finished(Result<(), VirtError>, Duration),
}

impl StreamedRestore {
    /// Makes the FIFO `memory.fifo` in `dir` (0600: only libvirtd, root, opens it) for
    /// the restore of `vm`, which is destroyed if it stalls for `stall_limit`.
    pub(crate) fn create(
        dir: &Path,
        hv: &Hypervisor,
        vm: &str,
        stall_limit: Duration,
    ) -> std::io::Result<Self> {
        let clock = StallClock::default();
        Ok(Self {
            fifo: super::fifo::make(dir, "memory.fifo")?,
            restore: Arc::new(Mutex::new(None)),
            watchdog: Watchdog::start(
                hv,
                vm,
                clock.clone(),
                stall_limit,
                "with the restore stream",
            ),
            clock,
        })
    }

    /// The decoder's [`OpenStream`]: runs `prepare` (the disk exists now: give the VM its
    /// files), starts the restore on `runtime` (leaving the VM `paused`, or running), and
    /// returns the FIFO's write end once libvirt has opened it. With `required`, a restore
    /// that never opens it is an error; otherwise the stream is declined (`None`) and the
    /// decoder writes a save file.
    pub(crate) fn opener(
        &self,
        hv: Hypervisor,
        runtime: tokio::runtime::Handle,
        prepare: impl FnOnce() -> std::io::Result<()> + Send + 'static,
        (required, paused): (bool, bool),
    ) -> OpenStream {
        let (fifo, slot, clock) = (self.fifo.clone(), self.restore.clone(), self.clock.clone());
        Box::new(move || {
            prepare()?;
            let path = fifo.clone();
            let task = runtime.spawn(async move {
                if paused {
                    hv.restore_paused(&path).await
                } else {
                    hv.restore(&path).await
                }
            });
            let at = Instant::now();
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Started {
                task,
                at,
                streamed: false,
            });
            match open_write_end(&fifo, &slot) {
                Ok(file) => {
                    if let Some(s) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                        s.streamed = true;
                    }
                    Ok(Some(
                        Box::new(Watched::new(file, clock)) as Box<dyn Write + Send>
                    ))
                }
                Err(e) if required => Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "streamed restore did not start; writing a save file instead");
                    Ok(None)
                }
            }
        })
    }

    /// Whether the opener handed the FIFO to the decoder.
    pub(crate) fn streamed(&self) -> bool {
        self.restore
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|s| s.streamed)
    }

    /// Waits for the restore, if the opener started it, and removes the FIFO. Call it once
    /// the decoder is done (its end of the FIFO closed). A restore that does not finish
    /// within the stall limit then has its VM destroyed.
    pub(crate) async fn outcome(self) -> Outcome {
        let started = self
            .restore
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(Started {
            mut task,
            at,
            streamed,
        }) = started
        else {
            let _ = std::fs::remove_file(&self.fifo);
            return Outcome::NotStreamed;
        };
        if !task.is_finished() {
            // libvirt may still be blocked opening the FIFO (the opener gave up on it, or
            // failed): a writer that comes and goes releases it, with an empty stream.
            super::fifo::release(&self.fifo, OFlags::WRONLY);
        }
        let joined = match tokio::time::timeout(self.watchdog.limit(), &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                self.watchdog.trip_now().await;
                task.await
            }
        };
        let result = joined.unwrap_or_else(|e| Err(VirtError::Task(e)));
        // A destroyed VM failed the restore: why it was destroyed is the error.
        let result = match self.watchdog.verdict() {
            Some(stalled) => Err(stalled),
            None => result,
        };
        let _ = std::fs::remove_file(&self.fifo);
        match (streamed, result) {
            (true, result) => Outcome::Finished(result, at.elapsed()),
            (false, Err(e)) => {
                tracing::warn!(error = %e, "the restore refused the stream");
                Outcome::NotStreamed
            }
            (false, Ok(())) => Outcome::NotStreamed,
        }
    }
}

/// Whether `e` says the stream's reader went away (a broken pipe somewhere in its chain):
/// then the restore's own error says why, not this one. Any other failure (a bad
/// overlay, a full disk) is the cause, whatever the restore made of its truncated stream.
pub(crate) fn broke_the_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Opens the FIFO's write end as soon as a reader has its read end open (a non-blocking
/// open fails with ENXIO until then), unless the restore ends first or takes longer than
/// [`OPEN_TIMEOUT`].
fn open_write_end(fifo: &Path, restore: &Mutex<Option<Started>>) -> std::io::Result<File> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        match rustix::fs::open(
            fifo,
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                // Blocking from now on: the decoder waits while QEMU is busy.
                rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
                super::fifo::grow_pipe(&fd);
                return Ok(File::from(fd));
            }
            Err(rustix::io::Errno::NXIO) => {}
            Err(e) => return Err(e.into()),
        }
        let ended = restore
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(|s| s.task.is_finished());
        if ended {
            return Err(std::io::Error::other(
                "the restore ended before it opened the stream",
            ));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "libvirt did not open the stream within {} s",
                OPEN_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(OPEN_POLL);
    }
}

impl AppState {
    /// A streamed restore for the session directory `dir` as `restore_stream` says (None:
    /// off, or the FIFO cannot be made and streaming is not required), with the opener to
    /// hand to whatever writes the save file. The opener gives the VM its files (the base's
    /// and `dir`'s) before the restore starts; the VM is left `paused`, or running.
    pub(crate) fn streamed_restore(
        &self,
        base: &BaseRecord,
        dir: &Path,
        vm: &str,
        paused: bool,
    ) -> Result<Option<(StreamedRestore, OpenStream)>, ServiceError> {
        let required = match self.config.restore_stream {
            StreamMode::Off => return Ok(None),
            StreamMode::On => true,
            StreamMode::Auto => false,
        };
        let stall_limit = Duration::from_secs(self.config.stream_stall_timeout_s);
        let restore = match StreamedRestore::create(dir, &self.hv, vm, stall_limit) {
            Ok(r) => r,
            Err(e) if required => return Err(ServiceError::failed("making the restore's FIFO", e)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the restore's FIFO; writing a save file");
                return Ok(None);
            }
        };
        let (confine, base_dir, session_dir) = (
            self.confine.clone(),
            PathBuf::from(&base.dir),
            dir.to_path_buf(),
        );
        let prepare = move || {
            confine
                .share_base(&base_dir)
                .map_err(std::io::Error::other)?;
            confine
                .hand_over(&session_dir)
                .map_err(std::io::Error::other)
        };
        let runtime = tokio::runtime::Handle::current();
        let open = restore.opener(self.hv.clone(), runtime, prepare, (required, paused));
        Ok(Some((restore, open)))
    }
}

#[cfg(test)]
mod tests {
    use super::broke_the_stream;

    #[test]
    fn only_a_broken_pipe_defers_to_the_restore() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let wrapped = cloudlet_engine::decode::DecodeError::Output {
            path: "memory.save".into(),
            source: pipe,
        };
        assert!(broke_the_stream(&wrapped));
        let full = cloudlet_engine::decode::DecodeError::Output {
            path: "disk.qcow2".into(),
            source: std::io::Error::from_raw_os_error(28), // ENOSPC
        };
        assert!(!broke_the_stream(&full));
    }
}
