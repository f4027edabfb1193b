//! The FIFOs a VM's memory moves through between libvirt and the daemon (see
//! `stream_restore` and `stream_save`).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Pipe buffer of a FIFO that carries a VM's memory: 16 times the default 64 KiB, so
/// that writer and reader switch less often (Linux's default limit for an unprivileged
/// process, `/proc/sys/fs/pipe-max-size`, is 1 MiB).
const PIPE_BYTES: usize = 1 << 20;

/// Makes the FIFO `name` in `dir` (0600: only libvirtd, root, opens it), replacing a
/// leftover of an earlier attempt.
pub(crate) fn make(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let fifo = dir.join(name);
    let _ = std::fs::remove_file(&fifo);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )?;
    Ok(fifo)
}

/// Grows the pipe behind `fd` to [`PIPE_BYTES`]; a smaller pipe only costs speed.
pub(crate) fn grow_pipe(fd: impl AsFd) {
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES) {
        tracing::debug!(error = %e, "cannot grow the FIFO's pipe buffer");
    }
}

/// Opens `fifo` non-blocking with `side` and closes it at once: a peer blocked opening
/// the other side returns, and finds nothing (no data, or nobody reading). Nothing
/// happens when no peer has the other side open.
pub(crate) fn release(fifo: &Path, side: OFlags) {
    if let Ok(fd) = rustix::fs::open(
        fifo,
        side | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        drop(fd);
    }
}
