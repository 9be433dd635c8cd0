//! The embedded default's store: `--dev` without `CLICKHOUSE_URL`.
//!
//! Blocks are appended to `<dir>/local/events-<n>.rowbinary` (the same bytes
//! ClickHouse would receive, so they can be loaded later with
//! `clickhouse-client --query "INSERT INTO events (…) FORMAT RowBinary"`).
//! The store is bounded: past `max_bytes` a send fails (retryable), the
//! spool keeps the rows, and ingestion answers 503 once that fills too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use std::io::{IoSlice, Write};

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
        // One blocking task per block (tokio::fs would hop to the blocking pool per chunk), and
        // the chunks go out as they are, gathered by the kernel, not copied into one buffer.
        let chunks = block.chunks.clone();
        let path = file.clone();
        let write = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            write_all_vectored(&mut f, &chunks)
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

/// Writes every chunk in order, as many per call as the kernel takes (at most `IOV_MAX`).
fn write_all_vectored(out: &mut impl Write, chunks: &[bytes::Bytes]) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    for group in chunks.chunks(IOV_MAX) {
        let mut slices: Vec<IoSlice<'_>> = group.iter().map(|c| IoSlice::new(c)).collect();
        let mut left = &mut slices[..];
        IoSlice::advance_slices(&mut left, 0);
        while !left.is_empty() {
            match out.write_vectored(left) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `limit` bytes per call, to exercise partial writes.
    struct Trickle {
        limit: usize,
        out: Vec<u8>,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut left = self.limit;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Ok(self.limit - left)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn chunks_are_written_whole_and_in_order_across_partial_writes() {
        let chunks: Vec<bytes::Bytes> =
            (0..3000u32).map(|i| bytes::Bytes::from(format!("{i}-").repeat(1 + i as usize % 5))).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        for limit in [1, 7, 4096, usize::MAX] {
            let mut out = Trickle { limit, out: Vec::new() };
            write_all_vectored(&mut out, &chunks).unwrap();
            assert_eq!(out.out, expected, "{limit} bytes per call");
        }
    }
}
