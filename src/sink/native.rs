//! RowBinary rows → one ClickHouse `Native` block (columnar).
//!
//! Events are encoded once, row by row, as RowBinary (the natural shape for
//! appending them one request at a time). At ship time the rows of a block
//! are transposed into columns, because ClickHouse spends less CPU per row
//! parsing `Native` than `RowBinary`. Measured here on 18.16, 1 M `events`
//! rows over HTTP, server CPU from /proc: RowBinary 1.22–1.74 s, Native
//! 1.00–1.05 s (README, "Measuring"). The transposition is a copy per field.

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::rowbinary::{put_str, RowFormat};

#[derive(Clone, Copy)]
enum Kind {
    Str,
    DateTime,
    NullableDateTime,
    Decimal64,
}

/// The `events` columns in RowBinary order with their ClickHouse types.
/// Must match `rowbinary::COLUMNS` (a test checks) and the migrations.
const SCHEMA: [(&str, &str, Kind); 23] = [
    ("organization_id", "String", Kind::Str),
    ("app_id", "String", Kind::Str),
    ("event_id", "String", Kind::Str),
    ("event_type", "String", Kind::Str),
    ("event_name", "String", Kind::Str),
    ("device_id", "String", Kind::Str),
    ("session_id", "String", Kind::Str),
    ("platform", "String", Kind::Str),
    ("event_timestamp", "DateTime('UTC')", Kind::DateTime),
    ("received_at", "DateTime('UTC')", Kind::DateTime),
    ("sent_at", "Nullable(DateTime('UTC'))", Kind::NullableDateTime),
    ("properties", "String", Kind::Str),
    ("user_properties", "String", Kind::Str),
    ("revenue", "Decimal(18, 2)", Kind::Decimal64),
    ("currency", "String", Kind::Str),
    ("idfa", "String", Kind::Str),
    ("idfv", "String", Kind::Str),
    ("gaid", "String", Kind::Str),
    ("oaid", "String", Kind::Str),
    ("ip", "String", Kind::Str),
    ("user_agent", "String", Kind::Str),
    ("user_id", "String", Kind::Str),
    ("app_version", "String", Kind::Str),
];

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Transposes RowBinary rows (`chunks` hold whole rows; `rows` in all) into one Native block,
/// its rows sorted by the table's `ORDER BY` key.
///
/// ClickHouse checks whether an inserted block is already in key order and only sorts and
/// permutes every column when it is not; for `events` that sort was more than half of its insert
/// time (1 M rows here: 3.3–3.9 s as they came, 1.5–1.7 s sorted; README, "Measuring").
pub fn to_native<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    rows: usize,
    format: RowFormat,
) -> Result<Bytes, Malformed> {
    let schema = &SCHEMA[..format.column_count()];
    let sorted = rows_in_key_order(chunks, rows, schema)?;
    let mut columns: Vec<Vec<u8>> = schema.iter().map(|_| Vec::new()).collect();
    // Nullable columns keep their null map apart from the values.
    let mut null_map = Vec::with_capacity(rows);
    for (n, row) in sorted.iter().enumerate() {
        walk_row(row, schema, |i, field| match schema[i].2 {
            Kind::NullableDateTime => {
                null_map.push(field[0]);
                // A null keeps a placeholder under it.
                columns[i].extend_from_slice(if field[0] == 0 { &field[1..] } else { &[0; 4] });
            }
            // Native strings are encoded exactly as in RowBinary.
            _ => columns[i].extend_from_slice(field),
        })?;
        if n == 0 {
            // Rows are alike: size every column from the first so none regrows.
            for column in columns.iter_mut() {
                column.reserve(column.len() * rows.saturating_sub(1) * 5 / 4 + 64);
            }
        }
    }
    let size: usize = columns.iter().map(Vec::len).sum::<usize>() + null_map.len() + 1024;
    let mut out = BytesMut::with_capacity(size);
    crate::event::rowbinary::put_varint(&mut out, schema.len() as u64);
    crate::event::rowbinary::put_varint(&mut out, rows as u64);
    for ((name, type_name, kind), column) in schema.iter().zip(&columns) {
        put_str(&mut out, name.as_bytes());
        put_str(&mut out, type_name.as_bytes());
        if matches!(kind, Kind::NullableDateTime) {
            out.put_slice(&null_map);
        }
        out.put_slice(column);
    }
    Ok(out.freeze())
}

/// Positions of the `ORDER BY (organization_id, event_timestamp, device_id, event_id)` columns.
const ORG: usize = 0;
const EVENT_ID: usize = 2;
const DEVICE: usize = 5;
const TIMESTAMP: usize = 8;

/// What a row is sorted by after its packed key (see [`rows_in_key_order`]).
struct Tail<'a> {
    device: &'a [u8],
    event_id: &'a [u8],
}

/// Organisation rank (24 bits) · timestamp (32 bits) · device id prefix (9 bytes, zero-padded:
/// a shorter id is a prefix of any longer one it ties with, so the order agrees with memcmp's).
const RANK_SHIFT: u32 = 104;
const MAX_RANKS: usize = 1 << 24;
const DEVICE_PREFIX: usize = 9;

/// Splits the chunks into rows and orders them by the table's key, comparing strings as
/// ClickHouse does (bytewise, then by length).
fn rows_in_key_order<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    rows: usize,
    schema: &[(&str, &str, Kind)],
) -> Result<Vec<&'a [u8]>, Malformed> {
    // The sort moves only (packed key, row number): 32 bytes a row, most comparisons one
    // integer compare; ties look up the rest of the key on the side.
    let mut keys: Vec<(u128, u32)> = Vec::with_capacity(rows);
    let mut tails: Vec<Tail<'a>> = Vec::with_capacity(rows);
    let mut row_bytes: Vec<&'a [u8]> = Vec::with_capacity(rows);
    // Organisations in first-seen order; a block holds few, in runs (the shipper groups them).
    let mut orgs: Vec<&'a [u8]> = Vec::new();
    for mut input in chunks {
        while !input.is_empty() {
            let (mut org, mut ts, mut device, mut event_id) = (&[][..], 0u32, &[][..], &[][..]);
            let row = walk_row(input, schema, |i, field| match i {
                ORG => org = str_value(field),
                EVENT_ID => event_id = str_value(field),
                DEVICE => device = str_value(field),
                TIMESTAMP => ts = u32::from_le_bytes(field.try_into().expect("4 bytes")),
                _ => {}
            })?;
            input = &input[row.len()..];
            if row_bytes.len() == rows {
                return Err(Malformed);
            }
            let seen = match orgs.last() {
                Some(last) if *last == org => orgs.len() - 1,
                _ => match orgs.iter().rposition(|o| *o == org) {
                    Some(i) => i,
                    None => {
                        orgs.push(org);
                        orgs.len() - 1
                    }
                },
            };
            let mut prefix = [0u8; 16];
            let take = device.len().min(DEVICE_PREFIX);
            prefix[16 - DEVICE_PREFIX..16 - DEVICE_PREFIX + take].copy_from_slice(&device[..take]);
            let packed = (seen as u128) << RANK_SHIFT | (ts as u128) << 72 | u128::from_be_bytes(prefix);
            keys.push((packed, row_bytes.len() as u32));
            tails.push(Tail { device, event_id });
            row_bytes.push(row);
        }
    }
    if row_bytes.len() != rows {
        return Err(Malformed);
    }
    if orgs.len() > MAX_RANKS || rows > u32::MAX as usize {
        // More than the key has bits for: ClickHouse sorts this block itself.
        return Ok(row_bytes);
    }
    if orgs.len() > 1 {
        // First-seen order → name order.
        let mut by_name: Vec<usize> = (0..orgs.len()).collect();
        by_name.sort_unstable_by_key(|&i| orgs[i]);
        let mut rank = vec![0u128; orgs.len()];
        for (r, &i) in by_name.iter().enumerate() {
            rank[i] = r as u128;
        }
        let low = (1u128 << RANK_SHIFT) - 1;
        for (packed, _) in &mut keys {
            *packed = rank[(*packed >> RANK_SHIFT) as usize] << RANK_SHIFT | (*packed & low);
        }
    }
    keys.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            let (x, y) = (&tails[a.1 as usize], &tails[b.1 as usize]);
            x.device.cmp(y.device).then_with(|| x.event_id.cmp(y.event_id))
        })
    });
    Ok(keys.iter().map(|&(_, i)| row_bytes[i as usize]).collect())
}

/// Walks one row at the front of `input`, handing each column's encoded bytes to `field` (a
/// string with its length prefix, a nullable with its flag); returns the row's bytes.
#[inline(always)]
fn walk_row<'a>(
    input: &'a [u8],
    schema: &[(&str, &str, Kind)],
    mut field: impl FnMut(usize, &'a [u8]),
) -> Result<&'a [u8], Malformed> {
    let mut at = 0;
    for (i, (_, _, kind)) in schema.iter().enumerate() {
        let rest = &input[at..];
        let width = match kind {
            Kind::Str => {
                let (len, header) = read_varint(rest).ok_or(Malformed)?;
                header + usize::try_from(len).map_err(|_| Malformed)?
            }
            Kind::DateTime => 4,
            Kind::Decimal64 => 8,
            Kind::NullableDateTime => match rest.first() {
                Some(0) => 5,
                Some(_) => 1,
                None => return Err(Malformed),
            },
        };
        field(i, rest.get(..width).ok_or(Malformed)?);
        at += width;
    }
    Ok(&input[..at])
}

/// A string field's bytes without their length prefix.
fn str_value(field: &[u8]) -> &[u8] {
    let header = read_varint(field).map_or(0, |(_, h)| h);
    &field[header..]
}

/// (value, bytes it took)
fn read_varint(input: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in input.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::rowbinary::*;

    #[test]
    fn schema_matches_the_insert_column_list() {
        for format in [RowFormat::V1, RowFormat::V2] {
            let names: Vec<&str> = SCHEMA[..format.column_count()].iter().map(|(n, _, _)| *n).collect();
            let columns: Vec<&str> = format.columns().split(',').map(str::trim).collect();
            assert_eq!(names, columns);
        }
    }

    fn row(out: &mut BytesMut, id: &str, sent_at: Option<u32>) {
        for i in 0..8 {
            put_str(out, if i == 2 { id.as_bytes() } else { b"x" });
        }
        put_datetime(out, 10);
        put_datetime(out, 11);
        put_nullable_datetime(out, sent_at);
        put_str(out, b"{}");
        put_str(out, b"{}");
        put_decimal_18_2(out, 1999);
        for _ in 0..7 {
            put_str(out, b"y");
        }
    }

    /// A current row: the first format's columns and the ones added since.
    fn row_v2(out: &mut BytesMut, id: &str, sent_at: Option<u32>) {
        row(out, id, sent_at);
        put_str(out, b"user");
        put_str(out, b"1.0");
    }

    #[test]
    fn each_format_transposes_its_own_columns() {
        let mut v1 = BytesMut::new();
        row(&mut v1, "a", None);
        assert_eq!(to_native([&v1[..]], 1, RowFormat::V1).unwrap()[0], 21);
        assert_eq!(to_native([&v1[..]], 1, RowFormat::V2), Err(Malformed), "a V1 row is short for V2");
        let mut v2 = BytesMut::new();
        row_v2(&mut v2, "a", None);
        assert_eq!(to_native([&v2[..]], 1, RowFormat::V2).unwrap()[0], 23);
    }

    #[test]
    fn transposes_rows_into_columns() {
        let mut rb = BytesMut::new();
        row(&mut rb, "a", Some(7));
        row(&mut rb, "bb", None);
        let native = to_native([&rb[..]], 2, RowFormat::V1).unwrap();
        let mut v = &native[..];
        assert_eq!((v[0], v[1]), (21, 2), "columns, rows");
        v = &v[2..];
        // organization_id: name, type, two values.
        assert_eq!(read_str(&mut v).unwrap(), b"organization_id");
        assert_eq!(read_str(&mut v).unwrap(), b"String");
        assert_eq!((read_str(&mut v).unwrap(), read_str(&mut v).unwrap()), (&b"x"[..], &b"x"[..]));
        read_str(&mut v);
        read_str(&mut v);
        read_str(&mut v);
        read_str(&mut v); // app_id
        assert_eq!(read_str(&mut v).unwrap(), b"event_id");
        read_str(&mut v);
        assert_eq!((read_str(&mut v).unwrap(), read_str(&mut v).unwrap()), (&b"a"[..], &b"bb"[..]));
        // Skip to sent_at: 5 more string columns and 2 DateTime columns.
        for _ in 0..5 {
            read_str(&mut v);
            read_str(&mut v);
            read_str(&mut v);
            read_str(&mut v);
        }
        for _ in 0..2 {
            read_str(&mut v);
            read_str(&mut v);
            v = &v[8..];
        }
        assert_eq!(read_str(&mut v).unwrap(), b"sent_at");
        assert_eq!(read_str(&mut v).unwrap(), b"Nullable(DateTime('UTC'))");
        assert_eq!(&v[..2], [0, 1], "null map");
        assert_eq!(&v[2..10], [7, 0, 0, 0, 0, 0, 0, 0], "values, placeholder under the null");
    }

    /// The values of string column `name` in a Native block.
    fn string_column(native: &[u8], name: &str) -> Vec<Vec<u8>> {
        let (columns, a) = read_varint(native).unwrap();
        let (rows, b) = read_varint(&native[a..]).unwrap();
        let (columns, rows) = (columns as usize, rows as usize);
        let mut v = &native[a + b..];
        for (i, (column, _, kind)) in SCHEMA[..columns].iter().enumerate() {
            assert_eq!(read_str(&mut v).unwrap(), column.as_bytes(), "column {i}");
            read_str(&mut v);
            let mut values = Vec::new();
            for _ in 0..rows {
                match kind {
                    Kind::Str => values.push(read_str(&mut v).unwrap().to_vec()),
                    Kind::DateTime => v = &v[4..],
                    Kind::Decimal64 => v = &v[8..],
                    Kind::NullableDateTime => v = &v[5..],
                }
            }
            if *column == name {
                return values;
            }
        }
        panic!("no column {name}")
    }

    /// A row with the key columns set and the rest filler.
    fn keyed_row(out: &mut BytesMut, org: &str, ts: u32, device: &str, id: &str) {
        for value in [org, "app", id, "t", "n", device, "s", "p"] {
            put_str(out, value.as_bytes());
        }
        put_datetime(out, ts);
        put_datetime(out, 11);
        put_nullable_datetime(out, Some(ts));
        put_str(out, b"{}");
        put_str(out, b"{}");
        put_decimal_18_2(out, 0);
        for _ in 0..7 {
            put_str(out, b"y");
        }
    }

    #[test]
    fn rows_come_out_in_the_tables_key_order() {
        // Keys chosen to hit each tie-break: organisation names against their first-seen order,
        // timestamps, device ids sharing the packed prefix, ids that are prefixes of others,
        // and a few thousand pseudo-random rows over several chunks.
        let mut rows: Vec<(String, u32, String, String)> = vec![
            ("org_b".into(), 5, "device-1".into(), "e1".into()),
            ("org_a".into(), 9, "device-1".into(), "e2".into()),
            ("org_a".into(), 5, "device-10".into(), "e3".into()),
            ("org_a".into(), 5, "device-1".into(), "e4".into()),
            ("org_a".into(), 5, "device-123456789b".into(), "e5".into()),
            ("org_a".into(), 5, "device-123456789a".into(), "e6".into()),
            ("org_a".into(), 5, "device-123456789a".into(), "e6x".into()),
            ("org_a".into(), 5, "device-123456789".into(), "e7".into()),
            ("".into(), 5, "".into(), "e8".into()),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..3000 {
            let r = next();
            rows.push((
                format!("org_{}", r % 7),
                (r >> 8) as u32 % 4,
                format!("dev-{}", (r >> 16) % 50),
                format!("id-{i}"),
            ));
        }
        let chunks: Vec<BytesMut> = rows
            .chunks(700)
            .map(|part| {
                let mut c = BytesMut::new();
                for (org, ts, device, id) in part {
                    keyed_row(&mut c, org, *ts, device, id);
                }
                c
            })
            .collect();
        let native = to_native(chunks.iter().map(|c| &c[..]), rows.len(), RowFormat::V1).unwrap();
        let mut expected = rows.clone();
        expected.sort_by(|a, b| {
            (a.0.as_bytes(), a.1, a.2.as_bytes(), a.3.as_bytes()).cmp(&(b.0.as_bytes(), b.1, b.2.as_bytes(), b.3.as_bytes()))
        });
        let ids: Vec<Vec<u8>> = expected.iter().map(|r| r.3.clone().into_bytes()).collect();
        assert_eq!(string_column(&native, "event_id"), ids);
        // Every column moved with its row.
        let devices: Vec<Vec<u8>> = expected.iter().map(|r| r.2.clone().into_bytes()).collect();
        assert_eq!(string_column(&native, "device_id"), devices);
    }

    #[test]
    fn malformed_input_is_refused() {
        let mut rb = BytesMut::new();
        row(&mut rb, "a", None);
        let v1 = RowFormat::V1;
        assert_eq!(to_native([&rb[..rb.len() - 1]], 1, v1), Err(Malformed), "truncated row");
        assert_eq!(to_native([&rb[..]], 2, v1), Err(Malformed), "fewer rows than claimed");
        assert_eq!(to_native([&rb[..], &rb[..]], 1, v1), Err(Malformed), "more rows than claimed");
        // Rows split over chunks at row boundaries are fine.
        let two = to_native([&rb[..], &rb[..]], 2, v1).unwrap();
        let mut both = rb.clone();
        both.extend_from_slice(&rb);
        assert_eq!(two, to_native([&both[..]], 2, v1).unwrap());
    }
}
