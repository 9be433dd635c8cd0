//! The control plane: the `/api/v1` API for people and tools, not SDKs.
//!
//! Per-tenant event statistics ([`stats`]); organisations and sign-up
//! ([`orgs`]); apps and their SDK keys ([`apps`]); the PostgreSQL pool and the
//! one helper that opens a tenant transaction ([`db`]); the feed that keeps
//! the in-memory [`crate::tenant::Registry`] current from PostgreSQL
//! ([`feed`]). The route table ([`crate::routes`]) has authenticated the
//! caller and checked the route's permission; handlers get the caller and the
//! path's parameters, and reach PostgreSQL only through [`db::Db::tenant`] for
//! the caller's own organisation.

pub mod apps;
pub mod audit_log;
pub mod branding;
pub mod feed;
mod ids;
pub mod orgs;
pub mod password;
pub mod provision;
pub mod roles;
pub mod sessions;
pub mod stats;
pub mod usage;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::clock::Clock;
use crate::config::{ConnConfig, LoginConfig};
use crate::db::{self, Db, DbError};
use crate::http::body::{self, BodyError};
use crate::http::budget::MemoryBudget;
use crate::http::response::{self, Body};
use crate::plan::TierTable;

/// Control-plane request bodies are small JSON objects.
const MAX_BODY_BYTES: usize = 64 << 10;

/// The control plane's routes, as the route table names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Stats,
    Signup,
    GetOrganization,
    ListApps,
    CreateApp,
    ListKeys,
    CreateKey,
    RevokeKey,
    Login,
    Refresh,
    Logout,
    UpdateOrganization,
    DeleteOrganization,
    Quotas,
    Usage,
    AuditLog,
    ListUsers,
    InviteUser,
    ChangeUserRole,
    RemoveUser,
    ChangeOwnPassword,
    SetPassword,
    GetBranding,
    PutBranding,
}

/// Who is calling a control-plane route, as the route table established it.
pub enum Caller {
    /// No credential (open sign-up, login).
    Anonymous,
    /// The operator token, naming no organisation (operator-only sign-up).
    PlatformOperator,
    /// A credential of one organisation (or the operator acting on it).
    Tenant(Principal),
}

/// Why a control-plane request is refused; [`crate::error`] maps each to its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// A query parameter that is not a `YYYY-MM-DD` date.
    InvalidDate {
        field: &'static str,
    },
    /// `from` is after `to`.
    InvalidRange,
    /// The request body could not be read.
    Body(BodyError),
    /// The body is not the JSON object the route takes.
    InvalidJson(String),
    /// A field is missing or unacceptable.
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// No such object in the caller's organisation (another's is never "found").
    NotFound(&'static str),
    /// Taken already, somewhere: never says by whom.
    Conflict(&'static str),
    /// The organisation is over its control-plane requests per minute.
    Limited(crate::limits::LimitError),
    /// The caller's role may not do this to this object.
    Forbidden(&'static str),
    /// The organisation's last `super_admin` cannot be demoted or removed.
    LastSuperAdmin,
    /// The tier does not include this feature (`white_label`, `sso`).
    NotInTier {
        feature: &'static str,
        tier: &'static str,
    },
    /// The tier allows no more of these.
    TierLimit {
        what: &'static str,
        limit: u32,
        tier: &'static str,
    },
    /// No `DATABASE_URL`: the control plane is not configured on this node.
    Unavailable,
    /// Unknown email, wrong password, or an unusable refresh token: one answer for all.
    InvalidCredentials,
    /// Too many failed logins for the account or the address.
    TooManyAttempts {
        retry_after: std::time::Duration,
    },
    /// The organisation is suspended or deleted.
    OrganizationInactive,
    /// No `JWT_SECRET` to sign access tokens with.
    LoginUnavailable,
    /// ClickHouse did not answer the stats query.
    StatsUnavailable,
    Db(DbError),
}

impl From<DbError> for ControlError {
    fn from(e: DbError) -> Self {
        ControlError::Db(e)
    }
}

impl From<BodyError> for ControlError {
    fn from(e: BodyError) -> Self {
        ControlError::Body(e)
    }
}

/// What the control-plane handlers may touch.
pub struct ControlState {
    pub stats: Arc<crate::aggregates::Stats>,
    /// "Today" for default date ranges.
    pub clock: Clock,
    /// The PostgreSQL pool, when `DATABASE_URL` is set.
    pub db: Option<Db>,
    /// Stats come from ClickHouse's daily aggregate when `CLICKHOUSE_URL` is set.
    pub clickhouse: Option<clickhouse::Client>,
    pub tiers: TierTable,
    /// Request bodies are charged to the same budget as ingestion's.
    pub budget: Arc<MemoryBudget>,
    pub conn: ConnConfig,
    pub login: LoginConfig,
    /// Failed logins; shared with the fleet sync, which makes the counts fleet-wide.
    pub logins: Arc<crate::limits::logins::LoginThrottle>,
    pub audit: audit_log::AuditLog,
    /// This node's event counts, for `/quotas`.
    pub limiter: Arc<crate::limits::Limiter>,
    /// Signs the access tokens logins hand out (`EDGE_JWT_SIGNING_KEY`, else `JWT_SECRET`).
    pub signer: Option<crate::auth::signing::Signer>,
}

impl ControlState {
    fn db(&self) -> Result<&Db, ControlError> {
        self.db.as_ref().ok_or(ControlError::Unavailable)
    }
}

/// Who made a request and from where: the caller as the route table established it, and the
/// client address (see [`crate::http::client_ip`]) that throttles and audit rows use.
pub struct Origin {
    pub caller: Caller,
    pub client: IpAddr,
}

/// Runs `endpoint` for `origin` with the path's `params`.
pub async fn handle(
    state: &ControlState,
    endpoint: Endpoint,
    origin: Origin,
    req: Request<Incoming>,
    params: Vec<String>,
) -> Result<Response<Body>, ControlError> {
    // Who asked for an object their organisation does not have: maybe another's (RLS hid it).
    let asker = match (&origin.caller, params.is_empty()) {
        (Caller::Tenant(p), false) => Some((p.org.id.clone(), p.actor(), req.uri().path().to_string())),
        _ => None,
    };
    let client = origin.client;
    let answer = route(state, endpoint, origin, req, params).await;
    match (&answer, asker) {
        (Err(ControlError::Db(DbError::Other(e))), _) => {
            tracing::error!(error = %e, ?endpoint, "control plane statement failed");
        }
        (Err(ControlError::NotFound(_)), Some((org, actor, path))) => {
            state.audit.record(org.as_str(), &actor, "not_found", &path, Some(client));
        }
        _ => {}
    }
    answer
}

async fn route(
    state: &ControlState,
    endpoint: Endpoint,
    origin: Origin,
    req: Request<Incoming>,
    params: Vec<String>,
) -> Result<Response<Body>, ControlError> {
    let Origin { caller, client } = origin;
    if let Caller::Tenant(p) = &caller {
        // Before the body is read: an organisation over its allowance costs nothing more.
        let limited = state.limiter.org(&p.org).check_api(state.clock.unix_secs()).map_err(ControlError::Limited);
        if let Err(e) = limited {
            if let ControlError::Limited(limit) = &e {
                limit.count();
            }
            body::drain_unread(req.version(), req.into_body(), &state.conn).await;
            return Err(e);
        }
    }
    let (parts, incoming) = req.into_parts();
    let body = read_body(state, &parts, incoming).await?;
    let (tenant, operator) = match &caller {
        Caller::Anonymous => (None, false),
        Caller::PlatformOperator => (None, true),
        Caller::Tenant(p) => (Some(p), matches!(p.credential, crate::auth::Credential::Operator)),
    };
    let caller = || tenant.expect("the route table authenticates every tenant route");
    let param = |i: usize| params.get(i).map(String::as_str).unwrap_or("");
    match endpoint {
        Endpoint::Stats => stats::handle(state, caller(), &parts).await,
        Endpoint::Signup => orgs::signup(state, operator, json(&body)?).await,
        Endpoint::GetOrganization => orgs::get(state, caller()).await,
        Endpoint::ListApps => apps::list(state, caller(), &parts).await,
        Endpoint::CreateApp => apps::create(state, caller(), json(&body)?).await,
        Endpoint::ListKeys => apps::list_keys(state, caller(), param(0), &parts).await,
        Endpoint::CreateKey => apps::create_key(state, caller(), param(0)).await,
        Endpoint::RevokeKey => apps::revoke_key(state, caller(), param(0), param(1)).await,
        Endpoint::Login => sessions::login(state, client, json(&body)?).await,
        Endpoint::Refresh => sessions::refresh(state, client, json(&body)?).await,
        Endpoint::Logout => sessions::logout(state, client, json(&body)?).await,
        Endpoint::UpdateOrganization => orgs::update(state, caller(), json(&body)?).await,
        Endpoint::DeleteOrganization => orgs::delete(state, caller()).await,
        Endpoint::Quotas => orgs::quotas(state, caller()).await,
        Endpoint::Usage => usage::get(state, caller(), &parts).await,
        Endpoint::AuditLog => orgs::audit_log(state, caller(), &parts).await,
        Endpoint::ListUsers => users::list(state, caller(), &parts).await,
        Endpoint::InviteUser => users::invite(state, caller(), json(&body)?).await,
        Endpoint::ChangeUserRole => users::change_role(state, caller(), param(0), json(&body)?).await,
        Endpoint::RemoveUser => users::remove(state, caller(), param(0)).await,
        Endpoint::ChangeOwnPassword => users::change_own_password(state, caller(), client, json(&body)?).await,
        Endpoint::SetPassword => users::set_password(state, client, json(&body)?).await,
        Endpoint::GetBranding => branding::get(state, caller()).await,
        Endpoint::PutBranding => branding::put(state, caller(), json(&body)?).await,
    }
}

/// The whole body, bounded and charged to the budget; what a route does not read is drained.
async fn read_body(
    state: &ControlState,
    parts: &hyper::http::request::Parts,
    mut incoming: Incoming,
) -> Result<Vec<u8>, ControlError> {
    let mut lease = state.budget.lease();
    let read =
        body::read(&parts.headers, &mut incoming, MAX_BODY_BYTES, "body", &mut lease, state.conn.body_timeout).await;
    if read.is_err() {
        body::drain_unread(parts.version, incoming, &state.conn).await;
    }
    Ok(read?)
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::InvalidJson(e.to_string()))
}

fn reply(status: StatusCode, value: serde_json::Value) -> Result<Response<Body>, ControlError> {
    Ok(response::json(status, serde_json::to_vec(&value).unwrap_or_default()))
}

/// `?limit=N&cursor=ID`: at most 100 a page (default 50), after the id `cursor`.
struct Page {
    limit: i64,
    after: String,
}

impl Page {
    fn of(parts: &hyper::http::request::Parts) -> Result<Page, ControlError> {
        let mut page = Page { limit: 50, after: String::new() };
        for (key, value) in parts.uri.query().unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')) {
            match key {
                "limit" => {
                    page.limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or(ControlError::Invalid { field: "limit", reason: "must be 1 to 100" })?;
                }
                "cursor" if value.len() <= 128 => page.after = value.to_string(),
                "cursor" => return Err(ControlError::Invalid { field: "cursor", reason: "is not a cursor" }),
                _ => {}
            }
        }
        Ok(page)
    }

    /// One page of rows ordered by their text id: `sql` selects the id first, takes `leading`
    /// as its first parameters, then the cursor and `limit + 1` as its last two.
    async fn fetch(
        &self,
        tx: &db::TenantTx,
        sql: &str,
        leading: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        item: impl Fn(&tokio_postgres::Row) -> serde_json::Value,
    ) -> Result<serde_json::Value, ControlError> {
        let limit = self.limit + 1;
        let mut params = leading.to_vec();
        params.push(&self.after);
        params.push(&limit);
        let rows = tx.query(sql, &params).await?;
        Ok(self.finish(rows.iter().map(|r| (r.get::<_, String>(0), item(r))).collect()))
    }

    /// The page's items and the cursor of the next page (`null` on the last), from a query
    /// that fetched `limit + 1` rows ordered by id.
    fn finish(&self, mut items: Vec<(String, serde_json::Value)>) -> serde_json::Value {
        let more = items.len() as i64 > self.limit;
        items.truncate(self.limit as usize);
        let next = if more { items.last().map(|(id, _)| id.clone()) } else { None };
        serde_json::json!({
            "data": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "next_cursor": next,
        })
    }
}
