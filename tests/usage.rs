//! Usage rows from two real `edge` processes (one restarted midway) on a fresh PostgreSQL and a
//! fresh ClickHouse database: after the run, `tenant_usage` holds for each organisation and day
//! what ClickHouse counts with `uniqExact(event_id)` and `uniqExact(device_id)` (client retries
//! count once), and exactly the API requests and body bytes the test sent, whatever node took
//! them; `GET /api/v1/usage` reads them.

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::time::Duration;

use edge::tenant::SdkKey;
use serde_json::json;

const ORGS: [&str; 2] = ["org_u0", "org_u1"];

fn node(pg: &pg::Pg, ch: &common::ClickHouse, dir: &std::path::Path, name: &str) -> common::EdgeProcess {
    pg::api_edge(
        pg,
        &dir.join(name),
        &[
            ("EDGE_NODE_ID", name.to_string()),
            ("CLICKHOUSE_URL", ch.url.clone()),
            ("CLICKHOUSE_DATABASE", ch.database.clone()),
            ("EDGE_BATCH_INTERVAL", "100ms".to_string()),
            ("EDGE_USAGE_INTERVAL", "1s".to_string()),
            ("EDGE_USAGE_ROLLUP_INTERVAL", "1s".to_string()),
        ],
    )
}

fn token(org: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    edge::auth::jwt::issue_hs256(
        &edge::auth::jwt::Claims::new("usr_test", org, &["*"], now, 600),
        common::JWT_SECRET.as_bytes(),
    )
}

/// What the test sent for one organisation.
#[derive(Default, Debug)]
struct Sent {
    bytes: i64,
    api: i64,
    event_ids: std::collections::BTreeSet<String>,
    devices: std::collections::BTreeSet<String>,
}

/// Posts a batch of `ids` (devices `dev-<id % 7>`) to `addr`; returns the body's length.
async fn post_batch(http: &reqwest::Client, addr: &str, key: &SdkKey, ids: &[String], sent: &mut Sent) {
    let events: Vec<_> = ids
        .iter()
        .map(|id| {
            let device = format!("dev-{}", id.len() % 7 + id.bytes().last().unwrap() as usize % 5);
            sent.devices.insert(device.clone());
            sent.event_ids.insert(id.clone());
            json!({"event_type": "session", "event_name": "app_open", "device_id": device, "event_id": id})
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
    sent.bytes += body.len() as i64;
    let r = http
        .post(format!("http://{addr}/v1/events/batch"))
        .header("x-api-key", key.expose())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

async fn api_calls(http: &reqwest::Client, addr: &str, token: &str, n: i64, sent: &mut Sent) {
    for _ in 0..n {
        let r = http.get(format!("http://{addr}/api/v1/quotas")).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        sent.api += 1;
    }
}

/// (organisation, day) → (events, unique devices) as ClickHouse counts them.
async fn clickhouse_counts(ch: &common::ClickHouse) -> BTreeMap<(String, String), (i64, i64)> {
    let text = ch
        .query(
            "SELECT organization_id, toString(toDate(received_at)), uniqExact(event_id), uniqExact(device_id) \
             FROM events GROUP BY organization_id, toDate(received_at)",
        )
        .await;
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            ((f[0].to_string(), f[1].to_string()), (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .collect()
}

/// (organisation, day) → (events, API requests, bytes, unique devices) in `tenant_usage`.
async fn usage_rows(pg: &pg::Pg) -> BTreeMap<(String, String), (i64, i64, i64, i64)> {
    let rows = pg
        .owner
        .query(
            "SELECT organization_id, metric_date::text, events_count, api_requests_count, bytes_ingested, \
             unique_users_count::bigint FROM tenant_usage WHERE metric_date >= current_date - 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4), r.get(5)))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rows_match_clickhouse_and_what_was_sent_across_nodes_and_a_restart() {
    let Some(ch_url) = common::clickhouse_url() else { return };
    let Some(pg) = pg::Pg::fresh().await else { return };
    let ch = common::ClickHouse::fresh(&ch_url).await;
    // Merges would collapse the retried copies at any moment (they did, once inserts came
    // sooner and smaller); held off, ClickHouse keeps both and the counts below must still
    // count each id once.
    let stop = reqwest::Client::new()
        .post(format!("{}/?database={}", ch.url, ch.database))
        .body("SYSTEM STOP MERGES events")
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success(), "{}", stop.text().await.unwrap());
    let keys = pg.seed(&ORGS).await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&pg, &ch, dir.path(), "node-a");
    let mut b = node(&pg, &ch, dir.path(), "node-b");
    pg.wait_for_listeners(2).await;
    let http = reqwest::Client::new();
    let mut sent: Vec<Sent> = ORGS.iter().map(|_| Sent::default()).collect();
    let ids = |org: usize, range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("evt-{org}-{i:05}")).collect()
    };

    // Phase 1: both nodes; org 0 retries a batch on the other node (same event ids).
    for (o, key) in keys.iter().enumerate() {
        let token = token(ORGS[o]);
        post_batch(&http, &a.addr, key, &ids(o, 0..40), &mut sent[o]).await;
        post_batch(&http, &b.addr, key, &ids(o, 40..70), &mut sent[o]).await;
        api_calls(&http, &a.addr, &token, 3 + o as i64, &mut sent[o]).await;
        api_calls(&http, &b.addr, &token, 2, &mut sent[o]).await;
    }
    post_batch(&http, &b.addr, &keys[0], &ids(0, 0..40), &mut sent[0]).await;

    // Node b restarts (a clean stop saves its last period); phase 2 on both again.
    b.signal("TERM");
    assert!(b.wait(Duration::from_secs(20)).is_some_and(|s| s.success()), "node-b stops cleanly");
    b = node(&pg, &ch, dir.path(), "node-b");
    pg.wait_for_listeners(2).await;
    for (o, key) in keys.iter().enumerate() {
        let token = token(ORGS[o]);
        post_batch(&http, &b.addr, key, &ids(o, 70..100), &mut sent[o]).await;
        post_batch(&http, &a.addr, key, &ids(o, 100..110 + o), &mut sent[o]).await;
        api_calls(&http, &b.addr, &token, 4, &mut sent[o]).await;
    }
    post_batch(&http, &a.addr, &keys[1], &ids(1, 95..105), &mut sent[1]).await;

    // Until the shipper, the recorders and the roll-up have caught up.
    let today = pg.owner.query_one("SELECT current_date::text", &[]).await.unwrap().get::<_, String>(0);
    let expected: BTreeMap<(String, String), (i64, i64, i64, i64)> = sent
        .iter()
        .enumerate()
        .map(|(o, s)| {
            let key = (ORGS[o].to_string(), today.clone());
            (key, (s.event_ids.len() as i64, s.api, s.bytes, s.devices.len() as i64))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = usage_rows(&pg).await;
    while last != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = usage_rows(&pg).await;
    }
    assert_eq!(last, expected, "usage rows (events, API requests, bytes, devices) against what was sent");
    eprintln!("usage rows: {last:?}");
    let in_clickhouse = clickhouse_counts(&ch).await;
    eprintln!("ClickHouse: {in_clickhouse:?}");
    let from_usage: BTreeMap<_, _> = last.iter().map(|(k, v)| (k.clone(), (v.0, v.3))).collect();
    assert_eq!(from_usage, in_clickhouse, "events and devices as ClickHouse counts them");
    let raw_rows: u64 = ch.query("SELECT count() FROM events").await.trim().parse().unwrap();
    let unique: usize = sent.iter().map(|s| s.event_ids.len()).sum();
    assert!(raw_rows > unique as u64, "the retries are in ClickHouse twice ({raw_rows} rows, {unique} ids)");

    // The endpoint: the caller's own day.
    let r = http
        .get(format!("http://{}/api/v1/usage?from={today}&to={today}", a.addr))
        .bearer_auth(token(ORGS[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let (events, api, bytes, devices) = expected[&(ORGS[1].to_string(), today.clone())];
    assert_eq!(
        body["days"],
        json!([{"date": today, "events": events, "api_requests": api, "bytes_ingested": bytes, "unique_devices": devices}]),
        "{body}"
    );
    drop((a, b));
    pg.drop().await;
    ch.drop().await;
}
