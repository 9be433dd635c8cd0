//! `POST /api/v1/auth/login`, `/auth/refresh` and `/auth/logout`.
//!
//! Login finds the account by email (the private schema's `login_lookup`, the
//! one place a password hash leaves its table) and checks the password with
//! argon2id. An unknown email is checked against a stand-in hash, and both
//! failures are audited through the same queue, so the two cost the same and
//! answer the same: 401 `invalid_credentials`. Too many failures for the
//! account or the client address: 429 with `Retry-After`, whatever the
//! password.
//!
//! The access token is a JWT the edge itself verifies, carrying the role's
//! permissions: signed with `EDGE_JWT_SIGNING_KEY` (EdDSA/ES256, with a `kid`)
//! when set, else HS256 with `JWT_SECRET`. The refresh token is
//! `<organization id>.<secret>`, stored as SHA-256 and rotated on each use;
//! presenting a rotated (revoked) one again revokes every refresh token of its
//! user, as a stolen token would be.

use std::net::IpAddr;

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ids, password, reply, roles, ControlError, ControlState};
use crate::auth::jwt::Claims;
use crate::http::response::Body;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    email: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    refresh_token: String,
}

pub async fn login(state: &ControlState, client: IpAddr, req: Login) -> Result<Response<Body>, ControlError> {
    let db = state.db()?;
    if req.email.len() > 254 || req.password.len() > password::MAX_BYTES {
        return Err(ControlError::InvalidCredentials);
    }
    state.logins.check(&req.email, client).map_err(|retry_after| ControlError::TooManyAttempts { retry_after })?;
    let account = db.cross_tenant("SELECT * FROM edge_private.login_lookup($1)", &[&req.email]).await?;
    let account = account.first().map(|r| {
        let (org, user, hash, role): (String, String, Option<String>, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        (org, user, hash, role)
    });
    let phc = account.as_ref().and_then(|(_, _, hash, _)| hash.clone());
    let matched = password::verify(req.password, phc).await;
    let (org, user, role) = match account {
        Some((org, user, _, role)) if matched => (org, user, role),
        other => {
            state.logins.failed(&req.email, client);
            let org = other.as_ref().map_or("", |(org, ..)| org.as_str());
            state.audit.record(org, &format!("email:{}", req.email), "login_failed", "", Some(client));
            return Err(ControlError::InvalidCredentials);
        }
    };
    state.logins.succeeded(&req.email);
    let tx = db.tenant(&org).await?;
    let status: Option<String> =
        tx.query_opt("SELECT status FROM organizations WHERE id = $1", &[&org]).await?.map(|r| r.get(0));
    if status.as_deref() != Some("active") {
        return Err(ControlError::OrganizationInactive);
    }
    let answer = issue(state, &tx, &org, &user, &role).await?;
    tx.commit().await?;
    state.audit.record(&org, &format!("user:{user}"), "login", &user, Some(client));
    Ok(answer)
}

pub async fn refresh(state: &ControlState, client: IpAddr, req: Refresh) -> Result<Response<Body>, ControlError> {
    let db = state.db()?;
    let (org, hash) = parse_refresh(&req.refresh_token)?;
    let tx = db.tenant(org).await?;
    let row = tx
        .query_opt(
            "SELECT r.id, r.user_id, r.revoked_at IS NOT NULL, r.expires_at < now(), u.role \
             FROM refresh_tokens r JOIN users u ON u.organization_id = r.organization_id AND u.id = r.user_id \
             WHERE r.token_hash = $1 FOR UPDATE OF r",
            &[&hash.as_slice()],
        )
        .await?
        .ok_or(ControlError::InvalidCredentials)?;
    let (id, user, revoked, expired, role): (String, String, bool, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if revoked {
        // A rotated token used again: someone holds a copy. End every session of the user.
        tx.execute("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", &[&user])
            .await?;
        tx.commit().await?;
        state.audit.record(org, &format!("user:{user}"), "refresh_token_reused", &id, Some(client));
        return Err(ControlError::InvalidCredentials);
    }
    if expired {
        return Err(ControlError::InvalidCredentials);
    }
    tx.execute("UPDATE refresh_tokens SET revoked_at = now() WHERE id = $1", &[&id]).await?;
    let answer = issue(state, &tx, org, &user, &role).await?;
    tx.commit().await?;
    Ok(answer)
}

pub async fn logout(state: &ControlState, client: IpAddr, req: Refresh) -> Result<Response<Body>, ControlError> {
    let db = state.db()?;
    let (org, hash) = parse_refresh(&req.refresh_token)?;
    let tx = db.tenant(org).await?;
    let user: Option<String> = tx
        .query_opt(
            "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE token_hash = $1 RETURNING user_id",
            &[&hash.as_slice()],
        )
        .await?
        .map(|r| r.get(0));
    tx.commit().await?;
    let user = user.ok_or(ControlError::InvalidCredentials)?;
    state.audit.record(org, &format!("user:{user}"), "logout", &user, Some(client));
    reply(StatusCode::OK, json!({"logged_out": true}))
}

/// A new access token and refresh token for `user`, the refresh token stored in `tx`.
async fn issue(
    state: &ControlState,
    tx: &crate::db::TenantTx,
    org: &str,
    user: &str,
    role: &str,
) -> Result<Response<Body>, ControlError> {
    let signer = state.signer.as_ref().ok_or(ControlError::LoginUnavailable)?;
    let permissions = roles::permissions(role).unwrap_or(&[]);
    let now = state.clock.unix_secs();
    let ttl = state.login.access_ttl.as_secs();
    let claims = Claims { role: role.to_string(), ..Claims::new(user, org, permissions, now, ttl) };
    let access = signer.sign(&claims);
    let secret_part = hex::encode(rand::random::<[u8; 32]>());
    let refresh = format!("{org}.{secret_part}");
    let hash: [u8; 32] = Sha256::digest(refresh.as_bytes()).into();
    let expires = state.login.refresh_ttl.as_secs() as f64;
    tx.execute(
        "INSERT INTO refresh_tokens (organization_id, id, user_id, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        &[&org, &ids::new_id("rt"), &user, &hash.as_slice(), &expires],
    )
    .await?;
    reply(
        StatusCode::OK,
        json!({
            "access_token": access, "token_type": "Bearer", "expires_in": ttl,
            "refresh_token": refresh, "refresh_expires_in": state.login.refresh_ttl.as_secs(),
            "user": {"id": user, "organization_id": org, "role": role, "permissions": permissions},
        }),
    )
}

/// The organisation a refresh token names, and the token's hash.
fn parse_refresh(token: &str) -> Result<(&str, [u8; 32]), ControlError> {
    let (org, secret) = token.rsplit_once('.').ok_or(ControlError::InvalidCredentials)?;
    if org.is_empty() || org.len() > 64 || secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ControlError::InvalidCredentials);
    }
    Ok((org, Sha256::digest(token.as_bytes()).into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn refresh_tokens_name_their_organisation() {
        let secret = "ab".repeat(32);
        let token = format!("org_1.{secret}");
        let (org, _) = super::parse_refresh(&token).unwrap();
        assert_eq!(org, "org_1");
        assert!(super::parse_refresh("org_1.short").is_err());
        assert!(super::parse_refresh(&secret).is_err());
        assert!(super::parse_refresh(&format!(".{secret}")).is_err());
    }
}
