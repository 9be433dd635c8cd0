//! `POST /v1/events` and `POST /v1/events/batch`: the data plane's handler.
//!
//! The route table has authenticated the caller and checked `events:write`
//! (no body read for strangers). Order matters and each step is cheaper than
//! the next: is the quota already used up (no body read) →
//! read the bounded body, charged to the memory budget → parse → check the
//! organisation's rate for that many events → validate and encode each event
//! → reserve that many events of the quota, cutting what is over it → hand
//! the rows to the [`crate::pipeline`] and do the accounting → wait for the
//! spool → 202 with per-event results. Nothing is accepted that the pipeline
//! did not take; nothing the pipeline took goes uncharged. A body that
//! [`crate::event::direct`] takes is parsed, validated and encoded in one pass,
//! and its rate is checked after that pass, since the pass is what counts it.

use std::cell::RefCell;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::aggregates::Stats;
use crate::auth::Principal;
use crate::clock::Clock;
use crate::config::ConnConfig;
use crate::error::Error;
use crate::event::direct;
use crate::event::parse::{parse_body, JsonScratch, Shape};
use crate::event::validate::EventContext;
use crate::event::validate::Validator;
use crate::event::{EventSummary, EventsRejected, Rejection, RowBlock};
use crate::http::body::{self, BodyError, MediaType};
use crate::http::budget::{Lease, MemoryBudget};
use crate::http::response::{self, Body};
use crate::limits::{LimitError, Limiter, OrgLimits};
use crate::metrics as m;
use crate::pipeline::Pipeline;
use smallvec::SmallVec;

thread_local! {
    /// simd-json's scratch buffers, reused by every request this thread parses.
    static JSON_BUFFERS: RefCell<JsonScratch> = RefCell::new(JsonScratch::default());
    /// Scratch for serialising property objects.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The per-request parse cost charged to the body budget, in multiples of the decoded body:
/// simd-json's tape and structural index, and the encoded rows.
const PARSE_BYTES_PER_BODY_BYTE: usize = 3;

/// What the ingestion handlers may touch; built once at start.
pub struct IngestState {
    pub limiter: Arc<Limiter>,
    pub validator: Validator,
    pub pipeline: Arc<Pipeline>,
    pub stats: Arc<Stats>,
    /// Request bytes in memory across all requests.
    pub budget: Arc<MemoryBudget>,
    /// Body timeout and the early-answer drain.
    pub conn: ConnConfig,
    /// Receive times (and so quota months and timestamp checks) come from it.
    pub clock: Clock,
}

/// `principal` holds `events:write` (checked by the route table).
pub async fn handle(
    state: &IngestState,
    principal: Principal,
    req: Request<Incoming>,
    shape: Shape,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let result = ingest(state, principal, &parts, &mut body, shape).await;
    if let (Err(_), Some(unread)) = (&result, body) {
        // Answered before the body was (fully) read.
        body::drain_unread(parts.version, unread, &state.conn).await;
    }
    result
}

/// Quota pre-check → read → decode (rate, validate, reserve quota) → submit → account → wait
/// for the spool. `body` is borrowed while it is read.
async fn ingest(
    state: &IngestState,
    principal: Principal,
    parts: &hyper::http::request::Parts,
    body: &mut Option<Incoming>,
    shape: Shape,
) -> Result<Response<Body>, Error> {
    let received = state.clock.now();
    let shape = match (shape, body::media_type(&parts.headers)?) {
        (Shape::Batch | Shape::Ndjson, MediaType::Ndjson) => Shape::Ndjson,
        (Shape::Single, MediaType::Ndjson) => {
            return Err(BodyError::NdjsonNeedsBatchRoute.into());
        }
        (shape, MediaType::Json) => shape,
    };
    let org = &principal.org;
    let org_limits = state.limiter.org(org);
    org_limits.check_quota(received.as_secs() as i64).inspect_err(LimitError::count)?;
    let limits = state.validator.limits();
    let (limit, what) = match shape {
        Shape::Single => (limits.max_event_bytes, "event"),
        _ => (limits.max_batch_bytes, "batch"),
    };
    let mut lease = state.budget.lease();
    // Borrowed, not taken: if reading stops early (413, 503) the caller drains the rest.
    let incoming = body.as_mut().expect("the body is read once");
    let mut bytes = body::read(&parts.headers, incoming, limit, what, &mut lease, state.conn.body_timeout).await?;
    let outcome = accept(state, &principal, shape, &mut bytes, &mut lease, received).await?;
    m::source_events("native", outcome.accepted as u64);
    Ok(response::accepted(outcome.accepted, &outcome.errors))
}

/// What was taken from a request: how many events, and each refusal by index.
pub struct Outcome {
    pub accepted: usize,
    pub errors: Vec<(usize, Rejection)>,
}

/// Decode (rate, validate, reserve quota) → submit → account → wait for the spool, for a body
/// already read into `bytes` (charged to `lease`) at `received`. Shared by the edge's own routes
/// and the vendor formats (which hand over the edge's batch shape).
pub async fn accept(
    state: &IngestState,
    principal: &Principal,
    shape: Shape,
    bytes: &mut Vec<u8>,
    lease: &mut Lease,
    received: std::time::Duration,
) -> Result<Outcome, Error> {
    let now_secs = received.as_secs() as i64;
    let org = &principal.org;
    let org_limits = state.limiter.org(org);
    lease.grow(bytes.len() * PARSE_BYTES_PER_BODY_BYTE)?;
    let body_bytes = bytes.len() as u64;

    let decoded = decode(state, principal, &org_limits, shape, bytes, received.as_millis() as i64)?;
    bytes.clear();
    bytes.shrink_to_fit();
    for (_, rejection) in &decoded.errors {
        metrics::counter!(m::EVENTS_REJECTED, "reason" => rejection.code).increment(1);
    }
    if decoded.summaries.is_empty() {
        return Err(EventsRejected(decoded.errors).into());
    }

    // Charged before waiting: once submitted the rows will be stored, so a client that hangs up
    // now still pays for them (the quota was reserved in `decode`).
    let accepted = decoded.summaries.len();
    let stored = match state.pipeline.submit(decoded.block) {
        Ok(stored) => stored,
        Err(e) => {
            org_limits.refund(accepted as u64, now_secs);
            return Err(e.into());
        }
    };
    state.stats.record(&org.id, &decoded.summaries);
    // Counted once the rows are handed to the spool, so a client hanging up now still counts.
    org_limits.record_usage(accepted as u64, body_bytes);
    if let Err(e) = stored.stored().await {
        org_limits.refund(accepted as u64, now_secs);
        state.stats.forget(&org.id, &decoded.summaries);
        return Err(e.into());
    }
    m::events_accepted(accepted as u64);
    Ok(Outcome { accepted, errors: decoded.errors })
}

/// The outcome of parsing, limiting and validating one request body.
struct Decoded {
    block: RowBlock,
    /// Inline for a single event: no allocation on the commonest request.
    summaries: SmallVec<[EventSummary; 1]>,
    /// Refused events by index in the request, in order; the other indices were accepted.
    errors: Vec<(usize, Rejection)>,
}

impl Decoded {
    /// Keeps the first `keep` accepted events; the rest are refused as over the quota.
    fn cut(&mut self, keep: usize) {
        let end = keep.checked_sub(1).map_or(0, |last| self.summaries[last].row_end);
        let total = self.summaries.len() + self.errors.len();
        let mut refused = self.errors.iter().map(|(index, _)| *index).peekable();
        let mut over = Vec::new();
        let mut accepted = 0;
        for index in 0..total {
            if refused.next_if_eq(&index).is_some() {
                continue;
            }
            if accepted >= keep {
                over.push((index, Rejection::new("quota_exceeded", "The monthly event quota is used up")));
            }
            accepted += 1;
        }
        self.block.data.truncate(end);
        self.block.rows = keep;
        self.summaries.truncate(keep);
        self.errors.extend(over);
        self.errors.sort_by_key(|(index, _)| *index);
    }
}

/// Parse → rate and quota check for that many events → validate and encode each; or, for a
/// body [`direct`] takes, all of it in one pass and then the rate check (a body it declines
/// costs that pass again, and only the tape path's answer is given).
/// Synchronous on purpose: the thread-local parser buffers are held throughout.
fn decode(
    state: &IngestState,
    principal: &Principal,
    limits: &OrgLimits<'_>,
    shape: Shape,
    body: &mut [u8],
    received_ms: i64,
) -> Result<Decoded, Error> {
    let org = &principal.org;
    let tier = limits.tier;
    // RowBinary is a little smaller than the JSON it came from: one allocation for most blocks.
    let capacity = body.len();
    let ctx = EventContext {
        org_id: org.id.as_str(),
        credential_app: principal.app_id(),
        received_ms,
        skew_ms: 0,
        sent_at_ms: None,
        retention_days: tier.data_retention_days,
        plain_strings: false,
    };
    // A batch's events are about 300 bytes each, a guess that saves most regrowing; never more
    // than a batch may hold, whatever the body claims to be.
    let max_events = state.validator.limits().max_batch_events;
    let expected = if shape == Shape::Single { 1 } else { (body.len() / 256 + 1).min(max_events) };
    let mut decoded = Decoded {
        block: RowBlock::new(org.id.clone(), capacity),
        summaries: SmallVec::with_capacity(expected),
        errors: Vec::new(),
    };
    let validator = &state.validator;
    let direct = SCRATCH.with_borrow_mut(|scratch| {
        direct::transcode(body, shape, validator, &ctx, scratch, &mut decoded.block, &mut decoded.summaries)
    });
    match direct {
        Some(taken) => limits.check_rate(taken.events as u64).inspect_err(LimitError::count)?,
        None => JSON_BUFFERS.with_borrow_mut(|buffers| -> Result<(), Error> {
            let parsed = parse_body(body, shape, max_events, buffers)?;
            limits.check_rate(parsed.len() as u64).inspect_err(LimitError::count)?;
            let ctx = EventContext {
                skew_ms: parsed.sent_at_ms.map_or(0, |sent| received_ms - sent),
                sent_at_ms: parsed.sent_at_ms,
                plain_strings: parsed.plain_strings,
                ..ctx
            };
            SCRATCH.with_borrow_mut(|scratch| {
                parsed.for_each(|index, event| {
                    let outcome = match event {
                        Ok(value) => validator.encode(value, &ctx, scratch, &mut decoded.block),
                        Err(rejection) => Err(rejection.clone()),
                    };
                    match outcome {
                        Ok(summary) => decoded.summaries.push(summary),
                        Err(rejection) => decoded.errors.push((index, rejection)),
                    }
                });
            });
            parsed.recycle(buffers);
            Ok(())
        })?,
    }
    let valid = decoded.summaries.len() as u64;
    if valid > 0 {
        let granted = limits.reserve(valid, received_ms / 1000);
        if granted == 0 {
            let e = limits.quota_exceeded();
            e.count();
            return Err(e.into());
        }
        if granted < valid {
            metrics::counter!(m::QUOTA_EXCEEDED, "tier" => tier.name).increment(1);
            metrics::counter!(m::LIMIT_DECISIONS, "tier" => tier.name, "limit" => "quota", "outcome" => "cut")
                .increment(1);
            decoded.cut(granted as usize);
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::OrgId;

    #[test]
    fn a_cut_keeps_the_first_accepted_rows_and_refuses_the_rest_in_order() {
        // Events 0..6: 1 and 4 invalid, the other four accepted with 10-byte rows.
        let mut block = RowBlock::new(OrgId::new("o"), 64);
        block.data.extend_from_slice(&[7; 40]);
        block.rows = 4;
        let summary = |row_end| EventSummary { day: 1, revenue_cents: 0, device_hash: 0, row_end };
        let invalid = || Rejection::new("missing_field", "device_id is required");
        let mut d = Decoded {
            block,
            summaries: SmallVec::from_vec(vec![summary(10), summary(20), summary(30), summary(40)]),
            errors: vec![(1, invalid()), (4, invalid())],
        };
        d.cut(2);
        assert_eq!((d.block.rows, d.block.data.len(), d.summaries.len()), (2, 20, 2));
        let codes: Vec<(usize, &str)> = d.errors.iter().map(|(i, r)| (*i, r.code)).collect();
        assert_eq!(codes, [(1, "missing_field"), (3, "quota_exceeded"), (4, "missing_field"), (5, "quota_exceeded")]);
    }
}
