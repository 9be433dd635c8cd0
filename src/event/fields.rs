//! The fields an event may carry, picked out of its JSON object in one pass, and the string
//! rules every one of them follows.

use simd_json::prelude::*;
use simd_json::value::tape::Value;

use super::Rejection;

/// The fields this edge reads, picked out of the event in one pass over its keys
/// (one string match per key, rather than a map lookup per field).
#[derive(Default)]
pub(super) struct Fields<'t, 'v> {
    pub(super) event_type: Option<Value<'t, 'v>>,
    pub(super) event_name: Option<Value<'t, 'v>>,
    pub(super) device_id: Option<Value<'t, 'v>>,
    pub(super) event_id: Option<Value<'t, 'v>>,
    pub(super) session_id: Option<Value<'t, 'v>>,
    pub(super) platform: Option<Value<'t, 'v>>,
    pub(super) app_id: Option<Value<'t, 'v>>,
    pub(super) idfa: Option<Value<'t, 'v>>,
    pub(super) idfv: Option<Value<'t, 'v>>,
    pub(super) gaid: Option<Value<'t, 'v>>,
    pub(super) oaid: Option<Value<'t, 'v>>,
    pub(super) ip: Option<Value<'t, 'v>>,
    pub(super) user_agent: Option<Value<'t, 'v>>,
    pub(super) user_id: Option<Value<'t, 'v>>,
    pub(super) app_version: Option<Value<'t, 'v>>,
    pub(super) event_timestamp: Option<Value<'t, 'v>>,
    pub(super) revenue: Option<Value<'t, 'v>>,
    pub(super) currency: Option<Value<'t, 'v>>,
    pub(super) properties: Option<Value<'t, 'v>>,
    pub(super) user_properties: Option<Value<'t, 'v>>,
}

impl<'t, 'v> Fields<'t, 'v> {
    #[inline]
    pub(super) fn collect(event: Value<'t, 'v>) -> Option<Self> {
        let mut f = Fields::default();
        for (key, value) in event.as_object()?.iter() {
            let slot = match key {
                "event_type" => &mut f.event_type,
                "event_name" => &mut f.event_name,
                "device_id" => &mut f.device_id,
                "event_id" => &mut f.event_id,
                "session_id" => &mut f.session_id,
                "platform" => &mut f.platform,
                "app_id" => &mut f.app_id,
                "idfa" => &mut f.idfa,
                "idfv" => &mut f.idfv,
                "gaid" => &mut f.gaid,
                "oaid" => &mut f.oaid,
                "ip" => &mut f.ip,
                "user_agent" => &mut f.user_agent,
                "user_id" => &mut f.user_id,
                "app_version" => &mut f.app_version,
                "event_timestamp" => &mut f.event_timestamp,
                "revenue" => &mut f.revenue,
                "currency" => &mut f.currency,
                "properties" => &mut f.properties,
                "user_properties" => &mut f.user_properties,
                _ => continue, // unknown fields are ignored
            };
            *slot = Some(value);
        }
        Some(f)
    }
}

#[inline]
pub(super) fn required_str<'v>(
    value: Option<Value<'_, 'v>>,
    key: &'static str,
    max_chars: usize,
) -> Result<&'v str, Rejection> {
    match optional_str(value, key, max_chars)? {
        Some(s) => Ok(s),
        None => Err(missing(key)),
    }
}

#[cold]
#[inline(never)]
fn missing(key: &str) -> Rejection {
    Rejection::new("missing_field", format!("{key} is required"))
}

/// Absent, null and "" are all "not sent".
#[inline]
pub(super) fn optional_str<'v>(
    value: Option<Value<'_, 'v>>,
    key: &'static str,
    max_chars: usize,
) -> Result<Option<&'v str>, Rejection> {
    let Some(v) = value else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    // `into_string` keeps the body's lifetime (`as_str` would tie it to `v`).
    let Some(s) = v.into_string() else {
        return Err(not_a_string(key));
    };
    // Bytes bound chars from above, so counting is needed only for long non-ASCII text.
    if s.len() > max_chars && s.chars().count() > max_chars {
        return Err(too_long(key, max_chars));
    }
    Ok(Some(s).filter(|s| !s.is_empty()))
}

// The refusals are built out of line: with their formatting inside, `optional_str` (17 calls
// per event) was too large to inline, and its calls cost more than its checks. Not
// `Rejection::formatted`: building the `format_args!` in place kept it from inlining too
// (8.3 k → 8.8 k instructions per batch event under callgrind).
#[cold]
#[inline(never)]
fn not_a_string(key: &str) -> Rejection {
    Rejection::new("invalid_field", format!("{key} must be a string"))
}

#[cold]
#[inline(never)]
fn too_long(key: &str, max_chars: usize) -> Rejection {
    Rejection::new("field_too_long", format!("{key} exceeds {max_chars} characters"))
}
