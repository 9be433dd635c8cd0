//! UnMoGrowP Edge: a multi-tenant event-ingestion edge server.
//!
//! # Layout
//!
//! Modules follow a request through the server, in order:
//!
//! - [`server`]: binds the listeners, builds each surface's state once, runs the drain on shutdown.
//! - [`http`]: plumbing: connections with per-phase timers, bounded bodies and their memory
//!   budget, CORS, response bodies, the client address.
//! - [`routes`]: the route table (method, path, metric label, permission, CORS policy, handler)
//!   and the dispatcher that authenticates and checks permissions for every route.
//! - [`auth`]: credential (JWT, SDK key, operator token) + selectors → the caller's [`tenant::Org`].
//! - [`tenant`]: the registry of organisations and keys: lock-free snapshot, atomically replaced.
//! - [`plan`]: the tier table (SPEC §4): what each organisation's tier allows.
//! - [`limits`]: per-organisation rate limits, monthly quota reservations, control-plane
//!   allowances and login lockouts; with Redis, the fleet sync that makes them fleet-wide.
//! - [`event`]: parse request bodies, validate each event, encode it once to ClickHouse RowBinary.
//! - [`ingest`]: the handler for `POST /v1/events*` and its state: runs the stages above.
//! - [`vendor`]: PostHog's and Segment's/RudderStack's batch routes, each mapped to the edge's
//!   events before the common path.
//! - [`pipeline`]: the seam between "accepted" and "shipped": hands blocks to the spool.
//! - [`spool`]: append-only segments on disk, group-commit fsync, crash recovery, checkpoints.
//! - [`shipper`]: spool records → large multi-tenant blocks → sink → checkpoint.
//! - [`sink`]: where blocks go: ClickHouse (retry table), a bounded local directory, or memory.
//! - [`aggregates`]: in-process per-tenant daily aggregates, bounded in bytes.
//! - [`control`]: the control-plane API and its state, the registry feed, usage rows.
//! - [`db`]: the PostgreSQL pool and the tenant transaction (Row-Level Security).
//! - [`migrate`]: `edge migrate`: versioned, idempotent ClickHouse DDL gated on `version()`.
//! - [`error`]: every stage's error type (none holds an HTTP type) and the one mapping of each
//!   to status, `code`, message, body fields and `Retry-After`.
//! - [`clock`]: the one time source, injected; tests move a manual clock instead of sleeping.
//! - [`metrics`]: Prometheus names and the recorder.
//! - [`config`]: plain configuration data and its parsing from the environment.
//! - [`cli`]: the `edge` command line.
//! - [`dev`]: the embedded default of `edge serve --dev`.
//!
//! Where the next pieces go: control-plane routes are rows in [`routes::DATA`] with handlers in
//! [`control`] and the PostgreSQL pool in [`control::ControlState`], their failures (not found,
//! conflict, row-security denial, pool) variants of [`control::ControlError`]; the registry feed calls
//! [`tenant::Registry::replace`]; the Redis sync of limits sits beside [`limits`]' counters
//! ([`limits::fleet`]);
//! vendor wire formats are routes whose handlers feed [`event`]. No top-level module imports
//! another in a cycle (`scripts/module-cycles`, run in CI).

pub mod aggregates;
pub mod auth;
pub mod buffers;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod db;
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
pub mod shipper;
pub mod sink;
pub mod spool;
pub mod tenant;
pub mod vendor;
