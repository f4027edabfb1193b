//! Which token role each route needs: the one table the token check enforces
//! ([`super::auth::require_role`]) and the OpenAPI document shows (each operation's
//! `security` scope and a sentence of its description). A route missing here needs an
//! admin token (fail closed); a unit test checks every documented route is listed.
//!
//! Device routes that name a session or an overlay reach only the device's own (the
//! service layer's ownership check, `service::access`); listings show only its own.

use cloudlet_api::TokenRole;

use TokenRole::{Admin, Device};

/// (method, route as registered under the router, least role needed).
pub const ROUTES: &[(&str, &str, TokenRole)] = &[
    ("GET", "/api/v1/bases", Device),
    ("POST", "/api/v1/bases", Admin),
    ("POST", "/api/v1/bases/add", Admin),
    ("POST", "/api/v1/bases/import", Admin),
    ("GET", "/api/v1/bases/{selector}", Device),
    ("DELETE", "/api/v1/bases/{selector}", Admin),
    ("GET", "/api/v1/bases/{selector}/export", Admin),
    ("GET", "/api/v1/overlays", Device),
    ("POST", "/api/v1/overlays", Device),
    ("GET", "/api/v1/overlays/{id}", Device),
    ("DELETE", "/api/v1/overlays/{id}", Admin),
    ("GET", "/api/v1/overlays/{id}/file", Device),
    ("POST", "/api/v1/uploads", Admin),
    ("POST", "/api/v1/synthesis", Device),
    ("POST", "/api/v1/synthesis/upload", Device),
    ("GET", "/api/v1/sessions", Device),
    ("DELETE", "/api/v1/sessions", Admin),
    ("GET", "/api/v1/sessions/{id}", Device),
    ("GET", "/api/v1/sessions/{id}/host", Device),
    ("POST", "/api/v1/sessions/{id}/finish", Device),
    ("POST", "/api/v1/sessions/{id}/stop", Device),
    ("POST", "/api/v1/sessions/{id}/run", Device),
    ("GET", "/api/v1/tokens", Admin),
    ("POST", "/api/v1/tokens", Admin),
    ("DELETE", "/api/v1/tokens/{selector}", Admin),
    ("GET", "/api/v1/openapi.json", Device),
    ("GET", "/metrics", Admin),
];

/// The least role `method` on `route` (the router's pattern, e.g.
/// `/api/v1/sessions/{id}`) needs; admin for anything not in [`ROUTES`].
pub fn required(method: &str, route: &str) -> TokenRole {
    ROUTES
        .iter()
        .find(|(m, r, _)| m.eq_ignore_ascii_case(method) && *r == route)
        .map_or(Admin, |(_, _, role)| *role)
}

/// Whether a token of `role` may use a route that needs `needed`.
pub fn allows(role: TokenRole, needed: TokenRole) -> bool {
    match role {
        Admin => true,
        Device => needed == Device,
        TokenRole::Unknown => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    #[test]
    fn unlisted_routes_need_an_admin_and_devices_reach_only_theirs() {
        assert_eq!(required("GET", "/api/v1/sessions/{id}"), Device);
        assert_eq!(required("get", "/api/v1/sessions/{id}"), Device);
        assert_eq!(required("DELETE", "/api/v1/sessions"), Admin);
        assert_eq!(required("GET", "/api/v1/something-new"), Admin);
        assert_eq!(required("GET", ""), Admin);
        assert!(allows(Admin, Admin) && allows(Admin, Device) && allows(Device, Device));
        assert!(!allows(Device, Admin));
        assert!(!allows(TokenRole::Unknown, Device));
    }

    #[test]
    fn every_documented_route_with_a_token_is_in_the_table_once() {
        let doc = super::super::ApiDoc::openapi();
        let mut documented = 0;
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PUT", &item.put),
                ("PATCH", &item.patch),
            ] {
                let Some(op) = op else { continue };
                if path == "/health" {
                    continue;
                }
                documented += 1;
                let listed = ROUTES
                    .iter()
                    .filter(|(m, r, _)| *m == method && r == path)
                    .count();
                assert_eq!(listed, 1, "{method} {path} ({:?})", op.operation_id);
            }
        }
        assert_eq!(documented, ROUTES.len(), "a listed route is not documented");
    }
}
