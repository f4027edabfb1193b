//! The HTTP API (axum only: handlers extract, call one thing, map the result).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::AppState;

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
    Router::new()
        .route("/health", get(health))
        .with_state(state)
}

async fn health(
    State(state): State<AppState>,
) -> Result<Json<Health>, (axum::http::StatusCode, String)> {
    match state.store.bases().await {
        Ok(bases) => Ok(Json(Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            bases: bases.len(),
        })),
        Err(e) => {
            tracing::error!(error = ?e, "health check: catalogue unavailable");
            Err((
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "catalogue unavailable".into(),
            ))
        }
    }
}
