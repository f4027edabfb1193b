//! Files in and out: uploads for later requests, and downloads (overlays, base archives)
//! with Content-Length and resumable Range requests.

use std::path::Path;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tower_http::services::ServeFile;

use super::extract::body_reader;
use super::ApiResult;
use cloudlet_api::Upload;

use crate::service::ServiceError;
use crate::AppState;

/// Stores the body as a file; requests name it `upload:<id>` in place of a local path.
#[utoipa::path(post, path = "/api/v1/uploads", tag = "files", operation_id = "upload",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Upload)), security(("bearer" = [])))]
pub async fn upload(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Upload>)> {
    let (reader, watch) = body_reader(&s, &headers, body)?;
    let upload = s.store_upload(reader).await.map_err(|e| watch.explain(e))?;
    Ok((StatusCode::CREATED, Json(upload)))
}

/// Serves `path` (GET/HEAD, Range, If-Range, Last-Modified) as `name`.
pub async fn serve_file(
    state: &AppState,
    path: &Path,
    name: &str,
    mut request: Request,
) -> ApiResult<Response> {
    normalize_range(request.headers_mut());
    // ServeFile honours Range but not If-Range: a range is only valid against the same
    // version of the file, so drop it (→ 200, whole file) when the validator differs.
    if let Some(validator) = request.headers().get(header::IF_RANGE) {
        let current = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(httpdate::fmt_http_date)
            .ok();
        if validator.to_str().ok() != current.as_deref() {
            request.headers_mut().remove(header::RANGE);
        }
    }
    let response = ServeFile::new(path) // unknown extensions: application/octet-stream
        .try_call(request)
        .await
        .map_err(|e| ServiceError::failed("reading the file", e))?;
    if response.status() == StatusCode::NOT_FOUND {
        return Err(ServiceError::NotFound(name.to_string()).into());
    }
    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        let size = tokio::fs::metadata(path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        return Err(super::ApiError::RangeNotSatisfiable { size });
    }
    if let Some(len) = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        state.metrics.sent(len);
    }
    let mut response = response.map(Body::new).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// RFC 9110 §14.2: a `Range` in a unit this server does not know, or one that does not
/// parse, is ignored (the whole file, 200); the unit's name is case-insensitive.
fn normalize_range(headers: &mut HeaderMap) {
    let Some(value) = headers.get(header::RANGE) else {
        return;
    };
    let normalized = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once('='))
        .filter(|(unit, set)| unit.trim().eq_ignore_ascii_case("bytes") && byte_ranges(set))
        .and_then(|(_, set)| HeaderValue::from_str(&format!("bytes={}", set.trim())).ok());
    match normalized {
        Some(v) => {
            headers.insert(header::RANGE, v);
        }
        None => {
            headers.remove(header::RANGE);
        }
    }
}

/// Whether `set` is a list of byte ranges: `first-[last]` or `-suffix`, digits only.
fn byte_ranges(set: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    set.split(',')
        .all(|spec| match spec.trim().split_once('-') {
            Some(("", suffix)) => digits(suffix),
            Some((first, last)) => digits(first) && (last.is_empty() || digits(last)),
            None => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        normalize_range(&mut h);
        h.get(header::RANGE)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn unknown_or_malformed_ranges_are_ignored_and_the_unit_is_case_insensitive() {
        assert_eq!(range("bytes=4096-").as_deref(), Some("bytes=4096-"));
        assert_eq!(range("BYTES=0-9, -5").as_deref(), Some("bytes=0-9, -5"));
        for ignored in [
            "bytes=abc",
            "items=0-1",
            "bytes=",
            "bytes",
            "bytes=1-x",
            "bytes=-",
        ] {
            assert_eq!(range(ignored), None, "{ignored}");
        }
    }
}
