//! Streamed request bodies (uploads, fetched overlays) as a blocking reader for the
//! engine, with the daemon's limits: a maximum size and a maximum stall. When the reader
//! fails because of a limit, [`IntakeWatch::explain`] turns the resulting error into the
//! one the client should see.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::ServiceError;
use crate::AppState;

/// Observes why a body stream stopped.
#[derive(Debug, Clone)]
pub struct IntakeWatch {
    exceeded: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    limit: u64,
    idle: Duration,
}

impl IntakeWatch {
    /// The error to report for `e`, which happened while the body was being read.
    pub fn explain(&self, e: ServiceError) -> ServiceError {
        if self.exceeded.load(Ordering::Relaxed) {
            self.too_large()
        } else if self.stalled.load(Ordering::Relaxed) {
            ServiceError::Timeout {
                idle_s: self.idle.as_secs(),
            }
        } else {
            e
        }
    }

    /// The error for a body declared (or found) larger than the limit.
    pub fn too_large(&self) -> ServiceError {
        ServiceError::TooLarge { limit: self.limit }
    }
}

/// A blocking reader over a body stream (use it on the blocking pool only).
pub type IntakeReader = SyncIoBridge<Box<dyn tokio::io::AsyncRead + Send + Unpin>>;

impl AppState {
    /// Wraps `stream` with the configured size and stall limits.
    pub fn intake<S, E>(&self, stream: S) -> (IntakeReader, IntakeWatch)
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let watch = IntakeWatch {
            exceeded: Arc::default(),
            stalled: Arc::default(),
            limit: self.config.max_upload_bytes,
            idle: Duration::from_secs(self.config.body_idle_timeout_s),
        };
        let metrics = self.metrics.clone();
        let w = watch.clone();
        let limited = futures_util::stream::unfold(
            (Box::pin(stream), 0u64, false),
            move |(mut stream, mut total, done)| {
                let (w, metrics) = (w.clone(), metrics.clone());
                async move {
                    if done {
                        return None;
                    }
                    let item = match tokio::time::timeout(w.idle, stream.next()).await {
                        Err(_) => {
                            w.stalled.store(true, Ordering::Relaxed);
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "request body stalled",
                            ))
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => Err(io::Error::other(e.to_string())),
                        Ok(Some(Ok(chunk))) => {
                            total += chunk.len() as u64;
                            if total > w.limit {
                                w.exceeded.store(true, Ordering::Relaxed);
                                Err(io::Error::other("request body over the size limit"))
                            } else {
                                metrics.received(chunk.len() as u64);
                                Ok(chunk)
                            }
                        }
                    };
                    let failed = item.is_err();
                    Some((item, (stream, total, failed)))
                }
            },
        );
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> =
            Box::new(StreamReader::new(Box::pin(limited)));
        (SyncIoBridge::new(reader), watch)
    }
}
