//! PostgreSQL migrations for the control plane.
//!
//! Run as the tables' owner (a superuser, or a role that is a member of
//! `edge_definer`, which owns the private functions). Each migration runs in
//! one transaction with the row recording it, so a failed one leaves nothing
//! behind; concurrent runs queue on an advisory lock. Then the service's login
//! role (`EDGE_DB_SERVICE_ROLE`) is created or updated: a member of `edge_app`,
//! never a superuser, never BYPASSRLS, owning nothing.

use tokio_postgres::{Client, NoTls};

use super::{migration, MigrateError, Migration, Outcome};
use crate::config::PostgresConfig;

/// Every PostgreSQL migration in order (a test checks this matches the directory).
pub const POSTGRES: &[Migration] = &[
    migration!("postgres", 1, "001_tenants.sql"),
    migration!("postgres", 2, "002_sessions.sql"),
    migration!("postgres", 3, "003_users.sql"),
    migration!("postgres", 4, "004_quota_usage.sql"),
    migration!("postgres", 5, "005_usage.sql"),
];

/// One key for every `edge migrate` of this database.
const LOCK: &str = "SELECT pg_advisory_lock(hashtext('edge_migrate'))";

/// Applies what is missing and sets up the service role; `progress` gets one line per step.
pub async fn run_postgres(config: &PostgresConfig, progress: impl Fn(&str)) -> Result<Outcome, MigrateError> {
    let client = connect(config).await?;
    let version: String = query_one(&client, "SHOW server_version", &[]).await?;
    let mut outcome = Outcome { server_version: version, ..Default::default() };
    progress(&format!("postgres {}", outcome.server_version));
    execute(&client, LOCK).await?;
    execute(
        &client,
        "CREATE TABLE IF NOT EXISTS edge_schema_migrations \
         (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); \
         REVOKE ALL ON edge_schema_migrations FROM PUBLIC",
    )
    .await?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM edge_schema_migrations ORDER BY version", &[])
        .await
        .map_err(pg("reading applied migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (i, m) in POSTGRES.iter().enumerate() {
        let step = format!("[{}/{}] {}", i + 1, POSTGRES.len(), m.name);
        if applied.contains(&(m.version as i32)) {
            outcome.already += 1;
            progress(&format!("{step}: already applied"));
            continue;
        }
        let in_one_transaction = format!(
            "BEGIN;\n{}\n;INSERT INTO edge_schema_migrations (version, name) VALUES ({}, '{}');\nCOMMIT;",
            m.sql, m.version, m.name
        );
        if let Err(e) = client.batch_execute(&in_one_transaction).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(MigrateError::Migration { migration: m.name, source: Box::new(pg("applying")(e)) });
        }
        progress(&format!("{step}: applied"));
        outcome.applied.push(m.name);
    }
    service_role(&client, config).await?;
    progress(&format!("service role {}: member of edge_app, owns nothing, no BYPASSRLS", config.service_role));
    Ok(outcome)
}

/// Creates or updates the login role `edge serve` connects as. Refuses to touch a superuser
/// or the migrating role itself: stripping their rights would lock the owner out.
async fn service_role(client: &Client, config: &PostgresConfig) -> Result<(), MigrateError> {
    let role = &config.service_role;
    let existing = client
        .query_opt("SELECT rolsuper, rolname = current_user FROM pg_roles WHERE rolname = $1", &[role])
        .await
        .map_err(pg("reading the service role"))?;
    if let Some(row) = &existing {
        let (superuser, is_self): (bool, bool) = (row.get(0), row.get(1));
        if superuser || is_self {
            return Err(MigrateError::UnsafeServiceRole(role.clone()));
        }
    }
    let verb = if existing.is_some() { "ALTER" } else { "CREATE" };
    let password = config.service_password.as_deref();
    // Identifiers and the password quoted by the server (format's %I and %L), not here.
    let statement: String = query_one(
        client,
        "SELECT format('%s ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT', $1::text, $2::text) \
         || coalesce(format(' PASSWORD %L', $3::text), '')",
        &[&verb, role, &password],
    )
    .await?;
    execute(client, &statement).await?;
    let grant: String = query_one(client, "SELECT format('GRANT edge_app TO %I', $1::text)", &[role]).await?;
    execute(client, &grant).await
}

async fn connect(config: &PostgresConfig) -> Result<Client, MigrateError> {
    let connecting = tokio_postgres::connect(&config.url, NoTls);
    let (client, connection) = tokio::time::timeout(config.timeout, connecting)
        .await
        .map_err(|_| MigrateError::Timeout("connecting to DATABASE_URL"))?
        .map_err(pg("connecting to DATABASE_URL"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn execute(client: &Client, sql: &str) -> Result<(), MigrateError> {
    client.batch_execute(sql).await.map_err(|e| MigrateError::Postgres {
        context: "executing",
        message: format!("{} (in: {})", crate::db::describe(&e), super::first_line(sql)),
    })
}

async fn query_one<T>(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<T, MigrateError>
where
    T: for<'r> tokio_postgres::types::FromSql<'r>,
{
    Ok(client.query_one(sql, params).await.map_err(pg("querying"))?.get(0))
}

fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    move |e| MigrateError::Postgres { context, message: crate::db::describe(&e) }
}
