//! The on-disk format of the spool: segment files of framed records.
//!
//! A segment is `<seq:020>.seg`, written in order; while it is the current one it
//! may be zero-filled past what was written (the writer fills segments ahead), so
//! a tail of zeros is unwritten space, not damage. A record is one accepted block
//! (one request's rows of one organisation):
//!
//! ```text
//! magic u32 | len u32 | crc32 u32 | written_ms u64 | rows u32 | org_len u16 | org | payload
//! ```
//!
//! All little-endian; `len` counts everything after the crc; the crc covers
//! the same bytes. The magic lets a reader resynchronise after a damaged
//! record, so one flipped bit costs one record, not the rest of the segment.
//! It also names the payload's row format: [`MAGIC`] for the first
//! ([`RowFormat::V1`]), [`MAGIC_V2`] for rows with `user_id` and
//! `app_version`; a spool written by an earlier release ships as it was.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes};

use crate::event::rowbinary::RowFormat;

pub const MAGIC: u32 = 0x5345_4447; // "GDES" on disk: edge spool, rows of format V1
pub const MAGIC_V2: u32 = 0x3245_4447; // "GDE2" on disk: rows of format V2
/// magic + len + crc
const FRAME: usize = 12;
/// written_ms + rows + org_len
const FIXED: usize = 14;
/// No record is larger than a batch; anything claiming more is damage.
pub const MAX_RECORD: usize = 64 << 20;

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub format: RowFormat,
    pub written_ms: u64,
    pub rows: u32,
    pub org: Bytes,
    pub payload: Bytes,
}

fn magic(format: RowFormat) -> u32 {
    match format {
        RowFormat::V1 => MAGIC,
        RowFormat::V2 => MAGIC_V2,
    }
}

/// Appends the framed record to `out`.
pub fn encode(out: &mut Vec<u8>, format: RowFormat, written_ms: u64, rows: u32, org: &[u8], payload: &[u8]) {
    let len = FIXED + org.len() + payload.len();
    out.reserve(FRAME + len);
    out.put_u32_le(magic(format));
    out.put_u32_le(len as u32);
    let crc_at = out.len();
    out.put_u32_le(0);
    let body_at = out.len();
    out.put_u64_le(written_ms);
    out.put_u32_le(rows);
    out.put_u16_le(org.len() as u16);
    out.put_slice(org);
    out.put_slice(payload);
    let crc = crc32fast::hash(&out[body_at..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Framed size of a record.
pub fn framed_len(org: &[u8], payload: &[u8]) -> usize {
    FRAME + FIXED + org.len() + payload.len()
}

/// What a scan of bytes found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub records: u64,
    pub rows: u64,
    /// Bytes skipped because they did not form a valid record.
    pub damaged_bytes: u64,
    /// Damaged regions (each resynchronisation counts one).
    pub damaged_regions: u64,
    /// End of the last valid record.
    pub valid_end: u64,
}

/// Decodes records from `buf` starting at `pos`, resynchronising on damage.
/// Calls `each(offset_after_record, record)`. A record cut off by the end of
/// `buf` is not damage when `complete` is false (more bytes may follow).
pub fn scan(buf: &Bytes, mut pos: usize, complete: bool, mut each: impl FnMut(u64, Record)) -> (ScanStats, usize) {
    let mut stats = ScanStats { valid_end: pos as u64, ..Default::default() };
    let mut damaged_since: Option<usize> = None;
    while pos < buf.len() {
        match decode_at(buf, pos) {
            Decoded::Record(record, next) => {
                if let Some(start) = damaged_since.take() {
                    stats.damaged_bytes += (pos - start) as u64;
                    stats.damaged_regions += 1;
                }
                stats.records += 1;
                stats.rows += u64::from(record.rows);
                stats.valid_end = next as u64;
                each(next as u64, record);
                pos = next;
            }
            Decoded::Incomplete if !complete && damaged_since.is_none() => break,
            Decoded::Incomplete | Decoded::Bad => {
                damaged_since.get_or_insert(pos);
                // Resynchronise: the next magic after this position.
                pos = find_magic(buf, pos + 1).unwrap_or(buf.len());
            }
        }
    }
    if let Some(start) = damaged_since {
        if complete {
            // A tail of zeros was never written: segments are zero-filled ahead (see the writer).
            if !all_zero(&buf[start..]) {
                stats.damaged_bytes += (buf.len() - start) as u64;
                stats.damaged_regions += 1;
            }
            pos = buf.len();
        } else {
            pos = start;
        }
    }
    (stats, pos)
}

enum Decoded {
    Record(Record, usize),
    Incomplete,
    Bad,
}

fn decode_at(buf: &Bytes, pos: usize) -> Decoded {
    let Some(head) = buf.get(pos..pos + FRAME) else { return Decoded::Incomplete };
    let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
    let format = match word(0) {
        MAGIC => RowFormat::V1,
        MAGIC_V2 => RowFormat::V2,
        _ => return Decoded::Bad,
    };
    let len = word(4) as usize;
    if !(FIXED..=MAX_RECORD).contains(&len) {
        return Decoded::Bad;
    }
    let start = pos + FRAME;
    let Some(body) = buf.get(start..start + len) else { return Decoded::Incomplete };
    if crc32fast::hash(body) != word(8) {
        return Decoded::Bad;
    }
    let written_ms = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let rows = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    let org_len = u16::from_le_bytes(body[12..14].try_into().expect("2 bytes")) as usize;
    if FIXED + org_len > len {
        return Decoded::Bad;
    }
    let org = buf.slice(start + FIXED..start + FIXED + org_len);
    let payload = buf.slice(start + FIXED + org_len..start + len);
    Decoded::Record(Record { format, written_ms, rows, org, payload }, start + len)
}

fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    let (v1, v2) = (MAGIC.to_le_bytes(), MAGIC_V2.to_le_bytes());
    // Both magics start with the same three bytes: one vectorised search for those, rather
    // than a compare at every byte (recovery resyncs across a zero-filled segment's tail:
    // tens of megabytes, which took more instructions than all its records' CRCs).
    const SHARED: usize = 3;
    debug_assert_eq!(v1[..SHARED], v2[..SHARED]);
    let finder = memchr::memmem::Finder::new(&v1[..SHARED]);
    let mut at = from;
    while let Some(found) = finder.find(buf.get(at..)?) {
        let start = at + found;
        match buf.get(start + SHARED) {
            Some(&b) if b == v1[SHARED] || b == v2[SHARED] => return Some(start),
            Some(_) => at = start + 1,
            None => return None,
        }
    }
    None
}

/// Whether `bytes` are all zero, a vector's width at a time.
fn all_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0) && chunks.remainder().iter().all(|&b| b == 0)
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// The zero-filled file the next segment is renamed from (not a segment: no `.seg` suffix).
pub fn spare_path(dir: &Path) -> PathBuf {
    dir.join("spare.seg.tmp")
}

/// Segment sequence numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

pub fn read_all(path: &Path) -> io::Result<Bytes> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Bytes {
        let mut out = Vec::new();
        for i in 0..n {
            encode(&mut out, RowFormat::V2, 1000 + i as u64, i as u32 + 1, b"org_a", format!("payload-{i}").as_bytes());
        }
        Bytes::from(out)
    }

    fn collect(buf: &Bytes, complete: bool) -> (Vec<Record>, ScanStats, usize) {
        let mut found = Vec::new();
        let (stats, pos) = scan(buf, 0, complete, |_, r| found.push(r));
        (found, stats, pos)
    }

    #[test]
    fn round_trip() {
        let buf = records(3);
        let (found, stats, pos) = collect(&buf, true);
        assert_eq!(found.len(), 3);
        assert_eq!(found[2].payload, Bytes::from_static(b"payload-2"));
        assert_eq!((found[2].rows, found[2].written_ms, &found[2].org[..]), (3, 1002, &b"org_a"[..]));
        assert_eq!(
            stats,
            ScanStats { records: 3, rows: 6, damaged_bytes: 0, damaged_regions: 0, valid_end: buf.len() as u64 }
        );
        assert_eq!(pos, buf.len());
        assert_eq!(framed_len(b"org_a", b"payload-0"), buf.len() / 3);
    }

    #[test]
    fn torn_tail_is_damage_only_when_complete() {
        let buf = records(3);
        let torn = buf.slice(..buf.len() - 4);
        let (found, stats, pos) = collect(&torn, false);
        assert_eq!((found.len(), stats.damaged_bytes), (2, 0), "still being written: wait for more");
        assert_eq!(pos as u64, stats.valid_end);
        let (found, stats, _) = collect(&torn, true);
        assert_eq!((found.len(), stats.damaged_regions), (2, 1));
        assert_eq!(stats.valid_end, (buf.len() / 3 * 2) as u64);
    }

    #[test]
    fn a_flipped_byte_costs_one_record() {
        let mut bytes = records(5).to_vec();
        let one = bytes.len() / 5;
        bytes[one * 2 + 20] ^= 0xff; // inside the third record's body
        let (found, stats, _) = collect(&Bytes::from(bytes), true);
        let ids: Vec<u32> = found.iter().map(|r| r.rows).collect();
        assert_eq!(ids, [1, 2, 4, 5]);
        assert_eq!((stats.damaged_regions, stats.damaged_bytes), (1, one as u64));
    }

    #[test]
    fn the_magic_search_and_the_zero_check_agree_with_bytewise_ones() {
        let (v1, v2) = (MAGIC.to_le_bytes(), MAGIC_V2.to_le_bytes());
        let naive =
            |buf: &[u8], from: usize| buf.get(from..)?.windows(4).position(|w| w == v1 || w == v2).map(|i| from + i);
        let mut buf = vec![0u8; 300];
        // Near misses (the shared three bytes, then another), both magics, one cut off at the end.
        buf[10..14].copy_from_slice(b"GDEX");
        buf[20..24].copy_from_slice(&v2);
        buf[100..103].copy_from_slice(b"GDE");
        buf[103..107].copy_from_slice(&v1);
        buf[297..300].copy_from_slice(b"GDE");
        for from in 0..=buf.len() + 1 {
            assert_eq!(find_magic(&buf, from), naive(&buf, from), "from {from}");
        }
        for len in [0, 1, 63, 64, 65, 200] {
            let mut bytes = vec![0u8; len];
            assert!(all_zero(&bytes));
            for i in 0..len {
                bytes[i] = 1;
                assert!(!all_zero(&bytes), "a one at {i} of {len}");
                bytes[i] = 0;
            }
        }
    }

    #[test]
    fn garbage_lengths_do_not_panic() {
        let mut bytes = records(2).to_vec();
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let (found, stats, _) = collect(&Bytes::from(bytes), true);
        assert_eq!((found.len(), stats.damaged_regions), (1, 1));
        let (found, stats, _) = collect(&Bytes::from_static(&[0x47, 0x44, 0x45, 0x53, 1, 2]), true);
        assert_eq!((found.len(), stats.damaged_bytes), (0, 6));
    }
}
