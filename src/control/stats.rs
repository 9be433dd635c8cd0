//! `GET /api/v1/stats/events?from=YYYY-MM-DD&to=YYYY-MM-DD`: per-day event
//! counts, revenue and unique devices of the caller's organisation (never
//! another's: the organisation comes from the credential). Defaults to the
//! last 30 days. SDK keys are write-only and get 403.
//!
//! With ClickHouse configured the numbers come from its daily aggregate
//! (`events_daily`, merged with `countMerge`/`sumMerge`/`uniqMerge`, unique
//! devices over the range merged as sketches, never summed). They count what
//! ClickHouse has received: events still in the spool appear once shipped,
//! and an event inserted twice (a replay after a crash, a client retry with
//! the same `event_id`) counts twice there until the events table's merges
//! collapse it; exact counts come from `events FINAL`. Without ClickHouse the
//! in-process aggregates of this node answer.

use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use super::{ControlError, ControlState};
use crate::aggregates::{DayRow, StatsReport};
use crate::auth::Principal;
use crate::http::response::{self, Body};

const DEFAULT_DAYS: u32 = 30;

/// `principal` holds `events:read` (checked by the route table).
pub async fn handle(state: &ControlState, principal: &Principal, req: &Parts) -> Result<Response<Body>, ControlError> {
    let today = state.clock.today();
    let (from, to) = date_range(req, today)?;
    let report = match &state.clickhouse {
        Some(ch) => {
            let from = from.max(to.saturating_sub(crate::aggregates::MAX_DAYS - 1));
            let reading = from_clickhouse(ch, principal.org.id.as_str(), from, to);
            tokio::time::timeout(CLICKHOUSE_TIMEOUT, reading).await.map_err(|_| ControlError::StatsUnavailable)??
        }
        None => state.stats.report(&principal.org.id, from, to, today),
    };
    Ok(response::json(StatusCode::OK, serde_json::to_vec(&report).unwrap_or_default()))
}

/// `sql` with its `?` bound to `args` in order, answered as TabSeparated text.
async fn fetch_tsv(ch: &clickhouse::Client, args: [&str; 3], sql: &str) -> Result<String, ControlError> {
    let query = args.into_iter().fold(ch.query(sql), |q, arg| q.bind(arg));
    let bytes =
        query.fetch_bytes("TabSeparated").map_err(|_| ControlError::StatsUnavailable)?.collect().await.map_err(
            |e| {
                tracing::warn!(error = %e, "stats from ClickHouse failed");
                ControlError::StatsUnavailable
            },
        )?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

const CLICKHOUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn from_clickhouse(ch: &clickhouse::Client, org: &str, from: u32, to: u32) -> Result<StatsReport, ControlError> {
    let (first, last) = (crate::aggregates::day_to_date(from), crate::aggregates::day_to_date(to));
    let days = fetch_tsv(
        ch,
        [org, &first, &last],
        "SELECT toString(event_date), countMerge(events), toFloat64(sumMerge(revenue)), uniqMerge(devices) \
         FROM events_daily WHERE organization_id = ? AND event_date BETWEEN toDate(?) AND toDate(?) \
         GROUP BY event_date ORDER BY event_date",
    )
    .await?;
    let unique = fetch_tsv(
        ch,
        [org, &first, &last],
        "SELECT uniqMerge(devices) FROM events_daily \
         WHERE organization_id = ? AND event_date BETWEEN toDate(?) AND toDate(?)",
    )
    .await?;
    let mut report = StatsReport {
        organization_id: org.to_string(),
        days: Vec::new(),
        total_events: 0,
        total_revenue: 0.0,
        unique_devices: unique.trim().parse().unwrap_or(0),
    };
    for line in days.lines() {
        let mut f = line.split('\t');
        let (Some(date), Some(events), Some(revenue), Some(devices)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let row = DayRow {
            date: date.to_string(),
            events: events.parse().unwrap_or(0),
            revenue: revenue.parse().unwrap_or(0.0),
            unique_devices: devices.parse().unwrap_or(0),
        };
        report.total_events += row.events;
        report.total_revenue += row.revenue;
        report.days.push(row);
    }
    report.total_revenue = (report.total_revenue * 100.0).round() / 100.0;
    Ok(report)
}

/// Days since the epoch of a `YYYY-MM-DD` date.
/// `?from=YYYY-MM-DD&to=YYYY-MM-DD` as day numbers; the last 30 days by default.
pub(super) fn date_range(req: &Parts, today: u32) -> Result<(u32, u32), ControlError> {
    let mut from = today.saturating_sub(DEFAULT_DAYS - 1);
    let mut to = today;
    for (key, value) in req.uri.query().unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')) {
        match key {
            "from" => from = parse_date(value).ok_or(ControlError::InvalidDate { field: "from" })?,
            "to" => to = parse_date(value).ok_or(ControlError::InvalidDate { field: "to" })?,
            _ => {}
        }
    }
    if from > to {
        return Err(ControlError::InvalidRange);
    }
    Ok((from, to))
}

fn parse_date(s: &str) -> Option<u32> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(s, &format).ok()?;
    let days = (date - time::Date::from_calendar_date(1970, time::Month::January, 1).ok()?).whole_days();
    u32::try_from(days).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(crate::aggregates::day_to_date(parse_date("2026-11-26").unwrap()), "2026-11-26");
        assert_eq!(parse_date("26/11/2026"), None);
    }
}
