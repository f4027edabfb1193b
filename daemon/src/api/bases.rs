//! `/api/v1/bases`: `list-base`, `base`, `add-base`, `del-base`, `import-base`,
//! `export-base`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use cloudlet_api::{AddBase, Base, CreateBase, DeleteBaseQuery, ImportBaseQuery, Session};

use super::extract::{body_reader, ApiJson, ApiPath, ApiQuery};
use super::respond::respond;
use super::ApiResult;
use crate::service::Caller;
use crate::AppState;

/// Ready bases (`list-base`).
#[utoipa::path(get, path = "/api/v1/bases", tag = "bases", operation_id = "list_bases",
    responses((status = 200, body = Vec<Base>)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<Base>>> {
    Ok(Json(s.list_bases().await?))
}

/// Starts a base session (`cloudlet base DISK`): boots the disk, runs the script, and with
/// `finish` saves it as a base. `Accept: application/x-ndjson` streams progress.
#[utoipa::path(post, path = "/api/v1/bases", tag = "bases", operation_id = "create_base",
    request_body = CreateBase, responses((status = 201, body = Session)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateBase>,
) -> Response {
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.create_base(&caller, req).await?)
    })
    .await
}

/// Registers an existing disk + save file as a base (`add-base`).
#[utoipa::path(post, path = "/api/v1/bases/add", tag = "bases", operation_id = "add_base",
    request_body = AddBase, responses((status = 201, body = Base)), security(("bearer" = [])))]
pub async fn add(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<AddBase>,
) -> ApiResult<(StatusCode, Json<Base>)> {
    Ok((StatusCode::CREATED, Json(s.add_base(req).await?)))
}

/// One base; `selector` is an id, unique id prefix, name or source disk path.
#[utoipa::path(get, path = "/api/v1/bases/{selector}", tag = "bases", operation_id = "get_base",
    params(("selector" = String, Path, description = "id, unique id prefix, name or source disk path")),
    responses((status = 200, body = Base)), security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(selector): ApiPath<String>,
) -> ApiResult<Json<Base>> {
    Ok(Json(s.base(&selector).await?))
}

/// Deletes a base (`del-base`); refused while overlays or sessions use it unless `force`.
#[utoipa::path(delete, path = "/api/v1/bases/{selector}", tag = "bases",
    operation_id = "delete_base",
    params(("selector" = String, Path, description = "id, unique id prefix, name or source disk path"),
        DeleteBaseQuery),
    responses((status = 200, body = Base)), security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    ApiPath(selector): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteBaseQuery>,
) -> ApiResult<Json<Base>> {
    Ok(Json(s.delete_base(&selector, q.force).await?))
}

/// The base as one archive (`export-base`); supports `Range` for resuming.
#[utoipa::path(get, path = "/api/v1/bases/{selector}/export", tag = "bases",
    operation_id = "export_base",
    params(("selector" = String, Path, description = "id, unique id prefix, name or source disk path")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range", content_type = "application/octet-stream", body = Vec<u8>)),
    security(("bearer" = [])))]
pub async fn export(
    State(s): State<AppState>,
    ApiPath(selector): ApiPath<String>,
    request: Request,
) -> ApiResult<Response> {
    let (name, path) = s.export_file(&selector).await?;
    super::files::serve_file(&s, &path, &name, request).await
}

/// Imports a base archive sent as the body (`import-base`), verified before it appears.
#[utoipa::path(post, path = "/api/v1/bases/import", tag = "bases", operation_id = "import_base",
    params(ImportBaseQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Base)), security(("bearer" = [])))]
pub async fn import(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ImportBaseQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Base>)> {
    let (reader, watch) = body_reader(&s, &headers, body)?;
    let base = s
        .import_base(reader, q.name)
        .await
        .map_err(|e| watch.explain(e))?;
    Ok((StatusCode::CREATED, Json(base)))
}
