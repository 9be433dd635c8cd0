//! The audit log's writer: rows are queued on the request path and written to
//! `audit_log` by one task, so an audit never slows a request down. The queue
//! is bounded in rows and every field in bytes; when it is full a row is
//! dropped and counted (`edge_audit_dropped_total`), never waited for.
//!
//! Rows of a known organisation go in through that tenant's transaction; rows
//! that belong to no organisation (a login for an unknown email, an operator
//! act naming none) through `edge_private.audit_unscoped`, under `''`, the
//! operator's stream.

use std::net::IpAddr;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::audit::truncated;
use crate::db::{Db, DbError};

/// Rows waiting for the writer; each is a few hundred bytes (fields truncated): about 1 MiB.
pub const QUEUE_ROWS: usize = 4096;
/// Rows written per transaction at most.
const BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct AuditRow {
    /// `""`: no organisation (the operator's stream).
    pub organization_id: String,
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub client: Option<IpAddr>,
}

/// The request side of the queue: cheap to clone, never blocks.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRow>,
}

impl AuditLog {
    /// The queue and the writer to run as a named task.
    pub fn new(db: Db) -> (AuditLog, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE_ROWS);
        (AuditLog { tx }, AuditWriter { db, rx })
    }

    /// Without PostgreSQL there is no audit log: rows go nowhere (and are not counted as drops).
    pub fn disabled() -> AuditLog {
        AuditLog { tx: mpsc::channel(1).0 }
    }

    /// Queues a row (fields cut as audit lines are); dropped and counted when the queue is full.
    pub fn record(&self, org: &str, actor: &str, action: &'static str, target: &str, client: Option<IpAddr>) {
        let row = AuditRow {
            organization_id: truncated(org).into_owned(),
            actor: truncated(actor).into_owned(),
            action,
            target: truncated(target).into_owned(),
            client,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(row) {
            metrics::counter!(crate::metrics::AUDIT_DROPPED).increment(1);
        }
    }
}

pub struct AuditWriter {
    db: Db,
    rx: mpsc::Receiver<AuditRow>,
}

impl AuditWriter {
    /// Writes until `stop`, then writes what is still queued and returns.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let stopping = tokio::select! {
                n = self.rx.recv_many(&mut batch, BATCH) => n == 0,
                _ = stop.cancelled() => true,
            };
            if stopping {
                while let Ok(row) = self.rx.try_recv() {
                    batch.push(row);
                }
            }
            self.write_batch(&mut batch).await;
            if stopping {
                return;
            }
        }
    }

    async fn write_batch(&self, batch: &mut Vec<AuditRow>) {
        batch.sort_by(|a, b| a.organization_id.cmp(&b.organization_id));
        for rows in batch.chunk_by(|a, b| a.organization_id == b.organization_id) {
            if let Err(e) = self.write(rows).await {
                tracing::warn!(error = %e, rows = rows.len(), "audit rows not written");
                metrics::counter!(crate::metrics::AUDIT_DROPPED).increment(rows.len() as u64);
            }
        }
        batch.clear();
    }

    async fn write(&self, rows: &[AuditRow]) -> Result<(), DbError> {
        let org = rows[0].organization_id.as_str();
        if org.is_empty() {
            for r in rows {
                self.db
                    .cross_tenant(
                        "SELECT edge_private.audit_unscoped($1, $2, $3, $4, ($5::text)::inet, '{}'::jsonb)",
                        &[&r.organization_id, &r.actor, &r.action, &r.target, &r.client.map(|c| c.to_string())],
                    )
                    .await?;
            }
            return Ok(());
        }
        let tx = self.db.tenant(org).await?;
        for r in rows {
            tx.execute(
                "INSERT INTO audit_log (organization_id, actor, action, target, client) VALUES ($1, $2, $3, $4, ($5::text)::inet)",
                &[&r.organization_id, &r.actor, &r.action, &r.target, &r.client.map(|c| c.to_string())],
            )
            .await?;
        }
        tx.commit().await
    }
}
