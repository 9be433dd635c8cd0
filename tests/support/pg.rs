//! A fresh PostgreSQL database per test, migrated, with its own service role; shared by the
//! control-plane and isolation tests (`#[path]`-included, with `common` beside it).
#![allow(dead_code)] // each test binary uses part of it

use std::time::Duration;

use edge::config::PostgresConfig;
use edge::db::Db;
use edge::tenant::SdkKey;
use tokio_postgres::{Client, NoTls};

use super::common;
use edge::control::feed::FEED_APPLICATION_NAME;

/// Roles are cluster-wide: migrations of the tests' databases run one at a time.
pub static MIGRATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database, migrated, with its own service role.
pub struct Pg {
    pub name: String,
    pub base: String,
    pub owner: Client,
    pub owner_config: PostgresConfig,
    pub service_config: PostgresConfig,
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("postgres connects");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

impl Pg {
    pub async fn fresh() -> Option<Pg> {
        let base = common::postgres_url()?;
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let name = format!("edge_t{}", &suffix[20..]);
        let role = format!("svc_{}", &suffix[20..]);
        connect(&base).await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let host = prefix.rsplit_once('@').map_or(prefix.trim_start_matches("postgres://"), |(_, h)| h);
        let owner_config = PostgresConfig {
            url: format!("{prefix}/{name}"),
            pool_size: 4,
            timeout: Duration::from_secs(5),
            service_role: role.clone(),
            service_password: Some("service-password".into()),
            registry_poll: Duration::from_secs(1),
        };
        {
            let _one_at_a_time = MIGRATIONS.lock().await;
            edge::migrate::postgres::run_postgres(&owner_config, |_| {}).await.expect("migrations apply");
        }
        let service_config =
            PostgresConfig { url: format!("postgres://{role}:service-password@{host}/{name}"), ..owner_config.clone() };
        let owner = connect(&owner_config.url).await;
        Some(Pg { name, base, owner, owner_config, service_config })
    }

    pub fn service_db(&self) -> Db {
        Db::new(&self.service_config).unwrap()
    }

    /// Two organisations with a row in every tenant table, written as the owner (a superuser).
    pub async fn seed(&self, orgs: &[&str]) -> Vec<SdkKey> {
        let mut keys = Vec::new();
        for (i, org) in orgs.iter().enumerate() {
            let key = SdkKey::generate();
            self.owner
                .batch_execute(&format!(
                    "INSERT INTO organizations (id, name, subdomain, tier) VALUES ('{org}', 'Org {i}', 'sub{i}', 'starter');
                     INSERT INTO users (organization_id, id, email, password_hash, role)
                       VALUES ('{org}', 'usr_{i}', 'user{i}@example.com', 'secret-hash-{i}', 'super_admin');
                     INSERT INTO apps (organization_id, id, name) VALUES ('{org}', 'app_{i}', 'App of {org}');
                     INSERT INTO api_keys (organization_id, id, app_id, key_hash, prefix)
                       VALUES ('{org}', 'key_{i}', 'app_{i}', '\\x{}', 'edk_');
                     INSERT INTO tenant_branding (organization_id, primary_color, custom_domain)
                       VALUES ('{org}', '#102030', 'events.org{i}.example');
                     INSERT INTO tenant_usage (organization_id, metric_date, events_count) VALUES ('{org}', '2026-11-01', 5);
                     INSERT INTO audit_log (organization_id, actor, action) VALUES ('{org}', 'test', 'seeded');
                     INSERT INTO refresh_tokens (organization_id, id, user_id, token_hash, expires_at)
                       VALUES ('{org}', 'rt_{i}', 'usr_{i}', '\\x{}', now() + interval '1 day');
                     INSERT INTO user_invites (organization_id, user_id, token_hash, expires_at)
                       VALUES ('{org}', 'usr_{i}', '\\x{}', now() + interval '1 day');
                     INSERT INTO mail_outbox (organization_id, to_email, kind) VALUES ('{org}', 'user{i}@example.com', 'invite');",
                    key.hash().to_hex(),
                    SdkKey::generate().hash().to_hex(),
                    SdkKey::generate().hash().to_hex()
                ))
                .await
                .unwrap();
            keys.push(key);
        }
        keys
    }

    /// Until `n` registry feeds listen on this database (a change before that is only seen by
    /// the version poll). A feed's first statement is its LISTEN: any statement means it ran.
    pub async fn wait_for_listeners(&self, n: i64) {
        let listening = async {
            loop {
                let seen: i64 = self
                    .owner
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2 \
                         AND query <> ''",
                        &[&FEED_APPLICATION_NAME, &self.name],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if seen >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), listening).await.expect("the feeds listen");
    }

    pub async fn drop(self) {
        drop(self.owner);
        let admin = connect(&self.base).await;
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

/// An edge on this database with the test secret and operator token.
pub fn api_edge(pg: &Pg, dir: &std::path::Path, extra: &[(&str, String)]) -> common::EdgeProcess {
    let mut envs = vec![
        ("DATABASE_URL", pg.service_config.url.clone()),
        ("EDGE_SPOOL_DIR", dir.display().to_string()),
        ("JWT_SECRET", common::JWT_SECRET.to_string()),
        ("EDGE_ADMIN_TOKEN", common::OPERATOR_TOKEN.to_string()),
    ];
    envs.extend(extra.iter().cloned());
    common::EdgeProcess::spawn_with(&["--dev"], &envs)
}

/// A node of a fleet on this database and `redis`: named `name`, its data under `dir/name`.
pub fn fleet_edge(
    pg: &Pg,
    dir: &std::path::Path,
    name: &str,
    redis: &str,
    extra: &[(&str, String)],
) -> common::EdgeProcess {
    let mut envs = vec![("REDIS_URL", redis.to_string()), ("EDGE_NODE_ID", name.to_string())];
    envs.extend(extra.iter().cloned());
    api_edge(pg, &dir.join(name), &envs)
}

impl Pg {
    /// Everything of `org` a cross-tenant write could change, as text, for before/after checks.
    pub async fn state_of(&self, org: &str) -> String {
        let queries = [
            "SELECT name || status || tier || subdomain FROM organizations WHERE id = $1",
            "SELECT id || role || coalesce(removed_at::text, '') || coalesce(password_hash, '') FROM users WHERE organization_id = $1 ORDER BY id",
            "SELECT id || name FROM apps WHERE organization_id = $1 ORDER BY id",
            "SELECT id || app_id || coalesce(revoked_at::text, '') FROM api_keys WHERE organization_id = $1 ORDER BY id",
            "SELECT coalesce(primary_color, '') || coalesce(custom_domain, '') FROM tenant_branding WHERE organization_id = $1",
            "SELECT count(*)::text FROM refresh_tokens WHERE organization_id = $1 AND revoked_at IS NULL",
        ];
        let mut out = String::new();
        for q in queries {
            for row in self.owner.query(q, &[&org]).await.unwrap() {
                out.push_str(&row.get::<_, String>(0));
                out.push('\n');
            }
        }
        out
    }
}
