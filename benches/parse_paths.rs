//! The two ways a body becomes rows, side by side in one process: through a simd-json tape
//! (`event::parse` + `Validator::encode`) and straight from the body (`event::direct`).
//!
//! `cargo bench --bench parse_paths` prints, for loadtest/event.json alone, a batch of 100 of
//! them (distinct device ids, no event ids) written compactly, and the same batch written as
//! Python's `json.dumps` writes it (`loadtest/batch_body`), the best time per event of each
//! path over many rounds, the two paths alternating round by round. Best rather than mean:
//! on a shared VM, other tenants only ever add time. `cargo test --benches` runs one round and
//! checks that the direct path takes each body to the tape path's number of rows.

use std::hint::black_box;
use std::time::Instant;

use edge::config::BodyLimits;
use edge::event::direct::transcode;
use edge::event::parse::{parse_body, JsonScratch, Shape};
use edge::event::validate::{EventContext, Validator};
use edge::event::RowBlock;
use edge::tenant::OrgId;

fn ctx() -> EventContext<'static> {
    EventContext {
        org_id: "org_bench",
        credential_app: None,
        received_ms: 1_795_800_000_000,
        skew_ms: 0,
        sent_at_ms: None,
        retention_days: 730,
        plain_strings: false,
    }
}

fn bodies() -> Vec<(&'static str, Shape, usize, Vec<u8>)> {
    let event = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/loadtest/event.json")).unwrap();
    let event: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&event).unwrap();
    let events: Vec<_> = (0..100)
        .map(|i| {
            let mut e = event.clone();
            e.remove("event_id");
            e.insert("device_id".into(), format!("device-{i}").into());
            e
        })
        .collect();
    let compact = serde_json::json!({ "events": events }).to_string();
    // As Python writes it; no string of the event holds `":"` or `","`.
    let spaced = compact.replace("\":", "\": ").replace(",\"", ", \"").replace(",{", ", {");
    vec![
        ("single event", Shape::Single, 1, serde_json::to_vec(&event).unwrap()),
        ("batch of 100, compact", Shape::Batch, 100, compact.into_bytes()),
        ("batch of 100, spaced", Shape::Batch, 100, spaced.into_bytes()),
    ]
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (rounds, per_round) = if measuring { (60, 300) } else { (1, 1) };
    let validator = Validator::new(BodyLimits::default());
    let mut json = JsonScratch::default();
    let mut scratch = Vec::new();
    for (name, shape, events, body) in bodies() {
        let tape = |json: &mut JsonScratch, scratch: &mut Vec<u8>| {
            let mut bytes = body.clone();
            let mut block = RowBlock::new(OrgId::new("org_bench"), bytes.len());
            let parsed = parse_body(&mut bytes, shape, 10_000, json).unwrap();
            let ctx = EventContext { plain_strings: parsed.plain_strings, ..ctx() };
            parsed.for_each(|_, e| {
                validator.encode(e.unwrap(), &ctx, scratch, &mut block).unwrap();
            });
            parsed.recycle(json);
            black_box(block)
        };
        let direct = |scratch: &mut Vec<u8>| {
            let bytes = body.clone();
            let mut block = RowBlock::new(OrgId::new("org_bench"), bytes.len());
            let mut summaries = smallvec::SmallVec::new();
            let taken = transcode(&bytes, shape, &validator, &ctx(), scratch, &mut block, &mut summaries);
            assert_eq!(taken.map(|t| t.events), Some(events), "{name}: the direct path declined");
            black_box((block, summaries))
        };
        assert_eq!(tape(&mut json, &mut scratch).rows, direct(&mut scratch).0.rows, "{name}");
        let (mut best_tape, mut best_direct) = (f64::MAX, f64::MAX);
        let per_event = |start: Instant| start.elapsed().as_secs_f64() * 1e9 / (per_round * events) as f64;
        for _ in 0..rounds {
            let start = Instant::now();
            for _ in 0..per_round {
                tape(&mut json, &mut scratch);
            }
            best_tape = best_tape.min(per_event(start));
            let start = Instant::now();
            for _ in 0..per_round {
                direct(&mut scratch);
            }
            best_direct = best_direct.min(per_event(start));
        }
        if measuring {
            println!(
                "{name:24} ns per event, best of {rounds} rounds: tape {best_tape:6.0}  direct {best_direct:6.0}  \
                 direct/tape {:.3}",
                best_direct / best_tape
            );
        }
    }
}
