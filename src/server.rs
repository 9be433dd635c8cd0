//! The server: binds both listeners, builds each surface's state (ingest,
//! control, admin) once, wires them to the route table ([`crate::routes`]),
//! and runs the drain on shutdown.
//!
//! Shutdown protocol (SIGTERM, or [`Server::shutdown`]): mark draining
//! (`/readyz` turns 503 so load balancers stop sending), stop accepting,
//! let in-flight requests finish, close the spool (its writer syncs what is
//! queued), then let the shipper send what it can within `drain_timeout`;
//! the rest stays in the spool for the next start. Only then does
//! [`Server::wait`] return.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aggregates::Stats;
use crate::auth::jwt::JwtVerifier;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::control::ControlState;
use crate::event::validate::Validator;
use crate::http::budget::MemoryBudget;
use crate::http::conn::Listener;
use crate::http::cors::Cors;
use crate::ingest::IngestState;
use crate::limits::Limiter;
use crate::pipeline::Pipeline;
use crate::routes::{AdminState, DataRouter, Readiness};
use crate::shipper::Shipper;
use crate::sink::Sink;
use crate::spool::{Spool, SpoolConfig};
use crate::tenant::Registry;

/// How often `/readyz`'s view of the sink is refreshed (off the request path).
const READY_CHECK_INTERVAL: Duration = Duration::from_secs(2);

pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The tenants (the SIGHUP reloader replaces them).
    pub registry: Arc<Registry>,
    /// The in-process daily aggregates.
    pub stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds and starts serving; returns once both listeners accept.
    pub async fn start(config: Config, registry: Arc<Registry>, sink: Sink) -> Result<Server, String> {
        let metrics = crate::metrics::install();
        registry.publish_gauge();
        let jwt = JwtVerifier::from_config(&config.jwt, config.jwt_cache_capacity)?;
        let auth = Authenticator::new(jwt, config.admin_token.as_deref(), config.base_domain.clone());
        let spool_config = SpoolConfig {
            dir: config.data_dir.join("spool"),
            segment_bytes: config.spool_segment_bytes,
            max_bytes: config.spool_max_bytes,
            max_queued_bytes: config.spool_max_queued_bytes,
            ack: config.ack,
        };
        let (spool, reader, recovery) =
            Spool::open(&spool_config).map_err(|e| format!("EDGE_SPOOL_DIR {}: {e}", spool_config.dir.display()))?;
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
        let sink = Arc::new(sink);
        let pipeline = Arc::new(Pipeline::new(spool));
        let stats = Arc::new(Stats::new(config.stats_max_bytes));
        let readiness = Arc::new(Readiness::default());
        readiness.sink_ready.store(sink.ready().await, Ordering::Release);
        // Each surface gets the state it uses, and nothing else.
        let router = Arc::new(DataRouter {
            auth,
            registry: registry.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            cors: Cors::new(&config.cors_origins),
            conn: config.conn.clone(),
            ingest: IngestState {
                limiter: Limiter::new(),
                validator: Validator::new(config.body.clone()),
                pipeline: pipeline.clone(),
                stats: stats.clone(),
                budget: MemoryBudget::new(config.max_inflight_body_bytes),
                conn: config.conn.clone(),
            },
            control: ControlState { stats: stats.clone() },
        });
        let admin_state = Arc::new(AdminState { metrics, readiness: readiness.clone() });
        crate::routes::register_series();

        let data = TcpListener::bind(config.listen).await.map_err(|e| format!("EDGE_LISTEN {}: {e}", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| format!("EDGE_ADMIN_LISTEN {}: {e}", config.admin_listen))?;
        let addr = data.local_addr().map_err(|e| e.to_string())?;
        let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (stop_shipping, stop_rx) = watch::channel(false);
        let shipper = Shipper { config: config.batch.clone(), sink: sink.clone(), reader };
        let shipper = tokio::spawn(shipper.run(stop_rx, config.drain_timeout));
        let ready_task = tokio::spawn(watch_sink(readiness.clone(), sink.clone(), shutdown_rx.clone()));
        let conn_config = Arc::new(config.conn.clone());
        let (data_cap, admin_cap) =
            crate::http::conn::fit_to_descriptors(config.max_connections, config.admin_max_connections);
        let data_loop = tokio::spawn(
            Listener {
                name: "data",
                listener: data,
                max_connections: data_cap,
                config: conn_config.clone(),
                handler: move |req| router.clone().serve(req),
            }
            .run(shutdown_rx.clone()),
        );
        let admin_loop = tokio::spawn(
            Listener {
                name: "admin",
                listener: admin,
                max_connections: admin_cap,
                config: conn_config,
                handler: move |req| crate::routes::serve_admin(admin_state.clone(), req),
            }
            .run(shutdown_rx.clone()),
        );

        let drain_timeout = config.drain_timeout;
        let task = tokio::spawn(async move {
            let mut rx = shutdown_rx;
            stopped(&mut rx).await;
            readiness.draining.store(true, Ordering::Release);
            // In-flight requests finish (or are cut at half the drain budget), then the spool
            // writer syncs what it holds, then the shipper sends what it can.
            let _ = tokio::time::timeout(drain_timeout / 2, data_loop).await;
            let _ = tokio::task::spawn_blocking(move || pipeline.close()).await;
            let _ = stop_shipping.send(true);
            if tokio::time::timeout(drain_timeout + Duration::from_secs(1), shipper).await.is_err() {
                tracing::warn!("drain timeout: unshipped events stay in the spool for the next start");
            }
            admin_loop.abort();
            ready_task.abort();
        });
        tracing::info!(%addr, %admin_addr, sink = sink.name(), "edge listening");
        Ok(Server { addr, admin_addr, registry, stats, shutdown, task })
    }

    /// Starts the drain; [`Server::wait`] returns when it is done.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn watch_sink(readiness: Arc<Readiness>, sink: Arc<Sink>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(READY_CHECK_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        readiness.sink_ready.store(sink.ready().await, Ordering::Release);
    }
}

/// Resolves once shutdown is requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
