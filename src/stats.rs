//! In-process per-tenant daily aggregates: event count, revenue and unique
//! devices per UTC day, answering `GET /api/v1/stats/events` without a
//! round trip to ClickHouse (and in `--dev` with no ClickHouse at all).
//!
//! Updates are atomic adds and an atomic max per HyperLogLog register, so
//! request threads never lock. Unique devices are estimated (HyperLogLog,
//! 4 096 registers, ≈ 1.6 % standard error): a sum of per-day uniques is not
//! the unique count of the whole range, which is why registers are merged,
//! not estimates added.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::event::EventSummary;
use crate::tenant::OrgId;

const HLL_BITS: u32 = 12;
const HLL_REGISTERS: usize = 1 << HLL_BITS;

/// Distinct count estimator over 64-bit hashes.
pub struct HyperLogLog {
    registers: Box<[AtomicU8]>,
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog { registers: (0..HLL_REGISTERS).map(|_| AtomicU8::new(0)).collect() }
    }
}

impl HyperLogLog {
    pub fn insert(&self, hash: u64) {
        let index = (hash >> (64 - HLL_BITS)) as usize;
        let rank = ((hash << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
        let register = &self.registers[index];
        // Most inserts do not raise the register: a plain load keeps the cache line shared.
        if register.load(Ordering::Relaxed) < rank {
            register.fetch_max(rank, Ordering::Relaxed);
        }
    }

    fn merge_into(&self, acc: &mut [u8]) {
        for (a, r) in acc.iter_mut().zip(self.registers.iter()) {
            *a = (*a).max(r.load(Ordering::Relaxed));
        }
    }

    pub fn estimate(&self) -> u64 {
        let mut regs = vec![0u8; HLL_REGISTERS];
        self.merge_into(&mut regs);
        estimate(&regs)
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
    devices: HyperLogLog,
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

/// Days kept per organisation; older days are dropped as new ones arrive.
const MAX_DAYS: usize = 400;

#[derive(Default)]
pub struct Stats {
    days: DashMap<(OrgId, u32), Arc<DayStats>, ahash::RandomState>,
}

impl Stats {
    /// Records one request's accepted events: one map lookup and one add per run of
    /// events on the same day (usually the whole request), not per event.
    pub fn record(&self, org: &OrgId, events: &[EventSummary]) {
        let mut rest = events;
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|e| e.day == first.day).count();
            let (same_day, tail) = rest.split_at(run);
            let day = self.day(org, first.day);
            let mut cents = 0;
            for e in same_day {
                day.devices.insert(e.device_hash);
                cents += e.revenue_cents;
            }
            day.events.fetch_add(run as u64, Ordering::Relaxed);
            day.revenue_cents.fetch_add(cents, Ordering::Relaxed);
            rest = tail;
        }
    }

    fn day(&self, org: &OrgId, day: u32) -> Arc<DayStats> {
        // Lookups by (org, day) need an owned key; the clone is an Arc increment.
        let key = (org.clone(), day);
        if let Some(d) = self.days.get(&key) {
            return d.clone();
        }
        self.days.entry(key).or_default().clone()
    }

    /// Per-day rows for `org` between `from` and `to` (days since the epoch, inclusive).
    pub fn report(&self, org: &OrgId, from: u32, to: u32) -> StatsReport {
        let mut days = BTreeMap::new();
        for entry in self.days.iter() {
            let (o, d) = entry.key();
            if o == org && (from..=to).contains(d) {
                days.insert(*d, entry.value().clone());
            }
        }
        let mut merged = vec![0u8; HLL_REGISTERS];
        let mut report = StatsReport {
            organization_id: org.to_string(),
            days: Vec::with_capacity(days.len()),
            total_events: 0,
            total_revenue: 0.0,
            unique_devices: 0,
        };
        let mut total_cents = 0i64;
        for (day, s) in days.iter().rev().take(MAX_DAYS) {
            let events = s.events.load(Ordering::Relaxed);
            let cents = s.revenue_cents.load(Ordering::Relaxed);
            s.devices.merge_into(&mut merged);
            report.total_events += events;
            total_cents += cents;
            report.days.push(DayRow {
                date: day_to_date(*day),
                events,
                revenue: cents as f64 / 100.0,
                unique_devices: s.devices.estimate(),
            });
        }
        report.days.reverse();
        report.total_revenue = total_cents as f64 / 100.0;
        report.unique_devices = if report.total_events == 0 { 0 } else { estimate(&merged) };
        report
    }
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

    #[test]
    fn hll_is_accurate_enough() {
        let h = HyperLogLog::default();
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        for n in 0..100_000u64 {
            h.insert(hasher.hash_one(n));
            h.insert(hasher.hash_one(n)); // duplicates do not count
        }
        let e = h.estimate() as f64;
        assert!((e - 100_000.0).abs() / 100_000.0 < 0.05, "estimate {e}");
        let small = HyperLogLog::default();
        for n in 0..10u64 {
            small.insert(hasher.hash_one(n));
        }
        assert_eq!(small.estimate(), 10);
    }

    #[test]
    fn report_merges_devices_across_days() {
        let s = Stats::default();
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
                })
            })
            .collect();
        s.record(&org, &events);
        s.record(&other, &[EventSummary { day: 20_000, revenue_cents: 1, device_hash: 42 }]);
        let r = s.report(&org, 0, u32::MAX);
        assert_eq!(r.days.len(), 2);
        assert_eq!(r.days[0].date, "2024-10-04");
        assert_eq!((r.days[0].events, r.days[0].revenue, r.days[0].unique_devices), (3, 4.5, 3));
        assert_eq!((r.total_events, r.total_revenue, r.unique_devices), (6, 9.0, 3), "same devices on both days");
        assert_eq!(s.report(&org, 20_001, 20_001).days.len(), 1);
    }
}
