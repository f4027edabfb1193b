//! Who is asking: the [`Caller`] the API's token check attaches to each request, and the
//! one ownership rule every session and overlay use case applies: an admin token reaches
//! everything, a device token only what it started or made.

use cloudlet_api::TokenRole;

use super::ServiceError;
use crate::store::overlays::OverlayRecord;
use crate::store::sessions::SessionRecord;

/// The authenticated token behind a request. `token_id` is stable for the token's life
/// (other request bookkeeping, such as idempotency keys, is keyed on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (UUIDv7).
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
}

impl Caller {
    /// Whether this is an admin token.
    pub fn is_admin(&self) -> bool {
        self.role == TokenRole::Admin
    }

    /// Whether the caller may see and drive an item owned by `owner` (`None`: an item
    /// from before tokens existed, which only admins reach).
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.is_admin() || owner == Some(self.token_id.as_str())
    }

    /// `forbidden` unless the caller [`owns`](Self::owns) `what`.
    fn check(&self, what: &str, owner: Option<&str>) -> Result<(), ServiceError> {
        if self.owns(owner) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "{what} belongs to another token than `{}`",
                self.name
            )))
        }
    }

    /// The session, if the caller may reach it.
    pub(crate) fn session(&self, s: SessionRecord) -> Result<SessionRecord, ServiceError> {
        self.check(&format!("session {}", s.id), s.owner_token.as_deref())?;
        Ok(s)
    }

    /// The overlay, if the caller may reach it.
    pub(crate) fn overlay(&self, o: OverlayRecord) -> Result<OverlayRecord, ServiceError> {
        self.check(&format!("overlay {}", o.id), o.owner_token.as_deref())?;
        Ok(o)
    }

    /// The owner to record on what this caller starts.
    pub(crate) fn owner(&self) -> Option<String> {
        Some(self.token_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudlet_api::SessionKind;

    fn caller(id: &str, role: TokenRole) -> Caller {
        Caller {
            token_id: id.into(),
            name: id.into(),
            role,
        }
    }

    #[test]
    fn devices_reach_only_their_own_admins_everything() {
        let phone = caller("t1", TokenRole::Device);
        let other = caller("t2", TokenRole::Device);
        let admin = caller("t3", TokenRole::Admin);
        let mut s = SessionRecord::new(SessionKind::Synthesis, None);
        s.owner_token = phone.owner();
        assert!(phone.session(s.clone()).is_ok());
        assert!(admin.session(s.clone()).is_ok());
        let e = other.session(s.clone()).unwrap_err();
        assert_eq!(e.code(), cloudlet_api::ErrorCode::Forbidden);
        assert_eq!(e.code().status(), 403);
        // Rows from before tokens existed are the admins'.
        s.owner_token = None;
        assert!(phone.session(s.clone()).is_err());
        assert!(admin.session(s).is_ok());
        // A role this daemon does not know reaches nothing but its own.
        let unknown = caller("t4", TokenRole::Unknown);
        assert!(!unknown.owns(Some("t1")) && !unknown.owns(None));
    }
}
