//! Volume and drain: a million events through the batch endpoint all land in
//! ClickHouse under the right organisation; SIGTERM-style shutdown ships what
//! is batched before returning.

mod common;

use std::time::{Duration, Instant};

use common::{event, Harness, Options};
use serde_json::json;

const EVENTS: usize = 1_000_000;
const BATCH: usize = 10_000;
const CONCURRENCY: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_million_events_land_with_the_right_organisation() {
    let opts = Options {
        vars: vec![
            ("EDGE_TIER_GROWTH_EVENTS_PER_SEC", "10000000".into()),
            ("EDGE_TIER_STARTER_EVENTS_PER_SEC", "10000000".into()),
        ],
        ..Default::default()
    };
    let Some(h) = Harness::start(opts).await else {
        return;
    };
    // Bodies are prepared up front so the clock measures the edge, not serde in the test.
    let body_for = |org: &str, batch: usize| {
        let events: Vec<_> = (0..BATCH)
            .map(|i| {
                json!({"event_type":"session","event_name":"app_open","device_id":format!("{org}-{}", i % 5000),
                           "event_id":format!("{org}-{batch}-{i}"),"properties":{"i":i}})
            })
            .collect();
        serde_json::to_vec(&json!({ "events": events })).unwrap()
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let http = h.http.clone();
        let url = format!("{}/v1/events/batch", h.base);
        let (acme, bravo) = (h.acme.key.expose().to_string(), h.bravo.key.expose().to_string());
        let bodies: Vec<(bool, Vec<u8>)> = (0..EVENTS / BATCH)
            .filter(|b| b % CONCURRENCY == worker)
            .map(|b| (b % 2 == 0, body_for(if b % 2 == 0 { "acme" } else { "bravo" }, b)))
            .collect();
        tasks.push(tokio::spawn(async move {
            for (is_acme, body) in bodies {
                let key = if is_acme { &acme } else { &bravo };
                let r = http
                    .post(&url)
                    .header("x-api-key", key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                assert_eq!(status, 202, "{text}");
                assert!(text.starts_with(&format!("{{\"accepted\":{BATCH},")), "{text}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let posted = started.elapsed();
    let ch = h.stop().await.unwrap();
    let shipped = started.elapsed();
    eprintln!("1M events: posted in {posted:?}, in ClickHouse after {shipped:?} (debug builds are slower)");
    let per_org = ch.query("SELECT organization_id, count(), uniqExact(event_id) FROM events GROUP BY organization_id ORDER BY organization_id").await;
    assert_eq!(per_org, format!("org_acme\t{half}\t{half}\norg_bravo\t{half}\t{half}\n", half = EVENTS / 2));
    assert_eq!(ch.count("organization_id = 'org_acme' AND NOT startsWith(event_id, 'acme-')").await, 0);
    assert_eq!(ch.count("organization_id = 'org_bravo' AND NOT startsWith(event_id, 'bravo-')").await, 0);
    ch.drop().await;
}

#[tokio::test]
async fn shutdown_ships_what_is_batched() {
    // A flush interval far longer than the test: only the drain can ship these.
    let opts = Options { vars: vec![("EDGE_BATCH_INTERVAL", "1h".into())], ..Default::default() };
    let Some(h) = Harness::start(opts).await else {
        return;
    };
    let events: Vec<_> = (0..50).map(|i| event(&format!("drain-{i}"))).collect();
    assert_eq!(h.post("/v1/events/batch", &h.acme.key).json(&events).send().await.unwrap().status(), 202);
    assert_eq!(
        h.server
            .stats
            .report(&edge::tenant::OrgId::new("org_acme"), 0, u32::MAX, edge::clock::Clock::system().today())
            .total_events,
        50
    );
    let started = Instant::now();
    let ch = h.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(ch.count("organization_id = 'org_acme'").await, 50);
    ch.drop().await;
}
