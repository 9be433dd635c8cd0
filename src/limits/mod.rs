//! Limits: is this organisation allowed to send these events now?
//!
//! Two checks, answered as values so the handler owns the response: the
//! per-second ingestion rate of the organisation's tier ([`rate`], 429 +
//! `Retry-After`) and its monthly event quota (402, not retryable).
//!
//! The quota is *reserved*, not checked then charged: [`OrgLimits::reserve`]
//! grants at most what is left in one atomic step, before the events are
//! stored, so neither a large batch nor parallel requests pass the limit and a
//! client hanging up after the append cannot skip the charge. A batch that
//! crosses the line is cut per event; events that could not be stored are
//! given back with [`OrgLimits::refund`].
//!
//! The rate holds across a fleet of nodes when `REDIS_URL` is set: [`fleet`]
//! charges each node's buckets with what the other nodes admitted, in the
//! background, and when Redis is unreachable each node keeps to its share of the
//! limit, never to no limit at all. Monthly quotas then hold fleet-wide too: each
//! node admits from a lease of the quota that Redis grants it ([`fleet_quota`], [`lease`]),
//! and saves its charges to PostgreSQL. Alone, a node keeps its own counts in the data
//! directory ([`quota_store`]).

pub mod fleet;
pub mod fleet_control;
pub mod fleet_quota;
pub mod lease;
pub mod logins;
pub mod quota_store;
pub mod rate;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::plan::Tier;
use crate::tenant::{Org, OrgId, PerOrg};
use fleet::FleetShare;
use lease::QuotaLease;
use rate::{Bucket, RateDecision};

/// Why events are refused: a value, not an answer ([`crate::error`] makes the 429 and 402).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// Over the tier's per-second rate; a token is free again after `retry_after`.
    RateLimited { tier: &'static str, limit_per_sec: u64, retry_after: Duration },
    /// This month's events are used up: not retryable until the month turns or the tier changes.
    QuotaExceeded { tier: &'static str, limit_per_month: u64 },
    /// Over the tier's control-plane requests per minute (`api_requests_per_minute`).
    ApiRateLimited { tier: &'static str, limit_per_minute: u64, retry_after: Duration },
}

/// Counters for one organisation; lives as long as the process, across registry reloads.
/// Aligned to cache lines, so cores serving different organisations never contend on one;
/// what every ingestion request touches comes first and fits the first line (`repr(C)` keeps
/// the order), the control plane's and the fleet's counters follow.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct OrgCounters {
    bucket: Bucket,
    month_events: AtomicU64,
    /// Events admitted since the last fleet sync took them (only counted with a fleet).
    unsynced: AtomicU64,
    /// Events accepted and their bodies' bytes since `usage-recorder` last took them.
    usage_events: AtomicU64,
    usage_bytes: AtomicU64,
    /// Months since year 0 for which `month_events` counts.
    month: AtomicU32,
    /// Requests allowed per limit ([`Decision`]) since `limit-metrics` last published them.
    allowed: [AtomicU32; 3],
    // Second line on: the control plane's and the fleet's.
    /// Control-plane requests since `usage-recorder` last took them.
    usage_api: AtomicU64,
    /// Control-plane requests: the minute (unix minutes) in the high half, its count in the low.
    api_window: AtomicU64,
    /// Other nodes' control-plane requests in a minute (Redis's clock), packed the same way.
    api_others: AtomicU64,
    /// Control-plane requests admitted since the fleet sync last took them.
    api_unsynced: AtomicU64,
    /// This node's part of the fleet's monthly quota (only used with a fleet).
    quota: QuotaLease,
}

/// Which limit decided: the index into the per-organisation allowed counts and the metric's `limit` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Rate = 0,
    Quota = 1,
    Api = 2,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Rate, Decision::Quota, Decision::Api];

    pub fn label(self) -> &'static str {
        match self {
            Decision::Rate => "rate",
            Decision::Quota => "quota",
            Decision::Api => "api",
        }
    }
}

impl LimitError {
    /// Counts a refusal: `edge_limit_decisions_total{outcome="refused"}` and the per-kind counter.
    pub fn count(&self) {
        let (tier, decision, kind) = match self {
            LimitError::RateLimited { tier, .. } => (*tier, Decision::Rate, crate::metrics::RATE_LIMITED),
            LimitError::ApiRateLimited { tier, .. } => (*tier, Decision::Api, crate::metrics::RATE_LIMITED),
            LimitError::QuotaExceeded { tier, .. } => (*tier, Decision::Quota, crate::metrics::QUOTA_EXCEEDED),
        };
        metrics::counter!(kind, "tier" => tier).increment(1);
        metrics::counter!(crate::metrics::LIMIT_DECISIONS, "tier" => tier, "limit" => decision.label(), "outcome" => "refused")
            .increment(1);
    }
}

pub struct Limiter {
    /// Rate buckets run on its monotonic time; quota months come from the caller's receive time.
    clock: Clock,
    /// Indexed by the organisation's slot: one array index per request, whatever the tenant count.
    orgs: PerOrg<OrgCounters>,
    /// This node's part of fleet-wide limits (all of them when alone).
    fleet: FleetShare,
}

impl Limiter {
    /// Limits of a node on its own.
    pub fn new(clock: Clock) -> Self {
        Limiter::with_fleet(clock, FleetShare::local())
    }

    pub fn with_fleet(clock: Clock, fleet: FleetShare) -> Self {
        Limiter { clock, orgs: PerOrg::default(), fleet }
    }

    pub fn fleet(&self) -> &FleetShare {
        &self.fleet
    }

    /// Every organisation's non-zero `counter`, taken (set back to zero), by slot.
    fn take_each(&self, counter: impl Fn(&OrgCounters) -> &AtomicU64) -> Vec<(u32, u64)> {
        self.orgs.iter().map(|(slot, c)| (slot, take(counter(c)))).filter(|&(_, n)| n > 0).collect()
    }

    /// Takes the events admitted since the last call, per organisation slot (the fleet sync).
    pub fn take_unsynced(&self) -> Vec<(u32, u64)> {
        self.take_each(|c| &c.unsynced)
    }

    /// Gives back counts the fleet did not take (Redis unreachable): sent with the next tick.
    pub fn give_back_unsynced(&self, slot: u32, n: u64) {
        self.orgs.get(slot).unsynced.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes the control-plane requests admitted since the last call, per organisation slot.
    pub fn take_api_unsynced(&self) -> Vec<(u32, u64)> {
        self.take_each(|c| &c.api_unsynced)
    }

    pub fn give_back_api_unsynced(&self, slot: u32, n: u64) {
        self.orgs.get(slot).api_unsynced.fetch_add(n, Ordering::AcqRel);
    }

    /// What the other nodes counted of an organisation's control-plane requests in `minute`.
    pub fn set_api_others(&self, slot: u32, minute: u64, n: u64) {
        self.orgs.get(slot).api_others.store((minute << 32) | n.min(0xffff_ffff), Ordering::Release);
    }

    /// Takes the requests allowed since the last call, per organisation slot and limit.
    pub fn take_allowed(&self) -> Vec<(u32, [u64; 3])> {
        self.orgs
            .iter()
            .filter_map(|(slot, c)| {
                let taken = [0, 1, 2].map(|i| match c.allowed[i].load(Ordering::Relaxed) {
                    0 => 0,
                    _ => u64::from(c.allowed[i].swap(0, Ordering::AcqRel)),
                });
                (taken != [0; 3]).then_some((slot, taken))
            })
            .collect()
    }

    /// Takes the usage counted since the last call: per organisation slot, (events accepted,
    /// control-plane requests, bytes ingested).
    pub fn take_usage(&self) -> Vec<(u32, [u64; 3])> {
        self.orgs
            .iter()
            .filter_map(|(slot, c)| {
                let taken = [&c.usage_events, &c.usage_api, &c.usage_bytes].map(take);
                (taken != [0; 3]).then_some((slot, taken))
            })
            .collect()
    }

    /// The organisation's quota lease (the fleet's quota sync).
    pub fn quota_lease(&self, slot: u32) -> &QuotaLease {
        &self.orgs.get(slot).quota
    }

    /// Every organisation's quota lease, by slot.
    pub fn quota_leases(&self) -> impl Iterator<Item = (u32, &QuotaLease)> {
        self.orgs.iter().map(|(slot, c)| (slot, &c.quota))
    }

    /// Charges `n` events that other nodes admitted for `org` to its bucket here (into
    /// bounded debt, [`Bucket::charge`]).
    pub fn charge_fleet(&self, org: &Org, n: u64) {
        let tier = &org.tier;
        let burst = tier.events_per_second.saturating_mul(tier.burst_seconds);
        let (rate, burst) = self.fleet.local_limits(tier.events_per_second, burst);
        self.orgs.get(org.id.slot()).bucket.charge(self.clock.monotonic_ns(), n, rate, burst);
    }
}

impl Limiter {
    /// The organisation's limits for one request.
    pub fn org<'l>(&'l self, org: &'l Org) -> OrgLimits<'l> {
        OrgLimits { clock: &self.clock, fleet: &self.fleet, tier: &org.tier, counters: self.orgs.get(org.id.slot()) }
    }

    /// Sets an organisation's count for `month` (restoring saved counts at start).
    pub fn restore_month(&self, org: &OrgId, month: u32, used: u64) {
        let c = self.orgs.get(org.slot());
        c.month.store(month, Ordering::Release);
        c.month_events.store(used, Ordering::Release);
    }

    /// Every organisation's count charged in `month` (zero counts left out).
    pub fn month_counts(&self, month: u32) -> Vec<(OrgId, u64)> {
        self.orgs
            .iter()
            .filter_map(|(slot, c)| Some((slot, c.used_in(month))).filter(|(_, used)| *used > 0))
            .filter_map(|(slot, used)| Some((OrgId::from_slot(slot)?, used)))
            .collect()
    }

    /// Events charged in the month of `now_unix_secs` (`/quotas`, tests): zero once it has turned.
    /// With a fleet, the fleet's count as this node last learnt it.
    pub fn month_events(&self, org: &OrgId, now_unix_secs: i64) -> u64 {
        let c = self.orgs.get(org.slot());
        if self.fleet.enabled() {
            return c.quota.fleet_used();
        }
        c.used_in(month_index(now_unix_secs))
    }
}

/// How often allowed decisions are published (`limit-metrics`).
pub const DECISIONS_EVERY: Duration = Duration::from_secs(1);

/// Publishes `edge_limit_decisions_total{outcome="allowed"}` per tier from the per-organisation
/// counts the request path keeps (an atomic add in a line it already holds, not a labelled
/// metric lookup per request), until `stop`.
pub async fn publish_decisions(
    limiter: std::sync::Arc<Limiter>,
    registry: std::sync::Arc<crate::tenant::Registry>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(DECISIONS_EVERY) => false,
            _ = stop.cancelled() => true,
        };
        let snapshot = registry.snapshot();
        let mut per_tier: Vec<(&'static str, [u64; 3])> = Vec::new();
        for (slot, allowed) in limiter.take_allowed() {
            let Some(org) = OrgId::from_slot(slot).and_then(|id| snapshot.org(id.as_str()).cloned()) else { continue };
            match per_tier.iter_mut().find(|(name, _)| *name == org.tier.name) {
                Some((_, sum)) => (0..3).for_each(|i| sum[i] += allowed[i]),
                None => per_tier.push((org.tier.name, allowed)),
            }
        }
        for (tier, sums) in per_tier {
            for decision in Decision::ALL {
                let n = sums[decision as usize];
                if n > 0 {
                    let labels = [("tier", tier), ("limit", decision.label()), ("outcome", "allowed")];
                    metrics::counter!(crate::metrics::LIMIT_DECISIONS, &labels).increment(n);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// One organisation's limits, looked up once per request.
pub struct OrgLimits<'l> {
    clock: &'l Clock,
    fleet: &'l FleetShare,
    pub tier: &'l Tier,
    counters: &'l OrgCounters,
}

impl OrgLimits<'_> {
    /// Is this month's quota used up? A cheap check before any body is read.
    pub fn check_quota(&self, now_unix_secs: i64) -> Result<(), LimitError> {
        if self.fleet.enabled() {
            return match self.counters.quota.exhausted(self.quota_chunk()) {
                true => Err(self.quota_exceeded()),
                false => Ok(()),
            };
        }
        let limit = self.tier.events_per_month;
        let month = month_index(now_unix_secs);
        if self.counters.used_in(month) >= limit {
            return Err(self.quota_exceeded());
        }
        Ok(())
    }

    /// The quota this node takes from Redis at a time for this organisation.
    fn quota_chunk(&self) -> u64 {
        self.fleet.quota_chunk(self.tier)
    }

    pub fn quota_exceeded(&self) -> LimitError {
        LimitError::QuotaExceeded { tier: self.tier.name, limit_per_month: self.tier.events_per_month }
    }

    /// Takes `n` events from the organisation's per-second rate.
    pub fn check_rate(&self, n: u64) -> Result<(), LimitError> {
        let tier = self.tier;
        let burst = tier.events_per_second.saturating_mul(tier.burst_seconds);
        let now = self.clock.monotonic_ns();
        let (rate, burst) = self.fleet.local_limits(tier.events_per_second, burst);
        match self.counters.bucket.check(now, n, rate, burst) {
            RateDecision::Allow => {
                self.counters.allowed[Decision::Rate as usize].fetch_add(1, Ordering::Relaxed);
                if self.fleet.enabled() {
                    self.counters.unsynced.fetch_add(n, Ordering::Relaxed);
                }
                Ok(())
            }
            RateDecision::Limit { retry_after } => {
                Err(LimitError::RateLimited { tier: tier.name, limit_per_sec: tier.events_per_second, retry_after })
            }
        }
    }

    /// Reserves up to `n` events of this month's quota in one atomic step and returns how many
    /// were granted: parallel requests can never together pass the limit. Events granted are
    /// charged now, before they are stored; [`OrgLimits::refund`] gives back what was not stored.
    pub fn reserve(&self, n: u64, now_unix_secs: i64) -> u64 {
        let granted = self.reserve_uncounted(n, now_unix_secs);
        if granted > 0 {
            self.counters.allowed[Decision::Quota as usize].fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    fn reserve_uncounted(&self, n: u64, now_unix_secs: i64) -> u64 {
        if self.fleet.enabled() {
            return self.counters.quota.take(n, self.quota_chunk());
        }
        let limit = self.tier.events_per_month;
        let month = month_index(now_unix_secs);
        let c = self.counters;
        c.roll_to(month);
        match c.month_events.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used < limit).then(|| used + n.min(limit - used))
        }) {
            Ok(before) => n.min(limit - before),
            Err(_) => 0,
        }
    }

    /// Counts one control-plane request against the tier's per-minute allowance (a fixed
    /// window per calendar minute, lock-free).
    /// With a fleet, what the other nodes counted in the same minute (as of the last sync)
    /// counts too, and while Redis is unreachable the allowance is this node's share.
    pub fn check_api(&self, now_unix_secs: u64) -> Result<(), LimitError> {
        let full = u64::from(self.tier.api_requests_per_minute);
        let minute = now_unix_secs / 60;
        let (limit, others) = if self.fleet.enabled() {
            let others = self.counters.api_others.load(Ordering::Acquire);
            let others = if others >> 32 == minute { others & 0xffff_ffff } else { 0 };
            let (share, _) = self.fleet.local_limits(full, full);
            (share, others)
        } else {
            (full, 0)
        };
        let counted = self.counters.api_window.fetch_update(Ordering::AcqRel, Ordering::Acquire, |window| {
            let used = if window >> 32 == minute { window & 0xffff_ffff } else { 0 };
            (used + others < limit).then_some((minute << 32) | (used + 1))
        });
        match counted {
            Ok(_) => {
                self.counters.allowed[Decision::Api as usize].fetch_add(1, Ordering::Relaxed);
                self.counters.usage_api.fetch_add(1, Ordering::Relaxed);
                if self.fleet.enabled() {
                    self.counters.api_unsynced.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(_) => Err(LimitError::ApiRateLimited {
                tier: self.tier.name,
                limit_per_minute: full,
                retry_after: Duration::from_secs(60 - now_unix_secs % 60),
            }),
        }
    }

    /// Counts accepted events and the bytes of the body they came in, for the usage rows.
    pub fn record_usage(&self, events: u64, bytes: u64) {
        self.counters.usage_events.fetch_add(events, Ordering::Relaxed);
        self.counters.usage_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back `n` reserved events that were not stored after all.
    pub fn refund(&self, n: u64, now_unix_secs: i64) {
        if self.fleet.enabled() {
            return self.counters.quota.refund(n);
        }
        let month = month_index(now_unix_secs);
        let c = self.counters;
        if c.month.load(Ordering::Acquire) == month {
            let _ = c.month_events.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
        }
    }
}

impl OrgCounters {
    fn used_in(&self, month: u32) -> u64 {
        if self.month.load(Ordering::Acquire) == month {
            self.month_events.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// A new month starts from zero (whoever sees it first resets the count).
    fn roll_to(&self, month: u32) {
        let seen = self.month.load(Ordering::Acquire);
        if seen != month && self.month.compare_exchange(seen, month, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.month_events.store(0, Ordering::Release);
        }
    }
}

/// Swaps a counter to zero; a zero one is only read, so idle organisations' lines stay shared.
fn take(counter: &AtomicU64) -> u64 {
    match counter.load(Ordering::Relaxed) {
        0 => 0,
        _ => counter.swap(0, Ordering::AcqRel),
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

    use crate::plan::TierTable;

    /// An organisation on the first tier of `tiers` (starter).
    fn org_on(tiers: &TierTable) -> Org {
        Org::new("org_test", "Test", "test", tiers.get("starter").unwrap().clone(), OrgStatus::Active)
    }

    #[test]
    fn what_every_request_touches_fits_one_cache_line() {
        assert_eq!(std::mem::offset_of!(OrgCounters, usage_api), 56);
        assert!(std::mem::offset_of!(OrgCounters, allowed) + 12 <= 64);
    }

    #[test]
    fn quota_reservations_never_overshoot() {
        let mut tiers = TierTable::default();
        tiers.tiers_mut().next().unwrap().events_per_month = 100;
        let l = Limiter::new(Clock::system());
        let o = org_on(&tiers);
        let now = 1_780_000_000;
        assert_eq!(l.org(&o).reserve(99, now), 99);
        assert_eq!(l.org(&o).check_quota(now), Ok(()));
        assert_eq!(l.org(&o).reserve(5_000, now), 1, "a batch crossing the line gets what is left");
        assert_eq!(l.org(&o).reserve(1, now), 0);
        assert_eq!(l.org(&o).check_quota(now), Err(l.org(&o).quota_exceeded()));
        l.org(&o).refund(10, now);
        assert_eq!(l.org(&o).reserve(20, now), 10);
        // A new month starts from zero.
        assert_eq!(l.org(&o).check_quota(now + 40 * 86400), Ok(()));
        assert_eq!(l.org(&o).reserve(1, now + 40 * 86400), 1);
        assert_eq!(l.month_events(&o.id, now + 40 * 86400), 1);
        assert_eq!(l.month_events(&o.id, now + 80 * 86400), 0, "a month with nothing charged yet");
    }

    #[test]
    fn parallel_reservations_stop_at_the_limit() {
        let mut tiers = TierTable::default();
        tiers.tiers_mut().next().unwrap().events_per_month = 1_000;
        let l = std::sync::Arc::new(Limiter::new(Clock::system()));
        let o = org_on(&tiers);
        let granted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (l, o) = (l.clone(), &o);
                    s.spawn(move || (0..500).map(|_| l.org(o).reserve(3, 1_780_000_000)).sum::<u64>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 1_000);
    }

    #[test]
    fn rate_limit_reports_tier_limit_and_refills_as_time_moves() {
        let mut tiers = TierTable::default();
        tiers.tiers_mut().next().unwrap().events_per_second = 5;
        let clock = Clock::manual(std::time::SystemTime::now());
        let l = Limiter::new(clock.clone());
        let o = org_on(&tiers);
        assert_eq!(l.org(&o).check_rate(10), Ok(()));
        let wait = match l.org(&o).check_rate(1) {
            Err(LimitError::RateLimited { limit_per_sec, retry_after, tier }) => {
                assert_eq!((limit_per_sec, tier), (5, o.tier.name));
                retry_after
            }
            other => panic!("{other:?}"),
        };
        clock.advance(wait - Duration::from_nanos(1));
        assert!(l.org(&o).check_rate(1).is_err(), "not a nanosecond early");
        clock.advance(Duration::from_nanos(1));
        assert_eq!(l.org(&o).check_rate(1), Ok(()));
    }

    #[test]
    fn control_plane_requests_hold_to_the_tier_per_calendar_minute() {
        let mut tiers = TierTable::default();
        tiers.tiers_mut().next().unwrap().api_requests_per_minute = 3;
        let l = Limiter::new(Clock::system());
        let o = org_on(&tiers);
        let now = 1_800_000_010; // 10 s into a minute
        assert!((0..3).all(|_| l.org(&o).check_api(now).is_ok()));
        match l.org(&o).check_api(now + 5) {
            Err(LimitError::ApiRateLimited { limit_per_minute: 3, retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(45))
            }
            other => panic!("{other:?}"),
        }
        assert!(l.org(&o).check_api(now + 50).is_ok(), "the next minute starts afresh");
    }
}
