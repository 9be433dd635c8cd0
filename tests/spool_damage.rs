//! A damaged spool: flipped bytes in one record and a torn tail. Start-up
//! succeeds, `edge spool inspect` reports the damage, intact records ship.

mod common;

use std::time::Duration;

use common::{EdgeProcess, ProcessFixture};

#[test]
fn flipped_bytes_and_torn_tail_cost_only_the_damaged_records() {
    let Some(fx) = ProcessFixture::new() else { return };
    let (rt, ch, key, state) = (&fx.rt, &fx.ch, &fx.key, fx.state());
    let offline = [fx.env("http://127.0.0.1:9"), vec![("EDGE_BATCH_INTERVAL", "100ms".to_string())]].concat();
    let online = [fx.env(&ch.url), vec![("EDGE_BATCH_INTERVAL", "100ms".to_string())]].concat();

    // 1. Four acknowledged requests while ClickHouse is unreachable: they stay in the spool.
    let edge = EdgeProcess::spawn(&offline);
    rt.block_on(async {
        let http = reqwest::Client::new();
        for batch in 1..=4 {
            let events: Vec<_> = (0..100)
                .map(|i| serde_json::json!({"event_type":"t","event_name":"n","device_id":"d","event_id":format!("b{batch}-{i}")}))
                .collect();
            let r = http.post(format!("http://{}/v1/events/batch", edge.addr)).header("x-api-key", key.expose()).json(&events).send().await.unwrap();
            assert_eq!(r.status(), 202);
        }
    });
    edge.signal("KILL");
    drop(edge);

    // 2. Damage: flip a byte inside the second record, tear the fourth.
    let spool = state.join("spool");
    let segment = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut data = std::fs::read(&segment).unwrap();
    let mut ends = Vec::new();
    edge::spool::segment::scan(&bytes::Bytes::from(data.clone()), 0, true, |after, _| ends.push(after as usize));
    assert_eq!(ends.len(), 4, "one record per request");
    data[ends[0] + (ends[1] - ends[0]) / 2] ^= 0x5a;
    data.truncate(data.len() - 10);
    std::fs::write(&segment, &data).unwrap();

    // 3. The operator command sees it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["spool", "inspect"])
        .env("EDGE_SPOOL_DIR", &state)
        .output()
        .unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(report.contains("200 unshipped events, 2 damaged regions"), "{report}");

    // 4. Start-up succeeds and ships the intact records only.
    let mut edge = EdgeProcess::spawn(&online);
    let shipped = rt.block_on(common::eventually(Duration::from_secs(30), || async { ch.count("1").await >= 200 }));
    assert!(shipped);
    edge.signal("TERM");
    assert!(edge.wait(Duration::from_secs(20)).is_some_and(|s| s.success()));
    rt.block_on(async {
        assert_eq!(ch.count("1").await, 200);
        assert_eq!(ch.count("startsWith(event_id, 'b1-') OR startsWith(event_id, 'b3-')").await, 200);
        ch.drop().await;
    });
    // The torn tail was cut at start-up; what is left inspects clean or shipped.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["spool", "repair"])
        .env("EDGE_SPOOL_DIR", &state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
