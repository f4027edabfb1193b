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

/// Where a body comes from: it decides whose fault a broken stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOrigin {
    /// The request's own body: a broken one is the client's error (400).
    Request,
    /// An overlay URL the daemon fetches: a broken one is the server's (502).
    Url,
}

/// Observes why a body stream stopped.
#[derive(Debug, Clone)]
pub struct IntakeWatch {
    exceeded: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    /// The stream itself failed (cut short, malformed chunk, connection reset).
    broken: Arc<AtomicBool>,
    /// The request's deadline passed while the body was still arriving.
    expired: Arc<AtomicBool>,
    /// When the request's deadline (`request_timeout_s`) passes.
    deadline: tokio::time::Instant,
    origin: BodyOrigin,
    limit: u64,
    idle: Duration,
}

impl IntakeWatch {
    /// The error to report for `e`, which happened while the body was being read.
    pub fn explain(&self, e: ServiceError) -> ServiceError {
        if self.expired.load(Ordering::Relaxed) {
            ServiceError::DeadlinePassed
        } else if self.exceeded.load(Ordering::Relaxed) {
            self.too_large()
        } else if self.stalled.load(Ordering::Relaxed) {
            ServiceError::Timeout {
                idle_s: self.idle.as_secs(),
            }
        } else if self.broken.load(Ordering::Relaxed) {
            match self.origin {
                BodyOrigin::Request => ServiceError::InvalidRequest(
                    "the request body was cut short or is malformed".into(),
                ),
                BodyOrigin::Url => {
                    ServiceError::FetchFailed("the overlay's download broke off".into())
                }
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
    /// Wraps `stream` (from `origin`) with the configured size and stall limits.
    pub fn intake<S, E>(&self, stream: S, origin: BodyOrigin) -> (IntakeReader, IntakeWatch)
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let watch = IntakeWatch {
            exceeded: Arc::default(),
            stalled: Arc::default(),
            broken: Arc::default(),
            expired: Arc::default(),
            // The same deadline as the API's: past it the client was told 504, so the work
            // that reads this body (and the synthesis slot it holds) must end too.
            deadline: tokio::time::Instant::now()
                + Duration::from_secs(self.config.request_timeout_s),
            origin,
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
                    let until = w.deadline.min(tokio::time::Instant::now() + w.idle);
                    let item = match tokio::time::timeout_at(until, stream.next()).await {
                        Err(_) => {
                            let flag = if until >= w.deadline {
                                &w.expired
                            } else {
                                &w.stalled
                            };
                            flag.store(true, Ordering::Relaxed);
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "request body stalled or past the request deadline",
                            ))
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => {
                            w.broken.store(true, Ordering::Relaxed);
                            Err(io::Error::other(e.to_string()))
                        }
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
