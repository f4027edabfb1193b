//! The `tokens` table: API tokens by the hash of their secret. Revocation is a column, so
//! that the next lookup (every request makes one) no longer finds the token.

use cloudlet_api::TokenRole;

use super::db::{Store, StoreError};

/// One token, as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRecord {
    /// UUIDv7.
    pub id: String,
    /// Unique among live tokens.
    pub name: String,
    /// What it may do.
    #[sqlx(try_from = "String")]
    pub role: TokenRole,
    /// Hex blake3 of the secret.
    pub secret_hash: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, last authenticated request (coarse: see [`Store::touch_token`]).
    pub last_used_at: Option<String>,
    /// RFC 3339, when it was revoked.
    pub revoked_at: Option<String>,
}

const COLUMNS: &str = "id, name, role, secret_hash, created_at, last_used_at, revoked_at";

/// Why a revocation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Revoked now.
    Revoked(TokenRecord),
    /// It was revoked before.
    AlreadyRevoked(TokenRecord),
    /// It is the last live admin token: revoking it would lock every operator out.
    LastAdmin(TokenRecord),
}

impl TokenRecord {
    /// A new live token of `role` whose secret hashes to `secret_hash`.
    pub fn new(name: &str, role: TokenRole, secret_hash: String) -> Self {
        Self {
            id: super::new_id(),
            name: name.to_string(),
            role,
            secret_hash,
            created_at: super::now_rfc3339(),
            last_used_at: None,
            revoked_at: None,
        }
    }
}

impl Store {
    /// Inserts a token; a live token of the same name is a `Conflict`.
    pub async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        insert_row(self.pool(), t)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict { .. } => StoreError::Conflict {
                    what: format!("a live token named `{}`", t.name),
                },
                other => other,
            })?;
        Ok(())
    }

    /// The live token whose secret hashes to `secret_hash` (the lookup of every request:
    /// by hash, so no secret is ever compared byte by byte).
    pub async fn live_token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .token_by_hash(secret_hash)
            .await?
            .filter(|t| t.revoked_at.is_none()))
    }

    /// Any token (live or revoked) whose secret hashes to `secret_hash`.
    pub async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRecord>(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE secret_hash = ?"
        ))
        .bind(secret_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRecord>(&format!(
            "SELECT {COLUMNS} FROM tokens ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// The token a user means: its id, else the live token of that name.
    pub async fn find_token(&self, selector: &str) -> Result<TokenRecord, StoreError> {
        sqlx::query_as::<_, TokenRecord>(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE id = ?1 OR (name = ?1 AND revoked_at IS NULL) \
             ORDER BY id = ?1 DESC LIMIT 1"
        ))
        .bind(selector)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("token `{selector}`"),
        })
    }

    /// Revokes token `id`, unless it is the last live admin token (one statement, so two
    /// revocations at once cannot both pass the check).
    pub async fn revoke_token(&self, id: &str) -> Result<RevokeOutcome, StoreError> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL AND \
             (role <> 'admin' OR \
              (SELECT COUNT(*) FROM tokens WHERE role = 'admin' AND revoked_at IS NULL) > 1)",
        )
        .bind(super::now_rfc3339())
        .bind(id)
        .execute(self.pool())
        .await?;
        let token =
            sqlx::query_as::<_, TokenRecord>(&format!("SELECT {COLUMNS} FROM tokens WHERE id = ?"))
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: format!("token {id}"),
                })?;
        Ok(if done.rows_affected() == 1 {
            RevokeOutcome::Revoked(token)
        } else if token.revoked_at.is_some() {
            RevokeOutcome::AlreadyRevoked(token)
        } else {
            RevokeOutcome::LastAdmin(token)
        })
    }

    /// Records that token `id` was used now.
    pub async fn touch_token(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE tokens SET last_used_at = ? WHERE id = ?")
            .bind(super::now_rfc3339())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Makes the token file's secret (hash `secret_hash`) the admin token `bootstrap`,
    /// once: a secret already known (even revoked) is left as it is, so revoking the
    /// bootstrap token survives restarts. A different secret in the file (the operator
    /// replaced it) revokes the previous live `bootstrap` and takes its name.
    pub async fn import_bootstrap_token(
        &self,
        secret_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        if let Some(known) = self.token_by_hash(secret_hash).await? {
            return Ok(Some(known).filter(|t| t.revoked_at.is_some()));
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE tokens SET revoked_at = ? WHERE name = 'bootstrap' AND revoked_at IS NULL",
        )
        .bind(super::now_rfc3339())
        .execute(&mut *tx)
        .await?;
        let t = TokenRecord::new(BOOTSTRAP, TokenRole::Admin, secret_hash.to_string());
        insert_row(&mut *tx, t.clone()).await?;
        tx.commit().await?;
        Ok(None)
    }
}

async fn insert_row<'e>(
    ex: impl sqlx::SqliteExecutor<'e>,
    t: impl std::borrow::Borrow<TokenRecord>,
) -> Result<(), sqlx::Error> {
    let t = t.borrow();
    sqlx::query(&format!(
        "INSERT INTO tokens ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&t.id)
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(&t.secret_hash)
    .bind(&t.created_at)
    .bind(&t.last_used_at)
    .bind(&t.revoked_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The name of the admin token imported from the token file.
pub const BOOTSTRAP: &str = "bootstrap";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::test_store;

    #[tokio::test]
    async fn names_unique_among_live_tokens_and_the_last_admin_stays() {
        let (store, _dir) = test_store().await;
        assert_eq!(store.import_bootstrap_token("aa").await.unwrap(), None);
        // Idempotent: the same file at the next start adds nothing.
        store.import_bootstrap_token("aa").await.unwrap();
        assert_eq!(store.tokens().await.unwrap().len(), 1);
        let boot = store.live_token_by_hash("aa").await.unwrap().unwrap();
        assert_eq!(
            (boot.name.as_str(), boot.role),
            (BOOTSTRAP, TokenRole::Admin)
        );

        let phone = TokenRecord::new("phone", TokenRole::Device, "bb".into());
        store.insert_token(&phone).await.unwrap();
        let twin = TokenRecord::new("phone", TokenRole::Device, "cc".into());
        assert!(matches!(
            store.insert_token(&twin).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.find_token("phone").await.unwrap().id, phone.id);
        assert!(matches!(
            store.revoke_token(&phone.id).await.unwrap(),
            RevokeOutcome::Revoked(_)
        ));
        assert!(store.live_token_by_hash("bb").await.unwrap().is_none());
        assert!(matches!(
            store.revoke_token(&phone.id).await.unwrap(),
            RevokeOutcome::AlreadyRevoked(_)
        ));
        // The name is free again once revoked.
        store.insert_token(&twin).await.unwrap();
        assert_eq!(store.find_token("phone").await.unwrap().id, twin.id);

        assert!(matches!(
            store.revoke_token(&boot.id).await.unwrap(),
            RevokeOutcome::LastAdmin(_)
        ));
        let ops = TokenRecord::new("ops", TokenRole::Admin, "dd".into());
        store.insert_token(&ops).await.unwrap();
        assert!(matches!(
            store.revoke_token(&boot.id).await.unwrap(),
            RevokeOutcome::Revoked(_)
        ));
        // A revoked bootstrap secret is not brought back by the next start.
        assert!(store.import_bootstrap_token("aa").await.unwrap().is_some());
        assert!(store.live_token_by_hash("aa").await.unwrap().is_none());
        // A new secret in the file becomes the live `bootstrap`.
        store.import_bootstrap_token("ee").await.unwrap();
        assert_eq!(store.find_token(BOOTSTRAP).await.unwrap().secret_hash, "ee");
    }
}
