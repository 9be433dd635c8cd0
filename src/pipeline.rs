//! The seam between "accepted" and "shipped".
//!
//! The ingest handler hands every accepted [`RowBlock`] to [`Pipeline::submit`]
//! (from then on the rows will be stored, so it does its accounting at once),
//! then answers 202 when [`Accepted::stored`] returns `Ok`: in durable mode
//! (`EDGE_ACK=durable`, the default) that is after the spool's fsync covering
//! the block; in memory mode at once. Full or failing spool: 503.

use std::time::Duration;

use crate::error::ApiError;
use crate::event::RowBlock;
use crate::spool::{AppendError, Spool, Submitted};

pub struct Pipeline {
    spool: Spool,
}

/// How long a client should wait before retrying when the spool is full.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
/// A disk error may be momentary (the writer moves to a new segment).
const IO_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Rows the spool writer has taken.
pub struct Accepted(Submitted);

impl Accepted {
    /// Resolves when the rows are on disk (durable mode) or at once (memory mode).
    pub async fn stored(self) -> Result<(), ApiError> {
        self.0.written().await.map_err(unavailable)
    }
}

fn unavailable(e: AppendError) -> ApiError {
    metrics::counter!(crate::metrics::OVERLOADED).increment(1);
    match e {
        AppendError::Full => ApiError::unavailable(
            "spool_full",
            "The edge holds as many unshipped events as it may; retry later",
            FULL_RETRY_AFTER,
        ),
        AppendError::Io(message) => {
            tracing::error!(%message, "spool append failed");
            ApiError::unavailable("spool_unavailable", "The edge could not store the events; retry", IO_RETRY_AFTER)
        }
    }
}

impl Pipeline {
    pub fn new(spool: Spool) -> Self {
        Pipeline { spool }
    }

    /// Hands the rows to the spool writer. `Ok` means they will be written whatever happens to
    /// the caller next, so whatever accounting goes with acceptance can be done right here.
    pub fn submit(&self, block: RowBlock) -> Result<Accepted, ApiError> {
        self.spool.submit(block).map(Accepted).map_err(unavailable)
    }

    /// Stops the spool writer once everything queued is written and synced.
    pub fn close(&self) {
        self.spool.close();
    }
}
