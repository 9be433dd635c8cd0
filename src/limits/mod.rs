//! Limits: is this organisation allowed to send these events now?
//!
//! Two checks, both answered as values ([`Decision`]) so the handler owns the
//! response: the per-second ingestion rate of the organisation's tier
//! ([`rate`], 429 + `Retry-After`) and its monthly event quota (402, not retryable).
//!
//! State is per node today (counted from this node's traffic). The fleet-wide
//! version syncs these counters through Redis and falls back to these local
//! values when Redis is unreachable: fail open, counted in a metric.

pub mod rate;
pub mod tiers;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::tenant::{Org, OrgId};
use rate::{Bucket, Epoch, RateDecision};
use tiers::TierTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    RateLimited { retry_after: Duration, limit_per_sec: u64 },
    QuotaExceeded { limit_per_month: u64 },
}

/// Counters for one organisation; lives as long as the process, across registry reloads.
#[derive(Debug, Default)]
struct OrgCounters {
    bucket: Bucket,
    /// Months since year 0 for which `month_events` counts.
    month: AtomicU32,
    month_events: AtomicU64,
}

pub struct Limiter {
    tiers: TierTable,
    epoch: Epoch,
    orgs: DashMap<OrgId, OrgCounters, ahash::RandomState>,
}

impl Limiter {
    pub fn new(tiers: TierTable) -> Self {
        Limiter { tiers, epoch: Epoch::default(), orgs: DashMap::default() }
    }

    pub fn tiers(&self) -> &TierTable {
        &self.tiers
    }

    /// Runs `f` on the organisation's counters under the shard's guard: nothing is
    /// cloned, so no shared reference count bounces between cores per request.
    fn with_counters<R>(&self, org: &OrgId, f: impl FnOnce(&OrgCounters) -> R) -> R {
        if let Some(c) = self.orgs.get(org) {
            return f(&c);
        }
        let c = self.orgs.entry(org.clone()).or_default();
        f(&c)
    }

    /// Checks quota then rate for `n` events; on `Allow` the rate tokens are taken.
    /// The quota is charged separately with [`Limiter::record`] for what was accepted.
    pub fn check(&self, org: &Org, n: u64, now_unix_secs: i64) -> Decision {
        let tier = self.tiers.by_index(org.tier);
        let month = month_index(now_unix_secs);
        self.with_counters(&org.id, |counters| {
            let used = if counters.month.load(Ordering::Relaxed) == month {
                counters.month_events.load(Ordering::Relaxed)
            } else {
                0
            };
            if used >= tier.events_per_month {
                return Decision::QuotaExceeded { limit_per_month: tier.events_per_month };
            }
            let burst = tier.events_per_second.saturating_mul(tier.burst_seconds);
            match counters.bucket.check(self.epoch.now_ns(), n, tier.events_per_second, burst) {
                RateDecision::Allow => Decision::Allow,
                RateDecision::Limit { retry_after } => {
                    Decision::RateLimited { retry_after, limit_per_sec: tier.events_per_second }
                }
            }
        })
    }

    /// Charges `n` accepted events to the organisation's monthly quota.
    pub fn record(&self, org: &OrgId, n: u64, now_unix_secs: i64) {
        let month = month_index(now_unix_secs);
        self.with_counters(org, |counters| {
            let seen = counters.month.load(Ordering::Relaxed);
            if seen != month
                && counters.month.compare_exchange(seen, month, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                counters.month_events.store(0, Ordering::Relaxed);
            }
            counters.month_events.fetch_add(n, Ordering::Relaxed);
        })
    }

    /// Events charged this month (for `/usage` and tests).
    pub fn month_events(&self, org: &OrgId) -> u64 {
        self.orgs.get(org).map(|c| c.month_events.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// Calendar month number (UTC) of a unix timestamp.
fn month_index(unix_secs: i64) -> u32 {
    let date = time::OffsetDateTime::from_unix_timestamp(unix_secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (date.year() as u32) * 12 + (date.month() as u32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::OrgStatus;

    fn org(tier: usize) -> Org {
        Org::new("org_test", "Test", "test", tier, OrgStatus::Active)
    }

    #[test]
    fn quota_exhaustion_is_402_not_429() {
        let mut tiers = TierTable::default();
        tiers.tiers_mut().next().unwrap().events_per_month = 10;
        let l = Limiter::new(tiers);
        let o = org(0);
        let now = 1_780_000_000;
        assert_eq!(l.check(&o, 10, now), Decision::Allow);
        l.record(&o.id, 10, now);
        assert_eq!(l.check(&o, 1, now), Decision::QuotaExceeded { limit_per_month: 10 });
        // A new month starts from zero.
        assert_eq!(l.check(&o, 1, now + 40 * 86400), Decision::Allow);
        l.record(&o.id, 1, now + 40 * 86400);
        assert_eq!(l.month_events(&o.id), 1);
    }

    #[test]
    fn rate_limit_reports_tier_limit() {
        let mut tiers = TierTable::default();
        tiers.tiers_mut().next().unwrap().events_per_second = 5;
        let l = Limiter::new(tiers);
        let o = org(0);
        assert_eq!(l.check(&o, 10, 0), Decision::Allow);
        match l.check(&o, 1, 0) {
            Decision::RateLimited { limit_per_sec, retry_after } => {
                assert_eq!(limit_per_sec, 5);
                assert!(retry_after > Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
    }
}
