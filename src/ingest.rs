//! `POST /v1/events` and `POST /v1/events/batch`: the data plane's handler.
//!
//! Order matters and each step is cheaper than the next: authenticate (no
//! body read for strangers) → read the bounded body → parse → check the
//! organisation's rate and quota for that many events → validate and encode
//! each event → hand the rows to the [`crate::pipeline`] → 202 with per-event
//! results. Nothing is accepted that the pipeline did not take.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::event::parse::{parse_body, Shape};
use crate::event::validate::EventContext;
use crate::event::{EventSummary, Rejection, RowBlock};
use crate::http::body::{self, MediaType};
use crate::http::response::{self, Body};
use crate::limits::Decision;
use crate::metrics as m;
use crate::server::AppState;

thread_local! {
    /// simd-json's scratch buffers, reused by every request this thread parses.
    static JSON_BUFFERS: RefCell<simd_json::Buffers> = RefCell::new(simd_json::Buffers::default());
    /// Scratch for serialising property objects.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub async fn handle(state: &AppState, req: Request<Incoming>, shape: Shape) -> Result<Response<Body>, ApiError> {
    let received = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let route = if shape == Shape::Single { "/v1/events" } else { "/v1/events/batch" };
    let principal = state
        .auth
        .authenticate(req.headers(), &state.registry, received.as_secs(), route)
        .inspect_err(|e| metrics::counter!(m::AUTH_FAILURES, "code" => e.code).increment(1))?;
    if !principal.can_write_events() {
        return Err(ApiError::forbidden("insufficient_permission", "The token lacks the events:write permission"));
    }
    let shape = match (shape, body::media_type(req.headers())?) {
        (Shape::Batch | Shape::Ndjson, MediaType::Ndjson) => Shape::Ndjson,
        (Shape::Single, MediaType::Ndjson) => {
            return Err(ApiError::unsupported("unsupported_media_type", "NDJSON goes to /v1/events/batch"));
        }
        (shape, MediaType::Json) => shape,
    };
    let limits = state.validator.limits();
    let (limit, what) = match shape {
        Shape::Single => (limits.max_event_bytes, "event"),
        _ => (limits.max_batch_bytes, "batch"),
    };
    let (parts, incoming) = req.into_parts();
    let mut body = body::read(&parts.headers, incoming, limit, what).await?;

    let decoded = decode(state, &principal, shape, &mut body, received.as_millis() as i64)?;
    for (_, rejection) in &decoded.errors {
        metrics::counter!(m::EVENTS_REJECTED, "reason" => rejection.code).increment(1);
    }
    if decoded.summaries.is_empty() {
        return Err(all_rejected(&decoded.errors));
    }

    state.pipeline.accept(decoded.block).await?;

    let org = &principal.org.id;
    let accepted = decoded.summaries.len();
    state.stats.record(org, &decoded.summaries);
    state.limiter.record(org, accepted as u64, received.as_secs() as i64);
    m::events_accepted(accepted as u64);
    Ok(response::accepted(accepted, &decoded.errors))
}

/// The outcome of parsing, limiting and validating one request body.
struct Decoded {
    block: RowBlock,
    summaries: Vec<EventSummary>,
    errors: Vec<(usize, Rejection)>,
}

/// Parse → rate and quota check for that many events → validate and encode each.
/// Synchronous on purpose: the thread-local parser buffers are held throughout.
fn decode(
    state: &AppState,
    principal: &Principal,
    shape: Shape,
    body: &mut [u8],
    received_ms: i64,
) -> Result<Decoded, ApiError> {
    let org = &principal.org;
    let tier = state.limiter.tiers().by_index(org.tier);
    // RowBinary is a little smaller than the JSON it came from: one allocation for most blocks.
    let capacity = body.len();
    JSON_BUFFERS.with_borrow_mut(|buffers| {
        let parsed = parse_body(body, shape, state.validator.limits().max_batch_events, buffers)?;
        let n = parsed.len();
        match state.limiter.check(org, n as u64, received_ms / 1000) {
            Decision::Allow => {}
            Decision::RateLimited { retry_after, limit_per_sec } => {
                metrics::counter!(m::RATE_LIMITED, "tier" => tier.name).increment(1);
                return Err(ApiError::rate_limited(tier.name, limit_per_sec, retry_after));
            }
            Decision::QuotaExceeded { limit_per_month } => {
                metrics::counter!(m::QUOTA_EXCEEDED, "tier" => tier.name).increment(1);
                return Err(ApiError::quota_exceeded(tier.name, limit_per_month));
            }
        }
        let ctx = EventContext {
            org_id: org.id.as_str(),
            credential_app: principal.app_id(),
            received_ms,
            skew_ms: parsed.sent_at_ms.map_or(0, |sent| received_ms - sent),
            sent_at_ms: parsed.sent_at_ms,
            retention_days: tier.data_retention_days,
        };
        let mut decoded = Decoded {
            block: RowBlock::new(org.id.clone(), capacity),
            summaries: Vec::with_capacity(n),
            errors: Vec::new(),
        };
        SCRATCH.with_borrow_mut(|scratch| {
            parsed.for_each(|index, event| {
                let outcome = match event {
                    Ok(value) => state.validator.encode(value, &ctx, scratch, &mut decoded.block),
                    Err(rejection) => Err(rejection.clone()),
                };
                match outcome {
                    Ok(summary) => decoded.summaries.push(summary),
                    Err(rejection) => decoded.errors.push((index, rejection)),
                }
            });
        });
        Ok(decoded)
    })
}

/// 400 when no event is valid: the one event's own code, or `invalid_events` with each error.
fn all_rejected(errors: &[(usize, Rejection)]) -> ApiError {
    let (code, message) = match errors {
        [(_, only)] => (only.code, only.message.clone()),
        _ => ("invalid_events", "Every event in the batch is invalid".to_string()),
    };
    ApiError::bad_request(code, message)
        .with("accepted", 0)
        .with("rejected", errors.len())
        .with("errors", response::rejections(errors))
}
