//! Extractors whose rejections use the API's JSON error format, and request bodies as
//! limited streams.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use cloudlet_api::ErrorCode;
use futures_util::TryStreamExt;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::service::intake::{BodyOrigin, IntakeReader, IntakeWatch};
use crate::AppState;

fn rejected(status: StatusCode, message: String) -> ApiError {
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::TooLarge
    } else {
        ErrorCode::InvalidRequest
    };
    ApiError::Malformed { code, message }
}

/// A JSON body (`application/json`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(r) => Err(rejected(r.status(), r.body_text())),
        }
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(r) => Err(rejected(r.status(), r.body_text())),
        }
    }
}

/// Query parameters.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r) => Err(rejected(r.status(), r.body_text())),
        }
    }
}

/// A raw request body as a blocking reader with the daemon's size and stall limits; a
/// declared Content-Length over the limit is refused before anything is read.
pub fn body_reader(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(IntakeReader, IntakeWatch), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (reader, watch) = state.intake(
        body.into_data_stream().map_err(|e| e.to_string()),
        BodyOrigin::Request,
    );
    if declared.is_some_and(|n| n > state.config.max_upload_bytes) {
        return Err(watch.too_large().into());
    }
    Ok((reader, watch))
}
