//! The batch routes of SDKs apps already ship (`../shared/sdk/WIRE.md`):
//! PostHog's `POST /batch/` and Segment's and RudderStack's `POST /v1/batch`.
//!
//! Each vendor's module turns its batch into the edge's own events
//! ([`posthog`], [`segment`]); from there they take the common path
//! (validate → rate and quota → spool) and nothing after it knows the vendor.
//! Order, cheapest first: a key in a header (`X-Api-Key`, `Authorization:
//! Basic`) is checked before the body is read; otherwise the body is read
//! (bounded, decompressed, charged to the body budget) and its `api_key` /
//! `writeKey` authenticates before anything else is done with it. A header key
//! and a different body key: 401. Any Content-Type is taken as JSON (one SDK
//! labels gzipped JSON a form post). Success is 200 with the vendor's body
//! (two of these SDKs resend on 202); refused events are counted, and a batch
//! with no valid event is 400.

mod lz;
pub mod posthog;
pub mod segment;

use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::auth::{AuthError, Authenticator, Principal, RequestMeta};
use crate::error::Error;
use crate::event::parse::Shape;
use crate::event::Rejection;
use crate::http::body;
use crate::http::response::{self, Body};
use crate::ingest::{self, IngestState};
use crate::metrics as m;
use crate::tenant::Registry;

/// Memory a vendor body costs while it is mapped, in multiples of its size: the
/// `serde_json` tree, the mapped events and the edge's batch they are written to.
pub const MAP_BYTES_PER_BODY_BYTE: usize = 8;

/// Which wire format a route speaks (also the `source` label of `edge_source_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    PostHog,
    /// PostHog's capture v1 (`/i/v1/analytics/events`): the key as a Bearer token, per-event
    /// results in the answer.
    PostHogV1,
    /// posthog-js's and the mobile SDKs' capture routes (`/e/`, `/capture/`, …): JSON, or a
    /// form's `data=` in base64 or lz-string, or gzip named by `compression=gzip-js`.
    PostHogCapture,
    /// Segment's and RudderStack's batch: the same protocol.
    Segment,
    /// Segment's single-message routes (`/v1/track` …): one message, its type from the route.
    SegmentSingle(&'static str),
}

impl Vendor {
    pub fn label(self) -> &'static str {
        match self {
            Vendor::PostHog | Vendor::PostHogV1 | Vendor::PostHogCapture => "posthog",
            Vendor::Segment | Vendor::SegmentSingle(_) => "segment",
        }
    }
}

/// The edge's events, mapped from one vendor batch; `rejected` are messages that could not
/// be mapped (no device id, not an object), by their index in the batch.
pub struct Mapped {
    pub events: Vec<serde_json::Value>,
    pub rejected: Vec<(usize, Rejection)>,
    /// Each event's message id as the vendor sent it, in the order of `events` (capture v1
    /// answers per id).
    pub ids: Vec<Option<String>>,
    /// The message ids of the messages that could not be mapped, in the order of `rejected`.
    pub rejected_ids: Vec<Option<String>>,
    /// The SDK key the body carries (`api_key`, `writeKey`), if any.
    pub key: Option<String>,
}

/// What authenticates a request whose key may be in its body.
pub struct KeyCheck<'a> {
    pub auth: &'a Authenticator,
    pub registry: &'a Registry,
    pub meta: RequestMeta<'a>,
}

/// Runs a vendor batch. `principal` is the caller when a header carried the key.
pub async fn handle(
    state: &IngestState,
    vendor: Vendor,
    principal: Option<Principal>,
    check: KeyCheck<'_>,
    parts: &hyper::http::request::Parts,
    incoming: &mut Incoming,
) -> Result<Response<Body>, Error> {
    let received = state.clock.now();
    if let Some(p) = &principal {
        state.limiter.org(&p.org).check_quota(received.as_secs() as i64)?;
    }
    let limit = state.validator.limits().max_batch_bytes;
    let mut lease = state.budget.lease();
    let mut raw = body::read(&parts.headers, incoming, limit, "batch", &mut lease, state.conn.body_timeout).await?;
    let query = parts.uri.query().unwrap_or("");
    if vendor == Vendor::PostHogCapture && query.split('&').any(|kv| kv == "compression=gzip-js") {
        raw = body::gunzip(&raw, limit, "batch", &mut lease)?;
    }
    // The vendor body becomes a JSON tree, mapped events and the edge's batch before the
    // common path: charged to the body budget like the parse buffers of the native routes.
    lease.grow(raw.len() * MAP_BYTES_PER_BODY_BYTE)?;
    let received_ms = received.as_millis() as i64;
    let max_properties = state.validator.limits().max_properties_bytes;
    let mapped = match vendor {
        Vendor::PostHog => posthog::map(&raw, received_ms, max_properties),
        Vendor::PostHogV1 => {
            let sent = parts.headers.get("posthog-request-timestamp").and_then(|v| v.to_str().ok());
            posthog::map_v1(&raw, received_ms, sent, max_properties)
        }
        Vendor::PostHogCapture => posthog::map_capture(&raw, query, received_ms, max_properties, limit, &mut lease),
        Vendor::Segment => segment::map(&raw, received_ms, max_properties),
        Vendor::SegmentSingle(kind) => segment::map_single(&raw, kind, received_ms, max_properties),
    }?;
    drop(raw);
    let principal = match (principal, &mapped.key) {
        (Some(p), Some(key)) if !key_matches(&p, key, check.registry) => {
            return Err(AuthError::RepeatedCredential("api_key").into());
        }
        (Some(p), _) => p,
        (None, Some(key)) => check.auth.authenticate_body_key(key, &check.meta, check.registry)?,
        (None, None) => return Err(AuthError::MissingCredentials.into()),
    };
    let total = mapped.events.len() + mapped.rejected.len();
    for (_, r) in &mapped.rejected {
        metrics::counter!(m::EVENTS_REJECTED, "reason" => r.code).increment(1);
    }
    if mapped.events.is_empty() {
        return Err(crate::event::EventsRejected(mapped.rejected).into());
    }
    let mut bytes = serde_json::to_vec(&serde_json::json!({ "events": mapped.events })).unwrap_or_default();
    let outcome = ingest::accept(state, &principal, Shape::Batch, &mut bytes, &mut lease, received).await?;
    m::source_events(vendor.label(), outcome.accepted as u64);
    tracing::trace!(total, accepted = outcome.accepted, "vendor batch");
    let answer = match vendor {
        Vendor::PostHog | Vendor::PostHogCapture => r#"{"status":1}"#.to_string(),
        Vendor::PostHogV1 => posthog::v1_results(&mapped, &outcome.errors).to_string(),
        Vendor::Segment | Vendor::SegmentSingle(_) => r#"{"success":true}"#.to_string(),
    };
    Ok(response::json(StatusCode::OK, answer))
}

/// Whether the body's key is the one the header authenticated (the same grant).
fn key_matches(principal: &Principal, key: &str, registry: &Registry) -> bool {
    let snapshot = registry.snapshot();
    match (snapshot.key(&crate::tenant::KeyHash::of(key)), &principal.credential) {
        (Some(grant), crate::auth::Credential::SdkKey { app_id }) => {
            grant.org.id == principal.org.id && *grant.app_id == **app_id
        }
        _ => false,
    }
}

/// A message id the edge can store: as sent when it fits `event_id` (64), otherwise `h-` and
/// 62 hex digits of its SHA-256, so that retries of the same message still collapse.
pub fn event_id(id: &str) -> String {
    if id.chars().count() <= 64 {
        return id.to_string();
    }
    let digest = hex::encode(Sha256::digest(id.as_bytes()));
    format!("h-{}", &digest[..62])
}

/// Unix milliseconds of an RFC 3339 timestamp (`Z` or an offset, any fraction).
pub fn parse_time(value: &serde_json::Value) -> Option<i64> {
    let s = value.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A string field, or a number written as one (ids are sometimes numbers).
pub fn text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number, or a numeric string (revenue arrives both ways).
pub fn number(value: Option<&serde_json::Value>) -> Option<f64> {
    match value? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The body as JSON, whatever its Content-Type said.
pub fn parse_json(raw: &[u8]) -> Result<serde_json::Value, Error> {
    serde_json::from_slice(raw).map_err(|e| Error::Parse(crate::event::parse::ParseError::InvalidJson(e.to_string())))
}

/// Properties with `$context` added when it fits the properties limit (dropped otherwise).
pub fn with_context(
    mut properties: serde_json::Map<String, serde_json::Value>,
    context: Option<serde_json::Value>,
    max_bytes: usize,
) -> serde_json::Value {
    if let Some(context) = context.filter(|c| c.as_object().is_some_and(|o| !o.is_empty())) {
        let before = serde_json::to_vec(&properties).map_or(0, |v| v.len());
        let size = serde_json::to_vec(&context).map_or(usize::MAX, |v| v.len());
        if before.saturating_add(size).saturating_add(16) <= max_bytes {
            properties.insert("$context".into(), context);
        }
    }
    serde_json::Value::Object(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_hash_deterministically_and_times_parse_both_ways() {
        let legacy = format!("node-{}-{}", "0123456789abcdef0123456789abcdef", "2f4e8a8e-1d8e-4c51-9d1c-5a0c4d3c9a11");
        assert_eq!(legacy.len(), 74);
        let id = event_id(&legacy);
        assert_eq!((id.len(), id.starts_with("h-")), (64, true));
        assert_eq!(id, event_id(&legacy), "the same message, the same id");
        assert_eq!(event_id("short"), "short");
        let z = parse_time(&serde_json::json!("2026-11-26T22:20:09.943Z")).unwrap();
        let offset = parse_time(&serde_json::json!("2026-11-26T22:20:09.943000+00:00")).unwrap();
        assert_eq!(z, offset);
        assert_eq!(number(Some(&serde_json::json!("12.5"))), Some(12.5));
        assert_eq!(text(Some(&serde_json::json!(42))), Some("42".into()));
    }
}
