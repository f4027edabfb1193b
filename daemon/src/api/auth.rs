//! Bearer-token authentication: every route but `/health` needs a live token
//! (`Authorization: Bearer <secret>`, looked up by its hash on each request) whose role
//! the route allows ([`super::roles`]); the token is then the request's [`Caller`].
//! The token file (created on first start, mode 0600) holds the first admin token's
//! secret: imported at start as the admin token `bootstrap`.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use super::{roles, ApiError};
use crate::service::{Caller, ServiceError};
use crate::AppState;

/// Reads the secret in the token file at `path`, creating it (256 random bits, hex, mode 0600; its directory
/// 0700 if new) when missing. A token file others can read is refused.
pub fn load_or_create(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "token file {} has mode {:o}; make it 0600 (chmod 600)",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
            let token = text.trim();
            if token.len() < 16 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "token file {} holds fewer than 16 characters",
                        path.display()
                    ),
                ));
            }
            Ok(token.to_string())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            let token = crate::service::tokens::new_secret();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "created the API token");
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Middleware: a live token, else 401; the request then carries its [`Caller`].
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = bearer(request.headers()).filter(|token| !token.is_empty());
    let Some(secret) = presented else {
        return Err(ApiError::Unauthorized);
    };
    let caller = state
        .authenticate(secret)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Middleware inside [`require_token`] (and inside the body drain, so that a forbidden
/// upload still gets its answer): 403 unless the caller's role may use the route
/// ([`roles::ROUTES`]).
pub async fn require_role(request: Request, next: Next) -> Result<Response, ApiError> {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or(ApiError::Unauthorized)?;
    let needed = roles::required(request.method().as_str(), &route);
    if !roles::allows(caller.role, needed) {
        return Err(ServiceError::Forbidden(format!(
            "{} {route} needs the `{needed}` role; token `{}` has the `{}` role",
            request.method(),
            caller.name,
            caller.role
        ))
        .into());
    }
    Ok(next.run(request).await)
}

/// Handlers take the request's [`Caller`] as an argument.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Only missing on a route outside `require_token`: refuse rather than guess.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_reread() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("etc/cloudlet/token");
        let token = load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(token, text.trim());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), token);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
