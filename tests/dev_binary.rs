//! The real `edge` binary in `--dev` mode, as the README runs it: the printed
//! curl line's key works, stats answer, SIGTERM exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn dev_mode_prints_a_working_curl_line_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--dev"])
        .env("EDGE_LISTEN", "127.0.0.1:0")
        .env("EDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("EDGE_SPOOL_DIR", dir.path())
        .env("EDGE_BATCH_INTERVAL", "100ms")
        .env_remove("CLICKHOUSE_URL")
        .env_remove("JWT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut curl, mut stats, mut metrics) = (String::new(), String::new(), String::new());
    while let Some(Ok(line)) = lines.next() {
        if line.trim_start().starts_with("curl -i -X POST") {
            curl = line.clone();
            curl.push_str(&lines.next().unwrap().unwrap());
        } else if line.trim_start().starts_with("curl -s") {
            stats = line;
        } else if line.starts_with("Metrics:") {
            metrics = line;
            break;
        }
    }
    let url = curl.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    let key = curl.split("X-Api-Key: ").nth(1).unwrap().split('\'').next().unwrap().to_string();
    let body = curl.split("-d '").nth(1).unwrap().trim_end_matches('\'').to_string();
    let token = stats.split("Bearer ").nth(1).unwrap().trim_end_matches('\'').to_string();
    let stats_url = stats.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    let metrics_url = metrics.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-api-key", &key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "the printed curl line works");
        let batch = serde_json::json!([
            {"event_type":"a","event_name":"b","device_id":"d2","revenue":2.5},
            {"event_name":"missing type"}
        ]);
        let r = http.post(format!("{url}/batch")).header("x-api-key", &key).json(&batch).send().await.unwrap();
        let b: serde_json::Value = r.json().await.unwrap();
        assert_eq!((b["accepted"].as_u64(), b["rejected"].as_u64()), (Some(1), Some(1)));
        let s: serde_json::Value = http.get(&stats_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        assert_eq!(s["total_events"], 2);
        assert_eq!(s["total_revenue"], 2.5);
        assert_eq!(s["unique_devices"], 2);
        let m = http.get(&metrics_url).send().await.unwrap().text().await.unwrap();
        assert!(m.contains("edge_events_accepted_total 2"));
    });

    // SIGTERM: drain, write the local store, exit 0.
    send_signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let stored: u64 =
        std::fs::read_dir(dir.path().join("local")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(stored > 0, "events were written to the local store under the spool dir");
}

fn send_signal(pid: u32, signal: &str) {
    Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
}

fn wait_timeout(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn bad_configuration_is_reported_one_line_per_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve"])
        .env("EDGE_LISTEN", "nope")
        .env("EDGE_ACK", "maybe")
        .env("JWT_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, name) in lines.iter().zip(["EDGE_LISTEN", "JWT_SECRET", "EDGE_ACK"]) {
        assert!(line.starts_with(&format!("edge: invalid configuration: {name}: ")), "{line}");
    }
}

#[test]
fn tenants_file_serves_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.toml");
    let (a, b) = (edge::tenant::SdkKey::generate(), edge::tenant::SdkKey::generate());
    let write = |keys: &[&edge::tenant::SdkKey]| {
        let keys: Vec<String> =
            keys.iter().map(|k| format!("{{ app_id = \"app\", sha256 = \"{}\" }}", k.hash().to_hex())).collect();
        let text = format!(
            "[[organizations]]\nid = \"org_file\"\nname = \"F\"\nsubdomain = \"file\"\nkeys = [{}]\n",
            keys.join(", ")
        );
        std::fs::write(&file, text).unwrap();
    };
    write(&[&a]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve"])
        .env("EDGE_LISTEN", "127.0.0.1:0")
        .env("EDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("EDGE_TENANTS_FILE", &file)
        .env("EDGE_SPOOL_DIR", dir.path())
        // Nothing listens there: events stay buffered, which this test does not mind.
        .env("CLICKHOUSE_URL", "http://127.0.0.1:9")
        .env("EDGE_DRAIN_TIMEOUT", "1s")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("edge logs its address").unwrap();
        if let Some(rest) = line.split(" addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let rt = tokio::runtime::Runtime::new().unwrap();
    let post = |key: &str| {
        let url = format!("http://{addr}/v1/events");
        let key = key.to_string();
        rt.block_on(async move {
            reqwest::Client::new()
                .post(url)
                .header("x-api-key", key)
                .json(&serde_json::json!({"event_type":"t","event_name":"n","device_id":"d"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(post(a.expose()), 202);
    assert_eq!(post(b.expose()), 401);
    write(&[&b]);
    send_signal(child.id(), "HUP");
    let mut status = 0;
    for _ in 0..100 {
        status = post(b.expose());
        if status == 202 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status, 202, "reloaded tenants accept the new key");
    assert_eq!(post(a.expose()), 401, "and refuse the removed one at once");
    send_signal(child.id(), "TERM");
    let exit = wait_timeout(&mut child, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

/// The monthly quota survives restarts on a single node (no Redis, no PostgreSQL): a clean
/// stop saves the counts, and a `kill -9` loses at most what came after the last save.
#[test]
fn the_monthly_quota_survives_restarts_from_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let key = edge::tenant::SdkKey::generate();
    let tenants = common::tenants_file(dir.path(), &key);
    let envs = [
        ("EDGE_SPOOL_DIR", dir.path().join("data").display().to_string()),
        ("EDGE_TENANTS_FILE", tenants.display().to_string()),
        ("EDGE_TIER_ENTERPRISE_EVENTS_PER_MONTH", "5".to_string()),
    ];
    let send = |edge: &common::EdgeProcess| {
        let body = r#"{"event_type":"t","event_name":"n","device_id":"d"}"#;
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("X-Api-Key: {}", key.expose())])
            .args(["-H", "Content-Type: application/json", "-d", body, &format!("http://{}/v1/events", edge.addr)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut edge = common::EdgeProcess::spawn_with(&["--dev"], &envs);
    for _ in 0..5 {
        assert_eq!(send(&edge), "202");
    }
    assert_eq!(send(&edge), "402");
    edge.signal("TERM");
    assert!(edge.wait(Duration::from_secs(20)).is_some());

    let mut edge = common::EdgeProcess::spawn_with(&["--dev"], &envs);
    assert_eq!(send(&edge), "402", "a clean restart keeps the month's count");
    // After a save, even a crash keeps it.
    std::thread::sleep(Duration::from_millis(1200));
    edge.signal("KILL");
    edge.wait(Duration::from_secs(5));
    let edge = common::EdgeProcess::spawn_with(&["--dev"], &envs);
    assert_eq!(send(&edge), "402", "so does a kill -9 after the counts were saved");
}
