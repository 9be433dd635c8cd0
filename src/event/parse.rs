//! Body → event values.
//!
//! `POST /v1/events` takes one JSON object. `POST /v1/events/batch` takes
//! `{"events":[…], "sent_at":…}`, a bare array, or NDJSON (one object per
//! line; a bad line rejects that event, not the batch). Invalid JSON as a
//! whole is a 400; more events than allowed is a 413 before any is validated.
//!
//! Parsing produces simd-json tapes: flat node arrays over the (unescaped in
//! place) body, so no per-object maps are allocated; events are views into them.

use simd_json::prelude::*;
use simd_json::value::tape::Value;
use simd_json::{Buffers, Tape};
use smallvec::{smallvec, SmallVec};

use super::validate::parse_timestamp_ms;
use super::Rejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Single,
    Batch,
    Ndjson,
}

/// A thread's parsing buffers, kept between requests: simd-json's scratch and a spare tape,
/// so a JSON body is parsed without allocating either.
#[derive(Default)]
pub struct JsonScratch {
    buffers: Buffers,
    spare: Option<Tape<'static>>,
}

pub struct ParsedBody<'b> {
    /// One tape for a JSON body (inline: no allocation); one per line for NDJSON.
    tapes: SmallVec<[Result<Tape<'b>, Rejection>; 1]>,
    /// `tapes[0]` holds an array of events (bare, or under `"events"`).
    batch: bool,
    len: usize,
    /// The batch's `sent_at` in epoch milliseconds, for clock-skew correction.
    pub sent_at_ms: Option<i64>,
    /// The body held no backslash, so no string in it had an escape: as simd-json refuses raw
    /// quotes and control characters in strings, none needs escaping when written back.
    pub plain_strings: bool,
}

impl<'b> ParsedBody<'b> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `each(index, event)` for every event in request order.
    pub fn for_each(&self, mut each: impl FnMut(usize, Result<Value<'_, 'b>, &Rejection>)) {
        if self.batch {
            if let Some(Ok(tape)) = self.tapes.first() {
                if let Some(events) = events_array(tape.as_value()) {
                    for (i, event) in events.iter().enumerate() {
                        each(i, Ok(event));
                    }
                }
            }
            return;
        }
        for (i, tape) in self.tapes.iter().enumerate() {
            each(i, tape.as_ref().map(|t| t.as_value()));
        }
    }

    /// Gives a JSON body's tape back to `scratch` for the next request.
    pub fn recycle(self, scratch: &mut JsonScratch) {
        if let Some(Ok(tape)) = self.tapes.into_iter().next() {
            scratch.spare = Some(tape.reset());
        }
    }
}

/// JSON may escape UTF-16 surrogates that make no pair (`"\ud800"`), which UTF-8 cannot hold;
/// simd-json would store some of them as U+0000 (so distinct ids would collide) and refuse
/// others. Every such escape becomes `\ufffd` in place (both are six bytes): stored as U+FFFD,
/// the replacement character, whatever the escape and wherever it is. Returns whether the
/// body holds any backslash at all.
pub fn replace_lone_surrogates(body: &mut [u8]) -> bool {
    fn escape_at(body: &[u8], at: usize) -> Option<u32> {
        let hex = body.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    const HIGH: std::ops::Range<u32> = 0xd800..0xdc00;
    const LOW: std::ops::Range<u32> = 0xdc00..0xe000;
    let mut i = 0;
    let mut any = false;
    while let Some(found) = memchr::memchr(b'\\', &body[i..]) {
        any = true;
        let at = i + found;
        match escape_at(body, at) {
            Some(cp) if HIGH.contains(&cp) => {
                if escape_at(body, at + 6).is_some_and(|low| LOW.contains(&low)) {
                    i = at + 12;
                    continue;
                }
                body[at..at + 6].copy_from_slice(b"\\ufffd");
                i = at + 6;
            }
            Some(cp) if LOW.contains(&cp) => {
                body[at..at + 6].copy_from_slice(b"\\ufffd");
                i = at + 6;
            }
            Some(_) => i = at + 6,
            // Any other escape is two bytes; skipping both keeps `\\` from pairing with what follows.
            None => i = at + 2,
        }
    }
    any
}

/// The events of a batch body: a bare array, or the `events` member of an object.
fn events_array<'t, 'i>(root: Value<'t, 'i>) -> Option<simd_json::value::tape::Array<'t, 'i>> {
    match root.as_array() {
        Some(a) => Some(a),
        None => root.as_object()?.get("events")?.as_array(),
    }
}

/// Why a body is not events at all (one bad event in a batch is a [`Rejection`] instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    InvalidJson(String),
    /// The single-event route got something else than one object.
    NotAnObject,
    /// Neither `{"events": [...]}` nor an array.
    NotABatch,
    InvalidSentAt,
    TooManyEvents {
        limit: usize,
    },
    EmptyBatch,
}

pub fn parse_body<'b>(
    body: &'b mut [u8],
    shape: Shape,
    max_events: usize,
    scratch: &mut JsonScratch,
) -> Result<ParsedBody<'b>, ParseError> {
    let plain_strings = !replace_lone_surrogates(body);
    if shape == Shape::Ndjson {
        return parse_ndjson(body, max_events, &mut scratch.buffers, plain_strings);
    }
    let mut tape = scratch.spare.take().map_or_else(Tape::null, Tape::reset);
    simd_json::fill_tape(body, &mut scratch.buffers, &mut tape).map_err(|e| ParseError::InvalidJson(e.to_string()))?;
    let root = tape.as_value();
    if shape == Shape::Single {
        if !root.is_object() {
            return Err(ParseError::NotAnObject);
        }
        return Ok(ParsedBody { tapes: smallvec![Ok(tape)], batch: false, len: 1, sent_at_ms: None, plain_strings });
    }
    let sent_at_ms = match root.as_object().and_then(|o| o.get("sent_at")) {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) => Some(parse_timestamp_ms(v).ok_or(ParseError::InvalidSentAt)?),
    };
    let len = events_array(root).ok_or(ParseError::NotABatch)?.len();
    if len > max_events {
        return Err(ParseError::TooManyEvents { limit: max_events });
    }
    if len == 0 {
        return Err(ParseError::EmptyBatch);
    }
    Ok(ParsedBody { tapes: smallvec![Ok(tape)], batch: true, len, sent_at_ms, plain_strings })
}

fn parse_ndjson<'b>(
    body: &'b mut [u8],
    max_events: usize,
    buffers: &mut Buffers,
    plain_strings: bool,
) -> Result<ParsedBody<'b>, ParseError> {
    let mut tapes = SmallVec::new();
    for line in body.split_mut(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if tapes.len() == max_events {
            return Err(ParseError::TooManyEvents { limit: max_events });
        }
        tapes.push(match simd_json::to_tape_with_buffers(line, buffers) {
            Ok(t) if t.as_value().is_object() => Ok(t),
            Ok(_) => Err(Rejection::new("invalid_event", "Each NDJSON line must be a JSON object")),
            Err(e) => Err(Rejection::new("invalid_json", format!("Invalid JSON: {e}"))),
        });
    }
    if tapes.is_empty() {
        return Err(ParseError::EmptyBatch);
    }
    let len = tapes.len();
    Ok(ParsedBody { tapes, batch: false, len, sent_at_ms: None, plain_strings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, shape: Shape) -> Result<(usize, usize, Option<i64>), ParseError> {
        let mut buf = body.as_bytes().to_vec();
        let mut scratch = JsonScratch::default();
        let p = parse_body(&mut buf, shape, 3, &mut scratch)?;
        let (mut ok, mut bad) = (0, 0);
        p.for_each(|_, e| if e.is_ok() { ok += 1 } else { bad += 1 });
        assert_eq!(ok + bad, p.len());
        Ok((ok, bad, p.sent_at_ms))
    }

    #[test]
    fn a_recycled_tape_parses_the_next_body_the_same() {
        let mut scratch = JsonScratch::default();
        let mut first = br#"{"events":[{"a":1},{"b":2}]}"#.to_vec();
        let p = parse_body(&mut first, Shape::Batch, 3, &mut scratch).unwrap();
        assert_eq!(p.len(), 2);
        p.recycle(&mut scratch);
        assert!(scratch.spare.is_some());
        let mut second = br#"{"event_type":"t"}"#.to_vec();
        let p = parse_body(&mut second, Shape::Single, 3, &mut scratch).unwrap();
        let mut seen = Vec::new();
        p.for_each(|_, e| {
            let event = e.unwrap();
            let value = event.get("event_type");
            seen.push(value.and_then(|v| v.as_str().map(str::to_string)));
        });
        assert_eq!(seen, [Some("t".to_string())]);
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
        use ParseError as E;
        assert!(matches!(parse("{nope", Shape::Batch), Err(E::InvalidJson(_))));
        assert!(matches!(parse("[1,2", Shape::Single), Err(E::InvalidJson(_))));
        assert_eq!(parse("[]", Shape::Single), Err(E::NotAnObject));
        assert_eq!(parse(r#"{"events":3}"#, Shape::Batch), Err(E::NotABatch));
        assert_eq!(parse("[]", Shape::Batch), Err(E::EmptyBatch));
        assert_eq!(parse("[{},{},{},{}]", Shape::Batch), Err(E::TooManyEvents { limit: 3 }));
        assert_eq!(parse("{}\n{}\n{}\n{}\n", Shape::Ndjson), Err(E::TooManyEvents { limit: 3 }));
        assert_eq!(parse(r#"{"events":[{}],"sent_at":"yesterday"}"#, Shape::Batch), Err(E::InvalidSentAt));
    }

    #[test]
    fn lone_surrogates_become_the_replacement_character() {
        let fix = |s: &str| {
            let mut b = s.as_bytes().to_vec();
            replace_lone_surrogates(&mut b);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(fix(r#"{"d":"\ud800"}"#), r#"{"d":"\ufffd"}"#);
        assert_eq!(fix(r#"{"d":"a\udc00b"}"#), r#"{"d":"a\ufffdb"}"#);
        assert_eq!(fix(r#"{"d":"\ud800\ue000"}"#), r#"{"d":"\ufffd\ue000"}"#, "a high followed by a non-low");
        assert_eq!(fix(r#"{"d":"\ud83d\ude00"}"#), r#"{"d":"\ud83d\ude00"}"#, "a real pair is kept");
        assert_eq!(fix(r#"{"d":"\\ud800"}"#), r#"{"d":"\\ud800"}"#, "an escaped backslash, then text");
        // Two lone surrogates that differ are stored the same way, not as two different ids nor as NUL.
        let mut a = br#"{"device_id":"x\ud800"}"#.to_vec();
        replace_lone_surrogates(&mut a);
        let tape = simd_json::to_tape(&mut a).unwrap();
        assert_eq!(tape.as_value().get("device_id").unwrap().as_str(), Some("x\u{fffd}"));
    }
}
