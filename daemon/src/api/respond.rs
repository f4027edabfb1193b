//! Answers of long operations: plain JSON when the work is done, or, for a client that
//! sends `Accept: application/x-ndjson`, a stream of progress lines ending with the result.
//! Either way the work runs in its own task, so a client that goes away or a request
//! deadline never cuts a VM operation in half.

use std::future::Future;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudlet_api::{ProgressLine, NDJSON};
use serde::Serialize;

use super::ApiError;
use crate::service::progress;
use crate::service::ServiceError;

fn wants_progress(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON))
}

/// Runs `work` in its own task and answers with `status` + its JSON, or as a progress
/// stream when the client asked for one.
pub async fn respond<T, F>(headers: &HeaderMap, status: StatusCode, work: F) -> Response
where
    T: Serialize + Send + 'static,
    F: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    if !wants_progress(headers) {
        return match tokio::spawn(super::access::carried(work)).await {
            Ok(Ok(body)) => (status, Json(body)).into_response(),
            Ok(Err(e)) => e.into_response(),
            Err(e) => {
                ApiError::from(ServiceError::failed("running the request", e)).into_response()
            }
        };
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<ProgressLine>();
    let work = tokio::spawn(super::access::carried(progress::watch(tx, work)));
    tokio::spawn(async move {
        let result = work
            .await
            .unwrap_or_else(|e| Err(ServiceError::failed("running the request", e).into()));
        let end = match result.and_then(|body| {
            serde_json::to_value(body)
                .map_err(|e| ServiceError::failed("serializing the answer", e).into())
        }) {
            Ok(body) => ProgressLine::Result {
                status: status.as_u16(),
                body,
            },
            Err(e) => {
                let (status, body) = e.parts();
                ProgressLine::Error {
                    status: status.as_u16(),
                    error: body.error,
                }
            }
        };
        let _ = done_tx.send(end);
    });
    // Events until the work's sender is dropped (the work ended), then the end line.
    let lines =
        futures_util::stream::unfold((Some(rx), Some(done_rx)), |(mut rx, mut done)| async move {
            if let Some(r) = rx.as_mut() {
                if let Some(event) = r.recv().await {
                    return Some((line(&ProgressLine::from(event)), (rx, done)));
                }
            }
            let end = done.take()?.await.ok()?;
            Some((line(&end), (None, None)))
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, NDJSON)
        .body(Body::from_stream(lines))
        .unwrap_or_else(|e| {
            ApiError::from(ServiceError::failed("building the response", e)).into_response()
        })
}

fn line<T: Serialize>(value: &T) -> Result<String, std::convert::Infallible> {
    let mut text = serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "progress line not serializable");
        // Built by serde_json too, so the line stays valid JSON whatever the message.
        serde_json::json!({
            "type": "error",
            "status": 500,
            "error": { "code": "internal", "message": "internal error; see the daemon log" },
        })
        .to_string()
    });
    text.push('\n');
    Ok(text)
}
