//! The one place errors become HTTP: status from the error code, JSON body
//! `{"error": {"code": "...", "message": "..."}}`. Internal errors are logged in full and
//! answered with a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::service::ServiceError;

/// An error response.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError(e.into())
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`not-found`, `overlay-corrupt`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorBody {
    fn new(e: &ServiceError, message: String) -> Self {
        Self {
            error: ErrorDetail {
                code: e.code(),
                message,
            },
        }
    }
}

impl ApiError {
    /// Status and body, for answers that carry an error inside a stream (progress).
    pub fn parts(&self) -> (StatusCode, ErrorBody) {
        let status = status(&self.0);
        (
            status,
            ErrorBody::new(&self.0, public_message(&self.0, status)),
        )
    }
}

fn public_message(e: &ServiceError, status: StatusCode) -> String {
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "internal error");
        "internal error; see the daemon log".to_string()
    } else {
        e.to_string()
    }
}

/// HTTP status of an error code.
pub fn status(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Ambiguous { .. } | ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        ServiceError::PathNotAllowed(_) => StatusCode::FORBIDDEN,
        ServiceError::OverlayCorrupt(_)
        | ServiceError::OverlayBaseMismatch(_)
        | ServiceError::ScriptFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ServiceError::UrlNotAllowed(_) => StatusCode::FORBIDDEN,
        ServiceError::FetchFailed(_) | ServiceError::Hypervisor(_) => StatusCode::BAD_GATEWAY,
        ServiceError::Unauthorized => StatusCode::UNAUTHORIZED,
        ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        ServiceError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
        ServiceError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ServiceError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(&self.0);
        let message = public_message(&self.0, status);
        let mut response = (status, Json(ErrorBody::new(&self.0, message))).into_response();
        let headers = response.headers_mut();
        match &self.0 {
            ServiceError::Busy { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            ServiceError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
