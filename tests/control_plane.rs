//! The control plane on a real PostgreSQL: migrations and roles, Row-Level Security as the
//! service role sees it, the tenant transaction through a small pool, and the registry feed.

mod common;

#[path = "support/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge::clock::Clock;
use edge::config::PostgresConfig;
use edge::control::feed::{self, Feed, FeedStatus, FEED_APPLICATION_NAME};
use edge::db::{Db, DbError, RoleError, TENANT_TABLES};
use edge::plan::TierTable;
use edge::tenant::{Registry, SdkKey, SnapshotBuilder};
use pg::{api_edge, connect, Pg, MIGRATIONS};

#[tokio::test]
async fn migrations_are_idempotent_and_the_service_role_cannot_step_around_rls() {
    let Some(pg) = Pg::fresh().await else { return };
    let again = {
        let _one_at_a_time = MIGRATIONS.lock().await;
        edge::migrate::postgres::run_postgres(&pg.owner_config, |_| {}).await.unwrap()
    };
    assert_eq!((again.applied.len(), again.already), (0, edge::migrate::postgres::POSTGRES.len()));

    let row = pg
        .owner
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcanlogin, \
                    (SELECT count(*) FROM pg_class WHERE relowner = r.oid), pg_has_role(r.oid, 'edge_app', 'USAGE') \
             FROM pg_roles r WHERE rolname = $1",
            &[&pg.service_config.service_role],
        )
        .await
        .unwrap();
    let (superuser, bypass, login, owned, app): (bool, bool, bool, i64, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!((superuser, bypass, login, owned, app), (false, false, true, 0, true));

    // Every tenant table: RLS enabled and forced, with the tenant policy.
    for table in TENANT_TABLES {
        let row = pg
            .owner
            .query_one(
                "SELECT relrowsecurity, relforcerowsecurity, \
                        (SELECT count(*) FROM pg_policies WHERE tablename = $1 AND policyname = 'tenant_isolation') \
                 FROM pg_class WHERE relname = $1 AND relnamespace = 'public'::regnamespace",
                &[table],
            )
            .await
            .unwrap();
        let (enabled, forced, policies): (bool, bool, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((enabled, forced, policies), (true, true, 1), "{table}");
    }

    pg.service_db().check_service_role().await.expect("the service role is safe");
    // A role that owns a tenant table, or that bypasses RLS, is refused as well.
    let suffix = &pg.name[6..];
    let as_role = |role: &str| PostgresConfig {
        url: pg.service_config.url.replacen(&format!("{}:", pg.service_config.service_role), &format!("{role}:"), 1),
        ..pg.service_config.clone()
    };
    let (owner_role, bypass_role) = (format!("own_{suffix}"), format!("byp_{suffix}"));
    pg.owner
        .batch_execute(&format!(
            "CREATE ROLE {owner_role} LOGIN PASSWORD 'service-password'; ALTER TABLE tenant_usage OWNER TO {owner_role};
             CREATE ROLE {bypass_role} LOGIN BYPASSRLS PASSWORD 'service-password';"
        ))
        .await
        .unwrap();
    let owner_check = Db::new(&as_role(&owner_role)).unwrap().check_service_role().await;
    assert!(
        matches!(&owner_check, Err(RoleError::Unsafe { why, .. }) if why.contains("tenant_usage")),
        "{owner_check:?}"
    );
    let bypass_check = Db::new(&as_role(&bypass_role)).unwrap().check_service_role().await;
    assert!(
        matches!(&bypass_check, Err(RoleError::Unsafe { why, .. }) if why.contains("BYPASSRLS")),
        "{bypass_check:?}"
    );
    pg.owner.batch_execute("ALTER TABLE tenant_usage OWNER TO CURRENT_USER").await.unwrap();
    let as_owner = Db::new(&pg.owner_config).unwrap().check_service_role().await;
    assert!(matches!(&as_owner, Err(RoleError::Unsafe { why, .. }) if why.contains("superuser")), "{as_owner:?}");

    // The service role cannot lift the policies or become the functions' owner.
    let service = connect(&pg.service_config.url).await;
    for attempt in [
        "ALTER TABLE organizations DISABLE ROW LEVEL SECURITY",
        "SET ROLE edge_definer",
        "DROP POLICY tenant_isolation ON users",
        "SELECT edge_private.registry_changed()",
    ] {
        assert!(service.batch_execute(attempt).await.is_err(), "{attempt} must fail");
    }
    pg.drop().await;
}

#[tokio::test]
async fn with_no_tenant_set_every_tenant_table_shows_zero_rows_and_takes_none() {
    let Some(pg) = Pg::fresh().await else { return };
    pg.seed(&["org_a", "org_b"]).await;
    let service = connect(&pg.service_config.url).await;
    for table in TENANT_TABLES {
        let n: i64 = service.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "{table} without a tenant");
    }
    let e = service.batch_execute("INSERT INTO apps (organization_id, id, name) VALUES ('org_a', 'app_x', 'x')").await;
    assert_eq!(DbError::from(e.unwrap_err()), DbError::RowSecurity);

    // In org_a's transaction: org_a's rows only, and nothing can be written for org_b.
    let db = pg.service_db();
    let tx = db.tenant("org_a").await.unwrap();
    for table in TENANT_TABLES {
        let column = if *table == "organizations" { "id" } else { "organization_id" };
        let rows = tx.query(&format!("SELECT DISTINCT {column} FROM {table}"), &[]).await.unwrap();
        let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(seen, vec!["org_a".to_string()], "{table}");
    }
    let e = tx.execute("INSERT INTO apps (organization_id, id, name) VALUES ('org_b', 'app_y', 'y')", &[]).await;
    assert_eq!(e, Err(DbError::RowSecurity));
    drop(tx);
    let tx = db.tenant("org_a").await.unwrap();
    assert_eq!(tx.execute("UPDATE apps SET name = 'taken' WHERE organization_id = 'org_b'", &[]).await, Ok(0));
    assert_eq!(tx.execute("DELETE FROM users WHERE organization_id = 'org_b'", &[]).await, Ok(0));
    // Moving a row to another tenant fails WITH CHECK.
    let moved = tx.execute("UPDATE apps SET organization_id = 'org_b' WHERE id = 'app_0'", &[]).await;
    assert!(moved.is_err(), "{moved:?}");
    drop(tx);

    // The cross-tenant functions: every organisation, only the columns their callers need.
    let orgs = db.cross_tenant("SELECT * FROM edge_private.registry_organizations()", &[]).await.unwrap();
    assert_eq!(orgs.len(), 2);
    let columns: Vec<&str> = orgs[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(columns, ["id", "subdomain", "custom_domain", "tier", "status"]);
    let keys = db.cross_tenant("SELECT * FROM edge_private.registry_keys()", &[]).await.unwrap();
    let columns: Vec<&str> = keys[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!((keys.len(), columns), (2, vec!["organization_id", "app_id", "key_hash"]));
    let login = db.cross_tenant("SELECT * FROM edge_private.login_lookup($1)", &[&"USER1@example.com"]).await.unwrap();
    let columns: Vec<&str> = login[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(columns, ["organization_id", "user_id", "password_hash", "role"]);
    assert_eq!((login.len(), login[0].get::<_, String>(0)), (1, "org_b".to_string()));
    pg.owner.batch_execute("UPDATE users SET tokens_valid_after = now() WHERE id = 'usr_0'").await.unwrap();
    let revoked = db.cross_tenant("SELECT * FROM edge_private.registry_token_revocations()", &[]).await.unwrap();
    let columns: Vec<&str> = revoked[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!((revoked.len(), columns), (1, vec!["organization_id", "user_id", "tokens_valid_after"]));
    let version = db.cross_tenant("SELECT * FROM edge_private.registry_version_now()", &[]).await.unwrap();
    assert_eq!(version[0].columns().len(), 1);
    // The unscoped audit writer returns nothing, and writes only to the audit log.
    let wrote = db
        .cross_tenant("SELECT * FROM edge_private.audit_unscoped('', 'test', 'probe', '', NULL, '{}'::jsonb)", &[])
        .await
        .unwrap();
    assert_eq!(wrote[0].columns().len(), 1, "void");
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_four_keeps_sixty_four_concurrent_tenants_apart() {
    let Some(pg) = Pg::fresh().await else { return };
    let orgs: Vec<String> = (0..64).map(|i| format!("org_{i:02}")).collect();
    for (i, org) in orgs.iter().enumerate() {
        pg.owner
            .batch_execute(&format!(
                "INSERT INTO organizations (id, name, subdomain) VALUES ('{org}', '{org}', 's{i}');
                 INSERT INTO apps (organization_id, id, name) VALUES ('{org}', 'app_{i}', '{org}');"
            ))
            .await
            .unwrap();
    }
    let db = pg.service_db();
    let tasks: Vec<_> = orgs
        .iter()
        .enumerate()
        .map(|(i, org)| {
            let (db, org) = (db.clone(), org.clone());
            tokio::spawn(async move {
                for round in 0..5 {
                    let tx = db.tenant(&org).await.unwrap();
                    // A pause inside the transaction, so that the 64 overlap on 4 connections.
                    let rows = tx
                        .query(
                            "SELECT organization_id, name, current_setting('app.current_tenant') \
                             FROM apps, pg_sleep(0.002)",
                            &[],
                        )
                        .await
                        .unwrap();
                    assert_eq!(rows.len(), 1, "{org} sees one app");
                    let (owner, name, tenant): (String, String, String) =
                        (rows[0].get(0), rows[0].get(1), rows[0].get(2));
                    assert_eq!(
                        (owner.as_str(), name.as_str(), tenant.as_str()),
                        (org.as_str(), org.as_str(), org.as_str())
                    );
                    // Some transactions are abandoned: their connections must not come back dirty.
                    if (i + round) % 3 == 0 {
                        drop(tx);
                    } else {
                        tx.commit().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("no tenant saw another's rows");
    }
    // Outside any transaction the setting is gone from every pooled connection.
    for _ in 0..4 {
        let rows = db.cross_tenant("SELECT id FROM edge_private.registry_organizations() LIMIT 1", &[]).await.unwrap();
        assert_eq!(rows.len(), 1);
    }
    pg.drop().await;
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_follows_postgres_within_a_second_and_resyncs_after_losing_its_listener() {
    let Some(pg) = Pg::fresh().await else { return };
    pg.seed(&["org_a"]).await;
    let db = pg.service_db();
    let tiers = TierTable::default();
    let (snapshot, version) = feed::load(&db, &tiers, SnapshotBuilder::default()).await.unwrap();
    assert_eq!(snapshot.org_count(), 1);
    let registry = Arc::new(Registry::new(snapshot));
    let status = Arc::new(FeedStatus::default());
    let feed = Feed {
        db: db.clone(),
        config: pg.service_config.clone(),
        tiers,
        registry: registry.clone(),
        base: Arc::new(SnapshotBuilder::default),
        status,
        clock: Clock::system(),
        version,
    };
    let running = tokio::spawn(feed.run());
    // Wait for the listener to be connected.
    let listening = async {
        loop {
            let n: i64 = pg
                .owner
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&FEED_APPLICATION_NAME],
                )
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), listening).await.expect("the feed listens");

    // A new organisation with a key: served within a second.
    let key = SdkKey::generate();
    pg.owner
        .batch_execute(&format!(
            "INSERT INTO organizations (id, name, subdomain, tier) VALUES ('org_new', 'New', 'new', 'growth');
             INSERT INTO apps (organization_id, id, name) VALUES ('org_new', 'app_new', 'New app');
             INSERT INTO api_keys (organization_id, id, app_id, key_hash, prefix)
               VALUES ('org_new', 'key_new', 'app_new', '\\x{}', 'edk_');",
            key.hash().to_hex()
        ))
        .await
        .unwrap();
    let hash = key.hash();
    let added = wait_until("new key", Duration::from_secs(1), || registry.snapshot().key(&hash).is_some()).await;

    // Revoked: refused within a second.
    pg.owner.batch_execute("UPDATE api_keys SET revoked_at = now() WHERE id = 'key_new'").await.unwrap();
    let revoked = wait_until("revocation", Duration::from_secs(1), || registry.snapshot().key(&hash).is_none()).await;

    // Suspended and re-tiered.
    pg.owner
        .batch_execute("UPDATE organizations SET status = 'suspended', tier = 'enterprise' WHERE id = 'org_a'")
        .await
        .unwrap();
    let suspended = wait_until("suspension", Duration::from_secs(1), || {
        registry
            .snapshot()
            .org("org_a")
            .is_some_and(|o| o.status == edge::tenant::OrgStatus::Suspended && o.tier.name == "enterprise")
    })
    .await;

    // The listener connection is killed: the feed reconnects and resyncs, so a change made
    // while it was away still arrives.
    pg.owner
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
            &[&FEED_APPLICATION_NAME, &pg.name],
        )
        .await
        .unwrap();
    pg.owner.batch_execute("UPDATE organizations SET status = 'active' WHERE id = 'org_a'").await.unwrap();
    let resynced = wait_until("resync after reconnect", Duration::from_secs(5), || {
        registry.snapshot().org("org_a").is_some_and(|o| o.status == edge::tenant::OrgStatus::Active)
    })
    .await;
    eprintln!("propagation: added {added:?}, revoked {revoked:?}, suspended {suspended:?}; after a killed listener {resynced:?}");
    running.abort();
    pg.drop().await;
}

async fn status_of(http: &reqwest::Client, edge: &common::EdgeProcess, key: &SdkKey) -> u16 {
    http.post(format!("http://{}/v1/events", edge.addr))
        .header("x-api-key", key.expose())
        .json(&common::event("d1"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edge_processes_enforce_a_revocation_and_a_suspension_within_a_second() {
    let Some(pg) = Pg::fresh().await else { return };
    let keys = pg.seed(&["org_a", "org_b"]).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let edges = [api_edge(&pg, dirs[0].path(), &[]), api_edge(&pg, dirs[1].path(), &[])];
    pg.wait_for_listeners(2).await;
    let http = reqwest::Client::new();
    for edge in &edges {
        assert_eq!(status_of(&http, edge, &keys[0]).await, 202);
        assert_eq!(status_of(&http, edge, &keys[1]).await, 202);
    }

    async fn until_both(http: &reqwest::Client, edges: &[common::EdgeProcess], key: &SdkKey, want: u16) -> Duration {
        let started = Instant::now();
        for edge in edges {
            while status_of(http, edge, key).await != want {
                assert!(started.elapsed() < Duration::from_secs(1), "not {want} within 1 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        started.elapsed()
    }
    // Revoked through the first node's API: the second refuses it too.
    let admin = user_token("org_a", &["*"]);
    let revoke = http.delete(format!("http://{}/api/v1/apps/app_0/keys/key_0", edges[0].addr)).bearer_auth(&admin);
    assert_eq!(revoke.send().await.unwrap().status(), 200);
    let revoked = until_both(&http, &edges, &keys[0], 401).await;
    // A tier change reaches both (the quotas route reads the registry's tier).
    pg.owner.batch_execute("UPDATE organizations SET tier = 'enterprise' WHERE id = 'org_a'").await.unwrap();
    let started = Instant::now();
    for edge in &edges {
        loop {
            let r = http.get(format!("http://{}/api/v1/quotas", edge.addr)).bearer_auth(&admin).send().await.unwrap();
            let quotas: serde_json::Value = r.json().await.unwrap();
            if quotas["tier"] == "enterprise" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(1), "tier change not within 1 s: {quotas}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let retiered = started.elapsed();
    pg.owner.batch_execute("UPDATE organizations SET status = 'suspended' WHERE id = 'org_b'").await.unwrap();
    let suspended = until_both(&http, &edges, &keys[1], 403).await;
    eprintln!(
        "two edge processes: revocation through one enforced by both in {revoked:?}, tier change in {retiered:?}, suspension in {suspended:?}"
    );
    let ready = http.get(format!("http://{}/readyz", edges[0].admin)).send().await.unwrap().text().await.unwrap();
    assert!(ready.starts_with("ready\nregistry: postgres, current "), "{ready}");
    let age = http.get(format!("http://{}/metrics", edges[0].admin)).send().await.unwrap().text().await.unwrap();
    assert!(age.contains("edge_registry_age_seconds"), "the age is exported");
    drop(edges);
    pg.drop().await;
}

#[tokio::test]
async fn serve_refuses_the_owner_role_and_migrate_needs_only_database_url() {
    let Some(pg) = Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--dev"])
        .env("DATABASE_URL", &pg.owner_config.url)
        .env("EDGE_SPOOL_DIR", dir.path())
        .env("EDGE_LISTEN", "127.0.0.1:0")
        .env("EDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is a superuser") && stderr.contains("EDGE_DB_SERVICE_ROLE"), "{stderr}");

    // `edge migrate` with DATABASE_URL alone (no CLICKHOUSE_URL): already applied here.
    let out = {
        let _one_at_a_time = MIGRATIONS.lock().await;
        std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
            .arg("migrate")
            .env_remove("CLICKHOUSE_URL")
            .env("DATABASE_URL", &pg.owner_config.url)
            .env("EDGE_DB_SERVICE_ROLE", &pg.owner_config.service_role)
            .env("EDGE_DB_SERVICE_PASSWORD", "service-password")
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("postgres: 0 applied, 5 already applied"), "{stdout}");
    pg.drop().await;
}

fn user_token(org: &str, permissions: &[&str]) -> String {
    let now = Clock::system().unix_secs();
    edge::auth::jwt::issue_hs256(
        &edge::auth::jwt::Claims::new("usr_test", org, permissions, now, 600),
        common::JWT_SECRET.as_bytes(),
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn event(&self, key: &str) -> u16 {
        let r = self.http.post(format!("{}/v1/events", self.base)).header("x-api-key", key).json(&common::event("d"));
        r.send().await.unwrap().status().as_u16()
    }

    /// Polls until an event with `key` is answered `want` (the registry feed caught up). The
    /// one-second bound is the propagation tests'; here, beside other tests hashing passwords
    /// in a debug build, a slower feed is not this test's subject.
    async fn event_becomes(&self, key: &str, want: u16) -> Duration {
        let started = Instant::now();
        while self.event(key).await != want {
            assert!(started.elapsed() < Duration::from_secs(5), "{want} not within 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_apps_and_keys_through_the_api_with_tenants_kept_apart() {
    use reqwest::Method;
    use serde_json::json;
    let Some(pg) = Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let edge = api_edge(&pg, dir.path(), &[]);
    pg.wait_for_listeners(1).await;
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", edge.addr) };
    let signup = |sub: &str| {
        json!({"name": format!("Org {sub}"), "subdomain": sub, "admin_email": format!("admin@{sub}.example"),
               "admin_password": "a long enough password"})
    };

    // Sign-up is the operator's unless EDGE_SIGNUP=open.
    let (status, body) = api.call(Method::POST, "/api/v1/organizations", None, Some(signup("acme"))).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("operator_only")), "{body}");
    let (status, a) =
        api.call(Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(signup("acme"))).await;
    assert_eq!(status, 201, "{a}");
    let org_a = a["organization"]["id"].as_str().unwrap().to_string();
    let key_a = a["sdk_key"]["key"].as_str().unwrap().to_string();
    let propagated = api.event_becomes(&key_a, 202).await;
    let (status, body) =
        api.call(Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(signup("acme"))).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")), "{body}");
    assert!(!body.to_string().contains(&org_a), "a conflict does not say whose");
    let (status, b) =
        api.call(Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(signup("bravo"))).await;
    assert_eq!(status, 201, "{b}");
    let org_b = b["organization"]["id"].as_str().unwrap().to_string();
    // A sign-up that fails after its first step (the organisation is inserted, then its admin's
    // email is taken) leaves nothing behind: no organisation, app or key of it.
    let mut late_failure = signup("delta");
    late_failure["admin_email"] = json!("admin@acme.example");
    let (status, body) =
        api.call(Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(late_failure)).await;
    assert_eq!((status, body["message"].as_str()), (409, Some("This email is already in use")), "{body}");
    let n: i64 = pg.owner.query_one("SELECT count(*) FROM organizations", &[]).await.unwrap().get(0);
    let apps: i64 = pg.owner.query_one("SELECT count(*) FROM apps", &[]).await.unwrap().get(0);
    assert_eq!((n, apps), (2, 2), "one acme and one bravo, each with its default app");

    let admin_a = user_token(&org_a, &["*"]);
    let admin_b = user_token(&org_b, &["*"]);
    let (status, org) = api.call(Method::GET, "/api/v1/organization", Some(&admin_a), None).await;
    assert_eq!((status, org["id"].as_str(), org["subdomain"].as_str()), (200, Some(org_a.as_str()), Some("acme")));
    // Renaming is the organisation's; its tier is the operator's alone.
    let (status, body) =
        api.call(Method::PATCH, "/api/v1/organization", Some(&admin_a), Some(json!({"tier": "enterprise"}))).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("tier")), "{body}");
    let (status, body) =
        api.call(Method::PATCH, "/api/v1/organization", Some(&admin_a), Some(json!({"name": "Acme Ltd"}))).await;
    assert_eq!((status, body["name"].as_str(), body["tier"].as_str()), (200, Some("Acme Ltd"), Some("starter")));

    // Starter: two apps (the default one and one more), then 402 with the limit.
    let (status, app) = api.call(Method::POST, "/api/v1/apps", Some(&admin_a), Some(json!({"name": "iOS"}))).await;
    assert_eq!(status, 201, "{app}");
    let (status, body) = api.call(Method::POST, "/api/v1/apps", Some(&admin_a), Some(json!({"name": "Web"}))).await;
    assert_eq!((status, body["code"].as_str(), body["limit"].as_u64()), (402, Some("tier_limit"), Some(2)), "{body}");
    // Pages of one, by cursor.
    let (_, first) = api.call(Method::GET, "/api/v1/apps?limit=1", Some(&admin_a), None).await;
    let cursor = first["next_cursor"].as_str().expect("a second page").to_string();
    let (_, second) =
        api.call(Method::GET, &format!("/api/v1/apps?limit=1&cursor={cursor}"), Some(&admin_a), None).await;
    assert_eq!((first["data"].as_array().unwrap().len(), second["data"].as_array().unwrap().len()), (1, 1));
    assert!(second["next_cursor"].is_null());
    assert_ne!(first["data"][0]["id"], second["data"][0]["id"]);

    // A key for the new app: works at once, revoked: refused within a second.
    let app_id = app["id"].as_str().unwrap();
    let (status, key) = api.call(Method::POST, &format!("/api/v1/apps/{app_id}/keys"), Some(&admin_a), None).await;
    assert_eq!(status, 201, "{key}");
    let (key_id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    api.event_becomes(secret, 202).await;

    // bravo's admin cannot see or revoke acme's app or key: not found, and the key still works.
    let keys_path = format!("/api/v1/apps/{app_id}/keys");
    let (status, body) = api.call(Method::GET, &keys_path, Some(&admin_b), None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, _) = api.call(Method::DELETE, &format!("{keys_path}/{key_id}"), Some(&admin_b), None).await;
    assert_eq!(status, 404);
    assert_eq!(api.event(secret).await, 202);
    // Nor can a token of bravo that names acme in X-Organization-ID.
    let r = api.http.get(format!("{}/api/v1/apps", api.base)).bearer_auth(&admin_b).header("x-organization-id", &org_a);
    assert_eq!(r.send().await.unwrap().status(), 403);

    let (status, revoked) = api.call(Method::DELETE, &format!("{keys_path}/{key_id}"), Some(&admin_a), None).await;
    assert_eq!(status, 200, "{revoked}");
    let refused = api.event_becomes(secret, 401).await;
    let (_, listed) = api.call(Method::GET, &keys_path, Some(&admin_a), None).await;
    assert!(listed["data"][0]["revoked_at"].is_string());
    assert!(listed.to_string().find(secret).is_none(), "secrets are shown once");

    // Permissions: a viewer reads apps but creates none; an SDK key is write-only.
    let viewer = user_token(&org_a, &["org:read", "apps:read"]);
    assert_eq!(api.call(Method::GET, "/api/v1/apps", Some(&viewer), None).await.0, 200);
    let (status, body) = api.call(Method::POST, "/api/v1/apps", Some(&viewer), Some(json!({"name": "x"}))).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("insufficient_permission")));
    let r = api.http.get(format!("{}/api/v1/apps", api.base)).header("x-api-key", &key_a);
    assert_eq!(r.send().await.unwrap().status(), 403);

    // Unknown fields, bad JSON and bad values are 4xx with codes, never 500.
    let (status, body) =
        api.call(Method::POST, "/api/v1/apps", Some(&admin_b), Some(json!({"name": "x", "owner": "org_a"}))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")));
    let (status, body) = api.call(Method::POST, "/api/v1/apps", Some(&admin_b), Some(json!({"name": ""}))).await;
    assert_eq!((status, body["code"].as_str(), body["field"].as_str()), (422, Some("validation_failed"), Some("name")));
    let (status, _) = api.call(Method::PUT, "/api/v1/apps", Some(&admin_b), None).await;
    assert_eq!(status, 405);
    let audit: i64 =
        pg.owner.query_one("SELECT count(*) FROM audit_log WHERE action LIKE 'key_%'", &[]).await.unwrap().get(0);
    assert_eq!(audit, 2, "key created and revoked are audited");
    eprintln!("api: sign-up key served after {propagated:?}, revoked key refused after {refused:?}");
    drop(edge);
    pg.drop().await;
}

#[tokio::test]
async fn without_database_url_the_control_plane_answers_503_naming_it() {
    let opts = common::Options { clickhouse: false, ..Default::default() };
    let Some(h) = common::Harness::start(opts).await else { return };
    let token = h.token("org_acme", &["*"]);
    let r = h.http.get(format!("{}/api/v1/apps", h.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "control_plane_unavailable");
    assert!(body["message"].as_str().unwrap().contains("DATABASE_URL"));
}

/// Signs up `sub` through the operator; returns the organisation's id.
async fn sign_up(api: &Api, sub: &str, password: &str) -> String {
    let body = serde_json::json!({"name": sub, "subdomain": sub, "admin_email": format!("admin@{sub}.example"),
                                  "admin_password": password});
    let (status, created) =
        api.call(reqwest::Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["organization"]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refresh_rotation_logout_and_lockout() {
    use reqwest::Method;
    use serde_json::json;
    let Some(pg) = Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let edge = api_edge(&pg, dir.path(), &[("EDGE_LOGIN_MAX_FAILURES", "4".into())]);
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", edge.addr) };
    let org = sign_up(&api, "acme", "the right password").await;
    let login = |email: &str, password: &str| json!({"email": email, "password": password});

    // Wrong password and unknown email: one answer.
    let (s1, wrong) =
        api.call(Method::POST, "/api/v1/auth/login", None, Some(login("admin@acme.example", "not the password"))).await;
    let (s2, unknown) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("nobody@acme.example", "not the password")))
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["code"], "invalid_credentials");

    let (status, session) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("ADMIN@acme.example", "the right password")))
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(
        (session["user"]["role"].as_str(), session["user"]["organization_id"].as_str()),
        (Some("super_admin"), Some(org.as_str()))
    );
    let access = session["access_token"].as_str().unwrap();
    let (status, me) = api.call(Method::GET, "/api/v1/organization", Some(access), None).await;
    assert_eq!((status, me["id"].as_str()), (200, Some(org.as_str())));

    // Refresh rotates; the old refresh token used again ends every session of the user.
    let first = session["refresh_token"].as_str().unwrap().to_string();
    let (status, rotated) =
        api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": first}))).await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let (status, _) = api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": first}))).await;
    assert_eq!(status, 401, "a rotated token is refused");
    let (status, _) =
        api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": second}))).await;
    assert_eq!(status, 401, "and its reuse revoked the newer one too");

    // Logout revokes the refresh token it is given.
    let (_, session) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("admin@acme.example", "the right password")))
        .await;
    let token = session["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(api.call(Method::POST, "/api/v1/auth/logout", None, Some(json!({"refresh_token": token}))).await.0, 200);
    assert_eq!(
        api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": token}))).await.0,
        401
    );
    // A refresh token naming another organisation finds nothing there.
    let forged = format!("org_other.{}", token.rsplit_once('.').unwrap().1);
    assert_eq!(
        api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": forged}))).await.0,
        401
    );

    // Four failures lock the account: then even the right password gets 429 + Retry-After.
    for _ in 0..4 {
        api.call(Method::POST, "/api/v1/auth/login", None, Some(login("admin@acme.example", "guess guess guess")))
            .await;
    }
    let r = api
        .http
        .post(format!("{}/api/v1/auth/login", api.base))
        .json(&login("admin@acme.example", "the right password"));
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 800 && retry <= 900, "{retry}");

    // Failures are audited: in the organisation's log for its account, under '' for unknown ones.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed: i64 = pg
        .owner
        .query_one("SELECT count(*) FROM audit_log WHERE organization_id = $1 AND action = 'login_failed'", &[&org])
        .await
        .unwrap()
        .get(0);
    let unscoped: i64 = pg
        .owner
        .query_one("SELECT count(*) FROM audit_log WHERE organization_id = '' AND action = 'login_failed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((failed, unscoped), (5, 1));
    drop(edge);
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_revocation_quotas_audit_and_deletion() {
    use reqwest::Method;
    use serde_json::json;
    let Some(pg) = Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let edge = api_edge(&pg, dir.path(), &[]);
    pg.wait_for_listeners(1).await;
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", edge.addr) };
    let org = sign_up(&api, "users", "the owner's password").await;
    let login = |email: &str, password: &str| json!({"email": email, "password": password});
    let (_, owner) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("admin@users.example", "the owner's password")))
        .await;
    let owner = owner["access_token"].as_str().unwrap().to_string();

    // Invite an admin; the invitation's token sets the password; the new user logs in.
    let (status, invited) = api
        .call(Method::POST, "/api/v1/users", Some(&owner), Some(json!({"email": "ann@users.example", "role": "admin"})))
        .await;
    assert_eq!(status, 201, "{invited}");
    let ann = invited["user"]["id"].as_str().unwrap().to_string();
    let token = invited["set_password_token"].as_str().unwrap();
    let outbox: i64 =
        pg.owner.query_one("SELECT count(*) FROM mail_outbox WHERE kind = 'invite'", &[]).await.unwrap().get(0);
    assert_eq!(outbox, 1, "the mailer finds the invitation");
    let (status, _) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("ann@users.example", "ann's new password")))
        .await;
    assert_eq!(status, 401, "no password yet");
    let set = json!({"token": token, "password": "ann's new password"});
    assert_eq!(api.call(Method::POST, "/api/v1/auth/set-password", None, Some(set.clone())).await.0, 200);
    assert_eq!(api.call(Method::POST, "/api/v1/auth/set-password", None, Some(set)).await.0, 401, "one time only");
    let (status, session) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("ann@users.example", "ann's new password")))
        .await;
    assert_eq!(status, 200);
    let ann_token = session["access_token"].as_str().unwrap().to_string();
    assert_eq!(api.call(Method::GET, "/api/v1/users", Some(&ann_token), None).await.0, 200);

    // An admin may not make a super_admin; the owner demotes ann to viewer, which revokes her token.
    let (status, body) = api
        .call(Method::PATCH, &format!("/api/v1/users/{ann}"), Some(&ann_token), Some(json!({"role": "super_admin"})))
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _) =
        api.call(Method::PATCH, &format!("/api/v1/users/{ann}"), Some(&owner), Some(json!({"role": "viewer"}))).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    loop {
        let (status, body) = api.call(Method::GET, "/api/v1/organization", Some(&ann_token), None).await;
        if status == 401 {
            assert_eq!(body["code"], "token_revoked");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "old token still accepted: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoked_after = started.elapsed();
    // A fresh login gets a viewer's token, which reads but does not invite.
    tokio::time::sleep(Duration::from_millis(1100)).await; // the next second: tokens after the revocation
    let (_, session) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("ann@users.example", "ann's new password")))
        .await;
    let viewer = session["access_token"].as_str().unwrap().to_string();
    assert_eq!(session["user"]["role"], "viewer");
    assert_eq!(api.call(Method::GET, "/api/v1/organization", Some(&viewer), None).await.0, 200);
    let (status, _) = api
        .call(Method::POST, "/api/v1/users", Some(&viewer), Some(json!({"email": "x@users.example", "role": "viewer"})))
        .await;
    assert_eq!(status, 403);
    let (status, _) = api.call(Method::DELETE, "/api/v1/organization", Some(&viewer), None).await;
    assert_eq!(status, 403, "a viewer cannot delete");

    // The last super_admin stays.
    let me: String = pg.owner.query_one("SELECT id FROM users WHERE role = 'super_admin'", &[]).await.unwrap().get(0);
    let (status, body) = api.call(Method::DELETE, &format!("/api/v1/users/{me}"), Some(&owner), None).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("last_super_admin")));

    // Quotas: starter allows 5 users; 2 used (the owner and ann), 1 app.
    let (status, quotas) = api.call(Method::GET, "/api/v1/quotas", Some(&owner), None).await;
    assert_eq!(status, 200, "{quotas}");
    assert_eq!(
        (quotas["users"]["limit"].as_i64(), quotas["users"]["used"].as_i64(), quotas["apps"]["used"].as_i64()),
        (Some(5), Some(2), Some(1))
    );
    for i in 0..3 {
        let invite = json!({"email": format!("u{i}@users.example"), "role": "viewer"});
        assert_eq!(api.call(Method::POST, "/api/v1/users", Some(&owner), Some(invite)).await.0, 201);
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&owner),
            Some(json!({"email": "six@users.example", "role": "viewer"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (402, Some("tier_limit")));

    // Removing ann frees a seat; her tokens stay refused and she cannot log in.
    assert_eq!(api.call(Method::DELETE, &format!("/api/v1/users/{ann}"), Some(&owner), None).await.0, 200);
    let (status, _) = api
        .call(Method::POST, "/api/v1/auth/login", None, Some(login("ann@users.example", "ann's new password")))
        .await;
    assert_eq!(status, 401);

    // The audit log shows the acts, newest first, in pages.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, page) = api.call(Method::GET, "/api/v1/audit-log?limit=3", Some(&owner), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"][0]["action"], "user_removed");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) =
        api.call(Method::GET, &format!("/api/v1/audit-log?limit=3&cursor={cursor}"), Some(&owner), None).await;
    assert!(next["data"][0]["id"].as_i64() < page["data"][2]["id"].as_i64());

    // Deleting the organisation: its SDK key and its tokens are refused within a second.
    let key: String = {
        let (_, keys) = api.call(Method::GET, "/api/v1/apps", Some(&owner), None).await;
        let app = keys["data"][0]["id"].as_str().unwrap().to_string();
        let (_, key) = api.call(Method::POST, &format!("/api/v1/apps/{app}/keys"), Some(&owner), None).await;
        key["key"].as_str().unwrap().to_string()
    };
    api.event_becomes(&key, 202).await;
    let (status, body) = api.call(Method::DELETE, "/api/v1/organization", Some(&viewer), None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("token_revoked")), "ann's tokens ended with her removal");
    assert_eq!(api.call(Method::DELETE, "/api/v1/organization", Some(&owner), None).await.0, 200);
    let refused = api.event_becomes(&key, 403).await;
    let (status, body) = api.call(Method::GET, "/api/v1/organization", Some(&owner), None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("organization_deleted")));
    eprintln!("users: role change refused the old token after {revoked_after:?}; deletion refused the key after {refused:?}; org {org}");
    drop(edge);
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branding_white_label_custom_domains_and_the_api_rate_limit() {
    use reqwest::Method;
    use serde_json::json;
    let Some(pg) = Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let limits = [("EDGE_TIER_STARTER_API_REQUESTS_PER_MINUTE", "6".into()), ("EDGE_BASE_DOMAIN", "edge.test".into())];
    let edge = api_edge(&pg, dir.path(), &limits);
    pg.wait_for_listeners(1).await;
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", edge.addr) };
    let create = |sub: &str, tier: &str| {
        json!({"name": sub, "subdomain": sub, "admin_email": format!("admin@{sub}.example"),
               "admin_password": "a long enough password", "tier": tier})
    };
    let (_, small) = api
        .call(Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(create("small", "starter")))
        .await;
    let (_, big) = api
        .call(Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(create("big", "enterprise")))
        .await;
    let (_, other) = api
        .call(Method::POST, "/api/v1/organizations", Some(common::OPERATOR_TOKEN), Some(create("other", "enterprise")))
        .await;
    let token = |created: &serde_json::Value| user_token(created["organization"]["id"].as_str().unwrap(), &["*"]);
    let (small_admin, big_admin, other_admin) = (token(&small), token(&big), token(&other));

    // Colours for everyone; the custom domain needs white_label (enterprise here).
    let colours = json!({"primary_color": "#112233", "logo_url": "https://cdn.example/logo.png"});
    let (status, body) = api.call(Method::PUT, "/api/v1/branding", Some(&small_admin), Some(colours)).await;
    assert_eq!((status, body["primary_color"].as_str()), (200, Some("#112233")), "{body}");
    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v1/branding",
            Some(&small_admin),
            Some(json!({"custom_domain": "events.small.example"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str(), body["feature"].as_str()),
        (402, Some("not_in_tier"), Some("white_label"))
    );
    let (status, body) =
        api.call(Method::PUT, "/api/v1/branding", Some(&small_admin), Some(json!({"primary_color": "red"}))).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("primary_color")));

    let domain = json!({"custom_domain": "Events.Big.Example."});
    let (status, body) = api.call(Method::PUT, "/api/v1/branding", Some(&big_admin), Some(domain.clone())).await;
    assert_eq!((status, body["custom_domain"].as_str()), (200, Some("events.big.example")), "{body}");
    let (status, body) = api.call(Method::PUT, "/api/v1/branding", Some(&other_admin), Some(domain)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")));
    assert!(!body.to_string().contains("big"), "{body}");
    // The domain now selects big on every request: another organisation's key naming it is refused.
    let other_key = other["sdk_key"]["key"].as_str().unwrap();
    let big_key = big["sdk_key"]["key"].as_str().unwrap();
    let send = |key: &str| {
        api.http
            .post(format!("{}/v1/events", api.base))
            .header("x-api-key", key)
            .header("host", "events.big.example")
            .json(&common::event("d"))
            .send()
    };
    let started = Instant::now();
    while send(other_key).await.unwrap().status() != 403 {
        assert!(started.elapsed() < Duration::from_secs(5), "custom domain not routed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(send(big_key).await.unwrap().status(), 202);

    // The starter organisation's control-plane allowance: 6 a minute (3 used above), then 429
    // with Retry-After to the next minute, whatever the route.
    // (A minute that turns during the test restarts the count: at most 6 more.)
    let mut refused = None;
    for i in 0..14 {
        let r = api.http.get(format!("{}/api/v1/branding", api.base)).bearer_auth(&small_admin).send().await.unwrap();
        if r.status() == 429 {
            let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            refused = Some((i, retry_after, body));
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let (i, retry_after, body) = refused.expect("the allowance runs out");
    assert!(i <= 9 && (1..=60).contains(&retry_after), "{i} {retry_after}");
    assert_eq!(
        (body["code"].as_str(), body["tier"].as_str(), body["limit"].as_u64()),
        (Some("rate_limited"), Some("starter"), Some(6))
    );
    // Another organisation is not affected.
    assert_eq!(api.call(Method::GET, "/api/v1/branding", Some(&big_admin), None).await.0, 200);
    drop(edge);
    pg.drop().await;
}

fn edge_command(pg: &Pg, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(args)
        .env("DATABASE_URL", &pg.service_config.url)
        .env_remove("CLICKHOUSE_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_tenants_org_create_and_key_create_against_postgres() {
    let Some(pg) = Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (SdkKey::generate(), SdkKey::generate());
    let file = dir.path().join("tenants.toml");
    std::fs::write(
        &file,
        format!(
            "[[organizations]]\nid = \"org_file_a\"\nname = \"File A\"\nsubdomain = \"filea\"\ntier = \"growth\"\n\
             custom_domain = \"events.filea.example\"\nkeys = [{{ app_id = \"app_ios\", sha256 = \"{}\" }}]\n\
             [[organizations]]\nid = \"org_file_b\"\nname = \"File B\"\nsubdomain = \"fileb\"\nstatus = \"suspended\"\n\
             keys = [{{ app_id = \"app_web\", sha256 = \"{}\" }}]\n",
            k1.hash().to_hex(),
            k2.hash().to_hex()
        ),
    )
    .unwrap();
    let (ok, out, err) = edge_command(&pg, &["import-tenants", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("imported 2 organizations and 2 keys"), "{out}");
    assert!(err.contains("import: [2/2] org_file_b"), "a progress line per organisation: {err}");
    let (ok, out, _) = edge_command(&pg, &["import-tenants", file.to_str().unwrap()]);
    assert!(ok && out.contains("imported 0 organizations and 0 keys; 2 organizations were already there"), "{out}");
    let row = pg.owner.query_one("SELECT tier, status FROM organizations WHERE id = 'org_file_b'", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("starter".to_string(), "suspended".to_string()));

    let (ok, out, err) = edge_command(
        &pg,
        &[
            "org",
            "create",
            "--name",
            "Cli",
            "--subdomain",
            "cli",
            "--admin-email",
            "ops@cli.example",
            "--tier",
            "enterprise",
        ],
    );
    assert!(ok, "{err}");
    let org = out.lines().find_map(|l| l.strip_prefix("organization: ")).unwrap().to_string();
    let created_key =
        out.lines().find_map(|l| l.strip_prefix("key: ")).unwrap().split_whitespace().next().unwrap().to_string();
    assert!(out.contains("set-password token (shown once): org_"), "{out}");
    let (ok, out, err) = edge_command(&pg, &["key", "create", "--org", &org, "--app", "app_cli"]);
    assert!(ok, "{err}");
    let cli_key = out.strip_prefix("key: ").unwrap().split_whitespace().next().unwrap().to_string();
    let (ok, _, err) = edge_command(
        &pg,
        &["org", "create", "--name", "Again", "--subdomain", "cli", "--admin-email", "x@cli2.example"],
    );
    assert!(!ok && err.contains("subdomain is already in use"), "{err}");

    // One edge on this database serves all of them: imported keys, created keys, statuses.
    let edge = api_edge(&pg, dir.path(), &[]);
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", edge.addr) };
    assert_eq!(api.event(k1.expose()).await, 202);
    assert_eq!(api.event(k2.expose()).await, 403, "a suspended organisation stays suspended");
    assert_eq!(api.event(&created_key).await, 202);
    assert_eq!(api.event(&cli_key).await, 202);
    drop(edge);
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_sign_with_a_private_key_whose_kid_the_verifier_matches() {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let Some(pg) = Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let (private, public) = (dir.path().join("signing.pem"), dir.path().join("public.pem"));
    std::fs::write(&private, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    std::fs::write(&public, key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
    let keys =
        [("EDGE_JWT_SIGNING_KEY", private.display().to_string()), ("JWT_PUBLIC_KEYS", public.display().to_string())];
    let edge = api_edge(&pg, dir.path(), &keys);
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", edge.addr) };
    sign_up(&api, "signed", "a long enough password").await;
    let body = serde_json::json!({"email": "admin@signed.example", "password": "a long enough password"});
    let (status, session) = api.call(reqwest::Method::POST, "/api/v1/auth/login", None, Some(body)).await;
    assert_eq!(status, 200, "{session}");
    let token = session["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref().map(str::len), Some(16));
    assert_eq!(api.call(reqwest::Method::GET, "/api/v1/organization", Some(token), None).await.0, 200);
    drop(edge);
    pg.drop().await;
}

/// A TCP proxy in front of PostgreSQL that the test can cut and restore.
struct Proxy {
    port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(std::sync::atomic::Ordering::Acquire) {
                    continue; // dropped: refused while cut
                }
                let upstream = upstream.clone();
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy { port, open, connections }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Release);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_away_ingestion_serves_from_the_last_registry_and_says_how_old_it_is() {
    let Some(pg) = Pg::fresh().await else { return };
    let keys = pg.seed(&["org_a"]).await;
    let upstream = pg.service_config.url.rsplit_once('@').unwrap().1.split('/').next().unwrap().to_string();
    let proxy = Proxy::start(upstream.clone()).await;
    let via_proxy = pg.service_config.url.replace(&upstream, &format!("127.0.0.1:{}", proxy.port));
    let dir = tempfile::tempdir().unwrap();
    let edge = common::EdgeProcess::spawn_with(
        &["--dev"],
        &[
            ("DATABASE_URL", via_proxy),
            ("EDGE_SPOOL_DIR", dir.path().display().to_string()),
            ("EDGE_REGISTRY_POLL", "1s".into()),
            ("EDGE_DB_TIMEOUT", "1s".into()),
        ],
    );
    pg.wait_for_listeners(1).await;
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", edge.addr) };
    assert_eq!(api.event(keys[0].expose()).await, 202);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Still serving, from the registry it had; /readyz stays ready and says how old it is.
    assert_eq!(api.event(keys[0].expose()).await, 202);
    let ready = api.http.get(format!("http://{}/readyz", edge.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let text = ready.text().await.unwrap();
    let age: f64 = text.split("current ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(age >= 1.0, "{text}");
    let metrics = api.http.get(format!("http://{}/metrics", edge.admin)).send().await.unwrap().text().await.unwrap();
    let errors = metrics.lines().find(|l| l.starts_with("edge_registry_feed_errors_total")).unwrap();
    assert_ne!(errors.split_whitespace().last(), Some("0"), "{errors}");

    // A key revoked while the node could not hear it is refused once PostgreSQL is back.
    pg.owner.batch_execute("UPDATE api_keys SET revoked_at = now() WHERE organization_id = 'org_a'").await.unwrap();
    proxy.restore();
    let started = Instant::now();
    while api.event(keys[0].expose()).await != 401 {
        assert!(started.elapsed() < Duration::from_secs(5), "no resync after the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "outage: served from the last registry (age {age:.1} s); resynced {:?} after PostgreSQL came back",
        started.elapsed()
    );
    drop(edge);
    pg.drop().await;
}
