//! The control plane's settings: its PostgreSQL (where, how many connections, the service
//! role `edge migrate` creates) and its logins (token lifetimes, lockouts).

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

/// Logins: token lifetimes and how many failures lock an account or a client address out.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Lifetime of an access token (`EDGE_ACCESS_TOKEN_TTL`, 1 h).
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (`EDGE_REFRESH_TOKEN_TTL`, 30 days); each use rotates it.
    pub refresh_ttl: Duration,
    /// Failed logins of one account within `lockout` that lock it for `lockout` (10).
    pub max_failures: u32,
    /// Failed logins from one client address within `lockout` that lock it out (50).
    pub max_failures_per_address: u32,
    /// The failure window and the lockout (`EDGE_LOGIN_LOCKOUT`, 15 min).
    pub lockout: Duration,
}

impl LoginConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
        LoginConfig {
            access_ttl: r.duration("EDGE_ACCESS_TOKEN_TTL", Duration::from_secs(3600)),
            refresh_ttl: r.duration("EDGE_REFRESH_TOKEN_TTL", Duration::from_secs(30 * 86_400)),
            max_failures: r.positive("EDGE_LOGIN_MAX_FAILURES", 10) as u32,
            max_failures_per_address: r.positive("EDGE_LOGIN_MAX_FAILURES_PER_ADDRESS", 50) as u32,
            lockout: r.duration("EDGE_LOGIN_LOCKOUT", Duration::from_secs(15 * 60)),
        }
    }
}
