//! Upgrades keep the spool: records written with the previous row format (V1, before
//! `user_id` and `app_version`) still ship after the upgrade, beside new ones; and a build
//! started before `edge migrate` added the columns holds its blocks (retrying, `/readyz`
//! says so) instead of dead-lettering them, then ships them once migrated.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{Harness, Options};
use edge::event::rowbinary::{put_datetime, put_decimal_18_2, put_nullable_datetime, put_str, RowFormat};
use edge::spool::segment;

/// One `events` row as the previous release encoded it (21 columns).
fn v1_row(out: &mut BytesMut, org: &str, id: &str, now: u32) {
    for value in [org, "app_old", id, "track", "old_event", &format!("device-{id}"), "", "ios"] {
        put_str(out, value.as_bytes());
    }
    put_datetime(out, now);
    put_datetime(out, now);
    put_nullable_datetime(out, None);
    put_str(out, b"{}");
    put_str(out, b"{}");
    put_decimal_18_2(out, 0);
    for value in ["USD", "", "", "", "", "", ""] {
        put_str(out, value.as_bytes());
    }
}

#[tokio::test]
async fn a_spool_written_by_the_previous_release_lands_whole_beside_new_rows() {
    let data = tempfile::tempdir().unwrap();
    let spool = data.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let now = edge::clock::Clock::system().unix_secs() as u32;
    let mut file = Vec::new();
    for record in 0..5 {
        let mut rows = BytesMut::new();
        for i in 0..10 {
            v1_row(&mut rows, "org_acme", &format!("v1-{record}-{i}"), now);
        }
        segment::encode(&mut file, RowFormat::V1, u64::from(now) * 1000, 10, b"org_acme", &rows);
    }
    std::fs::write(segment::segment_path(&spool, 1), &file).unwrap();

    let opts = Options { vars: vec![("EDGE_SPOOL_DIR", data.path().display().to_string())], ..Default::default() };
    let Some(h) = Harness::start(opts).await else { return };
    let event = serde_json::json!({"event_type": "track", "event_name": "new", "device_id": "d-new",
                                   "event_id": "v2-1", "user_id": "u-42", "app_version": "5.0.1"});
    assert_eq!(h.post("/v1/events", &h.acme.key).json(&event).send().await.unwrap().status(), 202);
    let ch = h.stop().await.unwrap();
    assert_eq!(ch.count("event_id LIKE 'v1-%' AND user_id = '' AND app_version = ''").await, 50, "every old row");
    assert_eq!(ch.count("event_id = 'v2-1' AND user_id = 'u-42' AND app_version = '5.0.1'").await, 1);
    ch.drop().await;
}

#[tokio::test]
async fn before_migrate_the_new_columns_hold_blocks_instead_of_dead_lettering_them() {
    let Some(h) = Harness::start(Options::default()).await else { return };
    let ch = h.ch.as_ref().unwrap();
    // The table as the previous release's migrations left it.
    ch.query("ALTER TABLE events DROP COLUMN user_id").await;
    ch.query("ALTER TABLE events DROP COLUMN app_version").await;
    let event =
        serde_json::json!({"event_type": "track", "event_name": "held", "device_id": "d", "event_id": "held-1"});
    assert_eq!(h.post("/v1/events", &h.acme.key).json(&event).send().await.unwrap().status(), 202);
    let ready = || async {
        let r = h.http.get(format!("{}/readyz", h.admin)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let started = std::time::Instant::now();
    loop {
        let (status, text) = ready().await;
        if status == 503 {
            assert!(text.contains("edge migrate"), "{text}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "/readyz never said the schema is behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("edge_clickhouse_insert_errors_total 0"), "insert errors are counted");
    // Migrated (004's statements): the held block ships, nothing went to the dead-letter directory.
    ch.query("ALTER TABLE events ADD COLUMN user_id String DEFAULT ''").await;
    ch.query("ALTER TABLE events ADD COLUMN app_version String DEFAULT ''").await;
    let landed =
        common::eventually(Duration::from_secs(15), || async { ch.count("event_id = 'held-1'").await == 1 }).await;
    assert!(landed, "the held block shipped once the columns existed");
    let dead = std::fs::read_dir(h.dir.path().join("dead-letter")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(dead, 0, "nothing dead-lettered");
    let ch = h.stop().await.unwrap();
    ch.drop().await;
}
