//! `/api/v1/users`: invite, list, change role, remove; `POST /users/me/password`;
//! and `POST /auth/set-password` for an invited user.
//!
//! An invitation creates the user without a password and a one-time token
//! (`<organization id>.<secret>`, stored as SHA-256, valid 7 days) that the
//! inviting admin receives and a mailer finds in `mail_outbox`. A role change
//! or a removal stamps `tokens_valid_after`: the registry feed makes every
//! node refuse the user's older tokens within a second, and their refresh
//! tokens are revoked. Only a `super_admin` grants or takes `super_admin`, and
//! the last one cannot be demoted or removed. Removed users stay as
//! tombstones so that their tokens stay refused; their email is free again.

use std::net::IpAddr;

use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::apps::audit;
use super::orgs::{validate_email, validate_password};
use super::{ids, password, reply, roles, ControlError, ControlState, Page};
use crate::auth::{Credential, Principal};
use crate::db::{DbError, TenantTx};
use crate::http::response::Body;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    email: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    token: String,
    password: String,
}

pub async fn list(state: &ControlState, caller: &Principal, parts: &Parts) -> Result<Response<Body>, ControlError> {
    let page = Page::of(parts)?;
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let body = page
        .fetch(
            &tx,
            "SELECT id, email, role, created_at::text, password_hash IS NULL FROM users \
             WHERE organization_id = $1 AND removed_at IS NULL AND id > $2 ORDER BY id LIMIT $3",
            &[&org],
            |r| {
                let status = if r.get::<_, bool>(4) { "invited" } else { "active" };
                json!({"id": r.get::<_, String>(0), "email": r.get::<_, String>(1), "role": r.get::<_, String>(2),
                       "created_at": r.get::<_, String>(3), "status": status})
            },
        )
        .await?;
    tx.commit().await?;
    reply(StatusCode::OK, body)
}

pub async fn invite(state: &ControlState, caller: &Principal, req: Invite) -> Result<Response<Body>, ControlError> {
    validate_email(&req.email)?;
    may_grant(caller, &req.role)?;
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    lock_organization(&tx, org).await?;
    if let Some(limit) = caller.org.tier.users {
        let count: i64 =
            tx.query("SELECT count(*) FROM users WHERE organization_id = $1 AND removed_at IS NULL", &[&org]).await?[0]
                .get(0);
        if count >= i64::from(limit) {
            return Err(ControlError::TierLimit { what: "users", limit, tier: caller.org.tier.name });
        }
    }
    let id = ids::new_id("usr");
    let inserted = tx
        .execute(
            "INSERT INTO users (organization_id, id, email, role) VALUES ($1, $2, $3, $4)",
            &[&org, &id, &req.email, &req.role],
        )
        .await;
    match inserted {
        Err(DbError::Conflict { .. }) => return Err(ControlError::Conflict("email")),
        other => other?,
    };
    let token = super::provision::invitation(&tx, org, &id, &req.email).await?;
    audit(&tx, org, caller, "user_invited", &id).await?;
    tx.commit().await?;
    reply(
        StatusCode::CREATED,
        json!({"user": {"id": id, "email": req.email, "role": req.role, "status": "invited"}, "set_password_token": token}),
    )
}

pub async fn change_role(
    state: &ControlState,
    caller: &Principal,
    user_id: &str,
    req: RoleChange,
) -> Result<Response<Body>, ControlError> {
    may_grant(caller, &req.role)?;
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    lock_organization(&tx, org).await?;
    let current = current_role(&tx, org, user_id).await?;
    may_grant(caller, &current)?;
    if current == "super_admin" && req.role != "super_admin" {
        last_super_admin_stays(&tx, org).await?;
    }
    tx.execute(
        "UPDATE users SET role = $3, tokens_valid_after = now(), updated_at = now() WHERE organization_id = $1 AND id = $2",
        &[&org, &user_id, &req.role],
    )
    .await?;
    end_sessions(&tx, user_id).await?;
    audit(&tx, org, caller, "user_role_changed", user_id).await?;
    tx.commit().await?;
    reply(StatusCode::OK, json!({"id": user_id, "role": req.role, "tokens_revoked": true}))
}

pub async fn remove(state: &ControlState, caller: &Principal, user_id: &str) -> Result<Response<Body>, ControlError> {
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    lock_organization(&tx, org).await?;
    let current = current_role(&tx, org, user_id).await?;
    may_grant(caller, &current)?;
    if current == "super_admin" {
        last_super_admin_stays(&tx, org).await?;
    }
    tx.execute(
        "UPDATE users SET removed_at = now(), tokens_valid_after = now(), password_hash = NULL, updated_at = now() \
         WHERE organization_id = $1 AND id = $2",
        &[&org, &user_id],
    )
    .await?;
    end_sessions(&tx, user_id).await?;
    audit(&tx, org, caller, "user_removed", user_id).await?;
    tx.commit().await?;
    reply(StatusCode::OK, json!({"id": user_id, "removed": true}))
}

/// The caller's own password; their refresh tokens are revoked (other devices log in again).
pub async fn change_own_password(
    state: &ControlState,
    caller: &Principal,
    client: IpAddr,
    req: PasswordChange,
) -> Result<Response<Body>, ControlError> {
    let Credential::Jwt(claims) = &caller.credential else {
        return Err(ControlError::Invalid { field: "credential", reason: "must be a user's token" });
    };
    validate_password(&req.new_password)?;
    let (org, user) = (caller.org.id.as_str(), claims.user_id.as_str());
    let db = state.db()?;
    let tx = db.tenant(org).await?;
    let stored: Option<String> = tx
        .query_opt(
            "SELECT password_hash FROM users WHERE organization_id = $1 AND id = $2 AND removed_at IS NULL",
            &[&org, &user],
        )
        .await?
        .ok_or(ControlError::NotFound("user"))?
        .get(0);
    // No connection is held while hashing.
    drop(tx);
    if !password::verify(req.current_password, stored).await {
        state.audit.record(org, &caller.actor(), "password_change_failed", user, Some(client));
        return Err(ControlError::InvalidCredentials);
    }
    let hash = password::hash(req.new_password).await;
    let tx = db.tenant(org).await?;
    tx.execute(
        "UPDATE users SET password_hash = $3, updated_at = now() WHERE organization_id = $1 AND id = $2",
        &[&org, &user, &hash],
    )
    .await?;
    end_sessions(&tx, user).await?;
    audit(&tx, org, caller, "password_changed", user).await?;
    tx.commit().await?;
    reply(StatusCode::OK, json!({"id": user, "password_changed": true}))
}

/// An invited user sets a password with the one-time token from the invitation.
pub async fn set_password(
    state: &ControlState,
    client: IpAddr,
    req: SetPassword,
) -> Result<Response<Body>, ControlError> {
    validate_password(&req.password)?;
    let (org, secret) = req.token.rsplit_once('.').ok_or(ControlError::InvalidCredentials)?;
    if org.is_empty() || org.len() > 64 || secret.len() != 64 {
        return Err(ControlError::InvalidCredentials);
    }
    let token_hash: [u8; 32] = Sha256::digest(req.token.as_bytes()).into();
    let hash = password::hash(req.password).await;
    let tx = state.db()?.tenant(org).await?;
    let user: String = tx
        .query_opt(
            "UPDATE user_invites SET used_at = now() \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id",
            &[&token_hash.as_slice()],
        )
        .await?
        .ok_or(ControlError::InvalidCredentials)?
        .get(0);
    let updated = tx
        .execute(
            "UPDATE users SET password_hash = $3, updated_at = now() \
             WHERE organization_id = $1 AND id = $2 AND removed_at IS NULL",
            &[&org, &user, &hash],
        )
        .await?;
    if updated == 0 {
        return Err(ControlError::InvalidCredentials);
    }
    tx.commit().await?;
    state.audit.record(org, &format!("user:{user}"), "password_set", &user, Some(client));
    reply(StatusCode::OK, json!({"id": user, "password_set": true}))
}

/// Only a `super_admin` (or the operator) grants, changes or removes `super_admin`.
fn may_grant(caller: &Principal, role: &str) -> Result<(), ControlError> {
    if roles::permissions(role).is_none() {
        return Err(ControlError::Invalid { field: "role", reason: "is not super_admin, admin, analyst or viewer" });
    }
    let is_super = match &caller.credential {
        Credential::Operator => true,
        Credential::Jwt(claims) => claims.role == "super_admin",
        Credential::SdkKey { .. } => false,
    };
    if role == "super_admin" && !is_super {
        return Err(ControlError::Forbidden("only a super_admin manages super_admins"));
    }
    Ok(())
}

async fn lock_organization(tx: &TenantTx, org: &str) -> Result<(), ControlError> {
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", &[&org])
        .await?
        .map(|_| ())
        .ok_or(ControlError::NotFound("organization"))
}

async fn current_role(tx: &TenantTx, org: &str, user_id: &str) -> Result<String, ControlError> {
    Ok(tx
        .query_opt(
            "SELECT role FROM users WHERE organization_id = $1 AND id = $2 AND removed_at IS NULL",
            &[&org, &user_id],
        )
        .await?
        .ok_or(ControlError::NotFound("user"))?
        .get(0))
}

async fn last_super_admin_stays(tx: &TenantTx, org: &str) -> Result<(), ControlError> {
    let supers: i64 = tx
        .query(
            "SELECT count(*) FROM users WHERE organization_id = $1 AND role = 'super_admin' AND removed_at IS NULL",
            &[&org],
        )
        .await?[0]
        .get(0);
    if supers <= 1 {
        return Err(ControlError::LastSuperAdmin);
    }
    Ok(())
}

async fn end_sessions(tx: &TenantTx, user_id: &str) -> Result<(), ControlError> {
    tx.execute("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", &[&user_id])
        .await?;
    Ok(())
}
