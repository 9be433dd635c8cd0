//! The control plane's counts in the fleet sync's tick ([`super::fleet`]): control-plane
//! requests per organisation and minute (`api_requests_per_minute`), and failed logins.
//!
//! **Requests per minute.** Each node counts its own requests in its fixed calendar-minute
//! window and admits while its own count plus the other nodes' (as of the last tick) is under
//! the tier's allowance. The tick adds this node's new requests to the minute's hash in Redis
//! (`edge:api:<minute>`, the minute of Redis's clock) and reads the hash back; what is not this
//! node's own is the others'. Bound: each other node admits at most what it admits in one lag
//! (≈ 2 ticks) before this node sees it, so the fleet's excess per minute is at most
//! `(N − 1) ×` the requests one node admits in 2 ticks. While Redis is unreachable a node
//! keeps to its share (allowance ÷ live nodes).
//!
//! **Logins.** [`LoginThrottle`] queues each failure and success; the tick counts failures in
//! Redis per account digest and per address (`edge:login:a:<digest>`, `edge:login:i:<ip>`, each
//! expiring after the window) and, when a count reaches its allowance, records a lock in a
//! sorted set scored by Redis time. Every node reads the locks newer than the last it saw and
//! applies them. Bound: a lock reaches the other nodes one tick after the failure that caused
//! it was sent, and each node also locks on its own count at once.

use std::collections::HashMap;
use std::net::IpAddr;

use super::Limiter;
use crate::limits::logins::{LoginEvent, LoginThrottle};
use crate::tenant::{OrgId, Snapshot};

/// The control-plane part of a tick's reply.
#[derive(Debug, Default, PartialEq)]
pub struct ControlReply {
    /// The minute (of Redis's clock) the requests were counted in.
    pub minute: u64,
    /// The minute's control-plane requests per organisation, all nodes together.
    pub api: Vec<(String, u64)>,
    /// Locks (`kind:id:until_ms`) with the Redis time they were made.
    pub locks: Vec<(String, u64)>,
}

/// What a tick took to send; given back if it fails.
pub struct Pending {
    api: Vec<(OrgId, u64)>,
    logins: Vec<LoginEvent>,
}

#[derive(Default)]
pub struct ControlCounts {
    /// The Redis minute `own_api` counts.
    own_minute: u64,
    /// This node's requests already counted in Redis's current minute, per organisation slot.
    own_api: HashMap<u32, u64>,
    /// Redis time of the newest lock read (read again from there: the same millisecond may
    /// hold later locks).
    lock_score: u64,
}

impl ControlCounts {
    pub fn take(&self, limiter: &Limiter, logins: &LoginThrottle) -> Pending {
        let api = limiter
            .take_api_unsynced()
            .into_iter()
            .filter_map(|(slot, n)| Some((OrgId::from_slot(slot)?, n)))
            .collect();
        Pending { api, logins: logins.take_events() }
    }

    /// ARGV 6 to 12 of the tick's script.
    pub fn head_args(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        rate_pairs: usize,
        pending: &Pending,
        logins: &LoginThrottle,
    ) {
        let (per_account, per_address, lockout) = logins.allowances();
        let lockout_ms = lockout.as_millis() as u64;
        invocation
            .arg(rate_pairs)
            .arg(pending.api.len())
            .arg(lockout_ms)
            .arg(lockout_ms)
            .arg(per_account)
            .arg(per_address)
            .arg(self.lock_score);
    }

    /// After the rate pairs: the request counts, then the login outcomes.
    pub fn tail_args(&self, invocation: &mut redis::ScriptInvocation<'_>, pending: &Pending) {
        for (id, n) in &pending.api {
            invocation.arg(id.as_str()).arg(*n);
        }
        for event in &pending.logins {
            match event {
                LoginEvent::AccountFailed(key) => invocation.arg("a").arg(hex::encode(key)),
                LoginEvent::AddressFailed(ip) => invocation.arg("i").arg(ip.to_string()),
                LoginEvent::AccountSucceeded(key) => invocation.arg("s").arg(hex::encode(key)),
            };
        }
    }

    /// The tick failed: counts go out with the next one, and logins lock on this node's share.
    pub fn failed(&self, pending: Pending, limiter: &Limiter, logins: &LoginThrottle, live_nodes: u32) {
        for (id, n) in pending.api {
            limiter.give_back_api_unsynced(id.slot(), n);
        }
        logins.give_back(pending.logins);
        logins.set_divisor(live_nodes);
    }

    pub fn apply(
        &mut self,
        reply: &ControlReply,
        pending: Pending,
        limiter: &Limiter,
        logins: &LoginThrottle,
        snapshot: &Snapshot,
    ) {
        if reply.minute != self.own_minute {
            (self.own_minute, self.own_api) = (reply.minute, HashMap::new());
        }
        for (id, n) in pending.api {
            *self.own_api.entry(id.slot()).or_default() += n;
        }
        for (org, total) in &reply.api {
            // Only organisations of the registry: the interner never takes ids from Redis.
            let Some(org) = snapshot.org(org) else { continue };
            let slot = org.id.slot();
            let mine = self.own_api.get(&slot).copied().unwrap_or(0);
            limiter.set_api_others(slot, reply.minute, total.saturating_sub(mine));
        }
        for (member, score) in &reply.locks {
            self.lock_score = self.lock_score.max(*score);
            match parse_lock(member) {
                Some(Lock::Account(key, until)) => logins.lock_account(&key, until),
                Some(Lock::Address(ip, until)) => logins.lock_address(ip, until),
                None => tracing::debug!(member, "unreadable login lock in Redis"),
            }
        }
        logins.set_divisor(1);
    }
}

#[derive(Debug, PartialEq)]
enum Lock {
    Account([u8; 16], u64),
    Address(IpAddr, u64),
}

/// `a:<hex digest>:<until>` or `i:<address>:<until>` (an IPv6 address has colons of its own).
fn parse_lock(member: &str) -> Option<Lock> {
    let (kind, rest) = member.split_once(':')?;
    let (id, until) = rest.rsplit_once(':')?;
    let until = until.parse().ok()?;
    match kind {
        "a" => Some(Lock::Account(hex::decode(id).ok()?.try_into().ok()?, until)),
        "i" => Some(Lock::Address(id.parse().ok()?, until)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_parse_accounts_and_both_address_families() {
        let digest = [7u8; 16];
        assert_eq!(parse_lock(&format!("a:{}:42", hex::encode(digest))), Some(Lock::Account(digest, 42)));
        assert_eq!(parse_lock("i:192.0.2.1:5"), Some(Lock::Address("192.0.2.1".parse().unwrap(), 5)));
        assert_eq!(parse_lock("i:2001:db8::1:9"), Some(Lock::Address("2001:db8::1".parse().unwrap(), 9)));
        assert_eq!(parse_lock("a:zz:1"), None);
        assert_eq!(parse_lock("x:1:2"), None);
    }
}
