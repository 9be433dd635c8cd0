//! PostHog's batch (`POST /batch/`, posthog-python and posthog-node):
//! `{"api_key","batch":[{"event","distinct_id","properties","timestamp","uuid"}],"sent_at"}`
//! → the edge's events (WIRE.md §5). Timestamps are corrected for the client's
//! clock as PostHog does: `timestamp + (received − sent_at)`, unless the event
//! says `$ignore_sent_at`.

use serde_json::{json, Map, Value};

use super::{event_id, number, parse_json, parse_time, text, with_context, Mapped};
use crate::error::Error;
use crate::event::parse::ParseError;
use crate::event::Rejection;

pub fn map(raw: &[u8], received_ms: i64, max_properties: usize) -> Result<Mapped, Error> {
    let body = parse_json(raw)?;
    let key = text(body.get("api_key"));
    let skew = body.get("sent_at").and_then(parse_time).map(|sent| received_ms - sent);
    map_batch(&body, key, skew, max_properties)
}

/// Capture v1 (`/i/v1/analytics/events`): `{"created_at","batch":[…]}`, the key in the
/// `Authorization: Bearer` header, the client's clock in `PostHog-Request-Timestamp`.
pub fn map_v1(raw: &[u8], received_ms: i64, sent: Option<&str>, max_properties: usize) -> Result<Mapped, Error> {
    let body = parse_json(raw)?;
    let sent = sent.and_then(|s| parse_time(&Value::from(s))).or_else(|| body.get("created_at").and_then(parse_time));
    map_batch(&body, None, sent.map(|s| received_ms - s), max_properties)
}

fn map_batch(body: &Value, key: Option<String>, skew: Option<i64>, max_properties: usize) -> Result<Mapped, Error> {
    let batch = body.get("batch").and_then(Value::as_array).ok_or(Error::Parse(ParseError::NotABatch))?;
    let mut mapped = Mapped {
        events: Vec::with_capacity(batch.len()),
        rejected: Vec::new(),
        ids: Vec::with_capacity(batch.len()),
        rejected_ids: Vec::new(),
        key,
    };
    for (index, message) in batch.iter().enumerate() {
        let id = text(message.get("uuid"));
        match event(message, skew, max_properties) {
            Ok(e) => {
                mapped.events.push(e);
                mapped.ids.push(id);
            }
            Err(r) => {
                mapped.rejected.push((index, r));
                mapped.rejected_ids.push(id);
            }
        }
    }
    Ok(mapped)
}

/// Capture v1's answer: `{"results":{<uuid>:{"result":"ok"|"drop","details"?}}}` for every
/// message with a uuid; `errors` are the edge's refusals by index among the mapped events.
pub fn v1_results(mapped: &Mapped, errors: &[(usize, Rejection)]) -> Value {
    let mut results = Map::new();
    for (i, id) in mapped.ids.iter().enumerate() {
        if let Some(id) = id {
            let refused = errors.iter().find(|(index, _)| *index == i);
            let result = match refused {
                Some((_, r)) => json!({"result": "drop", "details": r.code}),
                None => json!({"result": "ok"}),
            };
            results.insert(id.clone(), result);
        }
    }
    for ((_, r), id) in mapped.rejected.iter().zip(&mapped.rejected_ids) {
        if let Some(id) = id {
            results.insert(id.clone(), json!({"result": "drop", "details": r.code}));
        }
    }
    json!({ "results": results })
}

fn event(m: &Value, skew_ms: Option<i64>, max_properties: usize) -> Result<Value, Rejection> {
    let m = m.as_object().ok_or_else(|| Rejection::new("invalid_event", "Each message must be a JSON object"))?;
    let name = text(m.get("event")).ok_or_else(|| Rejection::new("missing_field", "event is required"))?;
    let mut props: Map<String, Value> = m.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let distinct_id = text(m.get("distinct_id"));
    let device_id = text(props.get("$device_id"))
        .or_else(|| distinct_id.clone())
        .ok_or_else(|| Rejection::new("missing_field", "distinct_id is required"))?;

    // `$set` / `$set_once` are the user's properties, at the top level (python) or inside.
    let mut user = Map::new();
    for key in ["$set", "$set_once"] {
        let value = m.get(key).cloned().or_else(|| props.remove(key));
        match (key, value) {
            ("$set", Some(Value::Object(set))) => user.extend(set),
            ("$set_once", Some(once @ Value::Object(_))) => {
                user.insert("$set_once".into(), once);
            }
            _ => {}
        }
    }
    let revenue = number(props.get("revenue")).or_else(|| number(props.get("$revenue")));
    let event_type = match name.as_str() {
        "$pageview" => "page",
        "$screen" => "screen",
        "$identify" | "$set" | "$set_once" => "identify",
        "$create_alias" => "alias",
        "$groupidentify" => "group",
        "Application Installed" => "install",
        "Application Opened" => "session",
        _ if revenue.is_some_and(|r| r > 0.0) => "purchase",
        _ => "track",
    };
    let ignore_sent_at = props.get("$ignore_sent_at").and_then(Value::as_bool).unwrap_or(false);
    let timestamp =
        m.get("timestamp").and_then(parse_time).map(|t| if ignore_sent_at { t } else { t + skew_ms.unwrap_or(0) });

    let mut e = Map::new();
    if let Some(id) = text(m.get("uuid")) {
        e.insert("event_id".into(), json!(event_id(&id)));
    }
    e.insert("event_type".into(), json!(event_type));
    e.insert("event_name".into(), json!(name));
    e.insert("device_id".into(), json!(device_id));
    if let Some(t) = timestamp {
        e.insert("event_timestamp".into(), json!(t));
    }
    for (field, source) in [("session_id", "$session_id"), ("ip", "$ip"), ("user_agent", "$raw_user_agent")] {
        if let Some(v) = text(props.get(source)) {
            e.insert(field.into(), json!(v));
        }
    }
    if let Some(os) = text(props.get("$os")) {
        e.insert("platform".into(), json!(os.to_lowercase()));
    }
    if let Some(r) = revenue {
        e.insert("revenue".into(), json!(r));
        let currency = text(props.get("currency")).or_else(|| text(props.get("$currency")));
        e.insert("currency".into(), json!(currency.unwrap_or_else(|| "USD".into())));
    }
    if let Some(user_id) = distinct_id {
        e.insert("user_id".into(), json!(user_id));
    }
    if let Some(version) = text(props.get("$app_version")) {
        e.insert("app_version".into(), json!(version));
    }
    e.insert("properties".into(), with_context(props, None, max_properties));
    if !user.is_empty() {
        e.insert("user_properties".into(), Value::Object(user));
    }
    Ok(Value::Object(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_identify_and_revenue_map_with_skew_corrected() {
        let body = json!({
            "api_key": "edk_x",
            "sent_at": "2026-11-26T22:00:10.000Z",
            "batch": [
                {"event": "signed up", "distinct_id": "u1", "uuid": "a", "timestamp": "2026-11-26T22:00:00.000Z",
                 "properties": {"plan": "pro", "$os": "Mac OS X", "$set": {"email": "u1@x.example"}}},
                {"event": "buy", "distinct_id": "u1", "uuid": "b", "timestamp": "2026-11-26T22:00:00+00:00",
                 "properties": {"$device_id": "dev-9", "revenue": "9.99", "currency": "EUR", "$ignore_sent_at": true}},
                {"event": "$identify", "distinct_id": "u2", "$set": {"name": "Ann"}, "$set_once": {"first": "x"}},
                {"distinct_id": "no event name"},
            ]
        });
        // The edge received it 10 s after the client says it sent it: client clock 10 s behind... or not.
        let received = parse_time(&json!("2026-11-26T22:00:15.000Z")).unwrap();
        let m = map(body.to_string().as_bytes(), received, 32 << 10).unwrap();
        assert_eq!(m.key.as_deref(), Some("edk_x"));
        assert_eq!(m.rejected.len(), 1);
        let [a, b, c] = &m.events[..] else { panic!("{:?}", m.events) };
        assert_eq!(a["event_type"], "track");
        assert_eq!(a["event_timestamp"], parse_time(&json!("2026-11-26T22:00:05.000Z")).unwrap(), "+5 s skew");
        assert_eq!((a["platform"].as_str(), a["device_id"].as_str()), (Some("mac os x"), Some("u1")));
        assert_eq!(a["user_properties"]["email"], "u1@x.example");
        assert!(a["properties"].get("$set").is_none());
        assert_eq!(a["user_id"], "u1");
        assert_eq!(
            (b["event_type"].as_str(), b["revenue"].as_f64(), b["currency"].as_str()),
            (Some("purchase"), Some(9.99), Some("EUR"))
        );
        assert_eq!(b["device_id"], "dev-9");
        assert_eq!(b["event_timestamp"], parse_time(&json!("2026-11-26T22:00:00Z")).unwrap(), "$ignore_sent_at");
        assert_eq!((c["event_type"].as_str(), c["user_properties"]["name"].as_str()), (Some("identify"), Some("Ann")));
        assert_eq!(c["user_properties"]["$set_once"]["first"], "x");
        assert!(c.get("event_timestamp").is_none(), "no timestamp: the receive time");
    }
}
