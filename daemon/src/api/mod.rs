//! The HTTP API (axum only: handlers extract, call one service method, map the result).
//! Routes under `/api/v1`, one file per resource; `docs/api.md` describes them and
//! `docs/openapi.json` is generated from the annotations here (`cloudletd openapi`).

pub mod auth;
mod bases;
mod error;
mod extract;
mod files;
mod overlays;
mod respond;
mod sessions;

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::OpenApi;

pub use error::{ApiError, ErrorBody};
pub use respond::NDJSON;

use crate::service::ServiceError;
use crate::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// Body of `GET /health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always "ok" when the daemon answers and its catalogue responds.
    pub status: &'static str,
    /// Daemon version.
    pub version: &'static str,
    /// Base VMs in the catalogue.
    pub bases: usize,
}

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "cloudlet", description = "VM synthesis for edge devices: base VMs, VM overlays, synthesis sessions."),
    paths(
        health, metrics, openapi,
        bases::list, bases::create, bases::add, bases::get, bases::delete, bases::export,
        bases::import,
        overlays::list, overlays::create, overlays::get, overlays::delete, overlays::download,
        sessions::synthesize, sessions::synthesize_upload, sessions::list, sessions::clear,
        sessions::get, sessions::finish, sessions::stop, sessions::run,
        files::upload,
    ),
    components(schemas(crate::service::progress::Event)),
    modifiers(&BearerAuth),
    tags(
        (name = "bases", description = "Base VMs"),
        (name = "overlays", description = "VM overlays"),
        (name = "synthesis", description = "Rebuilding and resuming a customized VM"),
        (name = "sessions", description = "Running and past VM sessions"),
        (name = "files", description = "Uploads"),
        (name = "daemon", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

/// Every route, with authentication, the request deadline and response metrics.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/bases", get(bases::list).post(bases::create))
        .route("/bases/add", post(bases::add))
        .route("/bases/import", post(bases::import))
        .route("/bases/{selector}", get(bases::get).delete(bases::delete))
        .route("/bases/{selector}/export", get(bases::export))
        .route("/overlays", get(overlays::list).post(overlays::create))
        .route(
            "/overlays/{id}",
            get(overlays::get).delete(overlays::delete),
        )
        .route("/overlays/{id}/file", get(overlays::download))
        .route("/uploads", post(files::upload))
        .route("/synthesis", post(sessions::synthesize))
        .route("/synthesis/upload", post(sessions::synthesize_upload))
        .route("/sessions", get(sessions::list).delete(sessions::clear))
        .route("/sessions/{id}", get(sessions::get))
        .route("/sessions/{id}/finish", post(sessions::finish))
        .route("/sessions/{id}/stop", post(sessions::stop))
        .route("/sessions/{id}/run", post(sessions::run))
        .route("/openapi.json", get(openapi))
        .method_not_allowed_fallback(method_not_allowed);
    let protected = Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .with_state(state)
}

/// Answers `timeout` when a request is not answered within `request_timeout_s` (the work
/// itself runs on in its own task: see `respond`), and counts answers by status.
async fn deadline(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let limit = Duration::from_secs(s.config.request_timeout_s);
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(r) => r,
        // 504, not 408: a client must not simply resend (the work may still complete).
        Err(_) => ApiError::from(ServiceError::Deadline(format!(
            "no answer within {} s (setting request_timeout_s); the work may still complete: \
             check the sessions",
            limit.as_secs()
        )))
        .into_response(),
    };
    s.metrics.response(response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ServiceError::NotFound("route".into()).into()
}

async fn method_not_allowed() -> ApiError {
    ServiceError::MethodNotAllowed.into()
}

/// Liveness and catalogue check; needs no token.
#[utoipa::path(get, path = "/health", tag = "daemon",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn health(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    match state.store.bases().await {
        Ok(bases) => Ok(Json(Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            bases: bases.len(),
        })),
        Err(e) => {
            tracing::error!(error = ?e, "health check: catalogue unavailable");
            Err(ServiceError::Busy {
                what: "the catalogue is unavailable".into(),
                retry_after_s: 5,
            }
            .into())
        }
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, content_type = "text/plain", body = String)),
    security(("bearer" = [])))]
async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    let mut active: Vec<(String, i64)> = Vec::new();
    for session in s.store.active_sessions().await? {
        match active.iter_mut().find(|(k, _)| *k == session.kind) {
            Some((_, n)) => *n += 1,
            None => active.push((session.kind, 1)),
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(&active),
    )
        .into_response())
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "daemon",
    responses((status = 200, content_type = "application/json", body = Object)),
    security(("bearer" = [])))]
async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_openapi_json_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == super::openapi_json(),
            "docs/openapi.json is stale: run `cargo run -p cloudletd -- openapi > docs/openapi.json`"
        );
    }
}
