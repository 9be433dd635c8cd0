//! Failed logins per account and per client address: past the allowance within
//! the window, the account (or address) is locked out for the lockout time, and
//! even the right password waits (429 + `Retry-After`).
//!
//! With a fleet (`REDIS_URL`) the counts are fleet-wide: failures and successes queue here
//! ([`LoginThrottle::take_events`], at most [`MAX_QUEUED`]) and the fleet sync's tick counts
//! them in Redis, which locks an account or address once the fleet's count reaches the
//! allowance; every node learns the lock on its next tick ([`LoginThrottle::lock_account`]). A login
//! never waits on Redis: each node also counts its own failures, so it locks on its own
//! count at once, and on the fleet's one tick later. While Redis is unreachable a node locks
//! after its share of the allowance (allowance ÷ live nodes).
//!
//! Accounts are keyed by a digest of the lower-cased email (also in Redis: no addresses
//! there). Both maps are bounded ([`MAX_TRACKED`] entries each): when full, entries whose
//! window has passed go first, then the oldest half. The per-address limit is what stops
//! one client from flooding the account map to push a locked account out.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::LoginConfig;

/// Entries per map: a few MB.
pub const MAX_TRACKED: usize = 100_000;
/// Login outcomes waiting for the fleet sync; more are dropped (and counted) until it runs.
pub const MAX_QUEUED: usize = 10_000;

/// An account's key: the first 16 bytes of SHA-256 of the lower-cased email.
pub type AccountKey = [u8; 16];

fn account_key(email: &str) -> AccountKey {
    let digest = Sha256::digest(email.to_ascii_lowercase().as_bytes());
    digest[..16].try_into().expect("16 of 32 bytes")
}

/// What the fleet sync sends to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginEvent {
    AccountFailed(AccountKey),
    AddressFailed(IpAddr),
    AccountSucceeded(AccountKey),
}

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

    fn fail(&self, key: &K, now_ms: u64, window_ms: u64, divisor: u32) {
        let max = (self.max / divisor.max(1)).max(1);
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
        if f.count >= max {
            f.locked_until_ms = now_ms + window_ms;
            f.count = 0;
            f.window_start_ms = now_ms;
        }
    }

    /// A lock the fleet decided: locked until `until_ms` (a later lock wins).
    fn lock(&self, key: &K, until_ms: u64, now_ms: u64, window_ms: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TRACKED && !entries.contains_key(key) {
            make_room(&mut entries, now_ms, window_ms);
        }
        let f =
            entries.entry(key.clone()).or_insert(Failures { window_start_ms: now_ms, count: 0, locked_until_ms: 0 });
        f.locked_until_ms = f.locked_until_ms.max(until_ms);
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
    accounts: Tracker<AccountKey>,
    addresses: Tracker<IpAddr>,
    window: Duration,
    clock: Clock,
    /// Outcomes for the fleet sync (`None`: a node on its own).
    fleet: Option<Mutex<Vec<LoginEvent>>>,
    /// Allowances are divided by this: live nodes while Redis is unreachable, else 1.
    divisor: AtomicU32,
}

impl LoginThrottle {
    pub fn new(config: &LoginConfig, clock: Clock, fleet: bool) -> Self {
        LoginThrottle {
            accounts: Tracker::new(config.max_failures),
            addresses: Tracker::new(config.max_failures_per_address),
            window: config.lockout,
            clock,
            fleet: fleet.then(|| Mutex::new(Vec::new())),
            divisor: AtomicU32::new(1),
        }
    }

    /// `Err(wait)` while the account or the address is locked out.
    pub fn check(&self, email: &str, client: IpAddr) -> Result<(), Duration> {
        let now = self.clock.unix_millis();
        let account = self.accounts.locked_for(&account_key(email), now);
        let address = self.addresses.locked_for(&client, now);
        match account.max(address) {
            Some(ms) => Err(Duration::from_millis(ms)),
            None => Ok(()),
        }
    }

    pub fn failed(&self, email: &str, client: IpAddr) {
        let (now, window) = (self.clock.unix_millis(), self.window.as_millis() as u64);
        let (account, divisor) = (account_key(email), self.divisor.load(Ordering::Relaxed));
        self.accounts.fail(&account, now, window, divisor);
        self.addresses.fail(&client, now, window, divisor);
        self.queue([LoginEvent::AccountFailed(account), LoginEvent::AddressFailed(client)]);
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, email: &str) {
        let account = account_key(email);
        self.accounts.forget(&account);
        self.queue([LoginEvent::AccountSucceeded(account)]);
    }

    fn queue<const N: usize>(&self, events: [LoginEvent; N]) {
        let Some(queue) = &self.fleet else { return };
        let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() + N <= MAX_QUEUED {
            queue.extend(events);
        } else {
            metrics::counter!(crate::metrics::LOGIN_EVENTS_DROPPED).increment(N as u64);
        }
    }

    // The fleet sync's side.

    /// The outcomes queued since the last tick.
    pub fn take_events(&self) -> Vec<LoginEvent> {
        self.fleet
            .as_ref()
            .map(|q| std::mem::take(&mut *q.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// Outcomes a failed tick could not send: queued again, ahead of newer ones, within the bound.
    pub fn give_back(&self, mut events: Vec<LoginEvent>) {
        let Some(queue) = &self.fleet else { return };
        let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
        events.truncate(MAX_QUEUED.saturating_sub(queue.len()));
        events.append(&mut queue);
        *queue = events;
    }

    /// A lock the fleet decided (Redis-clock milliseconds; the nodes' clocks are assumed close).
    pub fn lock_account(&self, account: &AccountKey, until_ms: u64) {
        let (now, window) = (self.clock.unix_millis(), self.window.as_millis() as u64);
        self.accounts.lock(account, until_ms, now, window);
    }

    pub fn lock_address(&self, address: IpAddr, until_ms: u64) {
        let (now, window) = (self.clock.unix_millis(), self.window.as_millis() as u64);
        self.addresses.lock(&address, until_ms, now, window);
    }

    /// Allowances while Redis is unreachable: this node's share.
    pub fn set_divisor(&self, live_nodes_when_unsynced: u32) {
        self.divisor.store(live_nodes_when_unsynced.max(1), Ordering::Relaxed);
    }

    /// The allowances and lockout, for the sync's script.
    pub fn allowances(&self) -> (u32, u32, Duration) {
        (self.accounts.max, self.addresses.max, self.window)
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
        LoginThrottle::new(&config, clock.clone(), false)
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
            t.accounts.fail(&account_key(&format!("u{i}")), clock.unix_millis(), 900_000, 1);
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(t.accounts.entries.lock().unwrap().len() <= MAX_TRACKED);
    }
}
