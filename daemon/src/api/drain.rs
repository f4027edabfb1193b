//! Early answers reach clients that send their whole body first.
//!
//! The daemon often answers an upload before reading all of it: a wrong base or a corrupt
//! segment is found in the first bytes, a busy daemon refuses before reading any. If the
//! connection were closed with the rest unread, the kernel would reset it, and a client
//! still sending (reqwest's blocking client, curl, most HTTP libraries) would see a broken
//! pipe instead of the answer. So a request body dropped unfinished is read to its end and
//! discarded in the background, at most [`DRAIN_BYTES`] within [`DRAIN_TIME`]; hyper
//! keeps reading the connection for it while it writes the answer. Past either bound the
//! connection is closed as before.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Most bytes read and dropped after an early answer.
pub const DRAIN_BYTES: u64 = 4 << 30;
/// Longest time spent doing it.
pub const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Middleware: the request's body drains itself when dropped unfinished.
pub async fn drain_unread_bodies(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(DrainOnDrop {
        inner: Some(body),
        ended: false,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// A body that, dropped before its end, reads the rest in a background task.
struct DrainOnDrop {
    inner: Option<Body>,
    ended: bool,
}

impl http_body::Body for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        // An error ends the body too: nothing more will come.
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(body) = self.inner.take() else {
            return;
        };
        if http_body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let read = tokio::time::timeout(DRAIN_TIME, drain(body)).await;
            tracing::debug!(?read, "drained the unread rest of a request body");
        });
    }
}

/// Reads and drops frames until the end, an error or [`DRAIN_BYTES`]; the bytes read.
async fn drain(mut body: Body) -> u64 {
    let mut read = 0u64;
    let body = &mut body;
    while let Some(Ok(frame)) =
        std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut *body), cx)).await
    {
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > DRAIN_BYTES {
                break;
            }
        }
    }
    read
}
