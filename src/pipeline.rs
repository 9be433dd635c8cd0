//! The seam between "accepted" and "shipped".
//!
//! The ingest handler hands every accepted [`RowBlock`] to [`Pipeline::accept`]
//! and answers 202 when it returns `Ok`. Today the block goes straight to the
//! in-memory [`Batcher`], bounded so that a slow ClickHouse turns into 503s
//! rather than unbounded memory. The durable spool (append + group-commit
//! fsync, replay after a crash) slots in here without the handler changing.

use std::sync::Arc;
use std::time::Duration;

use crate::batch::Batcher;
use crate::config::AckMode;
use crate::error::ApiError;
use crate::event::RowBlock;

pub struct Pipeline {
    batcher: Arc<Batcher>,
    ack: AckMode,
}

/// How long a client should wait before retrying when buffers are full.
const OVERLOAD_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Pipeline {
    pub fn new(batcher: Arc<Batcher>, ack: AckMode) -> Self {
        Pipeline { batcher, ack }
    }

    pub fn ack_mode(&self) -> AckMode {
        self.ack
    }

    /// `Ok` means the rows are owned by the pipeline and will reach the sink.
    pub async fn accept(&self, block: RowBlock) -> Result<(), ApiError> {
        self.batcher.push(block).map_err(|_| {
            metrics::counter!(crate::metrics::OVERLOADED).increment(1);
            ApiError::unavailable(
                "overloaded",
                "The edge is buffering as much as it may; retry later",
                OVERLOAD_RETRY_AFTER,
            )
        })
    }
}
