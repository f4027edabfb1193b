//! Request ids and the access log. Every request gets an id (the client's `X-Request-Id`
//! when it is a sane token, else a fresh one), answered in `X-Request-Id`, carried by the
//! log lines written while it is served (a tracing span) and by its error bodies, so an
//! operator can go from a client's error to the daemon's log line. One access line per
//! request, target `cloudletd::access`: method, path, status, time to the answer's head.
//! No header is logged, and no query string: tokens and the like never reach the log.

use std::future::Future;
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header carrying the id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served by this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// `work` carrying the current request's id, for a task spawned to serve it.
pub fn carried<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let id = current().unwrap_or_default();
    CURRENT.scope(id, work)
}

/// A client's own id when it is 1 to 64 of `[A-Za-z0-9._-]` (safe in logs and headers).
fn client_id(request: &Request) -> Option<String> {
    let v = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| v.to_string())
}

/// Middleware (outermost): the id, the span, the access line.
pub async fn log(request: Request, next: Next) -> Response {
    let id = client_id(&request).unwrap_or_else(crate::store::new_id);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let span = tracing::info_span!("request", id = %id, %method, %path);
    let mut response = CURRENT
        .scope(id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = response.status().as_u16();
    span.in_scope(|| tracing::info!(target: "cloudletd::access", status, ms, "answered"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn with_id(v: &str) -> Request {
        Request::builder()
            .header(REQUEST_ID, v)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn only_sane_client_ids_are_kept() {
        assert_eq!(
            client_id(&with_id("abc-123_x.y")).as_deref(),
            Some("abc-123_x.y")
        );
        for bad in ["", "a b", "a\"b", "é", &"x".repeat(65)] {
            assert_eq!(client_id(&with_id(bad)), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn spawned_work_carries_the_id() {
        let seen = CURRENT
            .scope("req-1".into(), async {
                tokio::spawn(carried(async { current() })).await.unwrap()
            })
            .await;
        assert_eq!(seen.as_deref(), Some("req-1"));
        assert_eq!(current(), None);
    }
}
