//! The seam between "accepted" and "shipped".
//!
//! The ingest handler hands every accepted [`RowBlock`] to [`Pipeline::submit`]
//! (from then on the rows will be stored, so it does its accounting at once),
//! then answers 202 when [`Accepted::stored`] returns `Ok`: in durable mode
//! (`EDGE_ACK=durable`, the default) that is after the spool's fsync covering
//! the block; in memory mode at once. A full or failing spool is a
//! [`SpoolError`] (503 with `Retry-After`).

use crate::event::RowBlock;
use crate::spool::{Spool, SpoolError, Submitted};

pub struct Pipeline {
    spool: Spool,
}

/// Rows the spool writer has taken.
pub struct Accepted(Submitted);

impl Accepted {
    /// Resolves when the rows are on disk (durable mode) or at once (memory mode).
    pub async fn stored(self) -> Result<(), SpoolError> {
        self.0.written().await.map_err(counted)
    }
}

fn counted(e: SpoolError) -> SpoolError {
    metrics::counter!(crate::metrics::OVERLOADED).increment(1);
    if let SpoolError::Io(error) = &e {
        tracing::error!(%error, "spool append failed");
    }
    e
}

impl Pipeline {
    pub fn new(spool: Spool) -> Self {
        Pipeline { spool }
    }

    /// Hands the rows to the spool writer. `Ok` means they will be written whatever happens to
    /// the caller next, so whatever accounting goes with acceptance can be done right here.
    pub fn submit(&self, block: RowBlock) -> Result<Accepted, SpoolError> {
        self.spool.submit(block).map(Accepted).map_err(counted)
    }

    /// Stops the spool writer once everything queued is written and synced.
    pub fn close(&self) {
        self.spool.close();
    }
}
