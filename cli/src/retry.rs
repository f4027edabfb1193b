//! Retrying a synthesis the way a flaky link and a busy cloudlet need: a `busy` answer is
//! waited out (after its `Retry-After`, with a line saying so), and a connection cut in
//! the middle is retried with the same `Idempotency-Key`, so the daemon answers the retry
//! with the session the first attempt started instead of starting a second VM.

use std::time::{Duration, Instant};

use crate::client::{ApiError, Client, TransportError};

/// Retries after a broken connection (the key makes each one safe).
const MAX_CUT_RETRIES: u32 = 3;

/// Retries while our own earlier attempt (same key) is being admitted.
const MAX_TWIN_RETRIES: u32 = 30;

/// How a command waits for a free synthesis slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotWait {
    /// Longest to wait in all; zero fails at the first `busy` (`--no-wait`).
    pub limit: Duration,
    /// Print the waiting lines (not with `--quiet`).
    pub verbose: bool,
}

/// What one attempt sends: the whole request, rebuilt for each try with the same key.
pub trait Attempt {
    /// Sends the request with `key` as its `Idempotency-Key`.
    fn send(&mut self, key: &str) -> anyhow::Result<serde_json::Value>;
    /// Whether the request carries an overlay upload (worth not resending while busy).
    fn uploads(&self) -> bool;
}

/// Runs `attempt` until it succeeds, fails for good, or the wait runs out.
pub fn synthesis(
    client: &Client,
    wait: SlotWait,
    attempt: &mut dyn Attempt,
) -> anyhow::Result<serde_json::Value> {
    let key = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let mut cuts = 0;
    let mut twins = 0;
    let mut connected_once = false;
    loop {
        let err = match attempt.send(&key) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Some(api) = err.downcast_ref::<ApiError>() {
            connected_once = true;
            let pause = Duration::from_secs(api.retry_after_s.unwrap_or(2).clamp(1, 60));
            let out_of_time = started.elapsed() + pause > wait.limit;
            match api.code.as_str() {
                "busy" if !out_of_time => {
                    note(
                        wait,
                        &format!(
                            "waiting for a free synthesis slot ({}); next try in {} s",
                            api.message,
                            pause.as_secs()
                        ),
                    );
                    std::thread::sleep(pause);
                    if attempt.uploads() {
                        wait_for_free_slot(client, started, wait, pause);
                    }
                    continue;
                }
                // Our own earlier attempt is being admitted: not a busy cloudlet, so
                // `--no-wait` does not apply; its session comes back on a later try.
                "idempotency-in-progress" if twins < MAX_TWIN_RETRIES => {
                    twins += 1;
                    std::thread::sleep(pause);
                    continue;
                }
                "busy" if wait.limit.is_zero() => {
                    return Err(err.context("the cloudlet is busy (--no-wait given)"))
                }
                "busy" => {
                    return Err(err.context(format!(
                        "no synthesis slot came free within {} s (--max-wait)",
                        wait.limit.as_secs()
                    )))
                }
                _ => return Err(err),
            }
        }
        let Some(t) = err.downcast_ref::<TransportError>() else {
            return Err(err);
        };
        // A daemon that was never reached is reported at once; one that was reached and
        // then lost may be restarting or behind a flaky link.
        connected_once |= !t.unreachable;
        if !connected_once || cuts >= MAX_CUT_RETRIES {
            return Err(err);
        }
        cuts += 1;
        let pause = Duration::from_secs(1 << (cuts - 1));
        note(
            wait,
            &format!(
                "{t}; retrying in {} s with the same Idempotency-Key ({cuts}/{MAX_CUT_RETRIES})",
                pause.as_secs()
            ),
        );
        std::thread::sleep(pause);
    }
}

/// Before an overlay is sent again, waits until `/health` shows a free slot (or the wait
/// runs out), so a busy cloudlet does not make the device upload it over and over.
fn wait_for_free_slot(client: &Client, started: Instant, wait: SlotWait, pause: Duration) {
    while started.elapsed() + pause <= wait.limit {
        match client.get("/health") {
            Ok(h) if h["synthesis_slots_free"].as_u64().unwrap_or(1) > 0 => return,
            Ok(_) => std::thread::sleep(pause),
            // Let the next attempt report what is wrong.
            Err(_) => return,
        }
    }
}

fn note(wait: SlotWait, line: &str) {
    if wait.verbose {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{line}");
        }
    }
}
