//! The shipper's side: records read back in order from the checkpoint, and the checkpoint
//! moved (and wholly shipped segments deleted) once the sink confirmed them.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::checkpoint::write_checkpoint;
use super::segment::{self, Record};
use super::{Position, Shared};
use crate::buffers::BufferPool;
use crate::metrics as m;

/// Records read for shipping, and where the reader stands after them.
#[derive(Debug, Default)]
pub struct ReadBatch {
    pub records: Vec<Record>,
    pub rows: usize,
    pub bytes: usize,
    /// Position after the last record (and any damage skipped before it).
    pub end: Position,
    /// Framed bytes consumed, damage included.
    consumed: u64,
    /// The buffers the records were read into, returned to the reader's pool at confirm.
    buffers: Vec<Bytes>,
}

impl ReadBatch {
    /// When the oldest record in the batch was written.
    pub fn first_written_ms(&self) -> Option<u64> {
        self.records.first().map(|r| r.written_ms)
    }
}

/// The shipper's side: reads records in spool order, confirms them when shipped.
pub struct SpoolReader {
    pub(super) dir: PathBuf,
    /// Next byte to read.
    pub(super) at: Position,
    pub(super) head: watch::Receiver<Position>,
    pub(super) shared: Arc<Shared>,
    /// Read buffers kept for reuse (see [`BufferPool`]).
    pub(super) buffers: BufferPool,
    /// Spool bytes per row in the last read, to size the next.
    pub(super) bytes_per_row: u64,
    /// The writer's head as last seen by [`SpoolReader::wait_for_data`] or a read.
    pub(super) seen: Position,
    /// Framed bytes read since open (damage included), against `Shared::written_bytes`.
    pub(super) read_bytes: u64,
    /// Record lists of confirmed batches, emptied, kept for the next: a list grown anew for
    /// every batch is memory the allocator returns to the OS and then faults back in.
    pub(super) spare_records: Vec<Vec<Record>>,
}

/// Read buffers kept: a batch in flight and one being gathered hold theirs until confirmed.
pub(super) const READ_BUFFERS: usize = 4;

/// Record lists kept, as many as batches in use at once (one in flight, one being gathered).
const SPARE_RECORD_LISTS: usize = 2;

/// Read at most this much of a segment at once (or `max_bytes` when larger)…
const READ_CHUNK: u64 = 8 << 20;
/// …and this much more than the rows still wanted should take.
const READ_SLACK: u64 = 64 << 10;

impl SpoolReader {
    /// A batch with nothing in it yet, ending where the reader stands.
    pub fn empty_batch(&mut self) -> ReadBatch {
        ReadBatch { end: self.at, records: self.spare_records.pop().unwrap_or_default(), ..Default::default() }
    }

    /// Would the bytes written and not yet read fill `rows` rows (at the bytes per row of the
    /// last read) or `bytes` bytes? Lets the shipper read once per block instead of once per
    /// group commit.
    pub fn unread_fills(&self, rows: usize, bytes: usize) -> bool {
        let unread = self.shared.written_bytes.load(Ordering::Acquire).saturating_sub(self.read_bytes);
        unread >= bytes as u64 || unread >= self.bytes_per_row.saturating_mul(rows as u64)
    }

    /// Reads what the writer has completed, up to about `max_rows` rows or `max_bytes` bytes.
    pub fn read(&mut self, max_rows: usize, max_bytes: usize) -> io::Result<ReadBatch> {
        let mut batch = self.empty_batch();
        self.read_into(&mut batch, max_rows, max_bytes)?;
        Ok(batch)
    }

    /// Reads what the writer has completed into `batch` (which must end where the reader
    /// stands), until it holds about `max_rows` rows or `max_bytes` bytes in all.
    pub fn read_into(&mut self, batch: &mut ReadBatch, max_rows: usize, max_bytes: usize) -> io::Result<()> {
        debug_assert_eq!(batch.end, self.at, "a batch is extended where it ends");
        loop {
            let head = *self.head.borrow();
            if self.at >= head || batch.rows >= max_rows || batch.bytes >= max_bytes {
                break;
            }
            let path = segment::segment_path(&self.dir, self.at.seq);
            let sealed = self.at.seq < head.seq;
            let end = if sealed { file_len(&path)? } else { head.offset };
            if self.at.offset >= end {
                if sealed {
                    self.at = Position { seq: self.at.seq + 1, offset: 0 };
                    batch.end = self.at;
                    continue;
                }
                break;
            }
            let remaining = end - self.at.offset;
            // About what the rows still wanted take (from the rows read so far), not all that
            // `max_bytes` allows: what is read past the block's end is read again next time.
            let rows_left = max_rows.saturating_sub(batch.rows) as u64;
            let estimate = self.bytes_per_row.saturating_mul(rows_left) / 8 * 9 + READ_SLACK;
            let mut want = remaining.min(estimate.min(READ_CHUNK.max(max_bytes as u64)));
            let rows_before = batch.rows;
            let (data, stats, stop, advance) = loop {
                let data = self.read_range(&path, self.at.offset, want)?;
                let complete = sealed && self.at.offset + want == end;
                let mut rows_left = max_rows.saturating_sub(batch.rows);
                let mut taken_end = 0u64;
                let mut stop = false;
                let (stats, pos) = segment::scan(&data, 0, complete, |after, record| {
                    if stop {
                        return;
                    }
                    rows_left = rows_left.saturating_sub(record.rows as usize);
                    batch.rows += record.rows as usize;
                    batch.bytes += record.payload.len();
                    batch.records.push(record);
                    taken_end = after;
                    if rows_left == 0 || batch.bytes >= max_bytes {
                        stop = true;
                    }
                });
                // When stopped early, resume right after the last record taken.
                let advance = if stop { taken_end } else { pos as u64 };
                // Nothing whole in what was read (no record was taken either): a record larger
                // than the chunk, read on until it is whole. Checked after the one scan, not
                // by a scan ahead of it, which verified every record's CRC twice.
                if advance == 0 && want < remaining {
                    want = remaining.min(want * 2);
                    self.buffers.give(data);
                    continue;
                }
                break (data, stats, stop, advance);
            };
            batch.buffers.push(data);
            if stats.damaged_regions > 0 && !stop {
                metrics::counter!(m::SPOOL_DAMAGED).increment(stats.damaged_regions);
                tracing::warn!(segment = self.at.seq, bytes = stats.damaged_bytes, "skipped damaged spool records");
            }
            if batch.rows > rows_before {
                self.bytes_per_row = (advance / (batch.rows - rows_before) as u64).max(1);
            }
            self.at.offset += advance;
            self.read_bytes += advance;
            batch.consumed += advance;
            batch.end = self.at;
            if advance == 0 {
                break; // a record still being written
            }
        }
        self.seen = self.seen.max(self.at);
        Ok(())
    }

    /// Waits until the writer has written more than was seen (by the last wait or read), or
    /// `timeout` passes; says whether there is more.
    ///
    /// Only the timeout (or the writer closing) ends the wait without data: the writer also
    /// republishes its head with nothing new, and taking that for a quiet spool made the
    /// shipper flush its tail tens of times a second under steady load.
    pub async fn wait_for_data(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let head = *self.head.borrow_and_update();
            if head > self.seen {
                self.seen = head;
                return true;
            }
            match tokio::time::timeout_at(deadline, self.head.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }

    /// Has the writer stopped (the spool closed)? Nothing more will be written then.
    pub fn writer_closed(&self) -> bool {
        self.head.has_changed().is_err()
    }

    /// Resolves once the writer has stopped; owns what it needs, so a send task can hold it.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut head = self.head.clone();
        async move { while head.changed().await.is_ok() {} }
    }

    /// Is everything written also read?
    pub fn caught_up(&self) -> bool {
        *self.head.borrow() <= self.at
    }

    /// ClickHouse has `batch`: move the checkpoint past it and delete finished segments.
    pub fn confirm(&mut self, batch: ReadBatch) -> io::Result<()> {
        let result = self.checkpoint(&batch);
        let ReadBatch { mut records, buffers, .. } = batch;
        records.clear(); // what still refers to the buffers
        if self.spare_records.len() < SPARE_RECORD_LISTS {
            self.spare_records.push(records);
        }
        for buffer in buffers {
            self.buffers.give(buffer);
        }
        result
    }

    fn checkpoint(&mut self, batch: &ReadBatch) -> io::Result<()> {
        write_checkpoint(&self.dir, batch.end)?;
        for seq in segment::list_segments(&self.dir)? {
            if seq < batch.end.seq {
                fs::remove_file(segment::segment_path(&self.dir, seq))?;
            }
        }
        self.shared.shipped_bytes.fetch_add(batch.consumed, Ordering::AcqRel);
        self.shared.shipped_rows.fetch_add(batch.rows as u64, Ordering::AcqRel);
        self.shared.publish();
        Ok(())
    }
}

fn file_len(path: &Path) -> io::Result<u64> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

impl SpoolReader {
    fn read_range(&self, path: &Path, offset: u64, len: u64) -> io::Result<Bytes> {
        self.shared.file_reads.fetch_add(1, Ordering::Relaxed);
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut data = self.buffers.take(len as usize);
        f.take(len).read_to_end(&mut data)?;
        Ok(Bytes::from(data))
    }
}
