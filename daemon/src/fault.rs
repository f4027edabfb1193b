//! Crash injection for the restart fault test (`tests/tests/fault_points.rs`):
//! `CLOUDLET_FAULT_POINT=NAME` makes the daemon SIGKILL itself the first time it reaches
//! the point NAME, exactly as `kill -9` at that moment would (no destructor, no flush, no
//! cleanup). Points are named after session steps and engine stages:
//! - `after:<step>`: a session step is done (`copy_disk`, `boot`, `save`, `hash`, `prepare`,
//!   `resume`, `encode`, `decode`, `restore`, `ports`, ...), before the session's row
//!   records what follows;
//! - `during:<stage>`: an engine stage has done its first batch of work (`memory` and
//!   `disk` when a base is hashed or an overlay encoded, `apply` when one is decoded).
//!
//! Unset (always, outside tests) a point costs one read of a cached `Option`.

use std::sync::OnceLock;

/// The environment variable that arms a point.
pub const VAR: &str = "CLOUDLET_FAULT_POINT";

/// The armed point, if any.
pub fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(VAR).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Dies here if `kind:name` is the armed point.
pub fn point(kind: &str, name: &str) {
    let Some(armed) = armed() else { return };
    if armed.split_once(':') == Some((kind, name)) {
        tracing::error!(point = armed, "{VAR}: the daemon kills itself here");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort(); // not reached: SIGKILL cannot be caught
    }
}
