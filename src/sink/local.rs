//! The embedded default's store: `--dev` without `CLICKHOUSE_URL`.
//!
//! Blocks are appended to `<dir>/local/events-<n>.rowbinary` (the same bytes
//! ClickHouse would receive, so they can be loaded later with
//! `clickhouse-client --query "INSERT INTO events (…) FORMAT RowBinary"`).
//! The store is bounded: past `max_bytes` a send fails (retryable), the
//! spool keeps the rows, and ingestion answers 503 once that fills too.
//!
//! Nothing reads these files back through the edge, so what is written leaves the page cache
//! once it is on disk ([`SETTLE_BYTES`] at a time): the store's footprint in memory stays a
//! few MB however much it holds, and its writes land in pages just freed by its own earlier
//! writes, not in fresh ones (on a VM that hands freed memory back to its host, a fresh page
//! costs a fault in the host on first touch: `dd` of 3 GB into a file here wrote 0.4–0.9 GB/s
//! into fresh pages, 2.6 GB/s into pages just freed).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::io::{IoSlice, Write};

use super::{Block, SinkError};

/// Rotate files at this size so no single file grows without limit.
const FILE_BYTES: u64 = 64 << 20;

/// Written data is flushed to disk and dropped from the page cache this much at a time.
const SETTLE_BYTES: u64 = 8 << 20;

/// The page cache drops whole pages only.
const PAGE: u64 = 4096;

/// Where the whole pages of a file `len` long end.
fn page_floor(len: u64) -> u64 {
    len & !(PAGE - 1)
}

pub struct LocalSink {
    dir: PathBuf,
    data_dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    /// The file being appended to; one send writes at a time, so blocks never interleave.
    current: Arc<Mutex<Option<OpenFile>>>,
}

struct OpenFile {
    number: u64,
    file: File,
    /// Where the file ends.
    len: u64,
    /// Up to here (a page boundary) it is on disk and out of the page cache.
    settled: u64,
}

impl OpenFile {
    /// Writes back and drops from the page cache everything from `settled` to the end.
    fn settle(&mut self) {
        let (fd, from, len) = (self.file.as_raw_fd(), self.settled as i64, (self.len - self.settled) as i64);
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // Only an optimisation: on failure the pages stay cached, as any file's would.
        // SAFETY: plain syscalls on an open descriptor; no memory is passed.
        unsafe {
            if libc::sync_file_range(fd, from, len, flags) == 0 {
                libc::posix_fadvise(fd, from, len, libc::POSIX_FADV_DONTNEED);
            }
        }
        // The last partial page stays cached until the next settle covers it whole.
        self.settled = page_floor(self.len);
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.settle();
    }
}

impl LocalSink {
    pub fn open(data_dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        let dir = data_dir.join("local");
        std::fs::create_dir_all(&dir)?;
        let mut used = 0;
        for entry in std::fs::read_dir(&dir)? {
            used += entry?.metadata()?.len();
        }
        Ok(LocalSink { dir, data_dir, max_bytes, used: AtomicU64::new(used), current: Arc::default() })
    }

    pub async fn send(&self, block: &Block) -> Result<(), SinkError> {
        let used = self.used.load(Ordering::Acquire);
        if used + block.bytes as u64 > self.max_bytes {
            return Err(SinkError {
                retryable: true,
                message: format!("local store full ({used} of {} bytes)", self.max_bytes),
            });
        }
        let number = used / FILE_BYTES;
        let path = self.dir.join(format!("events-{number:06}.rowbinary"));
        // One blocking task per block (tokio::fs would hop to the blocking pool per chunk), and
        // the chunks go out as they are, gathered by the kernel, not copied into one buffer.
        let chunks = block.chunks.clone();
        let (current, file_path) = (self.current.clone(), path.clone());
        let write = tokio::task::spawn_blocking(move || {
            let mut current = current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if current.as_ref().is_none_or(|open| open.number != number) {
                // The previous file (dropped here) is settled whole.
                *current = None;
                let file = std::fs::OpenOptions::new().create(true).append(true).open(&file_path)?;
                let len = file.metadata()?.len();
                *current = Some(OpenFile { number, file, len, settled: page_floor(len) });
            }
            let open = current.as_mut().expect("opened above");
            let written = write_all_vectored(&mut open.file, &chunks);
            // A failed write may have appended part of the block: its length is the file's.
            open.len = match written {
                Ok(()) => open.len + chunks.iter().map(|c| c.len() as u64).sum::<u64>(),
                Err(_) => open.file.metadata().map_or(open.len, |m| m.len()),
            };
            if open.len - open.settled >= SETTLE_BYTES {
                open.settle();
            }
            written
        });
        let failed = |message: String| SinkError { retryable: true, message };
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(format!("{}: {e}", path.display()))),
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

    fn is_tmpfs(path: &std::path::Path) -> bool {
        const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path and a zeroed `statfs` for the kernel to fill.
        unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            libc::statfs(path.as_ptr(), &mut fs) == 0 && fs.f_type == TMPFS_MAGIC
        }
    }

    /// Pages of `path` in the page cache, and pages in all (`mincore` over a mapping).
    fn resident_pages(path: &std::path::Path) -> (usize, usize) {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let pages = len.div_ceil(PAGE as usize);
        let mut resident = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of `len` bytes of an open file, unmapped below;
        // `resident` holds one byte per page of it.
        unsafe {
            let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
        }
        (resident.iter().filter(|&&b| b & 1 == 1).count(), pages)
    }

    #[tokio::test]
    async fn blocks_land_whole_in_order_across_files_and_leave_the_page_cache_once_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalSink::open(dir.path().to_path_buf(), 1 << 30).unwrap();
        // 74 blocks of 1 MiB: the first file takes 64 of them, the second the rest.
        let mut expected = Vec::new();
        for i in 0..74u32 {
            let chunks: Vec<bytes::Bytes> =
                (0..4u32).map(|c| bytes::Bytes::from(vec![(i * 4 + c) as u8; 256 << 10])).collect();
            expected.extend(chunks.iter().flat_map(|c| c.iter().copied()));
            let block = Block {
                format: crate::event::rowbinary::RowFormat::CURRENT,
                rows: 1,
                bytes: 1 << 20,
                chunks,
                encoded: None,
            };
            sink.send(&block).await.unwrap();
        }
        let first = dir.path().join("local/events-000000.rowbinary");
        let second = dir.path().join("local/events-000001.rowbinary");
        // Rotation settled the first file whole; of the second's 10 MiB, the last 2 are not a
        // whole settle step yet, and stay cached until the sink goes. (tmpfs, a `TMPDIR` some
        // set, has no disk to settle to: its pages stay.)
        let on_disk = !is_tmpfs(dir.path());
        if on_disk {
            assert_eq!(resident_pages(&first), (0, (FILE_BYTES / PAGE) as usize));
            assert_eq!(resident_pages(&second), ((2 << 20) / PAGE as usize, (10 << 20) / PAGE as usize));
        }
        drop(sink);
        if on_disk {
            assert_eq!(resident_pages(&second).0, 0, "settled as the sink closes it");
        }

        let mut stored = std::fs::read(&first).unwrap();
        assert_eq!(stored.len() as u64, FILE_BYTES, "the first file rotates at its size");
        stored.extend(std::fs::read(&second).unwrap());
        assert!(stored == expected, "every block, whole and in order");
    }
}
