//! The control plane: the `/api/v1` API for people and tools, not SDKs.
//!
//! Per-tenant event statistics ([`stats`]); the PostgreSQL pool and the one
//! helper that opens a tenant transaction ([`db`]); the feed that keeps the
//! in-memory [`crate::tenant::Registry`] current from PostgreSQL ([`feed`]).
//! The organisations, users, apps, keys and audit-log routes land here.

pub mod db;
pub mod feed;
pub mod stats;

use std::sync::Arc;

/// Why a control-plane request is refused. The PostgreSQL-backed routes add their not-found,
/// conflict, unprocessable, row-security and pool failures here as variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// A query parameter that is not a `YYYY-MM-DD` date.
    InvalidDate { field: &'static str },
    /// `from` is after `to`.
    InvalidRange,
}

/// What the control-plane handlers may touch (the PostgreSQL pool joins it).
pub struct ControlState {
    pub stats: Arc<crate::aggregates::Stats>,
    /// "Today" for default date ranges.
    pub clock: crate::clock::Clock,
    /// The PostgreSQL pool, when `DATABASE_URL` is set.
    pub db: Option<db::Db>,
}
