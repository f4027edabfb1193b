//! `/api/v1/bases`: `list-base`, `base`, `add-base`, `del-base`, `import-base`,
//! `export-base`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::extract::{body_reader, ApiJson, ApiPath, ApiQuery};
use super::respond::respond;
use super::{ApiResult, ErrorBody};
use crate::service::base::{AddBase, CreateBase};
use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::AppState;

/// Ready bases (`list-base`).
#[utoipa::path(get, path = "/api/v1/bases", tag = "bases",
    responses((status = 200, body = Vec<BaseRecord>)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<BaseRecord>>> {
    Ok(Json(
        s.store
            .bases()
            .await?
            .into_iter()
            .filter(|b| b.state == "ready")
            .collect(),
    ))
}

/// Starts a base session (`cloudlet base DISK`): boots the disk, runs the script, and with
/// `finish` saves it as a base. `Accept: application/x-ndjson` streams progress.
#[utoipa::path(post, path = "/api/v1/bases", tag = "bases", request_body = CreateBase,
    responses((status = 201, body = SessionRecord), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateBase>,
) -> Response {
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.create_base(req).await?)
    })
    .await
}

/// Registers an existing disk + save file as a base (`add-base`).
#[utoipa::path(post, path = "/api/v1/bases/add", tag = "bases", request_body = AddBase,
    responses((status = 201, body = BaseRecord), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<AddBase>,
) -> ApiResult<(StatusCode, Json<BaseRecord>)> {
    Ok((StatusCode::CREATED, Json(s.add_base(req).await?)))
}

/// One base; `selector` is an id, unique id prefix, name or source disk path.
#[utoipa::path(get, path = "/api/v1/bases/{selector}", tag = "bases",
    params(("selector" = String, Path, description = "id, unique id prefix, name or source disk path")),
    responses((status = 200, body = BaseRecord), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(selector): ApiPath<String>,
) -> ApiResult<Json<BaseRecord>> {
    Ok(Json(s.resolve_base(&selector).await?))
}

/// `?force=true` also deletes the base's overlays and stops its sessions.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeleteQuery {
    /// Delete overlays and stop sessions that use the base.
    #[serde(default)]
    force: bool,
}

/// Deletes a base (`del-base`).
#[utoipa::path(delete, path = "/api/v1/bases/{selector}", tag = "bases",
    params(("selector" = String, Path), DeleteQuery),
    responses((status = 200, body = BaseRecord), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    ApiPath(selector): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<BaseRecord>> {
    Ok(Json(s.delete_base(&selector, q.force).await?))
}

/// The base as one archive (`export-base`); supports `Range` for resuming.
#[utoipa::path(get, path = "/api/v1/bases/{selector}/export", tag = "bases",
    params(("selector" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(s): State<AppState>,
    ApiPath(selector): ApiPath<String>,
    request: Request,
) -> ApiResult<Response> {
    let (base, path) = s.export_file(&selector).await?;
    super::files::serve_file(&s, &path, &format!("{}.cldbase", base.name), request).await
}

/// Name for an imported base.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ImportQuery {
    /// Name of the new base (default: the name it was exported with).
    name: Option<String>,
}

/// Imports a base archive sent as the body (`import-base`), verified before it appears.
#[utoipa::path(post, path = "/api/v1/bases/import", tag = "bases", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = BaseRecord), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<BaseRecord>)> {
    let (reader, watch) = body_reader(&s, &headers, body)?;
    let base = s
        .import_base(reader, q.name)
        .await
        .map_err(|e| watch.explain(e))?;
    Ok((StatusCode::CREATED, Json(base)))
}
