//! The control plane: the `/api/v1` API for people and tools, not SDKs.
//!
//! Today: per-tenant event statistics from the in-process aggregates. The
//! PostgreSQL-backed organisations, users, apps, keys and audit log (with
//! Row-Level Security) land here and feed [`crate::tenant::Registry`].

pub mod stats;
