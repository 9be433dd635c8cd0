//! The fields an event may carry, picked out of its JSON object in one pass, and the string
//! rules every one of them follows.
//!
//! The rules read a field through [`FieldValue`], so the same checks run on a simd-json tape's
//! values and on the values [`super::direct`] reads straight from a body.

use simd_json::prelude::*;
use simd_json::value::tape::Value;

use super::validate::parse_timestamp_ms;
use super::Rejection;

/// What the rules need to know of one field's JSON value.
pub(super) trait FieldValue<'v>: Copy {
    fn is_null(self) -> bool;
    /// The text of a string, borrowed from the body; `None` for any other type.
    fn string(self) -> Option<&'v str>;
    /// Any number as an `f64` (integers converted); `None` for any other type.
    fn number(self) -> Option<f64>;
    /// RFC 3339 text or epoch milliseconds, as [`parse_timestamp_ms`] reads them.
    fn timestamp_ms(self) -> Option<i64>;
}

impl<'v> FieldValue<'v> for Value<'_, 'v> {
    #[inline]
    fn is_null(self) -> bool {
        TypedScalarValue::is_null(&self)
    }

    #[inline]
    fn string(self) -> Option<&'v str> {
        // `into_string` keeps the body's lifetime (`as_str` would tie it to the value).
        self.into_string()
    }

    #[inline]
    fn number(self) -> Option<f64> {
        self.cast_f64()
    }

    fn timestamp_ms(self) -> Option<i64> {
        parse_timestamp_ms(self)
    }
}

/// Declares [`Fields`] and the key each slot is read from, in one list.
macro_rules! fields {
    ($($name:ident),* $(,)?) => {
        /// The fields this edge reads, picked out of the event in one pass over its keys
        /// (one string match per key, rather than a map lookup per field).
        pub(super) struct Fields<V> {
            $(pub(super) $name: Option<V>,)*
        }

        impl<V> Default for Fields<V> {
            fn default() -> Self {
                Fields { $($name: None,)* }
            }
        }

        impl<V> Fields<V> {
            /// Where the value of `key` goes; `None` for a key this edge ignores.
            #[inline]
            pub(super) fn slot(&mut self, key: &str) -> Option<&mut Option<V>> {
                match key {
                    $(stringify!($name) => Some(&mut self.$name),)*
                    _ => None,
                }
            }
        }
    };
}

fields! {
    event_type, event_name, device_id, event_id, session_id, platform, app_id,
    idfa, idfv, gaid, oaid, ip, user_agent, user_id, app_version,
    event_timestamp, revenue, currency, properties, user_properties,
}

impl<'t, 'v> Fields<Value<'t, 'v>> {
    /// The fields of a tape's event object; a key sent twice keeps its last value.
    #[inline]
    pub(super) fn collect(event: Value<'t, 'v>) -> Option<Self> {
        let mut f = Fields::default();
        for (key, value) in event.as_object()?.iter() {
            if let Some(slot) = f.slot(key) {
                *slot = Some(value); // unknown fields are ignored
            }
        }
        Some(f)
    }
}

#[inline]
pub(super) fn required_str<'v, V: FieldValue<'v>>(
    value: Option<V>,
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
pub(super) fn optional_str<'v, V: FieldValue<'v>>(
    value: Option<V>,
    key: &'static str,
    max_chars: usize,
) -> Result<Option<&'v str>, Rejection> {
    let Some(v) = value else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    let Some(s) = v.string() else {
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
