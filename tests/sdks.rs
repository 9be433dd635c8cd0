//! The real SDKs (PyPI `posthog`, `segment-analytics-python`, `rudder-sdk-python`; npm
//! `posthog-node`, `@segment/analytics-node`, `@rudderstack/rudder-sdk-node`, pinned and
//! installed by `scripts/sdks`) driven against the edge by `tests/sdk/drive.{py,cjs}`: every
//! call type lands in ClickHouse once, under the key's organisation, with no SDK error,
//! warning or retry; a wrong key is refused once and not retried.

mod common;

use std::process::Command;

use common::{Harness, Options};
use serde_json::Value;

const PYTHON_SDKS: [&str; 3] = ["posthog-python", "segment-python", "rudder-python"];
const NODE_SDKS: [&str; 3] = ["posthog-node", "segment-node", "rudder-node"];

struct Sdks {
    python: String,
    node_modules: String,
}

fn sdks() -> Option<Sdks> {
    match (std::env::var("EDGE_SDK_PYTHON"), std::env::var("EDGE_SDK_NODE_MODULES")) {
        (Ok(python), Ok(node_modules)) => Some(Sdks { python, node_modules }),
        _ if std::env::var("EDGE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("EDGE_SDK_PYTHON / EDGE_SDK_NODE_MODULES not set; run scripts/test (it installs the SDKs)")
        }
        _ => {
            eprintln!("skipped: the SDKs are not installed (scripts/sdks install; eval \"$(scripts/sdks env)\")");
            None
        }
    }
}

/// Runs one SDK's driver; returns its exit success and its report.
fn drive(s: &Sdks, sdk: &str, host: &str, key: &str, run: &str) -> (bool, Value) {
    drive_with(s, sdk, &[host, key, run])
}

fn drive_with(s: &Sdks, sdk: &str, args: &[&str]) -> (bool, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");
    let out = if sdk.ends_with("-python") {
        Command::new(&s.python).arg(format!("{dir}/drive.py")).arg(sdk).args(args).output()
    } else {
        Command::new("node")
            .arg(format!("{dir}/drive.cjs"))
            .arg(sdk)
            .args(args)
            .env("NODE_PATH", &s.node_modules)
            .output()
    }
    .expect("the driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{sdk}: no report; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn requests(metrics: &str, route: &str, status: &str) -> u64 {
    let needle = format!("edge_http_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_six_sdks_deliver_every_call_type_once_to_the_right_organisation() {
    let Some(s) = sdks() else { return };
    let Some(h) = Harness::start(Options::default()).await else { return };
    let host = h.base.clone();
    let mut runs = Vec::new();
    for sdk in PYTHON_SDKS.iter().chain(NODE_SDKS.iter()) {
        let run = format!("{sdk}-{}", uuid::Uuid::now_v7().simple());
        let (ok, report) = drive(&s, sdk, &host, h.acme.key.expose(), &run);
        assert!(ok, "{sdk}: {report}");
        runs.push((*sdk, run, "org_acme"));
    }
    // A second organisation's key lands in its own organisation.
    for sdk in ["posthog-python", "segment-node"] {
        let run = format!("{sdk}-bravo-{}", uuid::Uuid::now_v7().simple());
        let (ok, report) = drive(&s, sdk, &host, h.bravo.key.expose(), &run);
        assert!(ok, "{sdk}: {report}");
        runs.push((sdk, run, "org_bravo"));
    }
    // A wrong key: 401 once per SDK, not retried, reported by the SDK.
    let before = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
    for sdk in PYTHON_SDKS.iter().chain(NODE_SDKS.iter()) {
        let (ok, report) = drive(&s, sdk, &host, "edk_wrong_key", &format!("wrong-{sdk}"));
        assert!(!ok, "{sdk}: a refused key must be reported: {report}");
    }
    let after = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
    let refused = |route: &str| requests(&after, route, "401") - requests(&before, route, "401");
    // rudder-node sends its first event alone, then the rest: two requests, each refused once.
    assert_eq!((refused("/batch/"), refused("/v1/batch")), (2, 5), "no SDK retried a 401");

    let ch = h.stop().await.unwrap();
    for (sdk, run, org) in &runs {
        // posthog-python's alias is sent from the previous id (`anon-<run>`), the rest from the user's.
        let mine = format!("device_id IN ('user-{run}', 'anon-{run}')");
        let n = ch.count(&format!("{mine} AND organization_id = '{org}'")).await;
        assert_eq!(n, 7, "{sdk}: every call type once under {org}");
        let elsewhere = ch.count(&format!("{mine} AND organization_id != '{org}'")).await;
        assert_eq!(elsewhere, 0, "{sdk}");
    }
    let purchases = ch.count("event_type = 'purchase' AND toString(revenue) = '9.99'").await;
    assert_eq!(purchases, runs.len() as u64, "one purchase with its revenue per run");
    ch.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_organisation_gets_429_and_each_sdk_delivers_later_once() {
    let Some(s) = sdks() else { return };
    // 100 events/s with a 1 s burst: the driver's flood, sent right before the SDK's batch,
    // leaves the bucket 0.5–1.5 s in debt, which each SDK's own retries outlast (rudder-node's
    // are the shortest: 0.1 + 0.2 + 0.4 s).
    let vars = vec![("EDGE_TIER_STARTER_EVENTS_PER_SEC", "100".into()), ("EDGE_TIER_STARTER_BURST_SECS", "1".into())];
    let Some(h) = Harness::start(Options { vars, ..Default::default() }).await else { return };
    let mut runs = Vec::new();
    let limited = |m: &str| requests(m, "/batch/", "429") + requests(m, "/v1/batch", "429");
    for sdk in PYTHON_SDKS.iter().chain(NODE_SDKS.iter()) {
        let before = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
        let run = format!("{sdk}-limited-{}", uuid::Uuid::now_v7().simple());
        // rudder-node's retries span 0.7 s; the others' outlast a longer debt, which their
        // queueing (segment-python sends up to 0.5 s after the call) needs.
        let flood = if *sdk == "rudder-node" { "150" } else { "250" };
        let (ok, report) = drive_with(&s, sdk, &[&h.base, h.bravo.key.expose(), &run, "retries-expected", flood]);
        assert!(ok, "{sdk}: delivered after its retries: {report}");
        let after = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
        assert!(limited(&after) > limited(&before), "{sdk} met a 429");
        runs.push((*sdk, run));
        tokio::time::sleep(std::time::Duration::from_millis(2600)).await; // the bucket refills
    }
    let ch = h.stop().await.unwrap();
    for (sdk, run) in &runs {
        let mine = format!("device_id IN ('user-{run}', 'anon-{run}') AND organization_id = 'org_bravo'");
        assert_eq!(ch.count(&mine).await, 7, "{sdk}: every event once, after the 429");
    }
    ch.drop().await;
}
