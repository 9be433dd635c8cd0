//! `/api/v1/apps` and `/api/v1/apps/{app_id}/keys[/{key_id}]`.
//!
//! A new key's secret is in the answer once; PostgreSQL keeps its SHA-256
//! and a short prefix for people to tell keys apart. Revoking sets
//! `revoked_at`; the registry feed drops the key from every node within a
//! second. The tier's `apps` cap is checked under a lock on the organisation's
//! row, so concurrent creations cannot pass it together.

use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::orgs::validate_name;
use super::{ids, reply, ControlError, ControlState, Page};
use crate::auth::Principal;
use crate::http::response::Body;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    name: String,
}

pub async fn list(state: &ControlState, caller: &Principal, parts: &Parts) -> Result<Response<Body>, ControlError> {
    let page = Page::of(parts)?;
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let body = page
        .fetch(
            &tx,
            "SELECT id, name, created_at::text FROM apps WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&org],
            |r| json!({"id": r.get::<_, String>(0), "name": r.get::<_, String>(1), "created_at": r.get::<_, String>(2)}),
        )
        .await?;
    tx.commit().await?;
    reply(StatusCode::OK, body)
}

pub async fn create(state: &ControlState, caller: &Principal, req: NewApp) -> Result<Response<Body>, ControlError> {
    validate_name(&req.name)?;
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    // Serialises this organisation's creations: the count below cannot go stale.
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", &[&org])
        .await?
        .ok_or(ControlError::NotFound("organization"))?;
    if let Some(limit) = caller.org.tier.apps {
        let count: i64 = tx.query("SELECT count(*) FROM apps WHERE organization_id = $1", &[&org]).await?[0].get(0);
        if count >= i64::from(limit) {
            return Err(ControlError::TierLimit { what: "apps", limit, tier: caller.org.tier.name });
        }
    }
    let id = ids::new_id("app");
    tx.execute("INSERT INTO apps (organization_id, id, name) VALUES ($1, $2, $3)", &[&org, &id, &req.name]).await?;
    tx.commit().await?;
    reply(StatusCode::CREATED, json!({"id": id, "name": req.name}))
}

pub async fn list_keys(
    state: &ControlState,
    caller: &Principal,
    app_id: &str,
    parts: &Parts,
) -> Result<Response<Body>, ControlError> {
    let page = Page::of(parts)?;
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    app_exists(&tx, org, app_id).await?;
    let body = page
        .fetch(
            &tx,
            "SELECT id, prefix, created_at::text, revoked_at::text FROM api_keys \
             WHERE organization_id = $1 AND app_id = $2 AND id > $3 ORDER BY id LIMIT $4",
            &[&org, &app_id],
            |r| {
                json!({
                    "id": r.get::<_, String>(0), "app_id": app_id, "prefix": r.get::<_, String>(1),
                    "created_at": r.get::<_, String>(2), "revoked_at": r.get::<_, Option<String>>(3),
                })
            },
        )
        .await?;
    tx.commit().await?;
    reply(StatusCode::OK, body)
}

pub async fn create_key(
    state: &ControlState,
    caller: &Principal,
    app_id: &str,
) -> Result<Response<Body>, ControlError> {
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    app_exists(&tx, org, app_id).await?;
    let (id, key) = super::provision::insert_key(&tx, org, app_id).await?;
    let prefix = &key.expose()[..12];
    audit(&tx, org, caller, "key_created", &id).await?;
    tx.commit().await?;
    reply(StatusCode::CREATED, json!({"id": id, "app_id": app_id, "key": key.expose(), "prefix": prefix}))
}

pub async fn revoke_key(
    state: &ControlState,
    caller: &Principal,
    app_id: &str,
    key_id: &str,
) -> Result<Response<Body>, ControlError> {
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let row = tx
        .query_opt(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) \
             WHERE organization_id = $1 AND app_id = $2 AND id = $3 RETURNING revoked_at::text",
            &[&org, &app_id, &key_id],
        )
        .await?
        .ok_or(ControlError::NotFound("key"))?;
    audit(&tx, org, caller, "key_revoked", key_id).await?;
    tx.commit().await?;
    reply(StatusCode::OK, json!({"id": key_id, "app_id": app_id, "revoked_at": row.get::<_, String>(0)}))
}

async fn app_exists(tx: &crate::db::TenantTx, org: &str, app_id: &str) -> Result<(), ControlError> {
    tx.query_opt("SELECT 1 FROM apps WHERE organization_id = $1 AND id = $2", &[&org, &app_id])
        .await?
        .map(|_| ())
        .ok_or(ControlError::NotFound("app"))
}

/// An audit row in the caller's organisation, in the same transaction as the change.
pub(super) async fn audit(
    tx: &crate::db::TenantTx,
    org: &str,
    caller: &Principal,
    action: &str,
    target: &str,
) -> Result<(), ControlError> {
    tx.execute(
        "INSERT INTO audit_log (organization_id, actor, action, target) VALUES ($1, $2, $3, $4)",
        &[&org, &caller.actor(), &action, &target],
    )
    .await?;
    Ok(())
}
