//! A parsed property object back to compact JSON text, checked for depth and size as it is
//! written.
//!
//! simd-json's own generator writes the whole object before its size can be checked and needs
//! a separate walk for the depth rule; here both are checked as the text is written, so an
//! oversized object costs at most the size limit's work. The output is byte for byte what that
//! generator writes (a test holds it to that). It costs about what that generator did (1.2 k
//! instructions per batch event for `loadtest/event.json`'s properties, callgrind).

use simd_json::prelude::*;
use simd_json::value::tape::Value;
use simd_json::ValueType;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum TextError {
    /// A container nested deeper than the limit (objects and arrays count, scalars do not).
    TooDeep,
    /// The text grew past the byte limit; writing stopped there.
    TooLarge,
}

/// Appends `value` to `out` as compact JSON. `max_depth` bounds nesting (`value` itself is at
/// depth 1); `max_bytes` bounds what this call appends, checked as it goes, so a huge object
/// costs at most that much work before it is refused. With `plain_strings` (no string of the
/// body had an escape, so none holds a quote, a backslash or a control character) strings are
/// copied without looking for what to escape.
pub(super) fn write(
    value: Value<'_, '_>,
    out: &mut Vec<u8>,
    max_depth: usize,
    max_bytes: usize,
    plain_strings: bool,
) -> Result<(), TextError> {
    let limit = out.len().saturating_add(max_bytes);
    Writer { out, limit, max_depth, plain_strings }.value(value, 1)
}

struct Writer<'o> {
    out: &'o mut Vec<u8>,
    /// `out.len()` past which the text is too large.
    limit: usize,
    max_depth: usize,
    plain_strings: bool,
}

impl Writer<'_> {
    fn check_size(&self) -> Result<(), TextError> {
        if self.out.len() > self.limit {
            return Err(TextError::TooLarge);
        }
        Ok(())
    }

    /// Writes `v`, then checks the size: after every value, so a long array of numbers is cut
    /// as early as a long string.
    fn value(&mut self, v: Value<'_, '_>, depth: usize) -> Result<(), TextError> {
        if let Some(object) = v.as_object() {
            if depth > self.max_depth {
                return Err(TextError::TooDeep);
            }
            self.out.push(b'{');
            for (i, (key, child)) in object.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.string(key);
                self.out.push(b':');
                // Most members are strings: written here, not through another call of `value`.
                match child.as_str() {
                    Some(s) => {
                        self.string(s);
                        self.check_size()?;
                    }
                    None => self.value(child, depth + 1)?,
                }
            }
            self.out.push(b'}');
        } else if let Some(array) = v.as_array() {
            if depth > self.max_depth {
                return Err(TextError::TooDeep);
            }
            self.out.push(b'[');
            for (i, child) in array.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.value(child, depth + 1)?;
            }
            self.out.push(b']');
        } else if let Some(s) = v.as_str() {
            self.string(s);
        } else {
            self.scalar(v);
        }
        self.check_size()
    }

    /// A number, a boolean or null.
    fn scalar(&mut self, v: Value<'_, '_>) {
        match v.value_type() {
            ValueType::I64 => {
                let n = v.as_i64().unwrap_or_default();
                self.out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            }
            ValueType::U64 => {
                let n = v.as_u64().unwrap_or_default();
                self.out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            }
            ValueType::F64 => {
                let n = v.as_f64().unwrap_or_default();
                self.out.extend_from_slice(ryu::Buffer::new().format_finite(n).as_bytes());
            }
            ValueType::Bool => {
                let text: &[u8] = if v.as_bool() == Some(true) { b"true" } else { b"false" };
                self.out.extend_from_slice(text);
            }
            _ => self.out.extend_from_slice(b"null"),
        }
    }

    /// A quoted string; most need no escape and are copied whole, quotes and all, with one
    /// capacity check (three pushes checked it three times: a third of a short string's cost).
    #[inline(always)]
    fn string(&mut self, s: &str) {
        let out = &mut *self.out;
        let bytes = s.as_bytes();
        // No early exit, so the check vectorises on long strings.
        if self.plain_strings || !bytes.iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\')) {
            let n = bytes.len();
            out.reserve(n + 2);
            let spare = &mut out.spare_capacity_mut()[..n + 2];
            spare[0].write(b'"');
            spare[1..=n].write_copy_of_slice(bytes);
            spare[n + 1].write(b'"');
            // SAFETY: the n + 2 bytes after the length were just written.
            unsafe { out.set_len(out.len() + n + 2) };
        } else {
            out.push(b'"');
            escape(out, bytes);
            out.push(b'"');
        }
    }
}

/// Copies `bytes` with JSON's escapes; runs that need none are copied whole.
fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        match escape {
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
            }
            short => out.extend_from_slice(&[b'\\', short]),
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

/// What a byte becomes in a JSON string: 0 stays itself, `u` is `\u00XX`, else `\` + that byte.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(json: &str) -> Result<String, TextError> {
        let mut input = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut input).unwrap();
        let mut out = b"prefix".to_vec();
        write(tape.as_value(), &mut out, 32, 1 << 20, false)?;
        Ok(String::from_utf8(out[6..].to_vec()).unwrap())
    }

    fn theirs(json: &str) -> String {
        let mut input = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut input).unwrap();
        let mut out = Vec::new();
        tape.as_value().write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_simd_json_writes() {
        let cases = [
            r#"{}"#,
            r#"{"sku":"PRO-1Y","screen":"paywall","ab":"v2"}"#,
            r#"{ "a" : [ 1 , -2 , 3.5 , 1e300 , -0.0 , 18446744073709551615 , true , false , null ] }"#,
            r#"{"nested":{"deeper":{"x":[[],{},[{}]]}},"e":""}"#,
            r#"{"esc":"q\"b\\s\/n\nt\tr\rb\bf\fc\u0001\u001f\u007f","uni":"é☃\ud83d\ude00\u00e9"}"#,
            r#"{"k\"ey\n":"v","":0,"big":123456789012345678,"neg":-9223372036854775808}"#,
            r#"{"f":0.1,"g":1.7976931348623157e308,"h":5e-324,"i":100.0,"j":1.5E+3}"#,
        ];
        for json in cases {
            assert_eq!(ours(json).unwrap(), theirs(json), "{json}");
        }
    }

    /// A body without a backslash has no string to escape: told so, the writer writes the same.
    #[test]
    fn plain_strings_are_copied_as_they_would_be_escaped() {
        let cases = [
            r#"{"sku":"PRO-1Y","screen":"paywall","ab":"v2"}"#,
            "{\"nested\":{\"deeper\":{\"x\":[[],{},[{}]]}},\"e\":\"\",\"u\":\"é☃😀 {[,:]} '\u{7f}\"}",
            r#"{ "a" : [ 1 , -2 , 3.5 , true , null ] , "k": "v w" }"#,
        ];
        for json in cases {
            let mut input = json.as_bytes().to_vec();
            let plain = !crate::event::parse::replace_lone_surrogates(&mut input);
            assert!(plain, "{json}");
            let tape = simd_json::to_tape(&mut input).unwrap();
            let mut out = Vec::new();
            write(tape.as_value(), &mut out, 32, 1 << 20, true).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), ours(json).unwrap(), "{json}");
        }
        let mut escaped = br#"{"a":"q\"b"}"#.to_vec();
        assert!(crate::event::parse::replace_lone_surrogates(&mut escaped), "a backslash is seen");
    }

    #[test]
    fn every_byte_of_a_string_is_escaped_as_simd_json_does() {
        let text: String = (1u8..0x80).map(char::from).chain("é€😀".chars()).collect();
        let json = format!(r#"{{"all":{}}}"#, serde_json::to_string(&text).unwrap());
        assert_eq!(ours(&json).unwrap(), theirs(&json));
    }

    #[test]
    fn depth_counts_containers_and_size_stops_the_writing() {
        let nested = |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
        assert!(ours(&nested(32)).is_ok());
        assert_eq!(ours(&nested(33)), Err(TextError::TooDeep));
        let arrays = format!(r#"{{"a":{}1{}}}"#, "[".repeat(31), "]".repeat(31));
        assert!(ours(&arrays).is_ok());
        let arrays = format!(r#"{{"a":{}1{}}}"#, "[".repeat(32), "]".repeat(32));
        assert_eq!(ours(&arrays), Err(TextError::TooDeep));

        // What writing `json` within `max_bytes` gives, and how many bytes it wrote.
        let bounded = |json: String, max_bytes: usize| {
            let mut input = json.into_bytes();
            let tape = simd_json::to_tape(&mut input).unwrap();
            let mut out = Vec::new();
            (write(tape.as_value(), &mut out, 32, max_bytes, false), out.len())
        };
        let long = || format!(r#"{{"s":"{}"}}"#, "y".repeat(1000));
        assert_eq!(bounded(long(), 1000).0, Err(TextError::TooLarge));
        assert_eq!(bounded(long(), 1008).0, Ok(()), "exactly at the limit");
        // Many small members: cut at the first container past the limit, not at the end.
        let (result, written) = bounded(format!("[{}1]", "[1],".repeat(10_000)), 100);
        assert_eq!(result, Err(TextError::TooLarge));
        assert!(written < 110, "stopped early: {written} bytes written");
        // Scalars too: a long array of numbers is cut at the first past the limit.
        let (result, written) = bounded(format!("[{}1]", "123456789,".repeat(10_000)), 100);
        assert_eq!(result, Err(TextError::TooLarge));
        assert!(written < 111, "stopped early: {written} bytes written");
    }
}
