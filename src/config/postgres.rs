//! The control plane's PostgreSQL: where it is, how many connections, and the service role
//! `edge migrate` creates.

use std::time::Duration;

use super::reader::Reader;

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `edge serve` connects as the service role; `edge migrate` as the tables' owner.
    pub url: String,
    /// Connections in the control plane's pool (the registry listener has its own).
    pub pool_size: usize,
    /// Connecting, waiting for a pooled connection, and each statement.
    pub timeout: Duration,
    /// The login role `edge migrate` creates for `edge serve` (member of `edge_app`).
    pub service_role: String,
    pub service_password: Option<String>,
    /// How often the registry feed checks the version when no notification came (backstop).
    pub registry_poll: Duration,
}

impl PostgresConfig {
    pub(super) fn read(r: &mut Reader) -> Option<Self> {
        let url = r.string("DATABASE_URL")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            r.fail("DATABASE_URL", format!("{url:?}: expected a postgres:// URL"));
        }
        let service_role = r.string("EDGE_DB_SERVICE_ROLE").unwrap_or_else(|| "edge_service".into());
        if !super::is_identifier(&service_role) {
            r.fail("EDGE_DB_SERVICE_ROLE", format!("{service_role:?}: letters, digits and _ only"));
        }
        let registry_poll = r.duration("EDGE_REGISTRY_POLL", Duration::from_secs(10));
        if registry_poll > Duration::from_secs(30) || registry_poll.is_zero() {
            r.fail("EDGE_REGISTRY_POLL", "must be between 1ms and 30s".into());
        }
        Some(PostgresConfig {
            url,
            pool_size: r.positive("EDGE_DB_POOL_SIZE", 16),
            timeout: r.duration("EDGE_DB_TIMEOUT", Duration::from_secs(5)),
            service_role,
            service_password: r.string("EDGE_DB_SERVICE_PASSWORD"),
            registry_poll,
        })
    }
}
