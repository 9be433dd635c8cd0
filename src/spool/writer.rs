//! The writer thread: group commit of appends into the current segment.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// As the request encoded it: kept mutable, since freezing a buffer whose length is not its
    /// capacity allocates (a shared header), and the writer only copies it out.
    pub payload: bytes::BytesMut,
    pub ack: Option<oneshot::Sender<Result<(), super::SpoolError>>>,
}

/// Most appends a group carries at once, so one sync never waits on a huge write.
const GROUP_MAX_BYTES: usize = 16 << 20;

/// The writer's pause between groups.
#[derive(Debug, Clone, Copy)]
pub(super) struct Linger {
    pub pause: Duration,
    /// Only after a group of at least this many appends: with durable acks the pause is added
    /// to the 202s, which pays off only where it gathers many requests into one sync, and
    /// requests arriving a few at a time would only wait longer.
    pub after_records: u64,
}

impl Linger {
    fn after(&self, records: u64, bytes: usize) -> Option<Duration> {
        (!self.pause.is_zero() && records >= self.after_records && bytes < GROUP_MAX_BYTES).then_some(self.pause)
    }
}

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
    /// Durable acks of a group go to a task on the runtime, which completes them there: one
    /// wake-up from this thread per group, not one per request (`None`: completed here).
    pub fanout: Option<tokio::sync::mpsc::UnboundedSender<AckGroup>>,
    /// `None`: sync every group before acknowledging it (durable acks). `Some(interval)`:
    /// memory acks; written data is synced at most this long after it was written, on
    /// rotation and on close, not per group.
    pub sync_every: Option<Duration>,
    /// Pause after each group that did not fill up (zero: none). Under load, each group then
    /// holds what arrived during the pause: fewer wake-ups of the writer and, with durable
    /// acks, fewer `fdatasync`s per request.
    pub linger: Linger,
    /// The next segment, zero-filled ahead of rotation while syncs are small.
    pub spare: Spare,
    /// Zero-fill the next segment while the one being sealed averaged fewer bytes than this
    /// per `fdatasync` (see [`Spare`]).
    pub prefill_below: u64,
}

/// Group commit: takes every append queued while the previous sync ran, writes them with one
/// `write` and (durable acks) one `fdatasync`, then acknowledges each. Runs until the channel
/// closes.
pub(super) fn run(writer: Writer) {
    let Writer {
        rx,
        mut file,
        dir,
        mut head,
        segment_bytes,
        shared,
        head_tx,
        clock,
        fanout,
        sync_every,
        linger,
        spare,
        prefill_below,
    } = writer;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut acks = Vec::new();
    let groups = metrics::histogram!(m::SPOOL_GROUP);
    let syncs = metrics::histogram!(m::SPOOL_FSYNC);
    // `fdatasync`s of the current segment, to judge whether the next is worth zero-filling.
    let segment_syncs = std::cell::Cell::new(0u64);
    let sync_timed = |file: &File| {
        segment_syncs.set(segment_syncs.get() + 1);
        sync_timed(file, &shared, &syncs)
    };
    // Memory acks: when the oldest write not yet synced happened.
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let next = match (sync_every, unsynced_since) {
            (Some(every), Some(since)) => match rx.recv_timeout(every.saturating_sub(since.elapsed())) {
                Ok(append) => Some(append),
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => break,
            },
            _ => match rx.recv() {
                Ok(append) => Some(append),
                Err(_) => break,
            },
        };
        let Some(first) = next else {
            // Idle with unsynced data: its window is up (a failure is retried one window later).
            unsynced_since = sync_timed(&file).is_err().then(Instant::now);
            continue;
        };
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
                // The zeros past the end go, so a sealed segment's length is what it holds.
                file.set_len(head.offset)?;
                unsynced_since = None;
                let bytes_per_sync = head.offset / (segment_syncs.replace(0) + 1);
                head = Position { seq: head.seq + 1, offset: 0 };
                file = spare.take(&dir, head.seq, bytes_per_sync < prefill_below)?;
            }
            file.write_all(&buf)?;
            match sync_every {
                None => sync_timed(&file)?,
                Some(every) => {
                    let since = *unsynced_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= every {
                        sync_timed(&file)?;
                        unsynced_since = None;
                    }
                }
            }
            Ok(())
        })();
        shared.queued_bytes.fetch_sub(dequeued, Ordering::AcqRel);
        let reply = match result {
            Ok(()) => {
                head.offset += buf.len() as u64;
                shared.written_bytes.fetch_add(buf.len() as u64, Ordering::AcqRel);
                shared.written_rows.fetch_add(rows, Ordering::AcqRel);
                groups.record(records as f64);
                shared.groups.fetch_add(1, Ordering::Relaxed);
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
        if !acks.is_empty() {
            let group = (std::mem::take(&mut acks), reply);
            match &fanout {
                Some(tx) => {
                    if let Err(tokio::sync::mpsc::error::SendError(group)) = tx.send(group) {
                        complete(group);
                    }
                }
                None => complete(group),
            }
        }
        // After the acks: a durable group's 202s do not wait for the pause.
        if let Some(pause) = linger.after(records, buf.len()) {
            std::thread::sleep(pause);
        }
    }
    let _ = file.sync_data();
    tracing::info!(task = "spool-writer", "task stopped");
}

/// A group's acknowledgements and its outcome.
pub(super) type AckGroup = (Vec<oneshot::Sender<Result<(), super::SpoolError>>>, Result<(), super::SpoolError>);

pub(super) fn complete((acks, reply): AckGroup) {
    for ack in acks {
        let _ = ack.send(reply.clone());
    }
}

/// Completes each group's acknowledgements on the runtime, until the writer is gone.
pub(super) async fn fan_out(mut groups: tokio::sync::mpsc::UnboundedReceiver<AckGroup>) {
    while let Some(group) = groups.recv().await {
        complete(group);
    }
}

/// `fdatasync`, timed into `edge_spool_fsync_duration_seconds`.
fn sync_timed(file: &File, shared: &Shared, histogram: &metrics::Histogram) -> io::Result<()> {
    let started = Instant::now();
    let result = file.sync_data();
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    histogram.record(started.elapsed().as_secs_f64());
    result
}

/// Segments are written into files zero-filled to full size ahead of time while syncs are
/// small: appending grows the file, so each `fdatasync` would also commit its new size and
/// block allocation, and writing over allocated blocks does not (here: 164 against 237–304 µs
/// per `fdatasync` of 4 KiB, and 70 against 92–116 µs of CPU). A thread fills the next one
/// while the current one is written; `fallocate` would not do, its unwritten extents are
/// converted on first write, a metadata change again. But the zeros cost a segment's worth of
/// writing each: where each sync covers much (batches, memory acks' timer), appending is the
/// cheaper of the two, so the writer asks for the next spare only while the segment it seals
/// averaged fewer than `prefill_below` bytes per sync.
pub(super) struct Spare {
    path: PathBuf,
    ready: Arc<AtomicBool>,
    /// Asks the filling thread for the next one; closed when the writer stops, which ends it.
    wanted: crossbeam::channel::Sender<()>,
    /// A fill was asked for and its file not yet taken: never ask twice, a second fill would
    /// truncate a spare that may already be in use as a segment.
    asked: std::cell::Cell<bool>,
}

impl Spare {
    /// `fill_first`: zero-fill one now, for the first rotation (nothing measured yet).
    pub fn start(dir: &Path, segment_bytes: u64, fill_first: bool) -> io::Result<Spare> {
        let path = segment::spare_path(dir);
        let ready = Arc::new(AtomicBool::new(false));
        let (wanted, requests) = crossbeam::channel::bounded::<()>(1);
        let (fill_path, filled) = (path.clone(), ready.clone());
        std::thread::Builder::new().name("spool-spare".into()).spawn(move || {
            while requests.recv().is_ok() {
                match zero_fill(&fill_path, segment_bytes) {
                    Ok(()) => filled.store(true, Ordering::Release),
                    Err(e) => tracing::warn!(error = %e, "could not prepare the next spool segment; it will grow by appending"),
                }
            }
        })?;
        let spare = Spare { path, ready, wanted, asked: Default::default() };
        if fill_first {
            spare.ask();
        } else {
            // One a previous run left: 64 MiB on disk (by default) that may never be used.
            let _ = std::fs::remove_file(&spare.path);
        }
        Ok(spare)
    }

    fn ask(&self) {
        if !self.asked.replace(true) {
            let _ = self.wanted.try_send(());
        }
    }

    /// Segment `seq`, from the spare when it is ready, else a new empty file; `refill` asks
    /// for the next spare (a request already pending counts).
    fn take(&self, dir: &Path, seq: u64, refill: bool) -> io::Result<File> {
        if !self.ready.swap(false, Ordering::AcqRel) {
            if refill {
                self.ask();
            }
            return create_segment(dir, seq);
        }
        let path = segment::segment_path(dir, seq);
        // Renamed before the next fill is asked for, which starts by creating the spare's path;
        // asked for even when the rename failed, or every later rotation would append.
        let renamed = std::fs::rename(&self.path, &path);
        self.asked.set(false);
        if refill {
            self.ask();
        }
        renamed?;
        // The new name must survive a crash too.
        File::open(dir)?.sync_all()?;
        // Not in append mode: writes go over the zeros from the start.
        OpenOptions::new().write(true).open(path)
    }
}

/// Synced every this many bytes while zero-filling, so the writer's own syncs never queue
/// behind one flush of a whole segment (and its block allocations in the journal).
const ZERO_FILL_SYNC_BYTES: u64 = 4 << 20;

fn zero_fill(path: &Path, len: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut file = File::create(path)?;
    let mut written = 0;
    while written < len {
        let n = (len - written).min(ZEROS.len() as u64) as usize;
        file.write_all(&ZEROS[..n])?;
        written += n as u64;
        if written % ZERO_FILL_SYNC_BYTES == 0 {
            file.sync_data()?;
        }
    }
    file.sync_all()
}

pub(super) fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(segment::segment_path(dir, seq))?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}
