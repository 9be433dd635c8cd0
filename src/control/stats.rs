//! `GET /api/v1/stats/events?from=YYYY-MM-DD&to=YYYY-MM-DD`: per-day event
//! counts, revenue and unique devices of the caller's organisation (never
//! another's: the organisation comes from the credential). Defaults to the
//! last 30 days. SDK keys are write-only and get 403.

use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use super::{ControlError, ControlState};
use crate::auth::Principal;
use crate::http::response::{self, Body};

const DEFAULT_DAYS: u32 = 30;

/// `principal` holds `events:read` (checked by the route table).
pub fn handle(state: &ControlState, principal: &Principal, req: &Parts) -> Result<Response<Body>, ControlError> {
    let today = state.clock.today();
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
    let report = state.stats.report(&principal.org.id, from, to, today);
    Ok(response::json(StatusCode::OK, serde_json::to_vec(&report).unwrap_or_default()))
}

/// Days since the epoch of a `YYYY-MM-DD` date.
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
