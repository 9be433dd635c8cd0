//! The server: open the spool → build each surface's state (ingest, control,
//! admin) once → bind → spawn the named tasks → serve → drain.
//!
//! One [`CancellationToken`] asks the server to stop; the drain then ends the
//! named tasks in order (the last ones through a second token it cancels
//! itself), and each logs `task stopped` when it ends. Shutdown order (SIGTERM, or
//! [`Server::shutdown`]):
//!
//! 1. `/readyz` turns 503 (draining), so load balancers stop sending;
//! 2. `data-listener` stops accepting and lets in-flight requests finish (at
//!    most half the drain budget);
//! 3. `spool-writer` writes and syncs what is queued, then ends (the spool is closed);
//! 4. `shipper` sees the writer gone and ships what remains within `drain_timeout`;
//!    the rest stays in the spool for the next start;
//! 5. `admin-listener`, `sink-watcher`, `metrics-upkeep`, `quota-saver` (alone: saves the
//!    monthly counts once more), `fleet-sync` and `quota-ledger` (with Redis; the ledger
//!    saves this node's quota charges to PostgreSQL once more), `audit-writer` (with PostgreSQL: writes what is
//!    queued) and the tasks added with
//!    [`Server::spawn`] (the SIGHUP reloader or the PostgreSQL registry feed; next
//!    the Redis sync) end; only then does [`Server::wait`] return.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregates::Stats;
use crate::auth::jwt::JwtVerifier;
use crate::auth::signing::Signer;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::Config;
use crate::control::audit_log::AuditLog;
use crate::control::ControlState;
use crate::db::Db;
use crate::event::validate::Validator;
use crate::http::budget::MemoryBudget;
use crate::http::conn::Listener;
use crate::http::cors::Cors;
use crate::ingest::IngestState;
use crate::limits::fleet::{FleetShare, FleetSync};
use crate::limits::logins::LoginThrottle;
use crate::limits::Limiter;
use crate::pipeline::Pipeline;
use crate::routes::{AdminState, DataRouter, Readiness};
use crate::shipper::Shipper;
use crate::sink::Sink;
use crate::spool::{Spool, SpoolConfig, SpoolReader};
use crate::tenant::Registry;

/// How often `/readyz`'s view of the sink is refreshed (off the request path).
const READY_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Tasks that only wait for the token get this long to end after the drain.
const LAST_TASKS_GRACE: Duration = Duration::from_secs(2);

pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The tenants (the SIGHUP reloader replaces them).
    pub registry: Arc<Registry>,
    /// The in-process daily aggregates.
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Tasks stopped last, when the drain cancels `last`.
    background: TaskTracker,
    last: CancellationToken,
    drain: JoinHandle<()>,
}

/// Runs `task` under `name`, logging when it ends.
fn spawn_named<F>(name: &'static str, task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        task.await;
        tracing::info!(task = name, "task stopped");
    })
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("EDGE_SPOOL_DIR {}: {source}", dir.display())]
    Spool { dir: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    JwtKeys(#[from] crate::auth::jwt::KeyFileError),
    #[error(transparent)]
    SigningKey(#[from] crate::auth::signing::SigningKeyError),
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    #[error("node id in {}: {source}", dir.display())]
    DataDir { dir: std::path::PathBuf, source: std::io::Error },
    #[error("{setting} {addr}: {source}")]
    Bind { setting: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
}

/// What a server is built from besides its configuration.
pub struct Sources {
    /// Organisations and keys; kept current by a feed ([`Server::spawn`]) or a reload.
    pub registry: Arc<Registry>,
    pub sink: Sink,
    pub clock: Clock,
    /// The control plane's pool, when `DATABASE_URL` is set.
    pub db: Option<Db>,
    /// How current the PostgreSQL-fed registry is (`/readyz`); `None` for a static registry.
    pub registry_status: Option<Arc<crate::control::feed::FeedStatus>>,
}

impl Server {
    /// Binds and starts serving; returns once both listeners accept.
    pub async fn start(config: Config, sources: Sources) -> Result<Server, StartError> {
        let Sources { registry, sink, clock, db, registry_status } = sources;
        let metrics = crate::metrics::install();
        registry.publish_gauge();
        let (spool, reader) = open_spool(&config, &clock)?;
        let sink = Arc::new(sink);
        let pipeline = Arc::new(Pipeline::new(spool));
        let stats = Arc::new(Stats::new(config.stats_max_bytes));
        let readiness = Arc::new(Readiness::default());
        readiness.sink_ready.store(sink.ready().await, Ordering::Release);
        if db.is_some() {
            crate::control::password::warm().await;
        }
        let (audit, audit_writer) = match db.clone() {
            Some(db) => {
                let (log, writer) = AuditLog::new(db);
                (log, Some(writer))
            }
            None => (AuditLog::disabled(), None),
        };
        // This month's quota counts as the last run left them, before any request is served.
        // A fleet and usage rows name this node by an id that survives restarts.
        let node_id = match config.redis_url.is_some() || db.is_some() {
            true => Some(
                crate::limits::fleet::node_id(config.node_id.clone(), &config.data_dir)
                    .map_err(|source| StartError::DataDir { dir: config.data_dir.clone(), source })?,
            ),
            false => None,
        };
        let fleet = match (&config.redis_url, &node_id) {
            (Some(url), Some(node_id)) => Some(crate::limits::fleet::FleetConfig {
                redis_url: url.clone(),
                interval: config.redis_sync_interval,
                timeout: config.redis_timeout,
                node_ttl: config.redis_node_ttl,
                node_id: node_id.clone(),
            }),
            _ => None,
        };
        let share = match &fleet {
            Some(f) => FleetShare::fleet(f.interval),
            None => FleetShare::local(),
        };
        let limiter = Arc::new(Limiter::with_fleet(clock.clone(), share));
        match (&fleet, &db) {
            (None, _) => {
                let restored = crate::limits::quota_store::restore(&limiter, &config.data_dir, &clock);
                if restored > 0 {
                    tracing::info!(organizations = restored, "monthly quota counts restored from the data directory");
                }
            }
            (Some(f), Some(db)) => {
                let month = crate::limits::fleet_quota::current_month(&clock);
                let snapshot = registry.snapshot();
                match crate::limits::fleet_quota::restore(db, &limiter, &snapshot, &f.node_id, month).await {
                    Ok(n) => tracing::info!(organizations = n, "monthly quota counts restored from PostgreSQL"),
                    Err(e) => tracing::warn!(error = %e, "could not load quota counts from PostgreSQL; Redis will say"),
                }
            }
            (Some(_), None) => {}
        }
        let surfaces_db = db.clone();
        let logins = Arc::new(LoginThrottle::new(&config.login, clock.clone(), fleet.is_some()));
        let surfaces = Surfaces {
            pipeline: pipeline.clone(),
            stats: stats.clone(),
            db,
            audit,
            limiter: limiter.clone(),
            logins: logins.clone(),
        };
        let router = Arc::new(data_router(&config, registry.clone(), surfaces, &clock)?);
        let registry_status = registry_status.map(|status| (status, clock.clone()));
        let admin_state = Arc::new(AdminState {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            registry: registry_status,
            limiter: limiter.clone(),
        });
        crate::routes::register_series();

        let (data, addr) = bind("EDGE_LISTEN", config.listen).await?;
        let (admin, admin_addr) = bind("EDGE_ADMIN_LISTEN", config.admin_listen).await?;

        let shutdown = CancellationToken::new();
        // Stops what must outlive the drain (probes, readiness, metrics, reloads).
        let last = CancellationToken::new();
        let background = TaskTracker::new();
        let shipper = Shipper { config: config.batch.clone(), sink: sink.clone(), reader, clock: clock.clone() };
        let shipper = spawn_named("shipper", shipper.run(config.drain_timeout));
        background.spawn(named("sink-watcher", watch_sink(readiness.clone(), sink.clone(), last.clone())));
        background.spawn(named("metrics-upkeep", crate::metrics::upkeep(metrics, last.clone())));
        if let (Some(config), Some(db)) = (&fleet, &surfaces_db) {
            let ledger = crate::limits::fleet_quota::save_until(
                db.clone(),
                limiter.clone(),
                config.node_id.clone(),
                last.clone(),
            );
            background.spawn(named("quota-ledger", ledger));
        }
        if let (Some(db), Some(node_id)) = (&surfaces_db, &node_id) {
            let recorder = crate::control::usage::UsageRecorder {
                db: db.clone(),
                limiter: limiter.clone(),
                node_id: node_id.clone(),
                interval: config.usage_interval,
                clock: clock.clone(),
            };
            background.spawn(named("usage-recorder", recorder.run(last.clone())));
            if let Some(ch) = &config.clickhouse {
                let rollup = crate::control::usage::UsageRollup {
                    db: db.clone(),
                    clickhouse: crate::sink::clickhouse::client(ch),
                    interval: config.usage_rollup_interval,
                    days: config.usage_rollup_days,
                    clock: clock.clone(),
                };
                background.spawn(named("usage-rollup", rollup.run(last.clone())));
            }
        }
        let decisions = crate::limits::publish_decisions(limiter.clone(), registry.clone(), last.clone());
        background.spawn(named("limit-metrics", decisions));
        let local_quotas = fleet.is_none();
        if let Some(config) = fleet {
            let sync = FleetSync {
                limiter: limiter.clone(),
                registry: registry.clone(),
                config,
                clock: clock.clone(),
                db: surfaces_db.clone(),
                logins,
            };
            background.spawn(named("fleet-sync", sync.run(last.clone())));
        }
        if local_quotas {
            let saver =
                crate::limits::quota_store::save_until(limiter, config.data_dir.clone(), clock.clone(), last.clone());
            background.spawn(named("quota-saver", saver));
        }
        if let Some(writer) = audit_writer {
            background.spawn(named("audit-writer", writer.run(last.clone())));
        }
        let conn_config = Arc::new(config.conn.clone());
        let (data_cap, admin_cap) =
            crate::http::conn::fit_to_descriptors(config.max_connections, config.admin_max_connections);
        let tls = match &config.tls {
            Some((cert, key)) => Some(crate::http::tls::Tls::load(cert, key)?),
            None => None,
        };
        if let Some(tls) = tls.clone() {
            background.spawn(named("tls-reloader", reload_tls_on_sighup(tls, last.clone())));
        }
        let data_listener = Listener {
            name: "data",
            listener: data,
            max_connections: data_cap,
            config: conn_config.clone(),
            handler: move |req, peer| router.clone().serve(req, peer),
            tls: tls.clone(),
        };
        let data_loop = spawn_named("data-listener", data_listener.run(shutdown.clone()));
        let admin_listener = Listener {
            name: "admin",
            listener: admin,
            max_connections: admin_cap,
            config: conn_config,
            handler: move |req, peer| crate::routes::serve_admin(admin_state.clone(), req, peer),
            tls: None,
        };
        // The admin listener outlives the data one so that probes see the drain.
        background.spawn(named("admin-listener", admin_listener.run(last.clone())));

        let drain = tokio::spawn(drain(Drain {
            shutdown: shutdown.clone(),
            readiness,
            data_loop,
            pipeline,
            shipper,
            last: last.clone(),
            background: background.clone(),
            drain_timeout: config.drain_timeout,
        }));
        tracing::info!(%addr, %admin_addr, sink = sink.name(), "edge listening");
        Ok(Server { addr, admin_addr, registry, stats, shutdown, background, last, drain })
    }

    /// Runs `task` as one of the named tasks stopped last.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.last.clone();
        self.background.spawn(named(name, async move {
            tokio::select! {
                _ = task => {}
                _ = stop.cancelled() => {}
            }
        }));
    }

    /// Starts the drain; [`Server::wait`] returns when it is done.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(self) {
        let _ = self.drain.await;
    }
}

async fn bind(
    setting: &'static str,
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), StartError> {
    let bound = async {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    };
    bound.await.map_err(|source| StartError::Bind { setting, addr, source })
}

/// SIGHUP re-reads the certificate and key; a bad pair is logged and the current one stays.
async fn reload_tls_on_sighup(tls: Arc<crate::http::tls::Tls>, stop: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            signal = hup.recv() => {
                if signal.is_none() {
                    return;
                }
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the current certificate"),
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// `task`, logging `task stopped` under `name` when it ends.
async fn named<F: Future<Output = ()>>(name: &'static str, task: F) {
    task.await;
    tracing::info!(task = name, "task stopped");
}

/// Opens (and recovers) the spool under the data directory.
fn open_spool(config: &Config, clock: &Clock) -> Result<(Spool, SpoolReader), StartError> {
    let spool_config = SpoolConfig {
        dir: config.data_dir.join("spool"),
        segment_bytes: config.spool_segment_bytes,
        max_bytes: config.spool_max_bytes,
        max_queued_bytes: config.spool_max_queued_bytes,
        ack: config.ack,
        sync_interval: config.spool_sync_interval,
        write_linger: config.spool_write_linger,
        sync_linger: config.spool_sync_linger,
        prefill_below: config.spool_prefill_below,
        clock: clock.clone(),
    };
    let (spool, reader, recovery) =
        Spool::open(&spool_config).map_err(|source| StartError::Spool { dir: spool_config.dir.clone(), source })?;
    if recovery.replay_records > 0 || recovery.damaged_regions > 0 || recovery.truncated_bytes > 0 {
        tracing::warn!(
            segments = recovery.segments,
            replay_events = recovery.replay_rows,
            damaged_regions = recovery.damaged_regions,
            damaged_bytes = recovery.damaged_bytes,
            truncated_bytes = recovery.truncated_bytes,
            "spool recovered: unshipped events will be shipped again"
        );
    }
    Ok((spool, reader))
}

/// The data listener's router with each surface's state: the ingest and control handlers get
/// what they use, and nothing else.
/// What the data surfaces share with the rest of the server.
struct Surfaces {
    limiter: Arc<Limiter>,
    logins: Arc<LoginThrottle>,
    pipeline: Arc<Pipeline>,
    stats: Arc<Stats>,
    db: Option<Db>,
    audit: AuditLog,
}

fn data_router(
    config: &Config,
    registry: Arc<Registry>,
    surfaces: Surfaces,
    clock: &Clock,
) -> Result<DataRouter, StartError> {
    let Surfaces { pipeline, stats, db, audit, limiter, logins } = surfaces;
    let jwt = JwtVerifier::from_config(&config.jwt, config.jwt_cache_capacity)?;
    let budget = MemoryBudget::new(config.max_inflight_body_bytes);
    let signer = match (&config.jwt.signing_key_file, &config.jwt.hs256_secret) {
        (Some(path), _) => Some(Signer::from_pem_file(path)?),
        (None, Some(secret)) => Some(Signer::hs256(secret)),
        (None, None) => None,
    };
    Ok(DataRouter {
        auth: Authenticator::new(jwt, config.admin_token.as_deref(), config.base_domain.clone(), clock.clone())
            .with_allowances(config.audit_lines_per_minute, config.operator_guesses_per_minute)
            .with_audit_sink(audit_sink(audit.clone())),
        registry,
        trusted_proxies: config.trusted_proxies.clone(),
        cors: Cors::new(&config.cors_origins),
        conn: config.conn.clone(),
        ingest: IngestState {
            limiter: limiter.clone(),
            validator: Validator::new(config.body.clone()),
            pipeline,
            stats: stats.clone(),
            budget: budget.clone(),
            conn: config.conn.clone(),
            clock: clock.clone(),
        },
        control: ControlState {
            stats,
            clock: clock.clone(),
            db,
            tiers: config.tiers.clone(),
            clickhouse: config.clickhouse.as_ref().map(crate::sink::clickhouse::client),
            budget,
            conn: config.conn.clone(),
            login: config.login.clone(),
            logins,
            audit,
            limiter,
            signer,
        },
        signup_open: config.signup_open,
    })
}

/// Blocked attempts and operator acts go to the audit log of the organisation whose credential
/// made them and to the operator's stream (`""`); events of no organisation to the latter only.
fn audit_sink(log: AuditLog) -> crate::auth::audit::AuditSink {
    Box::new(move |e| {
        if !e.organization_id.is_empty() {
            log.record(e.organization_id, e.actor, e.action, e.claimed, Some(e.client));
        }
        log.record("", e.actor, e.action, &format!("{}:{}", e.organization_id, e.claimed), Some(e.client));
    })
}

/// What the drain needs, in the order it uses it.
struct Drain {
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
    data_loop: JoinHandle<()>,
    pipeline: Arc<Pipeline>,
    shipper: JoinHandle<()>,
    last: CancellationToken,
    background: TaskTracker,
    drain_timeout: Duration,
}

/// The shutdown order of the module documentation.
async fn drain(d: Drain) {
    d.shutdown.cancelled().await;
    d.readiness.draining.store(true, Ordering::Release);
    let _ = tokio::time::timeout(d.drain_timeout / 2, d.data_loop).await;
    let pipeline = d.pipeline;
    let _ = tokio::task::spawn_blocking(move || pipeline.close()).await;
    if tokio::time::timeout(d.drain_timeout + Duration::from_secs(1), d.shipper).await.is_err() {
        tracing::warn!("drain timeout: unshipped events stay in the spool for the next start");
    }
    d.last.cancel();
    d.background.close();
    if tokio::time::timeout(LAST_TASKS_GRACE, d.background.wait()).await.is_err() {
        tracing::warn!("some background tasks did not stop in time");
    }
}

async fn watch_sink(readiness: Arc<Readiness>, sink: Arc<Sink>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(READY_CHECK_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        readiness.sink_ready.store(sink.ready().await, Ordering::Release);
    }
}
