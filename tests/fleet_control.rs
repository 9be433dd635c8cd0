//! The control plane's limits across a fleet: two real `edge` processes on a Redis of the
//! test's own and a fresh PostgreSQL. An organisation's `api_requests_per_minute` holds for
//! both nodes together, and failed logins spread over both nodes lock the account on both.

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::time::Duration;

use serde_json::json;

const API_PER_MINUTE: u64 = 30;
const MAX_FAILURES: u32 = 6;

fn node(pg: &pg::Pg, dir: &std::path::Path, name: &str, redis: &str) -> common::EdgeProcess {
    pg::fleet_edge(
        pg,
        dir,
        name,
        redis,
        &[
            ("EDGE_TIER_STARTER_API_REQUESTS_PER_MINUTE", API_PER_MINUTE.to_string()),
            ("EDGE_LOGIN_MAX_FAILURES", MAX_FAILURES.to_string()),
        ],
    )
}

/// Sleeps until at least 5 s into a minute with 20 s of it left, so a window does not turn
/// during a phase of the test.
async fn early_in_a_minute() {
    let second = time::OffsetDateTime::now_utc().second() as u64;
    if !(5..40).contains(&second) {
        tokio::time::sleep(Duration::from_secs((65 - second) % 60)).await;
    }
}

fn token(org: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    edge::auth::jwt::issue_hs256(
        &edge::auth::jwt::Claims::new("usr_test", org, &["*"], now, 600),
        common::JWT_SECRET.as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_allowances_and_login_lockouts_hold_across_nodes() {
    if common::redis_url().is_none() {
        return;
    }
    let Some(pg) = pg::Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let redis = common::OwnRedis::start(dir.path());
    let nodes = [node(&pg, dir.path(), "node-a", &redis.url), node(&pg, dir.path(), "node-b", &redis.url)];
    pg.wait_for_listeners(2).await;
    let http = reqwest::Client::new();
    let body = json!({"name": "acme", "subdomain": "acme", "admin_email": "admin@acme.example",
                      "admin_password": "the right password"});
    let created: serde_json::Value = http
        .post(format!("http://{}/api/v1/organizations", nodes[0].addr))
        .bearer_auth(common::OPERATOR_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = created["organization"]["id"].as_str().expect("signed up").to_string();
    let token = token(&org);
    // Both registries have the new organisation (its SDK key works on both).
    let key = created["sdk_key"]["key"].as_str().unwrap().to_string();
    for n in &nodes {
        let seen = common::eventually(Duration::from_secs(5), || async {
            let r =
                http.post(format!("http://{}/v1/events", n.addr)).header("x-api-key", &key).json(&common::event("d"));
            r.send().await.unwrap().status() == 202
        })
        .await;
        assert!(seen, "node {} knows the organisation", n.addr);
    }

    // Requests per minute: 2 × the allowance, alternating between the nodes, 10 ms apart.
    early_in_a_minute().await;
    let (mut ok, mut limited) = (0u64, 0u64);
    for i in 0..2 * API_PER_MINUTE {
        let r = http
            .get(format!("http://{}/api/v1/organization", nodes[i as usize % 2].addr))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("status {other}: {}", r.text().await.unwrap()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each node may admit what the other admitted in the last ~2 ticks (100 ms: 5 requests
    // at this pace) before it learns of them.
    eprintln!("api: {ok} admitted, {limited} refused, allowance {API_PER_MINUTE} per minute for both nodes");
    assert!((API_PER_MINUTE..=API_PER_MINUTE + 5).contains(&ok), "{ok} admitted");

    // Failed logins, alternating between the nodes, 100 ms apart (each node sees half).
    let login = |password: &str| json!({"email": "admin@acme.example", "password": password});
    for i in 0..MAX_FAILURES {
        let r = http
            .post(format!("http://{}/api/v1/auth/login", nodes[i as usize % 2].addr))
            .json(&login("not the password"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "failure {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in &nodes {
        let r =
            http.post(format!("http://{}/api/v1/auth/login", n.addr)).json(&login("the right password")).send().await;
        let r = r.unwrap();
        assert_eq!(r.status(), 429, "locked on every node, even with the right password");
        assert!(r.headers().contains_key("retry-after"));
    }
    drop(nodes);
    pg.drop().await;
}
