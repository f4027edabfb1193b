//! The HTTP API (axum only: handlers extract, call one service method, map the result).
//! Routes under `/api/v1`, one file per resource; `docs/api.md` describes them and
//! `docs/openapi.json` is generated from the annotations here (`cloudletd openapi`).

mod access;
pub mod auth;
mod bases;
mod drain;
mod error;
mod extract;
mod files;
mod overlays;
mod respond;
pub mod roles;
mod sessions;
mod tokens;

mod openapi;

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudlet_api::Health;
use utoipa::OpenApi;

pub use error::ApiError;
pub use openapi::ApiDoc;

use crate::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

/// Every route, with authentication (a live token whose role the route allows:
/// [`roles::ROUTES`]), the request deadline and response metrics.
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
        .route("/sessions/{id}/host", get(sessions::host))
        .route("/sessions/{id}/finish", post(sessions::finish))
        .route("/sessions/{id}/stop", post(sessions::stop))
        .route("/sessions/{id}/run", post(sessions::run))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{selector}", axum::routing::delete(tokens::revoke))
        .route("/openapi.json", get(openapi))
        .method_not_allowed_fallback(method_not_allowed);
    let protected = Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn(auth::require_role))
        // Inside the token check: only an authenticated client's unread body is drained.
        .route_layer(middleware::from_fn(drain::drain_unread_bodies))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), until_ready))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        // Outermost: every answer, 401s and deadlines included, has an id and a log line.
        .layer(middleware::from_fn(access::log))
        .with_state(state)
}

/// Answers `timeout` when a request is not answered within `request_timeout_s` (the work
/// itself runs on in its own task: see `respond`), and counts answers by status.
async fn deadline(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let limit = Duration::from_secs(s.config.request_timeout_s);
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(r) => r,
        // 504, not 408: a client must not simply resend (the work may still complete).
        Err(_) => ApiError::Deadline {
            limit_s: limit.as_secs(),
        }
        .into_response(),
    };
    s.metrics.response(response.status().as_u16());
    response
}

/// While the daemon reconciles the previous run's VMs, only `/health` is served: the
/// catalogue's sessions are not settled yet. Others get 503 + Retry-After, not a hang.
async fn until_ready(State(s): State<AppState>, request: Request, next: Next) -> Response {
    if s.ready.load(std::sync::atomic::Ordering::Acquire) || request.uri().path() == "/health" {
        return next.run(request).await;
    }
    ApiError::from(crate::service::ServiceError::Busy {
        what: "the daemon is starting: it is reconciling the previous run's VMs".into(),
        retry_after_s: 2,
    })
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Liveness and catalogue check; needs no token.
#[utoipa::path(get, path = "/health", tag = "daemon", operation_id = "health",
    responses((status = 200, body = Health)))]
async fn health(State(s): State<AppState>) -> ApiResult<Json<Health>> {
    Ok(Json(s.health().await?))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "daemon", operation_id = "metrics",
    responses((status = 200, content_type = "text/plain", body = String)),
    security(("bearer" = [])))]
async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics_text().await?,
    )
        .into_response())
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "daemon", operation_id = "openapi",
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
