//! The `events` row layout in ClickHouse's RowBinary format.
//!
//! The column list here and the `INSERT` statement are the same constant, so
//! the encoder and the table can only disagree if the migration does; the
//! integration tests read every column back to catch that.

use bytes::BufMut;

/// The row layout a block was encoded with. Spool records carry it, so that rows written by an
/// earlier release still ship after an upgrade: a format only ever appends columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowFormat {
    /// The first 21 columns.
    V1,
    /// + `user_id`, `app_version` (ClickHouse migration 004).
    V2,
}

impl RowFormat {
    /// What this build writes.
    pub const CURRENT: RowFormat = RowFormat::V2;

    /// Columns in encoding order; must exist in `migrations/clickhouse/*`.
    pub fn columns(self) -> &'static str {
        match self {
            RowFormat::V1 => COLUMNS_V1,
            RowFormat::V2 => COLUMNS_V2,
        }
    }

    pub fn column_count(self) -> usize {
        match self {
            RowFormat::V1 => 21,
            RowFormat::V2 => 23,
        }
    }
}

const COLUMNS_V1: &str = "organization_id, app_id, event_id, event_type, event_name, device_id, session_id, \
platform, event_timestamp, received_at, sent_at, properties, user_properties, revenue, currency, \
idfa, idfv, gaid, oaid, ip, user_agent";
const COLUMNS_V2: &str = "organization_id, app_id, event_id, event_type, event_name, device_id, session_id, \
platform, event_timestamp, received_at, sent_at, properties, user_properties, revenue, currency, \
idfa, idfv, gaid, oaid, ip, user_agent, user_id, app_version";

/// `String`: LEB128 length, then the bytes.
#[inline]
pub fn put_str(out: &mut impl BufMut, s: &[u8]) {
    put_varint(out, s.len() as u64);
    out.put_slice(s);
}

#[inline]
pub fn put_varint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// `DateTime`: seconds since the epoch as UInt32.
#[inline]
pub fn put_datetime(out: &mut impl BufMut, unix_secs: u32) {
    out.put_u32_le(unix_secs);
}

/// `Nullable(DateTime)`: a null flag, then the value when present.
#[inline]
pub fn put_nullable_datetime(out: &mut impl BufMut, unix_secs: Option<u32>) {
    match unix_secs {
        None => out.put_u8(1),
        Some(v) => {
            out.put_u8(0);
            out.put_u32_le(v);
        }
    }
}

/// `Decimal(18, 2)`: an Int64 of hundredths.
#[inline]
pub fn put_decimal_18_2(out: &mut impl BufMut, cents: i64) {
    out.put_i64_le(cents);
}

/// Reads one `String` back (tests and spool tools).
pub fn read_str<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len = 0u64;
    let mut shift = 0;
    loop {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        len |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    let len = usize::try_from(len).ok()?;
    if buf.len() < len {
        return None;
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for len in [0usize, 1, 127, 128, 300, 16_384, 1 << 20] {
            let s = vec![b'x'; len];
            let mut out = Vec::new();
            put_str(&mut out, &s);
            let mut view = &out[..];
            assert_eq!(read_str(&mut view).unwrap().len(), len);
            assert!(view.is_empty());
        }
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
