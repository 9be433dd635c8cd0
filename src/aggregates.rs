//! In-process per-tenant daily aggregates: event count, revenue and unique
//! devices per UTC day, answering `GET /api/v1/stats/events` without a
//! round trip to ClickHouse (and in `--dev` with no ClickHouse at all).
//!
//! Each organisation's days sit behind one lock, reached by its slot and taken
//! once per request (uncontended across organisations). Unique devices are
//! estimated (HyperLogLog, 4 096 registers, ≈ 1.6 % standard error), sparse
//! while a day has few devices: a sum of per-day
//! uniques is not the unique count of the whole range, which is why registers
//! are merged, not estimates added. Money totals saturate, never wrap.
//!
//! Memory is bounded in bytes (`EDGE_STATS_MAX_BYTES`): past it the oldest
//! days of any organisation are evicted, so ten thousand organisations
//! sending over a month cost what the bound says, not a sketch each per day
//! (plus one empty list per organisation the registry holds).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::event::EventSummary;
use crate::tenant::{OrgId, PerOrg};

const HLL_BITS: u32 = 12;
const HLL_REGISTERS: usize = 1 << HLL_BITS;
/// A sparse sketch holds at most this many registers (4 bytes each) before it turns dense
/// (1 byte for each of the 4 096): small days, the common case, stay small.
const SPARSE_MAX: usize = 512;

/// Registers a sketch keeps in place, with no allocation: as many as fit in the space a
/// `Vec` takes anyway, so most organisation-days of a long tail of small tenants cost one
/// entry and no second cache line.
const INLINE_MAX: usize = 7;

/// Distinct count estimator over 64-bit hashes: the registers of a 4 096-register
/// HyperLogLog, kept sparse (sorted `index << 8 | rank`) while few are set: in place,
/// then in a vector, then dense.
#[derive(Debug, Clone)]
pub enum HyperLogLog {
    Inline { len: u8, entries: [u32; INLINE_MAX] },
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog::Inline { len: 0, entries: [0; INLINE_MAX] }
    }
}

/// Sets register `index` of sorted sparse `entries` to at least `rank`; `false` when the
/// register is new and `entries` has no room for it.
fn set_sparse(entries: &mut [u32], len: &mut usize, index: u32, rank: u8) -> bool {
    match entries[..*len].binary_search_by_key(&index, |e| e >> 8) {
        Ok(at) => {
            if (entries[at] & 0xff) < u32::from(rank) {
                entries[at] = index << 8 | u32::from(rank);
            }
            true
        }
        Err(at) if *len < entries.len() => {
            entries.copy_within(at..*len, at + 1);
            entries[at] = index << 8 | u32::from(rank);
            *len += 1;
            true
        }
        Err(_) => false,
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
            HyperLogLog::Inline { len, entries } => {
                let mut n = usize::from(*len);
                if set_sparse(entries, &mut n, index, rank) {
                    *len = n as u8;
                    return 0;
                }
                let mut spilled = Vec::with_capacity(2 * INLINE_MAX + 2);
                spilled.extend_from_slice(&entries[..n]);
                let held = 4 * spilled.capacity() as isize;
                *self = HyperLogLog::Sparse(spilled);
                held + self.insert(hash)
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
            HyperLogLog::Inline { len, entries } => merge_sparse(&entries[..usize::from(*len)], acc),
            HyperLogLog::Sparse(entries) => merge_sparse(entries, acc),
        }
    }

    pub fn estimate(&self) -> u64 {
        let mut regs = vec![0u8; HLL_REGISTERS];
        self.merge_into(&mut regs);
        estimate(&regs)
    }

    fn bytes(&self) -> usize {
        match self {
            HyperLogLog::Inline { .. } => 0,
            HyperLogLog::Dense(_) => HLL_REGISTERS,
            HyperLogLog::Sparse(entries) => 4 * entries.capacity(),
        }
    }
}

fn merge_sparse(entries: &[u32], acc: &mut [u8]) {
    for e in entries {
        let a = &mut acc[(e >> 8) as usize];
        *a = (*a).max((e & 0xff) as u8);
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

/// One organisation-day.
#[derive(Default)]
struct DayStats {
    events: u64,
    revenue_cents: i64,
    devices: HyperLogLog,
}

/// One organisation's consecutive days, `first` first: a day is found by subtraction, so a
/// request touches its day's entry and sketch and nothing else. A day with no events costs an
/// empty entry (no sketch allocated).
#[derive(Default)]
struct Days {
    first: u32,
    list: VecDeque<DayStats>,
}

impl Days {
    /// The entry of `day`, extending the window to it if needed.
    fn entry(&mut self, day: u32) -> &mut DayStats {
        if self.list.is_empty() {
            self.first = day;
        }
        if day < self.first {
            for _ in day..self.first {
                self.list.push_front(DayStats::default());
            }
            self.first = day;
        }
        let at = (day - self.first) as usize;
        if at >= self.list.len() {
            self.list.resize_with(at + 1, DayStats::default);
        }
        &mut self.list[at]
    }

    fn get_mut(&mut self, day: u32) -> Option<&mut DayStats> {
        self.list.get_mut(day.checked_sub(self.first)? as usize)
    }

    /// Bytes of the window's own allocation (sketches are counted as they grow).
    fn bytes(&self) -> isize {
        (self.list.capacity() * std::mem::size_of::<DayStats>()) as isize
    }

    /// Drops every day up to `day`; returns the bytes freed.
    fn drop_through(&mut self, day: u32) -> isize {
        let before = self.bytes();
        let mut freed = 0;
        while !self.list.is_empty() && self.first <= day {
            freed += self.list.pop_front().map_or(0, |d| d.devices.bytes() as isize);
            self.first += 1;
        }
        if self.list.capacity() > 2 * self.list.len() {
            self.list.shrink_to_fit();
        }
        freed + before - self.bytes()
    }
}

/// One organisation's days under one lock, taken once per request.
#[derive(Default)]
struct OrgDays {
    days: Mutex<Days>,
}

impl OrgDays {
    fn lock(&self) -> std::sync::MutexGuard<'_, Days> {
        // Every update leaves the days consistent, so a panic elsewhere poisons nothing real.
        self.days.lock().unwrap_or_else(|e| e.into_inner())
    }
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

pub struct Stats {
    /// Indexed by the organisation's slot: a request reaches its days with one index and one
    /// uncontended lock, whatever the number of organisations.
    orgs: PerOrg<OrgDays>,
    /// Bytes held by the aggregates (days and sketches, from what they allocate).
    bytes: AtomicUsize,
    max_bytes: usize,
    /// One eviction at a time; others carry on recording.
    evicting: Mutex<()>,
}

impl Stats {
    /// Aggregates that hold at most about `max_bytes`: past it the oldest days are evicted.
    pub fn new(max_bytes: usize) -> Self {
        Stats { orgs: PerOrg::default(), bytes: AtomicUsize::new(0), max_bytes, evicting: Mutex::new(()) }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records one request's accepted events: one lock, and one day lookup per run of events on
    /// the same day (usually the whole request), not per event.
    pub fn record(&self, org: &OrgId, events: &[EventSummary]) {
        let mut days = self.orgs.get(org.slot()).lock();
        let mut grown = -days.bytes();
        for_each_day(events, |day, run| {
            let stats = days.entry(day);
            let mut cents = 0i64;
            for e in run {
                grown += stats.devices.insert(e.device_hash);
                cents = cents.saturating_add(e.revenue_cents);
            }
            stats.events = stats.events.saturating_add(run.len() as u64);
            stats.revenue_cents = stats.revenue_cents.saturating_add(cents);
        });
        grown += days.bytes();
        drop(days);
        self.grew(grown);
    }

    /// Takes back the counts of events that were recorded but then not stored (their devices
    /// stay in the sketch: a sketch cannot forget).
    pub fn forget(&self, org: &OrgId, events: &[EventSummary]) {
        let mut days = self.orgs.get(org.slot()).lock();
        for_each_day(events, |day, run| {
            if let Some(stats) = days.get_mut(day) {
                let cents = run.iter().fold(0i64, |sum, e| sum.saturating_add(e.revenue_cents));
                stats.events = stats.events.saturating_sub(run.len() as u64);
                stats.revenue_cents = stats.revenue_cents.saturating_sub(cents);
            }
        });
    }

    fn grew(&self, delta: isize) {
        if delta == 0 {
            return;
        }
        let now = if delta > 0 {
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
        let mut by_age: Vec<(u32, u32)> = Vec::new();
        for (slot, org) in self.orgs.iter() {
            let days = org.lock();
            let first = days.first;
            by_age.extend(
                days.list
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.events > 0 || d.devices.bytes() > 0)
                    .map(|(i, _)| (first + i as u32, slot)),
            );
        }
        by_age.sort_unstable();
        let target = self.max_bytes / 10 * 9;
        for (day, slot) in by_age {
            if self.bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            let freed = self.orgs.get(slot).lock().drop_through(day).max(0) as usize;
            let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(freed)));
        }
        metrics::counter!(crate::metrics::STATS_EVICTIONS).increment(1);
    }

    /// Per-day rows for `org` between `from` and `to` (days since the epoch, inclusive; at most
    /// [`MAX_DAYS`], counted back from `to`); days without events are left out.
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
        // Copied out under the lock, estimated after it: ingestion for this organisation never
        // waits on a report's arithmetic.
        let picked: Vec<(u32, u64, i64, HyperLogLog)> = {
            let days = self.orgs.get(org.slot()).lock();
            let window = days.first..days.first + days.list.len() as u32;
            (from.max(window.start)..to.saturating_add(1).min(window.end))
                .map(|day| (day, &days.list[(day - window.start) as usize]))
                // A gap in the window, or every event taken back.
                .filter(|(_, d)| d.events > 0)
                .map(|(day, d)| (day, d.events, d.revenue_cents, d.devices.clone()))
                .collect()
        };
        for (day, events, cents, devices) in picked {
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

/// Calls `each` once per run of consecutive events on the same day.
fn for_each_day(events: &[EventSummary], mut each: impl FnMut(u32, &[EventSummary])) {
    let mut rest = events;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|e| e.day == first.day).count();
        let (same_day, tail) = rest.split_at(run);
        each(first.day, same_day);
        rest = tail;
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
    fn small_sketches_take_no_more_room_than_a_vector() {
        assert_eq!(std::mem::size_of::<HyperLogLog>(), std::mem::size_of::<Vec<u32>>() + 8);
        let hasher = ahash::RandomState::with_seeds(9, 10, 11, 12);
        let mut h = HyperLogLog::default();
        let grown: isize = (0..INLINE_MAX as u64).map(|n| h.insert(hasher.hash_one(n))).sum();
        assert_eq!((grown, h.bytes(), h.estimate()), (0, 0, INLINE_MAX as u64));
        assert!(matches!(h, HyperLogLog::Inline { .. }));
        let grown = h.insert(hasher.hash_one(INLINE_MAX as u64));
        assert!(matches!(h, HyperLogLog::Sparse(_)));
        assert_eq!((grown, h.bytes() as isize, h.estimate()), (h.bytes() as isize, grown, INLINE_MAX as u64 + 1));
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

    #[test]
    fn days_arrive_in_any_order_and_gaps_cost_no_rows() {
        let s = Stats::new(1 << 30);
        let org = OrgId::new("o");
        let on = |day| EventSummary { day, revenue_cents: 100, device_hash: u64::from(day), row_end: 0 };
        for day in [20_010, 20_000, 20_020, 20_005, 20_010] {
            s.record(&org, &[on(day)]);
        }
        let r = s.report(&org, 0, 30_000, TODAY);
        let days: Vec<(&str, u64)> = r.days.iter().map(|d| (d.date.as_str(), d.events)).collect();
        assert_eq!(days, [("2024-10-04", 1), ("2024-10-09", 1), ("2024-10-14", 2), ("2024-10-24", 1)]);
        assert_eq!(s.report(&org, 20_001, 20_004, TODAY).days.len(), 0, "a gap has no rows");
        assert_eq!(s.report(&OrgId::new("never_recorded"), 0, 30_000, TODAY).days.len(), 0);
    }
}
