//! Per-organisation ingestion rate limit: a lock-free GCRA token bucket.
//!
//! Each organisation's bucket is one `AtomicU64` (its "theoretical arrival
//! time" in nanoseconds of the limiter's monotonic clock) updated by compare-and-swap,
//! so cores never take a lock on the per-request path and contend only when
//! they serve the same organisation at the same instant.
//!
//! A request of `n` events is admitted when the bucket has at least one token;
//! it then takes all `n`, which may leave the bucket in debt. That lets a batch
//! larger than the burst through once and makes the next requests wait, so the
//! long-run rate still holds, and no batch is unsendable by construction.
//!
//! With a fleet, [`super::fleet`] charges each bucket with what other nodes admitted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The most a bucket owes beyond empty because of charges from other nodes: one second.
pub const MAX_FLEET_DEBT_NS: u64 = 1_000_000_000;

/// The outcome of a check: a value, not an error (the handler decides the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Try again after this long.
    Limit {
        retry_after: Duration,
    },
}

/// One organisation's bucket.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Nanoseconds (of the limiter's monotonic clock) at which the bucket is full again.
    tat: AtomicU64,
}

impl Bucket {
    /// `rate`: tokens per second; `burst`: bucket capacity in tokens.
    pub fn check(&self, now_ns: u64, n: u64, rate: u64, burst: u64) -> RateDecision {
        if rate == 0 {
            return RateDecision::Limit { retry_after: Duration::from_secs(60) };
        }
        let (interval, capacity) = span(rate, burst);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let backlog = tat.saturating_sub(now_ns);
            // At least one token must be free: backlog + one interval within capacity.
            if backlog + interval > capacity {
                let wait = backlog + interval - capacity;
                return RateDecision::Limit { retry_after: Duration::from_nanos(wait) };
            }
            let new_tat = tat.max(now_ns) + interval.saturating_mul(n);
            match self.tat.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return RateDecision::Allow,
                Err(current) => tat = current,
            }
        }
    }

    /// Takes `n` tokens used elsewhere (other nodes of the fleet): like an admission that is
    /// never refused. It may leave the bucket in debt (the others used this node's refill
    /// too), but never more than [`MAX_FLEET_DEBT_NS`] beyond empty, so late news of a burst
    /// of old traffic (after a Redis outage) cannot hold this node back for long.
    pub fn charge(&self, now_ns: u64, n: u64, rate: u64, burst: u64) {
        let (interval, capacity) = span(rate, burst);
        let ceiling = now_ns.saturating_add(capacity).saturating_add(MAX_FLEET_DEBT_NS);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now_ns).saturating_add(interval.saturating_mul(n)).min(ceiling);
            if new_tat <= tat {
                return;
            }
            match self.tat.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(current) => tat = current,
            }
        }
    }
}

/// Nanoseconds per token, and nanoseconds of backlog the bucket absorbs.
fn span(rate: u64, burst: u64) -> (u64, u64) {
    let interval = 1_000_000_000 / rate.max(1);
    (interval, interval.saturating_mul(burst.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_limit_then_refill() {
        let b = Bucket::default();
        // 10/s with a burst of 20: 20 single events pass at t=0, the 21st waits 100 ms.
        for _ in 0..20 {
            assert_eq!(b.check(0, 1, 10, 20), RateDecision::Allow);
        }
        match b.check(0, 1, 10, 20) {
            RateDecision::Limit { retry_after } => {
                assert_eq!(retry_after, Duration::from_millis(100))
            }
            other => panic!("expected limit, got {other:?}"),
        }
        // After 100 ms one token is back.
        assert_eq!(b.check(SEC / 10, 1, 10, 20), RateDecision::Allow);
        assert!(matches!(b.check(SEC / 10, 1, 10, 20), RateDecision::Limit { .. }));
    }

    #[test]
    fn oversize_batch_goes_into_debt() {
        let b = Bucket::default();
        assert_eq!(b.check(0, 50, 10, 20), RateDecision::Allow);
        // 50 tokens at 10/s: the bucket owes 30 beyond its burst, i.e. 3.1 s until the next token.
        match b.check(0, 1, 10, 20) {
            RateDecision::Limit { retry_after } => {
                assert_eq!(retry_after, Duration::from_millis(3100))
            }
            other => panic!("expected limit, got {other:?}"),
        }
        assert_eq!(b.check(31 * SEC / 10, 1, 10, 20), RateDecision::Allow);
    }

    #[test]
    fn long_run_rate_holds() {
        let b = Bucket::default();
        let mut allowed = 0u64;
        // 10 simulated seconds in 1 ms steps, 5 events attempted per step.
        for ms in 0..10_000u64 {
            for _ in 0..5 {
                if b.check(ms * 1_000_000, 1, 1000, 2000) == RateDecision::Allow {
                    allowed += 1;
                }
            }
        }
        // burst (2000) + 10 s × 1000/s, within one token.
        assert!((11_999..=12_001).contains(&allowed), "allowed {allowed}");
    }

    #[test]
    fn charges_from_elsewhere_put_the_bucket_in_bounded_debt() {
        let b = Bucket::default();
        // 10/s, burst 20: others used 5 tokens, 15 are left here.
        b.charge(0, 5, 10, 20);
        assert_eq!((0..20).filter(|_| b.check(0, 1, 10, 20) == RateDecision::Allow).count(), 15);
        // Others keep using the refill: the bucket goes into debt and this node waits.
        b.charge(0, 3, 10, 20);
        assert!(matches!(b.check(SEC * 3 / 10, 1, 10, 20), RateDecision::Limit { .. }));
        assert_eq!(b.check(SEC * 4 / 10, 1, 10, 20), RateDecision::Allow);
        // A huge late charge owes at most one second beyond empty.
        b.charge(SEC, 1_000_000, 10, 20);
        assert!(matches!(b.check(SEC * 2 + SEC / 10 - 1, 1, 10, 20), RateDecision::Limit { .. }));
        assert_eq!(b.check(SEC * 2 + SEC / 10, 1, 10, 20), RateDecision::Allow, "one second of debt, then a token");
    }

    #[test]
    fn concurrent_threads_never_exceed_capacity() {
        use std::sync::Arc;
        let b = Arc::new(Bucket::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.check(0, 1, 100, 10) == RateDecision::Allow).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 10, "a burst of 10 tokens at a frozen clock, whatever the threads");
    }
}
