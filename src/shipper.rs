//! Shipping: spool records → large blocks → the sink → the checkpoint.
//!
//! The shipper reads accepted records from the spool in order and gathers
//! them until a block holds `max_rows` rows or `max_bytes` bytes, until
//! `interval` has passed while events kept arriving, or until the spool is
//! drained and has been quiet for `idle` (no sooner than `min_spacing` after
//! the last insert, so a trickle does not become a stream of tiny parts).
//! One insert then carries many organisations, which keeps ClickHouse's part
//! count independent of the tenant count.
//!
//! Blocks are a pipeline two deep: while one is in flight, the next is
//! gathered and encoded for the sink on a blocking thread (sorting and
//! transposing 100k rows takes tens of milliseconds, too long to hold a
//! runtime worker); the checkpoint moves in spool order, after each send.
//! Memory holds at most those two blocks, each as read and as encoded, plus
//! the encoder's working memory (about one block) and the few buffers the
//! spool reader and the sink keep for reuse ([`crate::buffers`]).
//!
//! A failed send is retried with capped exponential backoff and the block is
//! kept (the spool still has it: nothing is dropped). A block the sink calls
//! permanently bad goes to the dead-letter directory, then the checkpoint
//! moves on.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::config::BatchConfig;
use crate::event::rowbinary::RowFormat;
use crate::metrics as m;
use crate::sink::{Block, Sink};
use crate::spool::{ReadBatch, SpoolReader};

pub struct Shipper {
    pub config: BatchConfig,
    pub sink: Arc<Sink>,
    pub reader: SpoolReader,
    /// For the age of the oldest unshipped record.
    pub clock: crate::clock::Clock,
}

/// A batch whose blocks a task is sending; confirmed in the spool once the task is done.
struct InFlight {
    batch: ReadBatch,
    task: JoinHandle<Sent>,
}

enum Sent {
    /// Every block is in the sink (or, refused for good, in the dead-letter directory).
    All,
    /// The drain timeout passed while the sink was failing: the rest stays in the spool.
    GaveUp,
}

/// When shutting down stops retrying: `drain_timeout` after the spool writer closed, as first
/// seen by the shipper or its send task.
#[derive(Clone)]
struct Drain {
    timeout: Duration,
    deadline: Arc<OnceLock<Instant>>,
}

impl Drain {
    fn start(&self) {
        self.deadline.get_or_init(|| Instant::now() + self.timeout);
    }
    fn started(&self) -> bool {
        self.deadline.get().is_some()
    }
    fn expired(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }
}

impl Shipper {
    /// Ships until the spool writer has closed (the last step of the drain before this one),
    /// then ships what remains, giving up after `drain_timeout` (the rest stays in the spool).
    pub async fn run(mut self, drain_timeout: Duration) {
        let drain = Drain { timeout: drain_timeout, deadline: Default::default() };
        let mut backoff = Backoff::default();
        let mut in_flight: Option<InFlight> = None;
        let mut last_send: Option<Instant> = None;
        loop {
            let stopping = self.reader.writer_closed();
            if stopping {
                drain.start();
            }
            let batch = match self.gather(stopping, last_send).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            backoff.reset();
            self.publish_lag(in_flight.as_ref().map(|f| &f.batch).unwrap_or(&batch));
            if batch.records.is_empty() {
                let done = stopping && self.reader.caught_up();
                if (done || in_flight.as_ref().is_some_and(|f| f.task.is_finished()))
                    && !self.settle(in_flight.take()).await
                {
                    return;
                }
                if done {
                    return;
                }
                continue;
            }
            let encoding = Instant::now();
            let (batch, blocks) = self.prepare(batch).await;
            let encoded = encoding.elapsed();
            let waiting = Instant::now();
            if !self.settle(in_flight.take()).await {
                return;
            }
            tracing::debug!(
                rows = batch.rows,
                encode_ms = encoded.as_millis() as u64,
                waited_for_previous_ms = waiting.elapsed().as_millis() as u64,
                "block ready to send"
            );
            last_send = Some(Instant::now());
            let task = tokio::spawn(send_all(self.sink.clone(), blocks, drain.clone(), self.reader.closed()));
            in_flight = Some(InFlight { batch, task });
        }
    }

    /// Waits for the batch in flight, then moves the checkpoint past it; false when the drain
    /// gave up on it (shipping stops, the spool keeps it).
    async fn settle(&mut self, in_flight: Option<InFlight>) -> bool {
        let Some(InFlight { batch, task }) = in_flight else { return true };
        match task.await {
            Ok(Sent::All) => {}
            Ok(Sent::GaveUp) => return false,
            Err(e) => {
                // A panicking send is a bug; the block stays in the spool for the next start.
                tracing::error!(error = %e, "the sink's send task failed; shipping stops");
                return false;
            }
        }
        if let Err(e) = self.reader.confirm(batch) {
            // The insert stands; a stale checkpoint only means a harmless replay after a crash.
            tracing::error!(error = %e, "could not record the spool checkpoint");
        }
        self.publish_lag(&ReadBatch::default());
        true
    }

    /// Splits the batch into blocks and encodes them for the sink, off the runtime.
    async fn prepare(&self, batch: ReadBatch) -> (ReadBatch, Vec<Block>) {
        let sink = self.sink.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let mut blocks = to_blocks(&batch);
            for block in &mut blocks {
                // A block that cannot be encoded is sent as it is; its send fails for good
                // and it goes to the dead-letter directory.
                if let Err(e) = sink.prepare(block) {
                    tracing::error!(error = %e.message, rows = block.rows, "could not encode a block");
                }
            }
            (batch, blocks)
        });
        prepared.await.expect("encoding blocks does not panic")
    }

    /// Reads records until the block is full, `interval` passes while data keeps arriving, the
    /// spool is drained and quiet (see the module docs), or (stopping) the spool is drained.
    ///
    /// A wake-up per group commit only checks how much is unread: the spool is read when that
    /// fills the block or the block is about to ship, once per block rather than once per
    /// group (each read opens, seeks and reads the segment, and allocates).
    async fn gather(&mut self, stopping: bool, last_send: Option<Instant>) -> std::io::Result<ReadBatch> {
        let started = Instant::now();
        let BatchConfig { max_rows, max_bytes, interval, idle, min_spacing } = self.config;
        let mut batch = self.reader.empty_batch();
        loop {
            let (rows, bytes) = (max_rows - batch.rows, max_bytes - batch.bytes);
            // Closing ends the wait for more: what the writer had is all there is.
            let closing = stopping || self.reader.writer_closed();
            let left = interval.checked_sub(started.elapsed());
            // Reads hit the page cache (the writer just wrote these bytes) and are bounded in
            // size, so they run inline rather than hopping to the blocking pool.
            if self.reader.unread_fills(rows, bytes) || closing || left.is_none() {
                self.reader.read_into(&mut batch, max_rows, max_bytes)?;
                let full = batch.rows >= max_rows || batch.bytes >= max_bytes;
                if full || left.is_none() || (closing && self.reader.caught_up()) {
                    return Ok(batch);
                }
            }
            let left = left.unwrap_or_default();
            let pending = !batch.records.is_empty() || !self.reader.caught_up();
            if !pending {
                self.reader.wait_for_data(left).await;
                continue;
            }
            let spaced = last_send.map_or(Duration::ZERO, |t| min_spacing.saturating_sub(t.elapsed()));
            if !self.reader.wait_for_data(idle.max(spaced).min(left)).await {
                // Drained and quiet: the tail ships now.
                self.reader.read_into(&mut batch, max_rows, max_bytes)?;
                return Ok(batch);
            }
        }
    }

    /// The age of the oldest record read and not yet confirmed (in `oldest`, the batch in
    /// flight or else the one being gathered).
    fn publish_lag(&self, oldest: &ReadBatch) {
        let age = oldest
            .first_written_ms()
            .map_or(0.0, |written| self.clock.unix_millis().saturating_sub(written) as f64 / 1000.0);
        metrics::gauge!(m::SPOOL_OLDEST_AGE).set(age);
    }
}

/// Sends each block until the sink takes it (or refuses it for good: dead-letter directory).
async fn send_all(
    sink: Arc<Sink>,
    blocks: Vec<Block>,
    drain: Drain,
    closed: impl Future<Output = ()> + Send + 'static,
) -> Sent {
    let mut backoff = Backoff::default();
    let mut closed = std::pin::pin!(closed);
    for block in blocks {
        let started = Instant::now();
        loop {
            match sink.send(&block).await {
                Ok(()) => {
                    tracing::debug!(rows = block.rows, send_ms = started.elapsed().as_millis() as u64, "block sent");
                    break;
                }
                Err(e) if !e.retryable => {
                    tracing::error!(error = %e.message, rows = block.rows, "sink refused a block for good; writing it to the dead-letter directory");
                    sink.dead_letter(&block).await;
                    break;
                }
                Err(e) => {
                    if drain.expired() {
                        tracing::warn!(error = %e.message, "drain timeout: unshipped events stay in the spool for the next start");
                        return Sent::GaveUp;
                    }
                    let wait = backoff.next();
                    tracing::warn!(error = %e.message, retry_in_ms = wait.as_millis() as u64, rows = block.rows, "sink send failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut closed, if !drain.started() => drain.start(),
                    }
                }
            }
        }
        sink.recycle(block);
    }
    Sent::All
}

/// Records → one block per row format (a spool from an earlier release may hold older rows),
/// organisation by organisation within it (stable, so each tenant keeps its order).
///
/// Records are grouped by hashing their organisation, then only the groups are sorted: k log k
/// comparisons for k tenants in the batch, not n log n string comparisons of scattered records.
fn to_blocks(batch: &ReadBatch) -> Vec<Block> {
    let records = &batch.records;
    let mut group_of_key: HashMap<(RowFormat, &[u8]), u32, ahash::RandomState> = HashMap::default();
    let mut keys: Vec<(RowFormat, &[u8])> = Vec::new();
    let group_of: Vec<u32> = records
        .iter()
        .map(|r| {
            let key = (r.format, &r.org[..]);
            *group_of_key.entry(key).or_insert_with(|| {
                keys.push(key);
                keys.len() as u32 - 1
            })
        })
        .collect();
    // Each group's first position in the output: groups in key order, sized by their records.
    let mut by_key: Vec<u32> = (0..keys.len() as u32).collect();
    by_key.sort_unstable_by_key(|&g| keys[g as usize]);
    let mut sizes = vec![0usize; keys.len()];
    for &g in &group_of {
        sizes[g as usize] += 1;
    }
    let mut next = vec![0usize; keys.len()];
    let mut start = 0;
    for &g in &by_key {
        next[g as usize] = start;
        start += sizes[g as usize];
    }
    let mut order = vec![0usize; records.len()];
    for (i, &g) in group_of.iter().enumerate() {
        order[next[g as usize]] = i;
        next[g as usize] += 1;
    }

    let mut blocks: Vec<Block> = Vec::new();
    for i in order {
        let r = &records[i];
        if blocks.last().is_none_or(|b| b.format != r.format) {
            // Sized exactly: grown by doubling, a 100k-record list is copied and faulted in anew.
            let records = records.iter().filter(|other| other.format == r.format).count();
            let chunks = Vec::with_capacity(records);
            blocks.push(Block { format: r.format, chunks, rows: 0, bytes: 0, encoded: None });
        }
        let block = blocks.last_mut().expect("pushed above");
        block.rows += r.rows as usize;
        block.bytes += r.payload.len();
        block.chunks.push(r.payload.clone());
    }
    blocks
}

/// Exponential backoff from 100 ms to 10 s with ±25 % jitter, so many edges do not retry in step.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.attempt.min(7)).min(10_000);
        self.attempt += 1;
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        Duration::from_millis((base as f64 * jitter) as u64)
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AckMode;
    use crate::event::RowBlock;
    use crate::sink::MemorySink;
    use crate::spool::{Spool, SpoolConfig};
    use crate::tenant::OrgId;

    fn block(org: &str, rows: usize) -> RowBlock {
        let mut b = RowBlock::new(OrgId::new(org), 16);
        for _ in 0..rows {
            b.data.extend_from_slice(format!("{org};").as_bytes());
        }
        b.rows = rows;
        b
    }

    fn config(dir: &std::path::Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 4096,
            max_bytes: 1 << 20,
            max_queued_bytes: 1 << 20,
            ack: AckMode::Durable,
            sync_interval: Duration::from_millis(100),
            write_linger: Duration::ZERO,
            sync_linger: Duration::ZERO,
            prefill_below: u64::MAX,
            clock: Default::default(),
        }
    }

    fn batch_config() -> BatchConfig {
        BatchConfig {
            max_rows: 50,
            max_bytes: 1 << 20,
            interval: Duration::from_millis(20),
            idle: Duration::from_millis(5),
            min_spacing: Duration::from_millis(5),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ships_everything_sorted_by_org_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) = Spool::open(&config(dir.path())).unwrap();
        let sink = Arc::new(Sink::Memory(MemorySink::default()));
        let shipper = Shipper { config: batch_config(), sink: sink.clone(), reader, clock: Default::default() };
        let task = tokio::spawn(shipper.run(Duration::from_secs(5)));
        for i in 0..200 {
            spool.append(block(if i % 2 == 0 { "b" } else { "a" }, 3)).await.unwrap();
        }
        // Closing the spool is what ends the shipper, once it has shipped everything.
        tokio::task::block_in_place(|| spool.close());
        task.await.unwrap();
        assert_eq!(sink.memory_rows(), 600);
        // Within each shipped block, organisations are contiguous.
        let Sink::Memory(mem) = &*sink else { unreachable!() };
        for (data, _) in mem.blocks.lock().unwrap().iter() {
            let text = String::from_utf8(data.to_vec()).unwrap();
            let orgs: Vec<&str> = text.split(';').filter(|s| !s.is_empty()).collect();
            let mut sorted = orgs.clone();
            sorted.sort();
            assert_eq!(orgs, sorted);
        }
        assert_eq!(spool.unshipped_bytes(), 0);
        // Restart: nothing to replay, old segments are gone.
        let (_spool, _reader, recovery) = Spool::open(&config(dir.path())).unwrap();
        assert_eq!(recovery.replay_rows, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_blocks_go_to_dead_letters_and_the_spool_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) = Spool::open(&config(&dir.path().join("spool"))).unwrap();
        let dead = dir.path().join("dead-letter");
        let sink =
            Arc::new(Sink::Memory(MemorySink { refuse: true, dead_letters: Some(dead.clone()), ..Default::default() }));
        let task = tokio::spawn(
            Shipper { config: batch_config(), sink, reader, clock: Default::default() }.run(Duration::from_secs(5)),
        );
        for _ in 0..10 {
            spool.append(block("a", 2)).await.unwrap();
        }
        // Closing the spool is what ends the shipper, once it has shipped everything.
        tokio::task::block_in_place(|| spool.close());
        task.await.unwrap();
        let kept: Vec<u8> =
            std::fs::read_dir(&dead).unwrap().flat_map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        assert_eq!(kept, "a;".repeat(20).into_bytes(), "every refused row is kept on disk");
        assert_eq!(spool.unshipped_bytes(), 0, "and the spool does not retry it forever");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drained_spool_ships_its_tail_without_waiting_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) = Spool::open(&config(dir.path())).unwrap();
        let sink = Arc::new(Sink::Memory(MemorySink::default()));
        let interval = Duration::from_secs(30);
        let config = BatchConfig { max_rows: 1000, interval, ..batch_config() };
        let task =
            tokio::spawn(Shipper { config, sink: sink.clone(), reader, clock: Default::default() }.run(interval));
        let started = Instant::now();
        for _ in 0..3 {
            spool.append(block("a", 2)).await.unwrap();
        }
        while sink.memory_rows() < 6 {
            assert!(started.elapsed() < interval / 2, "the tail waited for the interval");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::block_in_place(|| spool.close());
        task.await.unwrap();
        assert_eq!(sink.memory_rows(), 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickle_is_not_a_stream_of_tiny_inserts() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) = Spool::open(&config(dir.path())).unwrap();
        let sink = Arc::new(Sink::Memory(MemorySink::default()));
        let spacing = Duration::from_millis(300);
        let config = BatchConfig {
            max_rows: 1000,
            interval: Duration::from_secs(30),
            idle: Duration::from_millis(2),
            min_spacing: spacing,
            ..batch_config()
        };
        let task = tokio::spawn(Shipper { config, sink: sink.clone(), reader, clock: Default::default() }.run(spacing));
        // One record every 20 ms for 1.2 s: quiet for longer than `idle` between each.
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_millis(1200) {
            spool.append(block("a", 1)).await.unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed();
        tokio::task::block_in_place(|| spool.close());
        task.await.unwrap();
        assert_eq!(sink.memory_rows(), sent);
        let Sink::Memory(mem) = &*sink else { unreachable!() };
        let inserts = mem.blocks.lock().unwrap().len();
        // Spaced: one insert per `min_spacing` while the trickle lasts, and the last one at close.
        let bound = (elapsed.as_millis() / spacing.as_millis()) as usize + 2;
        assert!(inserts <= bound, "{inserts} inserts for {sent} records in {elapsed:?}, bound {bound}");
        assert!(inserts >= 2, "the tail shipped before the 30 s interval ({inserts} inserts)");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spool_is_read_once_per_block_not_once_per_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) = Spool::open(&SpoolConfig { segment_bytes: 1 << 20, ..config(dir.path()) }).unwrap();
        let sink = Arc::new(Sink::Memory(MemorySink::default()));
        let config = BatchConfig {
            max_rows: 100,
            interval: Duration::from_secs(30),
            idle: Duration::from_millis(500),
            min_spacing: Duration::ZERO,
            ..batch_config()
        };
        let interval = config.interval;
        let task =
            tokio::spawn(Shipper { config, sink: sink.clone(), reader, clock: Default::default() }.run(interval));
        // Each append waits for its own sync: 1000 group commits, each waking the shipper.
        for _ in 0..1000 {
            spool.append(block("a", 1)).await.unwrap();
        }
        tokio::task::block_in_place(|| spool.close());
        task.await.unwrap();
        assert_eq!(sink.memory_rows(), 1000);
        let reads = spool.file_reads();
        assert!(reads <= 1000 / 100 + 10, "{reads} segment reads for 10 blocks of 1000 group commits");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut bo = Backoff::default();
        let first = bo.next();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..20 {
            assert!(bo.next() <= Duration::from_millis(12_500));
        }
        bo.reset();
        assert!(bo.next() <= Duration::from_millis(125));
    }
}
