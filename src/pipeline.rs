//! The seam between "accepted" and "shipped".
//!
//! The ingest handler hands every accepted [`RowBlock`] to [`Pipeline::accept`]
//! and answers 202 when it returns `Ok`: in durable mode (`EDGE_ACK=durable`,
//! the default) that is after the spool's fsync covering the block; in memory
//! mode as soon as the spool writer has it. Full or failing spool: 503.

use std::time::Duration;

use crate::error::ApiError;
use crate::event::RowBlock;
use crate::spool::{AppendError, Spool};

pub struct Pipeline {
    spool: Spool,
}

/// How long a client should wait before retrying when the spool is full.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
/// A disk error may be momentary (the writer moves to a new segment).
const IO_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Pipeline {
    pub fn new(spool: Spool) -> Self {
        Pipeline { spool }
    }

    /// `Ok` means the rows are in the spool (on disk, in durable mode) and will reach the sink.
    pub async fn accept(&self, block: RowBlock) -> Result<(), ApiError> {
        self.spool.append(block).await.map_err(|e| {
            metrics::counter!(crate::metrics::OVERLOADED).increment(1);
            match e {
                AppendError::Full => ApiError::unavailable(
                    "spool_full",
                    "The edge holds as many unshipped events as it may; retry later",
                    FULL_RETRY_AFTER,
                ),
                AppendError::Io(message) => {
                    tracing::error!(%message, "spool append failed");
                    ApiError::unavailable(
                        "spool_unavailable",
                        "The edge could not store the events; retry",
                        IO_RETRY_AFTER,
                    )
                }
            }
        })
    }

    /// Stops the spool writer once everything queued is written and synced.
    pub fn close(&self) {
        self.spool.close();
    }
}
