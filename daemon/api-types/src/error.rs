//! Error answers: `{"error": {"code": "...", "message": "...", "request_id": "..."}}`, with
//! a stable code whose HTTP status is fixed by the table below.

use serde::{Deserialize, Serialize};

wire_enum! {
    /// The stable, machine-readable code of an error answer.
    ErrorCode("Stable machine-readable error code; its HTTP status is fixed (docs/api.md, \
        Errors).")
    {
        /// 400: malformed JSON, unknown field, bad id or name, damaged base archive.
        InvalidRequest = "invalid-request",
        /// 401: missing, wrong or revoked bearer token.
        Unauthorized = "unauthorized",
        /// 403: a local path outside the daemon's `import_dirs`.
        PathNotAllowed = "path-not-allowed",
        /// 403: an overlay URL whose origin is not in `overlay_url_allow`.
        UrlNotAllowed = "url-not-allowed",
        /// 403: the token's role does not allow the route, or the session or overlay
        /// belongs to another token.
        Forbidden = "forbidden",
        /// 404: no such base, overlay, session, upload or route.
        NotFound = "not-found",
        /// 405: the route exists, not with this method.
        MethodNotAllowed = "method-not-allowed",
        /// 408: the request body stalled for `body_idle_timeout_s`.
        Timeout = "timeout",
        /// 409: a base selector matches several bases.
        Ambiguous = "ambiguous",
        /// 409: name taken, wrong session state, base in use, base already here.
        Conflict = "conflict",
        /// 409: a request with the same `Idempotency-Key` is being admitted right now; see
        /// `Retry-After`.
        IdempotencyInProgress = "idempotency-in-progress",
        /// 413: a body over `max_upload_bytes`.
        TooLarge = "too-large",
        /// 414: a request URI over 65,534 bytes (answered before the router sees it).
        UriTooLong = "uri-too-long",
        /// 416: a download range that lies outside the file (`Content-Range: bytes */SIZE`).
        RangeNotSatisfiable = "range-not-satisfiable",
        /// 431: a request head with too many headers or too many bytes.
        HeadersTooLarge = "headers-too-large",
        /// 422: a damaged, truncated or foreign file where an overlay was expected.
        OverlayCorrupt = "overlay-corrupt",
        /// 422: the overlay was made for another base.
        OverlayBaseMismatch = "overlay-base-mismatch",
        /// 422: a customization script failed in the guest.
        ScriptFailed = "script-failed",
        /// 500: a fault of the cloudlet; details in its log (find them by `request_id`).
        Internal = "internal",
        /// 502: libvirt or QEMU failed.
        HypervisorError = "hypervisor-error",
        /// 502: an overlay URL could not be fetched.
        FetchFailed = "fetch-failed",
        /// 503: too much work at once (`max_concurrent_syntheses`); see `Retry-After`.
        Busy = "busy",
        /// 504: no answer within `request_timeout_s`; the work may still complete.
        Deadline = "deadline",
        /// 507: the cloudlet's data disk is full; nothing half-written is kept.
        NoSpace = "no-space",
    }
}

impl ErrorCode {
    /// The HTTP status every answer with this code has.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::PathNotAllowed | ErrorCode::UrlNotAllowed | ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Timeout => 408,
            ErrorCode::Ambiguous | ErrorCode::Conflict | ErrorCode::IdempotencyInProgress => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UriTooLong => 414,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::OverlayCorrupt
            | ErrorCode::OverlayBaseMismatch
            | ErrorCode::ScriptFailed => 422,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
            ErrorCode::HypervisorError | ErrorCode::FetchFailed => 502,
            ErrorCode::Busy => 503,
            ErrorCode::Deadline => 504,
            ErrorCode::NoSpace => 507,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, for people (for 5xx answers a generic text; the details are in
    /// the daemon's log under `request_id`).
    #[serde(default)]
    pub message: String,
    /// Identifies the request in the daemon's log: the `X-Request-Id` of the answer and
    /// of its access-log line (set on every error the daemon's routes answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kebab_case_with_fixed_statuses() {
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{s}");
            assert!((400..600).contains(&code.status()), "{s}");
        }
        assert_eq!(ErrorCode::NoSpace.status(), 507);
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"teapot","message":"x","extra":1}}"#).unwrap();
        assert_eq!(body.error.code, ErrorCode::Unknown);
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"no-space","message":"full"}}"#).unwrap();
        assert_eq!(body.error.code, ErrorCode::NoSpace);
    }
}
