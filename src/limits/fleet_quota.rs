//! Monthly event quotas that hold across a fleet and survive restarts of nodes and of Redis.
//!
//! **Leases.** A node never asks Redis on the request path: it admits from a *lease* of
//! events that Redis granted it ([`super::lease`]). Every tick of the fleet sync
//! ([`super::fleet`], 50 ms), a node asks for a new chunk for each organisation whose lease
//! fell below half a chunk (or that was refused). One Lua script per tick does it for all of
//! them: Redis keeps, per billing month (the UTC calendar month) and organisation, a hash of
//! what each node was charged (`edge:q:<month>:<org>`, node id → events); it grants
//! `min(want, ⌈(limit − total) / live nodes⌉)` and adds it to the node's field in the same
//! atomic step, so grants alone never pass the limit. A chunk `C` is what the tier's rate
//! admits in [`CHUNK_TICKS`] ticks plus the node's share of the burst
//! ([`super::fleet::FleetShare::quota_chunk`]): the rate limit keeps a node from emptying a
//! lease faster than the sync refills it.
//!
//! **Overdraft.** When a lease runs dry before the refill arrives, the node may admit up to an
//! overdraft cap that the last tick set: `min(C, (limit − total) / live)`, zero once the
//! fleet is at its limit (before any tick, and after a restart, one chunk unless PostgreSQL
//! says the month is used up). The next tick charges the overdraft to Redis whatever the
//! total, and that is the only way the fleet passes the limit. **Bound:** every node's
//! overdraft is at most `C` beyond what Redis had granted, so the fleet admits at most
//! **`limit + N · C`** events in a month (N nodes). Unused leases are the other way round: an
//! organisation refused on one node while another still holds `< C` of its lease, so at worst
//! `N · C` events before the limit are refused.
//!
//! **Redis unreachable.** Nodes keep admitting from their leases, and then from an overdraft
//! capped at their share of what the fleet had left at their last tick (`(limit − total) /
//! live`); the shares of all nodes add up to what was left, so the bound above holds. The
//! overdraft is charged when Redis returns. A node that never learnt an organisation's count
//! (Redis down since it started, and no PostgreSQL) allows its share of the whole month.
//!
//! **Durability.** Each node saves its own charges to PostgreSQL (`edge_private.quota_usage`,
//! one row per organisation, month and node id, never lowered) every [`SAVE_EVERY`] and on
//! shutdown, and loads them at start: a restarted node knows at once which organisations
//! are used up. When Redis has lost the month (restarted empty), the first node to notice
//! seeds it from PostgreSQL's rows of every node plus its own fresher counts (each field the
//! larger of the two), under a new *epoch*; every other node, seeing the epoch change, sends
//! its own counts again. What Redis lost and PostgreSQL had not saved yet (at most
//! `SAVE_EVERY` of grants) is what the fleet may admit twice. Without PostgreSQL, a Redis
//! restart forgets the month except what live nodes send back. Without Redis, quotas are
//! this node's own and saved in the data directory ([`super::quota_store`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{month_index, Limiter};
use crate::clock::Clock;
use crate::db::Db;
use crate::tenant::{OrgId, Snapshot};

/// A chunk covers this many ticks of the tier's rate.
pub const CHUNK_TICKS: u64 = 4;
/// At most this many organisations are synced in one tick (the others wait for the next).
pub const MAX_ORGS_PER_TICK: usize = 2_000;
/// How often each node saves its charges to PostgreSQL.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Redis keeps a month's counts this long after their last change.
const KEY_TTL_MS: u64 = 40 * 24 * 3600 * 1000;

const QUOTA_SCRIPT: &str = r#"
local month = ARGV[1]
local node = ARGV[2]
local live = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local epoch = redis.call('GET', 'edge:q:' .. month .. ':seeded')
if not epoch then return {} end
local out = {epoch}
for i = 5, #ARGV, 4 do
  local key = 'edge:q:' .. month .. ':' .. ARGV[i]
  local want = tonumber(ARGV[i + 1])
  local mine = tonumber(ARGV[i + 2])
  local limit = tonumber(ARGV[i + 3])
  local charged = tonumber(redis.call('HGET', key, node) or '0')
  if mine > charged then
    redis.call('HSET', key, node, mine)
    charged = mine
  end
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key)) do total = total + tonumber(v) end
  local grant = 0
  if want > 0 and total < limit then
    grant = math.min(want, math.ceil((limit - total) / live))
    charged = redis.call('HINCRBY', key, node, grant)
    total = total + grant
  end
  redis.call('PEXPIRE', key, ttl)
  out[#out + 1] = grant
  out[#out + 1] = charged
  out[#out + 1] = total
end
return out
"#;

const SEED_SCRIPT: &str = r#"
local seeded = 'edge:q:' .. ARGV[1] .. ':seeded'
if redis.call('EXISTS', seeded) == 1 then return 0 end
local ttl = tonumber(ARGV[3])
for i = 4, #ARGV, 3 do
  local key = 'edge:q:' .. ARGV[1] .. ':' .. ARGV[i]
  local v = tonumber(ARGV[i + 2])
  if v > tonumber(redis.call('HGET', key, ARGV[i + 1]) or '0') then
    redis.call('HSET', key, ARGV[i + 1], v)
  end
  redis.call('PEXPIRE', key, ttl)
end
redis.call('SET', seeded, ARGV[2], 'PX', ttl)
return 1
"#;

/// The first day of a month index, as PostgreSQL's `date` text.
fn month_date(month: u32) -> String {
    format!("{:04}-{:02}-01", month / 12, month % 12 + 1)
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaSyncError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered the quota script with something unexpected")]
    Reply,
    #[error("Redis lost this month's counts and PostgreSQL could not give them back: {0}")]
    Seed(String),
    #[error("the quota sync timed out")]
    Timeout,
}

/// The seeding epoch, then per organisation asked about: (grant, this node's charge, the
/// fleet's total).
type QuotaReply = (String, Vec<(u64, u64, u64)>);

/// One organisation mentioned in a tick.
struct Ask {
    slot: u32,
    /// The request path asked for more (else the charge is only sent again).
    asked: bool,
    overdraft: u64,
    chunk: u64,
    limit: u64,
}

/// The quota half of the fleet sync's tick; state kept between ticks.
pub struct QuotaSync {
    quota: redis::Script,
    seed: redis::Script,
    node_id: String,
    db: Option<Db>,
    month: u32,
    /// The seeding of Redis's month this node last saw; a new one means Redis lost counts.
    epoch: Option<String>,
    /// Send every organisation's charge again (Redis was re-seeded).
    resend_all: bool,
    /// Where the next tick starts looking, so no organisation waits behind others for long.
    cursor: u32,
}

impl QuotaSync {
    pub fn new(node_id: String, db: Option<Db>, month: u32) -> Self {
        QuotaSync {
            quota: redis::Script::new(QUOTA_SCRIPT),
            seed: redis::Script::new(SEED_SCRIPT),
            node_id,
            db,
            month,
            epoch: None,
            resend_all: false,
            cursor: 0,
        }
    }

    /// Asks for chunks, charges overdrafts and learns totals, for the organisations that need
    /// it. `live` is the number of live nodes the rate tick just counted.
    pub async fn tick(
        &mut self,
        conn: &mut redis::aio::ConnectionManager,
        limiter: &Limiter,
        snapshot: &Snapshot,
        live: u32,
        now_unix_secs: i64,
        timeout: Duration,
    ) -> Result<(), QuotaSyncError> {
        let month = month_index(now_unix_secs);
        if month != self.month {
            limiter.quota_leases().for_each(|(_, lease)| lease.reset());
            limiter.fleet().set_quota_month(month);
            (self.month, self.epoch) = (month, None);
        }
        let asks = self.collect(limiter, snapshot);
        // Timeouts wrap the Redis calls only, so overdrafts taken above are given back on failure.
        let reply = match within(timeout, self.invoke(conn, limiter, &asks, live)).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => match within(timeout, self.seed_redis(conn, limiter)).await {
                Ok(()) => within(timeout, self.invoke(conn, limiter, &asks, live))
                    .await
                    .and_then(|r| r.ok_or(QuotaSyncError::Reply)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (epoch, rows) = match reply {
            Ok(reply) => reply,
            Err(e) => {
                for ask in &asks {
                    if ask.overdraft > 0 {
                        limiter.quota_lease(ask.slot).give_back_overdraft(ask.overdraft);
                    }
                }
                return Err(e);
            }
        };
        if self.epoch.as_ref().is_some_and(|seen| *seen != epoch) {
            tracing::warn!("Redis's quota counts were re-seeded; sending this node's counts again");
            self.resend_all = true;
        } else if !asks.is_empty() {
            self.resend_all = false;
        }
        self.epoch = Some(epoch);
        for (ask, (grant, charged, total)) in asks.iter().zip(rows) {
            let left = ask.limit.saturating_sub(total);
            let cap = ask.chunk.min(left / u64::from(live.max(1)));
            limiter.quota_lease(ask.slot).granted(grant, charged, total, cap, ask.chunk / 2);
        }
        Ok(())
    }

    /// The organisations this tick mentions: those whose lease asked, and every one with a
    /// charge after a re-seeding; at most [`MAX_ORGS_PER_TICK`].
    fn collect(&mut self, limiter: &Limiter, snapshot: &Snapshot) -> Vec<Ask> {
        let share = limiter.fleet();
        let mut asks = Vec::new();
        let start = self.cursor;
        let leases = limiter
            .quota_leases()
            .skip_while(|&(slot, _)| slot < start)
            .chain(limiter.quota_leases().take_while(|&(slot, _)| slot < start));
        for (slot, lease) in leases {
            if asks.len() == MAX_ORGS_PER_TICK {
                self.cursor = slot;
                return asks;
            }
            let asked = lease.take_ask();
            if !(asked || self.resend_all && lease.charged() > 0) {
                continue;
            }
            let Some(org) = OrgId::from_slot(slot).and_then(|id| snapshot.org(id.as_str()).cloned()) else {
                continue;
            };
            asks.push(Ask {
                slot,
                asked,
                overdraft: lease.take_overdraft(),
                chunk: share.quota_chunk(&org.tier),
                limit: org.tier.events_per_month,
            });
        }
        self.cursor = 0;
        asks
    }

    /// Runs the quota script; `None` when Redis has no counts for this month yet.
    async fn invoke(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        limiter: &Limiter,
        asks: &[Ask],
        live: u32,
    ) -> Result<Option<QuotaReply>, QuotaSyncError> {
        let mut invocation = self.quota.prepare_invoke();
        invocation.arg(self.month).arg(&self.node_id).arg(live.max(1)).arg(KEY_TTL_MS);
        for ask in asks {
            let lease = limiter.quota_lease(ask.slot);
            let want = if ask.asked { ask.chunk.saturating_sub(lease.lease()) } else { 0 };
            let Some(id) = OrgId::from_slot(ask.slot) else { continue };
            invocation.arg(id.as_str()).arg(want).arg(lease.charged() + ask.overdraft).arg(ask.limit);
        }
        let value: redis::Value = invocation.invoke_async(conn).await?;
        parse_reply(value, asks.len())
    }

    /// Gives Redis this month's counts back from PostgreSQL and this node's own, under a new
    /// epoch (a no-op when another node was first).
    async fn seed_redis(
        &mut self,
        conn: &mut redis::aio::ConnectionManager,
        limiter: &Limiter,
    ) -> Result<(), QuotaSyncError> {
        let mut rows: Vec<(String, String, u64)> = match &self.db {
            Some(db) => load_rows(db, self.month).await.map_err(QuotaSyncError::Seed)?,
            None => Vec::new(),
        };
        for (slot, lease) in limiter.quota_leases() {
            let charged = lease.charged();
            if let (true, Some(id)) = (charged > 0, OrgId::from_slot(slot)) {
                rows.push((id.as_str().to_string(), self.node_id.clone(), charged));
            }
        }
        let epoch = hex::encode(rand::random::<[u8; 8]>());
        let mut invocation = self.seed.prepare_invoke();
        invocation.arg(self.month).arg(&epoch).arg(KEY_TTL_MS);
        for (org, node, events) in &rows {
            invocation.arg(org).arg(node).arg(*events);
        }
        let seeded: i64 = invocation.invoke_async(conn).await?;
        if seeded == 1 {
            tracing::info!(rows = rows.len(), "seeded Redis with this month's quota counts");
            self.epoch = Some(epoch);
        }
        Ok(())
    }

    /// Redis unreachable: each organisation may overdraw this node's share of what the fleet
    /// had left when this node last learnt it (of the whole month if it never did).
    pub fn on_outage(&self, limiter: &Limiter, snapshot: &Snapshot, live: u32) {
        for (slot, lease) in limiter.quota_leases() {
            let Some(org) = OrgId::from_slot(slot).and_then(|id| snapshot.org(id.as_str()).cloned()) else {
                continue;
            };
            lease.set_cap(org.tier.events_per_month.saturating_sub(lease.fleet_total()) / u64::from(live.max(1)));
        }
    }
}

async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, QuotaSyncError>>,
) -> Result<T, QuotaSyncError> {
    tokio::time::timeout(timeout, f).await.unwrap_or(Err(QuotaSyncError::Timeout))
}

fn parse_reply(value: redis::Value, asks: usize) -> Result<Option<QuotaReply>, QuotaSyncError> {
    use redis::Value;
    let Value::Array(items) = value else { return Err(QuotaSyncError::Reply) };
    let Some(first) = items.first() else { return Ok(None) };
    let epoch = match first {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return Err(QuotaSyncError::Reply),
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    let rows: Option<Vec<_>> =
        items[1..].chunks(3).map(|c| Some((int(c.first()?)?, int(c.get(1)?)?, int(c.get(2)?)?))).collect();
    match rows {
        Some(rows) if rows.len() == asks => Ok(Some((epoch, rows))),
        _ => Err(QuotaSyncError::Reply),
    }
}

/// Every node's saved charge for `month`: (organisation, node, events).
async fn load_rows(db: &Db, month: u32) -> Result<Vec<(String, String, u64)>, String> {
    let date = month_date(month);
    let rows = db
        .cross_tenant("SELECT organization_id, node_id, events FROM edge_private.quota_month($1::text::date)", &[&date])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).max(0) as u64)).collect())
}

/// Start-up: this node's own charges and the fleet's totals as PostgreSQL saved them, so a
/// restarted node refuses a used-up organisation from its first request. Returns how many
/// organisations it knows of.
pub async fn restore(
    db: &Db,
    limiter: &Limiter,
    snapshot: &Snapshot,
    node_id: &str,
    month: u32,
) -> Result<usize, String> {
    let rows = load_rows(db, month).await?;
    let mut totals: HashMap<&str, (u64, u64)> = HashMap::new();
    for (org, node, events) in &rows {
        let entry = totals.entry(org).or_default();
        entry.1 += events;
        if node == node_id {
            entry.0 = *events;
        }
    }
    for (org, (mine, total)) in &totals {
        let Some(org) = snapshot.org(org) else { continue };
        let lease = limiter.quota_lease(org.id.slot());
        lease.restore(*mine, *total);
        if *total >= org.tier.events_per_month {
            lease.set_cap(0);
        }
    }
    limiter.fleet().set_quota_month(month);
    Ok(totals.len())
}

/// Saves this node's charges to PostgreSQL until `stop`, then once more (`quota-ledger`).
pub async fn save_until(db: Db, limiter: Arc<Limiter>, node_id: String, stop: CancellationToken) {
    let mut saved: HashMap<u32, u64> = HashMap::new();
    let mut saved_month = limiter.fleet().quota_month();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => false,
            _ = stop.cancelled() => true,
        };
        let month = limiter.fleet().quota_month();
        if month != saved_month {
            (saved, saved_month) = (HashMap::new(), month);
        }
        let changed: Vec<(u32, u64)> = limiter
            .quota_leases()
            .map(|(slot, lease)| (slot, lease.charged()))
            .filter(|&(slot, charged)| charged > 0 && saved.get(&slot) != Some(&charged))
            .collect();
        // Charges read across a month's turn may belong to either month: wait for the next save.
        if !changed.is_empty() && limiter.fleet().quota_month() == month {
            let orgs: Vec<String> = changed
                .iter()
                .filter_map(|&(slot, _)| OrgId::from_slot(slot))
                .map(|id| id.as_str().to_string())
                .collect();
            let events: Vec<i64> = changed.iter().map(|&(_, n)| n as i64).collect();
            let date = month_date(month);
            let result = db
                .cross_tenant(
                    "SELECT edge_private.quota_save($1, $2::text::date, $3, $4)",
                    &[&node_id, &date, &orgs, &events],
                )
                .await;
            match result {
                Ok(_) => saved.extend(changed),
                Err(e) => tracing::warn!(error = %e, "could not save quota counts to PostgreSQL; retrying"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// The month a clock is in (for the start-up load).
pub fn current_month(clock: &Clock) -> u32 {
    month_index(clock.unix_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn month_dates_are_first_days() {
        assert_eq!(month_date(2026 * 12 + 10), "2026-11-01");
        assert_eq!(month_date(2027 * 12), "2027-01-01");
    }

    #[test]
    fn replies_parse_and_unseeded_is_empty() {
        let reply =
            Value::Array(vec![Value::BulkString(b"e1".to_vec()), Value::Int(5), Value::Int(105), Value::Int(300)]);
        assert_eq!(parse_reply(reply, 1).unwrap(), Some(("e1".to_string(), vec![(5, 105, 300)])));
        assert_eq!(parse_reply(Value::Array(vec![]), 3).unwrap(), None);
        assert!(parse_reply(Value::Array(vec![Value::BulkString(b"e".to_vec()), Value::Int(1)]), 1).is_err());
    }
}
