//! Shipping: spool records → large blocks → the sink → the checkpoint.
//!
//! The shipper reads accepted records from the spool in order and gathers
//! them until a block holds `max_rows` rows or `max_bytes` bytes, or until
//! `interval` has passed since it started gathering. One insert then carries
//! many organisations, which keeps ClickHouse's part count independent of the
//! tenant count; records are sorted by organisation first so each tenant's
//! rows are contiguous, as `ORDER BY organization_id, …` wants them.
//!
//! A failed send is retried with capped exponential backoff and the block is
//! kept (the spool still has it: nothing is dropped). A block the sink calls
//! permanently bad goes to the dead-letter directory, then the checkpoint
//! moves on. Memory holds one block at a time, whatever ClickHouse does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

impl Shipper {
    /// Ships until the spool writer has closed (the last step of the drain before this one),
    /// then ships what remains, giving up after `drain_timeout` (the rest stays in the spool).
    pub async fn run(mut self, drain_timeout: Duration) {
        let mut backoff = Backoff::default();
        let mut deadline: Option<Instant> = None;
        loop {
            let stopping = self.reader.writer_closed();
            if stopping && deadline.is_none() {
                deadline = Some(Instant::now() + drain_timeout);
            }
            let batch = match self.gather(stopping).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            self.publish_lag();
            if batch.records.is_empty() {
                if stopping && self.reader.caught_up() {
                    return;
                }
                continue;
            }
            for block in to_blocks(&batch) {
                loop {
                    match self.sink.send(&block).await {
                        Ok(()) => break,
                        Err(e) if !e.retryable => {
                            tracing::error!(error = %e.message, rows = block.rows, "sink refused a block for good; writing it to the dead-letter directory");
                            self.sink.dead_letter(&block).await;
                            break;
                        }
                        Err(e) => {
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                tracing::warn!(error = %e.message, "drain timeout: unshipped events stay in the spool for the next start");
                                return;
                            }
                            let wait = backoff.next();
                            tracing::warn!(error = %e.message, retry_in_ms = wait.as_millis() as u64, rows = block.rows, "sink send failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = self.reader.closed(), if deadline.is_none() => {
                                    deadline = Some(Instant::now() + drain_timeout);
                                }
                            }
                        }
                    }
                }
            }
            backoff.reset();
            if let Err(e) = self.reader.confirm(&batch) {
                // The insert stands; a stale checkpoint only means a harmless replay after a crash.
                tracing::error!(error = %e, "could not record the spool checkpoint");
            }
            self.publish_lag();
        }
    }

    /// Reads records until the block is full, `interval` passes, or (stopping) the spool is drained.
    async fn gather(&mut self, stopping: bool) -> std::io::Result<ReadBatch> {
        let started = Instant::now();
        // Reads hit the page cache (the writer just wrote these bytes) and are bounded in size,
        // so they run inline rather than hopping to the blocking pool.
        let mut batch = self.reader.read(self.config.max_rows, self.config.max_bytes)?;
        while batch.rows < self.config.max_rows && batch.bytes < self.config.max_bytes {
            // Closing ends the wait for more: what the writer had is all there is.
            if (stopping || self.reader.writer_closed()) && self.reader.caught_up() {
                break;
            }
            let Some(left) = self.config.interval.checked_sub(started.elapsed()) else { break };
            self.reader.wait_for_data(left).await;
            let more = self.reader.read(self.config.max_rows - batch.rows, self.config.max_bytes - batch.bytes)?;
            batch.extend(more);
        }
        Ok(batch)
    }

    fn publish_lag(&self) {
        let age = self
            .reader
            .oldest_unshipped_ms()
            .map_or(0.0, |written| self.clock.unix_millis().saturating_sub(written) as f64 / 1000.0);
        metrics::gauge!(m::SPOOL_OLDEST_AGE).set(age);
    }
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
            blocks.push(Block { format: r.format, chunks: Vec::new(), rows: 0, bytes: 0 });
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
            clock: Default::default(),
        }
    }

    fn batch_config() -> BatchConfig {
        BatchConfig { max_rows: 50, max_bytes: 1 << 20, interval: Duration::from_millis(20) }
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
