//! `POST /api/v1/organizations` (sign-up) and `GET /api/v1/organization`.
//!
//! Sign-up creates, in one transaction, the organisation, its `super_admin`
//! user (argon2id), a default app and that app's first SDK key, whose secret
//! is in the answer and nowhere else (PostgreSQL keeps its SHA-256). Any
//! failure rolls back all of it. A subdomain or email already in use anywhere
//! is a 409 that does not say whose. Open sign-ups get the `starter` tier;
//! the operator may choose any tier.

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::provision::{self, NewOrganization};
use super::{password, reply, ControlError, ControlState};
use crate::auth::{Credential, Principal};
use crate::http::response::Body;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signup {
    name: String,
    subdomain: String,
    admin_email: String,
    admin_password: String,
    tier: Option<String>,
}

/// `operator`: the platform operator's token made the request.
pub async fn signup(state: &ControlState, operator: bool, req: Signup) -> Result<Response<Body>, ControlError> {
    let db = state.db()?;
    let tier = match (&req.tier, operator) {
        (None, _) => "starter",
        (Some(t), true) => state.tiers.get(t).map(|t| t.name).ok_or(invalid("tier", "is not a tier"))?,
        (Some(t), false) if t == "starter" => "starter",
        (Some(_), false) => return Err(invalid("tier", "only the platform operator chooses another tier")),
    };
    validate_password(&req.admin_password)?;
    // Hashed before the transaction: no pooled connection waits on argon2.
    let password_hash = Some(password::hash(req.admin_password).await);
    let new = NewOrganization {
        name: &req.name,
        subdomain: &req.subdomain,
        admin_email: &req.admin_email,
        password_hash,
        tier,
        actor: if operator { "operator" } else { "signup" },
    };
    let p = provision::organization(db, new).await?;
    reply(
        StatusCode::CREATED,
        json!({
            "organization": {"id": p.org_id, "name": req.name, "subdomain": p.subdomain, "tier": tier, "status": "active"},
            "user": {"id": p.user_id, "email": req.admin_email, "role": "super_admin"},
            "app": {"id": p.app_id, "name": "Default app"},
            "sdk_key": {"id": p.key_id, "app_id": p.app_id, "key": p.key.expose(), "prefix": &p.key.expose()[..12]},
        }),
    )
}

/// The caller's organisation as PostgreSQL has it.
pub async fn get(state: &ControlState, caller: &Principal) -> Result<Response<Body>, ControlError> {
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let row = tx
        .query_opt(
            "SELECT o.id, o.name, o.subdomain, o.tier, o.status, o.created_at::text, b.custom_domain \
             FROM organizations o LEFT JOIN tenant_branding b ON b.organization_id = o.id WHERE o.id = $1",
            &[&org],
        )
        .await?
        .ok_or(ControlError::NotFound("organization"))?;
    tx.commit().await?;
    let get = |i: usize| row.get::<_, Option<String>>(i);
    reply(
        StatusCode::OK,
        json!({
            "id": get(0), "name": get(1), "subdomain": get(2), "tier": get(3), "status": get(4),
            "created_at": get(5), "custom_domain": get(6),
        }),
    )
}

fn invalid(field: &'static str, reason: &'static str) -> ControlError {
    ControlError::Invalid { field, reason }
}

pub(super) fn validate_name(name: &str) -> Result<(), ControlError> {
    let n = name.trim().chars().count();
    if n == 0 || n > 255 || name.chars().any(char::is_control) {
        return Err(invalid("name", "must be 1 to 255 characters, no control characters"));
    }
    Ok(())
}

pub(super) fn validate_email(email: &str) -> Result<(), ControlError> {
    let ok = (3..=254).contains(&email.len())
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(invalid("email", "is not an email address"));
    }
    Ok(())
}

pub(super) fn validate_password(p: &str) -> Result<(), ControlError> {
    if p.len() < password::MIN_BYTES || p.len() > password::MAX_BYTES {
        return Err(invalid("password", "must be 12 to 256 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_and_emails() {
        use super::super::provision::is_subdomain;
        assert!(is_subdomain("acme-2") && is_subdomain("a"));
        assert!(!is_subdomain("-acme") && !is_subdomain("acme-") && !is_subdomain("Acme") && !is_subdomain("a.b"));
        assert!(!is_subdomain(&"a".repeat(64)));
        assert!(validate_email("ann@acme.example").is_ok());
        assert!(validate_email("ann@acme").is_err() && validate_email("@acme.example").is_err());
        assert!(validate_email("ann @acme.example").is_err());
        assert!(validate_password("short").is_err() && validate_password(&"x".repeat(257)).is_err());
        assert!(validate_name("Acme").is_ok() && validate_name(" ").is_err() && validate_name("a\u{0}b").is_err());
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationChange {
    name: Option<String>,
    /// Only the platform operator changes tiers; every node applies it within a second.
    tier: Option<String>,
}

pub async fn update(
    state: &ControlState,
    caller: &Principal,
    req: OrganizationChange,
) -> Result<Response<Body>, ControlError> {
    if req.name.is_none() && req.tier.is_none() {
        return Err(invalid("name", "give a name or a tier to change"));
    }
    if let Some(name) = &req.name {
        validate_name(name)?;
    }
    let tier = match (&req.tier, &caller.credential) {
        (None, _) => None,
        (Some(t), Credential::Operator) => {
            Some(state.tiers.get(t).map(|t| t.name).ok_or(invalid("tier", "is not a tier"))?)
        }
        (Some(_), _) => return Err(invalid("tier", "only the platform operator changes the tier")),
    };
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let n = tx
        .execute(
            "UPDATE organizations SET name = coalesce($2, name), tier = coalesce($3, tier), updated_at = now() \
             WHERE id = $1",
            &[&org, &req.name, &tier],
        )
        .await?;
    if n == 0 {
        return Err(ControlError::NotFound("organization"));
    }
    let action = if tier.is_some() { "organization_tier_changed" } else { "organization_updated" };
    super::apps::audit(&tx, org, caller, action, org).await?;
    tx.commit().await?;
    get(state, caller).await
}

/// Soft delete: status `deleted`; every node refuses the organisation's keys and tokens within
/// a second (the registry feed). The purge after the grace period is a later job.
pub async fn delete(state: &ControlState, caller: &Principal) -> Result<Response<Body>, ControlError> {
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let n = tx
        .execute(
            "UPDATE organizations SET status = 'deleted', deleted_at = now(), updated_at = now() \
             WHERE id = $1 AND status <> 'deleted'",
            &[&org],
        )
        .await?;
    if n == 0 {
        return Err(ControlError::NotFound("organization"));
    }
    super::apps::audit(&tx, org, caller, "organization_deleted", org).await?;
    tx.commit().await?;
    reply(StatusCode::OK, json!({"id": org, "status": "deleted", "purge_after_days": 30}))
}

/// The tier's limits and what is used of them: events this month as this node counts them
/// (fleet-wide with the Redis sync), users and apps from PostgreSQL.
pub async fn quotas(state: &ControlState, caller: &Principal) -> Result<Response<Body>, ControlError> {
    let org = caller.org.id.as_str();
    let tier = &caller.org.tier;
    let tx = state.db()?.tenant(org).await?;
    let row = tx
        .query_opt(
            "SELECT (SELECT count(*) FROM users WHERE organization_id = $1 AND removed_at IS NULL), \
                    (SELECT count(*) FROM apps WHERE organization_id = $1)",
            &[&org],
        )
        .await?
        .ok_or(ControlError::NotFound("organization"))?;
    tx.commit().await?;
    let (users, apps): (i64, i64) = (row.get(0), row.get(1));
    let unlimited = |cap: Option<u32>| cap.map_or(-1, i64::from);
    reply(
        StatusCode::OK,
        json!({
            "tier": tier.name,
            "events_per_month": {"limit": tier.events_per_month, "used": state.limiter.month_events(&caller.org.id, state.clock.unix_secs() as i64),
                                 "counted_by": "this node"},
            "events_per_second": tier.events_per_second,
            "api_requests_per_minute": tier.api_requests_per_minute,
            "users": {"limit": unlimited(tier.users), "used": users},
            "apps": {"limit": unlimited(tier.apps), "used": apps},
            "data_retention_days": tier.data_retention_days,
            "white_label": tier.white_label,
            "sso": tier.sso,
        }),
    )
}

/// The organisation's audit log, newest first; `cursor` is the last id of the previous page.
pub async fn audit_log(
    state: &ControlState,
    caller: &Principal,
    parts: &hyper::http::request::Parts,
) -> Result<Response<Body>, ControlError> {
    let page = super::Page::of(parts)?;
    let before: i64 = match page.after.as_str() {
        "" => i64::MAX,
        c => c.parse().map_err(|_| invalid("cursor", "is not a cursor"))?,
    };
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let rows = tx
        .query(
            "SELECT id, at::text, actor, action, target, host(client) FROM audit_log \
             WHERE organization_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[&org, &before, &(page.limit + 1)],
        )
        .await?;
    tx.commit().await?;
    let items = rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let entry = json!({"id": id, "at": r.get::<_, String>(1), "actor": r.get::<_, String>(2),
                               "action": r.get::<_, String>(3), "target": r.get::<_, String>(4),
                               "client": r.get::<_, Option<String>>(5)});
            (id.to_string(), entry)
        })
        .collect();
    reply(StatusCode::OK, page.finish(items))
}
