//! Rate limits that hold across a fleet of edge nodes, without Redis on the request path.
//!
//! Every node keeps admitting with its local lock-free buckets ([`super::rate`]). A background
//! task (`fleet-sync`) runs one Lua script per tick (`EDGE_REDIS_SYNC_INTERVAL`, 50 ms) that
//! - adds what this node admitted per organisation since its last tick to the hash of the
//!   current *slot* (`edge:rate:<slot>`, one slot per tick length of Redis's own clock, `TIME`,
//!   so skewed node clocks shift nothing; each hash expires on its own),
//! - refreshes this node's heartbeat (`edge:nodes`, a sorted set scored by Redis time) and
//!   counts the nodes seen within `EDGE_REDIS_NODE_TTL`,
//! - returns every slot that closed since this node last read, whole.
//!
//! The node subtracts its own share of each closed slot and charges the rest (what the other
//! nodes admitted) to its local buckets, into debt if need be (the others used this node's
//! refill too), but never more than a second of it. So each bucket is
//! charged with everything the fleet admitted, some of it up to two ticks late, and refills
//! at the organisation's rate. A node's burst is its share of the tier's burst (burst ÷ live
//! nodes), so an idle organisation's first requests cannot take a full burst on every node.
//!
//! **Bound.** For any node, what the fleet admitted by time `t` is at most what that node's
//! bucket allowed (`L·t` + its burst share) plus what the others admitted that it has not
//! seen yet. Each other node admits at most its burst share plus `L·lag` in `lag`, so with
//! `N` live nodes, rate `L`, burst `B` and `lag` = slot + tick + Redis round trip
//! (≈ 2 ticks), the fleet admits at most **`L·t + B + (N − 1)·L·lag`** by any time `t`: a
//! constant excess, not one that grows with time. With the defaults and three nodes that is
//! `2 · L · 0.1 s` = 0.2 s of the limit, 2 % of a 10 s run at the limit.
//!
//! **Redis slow or down.** Requests never wait on Redis. A tick that fails or takes longer
//! than `EDGE_REDIS_TIMEOUT` (250 ms) counts in `edge_redis_sync_errors_total`, gives the
//! unsent counts back for the next tick, and puts the node on its share: rate ÷ live nodes
//! (as last seen) as well as burst ÷ live nodes, never unlimited. The next successful tick
//! restores the full rate and charges what the fleet admitted meanwhile, if its slots are still
//! there (slots older than [`MAX_SLOTS_READ`] ticks are not read).
//!
//! **The same tick** also carries the control plane's counts (control-plane requests per minute
//! and login failures, [`super::fleet_control`], in the same script) and then the monthly
//! quota's leases ([`super::fleet_quota`], a second script); it publishes the top organisations'
//! fleet-wide consumption as rank-labelled gauges. All of it needs one Redis (the scripts touch
//! many keys), not Redis Cluster.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::fleet_control::ControlCounts;
use super::fleet_quota::{current_month, QuotaSync};
use super::Limiter;
use crate::clock::Clock;
use crate::db::Db;
use crate::limits::logins::LoginThrottle;
use crate::metrics as m;
use crate::tenant::Registry;

/// At most this many closed slots are read in one tick (a node back from a stall or an outage
/// does not read its whole absence).
pub const MAX_SLOTS_READ: i64 = 40;

/// How this node shares the fleet's limits right now: what the request path reads.
#[derive(Debug)]
pub struct FleetShare {
    /// A fleet is configured (`REDIS_URL`): bursts are shared and the sync runs.
    enabled: bool,
    /// Nodes that sent a heartbeat within the TTL at the last successful tick (at least 1).
    live_nodes: AtomicU32,
    /// The last tick succeeded: the full rate, charged with the fleet's consumption.
    synced: AtomicBool,
    /// The sync's tick, which sizes quota chunks.
    tick: Duration,
    /// The month (index) the quota leases count for.
    quota_month: AtomicU32,
}

impl FleetShare {
    /// One node alone: every limit is this node's.
    pub fn local() -> Self {
        FleetShare {
            enabled: false,
            live_nodes: AtomicU32::new(1),
            synced: AtomicBool::new(true),
            tick: Duration::ZERO,
            quota_month: AtomicU32::new(0),
        }
    }

    /// A node of a fleet syncing every `tick`; until its first tick it assumes it is alone
    /// but not synced.
    pub fn fleet(tick: Duration) -> Self {
        FleetShare {
            enabled: true,
            live_nodes: AtomicU32::new(1),
            synced: AtomicBool::new(false),
            tick,
            quota_month: AtomicU32::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn live_nodes(&self) -> u32 {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// The rate (per second) and burst this node applies for an organisation whose tier
    /// allows `rate` and `burst` fleet-wide.
    pub fn local_limits(&self, rate: u64, burst: u64) -> (u64, u64) {
        if !self.enabled {
            return (rate, burst);
        }
        let nodes = u64::from(self.live_nodes());
        let burst = (burst / nodes).max(1);
        if self.synced() {
            (rate, burst)
        } else {
            ((rate / nodes).max(1), burst)
        }
    }

    /// How much monthly quota this node takes from Redis at a time for an organisation on
    /// `tier` (see [`super::fleet_quota`]): what its rate could admit in
    /// [`super::fleet_quota::CHUNK_TICKS`] ticks plus its share of the burst, so that a lease
    /// refilled every tick does not run dry at the tier's rate.
    pub fn quota_chunk(&self, tier: &crate::plan::Tier) -> u64 {
        let burst = tier.events_per_second.saturating_mul(tier.burst_seconds) / u64::from(self.live_nodes());
        let ticks = self.tick.as_nanos() as u64 * super::fleet_quota::CHUNK_TICKS;
        let per_ticks = (u128::from(tier.events_per_second) * u128::from(ticks) / 1_000_000_000) as u64;
        per_ticks.saturating_add(burst).max(1)
    }

    pub fn quota_month(&self) -> u32 {
        self.quota_month.load(Ordering::Acquire)
    }

    pub(super) fn set_quota_month(&self, month: u32) {
        self.quota_month.store(month, Ordering::Release);
    }

    pub(super) fn set(&self, synced: bool, live_nodes: Option<u32>) {
        if let Some(n) = live_nodes {
            self.live_nodes.store(n.max(1), Ordering::Relaxed);
        }
        self.synced.store(synced, Ordering::Relaxed);
        metrics::gauge!(m::FLEET_NODES).set(f64::from(self.live_nodes()));
        metrics::gauge!(m::FLEET_FALLBACK).set(if synced { 0.0 } else { 1.0 });
    }
}

/// Settings of the fleet sync.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub redis_url: String,
    /// Tick and slot length.
    pub interval: Duration,
    /// Longest a tick may take (connecting included) before the node falls back to its share.
    pub timeout: Duration,
    /// A node without a heartbeat for this long no longer counts as live.
    pub node_ttl: Duration,
    pub node_id: String,
}

/// The node's id: `EDGE_NODE_ID`, else the one saved in the data directory, else a new one
/// saved there (so a restarted node is the same node).
pub fn node_id(configured: Option<String>, data_dir: &Path) -> std::io::Result<String> {
    if let Some(id) = configured {
        return Ok(id);
    }
    let path = data_dir.join("node_id");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim();
        if !saved.is_empty() {
            return Ok(saved.to_string());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let id = format!("node_{}", hex::encode(rand::random::<[u8; 8]>()));
    std::fs::write(&path, &id)?;
    Ok(id)
}

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot_ms = tonumber(ARGV[3])
local slot = math.floor(now / slot_ms)
local minute = math.floor(now / 60000)
redis.call('ZADD', 'edge:nodes', now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', 'edge:nodes', '-inf', now - tonumber(ARGV[2]))
local live = redis.call('ZCARD', 'edge:nodes')
local i = 13
-- Adds `pairs` (organisation, count) pairs from ARGV[i] on to the hash `key`.
local function add(key, pairs, ttl_ms)
  for _ = 1, pairs do
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  if pairs > 0 then
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
-- Events admitted per organisation, into this slot.
add('edge:rate:' .. slot, tonumber(ARGV[6]), slot_ms * 200)
-- Control-plane requests per organisation, into this minute; the minute's totals back.
local api_key = 'edge:api:' .. minute
add(api_key, tonumber(ARGV[7]), 120000)
local api = {}
if redis.call('HLEN', api_key) <= 10000 then
  api = redis.call('HGETALL', api_key)
end
-- Login outcomes: failures counted per account or address; the allowance reached locks it.
local window = tonumber(ARGV[8])
local lockout = tonumber(ARGV[9])
while i < #ARGV do
  local kind = ARGV[i]
  local id = ARGV[i + 1]
  i = i + 2
  if kind == 's' then
    redis.call('DEL', 'edge:login:a:' .. id)
  else
    local key = 'edge:login:' .. kind .. ':' .. id
    local n = redis.call('INCR', key)
    if n == 1 then
      redis.call('PEXPIRE', key, window)
    end
    local max = tonumber(ARGV[10])
    if kind == 'i' then
      max = tonumber(ARGV[11])
    end
    if n >= max then
      redis.call('DEL', key)
      redis.call('ZADD', 'edge:login:locks', now, kind .. ':' .. id .. ':' .. (now + lockout))
    end
  end
end
redis.call('ZREMRANGEBYSCORE', 'edge:login:locks', '-inf', now - lockout)
local locks = redis.call('ZRANGEBYSCORE', 'edge:login:locks', ARGV[12], '+inf', 'WITHSCORES', 'LIMIT', 0, 1000)
local out = {slot, live, minute, api, locks}
local from = math.max(tonumber(ARGV[4]) + 1, slot - tonumber(ARGV[5]))
for s = from, slot - 1 do
  local h = redis.call('HGETALL', 'edge:rate:' .. s)
  if #h > 0 then
    out[#out + 1] = s
    out[#out + 1] = h
  end
end
return out
"#;

/// What one tick learnt: the current slot, the live nodes, each closed slot's counts, the
/// minute's control-plane requests per organisation, and login locks.
#[derive(Debug, Default, PartialEq)]
struct TickReply {
    slot: i64,
    live: u32,
    closed: Vec<(i64, Vec<(String, u64)>)>,
    control: super::fleet_control::ControlReply,
}

fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A flat `[field, value, …]` array as pairs whose value parses as a number.
fn pairs(v: &redis::Value) -> Option<Vec<(String, u64)>> {
    let redis::Value::Array(items) = v else { return None };
    Some(
        items
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?.parse::<f64>().ok()? as u64)))
            .collect(),
    )
}

impl TickReply {
    fn parse(value: redis::Value) -> Option<Self> {
        let redis::Value::Array(items) = value else { return None };
        let mut reply = TickReply {
            slot: int(items.first()?)?,
            live: int(items.get(1)?)? as u32,
            closed: Vec::new(),
            control: super::fleet_control::ControlReply {
                minute: int(items.get(2)?)? as u64,
                api: pairs(items.get(3)?)?,
                locks: pairs(items.get(4)?)?,
            },
        };
        for pair in items[5..].chunks(2) {
            let [slot, hash] = pair else { return None };
            reply.closed.push((int(slot)?, pairs(hash)?));
        }
        Some(reply)
    }
}

/// The background task that keeps this node's buckets charged with the fleet's consumption.
pub struct FleetSync {
    pub limiter: Arc<Limiter>,
    pub registry: Arc<Registry>,
    pub config: FleetConfig,
    pub clock: Clock,
    /// Where monthly quota counts are saved, and re-seeded from when Redis loses them.
    pub db: Option<Db>,
    /// Failed logins, counted fleet-wide by the same tick.
    pub logins: Arc<LoginThrottle>,
}

impl FleetSync {
    pub async fn run(self, stop: CancellationToken) {
        let script = redis::Script::new(SCRIPT);
        let mut conn = match redis::Client::open(self.config.redis_url.as_str()) {
            Ok(client) => {
                let settings = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(self.config.timeout))
                    .set_connection_timeout(Some(self.config.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(self.config.interval.max(Duration::from_millis(100)));
                redis::aio::ConnectionManager::new_lazy_with_config(client, settings).ok()
            }
            Err(_) => None,
        };
        if conn.is_none() {
            tracing::error!("REDIS_URL is not a usable Redis address; limits stay on this node's share");
        }
        let share = self.limiter.fleet();
        share.set(false, None);
        let mut quota = QuotaSync::new(self.config.node_id.clone(), self.db.clone(), current_month(&self.clock));
        let mut quota_failing = false;
        let mut control = ControlCounts::default();
        let mut top = TopConsumers::new();
        // Own counts per slot not yet read back: (slot → organisation slot → events).
        let mut own: HashMap<i64, HashMap<u32, u64>> = HashMap::new();
        let mut last_read: Option<i64> = None;
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return,
            }
            let Some(conn) = conn.as_mut() else { continue };
            let deltas = self.limiter.take_unsynced();
            let mut invocation = script.prepare_invoke();
            // The first tick reads nothing back: slots before this node started are not its news.
            let from = last_read.unwrap_or(i64::MAX - 1);
            invocation
                .arg(&self.config.node_id)
                .arg(self.config.node_ttl.as_millis() as u64)
                .arg(self.config.interval.as_millis().max(1) as u64)
                .arg(from)
                .arg(MAX_SLOTS_READ);
            let ids: Vec<_> =
                deltas.iter().filter_map(|&(slot, n)| Some((crate::tenant::OrgId::from_slot(slot)?, n))).collect();
            let pending = control.take(&self.limiter, &self.logins);
            control.head_args(&mut invocation, ids.len(), &pending, &self.logins);
            for (id, n) in &ids {
                invocation.arg(id.as_str()).arg(*n);
            }
            control.tail_args(&mut invocation, &pending);
            let started = Instant::now();
            let result = tokio::time::timeout(self.config.timeout, invocation.invoke_async::<redis::Value>(conn)).await;
            metrics::histogram!(m::FLEET_SYNC_DURATION).record(started.elapsed().as_secs_f64());
            let reply = match result {
                Ok(Ok(value)) => TickReply::parse(value),
                Ok(Err(e)) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, "Redis sync failed; limits fall back to this node's share");
                    }
                    None
                }
                Err(_) => {
                    if failing_since.is_none() {
                        tracing::warn!("Redis sync timed out; limits fall back to this node's share");
                    }
                    None
                }
            };
            let Some(reply) = reply else {
                metrics::counter!(m::REDIS_SYNC_ERRORS).increment(1);
                failing_since.get_or_insert_with(Instant::now);
                // Not counted by the fleet (or not known to be): sent again next tick.
                for (slot, n) in deltas {
                    self.limiter.give_back_unsynced(slot, n);
                }
                control.failed(pending, &self.limiter, &self.logins, share.live_nodes());
                share.set(false, None);
                quota.on_outage(&self.limiter, &self.registry.snapshot(), share.live_nodes());
                continue;
            };
            if let Some(since) = failing_since.take() {
                tracing::info!(after_ms = since.elapsed().as_millis() as u64, "Redis sync restored");
            }
            if !deltas.is_empty() {
                let mine = own.entry(reply.slot).or_default();
                for (slot, n) in deltas {
                    *mine.entry(slot).or_default() += n;
                }
            }
            let snapshot = self.registry.snapshot();
            for (slot, counts) in &reply.closed {
                let mine = own.remove(slot).unwrap_or_default();
                for (org, total) in counts {
                    let Some(org) = snapshot.org(org) else { continue };
                    top.add(org.id.slot(), *total);
                    let others = total.saturating_sub(mine.get(&org.id.slot()).copied().unwrap_or(0));
                    if others > 0 {
                        self.limiter.charge_fleet(org, others);
                    }
                }
            }
            top.publish_every_second(&snapshot);
            // Own counts of slots that can no longer be read back.
            own.retain(|&slot, _| slot > reply.slot - MAX_SLOTS_READ);
            last_read = Some(reply.slot - 1);
            share.set(true, Some(reply.live));
            control.apply(&reply.control, pending, &self.limiter, &self.logins, &self.registry.snapshot());
            let now = self.clock.unix_secs() as i64;
            match quota.tick(conn, &self.limiter, &snapshot, reply.live, now, self.config.timeout).await {
                Ok(()) => {
                    if std::mem::take(&mut quota_failing) {
                        tracing::info!("quota sync restored");
                    }
                }
                Err(e) => {
                    metrics::counter!(m::REDIS_SYNC_ERRORS).increment(1);
                    if !std::mem::replace(&mut quota_failing, true) {
                        tracing::warn!(error = %e, "quota sync failed; nodes overdraw at most their share");
                    }
                    quota.on_outage(&self.limiter, &snapshot, reply.live);
                }
            }
        }
    }
}

/// The organisations that admitted the most events fleet-wide over the last second, as
/// rank-labelled gauges: at most [`m::FLEET_TOP_RANKS`] series whatever the tenant count.
struct TopConsumers {
    window: HashMap<u32, u64>,
    since: Instant,
}

impl TopConsumers {
    fn new() -> Self {
        TopConsumers { window: HashMap::new(), since: Instant::now() }
    }

    fn add(&mut self, slot: u32, events: u64) {
        *self.window.entry(slot).or_default() += events;
    }

    fn publish_every_second(&mut self, snapshot: &crate::tenant::Snapshot) {
        let elapsed = self.since.elapsed();
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let top = top_ranked(std::mem::take(&mut self.window), m::FLEET_TOP_RANKS);
        for (i, rank) in m::RANKS.iter().enumerate() {
            let (rate, ratio) = match top.get(i) {
                Some(&(slot, events)) => {
                    let rate = events as f64 / elapsed.as_secs_f64();
                    let limit = crate::tenant::OrgId::from_slot(slot)
                        .and_then(|id| snapshot.org(id.as_str()).map(|o| o.tier.events_per_second))
                        .unwrap_or(0);
                    (rate, if limit > 0 { rate / limit as f64 } else { 0.0 })
                }
                None => (0.0, 0.0),
            };
            metrics::gauge!(m::FLEET_TOP_RATE, "rank" => *rank).set(rate);
            metrics::gauge!(m::FLEET_TOP_RATIO, "rank" => *rank).set(ratio);
        }
        self.since = Instant::now();
    }
}

/// The `k` largest counts, largest first.
fn top_ranked(counts: HashMap<u32, u64>, k: usize) -> Vec<(u32, u64)> {
    let mut all: Vec<(u32, u64)> = counts.into_iter().collect();
    if all.len() > k {
        all.select_nth_unstable_by(k, |a, b| b.1.cmp(&a.1));
        all.truncate(k);
    }
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

#[cfg(test)]
mod tests {
    use super::super::fleet_control::ControlReply;
    use super::*;
    use redis::Value;

    #[test]
    fn shares_split_bursts_always_and_rates_only_when_not_synced() {
        let share = FleetShare::fleet(Duration::from_millis(50));
        share.set(true, Some(4));
        assert_eq!(share.local_limits(1_000, 2_000), (1_000, 500));
        share.set(false, None);
        assert_eq!(share.local_limits(1_000, 2_000), (250, 500), "on its share, never unlimited");
        assert_eq!(FleetShare::local().local_limits(1_000, 2_000), (1_000, 2_000));
        share.set(false, Some(0));
        assert_eq!(share.live_nodes(), 1);
    }

    #[test]
    fn replies_parse_slots_and_counts() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let value = Value::Array(vec![
            Value::Int(100),
            Value::Int(3),
            Value::Int(29_000_000),
            Value::Array(vec![bulk("org_a"), bulk("7")]),
            Value::Array(vec![bulk("i:192.0.2.1:1740000900000"), bulk("1740000000000")]),
            Value::Int(98),
            Value::Array(vec![bulk("org_a"), bulk("12"), bulk("org_b"), bulk("3")]),
            Value::Int(99),
            Value::Array(vec![bulk("org_a"), bulk("1")]),
        ]);
        let reply = TickReply::parse(value).unwrap();
        assert_eq!(
            reply,
            TickReply {
                slot: 100,
                live: 3,
                closed: vec![(98, vec![("org_a".into(), 12), ("org_b".into(), 3)]), (99, vec![("org_a".into(), 1)])],
                control: ControlReply {
                    minute: 29_000_000,
                    api: vec![("org_a".into(), 7)],
                    locks: vec![("i:192.0.2.1:1740000900000".into(), 1_740_000_000_000)],
                },
            }
        );
        assert_eq!(TickReply::parse(Value::Int(1)), None);
    }

    #[test]
    fn the_top_ranks_are_the_largest_counts_in_order() {
        let counts: HashMap<u32, u64> = (0..100u32).map(|slot| (slot, u64::from(slot * 7 % 101))).collect();
        let top = top_ranked(counts, 3);
        assert_eq!(top, vec![(72, 100), (43, 99), (14, 98)]);
        assert_eq!(top_ranked(HashMap::from([(1, 5)]), 3), vec![(1, 5)]);
    }

    #[test]
    fn a_node_keeps_its_id_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_id(None, dir.path()).unwrap();
        assert!(first.starts_with("node_"));
        assert_eq!(node_id(None, dir.path()).unwrap(), first);
        assert_eq!(node_id(Some("edge-7".into()), dir.path()).unwrap(), "edge-7");
    }
}
