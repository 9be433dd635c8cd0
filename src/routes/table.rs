//! Every route of both listeners: path template, method, metric label and
//! series slot, the permission it needs, its CORS policy and its handler.
//!
//! A template's `{…}` segment matches one path segment, handed to the handler
//! as a parameter. Rows of one template sit together (one per method) and
//! share their label and slot; a path with no row for the method is a 405
//! listing the methods it has.

use hyper::Method;

use crate::control::Endpoint;
use crate::http::cors::Policy;
use crate::metrics as m;
use crate::vendor::Vendor;

/// What a route's caller must hold (checked by the dispatcher, after authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// No credential: probes and metrics.
    Public,
    /// Anyone may call it, with or without a credential (login); the handler decides.
    Open,
    /// Sign-up: open to anyone, or to the platform operator only (`EDGE_SIGNUP`).
    Signup,
    /// An SDK key in a header, or else in the body (PostHog's `api_key`, Segment's `writeKey`):
    /// checked before the body is read when a header carries it, after the bounded read if not.
    SdkKeyAnywhere,
    /// An SDK key as a Bearer token (PostHog's capture v1), checked before the body is read.
    SdkKeyBearer,
    /// A credential whose permissions include this one (SDK keys hold `events:write` only;
    /// the operator holds all).
    Needs(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handler {
    Events,
    Batch,
    Control(Endpoint),
    Vendor(Vendor),
    Healthz,
    Readyz,
    Metrics,
}

pub struct Route {
    pub path: &'static str,
    pub method: Method,
    /// Metric label (`edge_http_requests_total{route}`): the path template.
    pub label: &'static str,
    pub permission: Permission,
    pub cors: Policy,
    pub(super) handler: Handler,
    /// Where the label's metric series are kept (one slot per label, below [`m::MAX_ROUTES`]).
    pub(super) slot: usize,
}

const fn route(
    slot: usize,
    path: &'static str,
    method: Method,
    permission: Permission,
    cors: Policy,
    handler: Handler,
) -> Route {
    Route { path, method, label: path, permission, cors, handler, slot }
}

const fn control(slot: usize, path: &'static str, method: Method, permission: Permission, endpoint: Endpoint) -> Route {
    route(slot, path, method, permission, Policy::Configured, Handler::Control(endpoint))
}

const fn vendor(slot: usize, path: &'static str, vendor: Vendor) -> Route {
    route(slot, path, Method::POST, Permission::SdkKeyAnywhere, Policy::AnyOrigin, Handler::Vendor(vendor))
}

use Permission::{Needs, Open, Public};

/// Data listener: SDK traffic and the control-plane API (`/api/v1`).
pub static DATA: [Route; 43] = [
    route(0, "/v1/events", Method::POST, Needs("events:write"), Policy::AnyOrigin, Handler::Events),
    route(1, "/v1/events/batch", Method::POST, Needs("events:write"), Policy::AnyOrigin, Handler::Batch),
    route(3, "/healthz", Method::GET, Public, Policy::None, Handler::Healthz),
    vendor(21, "/batch/", Vendor::PostHog),
    vendor(23, "/batch", Vendor::PostHog),
    vendor(22, "/v1/batch", Vendor::Segment),
    vendor(24, "/v1/import", Vendor::Segment),
    vendor(25, "/v1/track", Vendor::SegmentSingle("track")),
    vendor(26, "/v1/identify", Vendor::SegmentSingle("identify")),
    vendor(27, "/v1/page", Vendor::SegmentSingle("page")),
    vendor(28, "/v1/screen", Vendor::SegmentSingle("screen")),
    vendor(29, "/v1/group", Vendor::SegmentSingle("group")),
    vendor(30, "/v1/alias", Vendor::SegmentSingle("alias")),
    vendor(32, "/e/", Vendor::PostHogCapture),
    vendor(33, "/capture/", Vendor::PostHogCapture),
    vendor(34, "/i/v0/e/", Vendor::PostHogCapture),
    vendor(35, "/track/", Vendor::PostHogCapture),
    vendor(36, "/engage/", Vendor::PostHogCapture),
    route(
        31,
        "/i/v1/analytics/events",
        Method::POST,
        Permission::SdkKeyBearer,
        Policy::AnyOrigin,
        Handler::Vendor(Vendor::PostHogV1),
    ),
    control(2, "/api/v1/stats/events", Method::GET, Needs("events:read"), Endpoint::Stats),
    control(6, "/api/v1/organizations", Method::POST, Permission::Signup, Endpoint::Signup),
    control(7, "/api/v1/organization", Method::GET, Needs("org:read"), Endpoint::GetOrganization),
    control(7, "/api/v1/organization", Method::PATCH, Needs("org:write"), Endpoint::UpdateOrganization),
    control(7, "/api/v1/organization", Method::DELETE, Needs("org:delete"), Endpoint::DeleteOrganization),
    control(8, "/api/v1/apps", Method::GET, Needs("apps:read"), Endpoint::ListApps),
    control(8, "/api/v1/apps", Method::POST, Needs("apps:write"), Endpoint::CreateApp),
    control(9, "/api/v1/apps/{app_id}/keys", Method::GET, Needs("apps:read"), Endpoint::ListKeys),
    control(9, "/api/v1/apps/{app_id}/keys", Method::POST, Needs("keys:write"), Endpoint::CreateKey),
    control(10, "/api/v1/apps/{app_id}/keys/{key_id}", Method::DELETE, Needs("keys:write"), Endpoint::RevokeKey),
    control(11, "/api/v1/auth/login", Method::POST, Open, Endpoint::Login),
    control(12, "/api/v1/auth/refresh", Method::POST, Open, Endpoint::Refresh),
    control(13, "/api/v1/auth/logout", Method::POST, Open, Endpoint::Logout),
    control(14, "/api/v1/auth/set-password", Method::POST, Open, Endpoint::SetPassword),
    control(15, "/api/v1/quotas", Method::GET, Needs("quotas:read"), Endpoint::Quotas),
    control(37, "/api/v1/usage", Method::GET, Needs("quotas:read"), Endpoint::Usage),
    control(16, "/api/v1/audit-log", Method::GET, Needs("audit:read"), Endpoint::AuditLog),
    control(17, "/api/v1/users", Method::GET, Needs("users:read"), Endpoint::ListUsers),
    control(17, "/api/v1/users", Method::POST, Needs("users:write"), Endpoint::InviteUser),
    control(18, "/api/v1/users/me/password", Method::POST, Needs("org:read"), Endpoint::ChangeOwnPassword),
    control(19, "/api/v1/users/{user_id}", Method::PATCH, Needs("users:write"), Endpoint::ChangeUserRole),
    control(19, "/api/v1/users/{user_id}", Method::DELETE, Needs("users:write"), Endpoint::RemoveUser),
    control(20, "/api/v1/branding", Method::GET, Needs("branding:read"), Endpoint::GetBranding),
    control(20, "/api/v1/branding", Method::PUT, Needs("branding:write"), Endpoint::PutBranding),
];

/// Admin listener: probes and metrics (loopback by default). `/healthz` shares its slot.
pub static ADMIN: [Route; 3] = [
    route(4, "/metrics", Method::GET, Public, Policy::None, Handler::Metrics),
    route(3, "/healthz", Method::GET, Public, Policy::None, Handler::Healthz),
    route(5, "/readyz", Method::GET, Public, Policy::None, Handler::Readyz),
];

/// Label and slot of requests that match no route.
pub(super) const OTHER: &str = "other";
pub(super) const OTHER_SLOT: usize = m::MAX_ROUTES - 1;

/// The rows of the template a path matches, and the path's parameters.
pub(super) struct Match {
    pub rows: &'static [Route],
    pub params: Vec<String>,
}

impl Match {
    /// The row for `method`, if the template has one.
    pub fn row(&self, method: &Method) -> Option<&'static Route> {
        self.rows.iter().find(|r| r.method == *method)
    }

    /// The methods the template has, for `Allow` and CORS preflights.
    pub fn methods(&self) -> String {
        self.rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>().join(", ")
    }

    pub fn first(&self) -> &'static Route {
        &self.rows[0]
    }
}

/// Finds the template `path` matches in `table`. Exact templates first (the SDK routes: no
/// allocation), then templates with parameters.
pub(super) fn find(table: &'static [Route], path: &str) -> Option<Match> {
    let run = |start: usize| {
        let template = table[start].path;
        let end = table[start..].iter().position(|r| r.path != template).map_or(table.len(), |n| start + n);
        &table[start..end]
    };
    if let Some(start) = table.iter().position(|r| r.path == path) {
        return Some(Match { rows: run(start), params: Vec::new() });
    }
    let mut start = 0;
    while start < table.len() {
        let rows = run(start);
        if rows[0].path.contains('{') {
            if let Some(params) = parameters(rows[0].path, path) {
                return Some(Match { rows, params });
            }
        }
        start += rows.len();
    }
    None
}

/// The segments of `path` where `template` has `{…}`, if the rest is equal. Parameters are
/// non-empty and at most 128 bytes: ids are short, and nothing longer is worth a lookup.
fn parameters(template: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() || ps.len() > 128 {
                    return None;
                }
                params.push(ps.to_string());
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Every metric label with its series slot.
pub fn labels() -> Vec<(usize, &'static str)> {
    let mut labels: Vec<(usize, &'static str)> = Vec::new();
    for r in DATA.iter().chain(ADMIN.iter()) {
        if !labels.contains(&(r.slot, r.label)) {
            labels.push((r.slot, r.label));
        }
    }
    labels.push((OTHER_SLOT, OTHER));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments() {
        let m = find(&DATA, "/api/v1/apps/app_1/keys").unwrap();
        assert_eq!((m.first().label, m.params.as_slice()), ("/api/v1/apps/{app_id}/keys", &["app_1".to_string()][..]));
        assert_eq!(m.methods(), "GET, POST");
        let m = find(&DATA, "/api/v1/apps/app_1/keys/key_2").unwrap();
        assert_eq!(m.params, ["app_1", "key_2"]);
        assert!(find(&DATA, "/api/v1/apps//keys").is_none(), "empty parameter");
        assert!(find(&DATA, "/api/v1/apps/a/b/keys").is_none(), "a parameter is one segment");
        assert!(find(&DATA, "/api/v1/apps/app_1/keys/").is_none());
        assert_eq!(find(&DATA, "/v1/events").unwrap().params.len(), 0);
        assert!(find(&DATA, &format!("/api/v1/apps/{}/keys", "x".repeat(129))).is_none());
    }

    #[test]
    fn rows_of_a_template_are_together_and_share_a_slot() {
        for (i, r) in DATA.iter().enumerate() {
            let same: Vec<_> = DATA.iter().enumerate().filter(|(_, o)| o.path == r.path).collect();
            let first = same[0].0;
            assert!(same.iter().enumerate().all(|(k, (j, o))| *j == first + k && o.slot == r.slot), "{}", r.path);
            assert!(DATA[..i].iter().all(|o| o.path != r.path || o.method != r.method), "one row per method");
        }
    }
}
