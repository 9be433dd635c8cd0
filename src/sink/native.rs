//! RowBinary rows → one ClickHouse `Native` block (columnar).
//!
//! Events are encoded once, row by row, as RowBinary (the natural shape for
//! appending them one request at a time). At ship time the rows of a block
//! are transposed into columns, because ClickHouse spends less CPU per row
//! parsing `Native` than `RowBinary`. Measured here on 18.16, 1 M `events`
//! rows over HTTP, server CPU from /proc: RowBinary 1.22–1.74 s, Native
//! 1.00–1.05 s (README, "Measuring"). The transposition is a copy per field.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::mem::MaybeUninit;

use bytes::Bytes;

use crate::event::rowbinary::{str_size, varint_size, RowFormat, RowWriter};

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
/// its rows sorted by the table's `ORDER BY` key. One-off: the shipper keeps a
/// [`NativeEncoder`] so its working memory is reused from block to block.
pub fn to_native<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    rows: usize,
    format: RowFormat,
) -> Result<Bytes, Malformed> {
    let chunks: Vec<&[u8]> = chunks.into_iter().collect();
    NativeEncoder::default().encode(&chunks, rows, format, Vec::with_capacity).map(Bytes::from)
}

/// Sorts and transposes blocks (see [`to_native`]), keeping its working memory between them
/// (the sort's keys and row places, a few megabytes for a large block).
///
/// ClickHouse checks whether an inserted block is already in key order and only sorts and
/// permutes every column when it is not; for `events` that sort was more than half of its insert
/// time (1 M rows here: 3.3–3.9 s as they came, 1.5–1.7 s sorted; README, "Measuring").
#[derive(Default)]
pub struct NativeEncoder {
    /// What the sort moves.
    keys: Vec<SortKey>,
    rows: Vec<RowAt>,
    /// Where the bucket passes move keys (see [`sort_keys`]).
    spare_keys: Vec<SortKey>,
}

/// A row's sort key, packed so most comparisons are integer compares (see [`RANK_SHIFT`]).
#[derive(Clone, Copy, Default)]
struct SortKey {
    packed: u128,
    /// The event id: as a number when it is a lowercase hyphenated UUID (the edge's own ids, and
    /// most SDKs'), whose text sorts as that number does; else its first 16 bytes, zero-padded.
    /// Rows tie on `packed` in long runs (one device's events within one second), and the
    /// UUIDv7 text shares its first 13 bytes within a millisecond, so a prefix alone left most
    /// of those ties to a lookup of both ids in the chunks.
    id: u128,
    row: u32,
    /// Device id length (capped at 255) << 1, | 1 when `id` holds a whole UUID.
    tag: u32,
}

/// Where a row and the strings that break ties in its packed key are, in its chunk.
struct RowAt {
    chunk: u32,
    start: u32,
    end: u32,
    device: (u32, u32),
    event_id: (u32, u32),
}

/// Where each part of a Native block goes in its buffer, from the block's column sizes.
struct Layout {
    /// Column i's values start at `values[i]`; its null map (nullable columns) at `nulls[i]`,
    /// just before them; its name and type at `header[i]`.
    header: [usize; COLUMNS],
    nulls: [usize; COLUMNS],
    values: [usize; COLUMNS],
    /// Where each column's values end (the next column's header starts there).
    ends: [usize; COLUMNS],
    total: usize,
}

const COLUMNS: usize = SCHEMA.len();

impl Layout {
    fn new(schema: &[(&str, &str, Kind)], rows: usize, sizes: &[usize; COLUMNS]) -> Layout {
        let mut at = varint_size(schema.len() as u64) + varint_size(rows as u64);
        let mut layout =
            Layout { header: [0; COLUMNS], nulls: [0; COLUMNS], values: [0; COLUMNS], ends: [0; COLUMNS], total: 0 };
        for (i, (name, type_name, kind)) in schema.iter().enumerate() {
            layout.header[i] = at;
            at += str_size(name.len()) + str_size(type_name.len());
            layout.nulls[i] = at;
            if matches!(kind, Kind::NullableDateTime) {
                at += rows;
            }
            layout.values[i] = at;
            at += sizes[i];
            layout.ends[i] = at;
        }
        layout.total = at;
        layout
    }
}

impl NativeEncoder {
    /// The Native block, written into a buffer from `buffer` (asked for the block's exact size;
    /// pass a pool's, so large blocks reuse memory that is already faulted in).
    pub fn encode(
        &mut self,
        chunks: &[&[u8]],
        rows: usize,
        format: RowFormat,
        buffer: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<Vec<u8>, Malformed> {
        let schema = &SCHEMA[..format.column_count()];
        let sizes = self.sort_rows(chunks, rows, schema)?;
        let layout = Layout::new(schema, rows, &sizes);
        let mut out = buffer(layout.total);
        out.clear();
        if out.capacity() < layout.total {
            // Growing an empty Vec would still copy its old allocation.
            out = Vec::with_capacity(layout.total);
        }
        let spare = &mut out.spare_capacity_mut()[..layout.total];
        // Every value goes straight to its place in the block: no per-column buffers to fill
        // and then copy, and the block's size is exact (a Native nullable is wider than its
        // RowBinary form, so an estimate from the rows' size came up short and regrew it).
        let (mut nulls, mut values) = (layout.nulls, layout.values);
        for (n, key) in self.keys.iter().enumerate() {
            // Rows are read in key order, scattered over tens of megabytes: ask for the ones
            // a few steps ahead (their place first, then their bytes) so each read is not a
            // cache miss. Without this, those misses were a third of the transposition's time.
            if let Some(later) = self.keys.get(n + 2 * PREFETCH_AHEAD) {
                prefetch(std::slice::from_ref(&self.rows[later.row as usize]));
            }
            if let Some(next) = self.keys.get(n + PREFETCH_AHEAD) {
                let at = &self.rows[next.row as usize];
                prefetch(&chunks[at.chunk as usize][at.start as usize..at.end as usize]);
            }
            let at = &self.rows[key.row as usize];
            // The row and what follows it in its chunk: copies may read past a short value.
            let from_row = &chunks[at.chunk as usize][at.start as usize..];
            walk_row(from_row, schema, |i, field, rest| match schema[i].2 {
                Kind::NullableDateTime => {
                    spare[nulls[i]].write(field[0]);
                    nulls[i] += 1;
                    // A null keeps a placeholder under it.
                    let value: [u8; 4] = if field[0] == 0 { field[1..5].try_into().expect("4 bytes") } else { [0; 4] };
                    spare[values[i]..values[i] + 4].write_copy_of_slice(&value);
                    values[i] += 4;
                }
                // Native strings are encoded exactly as in RowBinary.
                _ => put_value(spare, &mut values[i], layout.ends[i], field, rest),
            })?;
        }
        let mut complete = true;
        for (i, (name, type_name, kind)) in schema.iter().enumerate() {
            let mut header = RowWriter::new(&mut spare[layout.header[i]..]);
            header.str(name.as_bytes());
            header.str(type_name.as_bytes());
            let nulls_written = !matches!(kind, Kind::NullableDateTime) || nulls[i] == layout.values[i];
            complete &=
                layout.header[i] + header.written() == layout.nulls[i] && nulls_written && values[i] == layout.ends[i];
        }
        let mut prefix = RowWriter::new(spare);
        prefix.varint(schema.len() as u64);
        prefix.varint(rows as u64);
        complete &= prefix.written() == layout.header[0];
        if !complete {
            // Only if the rows differ from the sort's walk of them, which they cannot.
            return Err(Malformed);
        }
        // SAFETY: every byte of the block was written: the prefix and each header up to where
        // the next part starts (checked above), and each null map and column of values by
        // contiguous writes from its start that ended exactly at its end (checked above).
        unsafe { out.set_len(layout.total) };
        Ok(out)
    }

    /// Splits the chunks into rows and leaves `keys` in the table's key order, strings compared
    /// as ClickHouse does (bytewise, then by length).
    /// Returns each column's size in the block: the bytes of its values, without header or null
    /// map.
    fn sort_rows(
        &mut self,
        chunks: &[&[u8]],
        rows: usize,
        schema: &[(&str, &str, Kind)],
    ) -> Result<[usize; COLUMNS], Malformed> {
        // The sort moves only `SortKey`s (packed key, id, row number, tag): 48 bytes a row, most
        // comparisons one integer compare; ties look up the rest of the key on the side.
        self.keys.clear();
        self.rows.clear();
        if chunks.iter().any(|c| c.len() > u32::MAX as usize) || rows > u32::MAX as usize {
            return Err(Malformed);
        }
        // Sized once rather than doubled and copied through the first large block; by what the
        // chunks can hold too (a row takes more than 16 bytes), not by the claimed count alone.
        let room = rows.min(chunks.iter().map(|c| c.len()).sum::<usize>() / 16);
        self.keys.reserve(room);
        self.rows.reserve(room);
        // Organisations in first-seen order, found by name when the organisation changes from
        // one row to the next (in runs as the shipper groups them; a map keeps a block of many
        // interleaved organisations linear).
        let mut orgs: Vec<&[u8]> = Vec::new();
        let mut index_of: HashMap<&[u8], usize, ahash::RandomState> = HashMap::default();
        let mut previous: Option<(&[u8], usize)> = None;
        let mut sizes = [0usize; COLUMNS];
        for (chunk, &bytes) in chunks.iter().enumerate() {
            let mut at = 0;
            while at < bytes.len() {
                let (mut org, mut ts, mut device, mut event_id) = ((0, 0), 0u32, (0, 0), (0, 0));
                let row = walk_row(&bytes[at..], schema, |i, field, _| {
                    sizes[i] += field.len();
                    // Absolute position of the value (past its length prefix) in the chunk.
                    let value = |f: &[u8]| {
                        let header = read_varint(f).map_or(0, |(_, h)| h);
                        let start = f.as_ptr() as usize - bytes.as_ptr() as usize + header;
                        (start as u32, (f.len() - header) as u32)
                    };
                    match i {
                        ORG => org = value(field),
                        EVENT_ID => event_id = value(field),
                        DEVICE => device = value(field),
                        TIMESTAMP => ts = u32::from_le_bytes(field.try_into().expect("4 bytes")),
                        _ => {}
                    }
                })?;
                if self.rows.len() == rows {
                    return Err(Malformed);
                }
                let org = slice(bytes, org);
                let seen = match previous {
                    Some((name, i)) if bytewise(name, org).is_eq() => i,
                    _ => *index_of.entry(org).or_insert_with(|| {
                        orgs.push(org);
                        orgs.len() - 1
                    }),
                };
                previous = Some((org, seen));
                let device_bytes = slice(bytes, device);
                let mut prefix = [0u8; 16];
                let take = device_bytes.len().min(DEVICE_PREFIX);
                prefix[16 - DEVICE_PREFIX..16 - DEVICE_PREFIX + take].copy_from_slice(&device_bytes[..take]);
                let packed = (seen as u128) << RANK_SHIFT | (ts as u128) << 72 | u128::from_be_bytes(prefix);
                let id_bytes = slice(bytes, event_id);
                let (id, whole) = match uuid_value(id_bytes) {
                    Some(value) => (value, 1),
                    None => {
                        let mut prefix = [0u8; 16];
                        let take = id_bytes.len().min(16);
                        prefix[..take].copy_from_slice(&id_bytes[..take]);
                        (u128::from_be_bytes(prefix), 0)
                    }
                };
                let tag = (device_bytes.len().min(255) as u32) << 1 | whole;
                self.keys.push(SortKey { packed, id, row: self.rows.len() as u32, tag });
                let end = at + row.len();
                self.rows.push(RowAt { chunk: chunk as u32, start: at as u32, end: end as u32, device, event_id });
                at = end;
            }
        }
        if self.rows.len() != rows {
            return Err(Malformed);
        }
        for (size, (_, _, kind)) in sizes.iter_mut().zip(schema) {
            if matches!(kind, Kind::NullableDateTime) {
                // Native keeps the flags apart (the null map) and a value under every null.
                *size = 4 * rows;
            }
        }
        if orgs.len() > MAX_RANKS {
            // More organisations than the key has bits for: ClickHouse sorts this block itself.
            return Ok(sizes);
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
            for key in &mut self.keys {
                key.packed = rank[(key.packed >> RANK_SHIFT) as usize] << RANK_SHIFT | (key.packed & low);
            }
        }
        let rows_at = &self.rows;
        let strings = |a: &SortKey, b: &SortKey, field: fn(&RowAt) -> (u32, u32)| {
            let (x, y) = (&rows_at[a.row as usize], &rows_at[b.row as usize]);
            bytewise(slice(chunks[x.chunk as usize], field(x)), slice(chunks[y.chunk as usize], field(y)))
        };
        let order = |a: &SortKey, b: &SortKey| {
            a.packed.cmp(&b.packed).then_with(|| {
                // Equal packed prefixes: device ids within it differ only in length (the shorter
                // first, as memcmp has it).
                let (device_a, device_b) = ((a.tag >> 1) as usize, (b.tag >> 1) as usize);
                let device = if device_a <= DEVICE_PREFIX && device_b <= DEVICE_PREFIX {
                    device_a.cmp(&device_b)
                } else {
                    strings(a, b, |r| r.device)
                };
                device.then_with(|| match (a.tag & 1, b.tag & 1) {
                    (1, 1) => a.id.cmp(&b.id),
                    (0, 0) => a.id.cmp(&b.id).then_with(|| strings(a, b, |r| r.event_id)),
                    _ => strings(a, b, |r| r.event_id),
                })
            })
        };
        let n = self.keys.len();
        if self.spare_keys.len() < n {
            self.spare_keys.resize(n, SortKey::default());
        }
        sort_keys(&mut self.keys, &mut self.spare_keys[..n], &order);
        Ok(sizes)
    }
}

/// Fewer keys than this are sorted by comparisons alone: a bucket pass costs two moves of
/// every key and a count per bucket.
const BUCKET_MIN_KEYS: usize = 256;

/// Bits of `packed` each bucket pass splits on.
const BUCKET_BITS: u32 = 8;

/// Sorts `keys` by `order` (by `packed`, then by device length and event id as
/// `sort_rows` orders ties): most-significant-first radix passes on the highest 8 bits where
/// the keys' `packed` differ, then the same in each bucket, until buckets are small enough
/// for a comparison sort. Rows mostly share their organisation and second and their device
/// ids a prefix, so the differing bits, not a fixed window of the key, do the splitting.
/// Keys whose `packed` ties (one device's events: a thousand in a large block) are split on
/// their ids the same way where the ids alone decide, as lowercase UUIDs do.
fn sort_keys(keys: &mut [SortKey], spare: &mut [SortKey], order: &impl Fn(&SortKey, &SortKey) -> Ordering) {
    radix_pass(keys, spare, &|k| k.packed, order, &|keys, spare| {
        let tag = keys[0].tag;
        // Same device length within the packed prefix (so equal devices) and whole UUIDs:
        // `order` is the ids' numeric order.
        let ids_decide = tag & 1 == 1 && (tag >> 1) as usize <= DEVICE_PREFIX && keys.iter().all(|k| k.tag == tag);
        if ids_decide {
            radix_pass(keys, spare, &|k| k.id, order, &|keys, _| keys.sort_unstable_by(order));
        } else {
            keys.sort_unstable_by(order);
        }
    });
}

/// One bucket pass of [`sort_keys`] on `field`, which `order` must sort by first; `ties`
/// sorts keys that share `field`. `spare`, as long as `keys`, holds them during the pass.
fn radix_pass(
    keys: &mut [SortKey],
    spare: &mut [SortKey],
    field: &impl Fn(&SortKey) -> u128,
    order: &impl Fn(&SortKey, &SortKey) -> Ordering,
    ties: &impl Fn(&mut [SortKey], &mut [SortKey]),
) {
    if keys.len() < BUCKET_MIN_KEYS {
        keys.sort_unstable_by(order);
        return;
    }
    let first = field(&keys[0]);
    let differ = keys.iter().fold(0u128, |acc, k| acc | (field(k) ^ first));
    if differ == 0 {
        ties(keys, spare);
        return;
    }
    let shift = (128 - differ.leading_zeros()).saturating_sub(BUCKET_BITS);
    let bucket = |k: &SortKey| (field(k) >> shift) as usize & ((1 << BUCKET_BITS) - 1);
    // starts[b] = where bucket b begins, advanced as its keys land.
    let mut starts = [0usize; (1 << BUCKET_BITS) + 1];
    for k in keys.iter() {
        starts[bucket(k) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let bounds = starts;
    for k in keys.iter() {
        let at = &mut starts[bucket(k)];
        spare[*at] = *k;
        *at += 1;
    }
    keys.copy_from_slice(spare);
    // Keys in one bucket share these bits and every bit above them: the next pass in it
    // splits on lower ones, so passes nest at most 128 / 8 deep.
    for b in 0..1 << BUCKET_BITS {
        let (start, end) = (bounds[b], bounds[b + 1]);
        if end - start > 1 {
            radix_pass(&mut keys[start..end], &mut spare[start..end], field, order, ties);
        }
    }
}

/// Copies one value to `*at` in its column (which ends at `end`) and moves `*at` past it. A short
/// value is copied as whole 32-byte blocks where both sides have room, taking the bytes after it
/// along (the column's next values overwrite them): one or two vector moves in place of a
/// `memcpy` call per value, which was a fifth of the transposition's time.
#[inline(always)]
fn put_value(out: &mut [MaybeUninit<u8>], at: &mut usize, end: usize, value: &[u8], rest: &[u8]) {
    const BLOCK: usize = 32;
    let len = value.len();
    let blocks = len.div_ceil(BLOCK);
    if len <= 4 * BLOCK && rest.len() >= blocks * BLOCK && *at + blocks * BLOCK <= end {
        for b in 0..blocks {
            let (from, to) = (b * BLOCK, *at + b * BLOCK);
            let block: &[u8; BLOCK] = rest[from..from + BLOCK].try_into().expect("a block");
            out[to..to + BLOCK].write_copy_of_slice(block);
        }
    } else {
        out[*at..*at + len].write_copy_of_slice(value);
    }
    *at += len;
}

/// How many rows ahead the transposition asks for the row it will read.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to bring `data`'s cache lines in, without waiting for them.
#[inline(always)]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(data);
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..bytes).step_by(64) {
            // SAFETY: SSE is in every x86_64 CPU, and a prefetch is a hint that never faults
            // (the addresses are inside `data` anyway).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
}

/// Positions of the `ORDER BY (organization_id, event_timestamp, device_id, event_id)` columns.
const ORG: usize = 0;
const EVENT_ID: usize = 2;
const DEVICE: usize = 5;
const TIMESTAMP: usize = 8;

/// Organisation rank (24 bits) · timestamp (32 bits) · device id prefix (9 bytes, zero-padded:
/// a shorter id is a prefix of any longer one it ties with, so the order agrees with memcmp's).
const RANK_SHIFT: u32 = 104;
const MAX_RANKS: usize = 1 << 24;
const DEVICE_PREFIX: usize = 9;

/// A lowercase hyphenated UUID's 128 bits: for such text, bytewise order is numeric order
/// (`0-9` sort before `a-f`, the hyphens sit at the same places). Anything else is `None`.
fn uuid_value(text: &[u8]) -> Option<u128> {
    // Where the 32 hex digits are: each half of the value is read as its own chain.
    const HIGH: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17];
    const LOW: [usize; 16] = [19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35];
    let text: &[u8; 36] = text.try_into().ok()?;
    if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
        return None;
    }
    let (mut high, mut low, mut invalid) = (0u64, 0u64, 0u8);
    for (h, l) in HIGH.into_iter().zip(LOW) {
        let (x, y) = (HEX[text[h] as usize], HEX[text[l] as usize]);
        invalid |= x | y;
        high = high << 4 | u64::from(x & 0xf);
        low = low << 4 | u64::from(y & 0xf);
    }
    (invalid & 0xf0 == 0).then_some(u128::from(high) << 64 | u128::from(low))
}

/// Lowercase hex digits to their value; every other byte has a high bit set.
static HEX: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

#[inline]
fn slice(bytes: &[u8], (start, len): (u32, u32)) -> &[u8] {
    &bytes[start as usize..(start + len) as usize]
}

/// `a.cmp(b)` for short strings, eight bytes at a time inline: ties in the packed key are mostly
/// ids with a long common prefix (a UUIDv7's time), where a `memcmp` call per comparison was
/// the sort's largest cost.
#[inline]
fn bytewise(a: &[u8], b: &[u8]) -> Ordering {
    let (mut x, mut y) = (a, b);
    while x.len() >= 8 && y.len() >= 8 {
        let (p, q) = (u64::from_be_bytes(x[..8].try_into().unwrap()), u64::from_be_bytes(y[..8].try_into().unwrap()));
        if p != q {
            return p.cmp(&q);
        }
        x = &x[8..];
        y = &y[8..];
    }
    x.cmp(y)
}

/// Walks one row at the front of `input`, handing each column's encoded bytes to `field` (a
/// string with its length prefix, a nullable with its flag) with the rest of `input` from
/// there; returns the row's bytes.
#[inline(always)]
fn walk_row<'a>(
    input: &'a [u8],
    schema: &[(&str, &str, Kind)],
    mut field: impl FnMut(usize, &'a [u8], &'a [u8]),
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
        field(i, rest.get(..width).ok_or(Malformed)?, rest);
        at += width;
    }
    Ok(&input[..at])
}

/// (value, bytes it took)
#[inline]
fn read_varint(input: &[u8]) -> Option<(u64, usize)> {
    // Almost every length in a row is under 128: one byte, without the loop (a sixth of a
    // drain's instructions went to this loop, three times per string value).
    if let Some(&b) = input.first() {
        if b < 0x80 {
            return Some((u64::from(b), 1));
        }
    }
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
    use bytes::BytesMut;

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

    /// Pseudo-random numbers, the same every run.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn rows_come_out_in_the_tables_key_order() {
        // Keys chosen to hit each tie-break: organisation names against their first-seen order,
        // timestamps, device ids sharing the packed prefix, ids that are prefixes of others,
        // and thousands of pseudo-random rows over several chunks.
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
            // Ids sharing more than the 15 bytes the secondary key holds; device ids that differ
            // only in length within the packed prefix.
            ("org_a".into(), 7, "dev".into(), "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into()),
            ("org_a".into(), 7, "dev".into(), "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5".into()),
            ("org_a".into(), 7, "dev".into(), "0193a1b2-c3d4-7e5e-8a9b-0c1d2e3f4a5c".into()),
            ("org_a".into(), 7, "dev\0".into(), "0193a1b2-c3d4-7e5a".into()),
            ("org_a".into(), 7, "de".into(), "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d".into()),
            ("org_a".into(), 7, "dev\0\0\0\0\0\0x".into(), "0193a1b2-c3d4-7e50".into()),
        ];
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        // More rows than BUCKET_MIN_KEYS, so the bucket passes run too.
        for i in 0..6000 {
            let r = next();
            let device = match (r >> 16) % 4 {
                0 => format!("dev-{}", (r >> 20) % 50),
                1 => format!("device-123456789{}", (r >> 20) % 3),
                _ => format!("d{}", (r >> 20) % 5),
            };
            // Plain ids, UUID-like prefixes, and whole UUIDs that share their time part (as a
            // UUIDv7's does within a millisecond), in lower case (read as numbers) and not.
            let uuid = format!("0193a1b2-c3d4-7{:03x}-8{:03x}-{:012x}", (r >> 30) % 8, (r >> 33) % 4, (r >> 36) % 5);
            let id = match r % 6 {
                0 => format!("id-{i}"),
                1 | 2 => format!("0193a1b2-c3d4-7{:03x}-{i}", (r >> 30) % 8),
                3 => uuid.to_uppercase(),
                _ => uuid,
            };
            rows.push((format!("org_{}", r % 7), (r >> 8) as u32 % 4, device, id));
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
            (a.0.as_bytes(), a.1, a.2.as_bytes(), a.3.as_bytes()).cmp(&(
                b.0.as_bytes(),
                b.1,
                b.2.as_bytes(),
                b.3.as_bytes(),
            ))
        });
        let ids: Vec<Vec<u8>> = expected.iter().map(|r| r.3.clone().into_bytes()).collect();
        assert_eq!(string_column(&native, "event_id"), ids);
        // Every column moved with its row.
        let devices: Vec<Vec<u8>> = expected.iter().map(|r| r.2.clone().into_bytes()).collect();
        assert_eq!(string_column(&native, "device_id"), devices);
    }

    #[test]
    fn rows_of_one_organisation_are_ordered_by_second_device_and_id() {
        // As the e2e load sends them: one organisation, one or two seconds, device ids sharing
        // a prefix. The bucket passes split on the second, then on the device ids' bytes
        // after the prefix, and leave the rest to comparisons. Each case is checked against a
        // plain sort of the rows.
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let uuid = |r: u64| format!("0193a1b2-c3d4-7{:03x}-8{:03x}-{:012x}", r % 4096, (r >> 12) % 4096, r >> 24);
        type DeviceOf = fn(u64) -> String;
        let devices: [(&str, DeviceOf); 3] = [
            ("device-N", |r| format!("device-{}", r % 1000)),
            ("one device", |_| "device-1".to_string()),
            ("long, sharing the packed prefix", |r| format!("device-123456789-{}", r % 300)),
        ];
        for (case, device) in devices {
            // Plain ids among the UUIDs, or only UUIDs (which the id passes split on).
            for (seconds, plain_ids) in [(1, true), (2, true), (1, false), (2, false)] {
                let rows: Vec<(u32, String, String)> = (0..20_000)
                    .map(|i| {
                        let r = next();
                        let id = if plain_ids && i % 5 == 0 { format!("id-{}", r % 10_000) } else { uuid(r) };
                        (1_700_000_000 + (r >> 40) as u32 % seconds, device(r >> 7), id)
                    })
                    .collect();
                let mut chunk = BytesMut::new();
                for (ts, device, id) in &rows {
                    keyed_row(&mut chunk, "org_one", *ts, device, id);
                }
                let native = to_native([&chunk[..]], rows.len(), RowFormat::V1).unwrap();
                let mut expected = rows.clone();
                expected
                    .sort_by(|a, b| (a.0, a.1.as_bytes(), a.2.as_bytes()).cmp(&(b.0, b.1.as_bytes(), b.2.as_bytes())));
                let devices: Vec<Vec<u8>> = expected.iter().map(|r| r.1.clone().into_bytes()).collect();
                let ids: Vec<Vec<u8>> = expected.iter().map(|r| r.2.clone().into_bytes()).collect();
                assert!(
                    string_column(&native, "device_id") == devices,
                    "{case}, {seconds} s, {plain_ids}: device order"
                );
                assert!(string_column(&native, "event_id") == ids, "{case}, {seconds} s, {plain_ids}: id order");
            }
        }
    }

    #[test]
    fn the_block_is_written_in_place_at_its_exact_size() {
        // Nulls widen a Native block past its rows' size (a value under every null); values of
        // every length around the 32-byte copies, the longest last in its column.
        let mut rb = BytesMut::new();
        let values: Vec<String> = (0..140).map(|n| "v".repeat(n)).collect();
        for value in &values {
            for _ in 0..8 {
                put_str(&mut rb, value.as_bytes());
            }
            put_datetime(&mut rb, 10);
            put_datetime(&mut rb, 11);
            put_nullable_datetime(&mut rb, None);
            put_str(&mut rb, value.as_bytes());
            put_str(&mut rb, b"{}");
            put_decimal_18_2(&mut rb, 1999);
            for _ in 0..7 {
                put_str(&mut rb, value.as_bytes());
            }
        }
        let mut asked = 0;
        // A reused buffer holding stale bytes: none of them may show through.
        let stale = vec![0xee; 100_000];
        let native = NativeEncoder::default()
            .encode(&[&rb[..]], values.len(), RowFormat::V1, |size| {
                asked = size;
                stale
            })
            .unwrap();
        assert_eq!(native.len(), asked);
        assert!(native.len() > rb.len(), "every null holds a placeholder");
        let expected: Vec<Vec<u8>> = values.iter().map(|v| v.clone().into_bytes()).collect();
        for column in ["organization_id", "platform", "properties", "user_agent"] {
            let mut got = string_column(&native, column);
            got.sort();
            let mut want = expected.clone();
            want.sort();
            assert_eq!(got, want, "{column}");
        }
        // sent_at: a null map of ones, then zeroed placeholders, then revenue.
        let at = native.windows(7).position(|w| w == b"sent_at").unwrap() + 7;
        let type_name = b"Nullable(DateTime('UTC'))";
        let map = at + 1 + type_name.len();
        assert!(native[map..map + values.len()].iter().all(|&b| b == 1));
        assert!(native[map + values.len()..map + 5 * values.len()].iter().all(|&b| b == 0));
        assert!(native[map + 5 * values.len() + 1..].starts_with(b"properties"));
    }

    #[test]
    fn lowercase_uuids_sort_as_their_numbers() {
        let ids: [&[u8]; 8] = [
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a60",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5a",
            b"ffffffff-ffff-ffff-ffff-ffffffffffff",
            b"00000000-0000-0000-0000-000000000000",
            b"a0000000-0000-0000-0000-000000000000",
            b"90000000-0000-0000-0000-000000000000",
        ];
        for a in ids {
            for b in ids {
                assert_eq!(uuid_value(a).unwrap().cmp(&uuid_value(b).unwrap()), a.cmp(b));
            }
        }
        for not_one in [
            &b"0193A1B2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"[..],
            b"0193a1b2c-3d4-7e5f-8a9b-0c1d2e3f4a5b",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5bb",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g",
            b"0193a1b2-c3d4-7e5f-8a9b+0c1d2e3f4a5b",
        ] {
            assert_eq!(uuid_value(not_one), None, "{}", String::from_utf8_lossy(not_one));
        }
    }

    #[test]
    fn bytewise_agrees_with_slice_order() {
        let words: Vec<&[u8]> = vec![
            b"",
            b"a",
            b"ab",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghi",
            b"abcdefgg",
            b"abcdefghabcdefgh",
            b"abcdefghabcdefgi",
            b"\xff",
            b"\xffabcdefg",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
            b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
        ];
        for a in &words {
            for b in &words {
                assert_eq!(bytewise(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn varints_of_every_length_read_back() {
        for value in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = BytesMut::new();
            let mut v = value;
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.extend_from_slice(&[byte]);
                    break;
                }
                out.extend_from_slice(&[byte | 0x80]);
            }
            assert_eq!(read_varint(&out), Some((value, out.len())), "{value}");
        }
        assert_eq!(read_varint(&[]), None);
        assert_eq!(read_varint(&[0x80, 0x80]), None, "cut off");
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
