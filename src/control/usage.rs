//! Usage rows: `tenant_usage` holds one row per organisation and UTC day of arrival.
//!
//! - **API requests and bytes ingested**: each node counts them per organisation (atomic adds
//!   in the limiter's per-organisation line) and `usage-recorder` saves them every
//!   `EDGE_USAGE_INTERVAL` as one *period* keyed by (node id, period start), through
//!   `edge_private.usage_record`, which adds a period's counts to `tenant_usage` only the first
//!   time it sees that key. A period whose save failed is retried with the same key, so no
//!   count is added twice; the node id survives restarts and a restarted node's periods start
//!   later than any before, so a restart neither double-counts nor collides. A crash loses at
//!   most the period in progress (and the unsaved ones, at most [`MAX_PENDING`]).
//! - **Events and unique devices**: `usage-rollup` sets them every `EDGE_USAGE_ROLLUP_INTERVAL`
//!   from ClickHouse (`uniqExact(event_id)`, `uniqExact(device_id)` per organisation and day of
//!   `received_at`, over the last `EDGE_USAGE_ROLLUP_DAYS` days): a client's retry of an
//!   event, or a replay after a crash, counts once, and several nodes setting the same value
//!   agree.
//!
//! `GET /api/v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD` (default: the last 30 days) reads the
//! caller's rows through its tenant transaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{reply, ControlError, ControlState};
use crate::aggregates::day_to_date;
use crate::auth::Principal;
use crate::clock::Clock;
use crate::db::Db;
use crate::http::response::Body;
use crate::limits::Limiter;
use crate::tenant::OrgId;

/// Periods kept for retry while PostgreSQL is unreachable; older ones are dropped (logged).
pub const MAX_PENDING: usize = 1_440;
/// The longest date range one request reads.
const MAX_RANGE_DAYS: u32 = 366;
const CLICKHOUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /api/v1/usage`: the caller's rows, one per day that has one, oldest first.
pub async fn get(state: &ControlState, caller: &Principal, req: &Parts) -> Result<Response<Body>, ControlError> {
    let (from, to) = super::stats::date_range(req, state.clock.today())?;
    if to - from >= MAX_RANGE_DAYS {
        return Err(ControlError::InvalidRange);
    }
    let (first, last) = (day_to_date(from), day_to_date(to));
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let rows = tx
        .query(
            "SELECT metric_date::text, events_count, api_requests_count, bytes_ingested, unique_users_count \
             FROM tenant_usage WHERE organization_id = $1 AND metric_date BETWEEN $2::text::date AND $3::text::date \
             ORDER BY metric_date",
            &[&org, &first, &last],
        )
        .await?;
    tx.commit().await?;
    let days: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "date": r.get::<_, String>(0),
                "events": r.get::<_, i64>(1),
                "api_requests": r.get::<_, i64>(2),
                "bytes_ingested": r.get::<_, i64>(3),
                "unique_devices": r.get::<_, i32>(4),
            })
        })
        .collect();
    reply(StatusCode::OK, json!({"from": first, "to": last, "days": days}))
}

/// One node's counts over one period.
struct Period {
    start_ms: u64,
    /// (organisation, events, API requests, bytes)
    rows: Vec<(String, i64, i64, i64)>,
}

/// Saves this node's per-period counts (`usage-recorder`).
pub struct UsageRecorder {
    pub db: Db,
    pub limiter: Arc<Limiter>,
    pub node_id: String,
    pub interval: Duration,
    pub clock: Clock,
}

impl UsageRecorder {
    pub async fn run(self, stop: CancellationToken) {
        let interval_ms = (self.interval.as_millis() as u64).max(1);
        let mut start_ms = self.clock.unix_millis();
        let mut pending: VecDeque<Period> = VecDeque::new();
        let mut failing = false;
        loop {
            // Periods end on multiples of the interval and at midnight, so none spans two days.
            let now = self.clock.unix_millis();
            let next = (now / interval_ms + 1) * interval_ms;
            let midnight = (now / 86_400_000 + 1) * 86_400_000;
            let wait = Duration::from_millis(next.min(midnight).saturating_sub(now).max(1));
            let stopping = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = stop.cancelled() => true,
            };
            let end_ms = self.clock.unix_millis();
            let rows: Vec<_> = self
                .limiter
                .take_usage()
                .into_iter()
                .filter_map(|(slot, [events, api, bytes])| {
                    Some((OrgId::from_slot(slot)?.as_str().to_string(), events as i64, api as i64, bytes as i64))
                })
                .collect();
            if !rows.is_empty() {
                if pending.len() == MAX_PENDING {
                    pending.pop_front();
                    tracing::warn!("usage periods unsaved for too long; dropping the oldest");
                }
                pending.push_back(Period { start_ms, rows });
            }
            start_ms = end_ms;
            while let Some(period) = pending.front() {
                match self.save(period).await {
                    Ok(()) => {
                        pending.pop_front();
                        if std::mem::take(&mut failing) {
                            tracing::info!("usage rows saved again");
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, pending = pending.len(), "could not save usage; retrying");
                        }
                        break;
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    async fn save(&self, period: &Period) -> Result<(), crate::db::DbError> {
        let date = day_to_date((period.start_ms / 86_400_000) as u32);
        let orgs: Vec<&str> = period.rows.iter().map(|r| r.0.as_str()).collect();
        let events: Vec<i64> = period.rows.iter().map(|r| r.1).collect();
        let api: Vec<i64> = period.rows.iter().map(|r| r.2).collect();
        let bytes: Vec<i64> = period.rows.iter().map(|r| r.3).collect();
        self.db
            .cross_tenant(
                "SELECT edge_private.usage_record($1, $2, $3::text::date, $4, $5, $6, $7)",
                &[&self.node_id, &(period.start_ms as i64), &date, &orgs, &events, &api, &bytes],
            )
            .await
            .map(|_| ())
    }
}

/// Sets events and unique devices from ClickHouse (`usage-rollup`), every `interval`.
pub struct UsageRollup {
    pub db: Db,
    pub clickhouse: clickhouse::Client,
    pub interval: Duration,
    pub days: u32,
    pub clock: Clock,
}

impl UsageRollup {
    pub async fn run(self, stop: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.cancelled() => return,
            }
            match tokio::time::timeout(CLICKHOUSE_TIMEOUT, self.once()).await.unwrap_or(Err("timed out".into())) {
                Ok(rows) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(rows, "usage roll-up from ClickHouse works again");
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "usage roll-up from ClickHouse failed; retrying");
                    }
                }
            }
        }
    }

    /// One roll-up; returns how many (organisation, day) rows it set.
    pub async fn once(&self) -> Result<usize, String> {
        let first = day_to_date(self.clock.today().saturating_sub(self.days.max(1) - 1));
        let text = self
            .clickhouse
            .query(
                "SELECT organization_id, toString(toDate(received_at)), uniqExact(event_id), uniqExact(device_id) \
                 FROM events WHERE received_at >= toDateTime(?) \
                 GROUP BY organization_id, toDate(received_at)",
            )
            .bind(format!("{first} 00:00:00"))
            .fetch_bytes("TabSeparated")
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&text);
        let (mut orgs, mut dates, mut events, mut devices) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for line in text.lines() {
            let mut fields = line.split('\t');
            let (Some(org), Some(day), Some(n), Some(d)) = (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(n), Ok(d)) = (n.parse::<i64>(), d.parse::<i64>()) else { continue };
            orgs.push(org.to_string());
            dates.push(day.to_string());
            events.push(n);
            devices.push(d);
        }
        if orgs.is_empty() {
            return Ok(0);
        }
        self.db
            .cross_tenant(
                "SELECT edge_private.usage_set_events($1, $2::text[]::date[], $3, $4)",
                &[&orgs, &dates, &events, &devices],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(orgs.len())
    }
}
