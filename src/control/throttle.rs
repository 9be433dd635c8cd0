//! Failed logins per account and per client address: past the allowance within
//! the window, the account (or address) is locked out for the lockout time, and
//! even the right password waits (429 + `Retry-After`). Per node for now; the
//! fleet issue makes these counts fleet-wide through Redis.
//!
//! Both maps are bounded ([`MAX_TRACKED`] entries each, keys at most 254
//! bytes): when full, entries whose window has passed go first, then the
//! oldest half. The per-address limit is what stops one client from flooding
//! the account map to push a locked account out.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::LoginConfig;

/// Entries per map: about 30 MB at the longest emails, far less in practice.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Clone, Copy)]
struct Failures {
    window_start_ms: u64,
    count: u32,
    locked_until_ms: u64,
}

struct Tracker<K> {
    max: u32,
    entries: Mutex<HashMap<K, Failures>>,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    fn new(max: u32) -> Self {
        Tracker { max, entries: Mutex::new(HashMap::new()) }
    }

    fn locked_for(&self, key: &K, now_ms: u64) -> Option<u64> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).and_then(|f| f.locked_until_ms.checked_sub(now_ms)).filter(|&left| left > 0)
    }

    fn fail(&self, key: &K, now_ms: u64, window_ms: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TRACKED && !entries.contains_key(key) {
            make_room(&mut entries, now_ms, window_ms);
        }
        let f =
            entries.entry(key.clone()).or_insert(Failures { window_start_ms: now_ms, count: 0, locked_until_ms: 0 });
        if now_ms.saturating_sub(f.window_start_ms) >= window_ms {
            *f = Failures { window_start_ms: now_ms, count: 0, locked_until_ms: f.locked_until_ms };
        }
        f.count = f.count.saturating_add(1);
        if f.count >= self.max {
            f.locked_until_ms = now_ms + window_ms;
            f.count = 0;
            f.window_start_ms = now_ms;
        }
    }

    fn forget(&self, key: &K) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

fn make_room<K: Hash + Eq + Clone>(entries: &mut HashMap<K, Failures>, now_ms: u64, window_ms: u64) {
    entries.retain(|_, f| now_ms.saturating_sub(f.window_start_ms) < window_ms || f.locked_until_ms > now_ms);
    if entries.len() >= MAX_TRACKED {
        let mut starts: Vec<u64> = entries.values().map(|f| f.window_start_ms).collect();
        starts.sort_unstable();
        let median = starts[starts.len() / 2];
        entries.retain(|_, f| f.window_start_ms > median);
    }
}

pub struct LoginThrottle {
    accounts: Tracker<String>,
    addresses: Tracker<IpAddr>,
    window: Duration,
    clock: Clock,
}

impl LoginThrottle {
    pub fn new(config: &LoginConfig, clock: Clock) -> Self {
        LoginThrottle {
            accounts: Tracker::new(config.max_failures),
            addresses: Tracker::new(config.max_failures_per_address),
            window: config.lockout,
            clock,
        }
    }

    /// `Err(wait)` while the account or the address is locked out.
    pub fn check(&self, email: &str, client: IpAddr) -> Result<(), Duration> {
        let now = self.clock.unix_millis();
        let account = self.accounts.locked_for(&email.to_ascii_lowercase(), now);
        let address = self.addresses.locked_for(&client, now);
        match account.max(address) {
            Some(ms) => Err(Duration::from_millis(ms)),
            None => Ok(()),
        }
    }

    pub fn failed(&self, email: &str, client: IpAddr) {
        let (now, window) = (self.clock.unix_millis(), self.window.as_millis() as u64);
        self.accounts.fail(&email.to_ascii_lowercase(), now, window);
        self.addresses.fail(&client, now, window);
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, email: &str) {
        self.accounts.forget(&email.to_ascii_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn throttle(clock: &Clock) -> LoginThrottle {
        let config = LoginConfig {
            access_ttl: Duration::from_secs(60),
            refresh_ttl: Duration::from_secs(60),
            max_failures: 3,
            max_failures_per_address: 5,
            lockout: Duration::from_secs(900),
        };
        LoginThrottle::new(&config, clock.clone())
    }

    #[test]
    fn an_account_locks_after_its_failures_and_unlocks_after_the_lockout() {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let t = throttle(&clock);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        t.failed("Ann@x.example", a);
        t.failed("ann@x.example", b);
        assert!(t.check("ann@x.example", a).is_ok());
        t.failed("ann@x.example", a);
        assert_eq!(t.check("ANN@x.example", b), Err(Duration::from_secs(900)), "from any address, any case");
        clock.advance(Duration::from_secs(899));
        assert!(t.check("ann@x.example", a).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(t.check("ann@x.example", a).is_ok());
    }

    #[test]
    fn an_address_locks_across_accounts_and_success_clears_only_the_account() {
        let clock = Clock::manual(SystemTime::now());
        let t = throttle(&clock);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..5 {
            t.failed(&format!("user{i}@x.example"), a);
        }
        assert!(t.check("someone@x.example", a).is_err(), "the address is locked for every account");
        assert!(t.check("someone@x.example", "192.0.2.9".parse().unwrap()).is_ok());
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        t.failed("bob@x.example", c);
        t.failed("bob@x.example", c);
        t.succeeded("bob@x.example");
        t.failed("bob@x.example", c);
        assert!(t.check("bob@x.example", c).is_ok(), "success started the count again");
    }

    #[test]
    fn the_maps_stay_bounded() {
        let clock = Clock::manual(SystemTime::now());
        let t = throttle(&clock);
        for i in 0..(MAX_TRACKED + 10) {
            t.accounts.fail(&format!("u{i}"), clock.unix_millis(), 900_000);
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(t.accounts.entries.lock().unwrap().len() <= MAX_TRACKED);
    }
}
