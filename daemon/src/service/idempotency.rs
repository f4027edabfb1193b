//! `Idempotency-Key` of `POST /synthesis*`: a request retried after a dropped connection
//! gets the session the first attempt started, never a second VM. The key is bound to the
//! bearer token that sent it; only a hash of both is stored.

use std::time::Duration;

use cloudlet_api::{Session, SessionState};

use super::ServiceError;
use crate::store::StoreError;
use crate::AppState;

/// Longest a key may be (the length Stripe and the IETF draft allow).
const MAX_KEY_LEN: usize = 255;

/// How often a retry looks again at a first attempt that is still being decoded.
const POLL: Duration = Duration::from_millis(250);

/// A client's key, bound to its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key `key` sent with `token`: 1 to 255 printable ASCII characters.
    pub fn new(token: &str, key: &str) -> Result<Self, ServiceError> {
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ServiceError::InvalidRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters \
                 without spaces (a UUID is fine)"
            )));
        }
        let mut h = blake3::Hasher::new();
        h.update(b"cloudlet idempotency-key v1\0");
        h.update(blake3::hash(token.as_bytes()).as_bytes());
        h.update(key.as_bytes());
        Ok(Self(h.finalize().to_hex().to_string()))
    }
}

impl AppState {
    /// The session an earlier request with `key` started, once it has its VM or has
    /// ended; `None` when the key is free: never used, past `idempotency_window_s`, or its
    /// attempt failed (which leaves no VM, so the retry may start afresh). A first attempt
    /// still decoding is waited for: it may be a request whose client went away while the
    /// daemon worked, or an upload that is about to fail as stalled.
    pub async fn idempotent_replay(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Session>, ServiceError> {
        let window = self.config.idempotency_window_s;
        loop {
            let Some(first) = self.store.idempotent_session(&key.0, window).await? else {
                return Ok(None);
            };
            match first.state() {
                SessionState::Failed => {
                    self.store
                        .release_idempotency_key(&key.0, &first.id)
                        .await?;
                    return Ok(None);
                }
                SessionState::Starting | SessionState::Decoding | SessionState::Restoring => {
                    tokio::time::sleep(POLL).await;
                }
                _ => return Ok(Some(Session::from(&first))),
            }
        }
    }

    /// Ties `key` to the new session `session_id`, or `idempotency-in-progress` when a
    /// concurrent request with the same key got there first.
    pub(super) async fn claim_idempotency_key(
        &self,
        key: &IdempotencyKey,
        session_id: &str,
    ) -> Result<(), ServiceError> {
        self.store
            .claim_idempotency_key(&key.0, session_id, self.config.idempotency_window_s)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => ServiceError::IdempotencyInProgress,
                e => e.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bound_to_their_token_and_checked() {
        let a = IdempotencyKey::new("token-a", "k1").unwrap();
        assert_eq!(a, IdempotencyKey::new("token-a", "k1").unwrap());
        assert_ne!(a, IdempotencyKey::new("token-b", "k1").unwrap());
        assert_ne!(a, IdempotencyKey::new("token-a", "k2").unwrap());
        for bad in ["", "has space", "tab\t", "é", &"x".repeat(256)] {
            assert!(IdempotencyKey::new("t", bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::new("t", &"x".repeat(255)).is_ok());
    }
}
