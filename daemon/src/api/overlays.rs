//! `/api/v1/overlays`: `overlay`, `list-overlay`, downloads.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;

use super::extract::{ApiJson, ApiPath};
use super::respond::respond;
use super::{ApiResult, ErrorBody};
use crate::service::overlay::CreateOverlay;
use crate::service::validate_id;
use crate::store::overlays::OverlayRecord;
use crate::store::sessions::SessionRecord;
use crate::AppState;

/// Overlays stored here (`list-overlay`).
#[utoipa::path(get, path = "/api/v1/overlays", tag = "overlays",
    responses((status = 200, body = Vec<OverlayRecord>)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<OverlayRecord>>> {
    Ok(Json(s.store.overlays(None).await?))
}

/// Starts an overlay session (`cloudlet overlay BASE`): resumes the base on a
/// copy-on-write disk, runs the script, and with `finish` saves and encodes the overlay.
/// `Accept: application/x-ndjson` streams progress.
#[utoipa::path(post, path = "/api/v1/overlays", tag = "overlays", request_body = CreateOverlay,
    responses((status = 201, body = SessionRecord), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateOverlay>,
) -> Response {
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.create_overlay(req).await?)
    })
    .await
}

/// One overlay.
#[utoipa::path(get, path = "/api/v1/overlays/{id}", tag = "overlays",
    params(("id" = String, Path)),
    responses((status = 200, body = OverlayRecord), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<OverlayRecord>> {
    validate_id(&id)?;
    Ok(Json(s.store.overlay(&id).await?))
}

/// Deletes an overlay and its file.
#[utoipa::path(delete, path = "/api/v1/overlays/{id}", tag = "overlays",
    params(("id" = String, Path)),
    responses((status = 200, body = OverlayRecord), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<OverlayRecord>> {
    Ok(Json(s.delete_overlay(&id).await?))
}

/// The overlay file; supports `Range` for resuming.
#[utoipa::path(get, path = "/api/v1/overlays/{id}/file", tag = "overlays",
    params(("id" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn download(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> ApiResult<Response> {
    validate_id(&id)?;
    let overlay = s.store.overlay(&id).await?;
    if overlay.state != "ready" {
        return Err(crate::service::ServiceError::NotFound(format!("overlay {id}")).into());
    }
    let path = std::path::PathBuf::from(&overlay.file_path);
    super::files::serve_file(&s, &path, &format!("{id}.overlay"), request).await
}
