//! The control plane: the `/api/v1` API for people and tools, not SDKs.
//!
//! Today: per-tenant event statistics from the in-process aggregates. The
//! PostgreSQL-backed organisations, users, apps, keys and audit log (with
//! Row-Level Security) land here and feed [`crate::tenant::Registry`].

pub mod stats;

use std::sync::Arc;

/// What the control-plane handlers may touch (the PostgreSQL pool joins it).
pub struct ControlState {
    pub stats: Arc<crate::aggregates::Stats>,
}
