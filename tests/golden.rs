//! Replays a corpus of recorded SDK requests (tests/golden/requests.jsonl) and
//! checks each answer's status, code and per-event counts. The server runs
//! in-process with a memory sink, so this runs with or without services.

mod common;

use common::{Harness, Options};
use serde_json::Value;

#[tokio::test]
async fn golden_requests() {
    let h = Harness::start(Options { clickhouse: false, ..Default::default() }).await.unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let now =
        time::OffsetDateTime::from_unix_timestamp(now_ms / 1000 - 60).unwrap().to_offset(time::macros::offset!(+2));
    let rfc3339 = now.format(&time::format_description::well_known::Rfc3339).unwrap();
    let substitute = |text: &str| {
        text.replace("\"$NOW_MS_FLOAT\"", &format!("{}.5", now_ms - 1000))
            .replace("$NOW_RFC3339", &rfc3339)
            .replace("$LONG65", &"x".repeat(65))
    };
    let corpus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/requests.jsonl")).unwrap();
    let mut failures = Vec::new();
    let mut cases = 0;
    for line in corpus.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).unwrap();
        cases += 1;
        let name = case["name"].as_str().unwrap();
        let body = match case.get("raw") {
            Some(raw) => raw.as_str().unwrap().to_string(),
            None => substitute(&case["body"].to_string()),
        };
        let content_type = case.get("content_type").and_then(Value::as_str).unwrap_or("application/json");
        let r = h
            .http
            .post(format!("{}{}", h.base, case["path"].as_str().unwrap()))
            .header("x-api-key", h.acme.key.expose())
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        let mut problems = Vec::new();
        if status != case["status"].as_u64().unwrap() as u16 {
            problems.push(format!("status {status}"));
        }
        for field in ["code", "accepted", "rejected"] {
            if let Some(want) = case.get(field) {
                if answer.get(field) != Some(want) {
                    problems.push(format!("{field} {:?}", answer.get(field)));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {} (answer {answer})", problems.join(", ")));
        }
    }
    assert!(cases >= 20);
    assert!(failures.is_empty(), "{} of {cases} golden requests differ:\n{}", failures.len(), failures.join("\n"));
    h.stop().await;
}
