//! One organisation's part of the fleet's monthly quota on this node: what the request path
//! takes from, lock-free. [`super::fleet_quota`] fills it from Redis in the background.
//!
//! A node admits from its *lease* (events Redis granted it). When the lease runs dry before
//! the next tick refills it, the node may run an *overdraft* up to a cap the last tick set
//! (its share of what the fleet has left, at most one chunk); the next tick charges the
//! overdraft to Redis. Before any tick has said anything about an organisation the cap is
//! one chunk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The overdraft cap before a tick (or the start-up load) has set one.
const UNTOLD: u64 = u64::MAX;

#[derive(Debug)]
pub struct QuotaLease {
    /// Events this node may still admit, granted by Redis.
    lease: AtomicU64,
    /// Events admitted beyond the lease since the sync last charged them.
    overdraft: AtomicU64,
    /// The most `overdraft` may reach; [`UNTOLD`] until the sync says.
    overdraft_cap: AtomicU64,
    /// The lease ran low or a request was refused: the next tick asks for more.
    wants: AtomicBool,
    /// The lease below which the request path asks for more (half a chunk).
    low_water: AtomicU64,
    /// This node's events charged in Redis this month (grants and overdrafts), as last synced.
    charged: AtomicU64,
    /// The whole fleet's charge this month, as last synced.
    fleet_total: AtomicU64,
}

impl Default for QuotaLease {
    fn default() -> Self {
        QuotaLease {
            lease: AtomicU64::new(0),
            overdraft: AtomicU64::new(0),
            overdraft_cap: AtomicU64::new(UNTOLD),
            wants: AtomicBool::new(false),
            low_water: AtomicU64::new(0),
            charged: AtomicU64::new(0),
            fleet_total: AtomicU64::new(0),
        }
    }
}

/// Subtracts up to `n` from `counter` (never below zero); returns how much.
fn take_up_to(counter: &AtomicU64, n: u64) -> u64 {
    match counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |have| (have > 0).then(|| have - n.min(have))) {
        Ok(had) => n.min(had),
        Err(_) => 0,
    }
}

impl QuotaLease {
    fn cap(&self, untold: u64) -> u64 {
        match self.overdraft_cap.load(Ordering::Acquire) {
            UNTOLD => untold,
            cap => cap,
        }
    }

    /// Takes up to `n` events: from the lease, then from the overdraft. `chunk` is the
    /// overdraft allowed before the sync has said anything about this organisation.
    pub fn take(&self, n: u64, chunk: u64) -> u64 {
        let mut got = take_up_to(&self.lease, n);
        let from_lease = got;
        if got < n {
            let cap = self.cap(chunk);
            let more = self.overdraft.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < cap).then(|| used + (n - got).min(cap - used))
            });
            if let Ok(before) = more {
                got += (n - got).min(cap - before);
            }
        }
        // Short, on overdraft, or low: the next tick asks Redis for a chunk.
        if from_lease < n || self.lease.load(Ordering::Relaxed) < self.low_water.load(Ordering::Relaxed) {
            self.ask();
        }
        got
    }

    /// Nothing left to admit without asking Redis: the lease and the overdraft are used up.
    pub fn exhausted(&self, chunk: u64) -> bool {
        let empty =
            self.lease.load(Ordering::Acquire) == 0 && self.overdraft.load(Ordering::Acquire) >= self.cap(chunk);
        if empty {
            self.ask();
        }
        empty
    }

    /// Events reserved but not stored: this node may admit them again.
    pub fn refund(&self, n: u64) {
        self.lease.fetch_add(n, Ordering::AcqRel);
    }

    fn ask(&self) {
        if !self.wants.load(Ordering::Relaxed) {
            self.wants.store(true, Ordering::Relaxed);
        }
    }

    /// Events used fleet-wide this month as this node knows it (`/quotas`).
    pub fn fleet_used(&self) -> u64 {
        let total = self.fleet_total.load(Ordering::Acquire) + self.overdraft.load(Ordering::Acquire);
        total.saturating_sub(self.lease.load(Ordering::Acquire))
    }

    // What the sync reads and writes.

    /// Whether the tick should mention this organisation, clearing the request path's ask.
    pub(super) fn take_ask(&self) -> bool {
        self.wants.swap(false, Ordering::AcqRel)
    }

    pub(super) fn lease(&self) -> u64 {
        self.lease.load(Ordering::Acquire)
    }

    pub(super) fn charged(&self) -> u64 {
        self.charged.load(Ordering::Acquire)
    }

    /// The overdraft run since the last tick, handed to the sync to charge.
    pub(super) fn take_overdraft(&self) -> u64 {
        self.overdraft.swap(0, Ordering::AcqRel)
    }

    /// An overdraft the fleet did not take (Redis unreachable): charged by a later tick, and
    /// still counted against the cap meanwhile.
    pub(super) fn give_back_overdraft(&self, n: u64) {
        self.overdraft.fetch_add(n, Ordering::AcqRel);
        self.ask();
    }

    /// What a tick learnt: `grant` more events for this node, its charge and the fleet's total
    /// in Redis, and the overdraft cap until the next tick.
    pub(super) fn granted(&self, grant: u64, charged: u64, fleet_total: u64, cap: u64, low_water: u64) {
        self.lease.fetch_add(grant, Ordering::AcqRel);
        self.charged.store(charged, Ordering::Release);
        self.fleet_total.store(fleet_total, Ordering::Release);
        self.overdraft_cap.store(cap, Ordering::Release);
        self.low_water.store(low_water, Ordering::Relaxed);
    }

    /// Sets the overdraft cap alone (outage shares, the start-up load).
    pub(super) fn set_cap(&self, cap: u64) {
        self.overdraft_cap.store(cap, Ordering::Release);
    }

    /// Start-up: this node's own charge and the fleet's as PostgreSQL last saved them.
    pub(super) fn restore(&self, charged: u64, fleet_total: u64) {
        self.charged.store(charged, Ordering::Release);
        self.fleet_total.store(fleet_total, Ordering::Release);
    }

    pub(super) fn fleet_total(&self) -> u64 {
        self.fleet_total.load(Ordering::Acquire)
    }

    /// A new month: nothing granted, nothing charged, nothing known.
    pub(super) fn reset(&self) {
        self.lease.store(0, Ordering::Release);
        self.overdraft.store(0, Ordering::Release);
        self.overdraft_cap.store(UNTOLD, Ordering::Release);
        self.charged.store(0, Ordering::Release);
        self.fleet_total.store(0, Ordering::Release);
        self.low_water.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_from_the_lease_then_the_overdraft_and_asks_when_low() {
        let l = QuotaLease::default();
        assert_eq!(l.take(30, 50), 30, "before any tick: one chunk of overdraft");
        assert!(l.take_ask(), "ran on overdraft: asks");
        assert_eq!(l.take(30, 50), 20);
        assert!(l.exhausted(50));
        assert_eq!(l.take_overdraft(), 50);
        l.granted(100, 150, 150, 10, 40);
        assert!(!l.exhausted(50));
        assert!(l.take_ask(), "the refusal asked too");
        assert_eq!(l.take(50, 50), 50);
        assert!(!l.take_ask(), "still above the low water mark");
        assert_eq!(l.take(20, 50), 20);
        assert!(l.take_ask(), "below it now");
        assert_eq!(l.take(100, 50), 40, "30 left in the lease, then the cap of 10");
        assert!(l.exhausted(50));
        l.refund(5);
        assert_eq!(l.take(10, 50), 5);
        assert_eq!(l.fleet_used(), 150 + 10);
    }

    #[test]
    fn a_closed_organisation_gets_nothing_until_a_grant() {
        let l = QuotaLease::default();
        l.granted(0, 0, 1_000, 0, 0);
        assert!(l.exhausted(50));
        assert_eq!(l.take(1, 50), 0);
        l.granted(64, 0, 1_000, 0, 32);
        assert_eq!(l.take(100, 50), 64);
    }

    #[test]
    fn parallel_takes_never_pass_lease_plus_cap() {
        let l = std::sync::Arc::new(QuotaLease::default());
        l.granted(1_000, 0, 0, 100, 0);
        let got: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| (0..400).map(|_| l.take(3, 50)).sum::<u64>())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(got, 1_100);
    }
}
