//! Creating organisations and keys in PostgreSQL, for the sign-up route and the
//! command line (`edge org create`, `edge key create`, `edge import-tenants`).
//! Each organisation is created in one transaction of its own tenant: the
//! organisation, its `super_admin`, a default app and that app's first key; a
//! failure anywhere leaves nothing.

use sha2::{Digest, Sha256};

use super::orgs::{validate_email, validate_name};
use super::{ids, ControlError};
use crate::db::{Db, DbError, TenantTx};
use crate::tenant::{KeyHash, OrgStatus, SdkKey, Snapshot};

/// Subdomains that name the platform, not a tenant.
const RESERVED_SUBDOMAINS: &[&str] = &["www", "api", "app", "admin", "dashboard", "edge", "status", "mail"];

pub struct NewOrganization<'a> {
    pub name: &'a str,
    pub subdomain: &'a str,
    pub admin_email: &'a str,
    /// `None`: the admin gets a one-time set-password token instead.
    pub password_hash: Option<String>,
    pub tier: &'static str,
    /// Who creates it, for the audit row.
    pub actor: &'a str,
}

pub struct Provisioned {
    pub org_id: String,
    pub subdomain: String,
    pub user_id: String,
    pub app_id: String,
    pub key_id: String,
    pub key: SdkKey,
    pub set_password_token: Option<String>,
}

pub async fn organization(db: &Db, new: NewOrganization<'_>) -> Result<Provisioned, ControlError> {
    validate_name(new.name)?;
    let subdomain = new.subdomain.trim().to_ascii_lowercase();
    if !is_subdomain(&subdomain) || RESERVED_SUBDOMAINS.contains(&subdomain.as_str()) {
        return Err(ControlError::Invalid {
            field: "subdomain",
            reason: "must be 1 to 63 lower-case letters, digits or inner hyphens, not reserved",
        });
    }
    validate_email(new.admin_email)?;
    let (org_id, user_id, app_id) = (ids::new_id("org"), ids::new_id("usr"), ids::new_id("app"));
    let tx = db.tenant(&org_id).await?;
    let created = async {
        tx.execute(
            "INSERT INTO organizations (id, name, subdomain, tier) VALUES ($1, $2, $3, $4)",
            &[&org_id, &new.name, &subdomain, &new.tier],
        )
        .await?;
        tx.execute(
            "INSERT INTO users (organization_id, id, email, password_hash, role) VALUES ($1, $2, $3, $4, 'super_admin')",
            &[&org_id, &user_id, &new.admin_email, &new.password_hash],
        )
        .await?;
        tx.execute("INSERT INTO apps (organization_id, id, name) VALUES ($1, $2, 'Default app')", &[&org_id, &app_id])
            .await?;
        let (key_id, key) = insert_key(&tx, &org_id, &app_id).await?;
        let token = match new.password_hash {
            Some(_) => None,
            None => Some(invitation(&tx, &org_id, &user_id, new.admin_email).await?),
        };
        tx.execute(
            "INSERT INTO audit_log (organization_id, actor, action, target) VALUES ($1, $2, 'organization_created', $1)",
            &[&org_id, &new.actor],
        )
        .await?;
        Ok::<_, DbError>((key_id, key, token))
    }
    .await;
    let (key_id, key, set_password_token) = match created {
        Err(DbError::Conflict { constraint }) => {
            let what = if constraint.contains("subdomain") { "subdomain" } else { "email" };
            return Err(ControlError::Conflict(what));
        }
        other => other?,
    };
    tx.commit().await?;
    Ok(Provisioned { org_id, subdomain, user_id, app_id, key_id, key, set_password_token })
}

/// A new key for `app_id` of `org`: its id and the key (its secret exists only here).
pub(super) async fn insert_key(tx: &TenantTx, org: &str, app_id: &str) -> Result<(String, SdkKey), DbError> {
    let (id, key) = (ids::new_id("key"), SdkKey::generate());
    let prefix = &key.expose()[..12];
    tx.execute(
        "INSERT INTO api_keys (organization_id, id, app_id, key_hash, prefix) VALUES ($1, $2, $3, $4, $5)",
        &[&org, &id, &app_id, &key.hash().as_bytes().as_slice(), &prefix],
    )
    .await?;
    Ok((id, key))
}

/// A one-time set-password token for `user` (7 days), also queued for the mailer.
pub(super) async fn invitation(tx: &TenantTx, org: &str, user: &str, email: &str) -> Result<String, DbError> {
    let token = format!("{org}.{}", hex::encode(rand::random::<[u8; 32]>()));
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    tx.execute(
        "INSERT INTO user_invites (organization_id, user_id, token_hash, expires_at) \
         VALUES ($1, $2, $3, now() + interval '7 days')",
        &[&org, &user, &hash.as_slice()],
    )
    .await?;
    let payload = serde_json::json!({"user_id": user, "set_password_token": token}).to_string();
    tx.execute(
        "INSERT INTO mail_outbox (organization_id, to_email, kind, payload) VALUES ($1, $2, 'invite', ($3::text)::jsonb)",
        &[&org, &email, &payload],
    )
    .await?;
    Ok(token)
}

/// `edge key create` against PostgreSQL: a new key for `app_id`, the app created if missing.
pub async fn key(db: &Db, org: &str, app_id: &str) -> Result<(String, SdkKey), ControlError> {
    let tx = db.tenant(org).await?;
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1", &[&org])
        .await?
        .ok_or(ControlError::NotFound("organization"))?;
    tx.execute(
        "INSERT INTO apps (organization_id, id, name) VALUES ($1, $2, $2) ON CONFLICT DO NOTHING",
        &[&org, &app_id],
    )
    .await?;
    let created = insert_key(&tx, org, app_id).await?;
    tx.execute(
        "INSERT INTO audit_log (organization_id, actor, action, target) VALUES ($1, 'operator', 'key_created', $2)",
        &[&org, &created.0],
    )
    .await?;
    tx.commit().await?;
    Ok(created)
}

/// What `edge import-tenants` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub organizations: usize,
    pub keys: usize,
    /// Already there (same id, same key hash): left as they are.
    pub unchanged: usize,
}

/// Moves a tenants file's organisations and key hashes into PostgreSQL, keeping their ids:
/// one transaction per organisation, idempotent (what exists is left as it is).
pub async fn import(db: &Db, snapshot: &Snapshot, progress: impl Fn(&str)) -> Result<Imported, ControlError> {
    let mut done = Imported::default();
    let mut orgs: Vec<_> = snapshot.orgs().collect();
    orgs.sort_by(|a, b| a.id.cmp(&b.id));
    for (i, org) in orgs.iter().enumerate() {
        let id = org.id.as_str();
        let tx = db.tenant(id).await?;
        let status = match org.status {
            OrgStatus::Active => "active",
            OrgStatus::Suspended => "suspended",
            OrgStatus::Deleted => "deleted",
        };
        let name = if org.name.is_empty() { id } else { org.name.as_str() };
        let inserted = tx
            .execute(
                "INSERT INTO organizations (id, name, subdomain, tier, status) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &name, &org.subdomain, &org.tier.name, &status],
            )
            .await;
        match inserted {
            Err(DbError::Conflict { .. }) => return Err(ControlError::Conflict("subdomain")),
            Ok(0) => done.unchanged += 1,
            other => {
                other?;
                done.organizations += 1;
            }
        }
        if let Some(domain) = &org.custom_domain {
            tx.execute(
                "INSERT INTO tenant_branding (organization_id, custom_domain) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&id, domain],
            )
            .await?;
        }
        let keys: Vec<(&KeyHash, &str)> =
            snapshot.keys().filter(|(_, g)| g.org.id == org.id).map(|(h, g)| (h, &*g.app_id)).collect();
        for (hash, app) in keys {
            tx.execute(
                "INSERT INTO apps (organization_id, id, name) VALUES ($1, $2, $2) ON CONFLICT DO NOTHING",
                &[&id, &app],
            )
            .await?;
            let n = tx
                .execute(
                    "INSERT INTO api_keys (organization_id, id, app_id, key_hash, prefix) \
                     VALUES ($1, $2, $3, $4, 'imported') ON CONFLICT (key_hash) DO NOTHING",
                    &[&id, &ids::new_id("key"), &app, &hash.as_bytes().as_slice()],
                )
                .await?;
            if n == 1 {
                done.keys += 1;
            }
        }
        tx.commit().await?;
        progress(&format!("[{}/{}] {id}", i + 1, orgs.len()));
    }
    Ok(done)
}

pub(super) fn is_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}
