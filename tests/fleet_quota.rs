//! Monthly quotas across a fleet: two real `edge` processes on a Redis of the test's own and a
//! fresh PostgreSQL. A small quota reached through both nodes is refused (402) on both, with
//! the overshoot within `N · C`; a restarted node still refuses, also after Redis restarted
//! empty; a tier upgrade through the control plane lets events in again within a second.

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge::tenant::SdkKey;

const QUOTA: u64 = 3_000;
const RATE: u64 = 1_000;
const BURST_SECS: u64 = 1;
const NODES: u64 = 2;

/// The chunk a node takes (`FleetShare::quota_chunk`): 4 ticks of 50 ms at the rate, plus its
/// share of the burst.
const CHUNK: u64 = RATE * 4 * 50 / 1_000 + RATE * BURST_SECS / NODES;

fn node(pg: &pg::Pg, dir: &std::path::Path, name: &str, redis: &str) -> common::EdgeProcess {
    pg::fleet_edge(
        pg,
        dir,
        name,
        redis,
        &[
            ("EDGE_TIER_STARTER_EVENTS_PER_MONTH", QUOTA.to_string()),
            ("EDGE_TIER_STARTER_EVENTS_PER_SEC", RATE.to_string()),
            ("EDGE_TIER_STARTER_BURST_SECS", BURST_SECS.to_string()),
            ("EDGE_ACK", "memory".to_string()),
        ],
    )
}

async fn post_event(http: &reqwest::Client, addr: &str, key: &SdkKey) -> reqwest::Response {
    http.post(format!("http://{addr}/v1/events"))
        .header("x-api-key", key.expose())
        .json(&common::event("dev-q"))
        .send()
        .await
        .unwrap()
}

async fn send(http: &reqwest::Client, addr: &str, key: &SdkKey) -> u16 {
    post_event(http, addr, key).await.status().as_u16()
}

/// Sends from 8 tasks per node until each node has refused 100 requests with 402 in a row;
/// returns the events accepted in all.
async fn until_refused(addrs: &[String], key: &SdkKey) -> u64 {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for addr in addrs {
        let refused_in_a_row = Arc::new(AtomicU64::new(0));
        for _ in 0..8 {
            let (http, addr, key) = (http.clone(), addr.clone(), SdkKey::from_string(key.expose().to_string()));
            let (accepted, refused_in_a_row) = (accepted.clone(), refused_in_a_row.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while refused_in_a_row.load(Ordering::Relaxed) < 100 && Instant::now() < deadline {
                    match send(&http, &addr, &key).await {
                        202 => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            refused_in_a_row.store(0, Ordering::Relaxed);
                        }
                        402 => {
                            refused_in_a_row.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => tokio::time::sleep(Duration::from_millis(5)).await,
                        other => panic!("unexpected status {other}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    accepted.load(Ordering::Relaxed)
}

/// The month's hash of charges in Redis for `org`, summed over nodes.
async fn redis_total(url: &str, org: &str) -> u64 {
    let now = time::OffsetDateTime::now_utc();
    let month = now.year() as u32 * 12 + now.month() as u32 - 1;
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let values: Vec<u64> =
        redis::cmd("HVALS").arg(format!("edge:q:{month}:{org}")).query_async(&mut conn).await.unwrap_or_default();
    values.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_across_nodes_restarts_and_a_redis_restart_and_lifts_on_upgrade() {
    if common::redis_url().is_none() {
        return;
    }
    let Some(pg) = pg::Pg::fresh().await else { return };
    let keys = pg.seed(&["org_q"]).await;
    let key = &keys[0];
    let dir = tempfile::tempdir().unwrap();
    let mut redis = common::OwnRedis::start(dir.path());
    let a = node(&pg, dir.path(), "node-a", &redis.url);
    let mut b = node(&pg, dir.path(), "node-b", &redis.url);
    pg.wait_for_listeners(2).await;
    let http = reqwest::Client::new();

    // Reached through both nodes at once.
    let accepted = until_refused(&[a.addr.clone(), b.addr.clone()], key).await;
    let bound = NODES * CHUNK;
    eprintln!("quota {QUOTA}: accepted {accepted}, overshoot {}, bound N·C = {bound}", accepted as i64 - QUOTA as i64);
    assert!(accepted <= QUOTA + bound, "accepted {accepted} > {QUOTA} + {bound}");
    assert!(accepted + bound >= QUOTA, "accepted {accepted}: refused too early");
    for addr in [&a.addr, &b.addr] {
        let r = post_event(&http, addr, key).await;
        assert_eq!(r.status(), 402);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Monthly event quota exceeded", "{body}");
        assert_eq!(body["tier"], "starter", "{body}");
    }

    // Saved to PostgreSQL (every second); a restarted node refuses from its first request.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drop(b);
    b = node(&pg, dir.path(), "node-b", &redis.url);
    assert_eq!(send(&http, &b.addr, key).await, 402, "restarted node");

    // Redis restarted empty, and the node again: the month comes back from PostgreSQL.
    drop(b);
    redis.restart_empty();
    b = node(&pg, dir.path(), "node-b", &redis.url);
    pg.wait_for_listeners(2).await;
    for _ in 0..20 {
        assert_eq!(send(&http, &b.addr, key).await, 402, "restarted node, restarted Redis");
        assert_eq!(send(&http, &a.addr, key).await, 402, "running node, restarted Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reseeded = redis_total(&redis.url, "org_q").await;
    assert!(reseeded >= QUOTA, "Redis re-seeded with {reseeded}");

    // The operator upgrades the tier: both nodes accept again within a second.
    let started = Instant::now();
    let r = http
        .patch(format!("http://{}/api/v1/organization", a.addr))
        .bearer_auth(common::OPERATOR_TOKEN)
        .header("x-organization-id", "org_q")
        .json(&serde_json::json!({"tier": "growth"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut open = [None, None];
    while open.iter().any(Option::is_none) && started.elapsed() < Duration::from_secs(5) {
        for (i, addr) in [&a.addr, &b.addr].into_iter().enumerate() {
            if open[i].is_none() && send(&http, addr, key).await == 202 {
                open[i] = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("upgrade: node-a accepts after {:?}, node-b after {:?}", open[0], open[1]);
    for (i, t) in open.iter().enumerate() {
        assert!(t.is_some_and(|t| t < Duration::from_secs(1)), "node {i} accepted after {t:?}");
    }
    drop((a, b));
    pg.drop().await;
}
