//! Segment's batch, which RudderStack's SDKs speak too (`POST /v1/batch`):
//! `{"batch":[{"type","messageId","userId","anonymousId","event","name",
//! "properties","traits","context","timestamp","originalTimestamp","sentAt"}],
//! "writeKey"?,"sentAt"}` → the edge's events (WIRE.md §5). An explicit
//! `timestamp` is used as given; `originalTimestamp` is corrected with the
//! message's (else the batch's) `sentAt`; no timestamp is the receive time.

use serde_json::{json, Map, Value};

use super::{event_id, number, parse_json, parse_time, text, with_context, Mapped};
use crate::error::Error;
use crate::event::parse::ParseError;
use crate::event::Rejection;

/// `context` keys that become the edge's own fields; the rest is kept under `$context`.
const MAPPED_CONTEXT: &[&str] = &["device", "os", "app", "ip", "userAgent", "traits", "sessionId"];

pub fn map(raw: &[u8], received_ms: i64, max_properties: usize) -> Result<Mapped, Error> {
    let body = parse_json(raw)?;
    let key = text(body.get("writeKey"));
    let batch = body.get("batch").and_then(Value::as_array).ok_or(Error::Parse(ParseError::NotABatch))?;
    let batch_sent = body.get("sentAt").and_then(parse_time);
    Ok(map_messages(batch, key, received_ms, batch_sent, max_properties))
}

/// A single-message route (`/v1/track`, `/v1/identify`, …): one message, its type the route's
/// unless it names one.
pub fn map_single(raw: &[u8], kind: &str, received_ms: i64, max_properties: usize) -> Result<Mapped, Error> {
    let mut message = parse_json(raw)?;
    let object = message.as_object_mut().ok_or(Error::Parse(ParseError::NotAnObject))?;
    object.entry("type").or_insert_with(|| Value::from(kind));
    let key = text(object.get("writeKey"));
    let sent = object.get("sentAt").and_then(parse_time);
    Ok(map_messages(std::slice::from_ref(&message), key, received_ms, sent, max_properties))
}

fn map_messages(
    batch: &[Value],
    key: Option<String>,
    received_ms: i64,
    batch_sent: Option<i64>,
    max_properties: usize,
) -> Mapped {
    let mut mapped = Mapped {
        events: Vec::with_capacity(batch.len()),
        rejected: Vec::new(),
        ids: Vec::with_capacity(batch.len()),
        rejected_ids: Vec::new(),
        key,
    };
    for (index, message) in batch.iter().enumerate() {
        let id = text(message.get("messageId"));
        match event(message, received_ms, batch_sent, max_properties) {
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
    mapped
}

fn event(m: &Value, received_ms: i64, batch_sent: Option<i64>, max_properties: usize) -> Result<Value, Rejection> {
    let m = m.as_object().ok_or_else(|| Rejection::new("invalid_event", "Each message must be a JSON object"))?;
    let kind = text(m.get("type")).unwrap_or_else(|| "track".into()).to_lowercase();
    let context = m.get("context").and_then(Value::as_object).cloned().unwrap_or_default();
    let device = context.get("device").and_then(Value::as_object);
    let mut props: Map<String, Value> = m.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let user_id = text(m.get("userId"));
    let device_id = device
        .and_then(|d| text(d.get("id")))
        .or_else(|| text(m.get("anonymousId")))
        .or_else(|| user_id.clone())
        .or_else(|| text(m.get("previousId")))
        .ok_or_else(|| Rejection::new("missing_field", "anonymousId or userId is required"))?;

    let event_name = match kind.as_str() {
        "track" => text(m.get("event")).ok_or_else(|| Rejection::new("missing_field", "event is required"))?,
        "page" | "screen" => text(m.get("name")).unwrap_or_else(|| kind.clone()),
        _ => kind.clone(),
    };
    let revenue = number(props.get("revenue"))
        .or_else(|| (event_name == "Order Completed").then(|| number(props.get("total"))).flatten());
    let event_type = match (kind.as_str(), event_name.as_str()) {
        ("track", "Application Installed") => "install".to_string(),
        ("track", "Application Opened") => "session".to_string(),
        ("track", _) if revenue.is_some_and(|r| r > 0.0) => "purchase".to_string(),
        _ => kind.clone(),
    };
    let timestamp = match m.get("timestamp").and_then(parse_time) {
        Some(t) => Some(t),
        None => m.get("originalTimestamp").and_then(parse_time).map(|t| {
            let sent = m.get("sentAt").and_then(parse_time).or(batch_sent);
            t + sent.map_or(0, |s| received_ms - s)
        }),
    };

    match kind.as_str() {
        "group" => {
            if let Some(group) = text(m.get("groupId")) {
                props.insert("group_id".into(), json!(group));
            }
            if let Some(traits) = m.get("traits").filter(|t| t.is_object()) {
                props.insert("group_traits".into(), traits.clone());
            }
        }
        "alias" => {
            if let Some(previous) = text(m.get("previousId")) {
                props.insert("previous_id".into(), json!(previous));
            }
        }
        "page" | "screen" => {
            if let Some(category) = text(m.get("category")) {
                props.insert("category".into(), json!(category));
            }
        }
        _ => {}
    }

    let mut e = Map::new();
    if let Some(id) = text(m.get("messageId")) {
        e.insert("event_id".into(), json!(event_id(&id)));
    }
    e.insert("event_type".into(), json!(event_type));
    e.insert("event_name".into(), json!(event_name));
    e.insert("device_id".into(), json!(device_id));
    if let Some(user_id) = &user_id {
        e.insert("user_id".into(), json!(user_id));
    }
    if let Some(version) = context.get("app").and_then(|a| text(a.get("version"))) {
        e.insert("app_version".into(), json!(version));
    }
    if let Some(t) = timestamp {
        e.insert("event_timestamp".into(), json!(t));
    }
    if let Some(session) = text(context.get("sessionId")) {
        e.insert("session_id".into(), json!(session));
    }
    let os = context.get("os").and_then(|o| text(o.get("name")));
    let platform = device.and_then(|d| text(d.get("type"))).or_else(|| os.clone()).or_else(|| text(m.get("channel")));
    if let Some(p) = &platform {
        e.insert("platform".into(), json!(p.to_lowercase()));
    }
    if let Some(r) = revenue {
        e.insert("revenue".into(), json!(r));
        e.insert("currency".into(), json!(text(props.get("currency")).unwrap_or_else(|| "USD".into())));
    }
    let apple =
        platform.iter().chain(os.iter()).any(|p| matches!(p.to_lowercase().as_str(), "ios" | "ipados" | "tvos"));
    let android = platform.iter().chain(os.iter()).any(|p| p.eq_ignore_ascii_case("android"));
    if let Some(d) = device {
        let tracking = d.get("adTrackingEnabled").and_then(Value::as_bool) != Some(false);
        if let Some(ad) = text(d.get("advertisingId")).filter(|_| tracking) {
            if apple {
                e.insert("idfa".into(), json!(ad));
            } else if android {
                e.insert("gaid".into(), json!(ad));
            }
        }
        if let Some(id) = text(d.get("id")).filter(|_| apple) {
            e.insert("idfv".into(), json!(id));
        }
    }
    if let Some(ip) = text(context.get("ip")) {
        e.insert("ip".into(), json!(ip));
    }
    if let Some(ua) = text(context.get("userAgent")) {
        e.insert("user_agent".into(), json!(ua));
    }
    if kind == "identify" {
        let traits = m.get("traits").filter(|t| t.as_object().is_some_and(|o| !o.is_empty()));
        if let Some(traits) = traits.or_else(|| context.get("traits")).filter(|t| t.is_object()) {
            e.insert("user_properties".into(), traits.clone());
        }
    }
    let rest: Map<String, Value> = context.into_iter().filter(|(k, _)| !MAPPED_CONTEXT.contains(&k.as_str())).collect();
    e.insert("properties".into(), with_context(props, Some(Value::Object(rest)), max_properties));
    Ok(Value::Object(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_maps_and_mobile_context_becomes_fields() {
        let body = json!({
            "writeKey": "edk_w",
            "sentAt": "2026-11-26T22:00:10Z",
            "batch": [
                {"type": "track", "event": "Order Completed", "messageId": "m1", "anonymousId": "anon",
                 "properties": {"total": 30, "currency": "GBP"}, "timestamp": "2026-11-26T21:00:00Z",
                 "context": {"device": {"id": "idfv-1", "type": "ios", "advertisingId": "ad-1"}, "os": {"name": "iOS"},
                             "app": {"version": "4.2"}, "ip": "203.0.113.9", "locale": "en-GB"}},
                {"type": "identify", "userId": "u1", "messageId": "m2", "context": {"traits": {"plan": "pro"}}},
                {"type": "alias", "userId": "u1", "previousId": "anon", "messageId": "m3"},
                {"type": "page", "name": "Home", "category": "Docs", "anonymousId": "a2", "messageId": "m4",
                 "originalTimestamp": "2026-11-26T22:00:00Z"},
                {"type": "group", "groupId": "g1", "traits": {"size": 5}, "userId": "u1", "messageId": "m5"},
                {"type": "track", "event": "x"},
            ]
        });
        let received = parse_time(&json!("2026-11-26T22:00:20Z")).unwrap();
        let m = map(body.to_string().as_bytes(), received, 32 << 10).unwrap();
        assert_eq!((m.key.as_deref(), m.rejected.len()), (Some("edk_w"), 1), "no id at all: refused");
        let [order, identify, alias, page, group] = &m.events[..] else { panic!("{:?}", m.events) };
        assert_eq!(
            (order["event_type"].as_str(), order["revenue"].as_f64(), order["currency"].as_str()),
            (Some("purchase"), Some(30.0), Some("GBP"))
        );
        assert_eq!(
            (order["idfa"].as_str(), order["idfv"].as_str(), order["platform"].as_str()),
            (Some("ad-1"), Some("idfv-1"), Some("ios"))
        );
        assert_eq!(order["device_id"], "idfv-1");
        assert_eq!(order["event_timestamp"], parse_time(&json!("2026-11-26T21:00:00Z")).unwrap(), "as given");
        assert_eq!(
            (order["app_version"].as_str(), order["properties"]["$context"]["locale"].as_str()),
            (Some("4.2"), Some("en-GB"))
        );
        assert_eq!(
            (identify["event_type"].as_str(), identify["user_properties"]["plan"].as_str()),
            (Some("identify"), Some("pro"))
        );
        assert_eq!(
            (alias["properties"]["previous_id"].as_str(), alias["device_id"].as_str()),
            (Some("anon"), Some("u1"))
        );
        assert_eq!(
            (page["event_name"].as_str(), page["properties"]["category"].as_str()),
            (Some("Home"), Some("Docs"))
        );
        assert_eq!(page["event_timestamp"], parse_time(&json!("2026-11-26T22:00:10Z")).unwrap(), "+10 s from sentAt");
        assert_eq!(
            (group["properties"]["group_id"].as_str(), group["properties"]["group_traits"]["size"].as_i64()),
            (Some("g1"), Some(5))
        );
    }
}
