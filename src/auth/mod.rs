//! Authentication: request headers → the organisation the caller acts for.
//!
//! Credentials, in order: `Authorization: Bearer` with the platform operator
//! token or a JWT, else `X-Api-Key` (a per-app, write-only SDK key). The
//! organisation always comes from the credential. Tenant selectors
//! (`X-Organization-ID`, the `Host` subdomain or custom domain) are checked
//! against it and never trusted alone ([`selector`]); only the operator token
//! picks an organisation by `X-Organization-ID`, and every such act is audited.

pub mod jwt;
pub mod selector;

use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION};

use crate::error::ApiError;
use crate::tenant::{KeyHash, Org, OrgStatus, Registry};
use jwt::{Claims, JwtVerifier};

// Static names: looking a header up by `&str` builds (and allocates) a `HeaderName` each time.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
pub const ORG_HEADER: HeaderName = HeaderName::from_static("x-organization-id");

/// Who is calling, for which organisation.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org: Arc<Org>,
    pub credential: Credential,
}

#[derive(Debug, Clone)]
pub enum Credential {
    /// An SDK key: may write events for its app, nothing else.
    SdkKey {
        app_id: Arc<str>,
    },
    Jwt(Arc<Claims>),
    /// The platform operator acting on a chosen organisation.
    Operator,
}

impl Principal {
    pub fn can_write_events(&self) -> bool {
        match &self.credential {
            Credential::SdkKey { .. } | Credential::Operator => true,
            Credential::Jwt(claims) => claims.has_permission("events:write"),
        }
    }

    /// Reading events (stats) needs a user with `events:read`, or the operator; SDK keys are write-only.
    pub fn can_read_events(&self) -> bool {
        match &self.credential {
            Credential::SdkKey { .. } => false,
            Credential::Operator => true,
            Credential::Jwt(claims) => claims.has_permission("events:read"),
        }
    }

    /// The app a credential is bound to, if any: it wins over the body's `app_id`.
    pub fn app_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::SdkKey { app_id } => Some(app_id),
            Credential::Jwt(claims) => claims.app_id.as_deref(),
            Credential::Operator => None,
        }
    }

    fn actor(&self) -> String {
        match &self.credential {
            Credential::SdkKey { app_id } => format!("sdk_key:{app_id}"),
            Credential::Jwt(c) => format!("user:{}", c.user_id),
            Credential::Operator => "operator".into(),
        }
    }
}

pub struct Authenticator {
    pub jwt: JwtVerifier,
    /// SHA-256 of `EDGE_ADMIN_TOKEN`: compared by hash so the comparison leaks no timing.
    operator_token: Option<KeyHash>,
    /// Lower-case base domain for subdomain routing (`acme.<base>`).
    base_domain: Option<String>,
}

impl Authenticator {
    pub fn new(jwt: JwtVerifier, operator_token: Option<&str>, base_domain: Option<String>) -> Self {
        Authenticator { jwt, operator_token: operator_token.map(KeyHash::of), base_domain }
    }

    /// Resolves the caller. `route` only labels the audit line.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        registry: &Registry,
        now: u64,
        route: &str,
    ) -> Result<Principal, ApiError> {
        let snapshot = registry.snapshot();
        let org_header = header_str(headers, &ORG_HEADER)?;

        let principal = if let Some(bearer) = bearer_token(headers)? {
            if self.operator_token.is_some_and(|t| t == KeyHash::of(bearer)) {
                let id = org_header.ok_or_else(|| {
                    ApiError::bad_request("organization_required", "The operator token needs X-Organization-ID")
                })?;
                let org = snapshot.org(id).cloned().ok_or_else(unknown_org)?;
                let principal = Principal { org, credential: Credential::Operator };
                audit("operator_act", &principal, route, id);
                return check_status(principal);
            }
            let claims =
                self.jwt.verify(bearer, now).map_err(|e| ApiError::unauthorized(e.code(), "Invalid bearer token"))?;
            let org = snapshot.org(&claims.organization_id).cloned().ok_or_else(unknown_org)?;
            Principal { org, credential: Credential::Jwt(claims) }
        } else if let Some(key) = header_str(headers, &API_KEY_HEADER)? {
            let grant = snapshot
                .key(&KeyHash::of(key))
                .ok_or_else(|| ApiError::unauthorized("invalid_api_key", "Unknown SDK key"))?;
            Principal { org: grant.org.clone(), credential: Credential::SdkKey { app_id: grant.app_id.clone() } }
        } else {
            return Err(ApiError::unauthorized(
                "missing_credentials",
                "Send Authorization: Bearer <JWT> or X-Api-Key: <sdk key>",
            ));
        };

        if let Err(claimed) =
            selector::check(headers, org_header, &principal.org, &snapshot, self.base_domain.as_deref())
        {
            audit("selector_mismatch", &principal, route, &claimed);
            return Err(ApiError::forbidden(
                "tenant_mismatch",
                "The tenant selector names another organisation than the credential",
            ));
        }
        check_status(principal)
    }
}

fn check_status(principal: Principal) -> Result<Principal, ApiError> {
    match principal.org.status {
        OrgStatus::Active => Ok(principal),
        OrgStatus::Suspended => Err(ApiError::forbidden("organization_inactive", "Organization is suspended")),
        OrgStatus::Deleted => Err(ApiError::forbidden("organization_deleted", "Organization is deleted")),
    }
}

fn unknown_org() -> ApiError {
    ApiError::forbidden("organization_not_found", "Organization not found")
}

/// A structured audit record on the `audit` target (one JSON line with `--log-format json`).
fn audit(action: &str, principal: &Principal, route: &str, selector: &str) {
    tracing::warn!(
        target: "audit",
        action,
        organization_id = %principal.org.id,
        actor = %principal.actor(),
        selector,
        route,
        "audit"
    );
}

fn header_str<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
            .map_err(|_| ApiError::bad_request("invalid_header", format!("{name} is not visible ASCII"))),
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = header_str(headers, &AUTHORIZATION)? else {
        return Ok(None);
    };
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthorized("invalid_authorization", "Authorization must be 'Bearer <token>'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtConfig;
    use crate::tenant::{SdkKey, SnapshotBuilder};
    use hyper::header::HeaderValue;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OPERATOR: &str = "operator-token-0123456789abcdef";

    struct Fixture {
        auth: Authenticator,
        registry: Registry,
        key_a: SdkKey,
    }

    fn fixture() -> Fixture {
        let mut b = SnapshotBuilder::default();
        let a = b.org(Org::new("org_a", "A", "acme", 0, OrgStatus::Active)).unwrap();
        b.org(Org::new("org_b", "B", "bravo", 0, OrgStatus::Active)).unwrap();
        let gone = b.org(Org::new("org_gone", "G", "gone", 0, OrgStatus::Deleted)).unwrap();
        let key_a = SdkKey::generate();
        b.key(key_a.hash(), &a, "app_a").unwrap();
        let key_gone = SdkKey::generate();
        b.key(key_gone.hash(), &gone, "app_g").unwrap();
        let jwt = JwtVerifier::from_config(
            &JwtConfig { hs256_secret: Some(SECRET.to_vec()), leeway_secs: 30, ..Default::default() },
            64,
        )
        .unwrap();
        Fixture {
            auth: Authenticator::new(jwt, Some(OPERATOR), Some("edge.example".into())),
            registry: Registry::new(b.build()),
            key_a,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn token(org: &str, perms: &[&str]) -> String {
        jwt::issue_hs256(&Claims::new("u", org, perms, 0, u64::MAX / 2), SECRET)
    }

    fn run(f: &Fixture, h: &HeaderMap) -> Result<Principal, ApiError> {
        f.auth.authenticate(h, &f.registry, 1_800_000_000, "test")
    }

    #[test]
    fn sdk_key_resolves_org_and_app() {
        let f = fixture();
        let p = run(&f, &headers(&[("x-api-key", f.key_a.expose())])).unwrap();
        assert_eq!(p.org.id.as_str(), "org_a");
        assert_eq!(p.app_id(), Some("app_a"));
        assert!(p.can_write_events() && !p.can_read_events());
    }

    #[test]
    fn missing_or_unknown_credentials_are_401() {
        let f = fixture();
        assert_eq!(run(&f, &headers(&[])).unwrap_err().code, "missing_credentials");
        // A selector alone is not a credential.
        assert_eq!(run(&f, &headers(&[("x-organization-id", "org_a")])).unwrap_err().status, 401);
        assert_eq!(run(&f, &headers(&[("x-api-key", "edk_nope")])).unwrap_err().code, "invalid_api_key");
        assert_eq!(run(&f, &headers(&[("authorization", "Basic abc")])).unwrap_err().status, 401);
        assert_eq!(run(&f, &headers(&[("authorization", "Bearer x.y.z")])).unwrap_err().code, "invalid_token");
    }

    #[test]
    fn selectors_must_match_the_credential() {
        let f = fixture();
        let key = f.key_a.expose();
        assert!(run(&f, &headers(&[("x-api-key", key), ("x-organization-id", "org_a")])).is_ok());
        assert!(run(&f, &headers(&[("x-api-key", key), ("host", "acme.edge.example:443")])).is_ok());
        let e = run(&f, &headers(&[("x-api-key", key), ("x-organization-id", "org_b")])).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "tenant_mismatch"));
        let e = run(&f, &headers(&[("x-api-key", key), ("host", "bravo.edge.example")])).unwrap_err();
        assert_eq!(e.status, 403);
        let t = token("org_b", &["events:write"]);
        let e = run(&f, &headers(&[("authorization", &format!("Bearer {t}")), ("x-organization-id", "org_a")]))
            .unwrap_err();
        assert_eq!(e.code, "tenant_mismatch");
    }

    #[test]
    fn jwt_resolves_org_and_permissions() {
        let f = fixture();
        let t = token("org_b", &["events:read"]);
        let p = run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap();
        assert_eq!(p.org.id.as_str(), "org_b");
        assert!(!p.can_write_events() && p.can_read_events());
        let t = token("org_b", &["events:write"]);
        assert!(!run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap().can_read_events());
        let t = token("org_unknown", &["events:write"]);
        assert_eq!(
            run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap_err().code,
            "organization_not_found"
        );
    }

    #[test]
    fn deleted_org_is_refused_at_once() {
        let f = fixture();
        let t = token("org_gone", &["events:write"]);
        assert_eq!(
            run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap_err().code,
            "organization_deleted"
        );
    }

    #[test]
    fn operator_picks_org_by_header() {
        let f = fixture();
        let bearer = format!("Bearer {OPERATOR}");
        let p = run(&f, &headers(&[("authorization", &bearer), ("x-organization-id", "org_b")])).unwrap();
        assert!(matches!(p.credential, Credential::Operator));
        assert_eq!(p.org.id.as_str(), "org_b");
        assert_eq!(run(&f, &headers(&[("authorization", &bearer)])).unwrap_err().code, "organization_required");
    }
}
