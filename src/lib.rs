//! UnMoGrowP Edge: a multi-tenant event-ingestion edge server.
//!
//! # Layout
//!
//! Modules follow a request through the server, in order:
//!
//! - [`server`]: binds the listeners, accepts connections, wires the stages, drains on shutdown.
//! - [`http`]: routing, bounded and decompressed bodies, the one place errors become responses.
//! - [`auth`]: credential (JWT, SDK key, operator token) + selectors → the caller's [`tenant::Org`].
//! - [`tenant`]: the registry of organisations and keys: lock-free snapshot, atomically replaced.
//! - [`limits`]: tier table, per-organisation rate limits and monthly quotas (decisions, not errors).
//! - [`event`]: parse request bodies, validate each event, encode it once to ClickHouse RowBinary.
//! - [`ingest`]: the handler for `POST /v1/events*`: runs the stages above and hands rows to the pipeline.
//! - [`pipeline`]: the seam between "accepted" and "shipped": hands blocks to the spool.
//! - [`spool`]: append-only segments on disk, group-commit fsync, crash recovery, checkpoints.
//! - [`batch`]: the shipper: spool records → large multi-tenant blocks → sink → checkpoint.
//! - [`sink`]: where blocks go: ClickHouse (retry table), a bounded local directory, or memory.
//! - [`stats`]: in-process per-tenant daily aggregates for `GET /api/v1/stats/events`.
//! - [`control`]: the control-plane API (stats now; PostgreSQL-backed organisations later).
//! - [`migrate`]: `edge migrate`: versioned, idempotent ClickHouse DDL gated on `version()`.
//! - [`metrics`]: Prometheus names and the recorder.
//! - [`config`]: plain configuration data and its parsing from the environment.
//! - [`cli`]: the `edge` command line.
//! - [`dev`]: the embedded default of `edge serve --dev`.

pub mod auth;
pub mod batch;
pub mod cli;
pub mod config;
pub mod control;
pub mod dev;
pub mod error;
pub mod event;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod pipeline;
pub mod plan;
pub mod routes;
pub mod server;
pub mod sink;
pub mod spool;
pub mod stats;
pub mod tenant;
