//! `/api/v1/synthesis` and `/api/v1/sessions`: synthesis (the edge-device path), session
//! control, `list-session`, `clear-session`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{body_reader, ApiJson, ApiPath, ApiQuery};
use super::respond::respond;
use super::{ApiResult, ErrorBody};
use crate::service::synthesis::Synthesize;
use crate::service::ServiceError;
use crate::store::sessions::SessionRecord;
use crate::AppState;

/// Synthesizes from a stored overlay (`overlay_id`), a local or uploaded file
/// (`overlay_path`) or a URL the daemon fetches (`overlay_url`). Answers when the VM runs.
#[utoipa::path(post, path = "/api/v1/synthesis", tag = "synthesis", request_body = Synthesize,
    responses((status = 201, body = SessionRecord), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn synthesize(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Synthesize>,
) -> Response {
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.synthesize(req).await?)
    })
    .await
}

/// The base an uploaded overlay applies to.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UploadQuery {
    /// id, unique id prefix, name or source disk path of the base.
    base: String,
}

/// The edge-device path: the overlay is the body, decoded while it streams in; answers
/// when the VM runs, with its ports, console and VNC address and the step timings.
#[utoipa::path(post, path = "/api/v1/synthesis/upload", tag = "synthesis", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = SessionRecord), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn synthesize_upload(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let prepared = async {
        let slot = s.synthesis_slot()?;
        let base = s.resolve_base(&q.base).await?;
        let (reader, watch) = body_reader(&s, &headers, body)?;
        Ok::<_, super::ApiError>((base, reader, watch, slot))
    }
    .await;
    let (base, reader, watch, slot) = match prepared {
        Ok(p) => p,
        Err(e) => return axum::response::IntoResponse::into_response(e),
    };
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.synthesize_from(base, reader, None, slot)
            .await
            .map_err(|e| watch.explain(e))?)
    })
    .await
}

/// Every session (`list-session`).
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions",
    responses((status = 200, body = Vec<SessionRecord>)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<SessionRecord>>> {
    Ok(Json(s.store.sessions().await?))
}

/// How many sessions `clear-session` removed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cleared {
    /// Finished, stopped or failed sessions removed from the history.
    pub removed: u64,
}

/// Removes ended sessions from the history (`clear-session`).
#[utoipa::path(delete, path = "/api/v1/sessions", tag = "sessions",
    responses((status = 200, body = Cleared)), security(("bearer" = [])))]
pub async fn clear(State(s): State<AppState>) -> ApiResult<Json<Cleared>> {
    let removed = s.store.clear_finished_sessions().await?;
    Ok(Json(Cleared { removed }))
}

/// One session.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path)),
    responses((status = 200, body = SessionRecord), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionRecord>> {
    Ok(Json(s.session(&id).await?))
}

/// Saves a base or overlay session's VM and builds the base or overlay.
/// `Accept: application/x-ndjson` streams progress.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/finish", tag = "sessions",
    params(("id" = String, Path)),
    responses((status = 200, body = SessionRecord), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn finish(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Response {
    respond(&headers, StatusCode::OK, async move {
        Ok(s.finish_session(&id).await?)
    })
    .await
}

/// Destroys the session's VM and its work files.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/stop", tag = "sessions",
    params(("id" = String, Path)),
    responses((status = 200, body = SessionRecord), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn stop(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionRecord>> {
    Ok(Json(s.stop_session(&id).await?))
}

/// One shell line to run in the session's guest.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The line (no newlines).
    command: String,
    /// Seconds to wait for it (default 60, at most 3600).
    #[serde(default)]
    timeout_s: Option<u64>,
}

/// What the line printed and its exit status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunResponse {
    /// Output (stdout and stderr).
    output: String,
    /// Exit status.
    status: i32,
}

/// Runs one shell line in the guest over its serial console.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/run", tag = "sessions",
    params(("id" = String, Path)), request_body = RunRequest,
    responses((status = 200, body = RunResponse), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RunRequest>,
) -> ApiResult<Json<RunResponse>> {
    let timeout = Duration::from_secs(req.timeout_s.unwrap_or(60).clamp(1, 3600));
    if req.command.contains('\n') {
        return Err(ServiceError::InvalidRequest("command must be one line".into()).into());
    }
    let out = s.run_in_session(&id, &req.command, timeout).await?;
    Ok(Json(RunResponse {
        output: out.output,
        status: out.status,
    }))
}
