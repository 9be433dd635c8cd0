//! Per-request costs on the hot path, measured in isolation:
//! parse + validate + encode (one event, a batch of 100; through a tape and straight from the body), JWT verification
//! (signature vs cache hit), the rate limiter, and the SDK-key lookup.
//!
//! `cargo bench --bench hot_path`; `cargo test --benches` runs each once.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use edge::auth::jwt::{issue_hs256, Claims, JwtVerifier};
use edge::config::{BodyLimits, JwtConfig};
use edge::event::direct::transcode;
use edge::event::parse::{parse_body, Shape};
use edge::event::validate::{EventContext, Validator};
use edge::event::RowBlock;
use edge::limits::rate::Bucket;
use edge::tenant::{OrgId, SdkKey};

const EVENT: &str = r#"{"event_type":"purchase","event_name":"checkout_complete","device_id":"6f1c2e7a-93b1-4c55-9d7e-2f0d4e1b8a11",
"session_id":"s-8842","platform":"ios","event_timestamp":"2026-11-26T12:00:00.123Z","revenue":19.99,"currency":"USD",
"idfv":"A1B2C3D4-E5F6-7890-ABCD-EF1234567890","properties":{"sku":"PRO-1Y","screen":"paywall","ab":"v2"}}"#;

fn ctx() -> EventContext<'static> {
    EventContext {
        org_id: "org_bench",
        credential_app: Some("app_bench"),
        received_ms: 1_795_800_000_000,
        skew_ms: 0,
        sent_at_ms: None,
        retention_days: 730,
        plain_strings: false,
    }
}

fn parse_validate(c: &mut Criterion) {
    let validator = Validator::new(BodyLimits::default());
    let mut json = edge::event::parse::JsonScratch::default();
    let mut scratch = Vec::new();
    let mut group = c.benchmark_group("parse_validate_encode");
    let batch = format!("{{\"events\":[{}]}}", vec![EVENT; 100].join(","));
    for (name, body, shape, events) in
        [("single_event", EVENT, Shape::Single, 1), ("batch_of_100", &batch[..], Shape::Batch, 100)]
    {
        group.throughput(Throughput::Elements(events));
        group.bench_function(name, |b| {
            b.iter_batched(
                || body.as_bytes().to_vec(),
                |mut body| {
                    let mut block = RowBlock::new(OrgId::new("org_bench"), body.len());
                    let parsed = parse_body(&mut body, shape, 10_000, &mut json).unwrap();
                    // As the request path does: what parsing saw of the body's escapes.
                    let ctx = EventContext { plain_strings: parsed.plain_strings, ..ctx() };
                    parsed.for_each(|_, e| {
                        black_box(validator.encode(e.unwrap(), &ctx, &mut scratch, &mut block).unwrap());
                    });
                    parsed.recycle(&mut json);
                    block
                },
                BatchSize::SmallInput,
            )
        });
        // The same body straight to the same rows, as the request path takes it first.
        group.bench_function(format!("{name}_direct"), |b| {
            b.iter_batched(
                || body.as_bytes().to_vec(),
                |body| {
                    let mut block = RowBlock::new(OrgId::new("org_bench"), body.len());
                    let mut summaries = smallvec::SmallVec::new();
                    let taken = transcode(&body, shape, &validator, &ctx(), &mut scratch, &mut block, &mut summaries);
                    assert_eq!(taken.map(|t| t.events), Some(events as usize));
                    (block, summaries)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn jwt(c: &mut Criterion) {
    let secret = b"bench-secret-bench-secret-bench-secret".to_vec();
    let config = JwtConfig { hs256_secret: Some(secret.clone()), leeway_secs: 30, ..Default::default() };
    let claims = |user: String| Claims::new(&user, "org_bench", &["events:write"], 0, u64::MAX / 2);
    let mut group = c.benchmark_group("jwt_verify");
    let cold = JwtVerifier::from_config(&config, 1).unwrap();
    let tokens: Vec<String> = (0..64).map(|i| issue_hs256(&claims(format!("u{i}")), &secret)).collect();
    let mut i = 0;
    group.bench_function("cold_hs256", |b| {
        b.iter(|| {
            i = (i + 1) % tokens.len();
            // Capacity 1: every other call evicts, so this measures the signature path.
            black_box(cold.verify(&tokens[i], 1_795_000_000).unwrap())
        })
    });
    let warm = JwtVerifier::from_config(&config, 1000).unwrap();
    let token = issue_hs256(&claims("u".into()), &secret);
    warm.verify(&token, 1_795_000_000).unwrap();
    group.bench_function("cached", |b| b.iter(|| black_box(warm.verify(black_box(&token), 1_795_000_000).unwrap())));
    group.finish();
}

fn limiter(c: &mut Criterion) {
    let bucket = Bucket::default();
    let mut now = 0u64;
    c.bench_function("rate_limit_check", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(bucket.check(now, 1, 100_000, 200_000))
        })
    });
}

fn key_lookup(c: &mut Criterion) {
    let key = SdkKey::generate();
    c.bench_function("sdk_key_hash", |b| b.iter(|| black_box(black_box(&key).hash())));
}

/// RowBinary → Native for blocks of 10k and 100k rows, sorted by the table's key: the edge's price for
/// ClickHouse's cheaper parse and skipped sort. Rows arrive as from `loadtest/e2e`: 100 devices
/// in turn, each event with its own generated id.
fn native_block(c: &mut Criterion) {
    let validator = Validator::new(BodyLimits::default());
    let mut scratch = Vec::new();
    let mut bodies: Vec<Vec<u8>> = (0..100)
        .map(|i| EVENT.replace("6f1c2e7a-93b1-4c55-9d7e-2f0d4e1b8a11", &format!("device-{i}")).into_bytes())
        .collect();
    let tapes: Vec<_> = bodies.iter_mut().map(|b| simd_json::to_tape(b).unwrap()).collect();
    let mut group = c.benchmark_group("native_block");
    // The shipper's blocks hold up to 100k rows (EDGE_BATCH_MAX_ROWS): 30 MB of rows, far past
    // the caches, which the sort's and the transposition's reads in key order feel.
    for rows in [10_000, 100_000] {
        let mut block = RowBlock::new(OrgId::new("org_bench"), rows * 320);
        for i in 0..rows {
            validator.encode(tapes[i % 100].as_value(), &ctx(), &mut scratch, &mut block).unwrap();
        }
        group.throughput(Throughput::Elements(rows as u64));
        // As the shipper runs it: one encoder and one output buffer, reused block after block.
        let mut encoder = edge::sink::native::NativeEncoder::default();
        let mut out = Vec::new();
        group.bench_function(format!("transpose_{}k_rows", rows / 1000), |b| {
            b.iter(|| {
                let chunks = [&block.data[..]];
                out = encoder
                    .encode(&chunks, rows, edge::event::rowbinary::RowFormat::CURRENT, |_| std::mem::take(&mut out))
                    .unwrap();
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// Recording one event in the in-process daily aggregates: one organisation's 30 days (hot in
/// cache) against ten thousand organisations' 30 days each (300 000 organisation-days).
fn aggregates(c: &mut Criterion) {
    use edge::aggregates::Stats;
    use edge::event::EventSummary;
    let mut group = c.benchmark_group("aggregates_record");
    for orgs in [1usize, 10_000] {
        let stats = Stats::new(1 << 30);
        let ids: Vec<OrgId> = (0..orgs).map(|i| OrgId::new(&format!("org_bench_{i}"))).collect();
        // A fixed pseudo-random walk over (organisation, day, device), five devices per day first.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let draws: Vec<(usize, EventSummary)> = (0..1 << 20)
            .map(|_| {
                let r = next();
                let e =
                    EventSummary { day: 20_000 + (r % 30) as u32, revenue_cents: 0, device_hash: next(), row_end: 0 };
                ((r >> 32) as usize % orgs, e)
            })
            .collect();
        for (org, e) in draws.iter().cycle().take(orgs * 30 * 5) {
            stats.record(&ids[*org], std::slice::from_ref(e));
        }
        let mut at = 0;
        group.bench_function(format!("{orgs}_orgs_30_days"), |b| {
            b.iter(|| {
                let (org, e) = &draws[at & (draws.len() - 1)];
                at += 1;
                stats.record(&ids[*org], std::slice::from_ref(e));
            })
        });
    }
}

criterion_group!(benches, parse_validate, jwt, limiter, key_lookup, native_block, aggregates);
criterion_main!(benches);
