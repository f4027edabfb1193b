//! Progress of a running use case, for clients that asked to watch it (the API's NDJSON
//! answers). A handler runs the use case inside [`watch`]; the use case reports steps
//! through [`StepTimer`](super::StepTimer) and engine stages through [`engine_reporter`],
//! and reports nothing when nobody watches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cloudlet_api::ProgressEvent as Event;
use tokio::sync::mpsc::UnboundedSender;

tokio::task_local! {
    static SINK: UnboundedSender<Event>;
}

/// Runs `f` with its progress events sent to `sink`.
pub async fn watch<F: std::future::Future>(sink: UnboundedSender<Event>, f: F) -> F::Output {
    SINK.scope(sink, f).await
}

/// Reports `event` to the watcher of the current task, if any.
pub fn emit(event: Event) {
    let _ = SINK.try_with(|s| s.send(event));
}

/// A reporter for engine work on the blocking pool (task-locals do not cross
/// `spawn_blocking`): take it in the task, move it into the closure.
pub fn engine_reporter() -> EngineReporter {
    EngineReporter {
        sink: SINK.try_with(Clone::clone).ok(),
        state: Mutex::new(StageState::default()),
        done: AtomicU64::new(0),
    }
}

/// Engine [`Progress`](cloudlet_engine::progress::Progress) → events, at most ten a second.
#[derive(Debug)]
pub struct EngineReporter {
    sink: Option<UnboundedSender<Event>>,
    state: Mutex<StageState>,
    done: AtomicU64,
}

#[derive(Debug, Default)]
struct StageState {
    stage: &'static str,
    total: Option<u64>,
    last: Option<Instant>,
}

const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl cloudlet_engine::progress::Progress for EngineReporter {
    fn stage(&self, name: &'static str, total: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            *s = StageState {
                stage: name,
                total,
                last: None,
            };
        }
        self.done.store(0, Ordering::Relaxed);
    }

    fn inc(&self, units: u64) {
        if crate::fault::armed().is_some() {
            if let Ok(s) = self.state.lock() {
                crate::fault::point("during", s.stage);
            }
        }
        let Some(sink) = &self.sink else { return };
        let done = self.done.fetch_add(units, Ordering::Relaxed) + units;
        let Ok(mut s) = self.state.lock() else { return };
        let now = Instant::now();
        let finished = s.total.is_some_and(|t| done >= t);
        if !finished && s.last.is_some_and(|l| now - l < MIN_INTERVAL) {
            return;
        }
        s.last = Some(now);
        let _ = sink.send(Event::Progress {
            stage: s.stage.to_string(),
            done,
            total: s.total,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudlet_engine::progress::Progress;

    #[tokio::test]
    async fn events_reach_the_watcher_only() {
        emit(Event::Step {
            step: "lost".into(),
        }); // nobody watches: ignored
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        watch(tx, async {
            emit(Event::Step {
                step: "decode".into(),
            });
            let reporter = engine_reporter();
            tokio::task::spawn_blocking(move || {
                reporter.stage("rebuild", Some(10));
                reporter.inc(4); // first of the stage: sent
                reporter.inc(3); // sent only if 100 ms passed since the first
                reporter.inc(3); // stage complete: always sent
            })
            .await
            .unwrap();
        })
        .await;
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        let progress = |done| Event::Progress {
            stage: "rebuild".into(),
            done,
            total: Some(10),
        };
        let step = Event::Step {
            step: "decode".into(),
        };
        assert_eq!(got[..2], [step, progress(4)]);
        assert_eq!(got.last(), Some(&progress(10)));
        // The middle one is throttled unless this thread was descheduled for 100 ms.
        assert!(
            got.len() == 3 || (got.len() == 4 && got[2] == progress(7)),
            "{got:?}"
        );
    }
}
