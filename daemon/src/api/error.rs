//! The one place errors become HTTP: status from the error code, JSON body
//! `{"error": {"code": "...", "message": "..."}}`. Internal errors are logged in full and
//! answered with a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

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
        ServiceError::Hypervisor(_) => StatusCode::BAD_GATEWAY,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(&self.0);
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.0, "internal error");
            "internal error; see the daemon log".to_string()
        } else {
            self.0.to_string()
        };
        let body = serde_json::json!({ "error": { "code": self.0.code(), "message": message } });
        (status, Json(body)).into_response()
    }
}
