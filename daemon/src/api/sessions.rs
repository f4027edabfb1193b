//! `/api/v1/synthesis` and `/api/v1/sessions`: synthesis (the edge-device path), session
//! control, `list-session`, `clear-session`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudlet_api::{
    Cleared, RunRequest, RunResponse, Session, SessionHost, Synthesize, SynthesizeUploadQuery,
};

use super::extract::{body_reader, ApiJson, ApiPath, ApiQuery};
use super::respond::respond;
use super::ApiResult;
use crate::service::idempotency::IdempotencyKey;
use crate::service::Caller;
use crate::AppState;

/// The request header naming a synthesis attempt (IETF draft `Idempotency-Key`).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The answer header marking a replayed session.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Synthesizes from a stored overlay (`overlay_id`), a local or uploaded file
/// (`overlay_path`) or a URL the daemon fetches (`overlay_url`). Answers when the VM runs.
/// A device token gives `overlay_id` (an overlay it made) or `overlay_url`; its
/// `overlay_path` is refused (403 `forbidden`: local files and uploads are the operator's).
#[utoipa::path(post, path = "/api/v1/synthesis", tag = "synthesis", operation_id = "synthesize",
    request_body = Synthesize, params(IdempotencyHeader),
    responses((status = 201, body = Session),
        (status = 200, body = Session, description = "the session an earlier request with \
            the same Idempotency-Key started (header Idempotent-Replayed: true)")),
    security(("bearer" = [])))]
pub async fn synthesize(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Synthesize>,
) -> Response {
    let key = match replay_or_key(&s, &headers).await {
        Ok(Admission::Fresh(key)) => key,
        Ok(Admission::Replayed(answer)) => return answer,
        Err(e) => return e.into_response(),
    };
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.synthesize(&caller, req, key).await?)
    })
    .await
}

/// The edge-device path: the overlay is the body, decoded while it streams in; answers
/// when the VM runs, with its ports and the step timings. A busy cloudlet or an unknown
/// base is answered before the body is read.
#[utoipa::path(post, path = "/api/v1/synthesis/upload", tag = "synthesis",
    operation_id = "synthesize_upload", params(SynthesizeUploadQuery, IdempotencyHeader),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Session),
        (status = 200, body = Session, description = "the session an earlier request with \
            the same Idempotency-Key started (header Idempotent-Replayed: true)")),
    security(("bearer" = [])))]
pub async fn synthesize_upload(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SynthesizeUploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match replay_or_key(&s, &headers).await {
        Ok(Admission::Fresh(key)) => key,
        Ok(Admission::Replayed(answer)) => return answer,
        Err(e) => return e.into_response(),
    };
    let admitted = async {
        let ticket = s.admit_synthesis(&caller, &q.base, key).await?;
        let (reader, watch) = body_reader(&s, &headers, body)?;
        Ok::<_, super::ApiError>((ticket, reader, watch))
    }
    .await;
    let (ticket, reader, watch) = match admitted {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    respond(&headers, StatusCode::CREATED, async move {
        Ok(s.synthesize_stream(ticket, reader, &watch).await?)
    })
    .await
}

/// The `Idempotency-Key` request header, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // only its derived parameter description is used
struct IdempotencyHeader {
    /// Names this synthesis attempt (e.g. a UUID; 1 to 255 printable ASCII characters).
    /// A retry with the same key and token within `idempotency_window_s` gets the session
    /// the first attempt started (200) instead of starting a second VM; a first attempt
    /// that failed frees the key.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// What a synthesis request with an `Idempotency-Key` becomes.
enum Admission {
    /// A new synthesis, claiming the key if there is one.
    Fresh(Option<IdempotencyKey>),
    /// The session an earlier request with the key started: 200, `Idempotent-Replayed`.
    Replayed(Response),
}

/// Reads the request's `Idempotency-Key` and answers with the session an earlier request
/// with the same key and token started, if any (before a slot is taken or a byte of the
/// body is read).
async fn replay_or_key(s: &AppState, headers: &HeaderMap) -> ApiResult<Admission> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(Admission::Fresh(None));
    };
    let key = IdempotencyKey::new(
        super::auth::bearer(headers).unwrap_or_default(),
        value.to_str().unwrap_or_default(),
    )?;
    Ok(match s.idempotent_replay(&key).await? {
        Some(session) => Admission::Replayed(
            (
                StatusCode::OK,
                [(IDEMPOTENT_REPLAYED, "true")],
                Json(session),
            )
                .into_response(),
        ),
        None => Admission::Fresh(Some(key)),
    })
}

/// Every session (`list-session`); a device token sees only its own.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", operation_id = "list_sessions",
    responses((status = 200, body = Vec<Session>)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Session>>> {
    Ok(Json(s.list_sessions(&caller).await?))
}

/// Removes ended sessions from the history (`clear-session`).
#[utoipa::path(delete, path = "/api/v1/sessions", tag = "sessions",
    operation_id = "clear_sessions",
    responses((status = 200, body = Cleared)), security(("bearer" = [])))]
pub async fn clear(State(s): State<AppState>) -> ApiResult<Json<Cleared>> {
    Ok(Json(s.clear_sessions().await?))
}

/// One session.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions", operation_id = "get_session",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = Session)), security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Session>> {
    Ok(Json(s.session(&caller, &id).await?))
}

/// Operator details of a session on the cloudlet's host: its console socket and work
/// directory (for `cloudlet console` on the host).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/host", tag = "sessions",
    operation_id = "get_session_host",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = SessionHost)), security(("bearer" = [])))]
pub async fn host(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionHost>> {
    Ok(Json(s.session_host(&caller, &id).await?))
}

/// Saves a base or overlay session's VM and builds the base or overlay.
/// `Accept: application/x-ndjson` streams progress.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/finish", tag = "sessions",
    operation_id = "finish_session",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = Session)), security(("bearer" = [])))]
pub async fn finish(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Response {
    respond(&headers, StatusCode::OK, async move {
        Ok(s.finish_session(&caller, &id).await?)
    })
    .await
}

/// Destroys the session's VM and its work files.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/stop", tag = "sessions",
    operation_id = "stop_session",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = Session)), security(("bearer" = [])))]
pub async fn stop(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Session>> {
    Ok(Json(s.stop_session(&caller, &id).await?))
}

/// Runs one shell line in the guest over its serial console.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/run", tag = "sessions",
    operation_id = "run_in_session",
    params(("id" = String, Path, description = "session id")), request_body = RunRequest,
    responses((status = 200, body = RunResponse)), security(("bearer" = [])))]
pub async fn run(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RunRequest>,
) -> ApiResult<Json<RunResponse>> {
    Ok(Json(s.run_in_session(&caller, &id, req).await?))
}
