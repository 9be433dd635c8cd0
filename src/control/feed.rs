//! The registry feed: organisations, tiers, statuses, subdomains, custom domains
//! and SDK key hashes from PostgreSQL into the in-memory [`Registry`], at start
//! and then live, so that a revoked key or a suspended organisation is refused
//! by every node within a second. The request path never touches PostgreSQL.
//!
//! One dedicated connection `LISTEN`s on `edge_registry`. The trigger's
//! payload carries only an organisation id and a version; the node reads the
//! rows itself, through the private schema's functions. Notifications sent
//! while disconnected are lost, so every (re)connect starts with a full
//! resync, and a version poll every `EDGE_REGISTRY_POLL` (≤ 30 s) is the
//! backstop. A change re-reads the whole registry (one query per table): a
//! few milliseconds for thousands of organisations. While PostgreSQL is away
//! the last registry keeps serving; `edge_registry_age_seconds` says how old it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::clock::Clock;
use crate::config::PostgresConfig;
use crate::db::{describe, Db, DbError};
use crate::plan::TierTable;
use crate::tenant::{KeyHash, LoadError, Org, OrgStatus, Registry, Snapshot, SnapshotBuilder};

/// Wait between reconnection attempts.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// `application_name` of the listener connection.
pub const FEED_APPLICATION_NAME: &str = "edge-registry-feed";
/// How often the registry's age is published.
const AGE_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the listener connection closed")]
    Disconnected,
}

/// Reads every organisation and live key; `base` holds organisations from elsewhere (`--dev`).
/// Returns the snapshot and the registry version it is at least as new as.
pub async fn load(db: &Db, tiers: &TierTable, base: SnapshotBuilder) -> Result<(Snapshot, i64), FeedError> {
    // The version first: a change committed after it is seen again by its notification.
    let version: i64 = db.cross_tenant("SELECT edge_private.registry_version_now()", &[]).await?[0].get(0);
    let orgs = db
        .cross_tenant(
            "SELECT id, subdomain, custom_domain, tier, status FROM edge_private.registry_organizations()",
            &[],
        )
        .await?;
    let keys =
        db.cross_tenant("SELECT organization_id, app_id, key_hash FROM edge_private.registry_keys()", &[]).await?;
    let mut builder = base;
    let mut by_id = std::collections::HashMap::with_capacity(orgs.len());
    for row in orgs {
        let (id, subdomain, custom_domain, tier, status): (String, String, Option<String>, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let Some(resolved) = tiers.get(&tier).cloned() else {
            let known: Vec<_> = tiers.names().collect();
            return Err(LoadError::UnknownTier { organization: id, tier, known: known.join(", ") }.into());
        };
        let status = match status.as_str() {
            "active" => OrgStatus::Active,
            "suspended" => OrgStatus::Suspended,
            _ => OrgStatus::Deleted,
        };
        let mut org = Org::new(&id, "", &subdomain, resolved, status);
        org.custom_domain = custom_domain;
        by_id.insert(id, builder.org(org)?);
    }
    for row in keys {
        let (org_id, app_id, hash): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        // A key of an organisation created after the organisations were read: the next resync.
        let (Some(org), Ok(hash)) = (by_id.get(&org_id), <[u8; 32]>::try_from(hash.as_slice())) else {
            continue;
        };
        builder.key(KeyHash::from_bytes(hash), org, &app_id)?;
    }
    let revocations = db
        .cross_tenant(
            "SELECT organization_id, user_id, ceil(extract(epoch FROM tokens_valid_after))::bigint \
             FROM edge_private.registry_token_revocations()",
            &[],
        )
        .await?;
    for row in revocations {
        let (org, user, after): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        builder.revoke_tokens(&org, &user, after.max(0) as u64);
    }
    Ok((builder.build(), version))
}

/// How current the registry is, for `/readyz` and the age metric.
#[derive(Debug, Default)]
pub struct FeedStatus {
    /// Unix milliseconds of the last moment the registry was known current.
    pub current_at_ms: AtomicU64,
}

impl FeedStatus {
    pub fn age(&self, clock: &Clock) -> Duration {
        Duration::from_millis(clock.unix_millis().saturating_sub(self.current_at_ms.load(Ordering::Acquire)))
    }
}

/// Keeps `registry` current until dropped (it runs as a named server task).
pub struct Feed {
    pub db: Db,
    pub config: PostgresConfig,
    pub tiers: TierTable,
    pub registry: Arc<Registry>,
    /// Organisations that come from elsewhere and stay (the `--dev` demo).
    pub base: Arc<dyn Fn() -> SnapshotBuilder + Send + Sync>,
    pub status: Arc<FeedStatus>,
    pub clock: Clock,
    /// The version of the registry in force.
    pub version: i64,
}

impl Feed {
    pub async fn run(mut self) {
        loop {
            let e = self.follow().await;
            tracing::warn!(error = %e, "registry feed interrupted; serving the last registry, reconnecting");
            metrics::counter!(crate::metrics::REGISTRY_FEED_ERRORS).increment(1);
            self.publish_age();
            tokio::time::sleep(RECONNECT_BACKOFF).await;
        }
    }

    /// Connects, listens, resyncs, then follows notifications and the version poll until an
    /// error; returns it.
    async fn follow(&mut self) -> FeedError {
        let mut pg: tokio_postgres::Config = match self.config.url.parse() {
            Ok(pg) => pg,
            Err(e) => return DbError::Unavailable(describe(&e)).into(),
        };
        // Named, so that operators (and the propagation test) can find it in pg_stat_activity.
        pg.application_name(FEED_APPLICATION_NAME).connect_timeout(self.config.timeout);
        let connecting = pg.connect(NoTls);
        let (client, mut connection) = match tokio::time::timeout(self.config.timeout, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return DbError::Unavailable(describe(&e)).into(),
            Err(_) => return DbError::Unavailable("connect timed out".into()).into(),
        };
        // One slot: a notification while a resync is pending adds nothing.
        let (changed_tx, mut changed) = mpsc::channel::<()>(1);
        let driver = tokio::spawn(async move {
            while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if let AsyncMessage::Notification(_) = message {
                    let _ = changed_tx.try_send(());
                }
            }
        });
        let _abort_driver = AbortOnDrop(driver);
        if let Err(e) = client.batch_execute("LISTEN edge_registry").await {
            return DbError::from(e).into();
        }
        if let Err(e) = self.resync().await {
            return e;
        }
        let mut poll = tokio::time::interval(self.config.registry_poll);
        let mut age = tokio::time::interval(AGE_TICK);
        loop {
            tokio::select! {
                message = changed.recv() => {
                    if message.is_none() {
                        return FeedError::Disconnected;
                    }
                    if let Err(e) = self.resync().await {
                        return e;
                    }
                }
                _ = poll.tick() => {
                    let version = match client.query_one("SELECT edge_private.registry_version_now()", &[]).await {
                        Ok(row) => row.get::<_, i64>(0),
                        Err(e) => return DbError::from(e).into(),
                    };
                    let result = if version == self.version { self.mark_current(); Ok(()) } else { self.resync().await };
                    if let Err(e) = result {
                        return e;
                    }
                }
                _ = age.tick() => self.publish_age(),
            }
        }
    }

    async fn resync(&mut self) -> Result<(), FeedError> {
        let (snapshot, version) = load(&self.db, &self.tiers, (self.base)()).await?;
        let organizations = snapshot.org_count();
        self.registry.replace(snapshot);
        self.version = version;
        self.mark_current();
        tracing::debug!(organizations, version, "registry resynced from postgres");
        Ok(())
    }

    fn mark_current(&self) {
        self.status.current_at_ms.store(self.clock.unix_millis(), Ordering::Release);
        self.publish_age();
    }

    fn publish_age(&self) {
        metrics::gauge!(crate::metrics::REGISTRY_AGE).set(self.status.age(&self.clock).as_secs_f64());
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
