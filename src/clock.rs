//! The one time source, passed to everything that reads the time.
//!
//! Production reads the system clock. Tests hold a manual clock and move it,
//! so what depends on time (rate buckets, the month of a quota, token expiry,
//! the day of a statistic, an event's receive time, spool record ages, the
//! per-address audit windows) is tested without sleeping. Timers that bound
//! I/O (connection phases, batch intervals, drain) stay on tokio's clock:
//! they measure waiting, not the date.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Default)]
pub struct Clock {
    /// Nanoseconds since the unix epoch, when the clock is manual.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A clock that stands at `start` until moved with [`Clock::advance`].
    pub fn manual(start: SystemTime) -> Self {
        let ns = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        Clock { manual: Some(Arc::new(AtomicU64::new(ns))) }
    }

    /// Moves a manual clock forward (every holder sees it); the system clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        let manual = self.manual.as_ref().expect("only a manual clock can be moved");
        manual.fetch_add(by.as_nanos() as u64, Ordering::AcqRel);
    }

    /// Time since the unix epoch.
    pub fn now(&self) -> Duration {
        match &self.manual {
            None => SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default(),
            Some(ns) => Duration::from_nanos(ns.load(Ordering::Acquire)),
        }
    }

    pub fn unix_secs(&self) -> u64 {
        self.now().as_secs()
    }

    pub fn unix_millis(&self) -> u64 {
        self.now().as_millis() as u64
    }

    /// Days since the unix epoch (UTC).
    pub fn today(&self) -> u32 {
        (self.unix_secs() / 86_400) as u32
    }

    /// Nanoseconds on a clock that never goes back, for rate buckets: a step of the system
    /// clock must neither refill nor drain them. Manual: the manual time.
    pub fn monotonic_ns(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        match &self.manual {
            None => START.get_or_init(Instant::now).elapsed().as_nanos() as u64,
            Some(ns) => ns.load(Ordering::Acquire),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::System"),
            Some(_) => write!(f, "Clock::Manual({:?})", self.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_for_every_holder() {
        let start = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let clock = Clock::manual(start);
        let held = clock.clone();
        assert_eq!(clock.unix_secs(), 1_780_000_000);
        held.advance(Duration::from_millis(1500));
        assert_eq!(clock.unix_millis(), 1_780_000_001_500);
        assert_eq!(clock.monotonic_ns(), held.monotonic_ns());
        assert_eq!(clock.today(), 1_780_000_001 / 86_400);
    }

    #[test]
    fn the_system_clock_is_monotonic_for_buckets() {
        let clock = Clock::system();
        let a = clock.monotonic_ns();
        assert!(clock.monotonic_ns() >= a);
        assert!(clock.unix_secs() > 1_700_000_000);
    }
}
