//! API tokens: creation (the secret shown once, only its hash kept), listing, revocation
//! (refused for the last live admin token), and the lookup every request makes.

use std::time::Duration;

use cloudlet_api::{CreateToken, CreatedToken, Token, TokenRole};

use super::{validate_name, Caller, ServiceError};
use crate::store::tokens::{RevokeOutcome, TokenRecord};
use crate::AppState;

/// How stale `last_used_at` may get: refreshing it on every request would make each
/// request a write.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A fresh secret: 256 random bits as 64 hex digits.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    cloudlet_engine::hex::encode(&bytes)
}

/// What the catalogue keeps of a secret: its blake3 hash, hex.
pub fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

impl From<&TokenRecord> for Token {
    fn from(t: &TokenRecord) -> Self {
        Token {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            created_at: t.created_at.clone(),
            last_used_at: t.last_used_at.clone(),
            revoked_at: t.revoked_at.clone(),
        }
    }
}

impl AppState {
    /// The caller a presented secret authenticates, `None` for an unknown or revoked one.
    /// Looked up in the catalogue on every request, so a revocation holds from the next.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Caller>, ServiceError> {
        let Some(t) = self.store.live_token_by_hash(&secret_hash(secret)).await? else {
            return Ok(None);
        };
        if is_stale(t.last_used_at.as_deref()) {
            if let Err(e) = self.store.touch_token(&t.id).await {
                tracing::warn!(token = %t.name, error = %e, "cannot record the token's use");
            }
        }
        Ok(Some(Caller {
            token_id: t.id,
            name: t.name,
            role: t.role,
        }))
    }

    /// Makes the token file's secret the admin token `bootstrap` (see
    /// [`crate::store::Store::import_bootstrap_token`]).
    pub async fn import_token_file(&self, secret: &str) -> Result<(), ServiceError> {
        if let Some(revoked) = self
            .store
            .import_bootstrap_token(&secret_hash(secret))
            .await?
        {
            tracing::warn!(
                token = %revoked.name,
                revoked_at = revoked.revoked_at.as_deref().unwrap_or_default(),
                "the token file's token is revoked: it authenticates nothing"
            );
        }
        Ok(())
    }

    /// Creates a token; its secret is in the answer and nowhere else.
    pub async fn create_token(&self, req: CreateToken) -> Result<CreatedToken, ServiceError> {
        validate_name(&req.name)?;
        if req.role == TokenRole::Unknown {
            return Err(ServiceError::InvalidRequest(
                "role must be `admin` or `device`".into(),
            ));
        }
        let secret = new_secret();
        let t = TokenRecord::new(&req.name, req.role, secret_hash(&secret));
        self.store.insert_token(&t).await?;
        tracing::info!(token = %t.name, role = %t.role, id = %t.id, "token created");
        Ok(CreatedToken {
            id: t.id,
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            token: secret,
        })
    }

    /// Every token, revoked ones included; never a secret.
    pub async fn list_tokens(&self) -> Result<Vec<Token>, ServiceError> {
        Ok(self.store.tokens().await?.iter().map(Token::from).collect())
    }

    /// Revokes the token with this id or live name: it authenticates nothing from the
    /// next request on. The last live admin token cannot be revoked.
    pub async fn revoke_token(&self, selector: &str) -> Result<Token, ServiceError> {
        let t = self.store.find_token(selector).await?;
        match self.store.revoke_token(&t.id).await? {
            RevokeOutcome::Revoked(t) => {
                tracing::info!(token = %t.name, id = %t.id, "token revoked");
                Ok(Token::from(&t))
            }
            RevokeOutcome::AlreadyRevoked(t) => Err(ServiceError::Conflict(format!(
                "token `{}` ({}) is already revoked",
                t.name, t.id
            ))),
            RevokeOutcome::LastAdmin(t) => Err(ServiceError::Conflict(format!(
                "token `{}` is the last live admin token: create another admin token \
                 first (`cloudlet token create --role admin --name NAME`)",
                t.name
            ))),
        }
    }
}

/// Whether a `last_used_at` is old enough to refresh.
fn is_stale(last_used_at: Option<&str>) -> bool {
    let Some(text) = last_used_at else {
        return true;
    };
    let format = &time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(text, format) {
        Ok(t) => time::OffsetDateTime::now_utc() - t >= TOUCH_EVERY,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_256_bits_and_stored_as_hashes() {
        let a = new_secret();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_secret());
        let h = secret_hash(&a);
        assert_eq!(h.len(), 64);
        assert_ne!(h, a);
        assert_eq!(h, secret_hash(&a));
    }

    #[test]
    fn last_use_is_refreshed_once_a_minute() {
        assert!(is_stale(None));
        assert!(is_stale(Some("not a time")));
        assert!(!is_stale(Some(&crate::store::now_rfc3339())));
        assert!(is_stale(Some("2020-01-01T00:00:00Z")));
    }
}
