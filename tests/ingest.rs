//! The edge against a real ClickHouse: events land under the credential's
//! organisation, batches report per-event results, every 4xx path of SPEC §3.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{event, eventually, Harness, Options};
use serde_json::{json, Value};

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })))
}

#[tokio::test]
async fn events_land_under_the_credentials_organisation() {
    let Some(h) = Harness::start(Options::default()).await else {
        return;
    };
    let sent_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 3_600_000;
    // The device clock is an hour behind; the body also tries to claim another organisation.
    let acme_batch = json!({
        "sent_at": sent_at,
        "events": [
            {"event_type":"purchase","event_name":"buy","device_id":"dev-a1","event_id":"acme-1",
             "organization_id":"org_bravo","revenue":12.34,"currency":"eur","properties":{"sku":"x1","qty":2},
             "user_properties":{"plan":"pro"},"idfa":"IDFA-1","gaid":"GAID-1","ip":"203.0.113.7","user_agent":"sdk/1.0",
             "session_id":"s1","platform":"ios","event_timestamp": sent_at - 60_000},
            event("dev-a2"),
            event("dev-a3"),
        ]
    });
    let (status, b) = body(h.post("/v1/events/batch", &h.acme.key).json(&acme_batch).send().await.unwrap()).await;
    assert_eq!((status, b["accepted"].as_u64()), (202, Some(3)), "{b}");
    let (status, _) = body(h.post("/v1/events", &h.bravo.key).json(&event("dev-b1")).send().await.unwrap()).await;
    assert_eq!(status, 202);
    let (status, _) =
        body(h.post("/v1/events/batch", &h.bravo.key).json(&json!([event("dev-b2")])).send().await.unwrap()).await;
    assert_eq!(status, 202);

    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("organization_id = 'org_acme'").await, 3);
    assert_eq!(ch.count("organization_id = 'org_bravo'").await, 2);
    assert_eq!(
        ch.count("organization_id = 'org_bravo' AND device_id LIKE 'dev-a%'").await,
        0,
        "no leak between tenants"
    );
    assert_eq!(ch.count("app_id = 'app_acme' AND organization_id = 'org_acme'").await, 3);

    let row = ch
        .query(
            "SELECT app_id, event_type, event_name, session_id, platform, properties, user_properties, toString(revenue), currency, \
             idfa, gaid, ip, user_agent, toUnixTimestamp(event_timestamp) - toUnixTimestamp(received_at), isNull(sent_at) \
             FROM events WHERE event_id = 'acme-1'",
        )
        .await;
    let cols: Vec<&str> = row.trim_end().split('\t').collect();
    assert_eq!(&cols[..5], ["app_acme", "purchase", "buy", "s1", "ios"]);
    assert_eq!(serde_json::from_str::<Value>(cols[5]).unwrap(), json!({"sku":"x1","qty":2}));
    assert_eq!(serde_json::from_str::<Value>(cols[6]).unwrap(), json!({"plan":"pro"}));
    assert_eq!(&cols[7..13], ["12.34", "EUR", "IDFA-1", "GAID-1", "203.0.113.7", "sdk/1.0"]);
    // Skew-corrected: a minute before receipt in server time (±2 s for request time and rounding).
    let offset: i64 = cols[13].parse().unwrap();
    assert!((-62..=-58).contains(&offset), "offset {offset}");
    assert_eq!(cols[14], "0", "sent_at kept");
    // The daily aggregate saw them too.
    let daily = ch
        .query("SELECT countMerge(events), uniqMerge(devices) FROM events_daily WHERE organization_id = 'org_acme'")
        .await;
    assert_eq!(daily.trim(), "3\t3");
    ch.drop().await;
}

#[tokio::test]
async fn lz4_inserts_land_alike() {
    // The tests' ClickHouse is on loopback, where inserts go uncompressed by default;
    // EDGE_CLICKHOUSE_COMPRESSION=lz4 (the default to a remote server) sends the same sorted
    // Native blocks in the crate's LZ4 frames, which 18.16 must take.
    let options = Options { vars: vec![("EDGE_CLICKHOUSE_COMPRESSION", "lz4".into())], ..Default::default() };
    let Some(h) = Harness::start(options).await else {
        return;
    };
    let events: Vec<Value> = (0..50).rev().map(|i| event(&format!("dev-{i:02}"))).collect();
    let (status, b) =
        body(h.post("/v1/events/batch", &h.acme.key).json(&json!({ "events": events })).send().await.unwrap()).await;
    assert_eq!((status, b["accepted"].as_u64()), (202, Some(50)), "{b}");
    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("organization_id = 'org_acme' AND app_id = 'app_acme'").await, 50);
    assert_eq!(ch.query("SELECT min(device_id), max(device_id) FROM events").await.trim(), "dev-00\tdev-49");
    ch.drop().await;
}

#[tokio::test]
async fn batches_report_per_event_results() {
    let Some(h) = Harness::start(Options::default()).await else {
        return;
    };
    let batch = json!({"events": [
        event("ok-1"),
        {"event_name": "no type", "device_id": "x"},
        {"event_type": "t", "event_name": "n", "device_id": "x", "revenue": "lots"},
        event("ok-2"),
        {"event_type": "t", "event_name": "n", "device_id": "x", "event_timestamp": "2001-01-01T00:00:00Z"},
        "not an object",
    ]});
    let (status, b) = body(h.post("/v1/events/batch", &h.acme.key).json(&batch).send().await.unwrap()).await;
    assert_eq!(status, 202);
    assert_eq!((b["accepted"].as_u64(), b["rejected"].as_u64()), (Some(2), Some(4)));
    let errors: Vec<(u64, &str)> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(errors, [(1, "missing_field"), (2, "invalid_revenue"), (4, "timestamp_too_old"), (5, "invalid_event")]);

    // Every event invalid: 400 with the same per-event detail.
    let (status, b) =
        body(h.post("/v1/events/batch", &h.acme.key).json(&json!([{"x": 1}, {"y": 2}])).send().await.unwrap()).await;
    assert_eq!((status, b["code"].as_str()), (400, Some("invalid_events")));
    assert_eq!(b["errors"].as_array().unwrap().len(), 2);

    // NDJSON with a broken line: the line is rejected, the rest accepted.
    let nd = format!("{}\n{{broken\n{}\n", event("nd-1"), event("nd-2"));
    let r = h
        .http
        .post(format!("{}/v1/events/batch", h.base))
        .header("x-api-key", h.acme.key.expose())
        .header("content-type", "application/x-ndjson")
        .body(nd)
        .send()
        .await
        .unwrap();
    let (status, b) = body(r).await;
    assert_eq!((status, b["accepted"].as_u64(), b["errors"][0]["code"].as_str()), (202, Some(2), Some("invalid_json")));

    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("organization_id = 'org_acme'").await, 4);
    ch.drop().await;
}

#[tokio::test]
async fn compressed_bodies() {
    let Some(h) = Harness::start(Options::default()).await else {
        return;
    };
    let plain = serde_json::to_vec(&json!([event("gz-1"), event("gz-2")])).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let r = h
        .post("/v1/events/batch", &h.acme.key)
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let zs = zstd::encode_all(&plain[..], 3).unwrap();
    let r = h.post("/v1/events/batch", &h.acme.key).header("content-encoding", "zstd").body(zs).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("organization_id = 'org_acme'").await, 4);
    ch.drop().await;
}

#[tokio::test]
async fn every_client_error_path() {
    let opts = Options {
        vars: vec![
            ("EDGE_MAX_BATCH_EVENTS", "5".into()),
            ("EDGE_MAX_BATCH_BYTES", "20000".into()),
            ("EDGE_MAX_EVENT_BYTES", "2000".into()),
        ],
        ..Default::default()
    };
    let Some(h) = Harness::start(opts).await else {
        return;
    };
    let key = &h.acme.key;
    let url = |p: &str| format!("{}{p}", h.base);
    let expect = |status: u16, code: &'static str| {
        move |(s, b): (u16, Value)| {
            assert_eq!(s, status, "{b}");
            assert_eq!(b["code"].as_str(), Some(code), "{b}");
            assert!(b["error"].is_string(), "{b}");
        }
    };

    // 400
    expect(400, "invalid_json")(body(h.post("/v1/events", key).body("{not json").send().await.unwrap()).await);
    expect(400, "invalid_body")(body(h.post("/v1/events", key).body("[1]").send().await.unwrap()).await);
    expect(400, "missing_field")(
        body(h.post("/v1/events", key).json(&json!({"event_type":"t"})).send().await.unwrap()).await,
    );
    expect(400, "empty_batch")(body(h.post("/v1/events/batch", key).json(&json!([])).send().await.unwrap()).await);
    // 401
    let anon = h.http.post(url("/v1/events")).header("content-type", "application/json").json(&event("d"));
    expect(401, "missing_credentials")(body(anon.send().await.unwrap()).await);
    let selector_only = h.http.post(url("/v1/events")).header("x-organization-id", "org_acme").json(&event("d"));
    expect(401, "missing_credentials")(body(selector_only.send().await.unwrap()).await);
    let bad_key = h.http.post(url("/v1/events")).header("x-api-key", "edk_0000").json(&event("d"));
    expect(401, "invalid_api_key")(body(bad_key.send().await.unwrap()).await);
    let bad_jwt = h.http.post(url("/v1/events")).bearer_auth("a.b.c").json(&event("d"));
    expect(401, "invalid_token")(body(bad_jwt.send().await.unwrap()).await);
    // 403
    expect(403, "organization_inactive")(
        body(h.post("/v1/events", &h.frozen.key).json(&event("d")).send().await.unwrap()).await,
    );
    let mismatch = h.post("/v1/events", key).header("x-organization-id", "org_bravo").json(&event("d"));
    expect(403, "tenant_mismatch")(body(mismatch.send().await.unwrap()).await);
    let host_mismatch = h.post("/v1/events", key).header("host", "bravo.edge.test").json(&event("d"));
    expect(403, "tenant_mismatch")(body(host_mismatch.send().await.unwrap()).await);
    let read_only = h.http.post(url("/v1/events")).bearer_auth(h.token("org_acme", &["events:read"])).json(&event("d"));
    expect(403, "insufficient_permission")(body(read_only.send().await.unwrap()).await);
    let stats_with_key = h.http.get(url("/api/v1/stats/events")).header("x-api-key", key.expose());
    expect(403, "write_only_credential")(body(stats_with_key.send().await.unwrap()).await);
    // 404, 405
    expect(404, "not_found")(body(h.http.get(url("/nope")).send().await.unwrap()).await);
    let r = h.http.get(url("/v1/events")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    expect(405, "method_not_allowed")(body(r).await);
    // 413: declared length, streamed length, after decompression, event count, single event size.
    let big = vec![b' '; 30_000];
    let (s, b) = body(h.post("/v1/events/batch", key).body(big).send().await.unwrap()).await;
    assert_eq!((s, b["code"].as_str(), b["limit"].as_u64()), (413, Some("payload_too_large"), Some(20_000)));
    let chunks = futures_stream(vec![vec![b' '; 15_000], vec![b' '; 15_000]]);
    let r = h.post("/v1/events/batch", key).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    expect(413, "payload_too_large")(body(r).await);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1_000_000]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 20_000);
    expect(413, "payload_too_large")(
        body(h.post("/v1/events/batch", key).header("content-encoding", "gzip").body(bomb).send().await.unwrap()).await,
    );
    let six: Vec<Value> = (0..6).map(|i| event(&format!("d{i}"))).collect();
    expect(413, "too_many_events")(body(h.post("/v1/events/batch", key).json(&six).send().await.unwrap()).await);
    let fat = json!({"event_type":"t","event_name":"n","device_id":"d","properties":{"p":"x".repeat(3000)}});
    expect(413, "payload_too_large")(body(h.post("/v1/events", key).json(&fat).send().await.unwrap()).await);
    // 415
    let form = h
        .http
        .post(url("/v1/events"))
        .header("x-api-key", key.expose())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b");
    expect(415, "unsupported_media_type")(body(form.send().await.unwrap()).await);
    let brotli = h.post("/v1/events", key).header("content-encoding", "br").json(&event("d"));
    expect(415, "unsupported_encoding")(body(brotli.send().await.unwrap()).await);

    // Nothing above reached ClickHouse.
    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("1").await, 0);
    ch.drop().await;
}

fn futures_stream(chunks: Vec<Vec<u8>>) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct Chunks(std::vec::IntoIter<Vec<u8>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next().map(Ok))
        }
    }
    Chunks(chunks.into_iter())
}

#[tokio::test]
async fn rate_limit_and_quota_by_tier() {
    // bravo is on the starter tier: 5 events/s with a 2 s burst (10), 12 events a month.
    let opts = Options {
        vars: vec![
            ("EDGE_TIER_STARTER_EVENTS_PER_SEC", "5".into()),
            ("EDGE_TIER_STARTER_EVENTS_PER_MONTH", "12".into()),
        ],
        clock: edge::clock::Clock::manual(std::time::SystemTime::now()),
        ..Default::default()
    };
    let Some(h) = Harness::start(opts).await else {
        return;
    };
    let ten: Vec<Value> = (0..10).map(|i| event(&format!("r{i}"))).collect();
    assert_eq!(h.post("/v1/events/batch", &h.bravo.key).json(&ten).send().await.unwrap().status(), 202);
    let r = h.post("/v1/events", &h.bravo.key).json(&event("r10")).send().await.unwrap();
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let (status, b) = body(r).await;
    assert_eq!(status, 429);
    assert_eq!(b["error"], "Rate limit exceeded");
    assert_eq!((b["tier"].as_str(), b["limit"].as_u64()), (Some("starter"), Some(5)));
    assert!(retry_after >= 1 && b["retry_after"].as_u64() == Some(retry_after));
    // Other organisations are not affected by bravo's limit.
    assert_eq!(h.post("/v1/events", &h.acme.key).json(&event("a")).send().await.unwrap().status(), 202);

    // After the wait (the server's clock moved, no sleeping), two more fit: 12 this month, the quota.
    h.clock.advance(Duration::from_millis(600));
    assert_eq!(
        h.post("/v1/events/batch", &h.bravo.key)
            .json(&json!([event("q1"), event("q2")]))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let (status, b) = body(h.post("/v1/events", &h.bravo.key).json(&event("q3")).send().await.unwrap()).await;
    assert_eq!(status, 402, "{b}");
    assert_eq!(b["error"], "Monthly event quota exceeded");
    assert_eq!((b["tier"].as_str(), b["upgrade_url"].as_str()), (Some("starter"), Some("/billing/upgrade")));

    let metrics = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("edge_rate_limited_total{tier=\"starter\"} 1"), "{metrics}");
    assert!(metrics.contains("edge_quota_exceeded_total{tier=\"starter\"} 1"));

    // The quota is per calendar month: a month on, bravo may send again.
    h.clock.advance(Duration::from_secs(32 * 86_400));
    let r = h.post("/v1/events", &h.bravo.key).json(&event("next-month")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("organization_id = 'org_bravo'").await, 13, "12 last month, 1 this month");
    ch.drop().await;
}

#[tokio::test]
async fn jwt_operator_and_selectors() {
    let Some(h) = Harness::start(Options::default()).await else {
        return;
    };
    let token = h.token("org_acme", &["events:write", "events:read"]);
    let post = |bearer: &str, header: (&'static str, &'static str), device: &str| {
        h.http
            .post(format!("{}/v1/events", h.base))
            .bearer_auth(bearer)
            .header(header.0, header.1)
            .json(&event(device))
            .send()
    };
    assert_eq!(post(&token, ("host", "acme.edge.test"), "jwt-1").await.unwrap().status(), 202);
    // The operator picks an organisation by header; a user token cannot.
    assert_eq!(post(common::OPERATOR_TOKEN, ("x-organization-id", "org_bravo"), "op-1").await.unwrap().status(), 202);
    assert_eq!(post(&token, ("x-organization-id", "org_bravo"), "x").await.unwrap().status(), 403);

    // Stats show only the caller's organisation (from ClickHouse: once the event is shipped).
    let stats = async {
        loop {
            let stats: Value = h
                .http
                .get(format!("{}/api/v1/stats/events", h.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if stats["total_events"] != 0 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let stats = tokio::time::timeout(Duration::from_secs(10), stats).await.expect("shipped and counted");
    assert_eq!(stats["organization_id"], "org_acme");
    assert_eq!(stats["total_events"], 1);
    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("organization_id = 'org_bravo' AND device_id = 'op-1'").await, 1);
    assert_eq!(ch.count("organization_id = 'org_acme' AND device_id = 'jwt-1'").await, 1);
    ch.drop().await;
}

#[tokio::test]
async fn clickhouse_outage_is_visible_and_bounded() {
    // A ClickHouse that is not there: readiness says so, events are held, and past the bound: 503.
    let Some(url) = common::clickhouse_url() else {
        return;
    };
    let _ = url;
    let opts = Options {
        vars: vec![
            ("CLICKHOUSE_URL", "http://127.0.0.1:9".into()),
            ("EDGE_SPOOL_MAX_BYTES", "2000".into()),
            ("EDGE_DRAIN_TIMEOUT", "1s".into()),
        ],
        clickhouse: false,
        ..Default::default()
    };
    let h = Harness::start(opts).await.unwrap();
    assert_eq!(h.http.get(format!("{}/readyz", h.admin)).send().await.unwrap().status(), 503);
    assert_eq!(h.http.get(format!("{}/healthz", h.admin)).send().await.unwrap().status(), 200);
    let mut statuses = Vec::new();
    for i in 0..40 {
        statuses.push(h.post("/v1/events", &h.acme.key).json(&event(&format!("o{i}"))).send().await.unwrap());
    }
    let first_503 = statuses.iter().position(|r| r.status() == 503).expect("the bound is reached");
    assert!(first_503 > 0 && statuses[..first_503].iter().all(|r| r.status() == 202));
    assert!(statuses[first_503].headers().contains_key("retry-after"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
            m.lines().any(|l| l.starts_with("edge_clickhouse_insert_errors_total") && !l.ends_with(" 0"))
        })
        .await
    );
    h.stop().await;
}

#[tokio::test]
async fn metrics_and_health() {
    let Some(h) = Harness::start(Options::default()).await else {
        return;
    };
    assert_eq!(h.post("/v1/events", &h.acme.key).json(&event("m1")).send().await.unwrap().status(), 202);
    let r = h.http.get(format!("{}/readyz", h.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready\nregistry: static\nlimits: this node's own\n");
    let text = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
    for name in [
        "edge_http_requests_total{",
        "edge_http_request_duration_seconds_bucket",
        "edge_events_accepted_total",
        "edge_tenants",
        "edge_spool_bytes",
        "edge_spool_events",
        "edge_redis_sync_errors_total",
        "edge_clickhouse_insert_errors_total",
        "edge_clickhouse_insert_rows_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
            m.contains("edge_clickhouse_insert_duration_seconds_bucket")
        })
        .await
    );
    // promtool, when installed (scripts/services installs it), must accept the exposition.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        let text = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool: {report}");
    } else if std::env::var("EDGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("promtool not installed; scripts/services installs it");
    }
    let ch = h.stop().await.unwrap();
    ch.drop().await;
}

#[tokio::test]
async fn client_retries_collapse_to_one_copy() {
    let Some(h) = Harness::start(Options::default()).await else { return };
    // A retry resends the same body, timestamps included (SDKs stamp events when they happen);
    // without one, each send would be stamped on arrival and two sends a second apart would
    // differ in the order key, which FINAL does not collapse.
    let stamped = h.clock.unix_millis() - 60_000;
    let batch: Vec<Value> = (0..20)
        .map(|i| {
            json!({"event_type":"t","event_name":"n","device_id":"d","event_id":format!("retry-{i}"),
                   "event_timestamp": stamped})
        })
        .collect();
    for _ in 0..2 {
        assert_eq!(h.post("/v1/events/batch", &h.acme.key).json(&batch).send().await.unwrap().status(), 202);
    }
    let ch = h.stop().await.unwrap();
    // Both sends are stored (background merges may already have collapsed some).
    assert!(ch.count("1").await >= 20);
    let after_final: u64 = ch.query("SELECT count() FROM events FINAL").await.trim().parse().unwrap();
    assert_eq!(after_final, 20, "one copy of each event after FINAL");
    ch.drop().await;
}

#[tokio::test]
async fn stats_come_from_clickhouse_merged_as_sketches() {
    let Some(h) = Harness::start(Options::default()).await else {
        return;
    };
    let day = |d: &str| format!("{d}T12:00:00Z");
    let today = edge::aggregates::day_to_date(edge::clock::Clock::system().today());
    let yesterday = edge::aggregates::day_to_date(edge::clock::Clock::system().today() - 1);
    let events: Vec<Value> = vec![
        json!({"event_type": "purchase", "event_name": "buy", "device_id": "d1", "event_timestamp": day(&yesterday), "revenue": 1.25, "currency": "USD"}),
        json!({"event_type": "session", "event_name": "app_open", "device_id": "d2", "event_timestamp": day(&yesterday)}),
        json!({"event_type": "purchase", "event_name": "buy", "device_id": "d1", "event_timestamp": day(&today), "revenue": 2.5, "currency": "USD"}),
    ];
    let (status, b) = body(h.post("/v1/events/batch", &h.acme.key).json(&events).send().await.unwrap()).await;
    assert_eq!((status, &b["rejected"]), (202, &json!(0)), "{b}");
    assert_eq!(h.post("/v1/events", &h.bravo.key).json(&event("other")).send().await.unwrap().status(), 202);
    let token = h.token("org_acme", &["events:read"]);
    let url = format!("{}/api/v1/stats/events?from={yesterday}&to={today}", h.base);
    let stats = async {
        loop {
            let stats: Value = h.http.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
            if stats["total_events"] == 3 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let stats = tokio::time::timeout(Duration::from_secs(10), stats).await.expect("shipped and counted");
    assert_eq!(stats["days"].as_array().unwrap().len(), 2, "{stats}");
    assert_eq!(stats["days"][0]["unique_devices"], 2);
    assert_eq!(stats["total_revenue"], 3.75);
    assert_eq!(stats["unique_devices"], 2, "d1 on both days counts once: {stats}");
    h.stop().await.unwrap().drop().await;
}
