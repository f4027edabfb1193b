//! `/api/v1/tokens`: `cloudlet token create / list / revoke` (admin tokens only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cloudlet_api::{CreateToken, CreatedToken, Token};

use super::extract::{ApiJson, ApiPath};
use super::ApiResult;
use crate::AppState;

/// Creates a token; the answer holds its secret, shown this once (the daemon keeps only
/// its hash).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", operation_id = "create_token",
    request_body = CreateToken, responses((status = 201, body = CreatedToken)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    Ok((StatusCode::CREATED, Json(s.create_token(req).await?)))
}

/// Every token, revoked ones included (with `revoked_at`); never a secret.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", operation_id = "list_tokens",
    responses((status = 200, body = Vec<Token>)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<Token>>> {
    Ok(Json(s.list_tokens().await?))
}

/// Revokes a token (by id, or the name of a live token): from the next request on it
/// authenticates nothing. Revoking the last live admin token is refused (409).
#[utoipa::path(delete, path = "/api/v1/tokens/{selector}", tag = "tokens",
    operation_id = "revoke_token",
    params(("selector" = String, Path, description = "token id, or the name of a live token")),
    responses((status = 200, body = Token)), security(("bearer" = [])))]
pub async fn revoke(
    State(s): State<AppState>,
    ApiPath(selector): ApiPath<String>,
) -> ApiResult<Json<Token>> {
    Ok(Json(s.revoke_token(&selector).await?))
}
