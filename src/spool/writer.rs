//! The writer thread: group commit of appends into the current segment.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam::channel::Receiver;
use tokio::sync::{oneshot, watch};

use super::{segment, Position, Shared};
use crate::event::rowbinary::RowFormat;
use crate::metrics as m;

/// One block handed to the writer.
pub(super) struct Append {
    /// Framed size, as counted in `queued_bytes`.
    pub size: u64,
    pub org: crate::tenant::OrgId,
    pub rows: u32,
    pub payload: Bytes,
    pub ack: Option<oneshot::Sender<Result<(), super::SpoolError>>>,
}

/// Most appends a group carries at once, so one sync never waits on a huge write.
const GROUP_MAX_BYTES: usize = 16 << 20;

/// What the writer thread owns.
pub(super) struct Writer {
    pub rx: Receiver<Append>,
    pub file: File,
    pub dir: PathBuf,
    /// Segment and offset the next write lands at.
    pub head: Position,
    pub segment_bytes: u64,
    pub shared: Arc<Shared>,
    /// Tells the reader how far the written (and synced) data goes.
    pub head_tx: watch::Sender<Position>,
    pub clock: crate::clock::Clock,
}

/// Group commit: takes every append queued while the previous sync ran, writes them with one
/// `write` and one `fdatasync`, then acknowledges each. Runs until the channel closes.
pub(super) fn run(writer: Writer) {
    let Writer { rx, mut file, dir, mut head, segment_bytes, shared, head_tx, clock } = writer;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        buf.clear();
        let written_ms = clock.unix_millis();
        let mut rows = 0u64;
        let mut records = 0u64;
        let mut dequeued = 0u64;
        let mut take = |a: Append, buf: &mut Vec<u8>| {
            segment::encode(buf, RowFormat::CURRENT, written_ms, a.rows, a.org.as_str().as_bytes(), &a.payload);
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
                Err(super::SpoolError::Io(Arc::new(e)))
            }
        };
        for ack in acks.drain(..) {
            let _ = ack.send(reply.clone());
        }
    }
    let _ = file.sync_data();
    tracing::info!(task = "spool-writer", "task stopped");
}

pub(super) fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(segment::segment_path(dir, seq))?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}
