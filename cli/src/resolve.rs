//! Ids the user may abbreviate: sessions and overlays by unique prefix (resolved against the
//! daemon's list), bases by whatever the daemon accepts (a local disk path made canonical).

use std::path::Path;

use crate::client::{segment, ApiError};
use crate::ctx::Ctx;
use cloudlet_api::{Overlay, Session};

/// The full id of the session `prefix` names.
pub fn session(ctx: &Ctx, prefix: &str) -> anyhow::Result<String> {
    let sessions: Vec<Session> = serde_json::from_value(ctx.client()?.get("/api/v1/sessions")?)?;
    unique("session", prefix, sessions.iter().map(|s| s.id.as_str()))
}

/// The full id of the stored overlay `prefix` names.
pub fn overlay(ctx: &Ctx, prefix: &str) -> anyhow::Result<Overlay> {
    let overlays: Vec<Overlay> = serde_json::from_value(ctx.client()?.get("/api/v1/overlays")?)?;
    let id = unique("overlay", prefix, overlays.iter().map(|o| o.id.as_str()))?;
    overlays.into_iter().find(|o| o.id == id).ok_or_else(|| {
        ApiError::local("not-found", format!("no overlay matches `{prefix}`")).into()
    })
}

/// A base selector as sent to the daemon: a local disk path becomes canonical, anything
/// else (id, prefix, name) goes as typed.
pub fn base_selector(sel: &str) -> String {
    let p = Path::new(sel);
    if sel.contains('/') && p.exists() {
        if let Ok(c) = std::fs::canonicalize(p) {
            return c.display().to_string();
        }
    }
    sel.to_string()
}

/// `/api/v1/bases/<selector>` for what the user typed.
pub fn base_path(sel: &str) -> String {
    format!("/api/v1/bases/{}", segment(&base_selector(sel)))
}

fn unique<'a>(
    what: &str,
    prefix: &str,
    ids: impl Iterator<Item = &'a str>,
) -> anyhow::Result<String> {
    let ids: Vec<&str> = ids.collect();
    if let Some(exact) = ids.iter().find(|id| **id == prefix) {
        return Ok((*exact).to_string());
    }
    let matches: Vec<&str> = ids
        .into_iter()
        .filter(|id| !prefix.is_empty() && id.starts_with(prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(ApiError::local("not-found", format!("no {what} matches `{prefix}`")).into()),
        many => Err(ApiError::local(
            "ambiguous",
            format!(
                "`{prefix}` matches {} {what}s: {}",
                many.len(),
                many.iter()
                    .map(|id| crate::output::short_id(id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_resolve_uniquely() {
        let ids = ["abc1", "abc2", "def"];
        assert_eq!(unique("session", "d", ids.into_iter()).unwrap(), "def");
        assert_eq!(unique("session", "abc1", ids.into_iter()).unwrap(), "abc1");
        let e = unique("session", "abc", ids.into_iter()).unwrap_err();
        assert!(e.to_string().contains("(ambiguous)"), "{e}");
        let e = unique("session", "x", ids.into_iter()).unwrap_err();
        assert_eq!(e.to_string(), "no session matches `x` (not-found)");
    }
}
