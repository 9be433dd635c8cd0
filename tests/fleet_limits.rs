//! Rate limits across a fleet: three real `edge` processes on one real Redis
//! (`scripts/services`), one organisation per scenario limited to `L` events/s, load at
//! 3 × L for 10 s spread over the nodes evenly, all on one, and 70/20/10. What the fleet
//! accepts must stay within ±5 % of 10 × L, plus the tier's burst.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge::tenant::SdkKey;

const RATE: u64 = 200;
const BURST_SECS: u64 = 1;
const SECONDS: u64 = 10;

fn redis_url() -> Option<String> {
    match std::env::var("EDGE_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("EDGE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("EDGE_TEST_REDIS_URL is not set; run scripts/test (it starts the services)")
        }
        _ => {
            eprintln!("skipped: EDGE_TEST_REDIS_URL not set (scripts/test sets it)");
            None
        }
    }
}

/// A Redis database of its own, emptied, so earlier runs' slots and heartbeats do not count.
async fn fresh_redis(base: &str, db: u8) -> String {
    let url = format!("{}/{db}", base.trim_end_matches('/'));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    url
}

/// Organisations `org_fleet_0..n` on the enterprise tier, one key each.
fn tenants(dir: &std::path::Path, n: usize) -> (std::path::PathBuf, Vec<SdkKey>) {
    let keys: Vec<SdkKey> = (0..n).map(|_| SdkKey::generate()).collect();
    let mut text = String::new();
    for (i, key) in keys.iter().enumerate() {
        text += &format!(
            "[[organizations]]\nid = \"org_fleet_{i}\"\nname = \"Fleet {i}\"\nsubdomain = \"fleet{i}\"\ntier = \"enterprise\"\n\
             keys = [{{ app_id = \"app\", sha256 = \"{}\" }}]\n\n",
            key.hash().to_hex()
        );
    }
    let path = dir.join("tenants.toml");
    std::fs::write(&path, text).unwrap();
    (path, keys)
}

fn node(dir: &std::path::Path, name: &str, tenants: &std::path::Path, redis: &str) -> common::EdgeProcess {
    common::EdgeProcess::spawn_with(
        &["--dev"],
        &[
            ("EDGE_SPOOL_DIR", dir.join(name).display().to_string()),
            ("EDGE_TENANTS_FILE", tenants.display().to_string()),
            ("REDIS_URL", redis.to_string()),
            ("EDGE_NODE_ID", name.to_string()),
            ("EDGE_TIER_ENTERPRISE_EVENTS_PER_SEC", RATE.to_string()),
            ("EDGE_TIER_ENTERPRISE_BURST_SECS", BURST_SECS.to_string()),
            ("EDGE_ACK", "memory".to_string()),
        ],
    )
}

/// Sends single events for `key` at `3 × RATE × split[i]` per second to node `i` for
/// [`SECONDS`]; returns how many were accepted (202) and how many refused (429).
async fn load(nodes: &[String], key: &SdkKey, split: &[f64]) -> (u64, u64) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let others = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for (addr, share) in nodes.iter().zip(split) {
        let per_sec = 3.0 * RATE as f64 * share;
        if per_sec == 0.0 {
            continue;
        }
        let (http, url, key) = (http.clone(), format!("http://{addr}/v1/events"), key.expose().to_string());
        let (accepted, limited, others) = (accepted.clone(), limited.clone(), others.clone());
        senders.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while started.elapsed() < Duration::from_secs(SECONDS) {
                ticker.tick().await;
                n += 1;
                let request = http
                    .post(&url)
                    .header("X-Api-Key", &key)
                    .json(&common::event(&format!("device-{n}")));
                let (accepted, limited, others) = (accepted.clone(), limited.clone(), others.clone());
                inflight.spawn(async move {
                    match request.send().await.map(|r| r.status().as_u16()) {
                        Ok(202) => accepted.fetch_add(1, Ordering::Relaxed),
                        Ok(429) => limited.fetch_add(1, Ordering::Relaxed),
                        _ => others.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
            while inflight.join_next().await.is_some() {}
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(others.load(Ordering::Relaxed), 0, "every answer is 202 or 429");
    (accepted.load(Ordering::Relaxed), limited.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_hold_one_rate_together() {
    let Some(base) = redis_url() else { return };
    let redis = fresh_redis(&base, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let (tenants, keys) = tenants(dir.path(), 3);
    let edges: Vec<_> = ["node-a", "node-b", "node-c"].iter().map(|n| node(dir.path(), n, &tenants, &redis)).collect();
    let addrs: Vec<String> = edges.iter().map(|e| e.addr.clone()).collect();
    // Every node has seen the other two's heartbeats before the load starts.
    let http = reqwest::Client::new();
    for e in &edges {
        let seen = common::eventually(Duration::from_secs(5), || {
            let url = format!("http://{}/metrics", e.admin);
            let http = http.clone();
            async move {
                let text = http.get(url).send().await.unwrap().text().await.unwrap();
                text.lines().any(|l| l == "edge_fleet_nodes 3") && text.lines().any(|l| l == "edge_fleet_fallback 0")
            }
        })
        .await;
        assert!(seen, "node at {} sees three nodes, synced", e.admin);
    }

    let expected = (RATE * SECONDS) as f64;
    let burst = (RATE * BURST_SECS) as f64;
    for (i, (name, split)) in
        [("even", [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]), ("one node", [1.0, 0.0, 0.0]), ("70/20/10", [0.7, 0.2, 0.1])]
            .iter()
            .enumerate()
    {
        let (accepted, limited) = load(&addrs, &keys[i], split).await;
        eprintln!(
            "{name}: offered {} events/s for {SECONDS} s to a limit of {RATE}/s (burst {burst}): accepted {accepted}, \
             429 {limited}, {:.3} of {expected}",
            3 * RATE,
            accepted as f64 / expected
        );
        assert!(
            accepted as f64 >= 0.95 * expected && accepted as f64 <= 1.05 * expected + burst,
            "{name}: accepted {accepted}, expected {expected} ± 5 % (+ burst {burst})"
        );
        assert!(limited > 0);
    }
}
