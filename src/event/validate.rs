//! One event value → one RowBinary row, or a [`Rejection`] saying why not.
//!
//! Rules (SPEC §3): `event_type` ≤ 64, `event_name` ≤ 256 and `device_id`
//! ≤ 128 are required; `event_id` ≤ 64 (a UUIDv7 is generated when absent);
//! `session_id` ≤ 128, `platform` ≤ 32; `event_timestamp` RFC 3339 or epoch
//! ms, corrected by the batch's clock skew, at most `max_future` ahead and no
//! older than the tier's retention; `properties`/`user_properties` objects
//! ≤ 32 KiB and depth ≤ 32; `revenue` a number that fits Decimal(18,2);
//! `currency` ISO 4217 (default USD). `organization_id` is never read from
//! the body. Unknown fields are ignored.
//!
//! Everything is checked before the first byte is written, so a rejected
//! event leaves no partial row behind.

use simd_json::prelude::*;
use simd_json::value::tape::Value;
use time::format_description::well_known::Rfc3339;

use super::fields::{optional_str, required_str, FieldValue, Fields};
use super::json_text::{self, TextError};
use super::rowbinary::*;
use super::{EventSummary, Rejection, RowBlock};
use crate::config::BodyLimits;

/// What every event of one request shares.
#[derive(Debug, Clone)]
pub struct EventContext<'a> {
    pub org_id: &'a str,
    /// The app the credential is bound to; a body naming another app is refused.
    pub credential_app: Option<&'a str>,
    pub received_ms: i64,
    /// Added to event timestamps: receive time − `sent_at` (0 without `sent_at`).
    pub skew_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub retention_days: u32,
    /// No string of the body had an escape (see [`super::parse::ParsedBody::plain_strings`]).
    pub plain_strings: bool,
}

/// A UUIDv7 for an event sent without an id, as lowercase hyphenated text. Not
/// `Uuid::now_v7`, which takes a process-wide mutex for monotonic counters and would serialise
/// every core: random bits suffice for an idempotency key. Formatted by hand because the uuid
/// crate's formatter cost ~160 instructions an event, and one `u128` drawn instead of ten
/// bytes each drawn alone saves as many again.
fn generate_event_id(received_ms: i64, out: &mut [u8; 36]) {
    let random = rand::random::<u128>().to_le_bytes();
    let id = uuid::Builder::from_unix_timestamp_millis(received_ms as u64, random[..10].try_into().unwrap());
    let words = id.as_uuid().as_u128().to_be_bytes();
    let word = |i: usize| hex_u32(u32::from_be_bytes(words[i..i + 4].try_into().unwrap()));
    let (a, b, c, d) = (word(0), word(4), word(8), word(12));
    out[0..8].copy_from_slice(&a);
    out[8] = b'-';
    out[9..13].copy_from_slice(&b[..4]);
    out[13] = b'-';
    out[14..18].copy_from_slice(&b[4..]);
    out[18] = b'-';
    out[19..23].copy_from_slice(&c[..4]);
    out[23] = b'-';
    out[24..28].copy_from_slice(&c[4..]);
    out[28..36].copy_from_slice(&d);
}

/// The eight lowercase hex digits of `x`, most significant first, without a table or a loop.
fn hex_u32(x: u32) -> [u8; 8] {
    // Spread the eight nibbles into the eight bytes of a u64, most significant nibble highest.
    let x = u64::from(x);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more: those skip from '9' + 1 to 'a'.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'9' - 1)).to_be_bytes()
}

/// Decimal(18,2) holds 16 integer digits.
const MAX_REVENUE: f64 = 9_999_999_999_999_999.0;
/// Fixed seeds so device hashes agree across threads and restarts.
const DEVICE_HASH: ahash::RandomState =
    ahash::RandomState::with_seeds(0x6564_6765, 0x756e_6d6f, 0x6772_6f77, 0x7000_0001);

pub struct Validator {
    limits: BodyLimits,
}

impl Validator {
    pub fn new(limits: BodyLimits) -> Self {
        Validator { limits }
    }

    pub fn limits(&self) -> &BodyLimits {
        &self.limits
    }

    /// Validates `event` and appends its row to `out`. `scratch` is reused across calls to
    /// serialise the property objects without allocating per event.
    pub fn encode(
        &self,
        event: Value<'_, '_>,
        ctx: &EventContext,
        scratch: &mut Vec<u8>,
        out: &mut RowBlock,
    ) -> Result<EventSummary, Rejection> {
        let (valid, properties_end) = self.validate(event, ctx, scratch)?;
        let (properties, user_properties) = scratch.split_at(properties_end);
        self.write(&valid, ctx, [properties, user_properties], out)
    }

    /// Every rule, in the order a client would want to hear about them; nothing is written.
    /// The property objects are left serialised in `scratch`: `properties` up to the returned
    /// offset, `user_properties` after it.
    fn validate<'e>(
        &self,
        event: Value<'_, 'e>,
        ctx: &EventContext<'e>,
        scratch: &mut Vec<u8>,
    ) -> Result<(ValidEvent<'e>, usize), Rejection> {
        let Some(f) = Fields::collect(event) else {
            return Err(Rejection::new("invalid_event", "An event must be a JSON object"));
        };
        let valid = self.check(&f, ctx)?;
        scratch.clear();
        self.serialise_object(f.properties, "properties", ctx.plain_strings, scratch)?;
        let properties_end = scratch.len();
        self.serialise_object(f.user_properties, "user_properties", ctx.plain_strings, scratch)?;
        Ok((valid, properties_end))
    }

    /// Every rule but the property objects' (which the caller has already written out as
    /// `objects`), then the row; for [`super::direct`], whose fields come straight from a body.
    pub(super) fn encode_fields<'e, V: FieldValue<'e>>(
        &self,
        f: &Fields<V>,
        objects: [&[u8]; 2],
        ctx: &EventContext<'e>,
        out: &mut RowBlock,
    ) -> Result<EventSummary, Rejection> {
        let valid = self.check(f, ctx)?;
        self.write(&valid, ctx, objects, out)
    }

    /// The rules for who, when and how much.
    #[inline]
    fn check<'e, V: FieldValue<'e>>(&self, f: &Fields<V>, ctx: &EventContext<'e>) -> Result<ValidEvent<'e>, Rejection> {
        let ids = identity(f, ctx)?;
        let timestamp_ms = self.timestamp(f, ctx)?;
        let (revenue_cents, currency) = money(f)?;
        Ok(ValidEvent { ids, timestamp_ms, revenue_cents, currency })
    }

    /// When the event happened: its own time corrected for the batch's clock skew, or the
    /// receive time; within `max_future` ahead and the tier's retention back.
    fn timestamp<'e, V: FieldValue<'e>>(&self, f: &Fields<V>, ctx: &EventContext) -> Result<i64, Rejection> {
        let timestamp_ms = match f.event_timestamp {
            None => ctx.received_ms,
            Some(v) if v.is_null() => ctx.received_ms,
            Some(v) => v
                .timestamp_ms()
                .ok_or_else(|| {
                    Rejection::new("invalid_timestamp", "event_timestamp must be RFC 3339 or epoch milliseconds")
                })?
                .saturating_add(ctx.skew_ms),
        };
        if timestamp_ms > ctx.received_ms + self.limits.max_future.as_millis() as i64 {
            return Err(Rejection::new("timestamp_in_future", "event_timestamp is too far in the future"));
        }
        let oldest = ctx.received_ms - i64::from(ctx.retention_days) * 86_400_000;
        if timestamp_ms < oldest.max(0) {
            let hint = if looks_like_epoch_seconds(timestamp_ms, ctx.received_ms) {
                " (epoch timestamps are milliseconds; this looks like seconds)"
            } else {
                ""
            };
            return Err(Rejection::formatted(
                "timestamp_too_old",
                format_args!("event_timestamp is older than the {}-day retention{hint}", ctx.retention_days),
            ));
        }
        Ok(timestamp_ms)
    }

    /// Writes a valid event's row, column by column in the table's order.
    fn write(
        &self,
        e: &ValidEvent<'_>,
        ctx: &EventContext,
        objects: [&[u8]; 2],
        out: &mut RowBlock,
    ) -> Result<EventSummary, Rejection> {
        let ids = &e.ids;
        let mut generated_id = [0u8; 36];
        let event_id = match ids.event_id {
            Some(id) => id.as_bytes(),
            None => {
                generate_event_id(ctx.received_ms, &mut generated_id);
                &generated_id
            }
        };
        // Column order: `head`, event_timestamp, received_at, sent_at, the two property
        // objects, revenue, `tail` (ending with format V2's user_id and app_version).
        let head = [
            ctx.org_id.as_bytes(),
            ids.app_id.as_bytes(),
            event_id,
            ids.event_type.as_bytes(),
            ids.event_name.as_bytes(),
            ids.device_id.as_bytes(),
            ids.session_id.as_bytes(),
            ids.platform.as_bytes(),
        ];
        let [properties, user_properties] = objects;
        let tail = [
            &e.currency[..],
            ids.idfa.as_bytes(),
            ids.idfv.as_bytes(),
            ids.gaid.as_bytes(),
            ids.oaid.as_bytes(),
            ids.ip.as_bytes(),
            ids.user_agent.as_bytes(),
            ids.user_id.as_bytes(),
            ids.app_version.as_bytes(),
        ];
        let sent_at = ctx.sent_at_ms.map(secs);
        let fixed = 4 + 4 + if sent_at.is_some() { 5 } else { 1 } + 8;
        let sizes = |strings: &[&[u8]]| strings.iter().map(|s| str_size(s.len())).sum::<usize>();
        let size = fixed + sizes(&head) + sizes(&objects) + sizes(&tail);
        if size > self.limits.max_event_bytes {
            return Err(Rejection::formatted(
                "event_too_large",
                format_args!("an event may be at most {} bytes", self.limits.max_event_bytes),
            ));
        }
        write_row(&mut out.data, size, |w| {
            head.iter().for_each(|s| w.str(s));
            w.datetime(secs(e.timestamp_ms));
            w.datetime(secs(ctx.received_ms));
            w.nullable_datetime(sent_at);
            w.str(properties);
            w.str(user_properties);
            w.decimal_18_2(e.revenue_cents);
            tail.iter().for_each(|s| w.str(s));
        });
        out.rows += 1;
        Ok(EventSummary {
            day: (e.timestamp_ms.div_euclid(86_400_000)) as u32,
            revenue_cents: e.revenue_cents,
            device_hash: DEVICE_HASH.hash_one(ids.device_id),
            row_end: out.data.len(),
        })
    }

    /// Appends the JSON text of `event[key]` (an object; `{}` when absent) to `out`.
    fn serialise_object(
        &self,
        value: Option<Value<'_, '_>>,
        key: &'static str,
        plain_strings: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Rejection> {
        match value {
            None => out.extend_from_slice(b"{}"),
            Some(v) if v.is_null() => out.extend_from_slice(b"{}"),
            Some(v) if v.is_object() => {
                let limits = &self.limits;
                let (depth, bytes) = (limits.max_properties_depth, limits.max_properties_bytes);
                json_text::write(v, out, depth, bytes, plain_strings).map_err(|e| match e {
                    TextError::TooDeep => Rejection::formatted(
                        "properties_too_deep",
                        format_args!("{key} nests deeper than {}", limits.max_properties_depth),
                    ),
                    TextError::TooLarge => Rejection::formatted(
                        "properties_too_large",
                        format_args!("{key} exceeds {} bytes", limits.max_properties_bytes),
                    ),
                })?;
            }
            Some(_) => {
                return Err(Rejection::formatted("invalid_properties", format_args!("{key} must be a JSON object")))
            }
        }
        Ok(())
    }
}

/// An event that passed every rule: strings borrowed from the body (or the credential),
/// numbers checked. Its property objects are written out beside it.
#[derive(Debug)]
pub struct ValidEvent<'e> {
    pub ids: Identity<'e>,
    pub timestamp_ms: i64,
    pub revenue_cents: i64,
    /// ISO 4217, upper case.
    pub currency: [u8; 3],
}

/// Who and what: the string fields, length-checked, `""` when not sent.
#[derive(Debug)]
pub struct Identity<'e> {
    pub app_id: &'e str,
    pub event_id: Option<&'e str>,
    pub event_type: &'e str,
    pub event_name: &'e str,
    pub device_id: &'e str,
    pub session_id: &'e str,
    pub platform: &'e str,
    pub idfa: &'e str,
    pub idfv: &'e str,
    pub gaid: &'e str,
    pub oaid: &'e str,
    pub ip: &'e str,
    pub user_agent: &'e str,
    /// The app's own user id (identity stitching), and the app's version.
    pub user_id: &'e str,
    pub app_version: &'e str,
}

fn identity<'e, V: FieldValue<'e>>(f: &Fields<V>, ctx: &EventContext<'e>) -> Result<Identity<'e>, Rejection> {
    let event_type = required_str(f.event_type, "event_type", 64)?;
    let event_name = required_str(f.event_name, "event_name", 256)?;
    let device_id = required_str(f.device_id, "device_id", 128)?;
    let event_id = optional_str(f.event_id, "event_id", 64)?;
    let session_id = optional_str(f.session_id, "session_id", 128)?.unwrap_or("");
    let platform = optional_str(f.platform, "platform", 32)?.unwrap_or("");
    // The credential's app wins; a body naming another app is refused.
    let app_id = match (ctx.credential_app, optional_str(f.app_id, "app_id", 64)?) {
        (Some(bound), Some(sent)) if bound != sent => {
            return Err(Rejection::formatted(
                "app_mismatch",
                format_args!("app_id {sent:?} is not the app this key belongs to"),
            ));
        }
        (Some(bound), _) => bound,
        (None, sent) => sent.unwrap_or(""),
    };
    let idfa = optional_str(f.idfa, "idfa", 64)?.unwrap_or("");
    let idfv = optional_str(f.idfv, "idfv", 64)?.unwrap_or("");
    let gaid = optional_str(f.gaid, "gaid", 64)?.unwrap_or("");
    let oaid = optional_str(f.oaid, "oaid", 64)?.unwrap_or("");
    let ip = optional_str(f.ip, "ip", 45)?.unwrap_or("");
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(Rejection::new("invalid_field", "ip is not an IPv4 or IPv6 address"));
    }
    let user_agent = optional_str(f.user_agent, "user_agent", 1024)?.unwrap_or("");
    let user_id = optional_str(f.user_id, "user_id", 256)?.unwrap_or("");
    let app_version = optional_str(f.app_version, "app_version", 64)?.unwrap_or("");
    Ok(Identity {
        app_id,
        event_id,
        event_type,
        event_name,
        device_id,
        session_id,
        platform,
        idfa,
        idfv,
        gaid,
        oaid,
        ip,
        user_agent,
        user_id,
        app_version,
    })
}

/// Revenue in cents (a number, integer or not, within Decimal(18,2)) and its currency.
fn money<'e, V: FieldValue<'e>>(f: &Fields<V>) -> Result<(i64, [u8; 3]), Rejection> {
    let revenue_cents = match f.revenue {
        None => 0,
        Some(v) if v.is_null() => 0,
        Some(v) => {
            // Integers are numbers: `JSON.stringify(5.0)` is `5`.
            let r = v.number().ok_or_else(|| Rejection::new("invalid_revenue", "revenue must be a number"))?;
            if !(r.is_finite() && r.abs() <= MAX_REVENUE) {
                return Err(Rejection::new("invalid_revenue", "revenue does not fit Decimal(18,2)"));
            }
            (r * 100.0).round() as i64
        }
    };
    let currency = match optional_str(f.currency, "currency", 3)? {
        None => *b"USD",
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            let b = c.as_bytes();
            [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase(), b[2].to_ascii_uppercase()]
        }
        Some(_) => return Err(Rejection::new("invalid_currency", "currency must be a three-letter ISO 4217 code")),
    };
    Ok((revenue_cents, currency))
}

fn secs(ms: i64) -> u32 {
    ms.div_euclid(1000).clamp(0, u32::MAX as i64) as u32
}

/// RFC 3339 text or epoch milliseconds (integer or float).
pub fn parse_timestamp_ms(v: Value<'_, '_>) -> Option<i64> {
    if let Some(s) = v.as_str() {
        return rfc3339_ms(s);
    }
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    float_ms(v.as_f64()?)
}

pub(super) fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Epoch milliseconds sent as a float: truncated, within ±10^15 (31 700 years).
pub(super) fn float_ms(f: f64) -> Option<i64> {
    (f.is_finite() && f.abs() < 1e15).then_some(f as i64)
}

/// An epoch in seconds read as milliseconds lands in January 1970: within a factor of 1000
/// of now (±1 %) it was almost certainly meant as seconds.
fn looks_like_epoch_seconds(timestamp_ms: i64, received_ms: i64) -> bool {
    let as_seconds = timestamp_ms.saturating_mul(1000);
    (as_seconds - received_ms).abs() < received_ms / 100
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::tenant::OrgId;

    pub(crate) const NOW_MS: i64 = 1_780_000_000_000;

    /// A request's context for organisation `org_a`, its key bound to `app_1`, at `NOW_MS`.
    pub(crate) fn ctx() -> EventContext<'static> {
        EventContext {
            org_id: "org_a",
            credential_app: Some("app_1"),
            received_ms: NOW_MS,
            skew_ms: 0,
            sent_at_ms: None,
            retention_days: 90,
            plain_strings: false,
        }
    }

    fn run_with(json: &str, ctx: &EventContext) -> Result<(EventSummary, Vec<u8>), Rejection> {
        let mut buf = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut buf).unwrap();
        let mut out = RowBlock::new(OrgId::new("org_a"), 256);
        let mut scratch = Vec::new();
        let r = Validator::new(BodyLimits::default()).encode(tape.as_value(), ctx, &mut scratch, &mut out);
        if r.is_err() {
            assert!(out.data.is_empty(), "no partial row on rejection");
        }
        r.map(|s| (s, out.data.to_vec()))
    }

    fn run(json: &str) -> Result<(EventSummary, Vec<u8>), Rejection> {
        run_with(json, &ctx())
    }

    fn code(json: &str) -> &'static str {
        run(json).unwrap_err().code
    }

    /// Decodes the string columns of a row (fixed layout) for assertions.
    fn strings(row: &[u8]) -> Vec<String> {
        let mut v = row;
        let mut out = Vec::new();
        for _ in 0..8 {
            out.push(String::from_utf8(read_str(&mut v).unwrap().to_vec()).unwrap());
        }
        v = &v[4 + 4..]; // event_timestamp, received_at
        v = if v[0] == 1 { &v[1..] } else { &v[5..] };
        for _ in 0..2 {
            out.push(String::from_utf8(read_str(&mut v).unwrap().to_vec()).unwrap());
        }
        v = &v[8..]; // revenue
        for _ in 0..9 {
            // currency, idfa, idfv, gaid, oaid, ip, user_agent, user_id, app_version
            out.push(String::from_utf8(read_str(&mut v).unwrap().to_vec()).unwrap());
        }
        assert!(v.is_empty(), "row fully consumed");
        out
    }

    /// Through the request path's parse: strings with escapes are escaped again, and a body
    /// without any backslash has its strings copied as they are.
    #[test]
    fn property_strings_keep_their_escapes_only_where_the_body_had_them() {
        let event = |properties: &str| {
            format!(r#"{{"event_type":"t","event_name":"n","device_id":"d","event_id":"e","properties":{properties}}}"#)
        };
        for (properties, stored, plain) in [
            (r#"{"q":"a\"b\\c\nd\u0001"}"#, r#"{"q":"a\"b\\c\nd\u0001"}"#, false),
            (r#"{"q":"\u00e9"}"#, r#"{"q":"é"}"#, false),
            (r#"{ "q" : "plain é {[:,]}" , "n" : [1, true] }"#, r#"{"q":"plain é {[:,]}","n":[1,true]}"#, true),
        ] {
            let mut body = event(properties).into_bytes();
            let parsed = crate::event::parse::parse_body(
                &mut body,
                crate::event::parse::Shape::Single,
                1,
                &mut Default::default(),
            )
            .unwrap();
            assert_eq!(parsed.plain_strings, plain, "{properties}");
            let ctx = EventContext { plain_strings: parsed.plain_strings, ..ctx() };
            let mut out = RowBlock::new(OrgId::new("org_a"), 256);
            parsed.for_each(|_, e| {
                Validator::new(BodyLimits::default()).encode(e.unwrap(), &ctx, &mut Vec::new(), &mut out).unwrap();
            });
            assert_eq!(strings(&out.data)[8], stored, "{properties}");
        }
    }

    #[test]
    fn valid_event_encodes_every_column() {
        let (s, row) = run(r#"{"event_type":"purchase","event_name":"buy","device_id":"d1","event_id":"e1",
            "organization_id":"org_evil","properties":{"sku":"x","n":[1,2]},"revenue":9.99,"currency":"eur",
            "idfa":"IDFA","ip":"10.0.0.1","user_agent":"ua","unknown":true,"event_timestamp":1779999999000}"#)
        .unwrap();
        let cols = strings(&row);
        assert_eq!(cols[0], "org_a", "organization_id comes from the credential, never the body");
        assert_eq!(cols[1], "app_1");
        assert_eq!(cols[2], "e1");
        assert_eq!(&cols[3..6], ["purchase", "buy", "d1"]);
        assert_eq!(cols[8], r#"{"sku":"x","n":[1,2]}"#);
        assert_eq!(cols[9], "{}");
        assert_eq!(cols[10], "EUR");
        assert_eq!(cols[11], "IDFA");
        assert_eq!(cols[15], "10.0.0.1");
        assert_eq!(s.revenue_cents, 999);
        assert_eq!(s.day, (1_779_999_999_000i64 / 86_400_000) as u32);
    }

    #[test]
    fn event_id_is_generated_as_uuid_v7() {
        let (_, row) = run(r#"{"event_type":"t","event_name":"n","device_id":"d"}"#).unwrap();
        let id = uuid::Uuid::parse_str(&strings(&row)[2]).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    /// The limit is on the encoded row, exactly: a row of `max_event_bytes` passes, one more
    /// byte is refused before anything is written.
    #[test]
    fn event_too_large_counts_the_encoded_row() {
        let json = |name: &str| format!(r#"{{"event_type":"t","event_name":"{name}","device_id":"d","event_id":"e"}}"#);
        let (_, row) = run(&json("n")).unwrap();
        let limits = BodyLimits { max_event_bytes: row.len() + 1, ..BodyLimits::default() };
        for (name, fits) in [("n", true), ("nn", true), ("nnn", false)] {
            let mut buf = json(name).into_bytes();
            let tape = simd_json::to_tape(&mut buf).unwrap();
            let mut out = RowBlock::new(OrgId::new("org_a"), 16);
            let r = Validator::new(limits.clone()).encode(tape.as_value(), &ctx(), &mut Vec::new(), &mut out);
            match r {
                Ok(s) => assert!(fits && s.row_end == out.data.len() && out.data.len() <= limits.max_event_bytes),
                Err(e) => assert!(!fits && e.code == "event_too_large" && out.data.is_empty(), "{name}"),
            }
        }
    }

    #[test]
    fn generated_event_ids_are_formatted_as_the_uuid_crate_formats_them() {
        for x in [0, u32::MAX, 0x0123_4567, 0x89ab_cdef, 0xa0b1_c2d3, 0x9f9f_a0a0] {
            assert_eq!(hex_u32(x), *format!("{x:08x}").as_bytes());
        }
        for _ in 0..1000 {
            let mut id = [0u8; 36];
            generate_event_id(NOW_MS, &mut id);
            let text = std::str::from_utf8(&id).unwrap();
            let parsed = uuid::Uuid::parse_str(text).unwrap();
            assert_eq!(parsed.hyphenated().to_string(), text);
            assert_eq!(parsed.get_version_num(), 7);
            let (secs, nanos) = parsed.get_timestamp().unwrap().to_unix();
            assert_eq!(secs as i64 * 1000 + i64::from(nanos / 1_000_000), NOW_MS);
        }
    }

    #[test]
    fn required_fields_and_types() {
        assert_eq!(code(r#"{"event_name":"n","device_id":"d"}"#), "missing_field");
        assert_eq!(code(r#"{"event_type":"","event_name":"n","device_id":"d"}"#), "missing_field");
        assert_eq!(code(r#"{"event_type":5,"event_name":"n","device_id":"d"}"#), "invalid_field");
        let long = "x".repeat(65);
        assert_eq!(code(&format!(r#"{{"event_type":"{long}","event_name":"n","device_id":"d"}}"#)), "field_too_long");
        // 64 multi-byte characters are fine: the limit is in characters.
        let wide = "é".repeat(64);
        assert!(run(&format!(r#"{{"event_type":"{wide}","event_name":"n","device_id":"d"}}"#)).is_ok());
        assert_eq!(code(r#"{"event_type":"t","event_name":"n","device_id":"d","ip":"not-an-ip"}"#), "invalid_field");
    }

    #[test]
    fn timestamps() {
        let ok =
            |ts: &str| run(&format!(r#"{{"event_type":"t","event_name":"n","device_id":"d","event_timestamp":{ts}}}"#));
        assert!(ok(r#""2026-05-28T12:00:00Z""#).is_ok());
        assert!(ok(r#""2026-05-28T12:00:00.123+02:00""#).is_ok());
        assert_eq!(ok(r#""yesterday""#).unwrap_err().code, "invalid_timestamp");
        assert_eq!(ok(&(NOW_MS + 25 * 3_600_000).to_string()).unwrap_err().code, "timestamp_in_future");
        let seconds = ok(&(NOW_MS / 1000).to_string()).unwrap_err();
        assert!(seconds.message.contains("milliseconds"), "{}", seconds.message);
        assert_eq!(ok(&(NOW_MS - 91 * 86_400_000).to_string()).unwrap_err().code, "timestamp_too_old");
        assert!(ok(&(NOW_MS - 89 * 86_400_000).to_string()).is_ok());
    }

    #[test]
    fn sent_at_corrects_clock_skew() {
        // The device clock is 1 h behind: it stamped the event and sent_at an hour early.
        let mut c = ctx();
        c.sent_at_ms = Some(NOW_MS - 3_600_000);
        c.skew_ms = NOW_MS - (NOW_MS - 3_600_000);
        let device_ts = NOW_MS - 3_600_000 - 60_000; // a minute before sending, device time
        let (s, row) = run_with(
            &format!(r#"{{"event_type":"t","event_name":"n","device_id":"d","event_timestamp":{device_ts}}}"#),
            &c,
        )
        .unwrap();
        let mut v = &row[..];
        for _ in 0..8 {
            read_str(&mut v);
        }
        let ts = u32::from_le_bytes(v[..4].try_into().unwrap());
        assert_eq!(ts as i64, (NOW_MS - 60_000) / 1000, "a minute before receipt, server time");
        assert_eq!(s.day as i64, (NOW_MS - 60_000) / 86_400_000);
    }

    #[test]
    fn properties_rules() {
        assert_eq!(
            code(r#"{"event_type":"t","event_name":"n","device_id":"d","properties":[1]}"#),
            "invalid_properties"
        );
        let limit = format!("{}1{}", r#"{"a":"#.repeat(32), "}".repeat(32));
        assert!(
            run_with(&format!(r#"{{"event_type":"t","event_name":"n","device_id":"d","properties":{limit}}}"#), &ctx())
                .is_ok(),
            "exactly 32 levels is within the limit"
        );
        let deep = format!("{}1{}", r#"{"a":"#.repeat(33), "}".repeat(33));
        assert_eq!(
            code(&format!(r#"{{"event_type":"t","event_name":"n","device_id":"d","properties":{deep}}}"#)),
            "properties_too_deep"
        );
        let big = "y".repeat(33 * 1024);
        assert_eq!(
            code(&format!(
                r#"{{"event_type":"t","event_name":"n","device_id":"d","user_properties":{{"b":"{big}"}}}}"#
            )),
            "properties_too_large"
        );
    }

    #[test]
    fn revenue_and_currency() {
        for (json, cents) in [("5", 500), ("0", 0), ("-5", -500), ("1999", 199_900), ("5.0", 500), ("0.1", 10)] {
            let event = format!(r#"{{"event_type":"t","event_name":"n","device_id":"d","revenue":{json}}}"#);
            assert_eq!(run(&event).map(|(s, _)| s.revenue_cents), Ok(cents), "revenue {json}");
        }
        assert_eq!(code(r#"{"event_type":"t","event_name":"n","device_id":"d","revenue":"9.99"}"#), "invalid_revenue");
        assert_eq!(code(r#"{"event_type":"t","event_name":"n","device_id":"d","revenue":1e17}"#), "invalid_revenue");
        assert_eq!(code(r#"{"event_type":"t","event_name":"n","device_id":"d","currency":"EURO"}"#), "field_too_long");
        assert_eq!(code(r#"{"event_type":"t","event_name":"n","device_id":"d","currency":"E1R"}"#), "invalid_currency");
        let (s, _) = run(r#"{"event_type":"t","event_name":"n","device_id":"d","revenue":-0.015}"#).unwrap();
        assert_eq!(s.revenue_cents, -2);
    }

    #[test]
    fn app_binding() {
        assert_eq!(code(r#"{"event_type":"t","event_name":"n","device_id":"d","app_id":"other"}"#), "app_mismatch");
        let mut c = ctx();
        c.credential_app = None;
        let (_, row) = run_with(r#"{"event_type":"t","event_name":"n","device_id":"d","app_id":"mine"}"#, &c).unwrap();
        assert_eq!(strings(&row)[1], "mine");
    }
}
