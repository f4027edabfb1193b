//! The one place errors become HTTP: the status from the error code
//! (`cloudlet_api::ErrorCode::status`), the JSON body `{"error": {"code", "message",
//! "request_id"}}` (the id of the access log's line). Internal errors are logged in full
//! under that id and answered with a generic message carrying it. Errors that only HTTP has (authentication,
//! routing, the request deadline, malformed requests) are variants of [`ApiError`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudlet_api::{ErrorBody, ErrorCode, ErrorDetail};

use crate::service::{chain, ServiceError};

/// An error answer.
#[derive(Debug)]
pub enum ApiError {
    /// A use case failed.
    Service(ServiceError),
    /// Missing, unknown or revoked bearer token.
    Unauthorized,
    /// No route has this path.
    RouteNotFound,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// No answer within the request deadline (the work itself may still complete).
    Deadline {
        /// The deadline in seconds.
        limit_s: u64,
    },
    /// A download range outside the file.
    RangeNotSatisfiable {
        /// The file's size in bytes.
        size: u64,
    },
    /// The request could not be parsed (body, path or query), or its body is too large.
    Malformed {
        /// `invalid-request` or `too-large`.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::Service(e)
    }
}

impl ApiError {
    /// The error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Service(e) => e.code(),
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::RouteNotFound => ErrorCode::NotFound,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::Deadline { .. } => ErrorCode::Deadline,
            ApiError::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            ApiError::Malformed { code, .. } => *code,
        }
    }

    /// Status and body (also for errors carried inside a progress stream). A 5xx that is
    /// the daemon's own fault is logged here with a fresh request id, which the body
    /// carries instead of the details.
    pub fn parts(&self) -> (StatusCode, ErrorBody) {
        let code = self.code();
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The id the access log and this request's log lines carry (a fresh one outside
        // a request, e.g. in a test).
        let id = super::access::current()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(crate::store::new_id);
        let mut detail = ErrorDetail {
            code,
            message: String::new(),
            request_id: Some(id.clone()),
        };
        match self {
            ApiError::Service(e) if code == ErrorCode::Internal => {
                tracing::error!(request_id = %id, error = %chain(e), "internal error");
                detail.message = format!("internal error; see the daemon log for request {id}");
            }
            ApiError::Service(e) => detail.message = e.public_message(),
            ApiError::Unauthorized => {
                detail.message =
                    "missing, unknown or revoked bearer token (on the cloudlet: the daemon's \
                     token_file; a device: its own token from `cloudlet token create`)"
                        .into();
            }
            ApiError::RouteNotFound => detail.message = "route not found".into(),
            ApiError::MethodNotAllowed => {
                detail.message = "method not allowed on this route".into();
            }
            ApiError::Deadline { limit_s } => {
                detail.message = format!(
                    "no answer within {limit_s} s (setting request_timeout_s); the work may \
                     still complete: check the sessions"
                );
            }
            ApiError::RangeNotSatisfiable { size } => {
                detail.message = format!("the range lies outside the file ({size} bytes)");
            }
            ApiError::Malformed { message, .. } => detail.message.clone_from(message),
        }
        (status, ErrorBody { error: detail })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.parts();
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Service(e) => {
                if let Some(s) = e.retry_after_s() {
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
                }
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_carry_a_request_id_not_their_cause() {
        let e = ApiError::from(ServiceError::failed(
            "reading /var/lib/cloudlet/bases/x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        ));
        let (status, body) = e.parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let id = body.error.request_id.clone().unwrap();
        assert!(body.error.message.contains(&id));
        assert!(!body.error.message.contains("/var/lib"));
    }

    #[test]
    fn busy_answers_carry_retry_after() {
        let r = ApiError::from(ServiceError::Busy {
            what: "x".into(),
            retry_after_s: 2,
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
