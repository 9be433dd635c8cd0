//! Body → event values.
//!
//! `POST /v1/events` takes one JSON object. `POST /v1/events/batch` takes
//! `{"events":[…], "sent_at":…}`, a bare array, or NDJSON (one object per
//! line; a bad line rejects that event, not the batch). Invalid JSON as a
//! whole is a 400; more events than allowed is a 413 before any is validated.

use simd_json::prelude::*;
use simd_json::{BorrowedValue, Buffers};

use super::validate::parse_timestamp_ms;
use super::Rejection;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Single,
    Batch,
    Ndjson,
}

pub struct ParsedBody<'b> {
    /// One entry per event, in request order.
    pub events: Vec<Result<BorrowedValue<'b>, Rejection>>,
    /// The batch's `sent_at` in epoch milliseconds, for clock-skew correction.
    pub sent_at_ms: Option<i64>,
}

pub fn parse_body<'b>(
    body: &'b mut [u8],
    shape: Shape,
    max_events: usize,
    buffers: &mut Buffers,
) -> Result<ParsedBody<'b>, ApiError> {
    match shape {
        Shape::Ndjson => parse_ndjson(body, max_events, buffers),
        Shape::Single | Shape::Batch => {
            let value = simd_json::to_borrowed_value_with_buffers(body, buffers)
                .map_err(|e| ApiError::bad_request("invalid_json", format!("Invalid JSON: {e}")))?;
            if shape == Shape::Single {
                if !value.is_object() {
                    return Err(ApiError::bad_request("invalid_body", "Expected one JSON object"));
                }
                return Ok(ParsedBody { events: vec![Ok(value)], sent_at_ms: None });
            }
            let (items, sent_at_ms) = match value {
                BorrowedValue::Array(items) => (*items, None),
                BorrowedValue::Object(mut obj) => {
                    let sent_at_ms = match obj.remove("sent_at") {
                        None | Some(BorrowedValue::Static(simd_json::StaticNode::Null)) => None,
                        Some(v) => Some(parse_timestamp_ms(&v).ok_or_else(|| {
                            ApiError::bad_request("invalid_sent_at", "sent_at must be RFC 3339 or epoch milliseconds")
                        })?),
                    };
                    match obj.remove("events") {
                        Some(BorrowedValue::Array(items)) => (*items, sent_at_ms),
                        _ => {
                            return Err(ApiError::bad_request(
                                "invalid_body",
                                "Expected {\"events\":[...]} or a JSON array",
                            ))
                        }
                    }
                }
                _ => return Err(ApiError::bad_request("invalid_body", "Expected {\"events\":[...]} or a JSON array")),
            };
            if items.len() > max_events {
                return Err(ApiError::too_many_events(max_events));
            }
            if items.is_empty() {
                return Err(ApiError::bad_request("empty_batch", "The batch holds no events"));
            }
            Ok(ParsedBody { events: items.into_iter().map(Ok).collect(), sent_at_ms })
        }
    }
}

fn parse_ndjson<'b>(body: &'b mut [u8], max_events: usize, buffers: &mut Buffers) -> Result<ParsedBody<'b>, ApiError> {
    let mut events = Vec::new();
    for line in body.split_mut(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if events.len() == max_events {
            return Err(ApiError::too_many_events(max_events));
        }
        events.push(match simd_json::to_borrowed_value_with_buffers(line, buffers) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(Rejection::new("invalid_event", "Each NDJSON line must be a JSON object")),
            Err(e) => Err(Rejection::new("invalid_json", format!("Invalid JSON: {e}"))),
        });
    }
    if events.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "The batch holds no events"));
    }
    Ok(ParsedBody { events, sent_at_ms: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, shape: Shape) -> Result<(usize, usize, Option<i64>), ApiError> {
        let mut buf = body.as_bytes().to_vec();
        let mut buffers = Buffers::default();
        let p = parse_body(&mut buf, shape, 3, &mut buffers)?;
        let ok = p.events.iter().filter(|e| e.is_ok()).count();
        Ok((ok, p.events.len() - ok, p.sent_at_ms))
    }

    #[test]
    fn shapes() {
        assert_eq!(parse(r#"{"event_type":"a"}"#, Shape::Single).unwrap(), (1, 0, None));
        assert_eq!(parse(r#"[{"a":1},{"b":2}]"#, Shape::Batch).unwrap(), (2, 0, None));
        assert_eq!(
            parse(r#"{"events":[{"a":1}],"sent_at":1700000000000}"#, Shape::Batch).unwrap(),
            (1, 0, Some(1_700_000_000_000))
        );
        assert_eq!(parse("{\"a\":1}\n\n{bad\n[1]\n", Shape::Ndjson).unwrap(), (1, 2, None));
    }

    #[test]
    fn whole_body_errors() {
        assert_eq!(parse("{nope", Shape::Batch).unwrap_err().code, "invalid_json");
        assert_eq!(parse("[1,2", Shape::Single).unwrap_err().code, "invalid_json");
        assert_eq!(parse("[]", Shape::Single).unwrap_err().code, "invalid_body");
        assert_eq!(parse(r#"{"events":3}"#, Shape::Batch).unwrap_err().code, "invalid_body");
        assert_eq!(parse("[]", Shape::Batch).unwrap_err().code, "empty_batch");
        assert_eq!(parse("[{},{},{},{}]", Shape::Batch).unwrap_err().status, 413);
        assert_eq!(parse("{}\n{}\n{}\n{}\n", Shape::Ndjson).unwrap_err().status, 413);
        assert_eq!(
            parse(r#"{"events":[{}],"sent_at":"yesterday"}"#, Shape::Batch).unwrap_err().code,
            "invalid_sent_at"
        );
    }
}
