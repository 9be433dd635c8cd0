//! The spool: accepted events on disk before the 202, until ClickHouse confirms them.
//!
//! - [`Spool::append`] hands a block to the writer thread and, in durable mode,
//!   waits for the `fdatasync` that covers it. The writer takes every block
//!   queued while the previous sync ran and writes them with one `write` and
//!   one sync (group commit), so the cost of a sync is shared by all the
//!   requests that arrived during it.
//! - [`SpoolReader`] reads records back in order for the shipper, from the
//!   last checkpoint; [`SpoolReader::confirm`] moves the checkpoint after
//!   ClickHouse accepted them and deletes segments wholly behind it.
//! - [`Spool::open`] recovers a directory left by a crash: torn tails are
//!   truncated, damaged records skipped and counted, and everything after the
//!   checkpoint is shipped again (`event_id` makes that idempotent).
//!
//! Memory stays bounded whatever ClickHouse does: past `max_bytes` of
//! unshipped data, `append` refuses and the edge answers 503.

pub mod segment;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam::channel::{self, Receiver, Sender};
use tokio::sync::{oneshot, watch};

use crate::config::AckMode;
use crate::event::RowBlock;
use crate::metrics as m;
use segment::{Record, ScanStats};

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Rotate segments at this size; a segment is deleted once wholly shipped.
    pub segment_bytes: u64,
    /// Unshipped bytes allowed on disk; past it appends are refused (503).
    pub max_bytes: u64,
    /// Bytes waiting in memory for the writer; past it appends are refused (503).
    pub max_queued_bytes: u64,
    pub ack: AckMode,
}

/// Where the writer is: segment and end offset of the last completed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

#[derive(Debug)]
pub enum AppendError {
    /// More unshipped data than `max_bytes`.
    Full,
    /// The disk refused the write or the sync.
    Io(String),
}

/// Counters shared by the writer, the reader and request handlers.
#[derive(Default)]
struct Shared {
    /// Framed bytes ever accepted into the spool (including recovered ones).
    written_bytes: AtomicU64,
    /// Framed bytes the shipper has confirmed (or skipped as damage).
    shipped_bytes: AtomicU64,
    written_rows: AtomicU64,
    shipped_rows: AtomicU64,
    /// Framed bytes handed to the writer and not yet written: memory, bounded too.
    queued_bytes: AtomicU64,
}

impl Shared {
    fn unshipped_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Acquire).saturating_sub(self.shipped_bytes.load(Ordering::Acquire))
    }
    fn publish(&self) {
        metrics::gauge!(m::SPOOL_BYTES).set(self.unshipped_bytes() as f64);
        let rows = self.written_rows.load(Ordering::Acquire).saturating_sub(self.shipped_rows.load(Ordering::Acquire));
        metrics::gauge!(m::SPOOL_EVENTS).set(rows as f64);
    }
}

struct Append {
    /// Framed size, as counted in `queued_bytes`.
    size: u64,
    org: crate::tenant::OrgId,
    rows: u32,
    payload: Bytes,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

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

/// The request-side handle.
pub struct Spool {
    /// Swapped to `None` on close: loading it is lock-free on the request path.
    tx: arc_swap::ArcSwapOption<Sender<Append>>,
    shared: Arc<Shared>,
    max_bytes: u64,
    max_queued_bytes: u64,
    ack: AckMode,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Spool {
    /// Recovers `config.dir`, starts the writer on a fresh segment, and returns the
    /// handle for requests plus the reader for the shipper.
    pub fn open(config: &SpoolConfig) -> io::Result<(Spool, SpoolReader, Recovery)> {
        fs::create_dir_all(&config.dir)?;
        let checkpoint = read_checkpoint(&config.dir)?;
        let mut recovery = Recovery::default();
        let shared = Arc::new(Shared::default());
        let seqs = segment::list_segments(&config.dir)?;
        for &seq in &seqs {
            let path = segment::segment_path(&config.dir, seq);
            if checkpoint.is_some_and(|c| seq < c.seq) {
                fs::remove_file(&path)?; // shipped before the crash, not yet deleted
                continue;
            }
            recovery.segments += 1;
            let start = checkpoint.filter(|c| c.seq == seq).map_or(0, |c| c.offset);
            let data = segment::read_all(&path)?;
            let (stats, _) = segment::scan(&data, (start as usize).min(data.len()), true, |_, _| {});
            recovery.replay_records += stats.records;
            recovery.replay_rows += stats.rows;
            recovery.damaged_regions += stats.damaged_regions;
            recovery.damaged_bytes += stats.damaged_bytes;
            // Bytes after the last valid record hold no record at all (the scan resyncs past
            // damage): a write cut short. Cut them so the file ends clean.
            let clean_end = stats.valid_end.max(start);
            let tail = data.len() as u64 - clean_end;
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
        shared.publish();

        let first = seqs.iter().copied().find(|&s| checkpoint.is_none_or(|c| s >= c.seq));
        let write_seq = seqs.last().map_or(1, |s| s + 1);
        let head = Position { seq: write_seq, offset: 0 };
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = channel::unbounded();
        let writer = {
            let dir = config.dir.clone();
            let shared = shared.clone();
            let segment_bytes = config.segment_bytes;
            let file = create_segment(&dir, write_seq)?;
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || run_writer(rx, file, dir, head, segment_bytes, shared, head_tx))?
        };
        let reader = SpoolReader {
            dir: config.dir.clone(),
            at: match (checkpoint, first) {
                (Some(c), Some(f)) if f == c.seq => c,
                (_, Some(f)) => Position { seq: f, offset: 0 },
                (_, None) => head,
            },
            head: head_rx,
            shared: shared.clone(),
            next_written_ms: None,
        };
        let spool = Spool {
            tx: arc_swap::ArcSwapOption::from_pointee(tx),
            shared,
            max_bytes: config.max_bytes,
            max_queued_bytes: config.max_queued_bytes,
            ack: config.ack,
            writer: std::sync::Mutex::new(Some(writer)),
        };
        Ok((spool, reader, recovery))
    }

    /// Appends one block; in durable mode returns once it is on disk.
    pub async fn append(&self, block: RowBlock) -> Result<(), AppendError> {
        self.submit(block)?.written().await
    }

    /// Hands one block to the writer without waiting: once this returns `Ok` the block will
    /// be written whatever happens to the caller (whose accounting can rely on that).
    pub fn submit(&self, block: RowBlock) -> Result<Submitted, AppendError> {
        if block.rows == 0 {
            return Ok(Submitted(None));
        }
        let size = segment::framed_len(block.org.as_str().as_bytes(), &block.data) as u64;
        let queued = self.shared.queued_bytes.load(Ordering::Acquire);
        let pending = self.shared.unshipped_bytes() + queued;
        // Refuse only when already holding something: a lone block larger than a bound still gets in.
        if pending > 0 && (pending + size > self.max_bytes || queued + size > self.max_queued_bytes) {
            return Err(AppendError::Full);
        }
        let (ack, done) = match self.ack {
            AckMode::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            AckMode::Memory => (None, None),
        };
        let append = Append { size, org: block.org, rows: block.rows as u32, payload: block.data.freeze(), ack };
        let tx = self.tx.load();
        let Some(tx) = tx.as_ref() else { return Err(AppendError::Io("spool is closed".into())) };
        self.shared.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if tx.send(append).is_err() {
            self.shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(AppendError::Io("spool writer stopped".into()));
        }
        Ok(Submitted(done))
    }

    pub fn unshipped_bytes(&self) -> u64 {
        self.shared.unshipped_bytes()
    }

    /// Stops the writer after it has written and synced everything queued (blocks until then).
    pub fn close(&self) {
        self.tx.store(None);
        let writer = self.writer.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

/// A block the writer has; in durable mode, [`Submitted::written`] waits for its sync.
pub struct Submitted(Option<oneshot::Receiver<Result<(), String>>>);

impl Submitted {
    pub async fn written(self) -> Result<(), AppendError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(AppendError::Io(e)),
                Err(_) => Err(AppendError::Io("spool writer stopped".into())),
            },
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Most appends a group carries at once, so one sync never waits on a huge write.
const GROUP_MAX_BYTES: usize = 16 << 20;

fn run_writer(
    rx: Receiver<Append>,
    mut file: File,
    dir: PathBuf,
    mut head: Position,
    segment_bytes: u64,
    shared: Arc<Shared>,
    head_tx: watch::Sender<Position>,
) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut acks = Vec::new();
    let now_ms = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    while let Ok(first) = rx.recv() {
        buf.clear();
        let written_ms = now_ms();
        let mut rows = 0u64;
        let mut records = 0u64;
        let mut dequeued = 0u64;
        let mut take = |a: Append, buf: &mut Vec<u8>| {
            segment::encode(buf, written_ms, a.rows, a.org.as_str().as_bytes(), &a.payload);
            dequeued += a.size;
            rows += u64::from(a.rows);
            records += 1;
            acks.extend(a.ack);
        };
        take(first, &mut buf);
        while buf.len() < GROUP_MAX_BYTES {
            match rx.try_recv() {
                Ok(next) => take(next, &mut buf),
                Err(_) => break,
            }
        }
        let result = (|| -> io::Result<()> {
            if head.offset > 0 && head.offset + buf.len() as u64 > segment_bytes {
                file.sync_data()?;
                head = Position { seq: head.seq + 1, offset: 0 };
                file = create_segment(&dir, head.seq)?;
            }
            file.write_all(&buf)?;
            let started = Instant::now();
            file.sync_data()?;
            metrics::histogram!(m::SPOOL_FSYNC).record(started.elapsed().as_secs_f64());
            Ok(())
        })();
        shared.queued_bytes.fetch_sub(dequeued, Ordering::AcqRel);
        let reply = match result {
            Ok(()) => {
                head.offset += buf.len() as u64;
                shared.written_bytes.fetch_add(buf.len() as u64, Ordering::AcqRel);
                shared.written_rows.fetch_add(rows, Ordering::AcqRel);
                metrics::histogram!(m::SPOOL_GROUP).record(records as f64);
                let _ = head_tx.send(head);
                shared.publish();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, segment = head.seq, "spool write failed; refusing this group");
                // Whatever part was written is a torn record: start a new segment past it.
                head = Position { seq: head.seq + 1, offset: 0 };
                match create_segment(&dir, head.seq) {
                    Ok(f) => file = f,
                    Err(e) => tracing::error!(error = %e, "cannot open a new spool segment"),
                }
                let _ = head_tx.send(head);
                Err(e.to_string())
            }
        };
        for ack in acks.drain(..) {
            let _ = ack.send(reply.clone());
        }
    }
    let _ = file.sync_data();
}

fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(segment::segment_path(dir, seq))?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

const CHECKPOINT: &str = "checkpoint";

fn read_checkpoint(dir: &Path) -> io::Result<Option<Position>> {
    match fs::read_to_string(dir.join(CHECKPOINT)) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(seq)), Some(Ok(offset))) => Ok(Some(Position { seq, offset })),
                _ => {
                    tracing::warn!("spool checkpoint unreadable; replaying the whole spool");
                    Ok(None)
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Written to a temporary file and renamed, so a crash leaves the old or the new one.
fn write_checkpoint(dir: &Path, at: Position) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", at.seq, at.offset)?;
    f.sync_data()?;
    fs::rename(tmp, dir.join(CHECKPOINT))
}

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
}

impl ReadBatch {
    pub fn extend(&mut self, more: ReadBatch) {
        self.records.extend(more.records);
        self.rows += more.rows;
        self.bytes += more.bytes;
        self.end = more.end;
        self.consumed += more.consumed;
    }
}

/// The shipper's side: reads records in spool order, confirms them when shipped.
pub struct SpoolReader {
    dir: PathBuf,
    /// Next byte to read.
    at: Position,
    head: watch::Receiver<Position>,
    shared: Arc<Shared>,
    next_written_ms: Option<u64>,
}

/// Read at most this much of a segment at once.
const READ_CHUNK: u64 = 8 << 20;

impl SpoolReader {
    /// Reads what the writer has completed, up to about `max_rows` rows or `max_bytes` bytes.
    pub fn read(&mut self, max_rows: usize, max_bytes: usize) -> io::Result<ReadBatch> {
        let mut batch = ReadBatch { end: self.at, ..Default::default() };
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
            let mut want = remaining.min(READ_CHUNK.max(max_bytes as u64));
            let mut data = read_range(&path, self.at.offset, want)?;
            // A record larger than the chunk: read on until it is whole.
            while want < remaining && segment::scan(&data, 0, false, |_, _| {}).1 == 0 {
                want = remaining.min(want * 2);
                data = read_range(&path, self.at.offset, want)?;
            }
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
            if stats.damaged_regions > 0 && !stop {
                metrics::counter!(m::SPOOL_DAMAGED).increment(stats.damaged_regions);
                tracing::warn!(segment = self.at.seq, bytes = stats.damaged_bytes, "skipped damaged spool records");
            }
            self.at.offset += advance;
            batch.consumed += advance;
            batch.end = self.at;
            if advance == 0 {
                break; // a record still being written
            }
        }
        // The first record read since the last confirm is the oldest unshipped one.
        if self.next_written_ms.is_none() {
            self.next_written_ms = batch.records.first().map(|r| r.written_ms);
        }
        Ok(batch)
    }

    /// Waits until the writer has more than the reader has read, or `timeout` passes.
    pub async fn wait_for_data(&mut self, timeout: Duration) {
        if *self.head.borrow() > self.at {
            return;
        }
        let _ = tokio::time::timeout(timeout, self.head.changed()).await;
    }

    /// Is everything written also read?
    pub fn caught_up(&self) -> bool {
        *self.head.borrow() <= self.at
    }

    /// ClickHouse has `batch`: move the checkpoint past it and delete finished segments.
    pub fn confirm(&mut self, batch: &ReadBatch) -> io::Result<()> {
        write_checkpoint(&self.dir, batch.end)?;
        for seq in segment::list_segments(&self.dir)? {
            if seq < batch.end.seq {
                fs::remove_file(segment::segment_path(&self.dir, seq))?;
            }
        }
        // The oldest unshipped record is now the next one read, not this batch's first.
        self.next_written_ms = None;
        self.shared.shipped_bytes.fetch_add(batch.consumed, Ordering::AcqRel);
        self.shared.shipped_rows.fetch_add(batch.rows as u64, Ordering::AcqRel);
        self.shared.publish();
        Ok(())
    }

    /// Age of the oldest record read and not yet confirmed, for the lag gauge.
    pub fn oldest_unshipped_ms(&self) -> Option<u64> {
        self.next_written_ms
    }
}

fn file_len(path: &Path) -> io::Result<u64> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn read_range(path: &Path, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut data)?;
    Ok(Bytes::from(data))
}

/// Summary of a spool directory for `edge spool inspect`.
#[derive(Debug, Default)]
pub struct Inspection {
    pub checkpoint: Option<Position>,
    pub segments: Vec<(u64, u64, ScanStats, u64)>, // seq, size, stats, unshipped records
}

pub fn inspect(dir: &Path) -> io::Result<Inspection> {
    let checkpoint = read_checkpoint(dir)?;
    let mut out = Inspection { checkpoint, ..Default::default() };
    for seq in segment::list_segments(dir)? {
        let path = segment::segment_path(dir, seq);
        let data = segment::read_all(&path)?;
        let shipped_to = match checkpoint {
            Some(c) if seq < c.seq => u64::MAX,
            Some(c) if seq == c.seq => c.offset,
            _ => 0,
        };
        let mut unshipped = 0;
        let (stats, _) = segment::scan(&data, 0, true, |after, r| {
            if after > shipped_to {
                unshipped += u64::from(r.rows);
            }
        });
        out.segments.push((seq, data.len() as u64, stats, unshipped));
    }
    Ok(out)
}

/// Rewrites damaged segments keeping only intact records; returns records kept per repaired segment.
pub fn repair(dir: &Path) -> io::Result<Vec<(u64, ScanStats)>> {
    let mut repaired = Vec::new();
    for seq in segment::list_segments(dir)? {
        let path = segment::segment_path(dir, seq);
        let data = segment::read_all(&path)?;
        let mut clean = Vec::with_capacity(data.len());
        let (stats, _) = segment::scan(&data, 0, true, |_, r| {
            segment::encode(&mut clean, r.written_ms, r.rows, &r.org, &r.payload);
        });
        if stats.damaged_regions == 0 {
            continue;
        }
        let tmp = path.with_extension("repair");
        let mut f = File::create(&tmp)?;
        f.write_all(&clean)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        repaired.push((seq, stats));
    }
    // Offsets inside repaired segments moved: replay them whole rather than trust the checkpoint.
    if !repaired.is_empty() {
        if let Some(c) = read_checkpoint(dir)? {
            if repaired.iter().any(|(seq, _)| *seq == c.seq) {
                write_checkpoint(dir, Position { seq: c.seq, offset: 0 })?;
            }
        }
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::OrgId;

    fn block(rows: usize) -> RowBlock {
        let mut b = RowBlock::new(OrgId::new("org_t"), 64);
        b.data.extend_from_slice(&vec![b'r'; rows * 10]);
        b.rows = rows;
        b
    }

    fn config(dir: &Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig { dir: dir.to_path_buf(), segment_bytes: 1024, max_bytes, max_queued_bytes: 1 << 20, ack: AckMode::Durable }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unshipped_records_are_replayed_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut reader, recovery) = Spool::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(recovery.replay_rows, 0);
        for _ in 0..30 {
            spool.append(block(4)).await.unwrap();
        }
        // Ship and confirm the first 40 rows only, then "crash".
        let first = reader.read(40, 1 << 20).unwrap();
        assert_eq!(first.rows, 40);
        reader.confirm(&first).unwrap();
        tokio::task::block_in_place(|| spool.close());
        drop(spool);
        let segments_before = segment::list_segments(dir.path()).unwrap().len();
        assert!(segments_before > 1, "small segments rotate");

        let (spool, mut reader, recovery) = Spool::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(recovery.replay_rows, 80, "everything after the checkpoint comes back");
        // 20 records of 4 rows and 40 payload bytes each.
        assert_eq!(spool.unshipped_bytes(), 20 * segment::framed_len(b"org_t", &[0; 40]) as u64);
        let again = reader.read(1000, 1 << 20).unwrap();
        assert_eq!(again.rows, 80);
        reader.confirm(&again).unwrap();
        assert_eq!(spool.unshipped_bytes(), 0);
        tokio::task::block_in_place(|| spool.close());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_past_the_bound_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _reader, _) = Spool::open(&config(dir.path(), 200)).unwrap();
        spool.append(block(4)).await.unwrap();
        spool.append(block(4)).await.unwrap();
        assert!(matches!(spool.append(block(4)).await, Err(AppendError::Full)));
        tokio::task::block_in_place(|| spool.close());
        assert!(matches!(spool.append(block(1)).await, Err(AppendError::Io(_))), "closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_acks_still_reach_disk_on_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig { ack: AckMode::Memory, ..config(dir.path(), 1 << 20) };
        let (spool, _reader, _) = Spool::open(&config).unwrap();
        for _ in 0..10 {
            spool.append(block(3)).await.unwrap();
        }
        tokio::task::block_in_place(|| spool.close());
        drop(spool);
        let (_spool, _reader, recovery) = Spool::open(&config).unwrap();
        assert_eq!(recovery.replay_rows, 30);
    }

    #[test]
    fn what_waits_for_the_writer_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig { max_queued_bytes: 4096, segment_bytes: 1 << 30, ..config(dir.path(), 1 << 30) };
        let (spool, _reader, _) = Spool::open(&config).unwrap();
        // Submitting without waiting: the writer syncs between groups, so the queue fills.
        let mut full = 0;
        for _ in 0..10_000 {
            match spool.submit(block(100)) {
                Ok(_) => {}
                Err(AppendError::Full) => full += 1,
                Err(AppendError::Io(e)) => panic!("{e}"),
            }
            assert!(spool.shared.queued_bytes.load(Ordering::Acquire) <= 4096 + 1100);
        }
        assert!(full > 0, "past the queue bound submissions are refused");
    }

    #[test]
    fn checkpoint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None);
        write_checkpoint(dir.path(), Position { seq: 7, offset: 42 }).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(Position { seq: 7, offset: 42 }));
        std::fs::write(dir.path().join(CHECKPOINT), "garbage").unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None, "unreadable: replay everything");
    }
}
