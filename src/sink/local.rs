//! The embedded default's store: `--dev` without `CLICKHOUSE_URL`.
//!
//! Blocks are appended to `<dir>/local/events-<n>.rowbinary` (the same bytes
//! ClickHouse would receive, so they can be loaded later with
//! `clickhouse-client --query "INSERT INTO events (…) FORMAT RowBinary"`).
//! The store is bounded: past `max_bytes` a send fails (retryable), the
//! spool keeps the rows, and ingestion answers 503 once that fills too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use std::io::Write;

use super::{Block, SinkError};

/// Rotate files at this size so no single file grows without limit.
const FILE_BYTES: u64 = 64 << 20;

pub struct LocalSink {
    dir: PathBuf,
    data_dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
}

impl LocalSink {
    pub fn open(data_dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        let dir = data_dir.join("local");
        std::fs::create_dir_all(&dir)?;
        let mut used = 0;
        for entry in std::fs::read_dir(&dir)? {
            used += entry?.metadata()?.len();
        }
        Ok(LocalSink { dir, data_dir, max_bytes, used: AtomicU64::new(used) })
    }

    pub async fn send(&self, block: &Block) -> Result<(), SinkError> {
        let used = self.used.load(Ordering::Acquire);
        if used + block.bytes as u64 > self.max_bytes {
            return Err(SinkError {
                retryable: true,
                message: format!("local store full ({used} of {} bytes)", self.max_bytes),
            });
        }
        let file = self.dir.join(format!("events-{:06}.rowbinary", used / FILE_BYTES));
        // One blocking write per block: tokio::fs would hop to the blocking pool per chunk.
        let data = block.concat();
        let path = file.clone();
        let write = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&data)
        });
        let failed = |message: String| SinkError { retryable: true, message };
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(format!("{}: {e}", file.display()))),
            Err(e) => return Err(failed(format!("local store writer: {e}"))),
        }
        self.used.fetch_add(block.bytes as u64, Ordering::AcqRel);
        Ok(())
    }

    pub fn dead_letter_dir(&self) -> PathBuf {
        super::dead_letter_dir(&self.data_dir)
    }
}
