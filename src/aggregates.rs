//! In-process per-tenant daily aggregates: event count, revenue and unique
//! devices per UTC day, answering `GET /api/v1/stats/events` without a
//! round trip to ClickHouse (and in `--dev` with no ClickHouse at all).
//!
//! Counts are atomic adds; each day's device sketch takes one short lock per
//! request. Unique devices are estimated (HyperLogLog, 4 096 registers, ≈ 1.6 %
//! standard error), sparse while a day has few devices: a sum of per-day
//! uniques is not the unique count of the whole range, which is why registers
//! are merged, not estimates added. Money totals saturate, never wrap.
//!
//! Memory is bounded in bytes (`EDGE_STATS_MAX_BYTES`): past it the oldest
//! days of any organisation are evicted, so ten thousand organisations
//! sending over a month cost what the bound says, not a sketch each per day.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use dashmap::DashMap;

use crate::event::EventSummary;
use crate::tenant::OrgId;

const HLL_BITS: u32 = 12;
const HLL_REGISTERS: usize = 1 << HLL_BITS;
/// A sparse sketch holds at most this many registers (4 bytes each) before it turns dense
/// (1 byte for each of the 4 096): small days, the common case, stay small.
const SPARSE_MAX: usize = 512;

/// Distinct count estimator over 64-bit hashes: the registers of a 4 096-register
/// HyperLogLog, kept sparse (sorted `index << 8 | rank`) while few are set.
#[derive(Debug, Clone)]
pub enum HyperLogLog {
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog::Sparse(Vec::new())
    }
}

impl HyperLogLog {
    /// Adds a hash; returns the change in bytes held.
    pub fn insert(&mut self, hash: u64) -> isize {
        let index = (hash >> (64 - HLL_BITS)) as u32;
        let rank = ((hash << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
        match self {
            HyperLogLog::Dense(registers) => {
                let r = &mut registers[index as usize];
                *r = (*r).max(rank);
                0
            }
            HyperLogLog::Sparse(entries) => match entries.binary_search_by_key(&index, |e| e >> 8) {
                Ok(at) => {
                    if (entries[at] & 0xff) < u32::from(rank) {
                        entries[at] = index << 8 | u32::from(rank);
                    }
                    0
                }
                Err(at) if entries.len() < SPARSE_MAX => {
                    let before = entries.capacity();
                    entries.insert(at, index << 8 | u32::from(rank));
                    4 * (entries.capacity() - before) as isize
                }
                Err(_) => {
                    let before = entries.capacity();
                    let mut registers = vec![0u8; HLL_REGISTERS].into_boxed_slice();
                    for e in entries.iter() {
                        registers[(e >> 8) as usize] = (e & 0xff) as u8;
                    }
                    registers[index as usize] = registers[index as usize].max(rank);
                    *self = HyperLogLog::Dense(registers);
                    HLL_REGISTERS as isize - 4 * before as isize
                }
            },
        }
    }

    fn merge_into(&self, acc: &mut [u8]) {
        match self {
            HyperLogLog::Dense(registers) => {
                for (a, r) in acc.iter_mut().zip(registers.iter()) {
                    *a = (*a).max(*r);
                }
            }
            HyperLogLog::Sparse(entries) => {
                for e in entries {
                    let a = &mut acc[(e >> 8) as usize];
                    *a = (*a).max((e & 0xff) as u8);
                }
            }
        }
    }

    pub fn estimate(&self) -> u64 {
        let mut regs = vec![0u8; HLL_REGISTERS];
        self.merge_into(&mut regs);
        estimate(&regs)
    }

    fn bytes(&self) -> usize {
        match self {
            HyperLogLog::Dense(_) => HLL_REGISTERS,
            HyperLogLog::Sparse(entries) => 4 * entries.capacity(),
        }
    }
}

fn estimate(registers: &[u8]) -> u64 {
    let m = registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|&r| 2f64.powi(-(r as i32))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    if raw <= 2.5 * m && zeros > 0 {
        // Small range: linear counting is far more accurate.
        (m * (m / zeros as f64).ln()).round() as u64
    } else {
        raw.round() as u64
    }
}

#[derive(Default)]
struct DayStats {
    events: AtomicU64,
    revenue_cents: AtomicI64,
    /// One short lock per request (per run of same-day events), uncontended across organisations.
    devices: Mutex<HyperLogLog>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DayRow {
    /// `YYYY-MM-DD`
    pub date: String,
    pub events: u64,
    pub revenue: f64,
    pub unique_devices: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatsReport {
    pub organization_id: String,
    pub days: Vec<DayRow>,
    pub total_events: u64,
    pub total_revenue: f64,
    /// Distinct devices over the whole range (registers merged, not days summed).
    pub unique_devices: u64,
}

/// Longest range a report covers (days).
pub const MAX_DAYS: u32 = 400;
/// What one organisation-day costs besides its sketch: map entry, key, counters, lock.
const DAY_BYTES: usize = 160;

pub struct Stats {
    /// Values inline in the map: one place to reach per request, no reference count.
    days: DashMap<(OrgId, u32), DayStats, ahash::RandomState>,
    /// Bytes held by the aggregates (estimated from what they allocate).
    bytes: AtomicUsize,
    max_bytes: usize,
    /// One eviction at a time; others carry on recording.
    evicting: Mutex<()>,
}

impl Stats {
    /// Aggregates that hold at most about `max_bytes`: past it the oldest days are evicted.
    pub fn new(max_bytes: usize) -> Self {
        Stats { days: DashMap::default(), bytes: AtomicUsize::new(0), max_bytes, evicting: Mutex::new(()) }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records one request's accepted events: one map lookup, one lock and one add per run of
    /// events on the same day (usually the whole request), not per event.
    pub fn record(&self, org: &OrgId, events: &[EventSummary]) {
        self.for_each_day(events, |day, run| {
            let mut cents = 0i64;
            let mut grown = 0isize;
            self.with_day(org, day, |stats| {
                let mut devices = stats.devices.lock().unwrap_or_else(|e| e.into_inner());
                for e in run {
                    grown += devices.insert(e.device_hash);
                    cents = cents.saturating_add(e.revenue_cents);
                }
                drop(devices);
                stats.events.fetch_add(run.len() as u64, Ordering::Relaxed);
                add_saturating(&stats.revenue_cents, cents);
            });
            if grown != 0 {
                self.grew(grown);
            }
        });
    }

    /// Takes back the counts of events that were recorded but then not stored (their devices
    /// stay in the sketch: a sketch cannot forget).
    pub fn forget(&self, org: &OrgId, events: &[EventSummary]) {
        self.for_each_day(events, |day, run| {
            if let Some(stats) = self.days.get(&(org.clone(), day)) {
                let cents = run.iter().fold(0i64, |sum, e| sum.saturating_add(e.revenue_cents));
                let _ = stats
                    .events
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(run.len() as u64)));
                add_saturating(&stats.revenue_cents, cents.saturating_neg());
            }
        });
    }

    fn for_each_day(&self, events: &[EventSummary], mut each: impl FnMut(u32, &[EventSummary])) {
        let mut rest = events;
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|e| e.day == first.day).count();
            let (same_day, tail) = rest.split_at(run);
            each(first.day, same_day);
            rest = tail;
        }
    }

    /// Runs `f` on the day's aggregates under the map's shard guard (no reference count
    /// touched); creates the day if it is new.
    fn with_day(&self, org: &OrgId, day: u32, f: impl FnOnce(&DayStats)) {
        let key = (org.clone(), day);
        if let Some(d) = self.days.get(&key) {
            return f(&d);
        }
        let mut created = false;
        {
            let entry = self.days.entry(key).or_insert_with(|| {
                created = true;
                DayStats::default()
            });
            f(&entry);
        }
        if created {
            self.grew(DAY_BYTES as isize);
        }
    }

    fn grew(&self, delta: isize) {
        let now = if delta >= 0 {
            self.bytes.fetch_add(delta as usize, Ordering::Relaxed) + delta as usize
        } else {
            self.bytes.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed) - delta.unsigned_abs()
        };
        if now > self.max_bytes {
            self.evict();
        }
    }

    /// Drops the oldest days (of any organisation) until a tenth of the bound is free.
    fn evict(&self) {
        let Ok(_one) = self.evicting.try_lock() else { return };
        let mut by_age: Vec<(u32, OrgId)> = self.days.iter().map(|e| (e.key().1, e.key().0.clone())).collect();
        by_age.sort_unstable_by_key(|(day, _)| *day);
        let target = self.max_bytes / 10 * 9;
        for (day, org) in by_age {
            if self.bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            if let Some((_, stats)) = self.days.remove(&(org, day)) {
                let sketch = stats.devices.lock().map(|d| d.bytes()).unwrap_or(0);
                self.bytes.fetch_sub((DAY_BYTES + sketch).min(self.bytes()), Ordering::Relaxed);
            }
        }
        metrics::counter!(crate::metrics::STATS_EVICTIONS).increment(1);
    }

    /// Per-day rows for `org` between `from` and `to` (days since the epoch, inclusive; at most
    /// [`MAX_DAYS`], counted back from `to`).
    pub fn report(&self, org: &OrgId, from: u32, to: u32, today: u32) -> StatsReport {
        // No day past tomorrow holds events (they may be at most 24 h ahead).
        let to = to.min(today + 1);
        let from = from.max(to.saturating_sub(MAX_DAYS - 1));
        let mut merged = vec![0u8; HLL_REGISTERS];
        let mut report = StatsReport {
            organization_id: org.to_string(),
            days: Vec::new(),
            total_events: 0,
            total_revenue: 0.0,
            unique_devices: 0,
        };
        let mut total_cents = 0i64;
        for day in from..=to {
            let Some((events, cents, devices)) = self.days.get(&(org.clone(), day)).map(|s| {
                let devices = s.devices.lock().unwrap_or_else(|e| e.into_inner()).clone();
                (s.events.load(Ordering::Relaxed), s.revenue_cents.load(Ordering::Relaxed), devices)
            }) else {
                continue;
            };
            devices.merge_into(&mut merged);
            report.total_events = report.total_events.saturating_add(events);
            total_cents = total_cents.saturating_add(cents);
            report.days.push(DayRow {
                date: day_to_date(day),
                events,
                revenue: cents as f64 / 100.0,
                unique_devices: devices.estimate(),
            });
        }
        report.total_revenue = total_cents as f64 / 100.0;
        report.unique_devices = if report.total_events == 0 { 0 } else { estimate(&merged) };
        report
    }
}

/// Money totals saturate rather than wrap.
fn add_saturating(counter: &AtomicI64, delta: i64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(delta)));
}

pub fn day_to_date(day: u32) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(day as i64 * 86_400)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!("{:04}-{:02}-{:02}", date.year(), date.month() as u8, date.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "today" after every day the tests record.
    const TODAY: u32 = 20_100;

    #[test]
    fn hll_is_accurate_enough() {
        let mut h = HyperLogLog::default();
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        for n in 0..100_000u64 {
            h.insert(hasher.hash_one(n));
            h.insert(hasher.hash_one(n)); // duplicates do not count
        }
        let e = h.estimate() as f64;
        assert!((e - 100_000.0).abs() / 100_000.0 < 0.05, "estimate {e}");
        let mut small = HyperLogLog::default();
        for n in 0..10u64 {
            small.insert(hasher.hash_one(n));
        }
        assert_eq!(small.estimate(), 10);
    }

    #[test]
    fn report_merges_devices_across_days() {
        let s = Stats::new(1 << 30);
        let org = OrgId::new("o");
        let other = OrgId::new("p");
        // One request spanning two days, with the same three devices on each.
        let events: Vec<EventSummary> = [20_000, 20_001]
            .into_iter()
            .flat_map(|day| {
                (0..3u64).map(move |dev| EventSummary {
                    day,
                    revenue_cents: 150,
                    device_hash: dev.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    row_end: 0,
                })
            })
            .collect();
        s.record(&org, &events);
        s.record(&other, &[EventSummary { day: 20_000, revenue_cents: 1, device_hash: 42, row_end: 0 }]);
        let r = s.report(&org, 19_990, 20_010, TODAY);
        assert_eq!(r.days.len(), 2);
        assert_eq!(r.days[0].date, "2024-10-04");
        assert_eq!((r.days[0].events, r.days[0].revenue, r.days[0].unique_devices), (3, 4.5, 3));
        assert_eq!((r.total_events, r.total_revenue, r.unique_devices), (6, 9.0, 3), "same devices on both days");
        assert_eq!(s.report(&org, 20_001, 20_001, TODAY).days.len(), 1);
    }

    #[test]
    fn sparse_and_dense_sketches_agree() {
        let hasher = ahash::RandomState::with_seeds(5, 6, 7, 8);
        let mut sparse = HyperLogLog::default();
        let mut dense = HyperLogLog::Dense(vec![0u8; HLL_REGISTERS].into_boxed_slice());
        for n in 0..300u64 {
            sparse.insert(hasher.hash_one(n));
            dense.insert(hasher.hash_one(n));
        }
        assert!(matches!(sparse, HyperLogLog::Sparse(_)));
        assert_eq!(sparse.estimate(), dense.estimate());
        for n in 300..5_000u64 {
            sparse.insert(hasher.hash_one(n));
            dense.insert(hasher.hash_one(n));
        }
        assert!(matches!(sparse, HyperLogLog::Dense(_)), "turns dense past {SPARSE_MAX} registers");
        assert_eq!(sparse.estimate(), dense.estimate());
    }

    #[test]
    fn revenue_saturates_instead_of_wrapping() {
        let s = Stats::new(1 << 30);
        let org = OrgId::new("o");
        // 11 events of revenue 9e15 (Decimal(18,2)'s range) overflow an i64 of cents.
        let big = EventSummary { day: 20_000, revenue_cents: 900_000_000_000_000_000, device_hash: 1, row_end: 0 };
        for _ in 0..11 {
            s.record(&org, &[big]);
        }
        let r = s.report(&org, 20_000, 20_000, TODAY);
        assert!(r.total_revenue > 9.0e16, "{}", r.total_revenue);
        assert_eq!(r.total_revenue, i64::MAX as f64 / 100.0);
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest_days() {
        let s = Stats::new(1 << 20);
        for org in 0..2_000 {
            let org = OrgId::new(&format!("org_{org}"));
            for day in 20_000..20_030 {
                s.record(&org, &[EventSummary { day, revenue_cents: 1, device_hash: day as u64 * 7919, row_end: 0 }]);
            }
        }
        assert!(s.bytes() <= 1 << 20, "{} bytes", s.bytes());
        let newest = s.report(&OrgId::new("org_1999"), 20_000, 20_029, TODAY);
        assert_eq!(newest.days.last().unwrap().events, 1, "the newest days stay");
    }

    #[test]
    fn forget_takes_counts_back() {
        let s = Stats::new(1 << 30);
        let org = OrgId::new("o");
        let e = [EventSummary { day: 20_000, revenue_cents: 250, device_hash: 1, row_end: 0 }; 3];
        s.record(&org, &e);
        s.forget(&org, &e[..2]);
        let r = s.report(&org, 20_000, 20_000, TODAY);
        assert_eq!((r.total_events, r.total_revenue), (1, 2.5));
    }
}
