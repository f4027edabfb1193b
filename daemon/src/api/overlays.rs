//! `/api/v1/overlays`: `overlay`, `list-overlay`, downloads.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use cloudlet_api::{CreateOverlay, Overlay, Session};

use super::extract::{ApiJson, ApiPath};
use super::respond::respond;
use super::ApiResult;
use crate::service::Caller;
use crate::AppState;

/// Ready overlays stored here (`list-overlay`); a device token sees only its own.
#[utoipa::path(get, path = "/api/v1/overlays", tag = "overlays", operation_id = "list_overlays",
    responses((status = 200, body = Vec<Overlay>)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Overlay>>> {
    Ok(Json(s.list_overlays(&caller).await?))
}

/// Starts an overlay session (`cloudlet overlay BASE`): resumes the base on a
/// copy-on-write disk, runs the script, and with `finish` saves and encodes the overlay.
/// `Accept: application/x-ndjson` streams progress.
#[utoipa::path(post, path = "/api/v1/overlays", tag = "overlays", operation_id = "create_overlay",
    request_body = CreateOverlay, responses((status = 201, body = Session)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateOverlay>,
) -> Response {
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.create_overlay(&caller, req).await?)
    })
    .await
}

/// One overlay.
#[utoipa::path(get, path = "/api/v1/overlays/{id}", tag = "overlays", operation_id = "get_overlay",
    params(("id" = String, Path, description = "overlay id")),
    responses((status = 200, body = Overlay)), security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Overlay>> {
    Ok(Json(s.overlay(&caller, &id).await?))
}

/// Deletes an overlay and its file.
#[utoipa::path(delete, path = "/api/v1/overlays/{id}", tag = "overlays",
    operation_id = "delete_overlay",
    params(("id" = String, Path, description = "overlay id")),
    responses((status = 200, body = Overlay)), security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Overlay>> {
    Ok(Json(s.delete_overlay(&id).await?))
}

/// The overlay file; supports `Range` for resuming.
#[utoipa::path(get, path = "/api/v1/overlays/{id}/file", tag = "overlays",
    operation_id = "download_overlay",
    params(("id" = String, Path, description = "overlay id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range", content_type = "application/octet-stream", body = Vec<u8>)),
    security(("bearer" = [])))]
pub async fn download(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> ApiResult<Response> {
    let (name, path) = s.overlay_file(&caller, &id).await?;
    super::files::serve_file(&s, &path, &name, request).await
}
