//! Progress reporting from long engine steps to whoever runs them (the daemon turns it into
//! session progress; tests ignore it).

/// Receives progress of a long operation. Implementations must be cheap: `inc` is called
/// once per chunk or segment.
pub trait Progress: Sync {
    /// A new stage begins, with `total` units of work (bytes or chunks) if known.
    fn stage(&self, _name: &'static str, _total: Option<u64>) {}
    /// `units` more units of the current stage are done.
    fn inc(&self, _units: u64) {}
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
