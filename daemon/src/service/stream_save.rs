//! A save that is encoded while it is written: libvirt saves the VM into a FIFO in the
//! session directory and the encoder classifies the pages as they come, instead of a
//! RAM-sized save file written and then read back.
//!
//! libvirt writes its header with the magic `LibvirtQemudPart`, the XML, then QEMU's
//! stream; once QEMU is done it **opens the path again** and rewrites the header with
//! `LibvirtQemudSave` to mark the save complete. A FIFO's reader must therefore open it a
//! second time and read that header, or the save job (and that libvirt connection) stays
//! blocked. [`SaveReader`] does it: it passes the stream through with the complete magic
//! (the encoder's parser accepts only that) and, at the stream's end, reopens the FIFO,
//! reads the rewritten header and checks it; only then does it report the end.
//!
//! A QEMU that stops writing (a read or open of the FIFO blocked for
//! `stream_stall_timeout_s`) is destroyed by a [`Watchdog`]; the save then reports
//! [`VirtError::Stalled`].
//!
//! A save whose rewritten header was read is complete: libvirt rewrites it only once QEMU's
//! stream succeeded, and all that is left of `virDomainSave` is stopping QEMU, which costs
//! libvirt at least 200 ms (it polls the process it sent SIGTERM to every 200 ms). So the
//! overlay is handed over then, and [`SaveEnd::Stopping`] lets the caller wait for the
//! rest in the background.
//!
//! Every blocking open on either side is released when the other side is gone:
//! [`StreamedSave::finish`] opens the FIFO non-blocking from the other end (a peer that
//! comes and goes, with nothing to read) once the save has returned while the reader may
//! be waiting, and after the work while the save has not returned.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cloudlet_engine::savefile::{LIBVIRT_HEADER_BYTES, LIBVIRT_MAGIC, LIBVIRT_PARTIAL_MAGIC};
use rustix::fs::OFlags;

use super::fifo;
use super::stall::{StallClock, Watchdog, Watched};
use tokio::task::JoinHandle;

use crate::virt::{Hypervisor, VirtError};

/// How often a blocked open is released again while the other side is gone.
const RELEASE_EVERY: Duration = Duration::from_millis(50);

/// Longest the save may take to return once the work reading it is over.
const SAVE_RETURN_TIMEOUT: Duration = Duration::from_secs(120);

/// A save of a VM into a FIFO, started.
pub(crate) struct StreamedSave {
    fifo: PathBuf,
    task: JoinHandle<Result<(), VirtError>>,
    at: Instant,
    /// Timed by the reader.
    clock: StallClock,
    /// When the reader read libvirt's rewritten header: the save is complete.
    completed: Arc<OnceLock<Instant>>,
    watchdog: Watchdog,
}

/// How a streamed save ended, once the work reading it is over.
pub(crate) enum SaveEnd {
    /// The save returned: its result, and how long it took.
    Returned(Result<(), VirtError>, Duration),
    /// libvirt marked the save complete this long after it began (the save succeeded)
    /// and is stopping the VM: [`SaveTail::wait`] waits for that.
    Stopping(Duration, SaveTail),
}

/// A complete save whose call has not returned yet: libvirt is stopping the VM.
pub(crate) struct SaveTail {
    fifo: PathBuf,
    task: JoinHandle<Result<(), VirtError>>,
    at: Instant,
    watchdog: Watchdog,
}

impl SaveTail {
    /// Waits for the save to return (the VM is gone then); its result and how long the
    /// whole save took.
    pub(crate) async fn wait(self) -> (Result<(), VirtError>, Duration) {
        let Self {
            fifo,
            task,
            at,
            watchdog,
        } = self;
        let returned = wait_for_return(task, &fifo, at).await;
        finish_up(&fifo, &watchdog, returned)
    }
}

impl StreamedSave {
    /// Makes `save.fifo` in `dir` and starts saving `vm` into it; `vm` is destroyed if
    /// the stream stalls for `stall_limit`.
    pub(crate) fn start(
        hv: &Hypervisor,
        vm: &str,
        dir: &Path,
        stall_limit: Duration,
    ) -> std::io::Result<Self> {
        let fifo = super::fifo::make(dir, "save.fifo")?;
        let clock = StallClock::default();
        let watchdog = Watchdog::start(hv, vm, clock.clone(), stall_limit, "with the save stream");
        let task = {
            let (hv, vm, path) = (hv.clone(), vm.to_string(), fifo.clone());
            tokio::spawn(async move { hv.save(&vm, &path).await })
        };
        Ok(Self {
            fifo,
            task,
            at: Instant::now(),
            clock,
            completed: Arc::default(),
            watchdog,
        })
    }

    /// The save file's bytes, for a blocking thread (see [`SaveReader`]).
    pub(crate) fn reader(&self) -> SaveReader {
        SaveReader::new(
            self.fifo.clone(),
            self.clock.clone(),
            self.completed.clone(),
        )
    }

    /// Runs `work` (the encode reading [`Self::reader`]) to its end, releasing the
    /// reader's opens if the save fails. Then, if the reader saw libvirt mark the save
    /// complete, returns at once ([`SaveEnd::Stopping`]); else waits for the save and
    /// removes the FIFO. `saved_early` hears when the save succeeded while the work goes
    /// on. Returns the work's result and how the save ended.
    pub(crate) async fn finish<T>(
        self,
        work: impl std::future::Future<Output = T>,
        saved_early: tokio::sync::oneshot::Sender<()>,
    ) -> (T, SaveEnd) {
        let Self {
            fifo,
            mut task,
            at,
            completed,
            watchdog,
            ..
        } = self;
        let mut work = std::pin::pin!(work);
        let mut saved: Option<(Result<(), VirtError>, Duration)> = None;
        let mut saved_early = Some(saved_early);
        let output = loop {
            let over = saved.is_some();
            tokio::select! {
                output = &mut work => break output,
                joined = &mut task, if saved.is_none() => {
                    let result = joined.unwrap_or_else(|e| Err(VirtError::Task(e)));
                    if result.is_ok() {
                        if let Some(tell) = saved_early.take() {
                            let _ = tell.send(());
                        }
                    }
                    tracing::debug!(after_ms = at.elapsed().as_millis(), "save stream: the save returned");
                    saved = Some((result, at.elapsed()));
                }
                () = tokio::time::sleep(RELEASE_EVERY), if over => {
                    // The save is over (libvirt opens the FIFO no more): a reader blocked
                    // opening it (first open, or the reopen for the header) gets an empty
                    // stream. A reader done with it has it closed: nothing happens.
                    fifo::release(&fifo, OFlags::WRONLY);
                }
            }
        };
        tracing::debug!(
            after_ms = at.elapsed().as_millis(),
            "save stream: the encode is over"
        );
        let returned = match saved {
            Some(saved) => saved,
            None => match completed.get() {
                // Complete, and the save has not returned: libvirt is stopping the VM.
                Some(marked) => {
                    let tail = SaveTail {
                        fifo,
                        task,
                        at,
                        watchdog,
                    };
                    return (output, SaveEnd::Stopping(marked.duration_since(at), tail));
                }
                None => wait_for_return(task, &fifo, at).await,
            },
        };
        let (result, took) = finish_up(&fifo, &watchdog, returned);
        (output, SaveEnd::Returned(result, took))
    }
}

/// Waits for a save whose reader is done to return: libvirt may wait to open the FIFO
/// (to write into it, or to rewrite the header after a reader that stopped early), so
/// such opens are released meanwhile; a save that does not return in
/// [`SAVE_RETURN_TIMEOUT`] is abandoned.
async fn wait_for_return(
    mut task: JoinHandle<Result<(), VirtError>>,
    fifo: &Path,
    at: Instant,
) -> (Result<(), VirtError>, Duration) {
    let deadline = Instant::now() + SAVE_RETURN_TIMEOUT;
    loop {
        tokio::select! {
            joined = &mut task => {
                tracing::debug!(after_ms = at.elapsed().as_millis(), "save stream: the save returned");
                return (joined.unwrap_or_else(|e| Err(VirtError::Task(e))), at.elapsed());
            }
            () = tokio::time::sleep(RELEASE_EVERY) => {
                fifo::release(fifo, OFlags::RDONLY);
                if Instant::now() > deadline {
                    task.abort();
                    return (Err(VirtError::Timeout("the save to return")), at.elapsed());
                }
            }
        }
    }
}

/// Removes the FIFO of a save that returned; a VM the watchdog destroyed failed the save,
/// and why it was destroyed is the error.
fn finish_up(
    fifo: &Path,
    watchdog: &Watchdog,
    (result, took): (Result<(), VirtError>, Duration),
) -> (Result<(), VirtError>, Duration) {
    let _ = std::fs::remove_file(fifo);
    match watchdog.verdict() {
        Some(stalled) => (Err(stalled), took),
        None => (result, took),
    }
}

/// The save file as libvirt writes it into the FIFO, with the complete magic; its end is
/// reported only after libvirt's rewritten header was read and checked.
///
/// libvirt's second open may come while this reader still has the FIFO open (the pipe
/// still holding the end of QEMU's stream): then the rewritten header simply follows the
/// stream in the same pipe. So the last [`LIBVIRT_HEADER_BYTES`] bytes are held back
/// until the end: if they are the rewritten header, they are dropped; otherwise they are
/// the stream's own, and the header comes through a second open.
pub(crate) struct SaveReader {
    fifo: PathBuf,
    /// Times every open and read (see `stall`).
    clock: StallClock,
    /// Set when libvirt's rewritten header was read and checked.
    completed: Arc<OnceLock<Instant>>,
    file: Option<Watched<File>>,
    /// The header as libvirt first wrote it (up to [`LIBVIRT_HEADER_BYTES`]).
    header: Vec<u8>,
    /// Bytes read and not yet passed on: the newest ones are held back (see above).
    pending: Vec<u8>,
    /// Bytes of `pending` already passed on.
    passed: usize,
    done: bool,
    /// When the reader was made, for the debug log of the stream's phases.
    made: Instant,
}

/// Bytes read from the FIFO at once.
const READ_BYTES: usize = 256 << 10;

impl SaveReader {
    fn new(fifo: PathBuf, clock: StallClock, completed: Arc<OnceLock<Instant>>) -> Self {
        Self {
            fifo,
            clock,
            completed,
            file: None,
            header: Vec::with_capacity(LIBVIRT_HEADER_BYTES),
            pending: Vec::with_capacity(READ_BYTES + LIBVIRT_HEADER_BYTES),
            passed: 0,
            done: false,
            made: Instant::now(),
        }
    }

    /// The header libvirt writes once the save succeeded, if it rewrites one: the first
    /// header with the complete magic.
    fn rewritten_header(&self) -> Option<Vec<u8>> {
        if self.header.get(..LIBVIRT_PARTIAL_MAGIC.len()) != Some(&LIBVIRT_PARTIAL_MAGIC[..]) {
            return None; // already complete: nothing is rewritten
        }
        let mut rewritten = self.header.clone();
        rewritten[..LIBVIRT_MAGIC.len()].copy_from_slice(LIBVIRT_MAGIC);
        Some(rewritten)
    }

    /// At the stream's end: drops the held-back bytes if they are the rewritten header,
    /// else reads the header through a second open and checks it.
    fn end(&mut self) -> std::io::Result<()> {
        self.file = None;
        tracing::debug!(
            after_ms = self.made.elapsed().as_millis(),
            "save stream: end of the first open"
        );
        if self.header.len() < LIBVIRT_HEADER_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the save stream ended inside libvirt's header",
            ));
        }
        let Some(expected) = self.rewritten_header() else {
            return Ok(());
        };
        let held = self
            .pending
            .len()
            .saturating_sub(LIBVIRT_HEADER_BYTES)
            .max(self.passed);
        if self.pending[held..] == expected[..] {
            self.pending.truncate(held);
            let _ = self.completed.set(Instant::now());
            return Ok(());
        }
        let mut rewritten = Vec::with_capacity(LIBVIRT_HEADER_BYTES);
        // Blocks until libvirt opens the FIFO again (or `finish` releases it).
        self.clock.during(|| {
            File::open(&self.fifo)?
                .take(LIBVIRT_HEADER_BYTES as u64 + 1)
                .read_to_end(&mut rewritten)
        })?;
        tracing::debug!(
            after_ms = self.made.elapsed().as_millis(),
            "save stream: header rewritten"
        );
        if rewritten != expected {
            return Err(std::io::Error::other(
                "libvirt did not mark the save complete (its header was not rewritten)",
            ));
        }
        let _ = self.completed.set(Instant::now());
        Ok(())
    }

    /// Reads more of the stream into `pending`; false at its end.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.file.is_none() {
            // Blocks until libvirt opens the FIFO to write (or `finish` releases it).
            let file = self.clock.during(|| File::open(&self.fifo))?;
            tracing::debug!(
                after_ms = self.made.elapsed().as_millis(),
                "save stream: opened"
            );
            super::fifo::grow_pipe(&file);
            self.file = Some(Watched::new(file, self.clock.clone()));
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(false);
        };
        // Keep only what is not passed on yet.
        self.pending.drain(..self.passed);
        self.passed = 0;
        let start = self.pending.len();
        self.pending.resize(start + READ_BYTES, 0);
        let n = file.read(&mut self.pending[start..])?;
        self.pending.truncate(start + n);
        let fresh = &mut self.pending[start..];
        let seen = self.header.len();
        if seen < LIBVIRT_HEADER_BYTES {
            let take = n.min(LIBVIRT_HEADER_BYTES - seen);
            self.header.extend_from_slice(&fresh[..take]);
            // The partial magic passes as the complete one: the end is checked.
            for (i, byte) in fresh[..take].iter_mut().enumerate() {
                let at = seen + i;
                if at < LIBVIRT_PARTIAL_MAGIC.len() && *byte == LIBVIRT_PARTIAL_MAGIC[at] {
                    *byte = LIBVIRT_MAGIC[at];
                }
            }
        }
        Ok(n > 0)
    }
}

impl Read for SaveReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // Pass on what is not held back (everything, once the stream has ended).
            let hold = if self.done { 0 } else { LIBVIRT_HEADER_BYTES };
            let ready = self.pending.len().saturating_sub(hold);
            if ready > self.passed {
                let n = (ready - self.passed).min(buf.len());
                buf[..n].copy_from_slice(&self.pending[self.passed..self.passed + n]);
                self.passed += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            if !self.fill()? {
                self.end()?;
                self.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A FIFO and a [`SaveReader`] of it.
    fn fifo(dir: &Path) -> (PathBuf, SaveReader) {
        let path = super::fifo::make(dir, "save.fifo").unwrap();
        let reader = SaveReader::new(path.clone(), StallClock::default(), Arc::default());
        (path, reader)
    }

    fn header(magic: &[u8; 16]) -> Vec<u8> {
        let mut h = magic.to_vec();
        h.extend(1..=76u8); // the 76 bytes after the magic
        h
    }

    /// Plays libvirt: the stream with `first` as its header, then (reopening) `rewrite`.
    fn libvirt(
        path: PathBuf,
        first: Vec<u8>,
        rewrite: Option<Vec<u8>>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all(&first).unwrap();
            f.write_all(&vec![7u8; 300_000]).unwrap(); // more than a pipe holds
            drop(f);
            if let Some(h) = rewrite {
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all(&h).unwrap();
            }
        })
    }

    #[test]
    fn the_stream_passes_with_the_complete_magic_once_libvirt_rewrote_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = fifo(dir.path());
        let writer = libvirt(
            path,
            header(LIBVIRT_PARTIAL_MAGIC),
            Some(header(LIBVIRT_MAGIC)),
        );
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        writer.join().unwrap(); // libvirt's second open was served
        assert!(reader.completed.get().is_some(), "the save is complete");
        assert_eq!(got[..LIBVIRT_HEADER_BYTES], header(LIBVIRT_MAGIC)[..]);
        assert_eq!(got.len(), LIBVIRT_HEADER_BYTES + 300_000);
        assert!(got[LIBVIRT_HEADER_BYTES..].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_rewritten_header_that_follows_the_stream_in_the_same_pipe_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = fifo(dir.path());
        // libvirt reopens while the reader still has the FIFO open: one pipe, no end
        // between the stream and the header (a reader opened first keeps it joined).
        let mut stream = header(LIBVIRT_PARTIAL_MAGIC);
        stream.extend(vec![7u8; 300_000]);
        stream.extend(header(LIBVIRT_MAGIC));
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all(&stream).unwrap();
        });
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(reader.completed.get().is_some(), "the save is complete");
        assert_eq!(got[..LIBVIRT_HEADER_BYTES], header(LIBVIRT_MAGIC)[..]);
        assert_eq!(
            got.len(),
            LIBVIRT_HEADER_BYTES + 300_000,
            "the rewrite was dropped"
        );
    }

    #[test]
    fn a_save_libvirt_does_not_mark_complete_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = fifo(dir.path());
        // The reopen brings a header that differs from the first beyond the magic.
        let mut wrong = header(LIBVIRT_MAGIC);
        wrong[20] ^= 1;
        let writer = libvirt(path.clone(), header(LIBVIRT_PARTIAL_MAGIC), Some(wrong));
        // libvirt is done: what `finish` does then, releasing a reopen that waits for it.
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let releaser = {
            let released = released.clone();
            std::thread::spawn(move || {
                writer.join().unwrap();
                while !released.load(std::sync::atomic::Ordering::Relaxed) {
                    super::fifo::release(&path, OFlags::WRONLY);
                    std::thread::sleep(RELEASE_EVERY);
                }
            })
        };
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        released.store(true, std::sync::atomic::Ordering::Relaxed);
        releaser.join().unwrap();
        assert!(
            err.to_string().contains("did not mark the save complete"),
            "{err}"
        );
        assert!(reader.completed.get().is_none());
    }

    #[test]
    fn a_stream_that_ends_inside_the_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = fifo(dir.path());
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all(&LIBVIRT_PARTIAL_MAGIC[..]).unwrap();
        });
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        writer.join().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        assert!(reader.completed.get().is_none());
    }
}
