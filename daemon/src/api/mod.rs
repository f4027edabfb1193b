//! The HTTP API (axum only: handlers extract, call one service method, map the result).
//! Routes under `/api/v1`; `docs/api.md` describes them.

mod error;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

pub use error::ApiError;

use crate::service::base::{AddBase, CreateBase};
use crate::service::overlay::CreateOverlay;
use crate::service::synthesis::Synthesize;
use crate::service::ServiceError;
use crate::store::bases::BaseRecord;
use crate::store::overlays::OverlayRecord;
use crate::store::sessions::SessionRecord;
use crate::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// Body of `GET /health`.
#[derive(Debug, Serialize)]
pub struct Health {
    /// Always "ok" when the daemon answers and its catalogue responds.
    pub status: &'static str,
    /// Daemon version.
    pub version: &'static str,
    /// Base VMs in the catalogue.
    pub bases: usize,
}

/// Every route.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/bases", get(list_bases).post(create_base))
        .route("/bases/add", post(add_base))
        .route("/bases/import", post(import_base))
        .route("/bases/{selector}", get(get_base).delete(delete_base))
        .route("/bases/{selector}/export", get(export_base))
        .route("/overlays", get(list_overlays).post(create_overlay))
        .route("/overlays/{id}", get(get_overlay).delete(delete_overlay))
        .route("/synthesis", post(synthesize))
        .route("/synthesis/upload", post(synthesize_upload))
        .route("/sessions", get(list_sessions).delete(clear_sessions))
        .route("/sessions/{id}", get(get_session))
        .route("/sessions/{id}/finish", post(finish_session))
        .route("/sessions/{id}/stop", post(stop_session))
        .route("/sessions/{id}/run", post(run_in_session));
    Router::new()
        .route("/health", get(health))
        .nest("/api/v1", api)
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Result<Json<Health>, (StatusCode, String)> {
    match state.store.bases().await {
        Ok(bases) => Ok(Json(Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            bases: bases.len(),
        })),
        Err(e) => {
            tracing::error!(error = ?e, "health check: catalogue unavailable");
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "catalogue unavailable".into(),
            ))
        }
    }
}

async fn list_bases(State(s): State<AppState>) -> ApiResult<Json<Vec<BaseRecord>>> {
    Ok(Json(
        s.store
            .bases()
            .await?
            .into_iter()
            .filter(|b| b.state == "ready")
            .collect(),
    ))
}

async fn create_base(
    State(s): State<AppState>,
    Json(req): Json<CreateBase>,
) -> ApiResult<(StatusCode, Json<SessionRecord>)> {
    Ok((StatusCode::CREATED, Json(s.create_base(req).await?)))
}

async fn add_base(
    State(s): State<AppState>,
    Json(req): Json<AddBase>,
) -> ApiResult<(StatusCode, Json<BaseRecord>)> {
    Ok((StatusCode::CREATED, Json(s.add_base(req).await?)))
}

async fn get_base(
    State(s): State<AppState>,
    Path(selector): Path<String>,
) -> ApiResult<Json<BaseRecord>> {
    Ok(Json(s.resolve_base(&selector).await?))
}

async fn delete_base(
    State(s): State<AppState>,
    Path(selector): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<BaseRecord>> {
    let force = q.get("force").is_some_and(|v| v == "true" || v == "1");
    Ok(Json(s.delete_base(&selector, force).await?))
}

/// Streams the base archive as it is written (no temporary file).
async fn export_base(
    State(s): State<AppState>,
    Path(selector): Path<String>,
) -> ApiResult<axum::response::Response> {
    s.resolve_base(&selector).await?; // answer 404 before streaming starts
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let sink = tokio_util::io::SyncIoBridge::new(writer);
    tokio::spawn(async move {
        if let Err(e) = s.export_base(&selector, sink).await {
            tracing::error!(error = %e, "export failed mid-stream");
        }
    });
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok(axum::response::Response::builder()
        .header("content-type", "application/octet-stream")
        .body(body)
        .map_err(|e| ServiceError::internal("response", e))?)
}

#[derive(Debug, Deserialize)]
struct ImportQuery {
    name: Option<String>,
}

async fn import_base(
    State(s): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<BaseRecord>)> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    Ok((
        StatusCode::CREATED,
        Json(s.import_base(reader, q.name).await?),
    ))
}

async fn list_overlays(State(s): State<AppState>) -> ApiResult<Json<Vec<OverlayRecord>>> {
    Ok(Json(s.store.overlays(None).await?))
}

async fn create_overlay(
    State(s): State<AppState>,
    Json(req): Json<CreateOverlay>,
) -> ApiResult<(StatusCode, Json<SessionRecord>)> {
    Ok((StatusCode::CREATED, Json(s.create_overlay(req).await?)))
}

async fn get_overlay(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<OverlayRecord>> {
    crate::service::validate_id(&id)?;
    Ok(Json(s.store.overlay(&id).await?))
}

async fn delete_overlay(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<OverlayRecord>> {
    Ok(Json(s.delete_overlay(&id).await?))
}

async fn synthesize(
    State(s): State<AppState>,
    Json(req): Json<Synthesize>,
) -> ApiResult<(StatusCode, Json<SessionRecord>)> {
    Ok((StatusCode::CREATED, Json(s.synthesize(req).await?)))
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    base: String,
}

/// The edge-device path: the overlay is the request body, decoded as it streams in.
async fn synthesize_upload(
    State(s): State<AppState>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<SessionRecord>)> {
    let base = s.resolve_base(&q.base).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    Ok((
        StatusCode::CREATED,
        Json(s.synthesize_from(base, reader, None).await?),
    ))
}

async fn list_sessions(State(s): State<AppState>) -> ApiResult<Json<Vec<SessionRecord>>> {
    Ok(Json(s.store.sessions().await?))
}

async fn clear_sessions(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let removed = s.store.clear_finished_sessions().await?;
    Ok(Json(serde_json::json!({ "removed": removed })))
}

async fn get_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionRecord>> {
    Ok(Json(s.session(&id).await?))
}

async fn finish_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionRecord>> {
    Ok(Json(s.finish_session(&id).await?))
}

async fn stop_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionRecord>> {
    Ok(Json(s.stop_session(&id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    command: String,
    #[serde(default)]
    timeout_s: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RunResponse {
    output: String,
    status: i32,
}

async fn run_in_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<RunRequest>,
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
