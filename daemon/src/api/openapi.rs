//! The OpenAPI document: paths and schemas from the handlers' annotations and the
//! `cloudlet-api` types, plus what annotations cannot say once for all routes: the bearer
//! scheme, each route's error answers (from one table: [`error_statuses`]), `Retry-After`
//! on 503, and the NDJSON progress variant of long operations.

use cloudlet_api::{ErrorBody, ErrorCode, ProgressLine, NDJSON};
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::{bases, files, overlays, roles, sessions, tokens};

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "cloudlet", description = "VM synthesis for edge devices: base VMs, VM overlays, synthesis sessions."),
    paths(
        super::health, super::metrics, super::openapi,
        bases::list, bases::create, bases::add, bases::get, bases::delete, bases::export,
        bases::import,
        overlays::list, overlays::create, overlays::get, overlays::delete, overlays::download,
        sessions::synthesize, sessions::synthesize_upload, sessions::list, sessions::clear,
        sessions::get, sessions::host, sessions::finish, sessions::stop, sessions::run,
        files::upload,
        tokens::create, tokens::list, tokens::revoke,
    ),
    components(schemas(ErrorBody, ErrorCode, ProgressLine)),
    modifiers(&BearerAuth, &RouteRoles, &ErrorResponses, &ProgressStreams),
    tags(
        (name = "bases", description = "Base VMs"),
        (name = "overlays", description = "VM overlays"),
        (name = "synthesis", description = "Rebuilding and resuming a customized VM"),
        (name = "sessions", description = "Running and past VM sessions"),
        (name = "files", description = "Uploads"),
        (name = "tokens", description = "API tokens and their roles (admin only)"),
        (name = "daemon", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
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

/// Each operation's role, from the table the token check enforces ([`roles::ROUTES`]): the
/// `bearer` requirement's scope and a sentence of its description.
struct RouteRoles;

impl Modify for RouteRoles {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::SecurityRequirement;
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in [
                ("GET", item.get.as_mut()),
                ("POST", item.post.as_mut()),
                ("DELETE", item.delete.as_mut()),
            ] {
                let Some(op) = op else { continue };
                if op.security.as_ref().is_none_or(|s| s.is_empty()) {
                    continue;
                }
                let role = roles::required(method, path);
                op.security = Some(vec![SecurityRequirement::new("bearer", [role.as_str()])]);
                let owned = ["/sessions", "/overlays", "/synthesis"]
                    .iter()
                    .any(|p| path.contains(p));
                let sentence = match role {
                    cloudlet_api::TokenRole::Device if owned => {
                        "Role: `device` or `admin`. A device token sees and drives only the \
                         sessions and overlays it started or made (another's: 403 `forbidden`)."
                    }
                    cloudlet_api::TokenRole::Device => "Role: `device` or `admin`.",
                    _ => "Role: `admin` (a device token gets 403 `forbidden`).",
                };
                op.description = Some(match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
                    _ => sentence.to_string(),
                });
            }
        }
    }
}

/// Operations that run long and can answer as a progress stream.
const LONG_OPERATIONS: [&str; 5] = [
    "create_base",
    "create_overlay",
    "synthesize",
    "synthesize_upload",
    "finish_session",
];

/// The error statuses an operation can answer, besides 401 and 403 (every route with a
/// token: a revoked or unknown token, a role or owner that does not allow it), 500 and
/// 504 (every route).
fn error_statuses(operation_id: &str) -> &'static [u16] {
    match operation_id {
        "health" => &[503],
        "metrics" | "openapi" | "list_bases" | "list_overlays" | "list_sessions"
        | "clear_sessions" | "list_tokens" => &[],
        "create_token" => &[400, 409],
        "revoke_token" => &[400, 404, 409],
        "get_base" => &[400, 404, 409],
        "export_base" => &[400, 404, 409, 416, 507],
        "delete_base" => &[400, 404, 409],
        "get_overlay" | "delete_overlay" | "get_session" | "get_session_host" => &[400, 404],
        "download_overlay" => &[400, 404, 416],
        "create_base" => &[400, 403, 404, 409, 422, 502, 507],
        "add_base" => &[400, 403, 404, 409, 507],
        "import_base" => &[400, 408, 409, 413, 507],
        "upload" => &[400, 408, 413, 507],
        "create_overlay" => &[400, 404, 409, 422, 502, 507],
        "synthesize" => &[400, 403, 404, 408, 409, 413, 422, 502, 503, 507],
        "synthesize_upload" => &[400, 404, 408, 409, 413, 422, 502, 503, 507],
        "finish_session" => &[400, 404, 409, 502, 507],
        "stop_session" => &[400, 404, 409, 502],
        "run_in_session" => &[400, 404, 409, 502],
        _ => &[400, 404],
    }
}

fn operations(doc: &mut utoipa::openapi::OpenApi) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
            item.head.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}

struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for op in operations(doc) {
            let id = op.operation_id.clone().unwrap_or_default();
            let mut statuses = error_statuses(&id).to_vec();
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                statuses.extend([401, 403]);
            }
            statuses.extend([500, 504]);
            for status in statuses {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(status).into());
            }
        }
    }
}

/// An error answer of `status`: the codes that have it, the `ErrorBody` schema.
fn error_response(status: u16) -> utoipa::openapi::Response {
    let codes: Vec<String> = ErrorCode::ALL
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| format!("`{c}`"))
        .collect();
    let mut response = ResponseBuilder::new()
        .description(format!("error: {}", codes.join(", ")))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        );
    if status == 503 {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(<u64 as PartialSchema>::schema())
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
    if status == 401 {
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(<String as PartialSchema>::schema())
                .description(Some("`Bearer`"))
                .build(),
        );
    }
    response.build()
}

struct ProgressStreams;

impl Modify for ProgressStreams {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for op in operations(doc) {
            let id = op.operation_id.clone().unwrap_or_default();
            if !LONG_OPERATIONS.contains(&id.as_str()) {
                continue;
            }
            let stream = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ProgressLine::name())))
                .build();
            match op.responses.responses.get_mut("200") {
                Some(utoipa::openapi::RefOr::T(r)) => {
                    r.content.insert(NDJSON.to_string(), stream);
                }
                _ => {
                    op.responses.responses.insert(
                        "200".into(),
                        ResponseBuilder::new()
                            .description(
                                "with `Accept: application/x-ndjson`: a progress stream, one \
                                 `ProgressLine` per line, the last a `result` (the plain \
                                 answer's status and body) or an `error`",
                            )
                            .content(NDJSON, stream)
                            .build()
                            .into(),
                    );
                }
            }
        }
    }
}
