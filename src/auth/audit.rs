//! Audit lines and per-address throttles: what a hostile client can make the
//! edge write or try is capped per client address before it costs anything.
//!
//! An audit line echoes at most [`MAX_ECHO`] characters of anything the
//! client chose, and each client address gets [`AddressWindows`]' allowance of
//! lines per minute; the rest are counted and the next line says how many
//! were suppressed. The same windows throttle guesses of the operator token.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Clock;

use ahash::HashMap;

/// Characters of a client-chosen value an audit line repeats.
pub const MAX_ECHO: usize = 64;
/// Addresses remembered per window; past it the window starts over (bounded memory).
const MAX_ADDRESSES: usize = 10_000;

/// The first `MAX_ECHO` characters of `s`, marked when cut.
pub fn truncated(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_ECHO) {
        None => s.into(),
        Some((end, _)) => format!("{}…", &s[..end]).into(),
    }
}

/// Per-address counters over fixed one-minute windows.
pub struct AddressWindows {
    per_minute: u32,
    pub(super) clock: Clock,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    minute: u64,
    hits: HashMap<IpAddr, u32>,
}

impl AddressWindows {
    pub fn new(per_minute: u32, clock: Clock) -> Self {
        AddressWindows { per_minute, clock, state: Mutex::new(Windows::default()) }
    }

    /// Counts one hit; `true` while the address is within its allowance this minute.
    pub fn hit(&self, addr: IpAddr) -> bool {
        let minute = self.clock.unix_secs() / 60;
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.minute != minute || w.hits.len() >= MAX_ADDRESSES {
            w.minute = minute;
            w.hits.clear();
        }
        let n = w.hits.entry(addr).or_insert(0);
        *n = n.saturating_add(1);
        *n <= self.per_minute
    }

    /// Has the address used up its allowance this minute (without counting a hit)?
    pub fn exceeded(&self, addr: IpAddr) -> bool {
        let minute = self.clock.unix_secs() / 60;
        let w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        w.minute == minute && w.hits.get(&addr).is_some_and(|&n| n >= self.per_minute)
    }

    /// Until the current window ends.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(60 - self.clock.unix_secs() % 60)
    }
}

/// Where audit events go besides the log line: the control plane's audit log, when there is
/// one (set at start; auth itself knows nothing of PostgreSQL).
pub type AuditSink = Box<dyn Fn(&AuditEvent<'_>) + Send + Sync>;

/// Writes audit lines on the `audit` target, rate-limited per client address, and hands the
/// same events to the sink.
pub struct Auditor {
    windows: AddressWindows,
    suppressed: AtomicU64,
    sink: Option<AuditSink>,
}

/// What one audit line says.
pub struct AuditEvent<'a> {
    pub action: &'static str,
    pub client: IpAddr,
    pub organization_id: &'a str,
    pub actor: &'a str,
    /// What the client claimed (a selector, a token prefix); truncated before it is written.
    pub claimed: &'a str,
    pub route: &'a str,
}

impl Auditor {
    pub fn new(lines_per_minute: u32, clock: Clock) -> Self {
        Auditor { windows: AddressWindows::new(lines_per_minute, clock), suppressed: AtomicU64::new(0), sink: None }
    }

    pub fn set_allowance(&mut self, lines_per_minute: u32) {
        self.windows = AddressWindows::new(lines_per_minute, self.windows.clock.clone());
    }

    pub fn set_sink(&mut self, sink: AuditSink) {
        self.sink = Some(sink);
    }

    pub fn record(&self, e: AuditEvent<'_>) {
        if !self.windows.hit(e.client) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::AUDIT_SUPPRESSED).increment(1);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            target: "audit",
            action = e.action,
            client = %e.client,
            organization_id = %truncated(e.organization_id),
            actor = %truncated(e.actor),
            claimed = %truncated(e.claimed),
            claimed_len = e.claimed.len(),
            route = e.route,
            suppressed,
            "audit"
        );
        if let Some(sink) = &self.sink {
            sink(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn echoes_are_truncated_on_char_boundaries() {
        assert_eq!(truncated("org_a"), "org_a");
        let long = "é".repeat(300);
        let t = truncated(&long);
        assert_eq!(t.chars().count(), MAX_ECHO + 1);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn windows_cap_each_address() {
        let clock = Clock::manual(SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000));
        let w = AddressWindows::new(3, clock.clone());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| w.hit(a)));
        assert!(w.exceeded(a) && !w.exceeded(b));
        assert!(!w.hit(a));
        assert!(w.hit(b), "another address has its own allowance");
        assert_eq!(w.retry_after(), Duration::from_secs(20), "1_780_000_000 is 40 s into its minute");
        clock.advance(w.retry_after());
        assert!(w.hit(a), "the next minute starts afresh");
    }
}
