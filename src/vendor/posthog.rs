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
use crate::http::budget::Lease;

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

/// posthog-js's and the mobile SDKs' capture routes (`/e/`, `/capture/`, `/i/v0/e/`,
/// `/track/`, `/engage/`): one event, an array of them or `{"batch":[…]}`, as JSON or as a
/// form's `data=` in base64 or lz-string (`compression=lz64`); the key in `api_key`, `token`
/// or each event's `properties.token`; `distinct_id` may sit in the properties.
pub fn map_capture(
    raw: &[u8],
    query: &str,
    received_ms: i64,
    max_properties: usize,
    max_bytes: usize,
    lease: &mut Lease,
) -> Result<Mapped, Error> {
    let param = |text: &str, name: &str| {
        text.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| form_decode(v)))
    };
    let body_text = std::str::from_utf8(raw).map_err(|_| invalid_body("the body is not UTF-8"))?;
    let compression = param(query, "compression").or_else(|| param(body_text, "compression"));
    let json_text = match param(body_text, "data").filter(|_| !body_text.trim_start().starts_with(['{', '['])) {
        None => body_text.to_string(),
        Some(data) => match compression.as_deref() {
            Some("lz64") => {
                // Decompression's working memory, charged before it is used; then the text's tree.
                let cap = max_bytes.min(data.len().saturating_mul(LZ_MAX_RATIO));
                lease.grow(cap)?;
                let text = super::lz::decompress_from_base64(&data, cap)
                    .ok_or_else(|| invalid_body("data is not lz-string base64 (or expands too far)"))?;
                lease.grow(text.len() * super::MAP_BYTES_PER_BODY_BYTE)?;
                text
            }
            _ => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|_| invalid_body("data is not base64"))?;
                String::from_utf8(bytes).map_err(|_| invalid_body("data is not UTF-8"))?
            }
        },
    };
    let body = parse_json(json_text.as_bytes())?;
    let mut messages = match &body {
        Value::Array(events) => events.clone(),
        Value::Object(ref o) if o.get("batch").is_some_and(Value::is_array) => {
            o["batch"].as_array().cloned().unwrap_or_default()
        }
        Value::Object(_) => vec![body.clone()],
        _ => return Err(Error::Parse(ParseError::NotABatch)),
    };
    let key = text_of(&body, "api_key")
        .or_else(|| text_of(&body, "token"))
        .or_else(|| messages.iter().find_map(|m| m.get("properties").and_then(|p| text(p.get("token")))));
    for m in &mut messages {
        if let Some(o) = m.as_object_mut() {
            if o.get("distinct_id").is_none() {
                if let Some(id) = o.get("properties").and_then(|p| p.get("distinct_id")).cloned() {
                    o.insert("distinct_id".into(), id);
                }
            }
            if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
                props.remove("token");
            }
        }
    }
    let skew = body.get("sent_at").and_then(parse_time).map(|sent| received_ms - sent);
    map_batch(&json!({ "batch": messages }), key, skew, max_properties)
}

/// Bytes lz-string decompression may take per byte of its input (JSON compresses a few times;
/// more than this is not an event batch).
const LZ_MAX_RATIO: usize = 64;

fn text_of(v: &Value, key: &str) -> Option<String> {
    v.as_object().and_then(|o| text(o.get(key)))
}

fn invalid_body(why: &'static str) -> Error {
    Error::Parse(ParseError::InvalidJson(why.into()))
}

/// `application/x-www-form-urlencoded` value decoding: `+` is a space, `%XX` a byte.
fn form_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod capture_tests {
    use super::*;

    fn lease() -> Lease {
        crate::http::budget::MemoryBudget::new(64 << 20).lease()
    }

    #[test]
    fn posthog_js_bodies_in_every_encoding_map_alike() {
        use base64::Engine as _;
        let events = r#"[{"event":"$pageview","properties":{"distinct_id":"u1","token":"edk_x","$current_url":"https://a.example/ü","uuid":"1"}}]"#;
        let lz = "NobwRApgbhB2AuYBcYAkAHAhgc2gSwgHcwAaMdAJwHt0IL4CBnZcAEz0YdgGN4B9PK2RgArgEZSYeFQDWcYRFYy+AD0mpuIihTj8tAG2EALePHSMkAekuYAdBBWYAtun0RLAH8kiRg4RIBfAIBdIA===";
        let b64 = base64::engine::general_purpose::STANDARD.encode(events);
        let percent = |s: &str| s.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        let bodies = [
            (events.to_string(), ""),
            (format!("data={}", percent(lz)), "compression=lz64"),
            (format!("data={}&compression=lz64", percent(lz)), ""),
            (format!("data={}", percent(&b64)), ""),
        ];
        for (body, query) in bodies {
            let m = map_capture(body.as_bytes(), query, 0, 32 << 10, 1 << 20, &mut lease())
                .unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(m.key.as_deref(), Some("edk_x"), "{body}");
            assert_eq!(m.events.len(), 1);
            let e = &m.events[0];
            assert_eq!((e["event_type"].as_str(), e["device_id"].as_str()), (Some("page"), Some("u1")));
            assert!(e["properties"].get("token").is_none(), "the key is not stored as a property");
        }
        let single = r#"{"event":"x","properties":{"distinct_id":"u2"},"api_key":"edk_y"}"#;
        let m = map_capture(single.as_bytes(), "", 0, 32 << 10, 1 << 20, &mut lease()).unwrap();
        assert_eq!((m.key.as_deref(), m.events.len()), (Some("edk_y"), 1));
        assert!(map_capture(b"data=%%%", "compression=lz64", 0, 1024, 1024, &mut lease()).is_err());
    }
}
