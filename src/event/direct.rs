//! The common body straight to rows, in one pass over its bytes.
//!
//! Most bodies are well-formed JSON without a single backslash, and every event in them is
//! valid. For those, this reads each event's fields where they lie in the body and hands them
//! to the same rules and the same row writer as the tape path ([`super::parse`], then
//! [`super::validate`]), without building a tape first: parsing and validating were 44 % of a
//! batch event's CPU.
//!
//! It only ever answers "these rows" or "not mine". Anything else (an escape, NDJSON, JSON it
//! finds invalid or unusual, a refused event, a number it cannot prove simd-json reads the
//! same) makes it decline, and the request takes the tape path from the start: every refusal,
//! every error message and every row of a body it declines is the tape path's. The tests hold
//! the rows it writes to the tape path's, byte for byte. A declined body costs one more pass at
//! most, and bodies are bounded.

use smallvec::SmallVec;

use super::fields::{FieldValue, Fields};
use super::parse::Shape;
use super::validate::{float_ms, rfc3339_ms, EventContext, Validator};
use super::{EventSummary, RowBlock};

/// What [`transcode`] took from a body.
#[derive(Debug, PartialEq, Eq)]
pub struct Transcoded {
    pub events: usize,
    /// The batch's `sent_at`, as the tape path reads it.
    pub sent_at_ms: Option<i64>,
}

/// Appends the rows of every event of `body` to `out` and their summaries to `summaries`, or
/// declines (`None`) and leaves both as they were. `ctx` gives the request's context; its
/// `sent_at_ms`, `skew_ms` and `plain_strings` are this body's own. `scratch` is reused for
/// the property objects.
pub fn transcode(
    body: &[u8],
    shape: Shape,
    validator: &Validator,
    ctx: &EventContext<'_>,
    scratch: &mut Vec<u8>,
    out: &mut RowBlock,
    summaries: &mut SmallVec<[EventSummary; 1]>,
) -> Option<Transcoded> {
    let (rows, data, events) = (out.rows, out.data.len(), summaries.len());
    let taken = Transcoder::new(body, validator, ctx, scratch, out, summaries)?.body(shape);
    if taken.is_none() {
        out.rows = rows;
        out.data.truncate(data);
        summaries.truncate(events);
    }
    taken
}

/// A field's value as it lies in the body. Containers are only read for the property objects,
/// rewritten into the scratch buffer: the rules refuse one in any other field.
#[derive(Debug, Clone, Copy)]
enum Raw<'b> {
    Null,
    Str(&'b str),
    Int(i64),
    Float(f64),
    // Two variants rather than a `bool`: a byte of payload made copies of the value write and
    // read back parts of different sizes, and loads waiting on such stores were half of
    // `event`'s own time (`perf annotate`).
    True,
    False,
    /// A property object's compact text: `scratch[start..end]`.
    Object(usize, usize),
}

impl<'b> FieldValue<'b> for Raw<'b> {
    #[inline]
    fn is_null(self) -> bool {
        matches!(self, Raw::Null)
    }

    #[inline]
    fn string(self) -> Option<&'b str> {
        match self {
            Raw::Str(s) => Some(s),
            _ => None,
        }
    }

    #[inline]
    fn number(self) -> Option<f64> {
        match self {
            Raw::Int(i) => Some(i as f64),
            Raw::Float(f) => Some(f),
            _ => None,
        }
    }

    fn timestamp_ms(self) -> Option<i64> {
        match self {
            Raw::Str(s) => rfc3339_ms(s),
            Raw::Int(i) => Some(i),
            Raw::Float(f) => float_ms(f),
            _ => None,
        }
    }
}

/// Deeper than this, an ignored value is left to the tape path (which sets its own limits):
/// the skipping recurses.
const MAX_SKIP_DEPTH: usize = 64;

/// Integers of up to 18 digits fit an `i64` whatever they are, and simd-json reads them as
/// exactly that integer; longer ones it may read as a float.
const MAX_INT_DIGITS: usize = 18;

/// Exponents of up to 3 digits cover every finite `f64`; simd-json refuses some longer ones
/// that the standard library reads as 0 or infinity.
const MAX_EXPONENT_DIGITS: usize = 3;

struct Transcoder<'b, 'c, 'o> {
    /// The body, checked to be UTF-8.
    text: &'b str,
    quotes: Quotes,
    at: usize,
    validator: &'o Validator,
    ctx: EventContext<'c>,
    scratch: &'o mut Vec<u8>,
    out: &'o mut RowBlock,
    summaries: &'o mut SmallVec<[EventSummary; 1]>,
}

impl<'b, 'c, 'o> Transcoder<'b, 'c, 'o> {
    fn new(
        body: &'b [u8],
        validator: &'o Validator,
        ctx: &EventContext<'c>,
        scratch: &'o mut Vec<u8>,
        out: &'o mut RowBlock,
        summaries: &'o mut SmallVec<[EventSummary; 1]>,
    ) -> Option<Self> {
        // Without a backslash no string has an escape, so each string is the bytes between two
        // quotes, as the tape path reads it (see `ParsedBody::plain_strings`).
        if memchr::memchr(b'\\', body).is_some() {
            return None;
        }
        let text = simdutf8::basic::from_utf8(body).ok()?;
        let quotes = Quotes::find(body)?;
        let ctx = EventContext { sent_at_ms: None, skew_ms: 0, plain_strings: true, ..ctx.clone() };
        Some(Transcoder { text, quotes, at: 0, validator, ctx, scratch, out, summaries })
    }

    fn body(mut self, shape: Shape) -> Option<Transcoded> {
        self.whitespace();
        let events = match (shape, self.peek()?) {
            (Shape::Single, b'{') => {
                self.event()?;
                1
            }
            (Shape::Batch, b'[') => self.events()?,
            (Shape::Batch, b'{') => self.envelope()?,
            _ => return None,
        };
        self.whitespace();
        (self.at == self.text.len()).then_some(Transcoded { events, sent_at_ms: self.ctx.sent_at_ms })
    }

    /// `{"events": [...], "sent_at": ...}`: each key at most once, others ignored.
    fn envelope(&mut self) -> Option<usize> {
        let mut events = None;
        let mut sent_at = None;
        self.members(|t, key| {
            match key {
                "events" if events.is_none() => events = Some(t.events()?),
                "sent_at" if sent_at.is_none() => {
                    let at = match t.scalar()? {
                        Raw::Null => None,
                        value => Some(value.timestamp_ms()?),
                    };
                    // Rows already written took no skew correction: the tape path's turn.
                    if events.is_some() && at.is_some() {
                        return None;
                    }
                    t.ctx.sent_at_ms = at;
                    t.ctx.skew_ms = at.map_or(0, |sent| t.ctx.received_ms - sent);
                    sent_at = Some(at);
                }
                "events" | "sent_at" => return None,
                _ => t.skip(1)?,
            }
            Some(())
        })?;
        events
    }

    /// A non-empty array of events, each encoded as it is read.
    fn events(&mut self) -> Option<usize> {
        let max = self.validator.limits().max_batch_events;
        let mut count = 0;
        self.elements(|t| {
            if count == max {
                return None;
            }
            count += 1;
            t.event()
        })?;
        (count > 0).then_some(count)
    }

    /// One event object: its fields picked out, checked and written as a row.
    fn event(&mut self) -> Option<()> {
        if self.peek()? != b'{' {
            return None;
        }
        self.scratch.clear();
        let mut fields = Fields::<Raw<'b>>::default();
        self.members(|t, key| {
            let Some(slot) = fields.slot(key) else {
                return t.skip(1);
            };
            *slot = Some(if t.peek()? == b'{' && matches!(key, "properties" | "user_properties") {
                t.object_text()?
            } else {
                t.scalar()?
            });
            Some(())
        })?;
        let scratch: &[u8] = self.scratch;
        let objects = [object(scratch, fields.properties)?, object(scratch, fields.user_properties)?];
        let summary = self.validator.encode_fields(&fields, objects, &self.ctx, self.out).ok()?;
        self.summaries.push(summary);
        Some(())
    }

    /// Rewrites the object at the cursor as compact JSON at the end of the scratch buffer,
    /// within the property limits.
    fn object_text(&mut self) -> Option<Raw<'b>> {
        let start = self.scratch.len();
        let limits = self.validator.limits();
        let (max_depth, max_bytes) = (limits.max_properties_depth, limits.max_properties_bytes);
        self.rewrite(1, max_depth, start + max_bytes)?;
        Some(Raw::Object(start, self.scratch.len()))
    }

    /// What `json_text::write` writes for the value at the cursor: compact, integers and floats
    /// formatted again. Checked after every value, as there, so an oversized object stops early.
    fn rewrite(&mut self, depth: usize, max_depth: usize, limit: usize) -> Option<()> {
        match self.peek()? {
            b'{' => {
                if depth > max_depth {
                    return None;
                }
                self.scratch.push(b'{');
                let mut first = true;
                self.members(|t, key| {
                    if !std::mem::take(&mut first) {
                        t.scratch.push(b',');
                    }
                    quoted(t.scratch, key);
                    t.scratch.push(b':');
                    t.rewrite(depth + 1, max_depth, limit)
                })?;
                self.scratch.push(b'}');
            }
            b'[' => {
                if depth > max_depth {
                    return None;
                }
                self.scratch.push(b'[');
                let mut first = true;
                self.elements(|t| {
                    if !std::mem::take(&mut first) {
                        t.scratch.push(b',');
                    }
                    t.rewrite(depth + 1, max_depth, limit)
                })?;
                self.scratch.push(b']');
            }
            _ => match self.scalar()? {
                Raw::Str(s) => quoted(self.scratch, s),
                Raw::Int(i) => self.scratch.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
                Raw::Float(f) => self.scratch.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes()),
                Raw::Null => self.scratch.extend_from_slice(b"null"),
                Raw::True => self.scratch.extend_from_slice(b"true"),
                Raw::False => self.scratch.extend_from_slice(b"false"),
                Raw::Object(..) => return None,
            },
        }
        (self.scratch.len() <= limit).then_some(())
    }

    /// Walks an object's members at the cursor, calling `member` with the cursor on each value.
    #[inline]
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'b str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.whitespace();
            let key = self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            member(self, key)?;
            self.whitespace();
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Walks an array's elements at the cursor, calling `element` with the cursor on each.
    #[inline]
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        self.whitespace();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.whitespace();
            element(self)?;
            self.whitespace();
            match self.next()? {
                b',' => continue,
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Checks and passes over any value (a field this edge ignores).
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' if depth < MAX_SKIP_DEPTH => self.members(|t, _| t.skip(depth + 1)),
            b'[' if depth < MAX_SKIP_DEPTH => self.elements(|t| t.skip(depth + 1)),
            b'{' | b'[' => None,
            _ => self.scalar().map(drop),
        }
    }

    /// A string, number, `true`, `false` or `null` at the cursor; `None` for a container (no
    /// field but the property objects may hold one) or anything invalid.
    #[inline]
    fn scalar(&mut self) -> Option<Raw<'b>> {
        Some(match self.peek()? {
            b'"' => Raw::Str(self.string()?),
            b'-' | b'0'..=b'9' => self.number()?,
            b't' => self.literal(b"true", Raw::True)?,
            b'f' => self.literal(b"false", Raw::False)?,
            b'n' => self.literal(b"null", Raw::Null)?,
            _ => return None,
        })
    }

    /// The text of the string at the cursor: everything up to the next quote (there is no
    /// escape; [`Quotes::find`] has checked that no string holds a control character).
    #[inline]
    fn string(&mut self) -> Option<&'b str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = self.quotes.next(start)?;
        self.at = end + 1;
        // SAFETY: `text` is valid UTF-8, and `start - 1` and `end` hold ASCII quotes, so both
        // ends are on character boundaries (the checked `get` tested that once more per string).
        Some(unsafe { self.text.get_unchecked(start..end) })
    }

    /// A JSON number, read as simd-json reads it: an integer (no fraction, no exponent) or a
    /// correctly rounded `f64` (simd-json's exact mode, and the standard library's parser).
    fn number(&mut self) -> Option<Raw<'b>> {
        let start = self.at;
        let negative = self.eat(b'-');
        let integer = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let integer_digits = self.at - integer;
        let fraction = if self.eat(b'.') {
            let from = self.at;
            self.digits();
            if self.at == from {
                return None;
            }
            Some(from..self.at)
        } else {
            None
        };
        let exponent = matches!(self.peek(), Some(b'e' | b'E'));
        if exponent {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            let from = self.at;
            self.digits();
            if !(1..=MAX_EXPONENT_DIGITS).contains(&(self.at - from)) {
                return None;
            }
        }
        let text = &self.text[start..self.at];
        match (fraction, exponent) {
            (None, false) => (integer_digits <= MAX_INT_DIGITS).then(|| text.parse().ok().map(Raw::Int))?,
            (Some(fraction), false) => {
                let bytes = self.text.as_bytes();
                let whole = &bytes[integer..integer + integer_digits];
                exact_decimal(negative, whole, &bytes[fraction]).map(Raw::Float).or_else(|| float(text))
            }
            (_, true) => float(text),
        }
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Raw<'b>) -> Option<Raw<'b>> {
        if !self.text.as_bytes()[self.at..].starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some(value)
    }

    #[inline]
    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    #[inline]
    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        self.at += usize::from(found);
        found
    }

    #[inline]
    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }
}

/// A JSON number with a fraction or an exponent, through the standard library's correctly
/// rounding parser. A non-zero number that reads as 0 underflowed, or one too large overflowed:
/// whether simd-json agrees is not worth proving.
fn float(text: &str) -> Option<Raw<'_>> {
    let f: f64 = text.parse().ok()?;
    let zero = !text.bytes().take_while(|b| !matches!(b, b'e' | b'E')).any(|b| matches!(b, b'1'..=b'9'));
    (f.is_finite() && (f != 0.0 || zero)).then_some(Raw::Float(f))
}

/// A decimal without an exponent and of at most 15 digits (`19.99`, most revenues), given as
/// its sign and the digits either side of its point (as `number` scanned them), read
/// without the general parser: its digits as an integer are exact in an `f64`, and so is the
/// power of ten it is divided by, so the one division rounds correctly, as any correct parser
/// must (Clinger's fast path).
#[inline]
fn exact_decimal(negative: bool, whole: &[u8], fraction: &[u8]) -> Option<f64> {
    const POWERS: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    if whole.len() + fraction.len() > 15 {
        return None;
    }
    let digits = |m: u64, part: &[u8]| part.iter().fold(m, |m, b| m * 10 + u64::from(b - b'0'));
    let value = digits(digits(0, whole), fraction) as f64 / POWERS[fraction.len()];
    Some(if negative { -value } else { value })
}

/// Where a body's quotes are, one bit per byte, found for the whole body in one pass: each
/// string's end is then the next set bit, where a scan per string ended on a branch that
/// mispredicted with every new string length (15 % of the edge's CPU under batch load).
/// Built only for bodies without a backslash, where every quote opens or closes a string.
struct Quotes {
    /// From [`QUOTE_WORDS`] and back to it on drop: a bitmap per request without an allocation,
    /// and plain slice reads (a `SmallVec` checked where its words live on every read).
    words: Vec<u64>,
}

/// Bitmap words kept per thread between requests: up to 64 KiB of them (a 4 MiB body).
const KEPT_QUOTE_WORDS: usize = 8 << 10;

thread_local! {
    static QUOTE_WORDS: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for Quotes {
    fn drop(&mut self) {
        if self.words.capacity() <= KEPT_QUOTE_WORDS {
            let mut words = std::mem::take(&mut self.words);
            words.clear();
            QUOTE_WORDS.set(words);
        }
    }
}

impl Quotes {
    /// The quotes of `bytes`, or `None` if a control character lies inside a string (JSON
    /// refuses them unescaped; outside strings the grammar refuses all but whitespace).
    fn find(bytes: &[u8]) -> Option<Quotes> {
        let mut quotes = Quotes { words: QUOTE_WORDS.take() };
        quotes.words.reserve(bytes.len().div_ceil(64));
        // All ones while the previous word ended inside a string.
        let mut inside_before = 0u64;
        for block in bytes.chunks(64) {
            let (found, controls) = classify(block);
            // Bit i: an odd number of quotes up to and including byte i, so the opening quote
            // and the string's bytes, not its closing quote.
            let inside = prefix_xor(found) ^ inside_before;
            if controls & inside != 0 {
                return None;
            }
            inside_before = ((inside as i64) >> 63) as u64;
            quotes.words.push(found);
        }
        Some(quotes)
    }

    /// The first quote at or after `from`.
    #[inline]
    fn next(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        let mut bits = self.words.get(word)? & (!0u64 << (from % 64));
        while bits == 0 {
            word += 1;
            bits = *self.words.get(word)?;
        }
        Some(word * 64 + bits.trailing_zeros() as usize)
    }
}

/// Bit i of each mask for byte i of `block` (at most 64 bytes): a quote; below 0x20.
#[inline]
fn classify(block: &[u8]) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if let Ok(block) = <&[u8; 64]>::try_from(block) {
        use std::arch::x86_64::*;
        let (mut quotes, mut controls) = (0u64, 0u64);
        for (i, lane) in block.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is always there on x86-64, and the load reads the 16 bytes of `lane`.
            let (q, c) = unsafe {
                let x = _mm_loadu_si128(lane.as_ptr().cast());
                let q = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
                // Below 0x20, unsigned: no larger than its minimum with 0x1f.
                let c = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
                (_mm_movemask_epi8(q) as u16, _mm_movemask_epi8(c) as u16)
            };
            quotes |= u64::from(q) << (16 * i);
            controls |= u64::from(c) << (16 * i);
        }
        return (quotes, controls);
    }
    let (mut quotes, mut controls) = (0u64, 0u64);
    for (i, &b) in block.iter().enumerate() {
        quotes |= u64::from(b == b'"') << i;
        controls |= u64::from(b < 0x20) << i;
    }
    (quotes, controls)
}

/// Bit i of the result: the parity of bits 0..=i of `x`.
#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// A property field's text as the tape path writes it: `{}` when absent or null.
fn object<'s>(scratch: &'s [u8], value: Option<Raw<'_>>) -> Option<&'s [u8]> {
    match value {
        None | Some(Raw::Null) => Some(b"{}"),
        Some(Raw::Object(start, end)) => Some(&scratch[start..end]),
        Some(_) => None,
    }
}

/// A string with no escape, quoted.
#[inline]
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BodyLimits;
    use crate::event::parse::{parse_body, JsonScratch};
    use crate::event::rowbinary::read_str;
    use crate::event::validate::tests::{ctx, NOW_MS};
    use crate::tenant::OrgId;

    const EVENT: &str = r#"{"event_type":"purchase","event_name":"checkout_complete","device_id":"6f1c2e7a","session_id":"s-8842","platform":"ios","revenue":19.99,"currency":"USD","idfv":"A1B2","properties":{"sku":"PRO-1Y","screen":"paywall","ab":"v2"}}"#;

    fn limits() -> BodyLimits {
        BodyLimits { max_batch_events: 50, max_properties_bytes: 2048, max_event_bytes: 4096, ..BodyLimits::default() }
    }

    /// Rows, summaries and `sent_at` of a body every event of which was accepted.
    type Taken = (Vec<u8>, Vec<EventSummary>, Option<i64>);

    fn direct(body: &str, shape: Shape) -> Option<Taken> {
        let mut out = RowBlock::new(OrgId::new("org_a"), 0);
        out.data.extend_from_slice(b"earlier rows");
        let mut summaries = SmallVec::new();
        let taken = transcode(
            body.as_bytes(),
            shape,
            &Validator::new(limits()),
            &ctx(),
            &mut Vec::new(),
            &mut out,
            &mut summaries,
        );
        let Some(taken) = taken else {
            assert_eq!((&out.data[..], out.rows, summaries.len()), (&b"earlier rows"[..], 0, 0), "left as it was");
            return None;
        };
        assert_eq!((taken.events, out.rows, summaries.len()), (out.rows, summaries.len(), taken.events));
        // Row ends count from the block's start, as the tape path's do from theirs.
        let rows = out.data[12..].to_vec();
        let summaries = summaries.into_iter().map(|s| EventSummary { row_end: s.row_end - 12, ..s }).collect();
        Some((rows, summaries, taken.sent_at_ms))
    }

    /// What the request path did before this module: parse to a tape, then every rule.
    fn tape(body: &str, shape: Shape) -> Option<Taken> {
        let validator = Validator::new(limits());
        let mut bytes = body.as_bytes().to_vec();
        let parsed = parse_body(&mut bytes, shape, limits().max_batch_events, &mut JsonScratch::default()).ok()?;
        let ctx = EventContext {
            skew_ms: parsed.sent_at_ms.map_or(0, |sent| NOW_MS - sent),
            sent_at_ms: parsed.sent_at_ms,
            plain_strings: parsed.plain_strings,
            ..ctx()
        };
        let (mut out, mut summaries, mut refused) = (RowBlock::new(OrgId::new("org_a"), 0), Vec::new(), false);
        parsed.for_each(|_, event| match event.map(|e| validator.encode(e, &ctx, &mut Vec::new(), &mut out)) {
            Ok(Ok(summary)) => summaries.push(summary),
            _ => refused = true,
        });
        (!refused).then(|| (out.data.to_vec(), summaries, parsed.sent_at_ms))
    }

    /// The columns of every row; a generated event id (a UUIDv7, which no test sends) as `*`.
    fn columns(mut data: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut rows = Vec::new();
        while !data.is_empty() {
            let mut row = Vec::new();
            let fixed = |data: &mut &[u8], row: &mut Vec<Vec<u8>>, n: usize| {
                row.push(data[..n].to_vec());
                *data = &data[n..];
            };
            let strings = |data: &mut &[u8], row: &mut Vec<Vec<u8>>, n: usize| {
                for _ in 0..n {
                    row.push(read_str(data).unwrap().to_vec());
                }
            };
            strings(&mut data, &mut row, 8);
            let generated = row[2].len() == 36 && row[2][14] == b'7' && row[2][8] == b'-';
            if generated {
                row[2] = b"*".to_vec();
            }
            fixed(&mut data, &mut row, 8);
            let sent_at = if data[0] == 1 { 1 } else { 5 };
            fixed(&mut data, &mut row, sent_at);
            strings(&mut data, &mut row, 2);
            fixed(&mut data, &mut row, 8);
            strings(&mut data, &mut row, 9);
            rows.push(row);
        }
        rows
    }

    /// Runs both paths; whatever this module takes, the tape path took whole, to the same rows.
    fn same(body: &str, shape: Shape) -> bool {
        let Some((rows, summaries, sent_at)) = direct(body, shape) else {
            return false;
        };
        let Some((tape_rows, tape_summaries, tape_sent_at)) = tape(body, shape) else {
            panic!("taken here, refused by the tape path: {body}");
        };
        assert_eq!(columns(&rows), columns(&tape_rows), "{body}");
        assert_eq!((summaries, sent_at), (tape_summaries, tape_sent_at), "{body}");
        true
    }

    fn event(extra: &str) -> String {
        format!(r#"{{"event_type":"t","event_name":"n","device_id":"d","event_id":"e"{extra}}}"#)
    }

    #[test]
    fn the_common_bodies_are_taken_with_the_tape_paths_rows() {
        let spaced = EVENT.replace("\":", "\": ").replace(",\"", ", \"");
        let batch = |events: &str| format!(r#"{{"events": [{events}, {events}]}}"#);
        let cases = [
            (EVENT.to_string(), Shape::Single),
            (format!(" \n{EVENT}\r\n\t"), Shape::Single),
            (batch(EVENT), Shape::Batch),
            (batch(&spaced), Shape::Batch),
            (format!("[{EVENT},{EVENT}]"), Shape::Batch),
            (format!(r#"{{"sent_at":{},"events":[{EVENT}]}}"#, NOW_MS - 3_600_000), Shape::Batch),
            (format!(r#"{{"sent_at":"2026-05-28T19:46:40.123+02:00","events":[{EVENT}]}}"#), Shape::Batch),
            (format!(r#"{{"events":[{EVENT}],"sent_at":null}}"#), Shape::Batch),
            (format!(r#"{{"api_key":"k","batch":[1,{{"a":[]}}],"events":[{EVENT}],"x":null}}"#), Shape::Batch),
            (event(r#","event_timestamp":1779999999000,"revenue":5,"currency":"eur""#), Shape::Single),
            (event(r#","event_timestamp":"2026-05-28T12:00:00Z","revenue":-0.015"#), Shape::Single),
            (event(r#","event_timestamp":1779999999000.7,"revenue":0"#), Shape::Single),
            (event(r#","event_timestamp":null,"revenue":null,"currency":null,"ip":"::1","idfa":"""#), Shape::Single),
            (event(r#","device_id":"second","properties":{"a":1},"properties":{"b":2}"#), Shape::Single),
            (event(r#","properties":null,"user_properties":{"é☃😀":"ü","n":[]}"#), Shape::Single),
            (event(r#","unknown":{"deep":[[[{"x":[true,false,null,-1.5e-7]}]]]},"more":"x""#), Shape::Single),
            (event(r#","event_id":null"#), Shape::Single),
            (
                event(r#","properties":{ "a" : [ 1 , -0 , 0.0 , -0.0 , 1.0 , 1e300 , 5e-324 , 1.5E+3 , 0.1 ] }"#),
                Shape::Single,
            ),
            (event(r#","properties":{"i":123456789012345678,"j":-123456789012345678,"k":{},"l":[{}]}"#), Shape::Single),
            (event(r#","properties":{"t":true,"f":false,"n":null,"d":{"d":{"d":"deep"}}}"#), Shape::Single),
            (event(r#","properties":{"dup":1,"dup":2}"#), Shape::Single),
        ];
        for (body, shape) in cases {
            assert!(same(&body, shape), "not taken: {body}");
        }
    }

    #[test]
    fn everything_else_is_left_to_the_tape_path() {
        let batch = |events: &str| format!(r#"{{"events":[{events}]}}"#);
        let cases = [
            // Escapes, NDJSON, the wrong shape for the route.
            (event(r#","properties":{"q":"a\"b"}"#), Shape::Single),
            (event(r#","device_id":"\u0064""#), Shape::Single),
            (format!("{EVENT}\n{EVENT}\n"), Shape::Ndjson),
            (format!("[{EVENT}]"), Shape::Single),
            (EVENT.to_string(), Shape::Batch),
            // Invalid JSON.
            (format!("{EVENT}x"), Shape::Single),
            (format!("{EVENT}{EVENT}"), Shape::Single),
            (EVENT.replace(",\"platform\"", "\"platform\""), Shape::Single),
            (EVENT.replace("s-8842", "s-\t8842"), Shape::Single),
            (EVENT.replace("19.99", "019.99"), Shape::Single),
            (EVENT.replace("19.99", "19."), Shape::Single),
            (EVENT.replace("19.99", "1e"), Shape::Single),
            (EVENT.replace("19.99", "tru"), Shape::Single),
            (EVENT.replace("19.99", "+1"), Shape::Single),
            (EVENT[..EVENT.len() - 1].to_string(), Shape::Single),
            (batch(&format!("{EVENT},")), Shape::Batch),
            (String::new(), Shape::Single),
            // Refused events, refused batches.
            (event(r#","device_id":"""#), Shape::Single),
            (event(r#","revenue":"9.99""#), Shape::Single),
            (event(r#","revenue":1e17"#), Shape::Single),
            (event(r#","currency":"E1R""#), Shape::Single),
            (event(r#","ip":"nope""#), Shape::Single),
            (event(r#","app_id":"other""#), Shape::Single),
            (event(r#","event_timestamp":"yesterday""#), Shape::Single),
            (event(r#","event_timestamp":1"#), Shape::Single),
            (event(r#","properties":[1]"#), Shape::Single),
            (event(r#","properties":"{}""#), Shape::Single),
            (event(&format!(r#","properties":{{"b":"{}"}}"#, "y".repeat(2100))), Shape::Single),
            (event(&format!(r#","properties":{}1{}"#, r#"{"a":"#.repeat(33), "}".repeat(33))), Shape::Single),
            // Every field within its limit, the row over `max_event_bytes`.
            (
                event(&format!(
                    r#","user_agent":"{u}","properties":{{"p":"{p}"}},"user_properties":{{"p":"{p}"}}"#,
                    u = "u".repeat(1000),
                    p = "p".repeat(2000)
                )),
                Shape::Single,
            ),
            (event(&format!(r#","x":{}1{}"#, "[".repeat(100), "]".repeat(100))), Shape::Single),
            (batch(&format!("{},{EVENT}", event(r#","device_id":5"#))), Shape::Batch),
            (batch(&vec![EVENT; 51].join(",")), Shape::Batch),
            (batch("1"), Shape::Batch),
            (batch(""), Shape::Batch),
            (r#"{"events":{}}"#.to_string(), Shape::Batch),
            (format!(r#"{{"events":[{EVENT}],"events":[{EVENT}]}}"#), Shape::Batch),
            (format!(r#"{{"sent_at":"soon","events":[{EVENT}]}}"#), Shape::Batch),
            // A `sent_at` after the events would have corrected rows already written.
            (format!(r#"{{"events":[{EVENT}],"sent_at":{}}}"#, NOW_MS - 3_600_000), Shape::Batch),
            // Numbers whose reading by simd-json is not worth proving here.
            (event(r#","properties":{"i":1234567890123456789}"#), Shape::Single),
            (event(r#","properties":{"f":1e-400}"#), Shape::Single),
            (event(r#","properties":{"f":1e400}"#), Shape::Single),
            (event(r#","properties":{"f":1e0001}"#), Shape::Single),
        ];
        for (body, shape) in cases {
            assert!(!same(&body, shape), "taken: {body}");
        }
    }

    /// A generator of events from parts the tape path reads in different ways: every field
    /// with every kind of value, keys twice, whitespace, numbers in every notation.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            // xorshift64*: deterministic, so a failure names its seed.
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len() as u64) as usize]
        }

        fn space(&mut self) -> &'static str {
            self.pick(&["", "", "", " ", "\n  ", "\t", "\r\n"])
        }

        fn number(&mut self) -> String {
            match self.below(8) {
                0 => (self.next() as i64 >> self.below(64)).to_string(),
                1 => f64::from_bits(self.next()).to_string(),
                2 => format!("{:e}", f64::from_bits(self.next())),
                3 => {
                    format!("{}.{:0width$}", self.below(100_000), self.below(1000), width = self.below(4) as usize + 1)
                }
                4 => format!("{}e{}{}", self.below(1000), self.pick(&["", "+", "-"]), self.below(330)),
                5 => format!("-{}.{}E{}", self.below(10), self.below(1 << 40), self.below(30)),
                6 => self.pick(&["0", "-0", "0.0", "-0.0", "1.0", "100", "18446744073709551615"]).to_string(),
                _ => format!("{}", self.below(10_000) as f64 / 100.0),
            }
        }

        fn string(&mut self) -> String {
            let parts = ["a", "device", "é", "☃", "😀", " ", "{}[]:,", "'", "/", "\u{7f}", "0"];
            let n = self.below(6);
            let text: String = (0..n).map(|_| self.pick(&parts)).collect();
            format!("\"{text}\"")
        }

        fn value(&mut self, depth: usize) -> String {
            match self.below(if depth > 3 { 5 } else { 7 }) {
                0 | 1 => self.string(),
                2 => self.number(),
                3 => self.pick(&["true", "false", "null"]).to_string(),
                4 => self.number(),
                5 => {
                    let n = self.below(4);
                    let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
                    format!("[{}]", items.join(&format!(",{}", self.space())))
                }
                _ => self.object(depth + 1),
            }
        }

        fn object(&mut self, depth: usize) -> String {
            let n = self.below(5);
            let members: Vec<String> = (0..n)
                .map(|_| {
                    let key = self.string();
                    let (a, b) = (self.space(), self.space());
                    format!("{key}{a}:{b}{}", self.value(depth))
                })
                .collect();
            format!("{{{}{}}}", self.space(), members.join(","))
        }

        /// Mostly valid events: every field usually of its type, sometimes not.
        fn event(&mut self) -> String {
            let mut members = vec![
                ("event_type".to_string(), self.pick(&["\"install\"", "\"purchase\""]).to_string()),
                ("event_name".to_string(), self.string().replace("\"\"", "\"n\"")),
                ("device_id".to_string(), format!("\"device-{}\"", self.below(1000))),
            ];
            let optional = [
                "event_id",
                "session_id",
                "platform",
                "app_id",
                "idfa",
                "idfv",
                "gaid",
                "oaid",
                "ip",
                "user_agent",
                "user_id",
                "app_version",
                "event_timestamp",
                "revenue",
                "currency",
                "properties",
                "user_properties",
                "unknown",
                "device_id",
            ];
            for _ in 0..self.below(8) {
                let key = self.pick(&optional);
                let value = match (key, self.below(10)) {
                    (_, 0) => self.value(1),
                    (_, 1) => "null".to_string(),
                    ("event_id", _) => format!("\"id-{}\"", self.below(1 << 20)),
                    ("app_id", _) => "\"app_1\"".to_string(),
                    ("ip", _) => self.pick(&["\"10.0.0.1\"", "\"::1\"", "\"2001:db8::8a2e:370:7334\""]).to_string(),
                    ("event_timestamp", n) => match n {
                        2 => format!("{}", NOW_MS - self.below(80 * 86_400_000) as i64),
                        3 => format!("{}.{}", NOW_MS - self.below(86_400_000) as i64, self.below(1000)),
                        _ => self.pick(&["\"2026-05-28T12:00:00Z\"", "\"2026-05-28T12:00:00.5-03:30\""]).to_string(),
                    },
                    ("revenue", _) => self.number(),
                    ("currency", _) => self.pick(&["\"usd\"", "\"EUR\"", "\"JPY\""]).to_string(),
                    ("properties" | "user_properties" | "unknown", _) => self.object(1),
                    _ => self.string(),
                };
                members.push((key.to_string(), value));
            }
            let order = self.below(members.len() as u64) as usize;
            members.rotate_left(order);
            let text: Vec<String> = members
                .into_iter()
                .map(|(key, value)| format!("{}\"{key}\"{}:{}{value}", self.space(), self.space(), self.space()))
                .collect();
            format!("{{{}}}", text.join(","))
        }
    }

    /// Thousands of generated bodies: whatever this module takes, it writes the tape path's
    /// rows; and it takes most of the bodies the tape path takes whole.
    #[test]
    fn generated_bodies_give_the_tape_paths_rows_or_are_declined() {
        let mut random = Random(0x005e_ed0f_ed9e);
        let (mut taken, mut tape_took) = (0, 0);
        for round in 0..4000 {
            let events: Vec<String> = (0..1 + random.below(3)).map(|_| random.event()).collect();
            let (body, shape) = match round % 4 {
                0 => (events[0].clone(), Shape::Single),
                1 => (format!("[{}]", events.join(",")), Shape::Batch),
                2 => (format!(r#"{{"sent_at":{},"events":[{}]}}"#, NOW_MS - 5000, events.join(",\n")), Shape::Batch),
                _ => (format!(r#"{{ "events" : [ {} ] }}"#, events.join(" , ")), Shape::Batch),
            };
            taken += usize::from(same(&body, shape));
            tape_took += usize::from(tape(&body, shape).is_some());
        }
        eprintln!("taken {taken} of the {tape_took} the tape path took whole");
        assert!(tape_took > 1000, "the generator makes valid bodies: {tape_took}");
        assert!(taken * 10 >= tape_took * 9, "taken {taken} of the {tape_took} the tape path took whole");
    }

    #[test]
    fn short_decimals_read_as_the_standard_library_reads_them() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 15 + 1) as usize;
            let point = (x >> 8) as usize % (digits + 1);
            let number = format!("{:0digits$}", (x >> 16) % 10u64.pow(digits as u32));
            let (whole, fraction) = number.split_at(point);
            let whole = if whole.is_empty() { "0" } else { whole };
            for sign in ["", "-"] {
                let text = format!("{sign}{whole}.{fraction}");
                if fraction.is_empty() {
                    continue; // not JSON: `number` reads no such text
                }
                let ours = exact_decimal(!sign.is_empty(), whole.as_bytes(), fraction.as_bytes());
                assert!(ours.is_some() || whole.len() + fraction.len() > 15, "{text}");
                if let Some(ours) = ours {
                    assert_eq!(ours.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{text}");
                }
            }
        }
    }

    #[test]
    fn quotes_are_found_across_words_and_control_characters_inside_strings_refused() {
        let alphabet: [&[u8]; 7] = [b"a", b"\"", b"\x01", b"\n", "é".as_bytes(), b" ", b"\x1f"];
        let mut random = Random(0x0b5e_55ed);
        for _ in 0..20_000 {
            let len = random.below(200) as usize;
            let mut bytes = Vec::new();
            while bytes.len() < len {
                // Mostly plain text, so that strings are long enough to cross words.
                let part = if random.below(4) == 0 { random.below(7) as usize } else { 0 };
                bytes.extend_from_slice(alphabet[part]);
            }
            // One byte at a time: where the quotes are, and whether a string holds a control.
            let (mut inside, mut refused, mut quotes) = (false, false, Vec::new());
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'"' {
                    quotes.push(i);
                    inside = !inside;
                } else if b < 0x20 && inside {
                    refused = true;
                }
            }
            let found = Quotes::find(&bytes);
            assert_eq!(found.is_none(), refused, "{bytes:?}");
            let Some(found) = found else { continue };
            for from in 0..=bytes.len() + 64 {
                let want = quotes.iter().copied().find(|&q| q >= from);
                assert_eq!(found.next(from), want, "from {from} in {bytes:?}");
            }
        }
    }
}
