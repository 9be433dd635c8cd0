//! Prometheus metrics: the names SPEC §8 promises, and the recorder.
//!
//! Names live here as constants so the code, the Grafana dashboard test and
//! the docs agree. No organisation label by default: label cardinality would
//! grow with the tenant count.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "edge_http_requests_total";
pub const HTTP_DURATION: &str = "edge_http_request_duration_seconds";
pub const EVENTS_ACCEPTED: &str = "edge_events_accepted_total";
pub const EVENTS_REJECTED: &str = "edge_events_rejected_total";
pub const RATE_LIMITED: &str = "edge_rate_limited_total";
pub const QUOTA_EXCEEDED: &str = "edge_quota_exceeded_total";
pub const CH_INSERT_ROWS: &str = "edge_clickhouse_insert_rows_total";
pub const CH_INSERT_ERRORS: &str = "edge_clickhouse_insert_errors_total";
pub const CH_INSERT_DURATION: &str = "edge_clickhouse_insert_duration_seconds";
pub const SPOOL_BYTES: &str = "edge_spool_bytes";
pub const SPOOL_EVENTS: &str = "edge_spool_events";
pub const SPOOL_FSYNC: &str = "edge_spool_fsync_duration_seconds";
pub const SPOOL_GROUP: &str = "edge_spool_group_records";
pub const SPOOL_REPLAYED: &str = "edge_spool_replayed_events_total";
pub const SPOOL_DAMAGED: &str = "edge_spool_damaged_records_total";
pub const SPOOL_OLDEST_AGE: &str = "edge_spool_oldest_unshipped_seconds";
pub const TENANTS: &str = "edge_tenants";
pub const REDIS_SYNC_ERRORS: &str = "edge_redis_sync_errors_total";
pub const FLEET_SYNC_DURATION: &str = "edge_fleet_sync_duration_seconds";
pub const FLEET_NODES: &str = "edge_fleet_nodes";
pub const FLEET_FALLBACK: &str = "edge_fleet_fallback";
pub const OVERLOADED: &str = "edge_overloaded_total";
pub const AUTH_FAILURES: &str = "edge_auth_failures_total";
pub const AUDIT_SUPPRESSED: &str = "edge_audit_suppressed_total";
pub const STATS_EVICTIONS: &str = "edge_stats_evictions_total";
pub const CONNECTIONS_REFUSED: &str = "edge_connections_refused_total";
pub const ACCEPT_ERRORS: &str = "edge_accept_errors_total";
pub const REGISTRY_AGE: &str = "edge_registry_age_seconds";
pub const REGISTRY_FEED_ERRORS: &str = "edge_registry_feed_errors_total";
pub const AUDIT_DROPPED: &str = "edge_audit_dropped_total";
pub const SOURCE_EVENTS: &str = "edge_source_events_total";
pub const LOGIN_EVENTS_DROPPED: &str = "edge_login_events_dropped_total";
pub const LIMIT_DECISIONS: &str = "edge_limit_decisions_total";
pub const FLEET_TOP_RATE: &str = "edge_fleet_top_org_events_per_second";
pub const FLEET_TOP_RATIO: &str = "edge_fleet_top_org_rate_ratio";
/// How many organisations the top-consumption gauges rank.
pub const FLEET_TOP_RANKS: usize = 10;

/// Every metric the edge exports (the dashboard test checks queries against this).
pub const ALL: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_DURATION,
    EVENTS_ACCEPTED,
    EVENTS_REJECTED,
    RATE_LIMITED,
    QUOTA_EXCEEDED,
    CH_INSERT_ROWS,
    CH_INSERT_ERRORS,
    CH_INSERT_DURATION,
    SPOOL_BYTES,
    SPOOL_EVENTS,
    SPOOL_FSYNC,
    SPOOL_GROUP,
    SPOOL_REPLAYED,
    SPOOL_DAMAGED,
    SPOOL_OLDEST_AGE,
    TENANTS,
    REDIS_SYNC_ERRORS,
    FLEET_SYNC_DURATION,
    FLEET_NODES,
    FLEET_FALLBACK,
    OVERLOADED,
    AUTH_FAILURES,
    CONNECTIONS_REFUSED,
    ACCEPT_ERRORS,
    STATS_EVICTIONS,
    AUDIT_SUPPRESSED,
    REGISTRY_AGE,
    REGISTRY_FEED_ERRORS,
    AUDIT_DROPPED,
    SOURCE_EVENTS,
    LOGIN_EVENTS_DROPPED,
    LIMIT_DECISIONS,
    FLEET_TOP_RATE,
    FLEET_TOP_RATIO,
];

/// Request latencies on loopback are tens of µs; ClickHouse inserts take ms to s.
const HTTP_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// fdatasync here: p50 ≈ 4 ms, p99 ≈ 12 ms (SERVICES.md); buckets around that.
const FSYNC_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.004, 0.008, 0.012, 0.02, 0.05, 0.1, 0.5];
/// Appends per group commit: one to thousands.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0];
const INSERT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CH_INSERT_DURATION.into()), INSERT_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SPOOL_FSYNC.into()), FSYNC_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SPOOL_GROUP.into()), GROUP_BUCKETS))
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request duration");
    describe_counter!(EVENTS_ACCEPTED, "Events accepted (202)");
    describe_counter!(EVENTS_REJECTED, "Events rejected, by reason");
    describe_counter!(RATE_LIMITED, "Requests refused by the per-organisation rate limit, by tier");
    describe_counter!(QUOTA_EXCEEDED, "Requests refused by the monthly quota, by tier");
    describe_counter!(CH_INSERT_ROWS, "Rows ClickHouse confirmed");
    describe_counter!(CH_INSERT_ERRORS, "Failed ClickHouse inserts (each retry counts)");
    describe_histogram!(CH_INSERT_DURATION, Unit::Seconds, "ClickHouse insert duration");
    describe_gauge!(SPOOL_BYTES, Unit::Bytes, "Spool bytes accepted and not yet confirmed by the sink");
    describe_gauge!(SPOOL_EVENTS, "Events accepted and not yet confirmed by the sink");
    describe_gauge!(TENANTS, "Organisations in the registry");
    describe_counter!(REDIS_SYNC_ERRORS, "Failed syncs of limits with Redis (each tick counts)");
    describe_histogram!(FLEET_SYNC_DURATION, Unit::Seconds, "Duration of one Redis sync tick of the fleet's limits");
    describe_gauge!(FLEET_NODES, "Edge nodes with a heartbeat in Redis, as last seen");
    describe_gauge!(FLEET_FALLBACK, "1 while this node keeps to its share of the limits because Redis is unreachable");
    describe_histogram!(SPOOL_FSYNC, Unit::Seconds, "Spool fdatasync duration (one per group commit)");
    describe_histogram!(SPOOL_GROUP, "Appends written and synced together per group commit");
    describe_counter!(SPOOL_REPLAYED, "Events found unshipped in the spool at start-up and shipped again");
    describe_counter!(SPOOL_DAMAGED, "Damaged spool regions skipped (torn or corrupt records)");
    describe_gauge!(SPOOL_OLDEST_AGE, Unit::Seconds, "Age of the oldest accepted event not yet in ClickHouse");
    describe_counter!(OVERLOADED, "Requests refused with 503 because buffers are full");
    describe_counter!(AUTH_FAILURES, "Requests refused by authentication, by code");
    describe_counter!(AUDIT_SUPPRESSED, "Audit lines not written because their client address was over its allowance");
    describe_counter!(STATS_EVICTIONS, "Times the in-process daily aggregates evicted old days to stay in bounds");
    describe_counter!(CONNECTIONS_REFUSED, "Connections refused at once because the listener is at its cap");
    describe_counter!(ACCEPT_ERRORS, "Failed accepts (e.g. out of file descriptors), by listener");
    describe_gauge!(REGISTRY_AGE, Unit::Seconds, "Time since the registry was last known current with PostgreSQL");
    describe_counter!(SOURCE_EVENTS, "Events accepted, by wire format (native, posthog, segment)");
    describe_counter!(
        LOGIN_EVENTS_DROPPED,
        "Login outcomes not sent to Redis because the queue for the fleet sync was full"
    );
    describe_counter!(
        LIMIT_DECISIONS,
        "Limit decisions per request, by tier, limit (rate, quota, api) and outcome (allowed, refused, cut)"
    );
    describe_gauge!(
        FLEET_TOP_RATE,
        "Fleet-wide events/s admitted for the organisation at each rank (1 = most), over the last second"
    );
    describe_gauge!(FLEET_TOP_RATIO, "The same organisations' fleet-wide events/s over their tier's rate");
    describe_counter!(AUDIT_DROPPED, "Audit-log rows dropped: queue full or PostgreSQL refused them");
    describe_counter!(
        REGISTRY_FEED_ERRORS,
        "Interruptions of the registry feed from PostgreSQL (each reconnect counts)"
    );
    // Series that only appear on rare events are created now so dashboards see zeros.
    metrics::counter!(REDIS_SYNC_ERRORS).absolute(0);
    metrics::gauge!(FLEET_NODES).set(1.0);
    metrics::gauge!(FLEET_FALLBACK).set(0.0);
    metrics::counter!(CH_INSERT_ERRORS).absolute(0);
    metrics::counter!(CH_INSERT_ROWS).absolute(0);
    metrics::counter!(EVENTS_ACCEPTED).absolute(0);
    metrics::gauge!(SPOOL_BYTES).set(0.0);
    metrics::gauge!(SPOOL_EVENTS).set(0.0);
    metrics::gauge!(SPOOL_OLDEST_AGE).set(0.0);
    metrics::counter!(SPOOL_REPLAYED).absolute(0);
    metrics::counter!(SPOOL_DAMAGED).absolute(0);
    metrics::counter!(AUDIT_SUPPRESSED).absolute(0);
    metrics::counter!(STATS_EVICTIONS).absolute(0);
    metrics::counter!(OVERLOADED).absolute(0);
    metrics::gauge!(TENANTS).set(0.0);
    metrics::gauge!(REGISTRY_AGE).set(0.0);
    metrics::counter!(REGISTRY_FEED_ERRORS).absolute(0);
    metrics::counter!(AUDIT_DROPPED).absolute(0);
    for source in SOURCES {
        metrics::counter!(SOURCE_EVENTS, "source" => source).absolute(0);
    }
    // Labelled series too, for every label value the edge can produce: alerts on
    // `rate(...)` need the series before its first increment.
    for reason in REJECTION_REASONS {
        metrics::counter!(EVENTS_REJECTED, "reason" => *reason).absolute(0);
    }
    for tier in ["starter", "growth", "enterprise"] {
        metrics::counter!(RATE_LIMITED, "tier" => tier).absolute(0);
        metrics::counter!(QUOTA_EXCEEDED, "tier" => tier).absolute(0);
        for limit in ["rate", "quota", "api"] {
            for outcome in ["allowed", "refused"] {
                metrics::counter!(LIMIT_DECISIONS, "tier" => tier, "limit" => limit, "outcome" => outcome).absolute(0);
            }
        }
    }
    for rank in RANKS {
        metrics::gauge!(FLEET_TOP_RATE, "rank" => rank).set(0.0);
        metrics::gauge!(FLEET_TOP_RATIO, "rank" => rank).set(0.0);
    }
    for code in AUTH_FAILURE_CODES {
        metrics::counter!(AUTH_FAILURES, "code" => *code).absolute(0);
    }
    for listener in ["data", "admin"] {
        metrics::counter!(CONNECTIONS_REFUSED, "listener" => listener).absolute(0);
        metrics::counter!(ACCEPT_ERRORS, "listener" => listener).absolute(0);
    }
}

/// Rank labels of the top-consumption gauges.
pub const RANKS: [&str; FLEET_TOP_RANKS] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/// Per-event rejection codes (`edge_events_rejected_total{reason}`).
pub const REJECTION_REASONS: &[&str] = &[
    "missing_field",
    "invalid_field",
    "field_too_long",
    "invalid_event",
    "invalid_json",
    "invalid_timestamp",
    "timestamp_in_future",
    "timestamp_too_old",
    "invalid_revenue",
    "invalid_currency",
    "invalid_properties",
    "properties_too_deep",
    "properties_too_large",
    "event_too_large",
    "app_mismatch",
    "quota_exceeded",
];

/// Authentication failure codes (`edge_auth_failures_total{code}`).
pub const AUTH_FAILURE_CODES: &[&str] = &[
    "missing_credentials",
    "invalid_api_key",
    "invalid_token",
    "token_expired",
    "token_not_yet_valid",
    "token_too_large",
    "jwt_not_configured",
    "invalid_authorization",
    "ambiguous_credentials",
    "too_many_attempts",
    "organization_not_found",
    "organization_inactive",
    "organization_deleted",
    "organization_required",
    "tenant_mismatch",
    "conflicting_selectors",
    "invalid_header",
    "token_revoked",
    "operator_only",
];

fn request_counter(label: &'static str, status: usize) -> Counter {
    metrics::counter!(HTTP_REQUESTS, "route" => label, "status" => STATUSES[status])
}

/// Series slots for route labels (the route table's, in `crate::routes`, plus `other`): a
/// fixed set, so label cardinality is bounded.
pub const MAX_ROUTES: usize = 40;
const STATUSES: [&str; 20] = [
    "200", "202", "400", "401", "402", "403", "404", "405", "408", "413", "415", "429", "500", "503", "other", "204",
    "431", "201", "409", "422",
];

fn status_index(status: u16) -> usize {
    match status {
        200 => 0,
        202 => 1,
        400 => 2,
        401 => 3,
        402 => 4,
        403 => 5,
        404 => 6,
        405 => 7,
        408 => 8,
        413 => 9,
        415 => 10,
        429 => 11,
        500 => 12,
        503 => 13,
        204 => 15,
        431 => 16,
        201 => 17,
        409 => 18,
        422 => 19,
        _ => 14,
    }
}

/// Handles for the per-request series, registered on first use. The `counter!`
/// macro builds a key (allocating its label list) and looks it up in the
/// registry on every call; a cached handle is one atomic add.
struct RequestSeries {
    requests: [[OnceLock<Counter>; STATUSES.len()]; MAX_ROUTES],
    durations: [OnceLock<Histogram>; MAX_ROUTES],
    accepted: OnceLock<Counter>,
    /// `edge_source_events_total` by [`SOURCES`] index.
    sources: [OnceLock<Counter>; SOURCES.len()],
}

static SERIES: RequestSeries = RequestSeries {
    requests: [const { [const { OnceLock::new() }; STATUSES.len()] }; MAX_ROUTES],
    durations: [const { OnceLock::new() }; MAX_ROUTES],
    accepted: OnceLock::new(),
    sources: [const { OnceLock::new() }; SOURCES.len()],
};

/// Counts one HTTP request of the route `label`, whose series live in `slot` (< [`MAX_ROUTES`]).
pub fn http_request(slot: usize, label: &'static str, status: u16, seconds: f64) {
    let slot = slot.min(MAX_ROUTES - 1);
    let status = status_index(status);
    SERIES.requests[slot][status].get_or_init(|| request_counter(label, status)).increment(1);
    SERIES.durations[slot].get_or_init(|| metrics::histogram!(HTTP_DURATION, "route" => label)).record(seconds);
}

/// Creates a route's series at zero (every status).
pub fn register_route(slot: usize, label: &'static str) {
    let slot = slot.min(MAX_ROUTES - 1);
    for (status, series) in SERIES.requests[slot].iter().enumerate() {
        series.get_or_init(|| request_counter(label, status)).absolute(0);
    }
}

/// Histograms keep every recorded value in blocks until drained: runs until `stop`.
///
/// Drained often, so the blocks of one interval stay few and are reused from the allocator's
/// free lists: every 5 s, as before, each request-duration histogram grew by megabytes that
/// were freed, returned to the OS and faulted in again (most of the edge's page faults).
const UPKEEP_INTERVAL: Duration = Duration::from_millis(200);

pub async fn upkeep(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
            _ = stop.cancelled() => return,
        }
    }
}

/// The wire formats events arrive in (`edge_source_events_total{source}`).
pub const SOURCES: [&str; 3] = ["native", "posthog", "segment"];

/// Counts `n` events accepted from `source` (one of [`SOURCES`]) through a cached handle.
pub fn source_events(source: &'static str, n: u64) {
    let i = SOURCES.iter().position(|s| *s == source).unwrap_or(0);
    SERIES.sources[i].get_or_init(|| metrics::counter!(SOURCE_EVENTS, "source" => SOURCES[i])).increment(n);
}

pub fn events_accepted(n: u64) {
    SERIES.accepted.get_or_init(|| metrics::counter!(EVENTS_ACCEPTED)).increment(n);
}
