//! The control plane's PostgreSQL: a pool of service-role connections and the
//! one helper that opens a tenant transaction ([`Db::tenant`]).
//!
//! Every tenant-scoped statement runs inside a transaction that first calls
//! `set_config('app.current_tenant', $1, true)`: the setting ends with the
//! transaction, so a pooled connection never carries one tenant into another's
//! request. A [`TenantTx`] dropped without commit (an error, a client that hung
//! up) takes its connection out of the pool and closes it, which rolls back.
//! Reads across tenants go only through the private schema's functions
//! ([`Db::cross_tenant`]), never through a tenant table directly.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::config::PostgresConfig;

/// Every table that holds one tenant's rows; each has RLS enabled and forced.
pub const TENANT_TABLES: &[&str] = &[
    "organizations",
    "users",
    "apps",
    "api_keys",
    "tenant_branding",
    "tenant_usage",
    "audit_log",
    "refresh_tokens",
    "user_invites",
    "mail_outbox",
];

/// Why a statement failed, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// No connection (refused, dropped, pool timeout): try again later.
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint: the constraint's name, never the other row.
    #[error("conflict on {constraint}")]
    Conflict { constraint: String },
    /// Row-Level Security refused a row (WITH CHECK), or a privilege is missing.
    #[error("row-level security refused the statement")]
    RowSecurity,
    /// A check, not-null or type constraint.
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error("postgres: {0}")]
    Other(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return DbError::Unavailable(e.to_string());
        };
        let code = db.code().code();
        match code {
            "23505" => DbError::Conflict { constraint: db.constraint().unwrap_or("unique").to_string() },
            "42501" => DbError::RowSecurity,
            "57014" => DbError::Unavailable("statement timeout".into()),
            c if c.starts_with("23") || c.starts_with("22") => DbError::Invalid(db.message().to_string()),
            c if c.starts_with("08") || c.starts_with("57") || c.starts_with("53") => {
                DbError::Unavailable(db.message().to_string())
            }
            _ => DbError::Other(format!("{code}: {}", db.message())),
        }
    }
}

/// A readable line for a PostgreSQL error: SQLSTATE and message when the server sent one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Why `edge serve` refuses to use a database.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("DATABASE_URL: {0}")]
    Db(#[from] DbError),
    #[error("DATABASE_URL: the control-plane tables are missing; run `edge migrate` first")]
    NotMigrated,
    #[error(
        "DATABASE_URL connects as {role:?}, which {why}; connect as the service role `edge migrate` creates \
         (EDGE_DB_SERVICE_ROLE) so that Row-Level Security holds"
    )]
    Unsafe { role: String, why: String },
}

#[derive(Clone)]
pub struct Db {
    pool: Pool,
    timeout: Duration,
}

impl Db {
    /// A pool of up to `pool_size` connections; nothing connects until first used.
    pub fn new(config: &PostgresConfig) -> Result<Db, DbError> {
        let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| DbError::Unavailable(describe(&e)))?;
        pg.connect_timeout(config.timeout);
        pg.application_name("edge");
        // A statement that runs away is cut by the server, not only abandoned by the client.
        pg.options(format!("-c statement_timeout={}", config.timeout.as_millis()));
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        Ok(Db { pool, timeout: config.timeout })
    }

    async fn connection(&self) -> Result<Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::from(e),
            other => DbError::Unavailable(other.to_string()),
        })
    }

    /// Opens a transaction whose tenant is `organization_id`: every row it reads or writes is
    /// that organisation's (the tables' policies see to it). The only way to reach tenant rows.
    pub async fn tenant(&self, organization_id: &str) -> Result<TenantTx, DbError> {
        let client = self.connection().await?;
        let tx = TenantTx { client: Some(client), finished: false };
        tx.client().batch_execute("BEGIN").await?;
        tx.client().execute("SELECT set_config('app.current_tenant', $1, true)", &[&organization_id]).await?;
        Ok(tx)
    }

    /// Runs one statement outside any tenant: only the private schema's functions return rows
    /// there (every tenant table shows none).
    pub async fn cross_tenant(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        debug_assert!(sql.contains("edge_private."), "cross-tenant reads go through edge_private: {sql}");
        let client = self.connection().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query(&statement, params).await?)
    }

    /// Refuses a connection role that could step around Row-Level Security: a superuser, a
    /// role with BYPASSRLS, the owner (or a member of the owner) of a tenant table, or a member
    /// of the private functions' owner.
    pub async fn check_service_role(&self) -> Result<(), RoleError> {
        let client = self.connection().await?;
        let migrated: bool = client
            .query_one("SELECT to_regclass('public.organizations') IS NOT NULL", &[])
            .await
            .map_err(DbError::from)?
            .get(0);
        if !migrated {
            return Err(RoleError::NotMigrated);
        }
        let tables: Vec<String> = TENANT_TABLES.iter().map(|t| t.to_string()).collect();
        let row = client
            .query_one(
                "SELECT current_user::text, r.rolsuper, r.rolbypassrls, \
                        pg_has_role(current_user, 'edge_definer', 'USAGE'), \
                        array(SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                              WHERE n.nspname = 'public' AND c.relname = ANY($1) \
                                AND pg_has_role(current_user, c.relowner, 'USAGE')) \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[&tables],
            )
            .await
            .map_err(DbError::from)?;
        let (role, superuser, bypass, definer, owned): (String, bool, bool, bool, Vec<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let why = if superuser {
            "is a superuser".to_string()
        } else if bypass {
            "has BYPASSRLS".to_string()
        } else if !owned.is_empty() {
            format!("owns (or acts as the owner of) {}", owned.join(", "))
        } else if definer {
            "is a member of edge_definer".to_string()
        } else {
            return Ok(());
        };
        Err(RoleError::Unsafe { role, why })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A transaction with its tenant set. Commit it; dropped otherwise, its connection is closed
/// (never returned to the pool mid-transaction), which rolls it back.
pub struct TenantTx {
    client: Option<Object>,
    finished: bool,
}

impl TenantTx {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("present until dropped")
    }

    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        let statement = self.client().prepare_cached(sql).await?;
        Ok(self.client().query(&statement, params).await?)
    }

    pub async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, DbError> {
        let statement = self.client().prepare_cached(sql).await?;
        Ok(self.client().query_opt(&statement, params).await?)
    }

    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        let statement = self.client().prepare_cached(sql).await?;
        Ok(self.client().execute(&statement, params).await?)
    }

    pub async fn commit(mut self) -> Result<(), DbError> {
        self.client().batch_execute("COMMIT").await?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for TenantTx {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(client) = self.client.take() {
                // Out of the pool and dropped: the connection closes and the server rolls back.
                drop(Object::take(client));
            }
        }
    }
}
