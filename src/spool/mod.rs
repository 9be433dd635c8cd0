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

mod checkpoint;
mod inspect;
mod reader;
mod recovery;
pub mod segment;
mod writer;

pub use inspect::{inspect, repair, Inspection};
pub use reader::{ReadBatch, SpoolReader};
pub use recovery::Recovery;

use crossbeam::channel::{self, Sender};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

use crate::config::AckMode;
use crate::event::RowBlock;
use crate::metrics as m;
use checkpoint::read_checkpoint;
use writer::{create_segment, Append, Linger, Spare, Writer};

/// Durable acks: the writer pauses (`sync_linger`) only after groups of this many appends,
/// a sign that requests queue faster than syncs complete. Requests arriving a few at a time
/// would only wait longer for their 202 (measured: at 16 connections, groups of 7–14 and
/// fewer requests/s with a pause after groups of 16; at 512, groups of 45 became 72 and the
/// writer thread's CPU per request fell from 3.6–4.0 to 2.8 µs).
pub const SYNC_LINGER_AFTER: u64 = 32;

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
    /// With memory acks, how often written data is synced to disk (the window an OS crash may
    /// lose); durable acks sync every group before answering.
    pub sync_interval: std::time::Duration,
    /// With memory acks, how long the writer waits after a group before taking the next, so
    /// that under load it wakes once per this interval rather than once per few requests.
    pub write_linger: std::time::Duration,
    /// With durable acks, the same pause, only after a group of [`SYNC_LINGER_AFTER`] appends
    /// or more: under load one `fdatasync` then covers more requests.
    pub sync_linger: std::time::Duration,
    /// The next segment is zero-filled ahead while the one being sealed averaged fewer bytes
    /// than this per `fdatasync` (`0`: never; above `segment_bytes`: always). Until a segment
    /// is sealed, durable acks assume small syncs and memory acks large ones.
    pub prefill_below: u64,
    /// Stamps each record's write time (the shipper reports the oldest unshipped age from it).
    pub clock: crate::clock::Clock,
}

/// Where the writer is: segment and end offset of the last completed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// Why the spool did not take (or did not store) a block.
#[derive(Debug, Clone)]
pub enum SpoolError {
    /// More unshipped data than `max_bytes`, or more queued for the writer than `max_queued_bytes`.
    Full,
    /// The disk refused the write or the sync.
    Io(Arc<io::Error>),
    /// The writer has stopped (shutting down).
    Closed,
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
    /// `fdatasync` calls of the writer (tests read it; the metric is a histogram).
    syncs: AtomicU64,
    /// Groups the writer has written (tests read it; the metric is a histogram).
    groups: AtomicU64,
    /// Reads of segment files by the reader (tests read it).
    file_reads: AtomicU64,
    gauges: Gauges,
}

/// Handles looked up once, at open: `gauge!` looks its series up on every call, which the
/// writer would do once per group.
struct Gauges {
    bytes: metrics::Gauge,
    events: metrics::Gauge,
}

impl Default for Gauges {
    fn default() -> Self {
        Gauges { bytes: metrics::gauge!(m::SPOOL_BYTES), events: metrics::gauge!(m::SPOOL_EVENTS) }
    }
}

impl Shared {
    fn unshipped_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Acquire).saturating_sub(self.shipped_bytes.load(Ordering::Acquire))
    }
    fn publish(&self) {
        self.gauges.bytes.set(self.unshipped_bytes() as f64);
        let rows = self.written_rows.load(Ordering::Acquire).saturating_sub(self.shipped_rows.load(Ordering::Acquire));
        self.gauges.events.set(rows as f64);
    }
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
    #[cfg(test)]
    pub(crate) fn file_reads(&self) -> u64 {
        self.shared.file_reads.load(Ordering::Acquire)
    }

    /// Recovers `config.dir`, starts the writer on a fresh segment, and returns the
    /// handle for requests plus the reader for the shipper.
    pub fn open(config: &SpoolConfig) -> io::Result<(Spool, SpoolReader, Recovery)> {
        fs::create_dir_all(&config.dir)?;
        let checkpoint = read_checkpoint(&config.dir)?;
        let shared = Arc::new(Shared::default());
        let (recovery, seqs) = recovery::recover(&config.dir, checkpoint, &shared)?;
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
            let clock = config.clock.clone();
            let file = create_segment(&dir, write_seq)?;
            let (sync_every, linger) = match config.ack {
                AckMode::Durable => (None, Linger { pause: config.sync_linger, after_records: SYNC_LINGER_AFTER }),
                AckMode::Memory => {
                    (Some(config.sync_interval), Linger { pause: config.write_linger, after_records: 0 })
                }
            };
            // Durable acks are completed on the runtime when there is one (there always is in
            // the server; some unit tests have none).
            let fanout = match (config.ack, tokio::runtime::Handle::try_current()) {
                (AckMode::Durable, Ok(runtime)) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    runtime.spawn(writer::fan_out(rx));
                    Some(tx)
                }
                _ => None,
            };
            let fill_first = config.ack == AckMode::Durable && config.prefill_below > 0;
            let spare = Spare::start(&dir, segment_bytes, fill_first)?;
            let writer = Writer {
                rx,
                file,
                dir,
                head,
                segment_bytes,
                shared,
                head_tx,
                clock,
                fanout,
                sync_every,
                linger,
                spare,
                prefill_below: config.prefill_below,
            };
            std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer::run(writer))?
        };
        let at = match (checkpoint, first) {
            (Some(c), Some(f)) if f == c.seq => c,
            (_, Some(f)) => Position { seq: f, offset: 0 },
            (_, None) => head,
        };
        let reader = SpoolReader {
            dir: config.dir.clone(),
            at,
            head: head_rx,
            shared: shared.clone(),
            buffers: crate::buffers::BufferPool::new(reader::READ_BUFFERS, segment::MAX_RECORD),
            // Low on purpose (no framed row is smaller): until a read measures it, the shipper
            // reads a little early rather than late.
            bytes_per_row: 64,
            seen: at,
            read_bytes: 0,
            spare_records: Vec::new(),
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
    pub async fn append(&self, block: RowBlock) -> Result<(), SpoolError> {
        self.submit(block)?.written().await
    }

    /// Hands one block to the writer without waiting: once this returns `Ok` the block will
    /// be written whatever happens to the caller (whose accounting can rely on that).
    pub fn submit(&self, block: RowBlock) -> Result<Submitted, SpoolError> {
        if block.rows == 0 {
            return Ok(Submitted(None));
        }
        let size = segment::framed_len(block.org.as_str().as_bytes(), &block.data) as u64;
        let queued = self.shared.queued_bytes.load(Ordering::Acquire);
        let pending = self.shared.unshipped_bytes() + queued;
        // Refuse only when already holding something: a lone block larger than a bound still gets in.
        if pending > 0 && (pending + size > self.max_bytes || queued + size > self.max_queued_bytes) {
            return Err(SpoolError::Full);
        }
        let (ack, done) = match self.ack {
            AckMode::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            AckMode::Memory => (None, None),
        };
        let append = Append { size, org: block.org, rows: block.rows as u32, payload: block.data, ack };
        let tx = self.tx.load();
        let Some(tx) = tx.as_ref() else { return Err(SpoolError::Closed) };
        self.shared.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if tx.send(append).is_err() {
            self.shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(SpoolError::Closed);
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
pub struct Submitted(Option<oneshot::Receiver<Result<(), SpoolError>>>);

impl Submitted {
    pub async fn written(self) -> Result<(), SpoolError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(SpoolError::Closed),
            },
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::OrgId;
    use std::path::Path;

    fn block(rows: usize) -> RowBlock {
        let mut b = RowBlock::new(OrgId::new("org_t"), 64);
        b.data.extend_from_slice(&vec![b'r'; rows * 10]);
        b.rows = rows;
        b
    }

    fn config(dir: &Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 1024,
            max_bytes,
            max_queued_bytes: 1 << 20,
            ack: AckMode::Durable,
            sync_interval: std::time::Duration::from_millis(100),
            write_linger: std::time::Duration::ZERO,
            sync_linger: std::time::Duration::ZERO,
            prefill_below: u64::MAX,
            clock: Default::default(),
        }
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
        reader.confirm(first).unwrap();
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
        assert_eq!(reader.buffers.kept(), 0);
        reader.confirm(again).unwrap();
        assert!(reader.buffers.kept() > 0, "read buffers are kept for the next read");
        assert_eq!(spool.unshipped_bytes(), 0);
        tokio::task::block_in_place(|| spool.close());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_are_written_over_zero_filled_spares_and_their_zeros_are_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _reader, _) = Spool::open(&config(dir.path(), 1 << 20)).unwrap();
        let spare = segment::spare_path(dir.path());
        let started = std::time::Instant::now();
        while std::fs::metadata(&spare).map(|m| m.len()).unwrap_or(0) < 1024 {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "no spare segment prepared");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // its sync
        for _ in 0..30 {
            spool.append(block(4)).await.unwrap();
        }
        let seqs = segment::list_segments(dir.path()).unwrap();
        assert!(seqs.len() > 2, "small segments rotate: {seqs:?}");
        let (sealed, current) = seqs.split_at(seqs.len() - 1);
        for &seq in sealed {
            let data = segment::read_all(&segment::segment_path(dir.path(), seq)).unwrap();
            let (stats, _) = segment::scan(&data, 0, true, |_, _| {});
            assert_eq!((stats.damaged_regions, stats.valid_end), (0, data.len() as u64), "segment {seq} ends clean");
        }
        // The current segment came from a spare: zeros after its records.
        let data = segment::read_all(&segment::segment_path(dir.path(), current[0])).unwrap();
        let (stats, _) = segment::scan(&data, 0, true, |_, _| {});
        assert_eq!(data.len(), 1024, "written over a zero-filled spare");
        assert!(stats.valid_end < 1024 && data[stats.valid_end as usize..].iter().all(|&b| b == 0));
        assert_eq!(stats.damaged_regions, 0, "unwritten zeros are not damage");
        tokio::task::block_in_place(|| spool.close());
        drop(spool);

        // What a kill leaves is the same: recovery keeps every record, reports no damage, and
        // cuts the zeros.
        let (spool, mut reader, recovery) = Spool::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!((recovery.replay_rows, recovery.damaged_regions), (120, 0));
        assert_eq!(recovery.truncated_bytes, 1024 - stats.valid_end);
        assert_eq!(reader.read(1000, 1 << 20).unwrap().rows, 120);
        tokio::task::block_in_place(|| spool.close());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_are_zero_filled_ahead_only_while_syncs_are_small() {
        let dir = tempfile::tempdir().unwrap();
        let spare = segment::spare_path(dir.path());
        // Memory acks, syncing only at rotation: ~1 KiB per sync, above the threshold. A spare
        // a previous run left goes at start.
        std::fs::write(&spare, [0u8; 16]).unwrap();
        let large = SpoolConfig {
            ack: AckMode::Memory,
            sync_interval: std::time::Duration::from_secs(3600),
            prefill_below: 512,
            ..config(dir.path(), 1 << 20)
        };
        // Spaced, so that each is a group of its own (a memory ack does not wait for the write).
        let (spool, _reader, _) = append_spaced(&large, 100, std::time::Duration::from_millis(1)).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!spare.exists(), "no segment zero-filled");
        tokio::task::block_in_place(|| spool.close());
        let seqs = segment::list_segments(dir.path()).unwrap();
        assert!(seqs.len() > 2, "small segments rotate: {seqs:?}");
        for seq in seqs {
            let data = segment::read_all(&segment::segment_path(dir.path(), seq)).unwrap();
            let (stats, _) = segment::scan(&data, 0, true, |_, _| {});
            assert_eq!((stats.damaged_regions, stats.valid_end), (0, data.len() as u64), "segment {seq} appended");
        }
        drop(spool);

        // The same spool with durable acks, a sync per append (~40 bytes): the first sealed
        // segment asks for the next to be filled.
        let small = SpoolConfig { ack: AckMode::Durable, ..large };
        let (spool, mut reader, recovery) = Spool::open(&small).unwrap();
        assert_eq!((recovery.replay_rows, recovery.damaged_regions), (300, 0));
        let started = std::time::Instant::now();
        while !spare.exists() {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "no spare after small syncs");
            spool.append(block(4)).await.unwrap();
        }
        tokio::task::block_in_place(|| spool.close());
        assert!(reader.read(100_000, 1 << 20).unwrap().rows > 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_past_the_bound_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _reader, _) = Spool::open(&config(dir.path(), 200)).unwrap();
        spool.append(block(4)).await.unwrap();
        spool.append(block(4)).await.unwrap();
        assert!(matches!(spool.append(block(4)).await, Err(SpoolError::Full)));
        tokio::task::block_in_place(|| spool.close());
        assert!(matches!(spool.append(block(1)).await, Err(SpoolError::Closed)));
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

    /// Memory acks, one segment for the whole test.
    fn memory_config(dir: &Path) -> SpoolConfig {
        SpoolConfig { ack: AckMode::Memory, segment_bytes: 1 << 30, ..config(dir, 1 << 30) }
    }

    /// Opens the spool and appends `n` blocks of 3 rows, `gap` apart; returns when it started.
    async fn append_spaced(
        config: &SpoolConfig,
        n: usize,
        gap: std::time::Duration,
    ) -> (Spool, SpoolReader, std::time::Instant) {
        let (spool, reader, _) = Spool::open(config).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..n {
            spool.append(block(3)).await.unwrap();
            tokio::time::sleep(gap).await;
        }
        (spool, reader, started)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_acks_sync_on_a_timer_not_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let interval = std::time::Duration::from_millis(300);
        let config = SpoolConfig { sync_interval: interval, ..memory_config(dir.path()) };
        let (spool, _reader, started) = append_spaced(&config, 200, std::time::Duration::from_micros(200)).await;
        let syncs = spool.shared.syncs.load(Ordering::Acquire);
        let windows = started.elapsed().as_millis() as u64 / 300 + 1;
        assert!(syncs <= windows, "{syncs} syncs for 200 groups in {windows} windows");
        // Idle: what was written is synced once its window is up.
        tokio::time::sleep(interval * 2).await;
        assert!(spool.shared.syncs.load(Ordering::Acquire) > syncs, "the last writes were synced while idle");
        let durable = SpoolConfig { ack: AckMode::Durable, dir: dir.path().join("d"), ..config.clone() };
        let (spool, _reader, _) = append_spaced(&durable, 20, std::time::Duration::ZERO).await;
        assert_eq!(spool.shared.syncs.load(Ordering::Acquire), 20, "durable acks: one sync per group");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_acks_linger_gathers_what_arrives_into_few_groups() {
        let dir = tempfile::tempdir().unwrap();
        let linger = std::time::Duration::from_millis(100);
        let config = SpoolConfig { write_linger: linger, ..memory_config(dir.path()) };
        let (spool, _reader, started) = append_spaced(&config, 50, std::time::Duration::from_millis(1)).await;
        tokio::task::block_in_place(|| spool.close());
        let groups = spool.shared.groups.load(Ordering::Acquire);
        // Without the pause each append, a millisecond apart, is a group of its own.
        let windows = started.elapsed().as_millis() as u64 / 100 + 2;
        assert!(groups <= windows, "{groups} groups for 50 appends in {windows} windows");
        drop(spool);
        let (_spool, _reader, recovery) = Spool::open(&config).unwrap();
        assert_eq!(recovery.replay_rows, 150, "nothing queued during a pause is lost on close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_appends_arriving_alone_never_wait_for_the_sync_linger() {
        let dir = tempfile::tempdir().unwrap();
        // A pause this long after any of these groups would time the test out.
        let linger = std::time::Duration::from_secs(30);
        let config = SpoolConfig { sync_linger: linger, segment_bytes: 1 << 30, ..config(dir.path(), 1 << 30) };
        let (spool, _reader, started) = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            append_spaced(&config, 50, std::time::Duration::ZERO),
        )
        .await
        .expect("a group of one append paused for the linger");
        // A few at once (fewer than SYNC_LINGER_AFTER) do not wait either.
        let few: Vec<_> = (0..8).map(|_| spool.submit(block(1)).unwrap()).collect();
        for submitted in few {
            submitted.written().await.unwrap();
        }
        assert!(started.elapsed() < linger);
        assert_eq!(spool.shared.syncs.load(Ordering::Acquire), spool.shared.groups.load(Ordering::Acquire));
        tokio::task::block_in_place(|| spool.close());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_durable_group_is_acknowledged_then_the_writer_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let linger = std::time::Duration::from_secs(5);
        let config = SpoolConfig {
            sync_linger: linger,
            segment_bytes: 1 << 30,
            max_queued_bytes: 1 << 30,
            ..config(dir.path(), 1 << 30)
        };
        let (spool, _reader, _) = Spool::open(&config).unwrap();
        // A group of its own (past GROUP_MAX_BYTES, after which the writer takes no more, and
        // does not pause) that keeps the writer busy while the burst queues behind it, so the
        // burst is the next group, of more than SYNC_LINGER_AFTER appends.
        let busy = spool.submit(block(1_700_000)).unwrap();
        let burst: Vec<_> = (0..4 * SYNC_LINGER_AFTER).map(|_| spool.submit(block(1)).unwrap()).collect();
        busy.written().await.unwrap();
        let acked = std::time::Instant::now();
        for submitted in burst {
            tokio::time::timeout(linger / 2, submitted.written()).await.expect("acks wait for the pause").unwrap();
        }
        assert_eq!(spool.shared.groups.load(Ordering::Acquire), 2, "the burst was one group");
        // The writer pauses after that group: what comes next waits for the rest of the pause.
        let next = std::time::Instant::now();
        spool.append(block(1)).await.unwrap();
        assert!(next.elapsed() > linger / 3, "no pause after a group of {}", 4 * SYNC_LINGER_AFTER);
        assert!(acked.elapsed() < linger * 2);
        tokio::task::block_in_place(|| spool.close());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_larger_than_a_read_is_read_on_until_whole_even_behind_damage() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig { segment_bytes: 1 << 30, max_queued_bytes: 1 << 30, ..config(dir.path(), 1 << 30) };
        let (spool, mut reader, _) = Spool::open(&config).unwrap();
        for rows in [1, 30_000, 1, 30_000] {
            spool.append(block(rows)).await.unwrap();
        }
        // The first read sizes the next by its bytes per row (a few dozen): far less than the
        // next record's 300 KB.
        assert_eq!(reader.read(1, 1 << 20).unwrap().rows, 1);
        let big = reader.read(1, 1 << 20).unwrap();
        assert_eq!((big.records.len(), big.rows), (1, 30_000));
        reader.confirm(big).unwrap();
        tokio::task::block_in_place(|| spool.close());
        drop((spool, reader));

        // The third record (1 row) damaged: a read from there starts with damage, then finds
        // only the start of the last large record, and must read on as well.
        let seg = segment::list_segments(dir.path()).unwrap()[0];
        let path = segment::segment_path(dir.path(), seg);
        let mut data = std::fs::read(&path).unwrap();
        let (small, large) =
            (segment::framed_len(b"org_t", &[0; 10]), segment::framed_len(b"org_t", &vec![0; 300_000]));
        data[small + large + small - 1] ^= 0xff; // the third record's last byte
        std::fs::write(&path, &data).unwrap();
        let (spool, mut reader, recovery) = Spool::open(&config).unwrap();
        assert_eq!((recovery.replay_rows, recovery.damaged_regions), (30_000, 1));
        let last = reader.read(1, 1 << 20).unwrap();
        assert_eq!((last.records.len(), last.rows), (1, 30_000));
        tokio::task::block_in_place(|| spool.close());
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
                Err(SpoolError::Full) => full += 1,
                Err(e) => panic!("{e:?}"),
            }
            assert!(spool.shared.queued_bytes.load(Ordering::Acquire) <= 4096 + 1100);
        }
        assert!(full > 0, "past the queue bound submissions are refused");
    }
}
