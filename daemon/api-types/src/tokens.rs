//! API tokens: each device (or operator) holds its own bearer token with a role. The
//! secret is shown once, when the token is created; the daemon keeps only its hash.

use serde::{Deserialize, Serialize};

wire_enum! {
    /// What a token may do.
    TokenRole("What a token may do: `admin` (every route) or `device` (list and show \
        bases, synthesize, make overlays, and see and drive only its own sessions and \
        overlays). docs/api.md lists each route's role.")
    {
        /// Every route, every session and overlay.
        Admin = "admin",
        /// An edge device: synthesis and its own sessions and overlays.
        Device = "device",
    }
}

/// `POST /api/v1/tokens`: a new token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Unique among live tokens (1-64 letters, digits, `.`, `_`, `-`), e.g. `phone-7`.
    pub name: String,
    /// `admin` or `device`.
    pub role: TokenRole,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Token {
    /// UUIDv7.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, last authenticated request (updated at most once a minute).
    #[serde(default)]
    pub last_used_at: Option<String>,
    /// RFC 3339, when it was revoked (it authenticates nothing since).
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// `POST /api/v1/tokens`'s answer: the only time the secret is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    /// UUIDv7.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// RFC 3339.
    pub created_at: String,
    /// The secret (64 hex digits): send it as `Authorization: Bearer <token>`. Shown only
    /// here; the daemon keeps its hash.
    pub token: String,
}
