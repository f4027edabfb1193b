//! Bearer-token authentication: one token per daemon, created on first start in a file
//! only its owner can read; every route but `/health` checks it.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use super::ApiError;
use crate::AppState;

/// The daemon's token, kept only as its hash (compared in constant time).
#[derive(Debug, Clone)]
pub struct Token(blake3::Hash);

impl Token {
    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &str) -> bool {
        // blake3::Hash equality is constant-time.
        blake3::hash(presented.as_bytes()) == self.0
    }
}

/// Reads the token at `path`, creating it (256 random bits, hex, mode 0600; its directory
/// 0700 if new) when missing. A token file others can read is refused.
pub fn load_or_create(path: &Path) -> io::Result<Token> {
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
            Ok(Token(blake3::hash(token.as_bytes())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            let token = cloudlet_engine::hex::encode(&bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "created the API token");
            Ok(Token(blake3::hash(token.as_bytes())))
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

/// Middleware: `Authorization: Bearer <token>` or 401.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(request.headers()) {
        Some(t) if state.token.matches(t) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
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
        assert!(token.matches(text.trim()));
        assert!(!token.matches("wrong"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(&path).unwrap();
        assert!(again.matches(text.trim()));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
