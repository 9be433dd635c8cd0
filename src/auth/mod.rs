//! Authentication: request headers → the organisation the caller acts for.
//!
//! Credentials: `Authorization: Bearer` with the platform operator token or a
//! JWT, or `X-Api-Key` (a per-app, write-only SDK key); never two at once (the
//! edge refuses to choose). The organisation always comes from the credential. Tenant selectors
//! (`X-Organization-ID`, the `Host` subdomain or custom domain) are checked
//! against it and never trusted alone ([`selector`]); only the operator token
//! picks an organisation by `X-Organization-ID`, and every such act is audited.

pub mod audit;
pub mod jwt;
pub mod selector;
pub mod signing;

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION};

use crate::clock::Clock;
use crate::tenant::{KeyHash, Org, OrgStatus, Registry};
use audit::{AddressWindows, AuditEvent, Auditor};
use jwt::{Claims, JwtVerifier};

// Static names: looking a header up by `&str` builds (and allocates) a `HeaderName` each time.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
pub const ORG_HEADER: HeaderName = HeaderName::from_static("x-organization-id");

/// Why a caller is not let in. No HTTP here: [`crate::error`] maps each to an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A credential or selector header that is not visible ASCII.
    InvalidHeader(&'static str),
    /// A credential header sent twice: which one would be the caller?
    RepeatedCredential(&'static str),
    /// `Authorization` and `X-Api-Key` together.
    TwoCredentials,
    /// A selector header sent twice with different values.
    ConflictingSelector(&'static str),
    /// `Host` headers and the request target name different hosts.
    ConflictingHosts,
    MissingCredentials,
    MalformedAuthorization,
    UnknownKey,
    Jwt(jwt::JwtError),
    /// Too many wrong operator-token guesses from this client address.
    TooManyAttempts {
        retry_after: std::time::Duration,
    },
    /// The operator token names no organisation.
    OrganizationRequired,
    UnknownOrganization,
    /// A selector names another organisation than the credential.
    TenantMismatch,
    Suspended,
    Deleted,
    /// An SDK key on a route that reads.
    WriteOnlyCredential,
    /// The token lacks this permission.
    MissingPermission(&'static str),
    /// Only the platform operator's token may do this.
    OperatorOnly,
    /// The token was issued before its user's tokens were revoked (role change, removal).
    TokenRevoked,
}

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
    /// Whether the credential holds `permission`: an SDK key only `events:write`, the operator
    /// everything, a token what its claims list.
    pub fn has(&self, permission: &str) -> bool {
        match &self.credential {
            Credential::SdkKey { .. } => permission == "events:write",
            Credential::Operator => true,
            Credential::Jwt(claims) => claims.has_permission(permission),
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

    /// How audit rows name the caller.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::SdkKey { app_id } => format!("sdk_key:{app_id}"),
            Credential::Jwt(c) => format!("user:{}", c.user_id),
            Credential::Operator => "operator".into(),
        }
    }
}

/// What authentication looks at in a request.
pub struct RequestMeta<'a> {
    pub headers: &'a HeaderMap,
    /// The request target's authority (HTTP/2 `:authority`, or an absolute-form URI).
    pub authority: Option<&'a str>,
    /// HTTP/1 absolute-form: the target's authority replaces `Host` (RFC 9112 §3.2.2).
    pub authority_replaces_host: bool,
    /// The client address (see [`crate::http::client_ip`]): audit lines and throttles use it.
    pub client: IpAddr,
    /// Only labels audit lines.
    pub route: &'a str,
}

pub struct Authenticator {
    pub jwt: JwtVerifier,
    /// SHA-256 of `EDGE_ADMIN_TOKEN`: compared by hash so the comparison leaks no timing.
    operator_token: Option<KeyHash>,
    /// Lower-case base domain for subdomain routing (`acme.<base>`).
    base_domain: Option<String>,
    audit: Auditor,
    /// Wrong guesses of the operator token, per client address.
    operator_guesses: AddressWindows,
    /// Token times are checked against it, never against jsonwebtoken's reading of the system clock.
    clock: Clock,
}

/// Wrong operator-token guesses allowed per client address and minute.
const OPERATOR_GUESSES_PER_MINUTE: u32 = 10;
/// Audit lines per client address and minute.
const AUDIT_LINES_PER_MINUTE: u32 = 20;

impl Authenticator {
    pub fn new(jwt: JwtVerifier, operator_token: Option<&str>, base_domain: Option<String>, clock: Clock) -> Self {
        Authenticator {
            jwt,
            operator_token: operator_token.map(KeyHash::of),
            base_domain,
            audit: Auditor::new(AUDIT_LINES_PER_MINUTE, clock.clone()),
            operator_guesses: AddressWindows::new(OPERATOR_GUESSES_PER_MINUTE, clock.clone()),
            clock,
        }
    }

    /// Audit lines per client address and minute, and operator-token guesses per address and
    /// minute (`EDGE_AUDIT_LINES_PER_MINUTE`, `EDGE_OPERATOR_GUESSES_PER_MINUTE`).
    pub fn with_allowances(mut self, audit_lines_per_minute: u32, operator_guesses_per_minute: u32) -> Self {
        self.audit.set_allowance(audit_lines_per_minute);
        self.operator_guesses = AddressWindows::new(operator_guesses_per_minute, self.clock.clone());
        self
    }

    /// Hands every audit event (blocked cross-tenant attempts, operator acts, rejected operator
    /// tokens) to `sink` too, within the same per-address allowance as the log lines.
    pub fn with_audit_sink(mut self, sink: audit::AuditSink) -> Self {
        self.audit.set_sink(sink);
        self
    }

    /// Resolves the caller. Ambiguous credentials (two keys, a key and a token) are refused,
    /// not chosen between; every selector present must agree with the credential.
    pub fn authenticate(&self, req: &RequestMeta<'_>, registry: &Registry) -> Result<Principal, AuthError> {
        let snapshot = registry.snapshot();
        let org_header = selector_header(req.headers, &ORG_HEADER)?;
        let authorization = authorization(req.headers)?;
        let api_key = credential_header(req.headers, &API_KEY_HEADER)?;

        let principal = match (authorization, api_key) {
            (Some(_), Some(_)) => {
                return Err(AuthError::TwoCredentials);
            }
            (Some(Presented::Bearer(bearer)), None) => {
                if let Some(principal) = self.operator(bearer, org_header, req, &snapshot)? {
                    return check_status(principal);
                }
                let claims = self.jwt.verify(bearer, self.clock.unix_secs()).map_err(|e| {
                    self.audit_rejected_token(bearer, e, req);
                    AuthError::Jwt(e)
                })?;
                let org = snapshot.org(&claims.organization_id).cloned().ok_or(AuthError::UnknownOrganization)?;
                if snapshot.tokens_valid_after(&claims.organization_id, &claims.user_id).is_some_and(|t| claims.iat < t)
                {
                    return Err(AuthError::TokenRevoked);
                }
                Principal { org, credential: Credential::Jwt(claims) }
            }
            (Some(Presented::Basic(key)), None) => key_principal(&snapshot, &key)?,
            (None, Some(key)) => key_principal(&snapshot, key)?,
            (None, None) => {
                return Err(AuthError::MissingCredentials);
            }
        };
        self.confirm(principal, org_header, req, &snapshot)
    }

    /// An SDK key found in a request body (PostHog's `api_key`, Segment's `writeKey`), held to
    /// the same selector and status rules as a key in a header.
    pub fn authenticate_body_key(
        &self,
        key: &str,
        req: &RequestMeta<'_>,
        registry: &Registry,
    ) -> Result<Principal, AuthError> {
        let snapshot = registry.snapshot();
        let org_header = selector_header(req.headers, &ORG_HEADER)?;
        let principal = key_principal(&snapshot, key)?;
        self.confirm(principal, org_header, req, &snapshot)
    }

    /// Every selector present must agree with the credential's organisation, which must be active.
    fn confirm(
        &self,
        principal: Principal,
        org_header: Option<&str>,
        req: &RequestMeta<'_>,
        snapshot: &crate::tenant::Snapshot,
    ) -> Result<Principal, AuthError> {
        let host = match (req.authority, req.authority_replaces_host) {
            (Some(authority), true) => Some(authority),
            _ => selector::host(req.headers, req.authority)?,
        };
        if let Err(selector::Mismatch { claimed }) =
            selector::check(org_header, host, &principal.org, snapshot, self.base_domain.as_deref())
        {
            self.audit("selector_mismatch", &principal, req, &claimed);
            return Err(AuthError::TenantMismatch);
        }
        check_status(principal)
    }

    /// Requests that only the platform operator may make and that name no organisation (an
    /// operator-only sign-up): the operator token, or an error (guesses throttled and audited).
    pub fn platform_operator(&self, req: &RequestMeta<'_>) -> Result<(), AuthError> {
        if credential_header(req.headers, &API_KEY_HEADER)?.is_some() {
            return Err(AuthError::OperatorOnly);
        }
        let bearer = bearer_token(req.headers)?.ok_or(AuthError::OperatorOnly)?;
        match self.operator_token_checked(bearer, "", req)? {
            true => {
                self.audit.record(AuditEvent {
                    action: "operator_act",
                    client: req.client,
                    organization_id: "",
                    actor: "operator",
                    claimed: "",
                    route: req.route,
                });
                Ok(())
            }
            false => Err(AuthError::OperatorOnly),
        }
    }

    /// The operator token, or `None` when `bearer` is not it (it may be a JWT). Guesses are
    /// throttled and audited per client address; while throttled even the right token waits.
    fn operator(
        &self,
        bearer: &str,
        org_header: Option<&str>,
        req: &RequestMeta<'_>,
        snapshot: &crate::tenant::Snapshot,
    ) -> Result<Option<Principal>, AuthError> {
        if !self.operator_token_checked(bearer, org_header.unwrap_or(""), req)? {
            return Ok(None);
        }
        let id = org_header.ok_or(AuthError::OrganizationRequired)?;
        let org = snapshot.org(id).cloned().ok_or(AuthError::UnknownOrganization)?;
        let principal = Principal { org, credential: Credential::Operator };
        self.audit("operator_act", &principal, req, id);
        Ok(Some(principal))
    }

    /// `Ok(true)` for the operator token, `Ok(false)` for what can only be a JWT; any other
    /// bearer is a wrong guess, throttled per client address and audited under `claimed_org`.
    fn operator_token_checked(
        &self,
        bearer: &str,
        claimed_org: &str,
        req: &RequestMeta<'_>,
    ) -> Result<bool, AuthError> {
        let Some(operator) = self.operator_token else { return Ok(false) };
        let is_operator = operator == KeyHash::of(bearer);
        // A JWT has three dot-separated parts: it goes to JWT verification, without touching the
        // per-address throttle's lock. Anything else can only be a try at the operator token.
        if !is_operator && bearer.bytes().filter(|&b| b == b'.').count() == 2 {
            return Ok(false);
        }
        if self.operator_guesses.exceeded(req.client) {
            return Err(AuthError::TooManyAttempts { retry_after: self.operator_guesses.retry_after() });
        }
        if !is_operator {
            self.operator_guesses.hit(req.client);
            self.audit.record(AuditEvent {
                action: "operator_token_rejected",
                client: req.client,
                organization_id: claimed_org,
                actor: "unknown",
                claimed: "",
                route: req.route,
            });
            return Err(AuthError::Jwt(jwt::JwtError::Invalid));
        }
        Ok(true)
    }

    /// A token that failed verification, recorded under the organisation it claims (unverified,
    /// truncated): forged and expired tokens naming a tenant show in that tenant's log.
    fn audit_rejected_token(&self, bearer: &str, error: jwt::JwtError, req: &RequestMeta<'_>) {
        if matches!(error, jwt::JwtError::NotConfigured) {
            return;
        }
        // An over-long token is recorded without being decoded: its size was the refusal.
        let claimed = match error {
            jwt::JwtError::TooLarge => String::new(),
            _ => jwt::unverified_organization(bearer).unwrap_or_default(),
        };
        self.audit.record(AuditEvent {
            action: "token_rejected",
            client: req.client,
            organization_id: &claimed,
            actor: "unknown",
            claimed: error.code(),
            route: req.route,
        });
    }

    fn audit(&self, action: &'static str, principal: &Principal, req: &RequestMeta<'_>, claimed: &str) {
        self.audit.record(AuditEvent {
            action,
            client: req.client,
            organization_id: principal.org.id.as_str(),
            actor: &principal.actor(),
            claimed,
            route: req.route,
        });
    }
}

fn check_status(principal: Principal) -> Result<Principal, AuthError> {
    match principal.org.status {
        OrgStatus::Active => Ok(principal),
        OrgStatus::Suspended => Err(AuthError::Suspended),
        OrgStatus::Deleted => Err(AuthError::Deleted),
    }
}

/// A header's non-empty values, trimmed: the first, and whether others repeat or differ.
struct Values<'h> {
    first: Option<&'h str>,
    repeated: bool,
    differs: bool,
}

fn values<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Values<'h>, AuthError> {
    let mut v = Values { first: None, repeated: false, differs: false };
    for raw in headers.get_all(name) {
        let value = raw.to_str().map_err(|_| AuthError::InvalidHeader(static_name(name)))?.trim();
        match v.first {
            _ if value.is_empty() => {}
            None => v.first = Some(value),
            Some(first) => {
                v.repeated = true;
                v.differs |= first != value;
            }
        }
    }
    Ok(v)
}

/// A credential header sent twice is refused: which one would be the caller?
fn credential_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, AuthError> {
    let v = values(headers, name)?;
    if v.repeated {
        return Err(AuthError::RepeatedCredential(static_name(name)));
    }
    Ok(v.first)
}

/// A selector header sent twice must say the same thing twice.
fn selector_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, AuthError> {
    let v = values(headers, name)?;
    if v.differs {
        return Err(AuthError::ConflictingSelector(static_name(name)));
    }
    Ok(v.first)
}

/// The header names errors report, as `'static` strings.
fn static_name(name: &HeaderName) -> &'static str {
    if *name == API_KEY_HEADER {
        "x-api-key"
    } else if *name == ORG_HEADER {
        "x-organization-id"
    } else {
        "authorization"
    }
}

/// What `Authorization` carries: a bearer token, or (Basic, as Segment's and RudderStack's SDKs
/// send) an SDK key as the user name, the password ignored.
enum Presented<'h> {
    Bearer(&'h str),
    Basic(String),
}

fn key_principal(snapshot: &crate::tenant::Snapshot, key: &str) -> Result<Principal, AuthError> {
    let grant = snapshot.key(&KeyHash::of(key)).ok_or(AuthError::UnknownKey)?;
    Ok(Principal { org: grant.org.clone(), credential: Credential::SdkKey { app_id: grant.app_id.clone() } })
}

fn authorization(headers: &HeaderMap) -> Result<Option<Presented<'_>>, AuthError> {
    use base64::Engine as _;
    let Some(value) = credential_header(headers, &AUTHORIZATION)? else {
        return Ok(None);
    };
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(Presented::Bearer(token.trim())))
        }
        Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| AuthError::MalformedAuthorization)?;
            let text = String::from_utf8(decoded).map_err(|_| AuthError::MalformedAuthorization)?;
            let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
            if user.is_empty() {
                return Err(AuthError::MalformedAuthorization);
            }
            Ok(Some(Presented::Basic(user.to_string())))
        }
        _ => Err(AuthError::MalformedAuthorization),
    }
}

/// The bearer token, if `Authorization` carries one (not Basic).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    match authorization(headers)? {
        Some(Presented::Bearer(token)) => Ok(Some(token)),
        _ => Ok(None),
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
        clock: Clock,
        registry: Registry,
        key_a: SdkKey,
    }

    const START: u64 = 1_800_000_000;

    fn fixture() -> Fixture {
        let clock = Clock::manual(std::time::UNIX_EPOCH + std::time::Duration::from_secs(START));
        let mut b = SnapshotBuilder::default();
        let starter = crate::plan::TierTable::default().get("starter").unwrap().clone();
        let a = b.org(Org::new("org_a", "A", "acme", starter.clone(), OrgStatus::Active)).unwrap();
        b.org(Org::new("org_b", "B", "bravo", starter.clone(), OrgStatus::Active)).unwrap();
        let gone = b.org(Org::new("org_gone", "G", "gone", starter, OrgStatus::Deleted)).unwrap();
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
            auth: Authenticator::new(jwt, Some(OPERATOR), Some("edge.example".into()), clock.clone()),
            clock,
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

    fn run(f: &Fixture, h: &HeaderMap) -> Result<Principal, AuthError> {
        let req = RequestMeta {
            headers: h,
            authority: None,
            authority_replaces_host: false,
            client: [192, 0, 2, 1].into(),
            route: "test",
        };
        f.auth.authenticate(&req, &f.registry)
    }

    #[test]
    fn sdk_key_resolves_org_and_app() {
        let f = fixture();
        let p = run(&f, &headers(&[("x-api-key", f.key_a.expose())])).unwrap();
        assert_eq!(p.org.id.as_str(), "org_a");
        assert_eq!(p.app_id(), Some("app_a"));
        assert!(p.has("events:write") && !p.has("events:read"));
    }

    #[test]
    fn missing_or_unknown_credentials_are_401() {
        let f = fixture();
        assert_eq!(run(&f, &headers(&[])).unwrap_err(), AuthError::MissingCredentials);
        // A selector alone is not a credential.
        assert_eq!(run(&f, &headers(&[("x-organization-id", "org_a")])).unwrap_err(), AuthError::MissingCredentials);
        assert_eq!(run(&f, &headers(&[("x-api-key", "edk_nope")])).unwrap_err(), AuthError::UnknownKey);
        assert_eq!(
            run(&f, &headers(&[("authorization", "Basic abc")])).unwrap_err(),
            AuthError::MalformedAuthorization
        );
        assert_eq!(
            run(&f, &headers(&[("authorization", "Bearer x.y.z")])).unwrap_err(),
            AuthError::Jwt(jwt::JwtError::Invalid)
        );
    }

    #[test]
    fn selectors_must_match_the_credential() {
        let f = fixture();
        let key = f.key_a.expose();
        assert!(run(&f, &headers(&[("x-api-key", key), ("x-organization-id", "org_a")])).is_ok());
        assert!(run(&f, &headers(&[("x-api-key", key), ("host", "acme.edge.example:443")])).is_ok());
        let e = run(&f, &headers(&[("x-api-key", key), ("x-organization-id", "org_b")])).unwrap_err();
        assert_eq!(e, AuthError::TenantMismatch);
        let e = run(&f, &headers(&[("x-api-key", key), ("host", "bravo.edge.example")])).unwrap_err();
        assert_eq!(e, AuthError::TenantMismatch);
        let t = token("org_b", &["events:write"]);
        let e = run(&f, &headers(&[("authorization", &format!("Bearer {t}")), ("x-organization-id", "org_a")]))
            .unwrap_err();
        assert_eq!(e, AuthError::TenantMismatch);
    }

    #[test]
    fn ambiguous_credentials_are_refused() {
        let f = fixture();
        let bearer = format!("Bearer {}", token("org_a", &["events:write"]));
        let both = headers(&[("authorization", &bearer), ("x-api-key", f.key_a.expose())]);
        assert_eq!(run(&f, &both).unwrap_err(), AuthError::TwoCredentials);
        let mut two = HeaderMap::new();
        two.append("x-api-key", HeaderValue::from_str(f.key_a.expose()).unwrap());
        two.append("x-api-key", HeaderValue::from_static("edk_other"));
        assert_eq!(run(&f, &two).unwrap_err(), AuthError::RepeatedCredential("x-api-key"));
        let mut two = HeaderMap::new();
        two.append("authorization", HeaderValue::from_str(&bearer).unwrap());
        two.append("authorization", HeaderValue::from_str(&bearer).unwrap());
        assert_eq!(run(&f, &two).unwrap_err(), AuthError::RepeatedCredential("authorization"));
    }

    #[test]
    fn jwt_resolves_org_and_permissions() {
        let f = fixture();
        let t = token("org_b", &["events:read"]);
        let p = run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap();
        assert_eq!(p.org.id.as_str(), "org_b");
        assert!(!p.has("events:write") && p.has("events:read"));
        let t = token("org_b", &["events:write"]);
        assert!(!run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap().has("events:read"));
        let t = token("org_unknown", &["events:write"]);
        assert_eq!(
            run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap_err(),
            AuthError::UnknownOrganization
        );
    }

    #[test]
    fn deleted_org_is_refused_at_once() {
        let f = fixture();
        let t = token("org_gone", &["events:write"]);
        assert_eq!(run(&f, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap_err(), AuthError::Deleted);
    }

    #[test]
    fn operator_picks_org_by_header() {
        let f = fixture();
        let bearer = format!("Bearer {OPERATOR}");
        let p = run(&f, &headers(&[("authorization", &bearer), ("x-organization-id", "org_b")])).unwrap();
        assert!(matches!(p.credential, Credential::Operator));
        assert_eq!(p.org.id.as_str(), "org_b");
        assert_eq!(run(&f, &headers(&[("authorization", &bearer)])).unwrap_err(), AuthError::OrganizationRequired);
    }

    #[test]
    fn token_times_follow_the_injected_clock_cached_or_not() {
        let f = fixture();
        let t = jwt::issue_hs256(&Claims::new("u", "org_a", &["events:write"], START, 60), SECRET);
        let bearer = headers(&[("authorization", &format!("Bearer {t}"))]);
        assert!(run(&f, &bearer).is_ok(), "verified, and now cached");
        f.clock.advance(std::time::Duration::from_secs(60 + 30)); // exp + leeway: still valid
        assert!(run(&f, &bearer).is_ok());
        f.clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(run(&f, &bearer).unwrap_err(), AuthError::Jwt(jwt::JwtError::Expired));
        let mut later = Claims::new("u", "org_a", &["events:write"], f.clock.unix_secs(), 7200);
        later.nbf = Some(f.clock.unix_secs() + 3600);
        let early = headers(&[("authorization", &format!("Bearer {}", jwt::issue_hs256(&later, SECRET)))]);
        assert_eq!(run(&f, &early).unwrap_err(), AuthError::Jwt(jwt::JwtError::NotYetValid));
    }
}
