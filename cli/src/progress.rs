//! Progress on stderr (indicatif): a spinner naming the daemon's current step, and byte bars
//! for uploads and downloads. Off with `--quiet` or `--json`; indicatif draws nothing when
//! stderr is not a terminal, so scripts and logs see only results.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output;
use cloudlet_api::ProgressLine;

/// Whether to draw progress at all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Progress drawn when `enabled` (and stderr is a terminal).
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    fn bar(&self, len: Option<u64>) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let pb = match len {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    /// A byte bar (`total` unknown: a byte counter).
    pub fn bytes(&self, what: &str, total: Option<u64>) -> ProgressBar {
        let pb = self.bar(total);
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{spinner} {msg} {bytes} {bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        pb
    }

    /// A spinner fed by the daemon's progress events.
    pub fn steps(&self, what: &str) -> Steps {
        let pb = self.bar(None);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            pb.set_style(style);
        }
        pb.set_message(what.to_string());
        Steps {
            pb,
            what: what.to_string(),
        }
    }
}

/// The spinner of one long request.
pub struct Steps {
    pb: ProgressBar,
    what: String,
}

impl Steps {
    /// Shows one event: the step running, a finished step as a line, work done in a stage.
    pub fn event(&self, event: &ProgressLine) {
        match event {
            ProgressLine::Step { step } => {
                self.pb.set_message(format!("{}: {step}", self.what));
            }
            ProgressLine::StepDone { step, ms } => {
                self.pb
                    .println(format!("  {step:<12} {}", output::duration_ms(*ms)));
            }
            ProgressLine::Progress { stage, done, total } => {
                self.pb
                    .set_message(format!("{}: {stage}{}", self.what, amount(*done, *total)));
            }
            _ => {}
        }
    }

    /// Removes the spinner.
    pub fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

/// ` 42%` of a known total; ` 512` units done when the total is unknown (the spinner
/// still turns); nothing before any work.
fn amount(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) if t > 0 => format!(" {}%", done.saturating_mul(100) / t),
        _ if done > 0 => format!(" {done}"),
        _ => String::new(),
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        self.pb.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_with_and_without_a_total() {
        assert_eq!(amount(412, Some(1290)), " 31%");
        assert_eq!(amount(5, None), " 5");
        assert_eq!(amount(0, None), "");
        assert_eq!(amount(3, Some(0)), " 3");
    }
}
