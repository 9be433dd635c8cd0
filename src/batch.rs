//! Batching: many small accepted blocks → few large inserts.
//!
//! Each organisation has its own lock-free queue (`SegQueue`) of encoded
//! chunks, so request threads never share a lock; only two atomic counters
//! (pending rows and bytes) are common to all. One flusher task drains every
//! organisation's queue into a single block (rows of one organisation stay
//! contiguous, which the `ORDER BY organization_id, …` likes) and sends it.
//! One insert for many organisations keeps ClickHouse's part count independent
//! of the tenant count.
//!
//! Flushes happen at `max_rows`, `max_bytes` or every `interval`, whichever
//! comes first. Failed sends are retried with capped exponential backoff; a
//! block the sink calls permanently bad is written to a dead-letter file, never
//! dropped. Pending data is bounded by `max_pending_bytes`: past it `push`
//! refuses and the handler answers 503.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::queue::SegQueue;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::config::BatchConfig;
use crate::event::RowBlock;
use crate::metrics as m;
use crate::sink::{Block, Sink};
use crate::tenant::OrgId;

#[derive(Debug)]
pub struct Full;

#[derive(Default)]
struct OrgQueue {
    chunks: SegQueue<(Bytes, usize)>,
}

pub struct Batcher {
    config: BatchConfig,
    queues: DashMap<OrgId, Arc<OrgQueue>, ahash::RandomState>,
    /// Rows and bytes accepted and not yet confirmed by the sink (queued or in flight).
    pending_rows: AtomicUsize,
    pending_bytes: AtomicUsize,
    /// Rows queued and not yet taken by the flusher (drives size-triggered flushes).
    queued_rows: AtomicUsize,
    queued_bytes: AtomicUsize,
    wake: Notify,
    stopping: AtomicBool,
}

impl Batcher {
    pub fn new(config: BatchConfig) -> Arc<Self> {
        Arc::new(Batcher {
            config,
            queues: DashMap::default(),
            pending_rows: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            queued_rows: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
        })
    }

    /// Queues a block of one organisation's rows; refuses when pending data is at its bound.
    pub fn push(&self, block: RowBlock) -> Result<(), Full> {
        if block.rows == 0 {
            return Ok(());
        }
        let bytes = block.data.len();
        let before = self.pending_bytes.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > self.config.max_pending_bytes && before > 0 {
            self.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Full);
        }
        self.pending_rows.fetch_add(block.rows, Ordering::AcqRel);
        let queue = match self.queues.get(&block.org) {
            Some(q) => q.clone(),
            None => self.queues.entry(block.org.clone()).or_default().clone(),
        };
        queue.chunks.push((block.data.freeze(), block.rows));
        let rows = self.queued_rows.fetch_add(block.rows, Ordering::AcqRel) + block.rows;
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if rows >= self.config.max_rows || queued >= self.config.max_bytes {
            self.wake.notify_one();
        }
        Ok(())
    }

    pub fn pending_rows(&self) -> usize {
        self.pending_rows.load(Ordering::Acquire)
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Acquire)
    }

    /// Takes up to one block's worth of queued rows, organisation by organisation.
    fn take_block(&self) -> Option<Block> {
        let mut block = Block::default();
        for entry in self.queues.iter() {
            while block.rows < self.config.max_rows && block.bytes < self.config.max_bytes {
                let Some((chunk, rows)) = entry.value().chunks.pop() else {
                    break;
                };
                block.bytes += chunk.len();
                block.rows += rows;
                block.chunks.push(chunk);
            }
            if block.rows >= self.config.max_rows || block.bytes >= self.config.max_bytes {
                break;
            }
        }
        if block.rows == 0 {
            return None;
        }
        self.queued_rows.fetch_sub(block.rows, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(block.bytes, Ordering::AcqRel);
        Some(block)
    }

    fn confirmed(&self, block: &Block) {
        self.pending_rows.fetch_sub(block.rows, Ordering::AcqRel);
        self.pending_bytes.fetch_sub(block.bytes, Ordering::AcqRel);
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        metrics::gauge!(m::BATCH_PENDING_ROWS).set(self.pending_rows() as f64);
        metrics::gauge!(m::BATCH_PENDING_BYTES).set(self.pending_bytes() as f64);
        // Until the durable spool lands, "accepted, not yet confirmed" lives here.
        metrics::gauge!(m::SPOOL_EVENTS).set(self.pending_rows() as f64);
        metrics::gauge!(m::SPOOL_BYTES).set(self.pending_bytes() as f64);
    }

    /// Asks the flusher to ship everything queued and return.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The flusher: runs until [`Batcher::stop`], then drains what is queued until `drain_deadline`.
    pub async fn run(self: Arc<Self>, sink: Arc<Sink>, drain_timeout: Duration) {
        let mut backoff = Backoff::default();
        let mut deadline: Option<Instant> = None;
        loop {
            let stopping = self.stopping.load(Ordering::Acquire);
            if stopping && deadline.is_none() {
                deadline = Some(Instant::now() + drain_timeout);
            }
            let due = self.queued_rows.load(Ordering::Acquire) >= self.config.max_rows
                || self.queued_bytes.load(Ordering::Acquire) >= self.config.max_bytes;
            if !stopping && !due {
                let _ = tokio::time::timeout(self.config.interval, self.wake.notified()).await;
            }
            // Ship everything that is queued now, block by block.
            while let Some(block) = self.take_block() {
                loop {
                    match sink.send(&block).await {
                        Ok(()) => {
                            backoff.reset();
                            self.confirmed(&block);
                            break;
                        }
                        Err(e) if !e.retryable => {
                            tracing::error!(error = %e.message, rows = block.rows, "sink refused a block for good; writing it to the dead-letter directory");
                            sink.dead_letter(&block).await;
                            self.confirmed(&block);
                            break;
                        }
                        Err(e) => {
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                tracing::error!(rows = self.pending_rows(), error = %e.message, "drain timeout: unsent rows are lost with this process");
                                return;
                            }
                            let wait = backoff.next();
                            tracing::warn!(error = %e.message, retry_in_ms = wait.as_millis() as u64, rows = block.rows, "sink send failed; retrying");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
            self.publish_gauges();
            if self.stopping.load(Ordering::Acquire)
                && self.queued_rows.load(Ordering::Acquire) == 0
            {
                return;
            }
        }
    }
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
    use crate::sink::MemorySink;

    fn block(org: &str, rows: usize, bytes: usize) -> RowBlock {
        let mut b = RowBlock::new(OrgId::new(org), bytes);
        b.data.extend_from_slice(&vec![b'x'; bytes]);
        b.rows = rows;
        b
    }

    fn config(max_rows: usize, max_pending_bytes: usize) -> BatchConfig {
        BatchConfig {
            max_rows,
            max_bytes: 1 << 30,
            interval: Duration::from_millis(20),
            max_pending_bytes,
        }
    }

    #[test]
    fn bounded_pending_bytes() {
        let b = Batcher::new(config(1000, 100));
        b.push(block("a", 1, 60)).unwrap();
        assert!(b.push(block("a", 1, 60)).is_err(), "over the bound");
        b.push(block("b", 1, 40)).unwrap();
        assert_eq!(b.pending_bytes(), 100);
        assert_eq!(b.pending_rows(), 2);
    }

    #[test]
    fn one_block_takes_many_orgs_and_keeps_each_contiguous() {
        let b = Batcher::new(config(1000, 1 << 20));
        for i in 0..6 {
            b.push(block(if i % 2 == 0 { "a" } else { "b" }, 1, 10))
                .unwrap();
        }
        let blk = b.take_block().unwrap();
        assert_eq!((blk.rows, blk.bytes, blk.chunks.len()), (6, 60, 6));
        assert!(b.take_block().is_none());
    }

    #[tokio::test]
    async fn flusher_ships_on_size_and_on_stop() {
        let b = Batcher::new(config(4, 1 << 20));
        let sink = Arc::new(Sink::Memory(MemorySink::default()));
        let task = tokio::spawn(b.clone().run(sink.clone(), Duration::from_secs(5)));
        for _ in 0..4 {
            b.push(block("a", 1, 10)).unwrap();
        }
        for _ in 0..100 {
            if sink.memory_rows() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sink.memory_rows(), 4);
        b.push(block("b", 1, 10)).unwrap();
        b.stop();
        task.await.unwrap();
        assert_eq!(sink.memory_rows(), 5);
        assert_eq!(b.pending_rows(), 0);
        assert_eq!(b.pending_bytes(), 0);
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
