//! Sinks: where batched blocks of RowBinary rows go.
//!
//! - [`clickhouse::ClickHouseSink`]: `INSERT … FORMAT Native` (sorted blocks), LZ4, a retry table.
//! - [`local::LocalSink`]: `--dev` without ClickHouse: bounded files under `./data/`.
//! - `MemorySink`: tests only (the `test-sink` feature).
//!
//! An enum, not a trait object: three known implementations, no boxing of futures.

pub mod clickhouse;
pub mod local;
pub mod native;

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

/// Rows to insert together; chunks are whole rows, organisation by organisation.
#[derive(Debug)]
pub struct Block {
    /// The row layout of every chunk.
    pub format: crate::event::rowbinary::RowFormat,
    pub chunks: Vec<Bytes>,
    pub rows: usize,
    pub bytes: usize,
    /// The rows in the sink's own wire format, made by [`Sink::prepare`] before the send.
    pub encoded: Option<Bytes>,
}

impl Block {
    /// One contiguous buffer (compressing one large frame beats many tiny ones).
    pub fn concat(&self) -> Bytes {
        if self.chunks.len() == 1 {
            return self.chunks[0].clone();
        }
        let mut out = BytesMut::with_capacity(self.bytes);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.freeze()
    }
}

#[derive(Debug, Clone)]
pub struct SinkError {
    /// `false` only when sending the same block again can never succeed.
    pub retryable: bool,
    pub message: String,
}

// One instance per process, behind an Arc: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    ClickHouse(clickhouse::ClickHouseSink),
    Local(local::LocalSink),
    /// Tests only (the `test-sink` feature, which the integration tests enable).
    #[cfg(any(test, feature = "test-sink"))]
    Memory(MemorySink),
}

impl Sink {
    /// Encodes `block` for the sink ahead of its send. CPU-bound (sorting and transposing a
    /// whole block): the shipper runs it on a blocking thread while the previous block is in
    /// flight. An error means no send of this block can ever succeed.
    pub fn prepare(&self, block: &mut Block) -> Result<(), SinkError> {
        match self {
            Sink::ClickHouse(s) => {
                block.encoded = Some(s.encode(block)?);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The block is sent (or dead-lettered): its buffers may serve the next one.
    pub fn recycle(&self, block: Block) {
        if let Sink::ClickHouse(s) = self {
            s.recycle(block)
        }
    }

    pub async fn send(&self, block: &Block) -> Result<(), SinkError> {
        match self {
            Sink::ClickHouse(s) => s.send(block).await,
            Sink::Local(s) => s.send(block).await,
            #[cfg(any(test, feature = "test-sink"))]
            Sink::Memory(s) => s.send(block),
        }
    }

    /// Is the destination reachable? (`/readyz`)
    pub async fn ready(&self) -> bool {
        match self {
            Sink::ClickHouse(s) => s.ping().await,
            Sink::Local(_) => true,
            #[cfg(any(test, feature = "test-sink"))]
            Sink::Memory(_) => true,
        }
    }

    /// Keeps a block the sink refused for good, for an operator to inspect and replay.
    pub async fn dead_letter(&self, block: &Block) {
        let dir = match self {
            Sink::ClickHouse(s) => s.dead_letter_dir(),
            Sink::Local(s) => s.dead_letter_dir(),
            #[cfg(any(test, feature = "test-sink"))]
            Sink::Memory(s) => match &s.dead_letters {
                Some(dir) => dir.clone(),
                None => return,
            },
        };
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            let name = format!("block-{}-{}.rowbinary", std::process::id(), uuid::Uuid::now_v7());
            tokio::fs::write(dir.join(name), block.concat()).await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, dir = %dir.display(), rows = block.rows, "could not write dead-letter block");
        }
    }

    #[cfg(any(test, feature = "test-sink"))]
    pub fn memory_rows(&self) -> usize {
        match self {
            Sink::Memory(s) => s.blocks.lock().expect("memory sink lock").iter().map(|(_, rows)| rows).sum(),
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Sink::ClickHouse(_) => "clickhouse",
            Sink::Local(_) => "local",
            #[cfg(any(test, feature = "test-sink"))]
            Sink::Memory(_) => "memory",
        }
    }
}

/// Keeps blocks in memory (tests); can be told to refuse every block for good.
#[cfg(any(test, feature = "test-sink"))]
#[derive(Default)]
pub struct MemorySink {
    pub blocks: std::sync::Mutex<Vec<(Bytes, usize)>>,
    /// Answer every send with a non-retryable error.
    pub refuse: bool,
    pub dead_letters: Option<PathBuf>,
}

#[cfg(any(test, feature = "test-sink"))]
impl MemorySink {
    fn send(&self, block: &Block) -> Result<(), SinkError> {
        if self.refuse {
            return Err(SinkError { retryable: false, message: "refused by the test sink".into() });
        }
        self.blocks.lock().expect("memory sink lock").push((block.concat(), block.rows));
        Ok(())
    }
}

/// `<data dir>/dead-letter`.
pub fn dead_letter_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("dead-letter")
}
