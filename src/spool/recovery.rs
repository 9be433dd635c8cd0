//! Start-up recovery of a spool directory left by a crash: segments behind the checkpoint
//! are deleted, torn tails truncated, damaged records counted (they are skipped when
//! shipping), and everything after the checkpoint counted as unshipped.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::{segment, Position, Shared};
use crate::metrics as m;

/// What start-up found in the directory.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub segments: usize,
    /// Records after the checkpoint: shipped again.
    pub replay_records: u64,
    pub replay_rows: u64,
    pub damaged_regions: u64,
    pub damaged_bytes: u64,
    /// Bytes cut from torn segment tails.
    pub truncated_bytes: u64,
}

/// Recovers `dir` and returns what it found and the segments left, in order.
pub(super) fn recover(dir: &Path, checkpoint: Option<Position>, shared: &Shared) -> io::Result<(Recovery, Vec<u64>)> {
    let mut recovery = Recovery::default();
    let seqs = segment::list_segments(dir)?;
    // One buffer for every segment, sized for the largest: each would otherwise be faulted in
    // and zeroed afresh (segments differ by a few bytes, so one sized for the first did not fit
    // the next). It goes when recovery ends.
    let buffers = crate::buffers::BufferPool::new(1, usize::MAX);
    let mut largest = 0;
    for &seq in &seqs {
        largest = largest.max(fs::metadata(segment::segment_path(dir, seq))?.len() as usize);
    }
    for &seq in &seqs {
        let path = segment::segment_path(dir, seq);
        if checkpoint.is_some_and(|c| seq < c.seq) {
            fs::remove_file(&path)?; // shipped before the crash, not yet deleted
            continue;
        }
        recovery.segments += 1;
        let start = checkpoint.filter(|c| c.seq == seq).map_or(0, |c| c.offset);
        let mut file = fs::File::open(&path)?;
        // Sized up front: growing by doubling would copy the segment over and over.
        let mut buffer = buffers.take(largest);
        file.read_to_end(&mut buffer)?;
        let data = bytes::Bytes::from(buffer);
        let (stats, _) = segment::scan(&data, (start as usize).min(data.len()), true, |_, _| {});
        let len = data.len() as u64;
        buffers.give(data);
        recovery.replay_records += stats.records;
        recovery.replay_rows += stats.rows;
        recovery.damaged_regions += stats.damaged_regions;
        recovery.damaged_bytes += stats.damaged_bytes;
        // Bytes after the last valid record hold no record at all (the scan resyncs past
        // damage): a write cut short. Cut them so the file ends clean.
        let clean_end = stats.valid_end.max(start);
        let tail = len - clean_end;
        if tail > 0 {
            OpenOptions::new().write(true).open(&path)?.set_len(clean_end)?;
            recovery.truncated_bytes += tail;
        }
        let size = fs::metadata(&path)?.len();
        shared.written_bytes.fetch_add(size.saturating_sub(start), Ordering::AcqRel);
        shared.written_rows.fetch_add(stats.rows, Ordering::AcqRel);
    }
    metrics::counter!(m::SPOOL_REPLAYED).increment(recovery.replay_rows);
    metrics::counter!(m::SPOOL_DAMAGED).increment(recovery.damaged_regions);
    Ok((recovery, seqs))
}
