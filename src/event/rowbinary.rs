//! The `events` row layout in ClickHouse's RowBinary format.
//!
//! The column list here and the `INSERT` statement are the same constant, so
//! the encoder and the table can only disagree if the migration does; the
//! integration tests read every column back to catch that.

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};

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

/// Bytes [`put_str`] writes for a string of `len` bytes.
#[inline]
pub const fn str_size(len: usize) -> usize {
    if len < 0x80 {
        1 + len
    } else {
        varint_size(len as u64) + len
    }
}

#[inline]
pub const fn varint_size(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends one row of `size` bytes, which `fill` writes through a [`RowWriter`]: one capacity
/// check for the row instead of one per column (a `BufMut` put checks and advances each time,
/// ~46 puts per event).
#[inline]
pub fn write_row(out: &mut BytesMut, size: usize, fill: impl FnOnce(&mut RowWriter<'_>)) {
    out.reserve(size);
    let mut w = RowWriter { spare: &mut out.spare_capacity_mut()[..size], len: 0 };
    fill(&mut w);
    let written = w.len;
    debug_assert_eq!(written, size, "the row's size was computed wrongly");
    // SAFETY: the writer initialised its first `written` bytes, in order, and never skips any.
    unsafe { out.set_len(out.len() + written) };
}

/// Sequential writes into a row's reserved bytes; bounds-checked, so a wrong size panics
/// instead of writing past the reservation.
pub struct RowWriter<'a> {
    spare: &'a mut [MaybeUninit<u8>],
    len: usize,
}

impl<'a> RowWriter<'a> {
    /// Writes from the start of `spare`, for a caller that places the parts of a larger buffer
    /// itself (the Native encoder's block headers).
    pub fn new(spare: &'a mut [MaybeUninit<u8>]) -> Self {
        RowWriter { spare, len: 0 }
    }

    /// Bytes written so far, all from the start of the spare bytes and in order.
    pub fn written(&self) -> usize {
        self.len
    }

    /// Copies `s`. Nearly every value of a row is under 33 bytes: those are copied as two
    /// overlapping moves of a fixed size, in line, where a `memcpy` call per value cost more
    /// than its copy (2.4 % of a batch's CPU in `perf record`).
    #[inline]
    pub fn bytes(&mut self, s: &[u8]) {
        let n = s.len();
        let to = &mut self.spare[self.len..self.len + n];
        match n {
            0 => {}
            1..=3 => {
                to[0].write(s[0]);
                to[n / 2].write(s[n / 2]);
                to[n - 1].write(s[n - 1]);
            }
            4..=7 => {
                to[..4].write_copy_of_slice(&s[..4]);
                to[n - 4..].write_copy_of_slice(&s[n - 4..]);
            }
            8..=16 => {
                to[..8].write_copy_of_slice(&s[..8]);
                to[n - 8..].write_copy_of_slice(&s[n - 8..]);
            }
            17..=32 => {
                to[..16].write_copy_of_slice(&s[..16]);
                to[n - 16..].write_copy_of_slice(&s[n - 16..]);
            }
            _ => {
                to.write_copy_of_slice(s);
            }
        }
        self.len += n;
    }

    #[inline]
    pub fn byte(&mut self, b: u8) {
        self.spare[self.len].write(b);
        self.len += 1;
    }

    #[inline]
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    /// `String`, as [`put_str`].
    #[inline]
    pub fn str(&mut self, s: &[u8]) {
        self.varint(s.len() as u64);
        self.bytes(s);
    }

    /// `DateTime`, as [`put_datetime`].
    #[inline]
    pub fn datetime(&mut self, unix_secs: u32) {
        self.bytes(&unix_secs.to_le_bytes());
    }

    /// `Nullable(DateTime)`, as [`put_nullable_datetime`]: 1 byte, or 5.
    #[inline]
    pub fn nullable_datetime(&mut self, unix_secs: Option<u32>) {
        match unix_secs {
            None => self.byte(1),
            Some(v) => {
                self.byte(0);
                self.datetime(v);
            }
        }
    }

    /// `Decimal(18, 2)`, as [`put_decimal_18_2`].
    #[inline]
    pub fn decimal_18_2(&mut self, cents: i64) {
        self.bytes(&cents.to_le_bytes());
    }
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

    #[test]
    fn row_writer_writes_what_the_puts_write() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 1 << 20] {
            let s = vec![b'x'; len];
            let (mut puts, mut row) = (Vec::new(), BytesMut::from(&b"before"[..]));
            put_str(&mut puts, &s);
            put_datetime(&mut puts, 7);
            put_nullable_datetime(&mut puts, None);
            put_nullable_datetime(&mut puts, Some(9));
            put_decimal_18_2(&mut puts, -5);
            let size = str_size(len) + 4 + 1 + 5 + 8;
            write_row(&mut row, size, |w| {
                w.str(&s);
                w.datetime(7);
                w.nullable_datetime(None);
                w.nullable_datetime(Some(9));
                w.decimal_18_2(-5);
            });
            assert_eq!(&row[..6], b"before");
            assert_eq!(&row[6..], &puts[..], "{len}");
            assert_eq!(varint_size(len as u64), str_size(len) - len);
        }
    }

    #[test]
    fn values_of_every_length_are_copied_whole_between_their_neighbours() {
        for n in 0..80 {
            let value: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
            let mut row = BytesMut::new();
            write_row(&mut row, n + 2, |w| {
                w.byte(0xee);
                w.bytes(&value);
                w.byte(0xff);
            });
            assert_eq!(row[0], 0xee);
            assert_eq!(&row[1..=n], &value[..], "{n}");
            assert_eq!(row[n + 1], 0xff);
        }
    }

    #[test]
    #[should_panic]
    fn a_row_larger_than_its_size_panics_instead_of_writing_past_it() {
        write_row(&mut BytesMut::new(), 3, |w| w.str(b"abcd"));
    }
}
