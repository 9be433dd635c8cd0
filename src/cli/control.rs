//! Control-plane commands against PostgreSQL (`DATABASE_URL`, the service role):
//! `edge org create`, `edge key create`, `edge import-tenants`.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use super::{fail, load_config};
use crate::config::Config;
use crate::control::provision::{self, NewOrganization};
use crate::db::Db;
use crate::tenant::{load_tenants_file, SnapshotBuilder};

fn database(config: &Config) -> Result<Db, ExitCode> {
    let Some(pg) = &config.postgres else {
        return Err(fail("invalid configuration: DATABASE_URL: required for this command"));
    };
    Db::new(pg).map_err(|e| fail(&format!("DATABASE_URL: {e}")))
}

fn config() -> Result<Config, ExitCode> {
    let vars: HashMap<String, String> = std::env::vars().collect();
    load_config(&vars)
}

/// The organisation, its super_admin (with a one-time set-password token), a default app and key.
pub async fn org_create(name: &str, subdomain: &str, admin_email: &str, tier: &str) -> ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(tier) = config.tiers.get(tier).map(|t| t.name) else {
        return fail(&format!("--tier: {tier:?} is not a tier"));
    };
    let db = match database(&config) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let new = NewOrganization { name, subdomain, admin_email, password_hash: None, tier, actor: "operator" };
    match provision::organization(&db, new).await {
        Ok(p) => {
            println!("organization: {}", p.org_id);
            println!(
                "admin: {} ({admin_email}); set-password token (shown once): {}",
                p.user_id,
                p.set_password_token.unwrap_or_default()
            );
            println!("app: {}", p.app_id);
            println!("key: {} (shown once; id {})", p.key.expose(), p.key_id);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("org create: {}", crate::error::Error::from(e).problem().message)),
    }
}

/// With `DATABASE_URL`: a key for the app in PostgreSQL (the app is created if missing).
pub async fn key_create(org: &str, app: &str) -> ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let db = match database(&config) {
        Ok(db) => db,
        Err(code) => return code,
    };
    match provision::key(&db, org, app).await {
        Ok((id, key)) => {
            println!("key: {} (shown once; id {id}, app {app}, organization {org})", key.expose());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("key create: {}", crate::error::Error::from(e).problem().message)),
    }
}

/// Moves a tenants file into PostgreSQL, keeping ids and key hashes; safe to run again.
pub async fn import_tenants(file: &Path) -> ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let snapshot = match load_tenants_file(file, &config.tiers, SnapshotBuilder::default()) {
        Ok(s) => s,
        Err(e) => return fail(&format!("import-tenants: {e}")),
    };
    let db = match database(&config) {
        Ok(db) => db,
        Err(code) => return code,
    };
    match provision::import(&db, &snapshot, |line| eprintln!("import: {line}")).await {
        Ok(done) => {
            println!(
                "imported {} organizations and {} keys; {} organizations were already there",
                done.organizations, done.keys, done.unchanged
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("import-tenants: {}", crate::error::Error::from(e).problem().message)),
    }
}
