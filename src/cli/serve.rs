//! `edge serve` and `edge migrate`: start-up as steps (configuration, the organisations'
//! source, the sink, the server, its feeds) and the migrations of both stores.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use super::{fail, load_config, settings, ServeArgs};
use crate::clock::Clock;
use crate::control::feed::{self, Feed, FeedStatus};
use crate::db::Db;
use crate::server::{Server, Sources};
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::local::LocalSink;
use crate::sink::Sink;
use crate::tenant::{load_tenants_file, LoadError, Registry, SdkKey, Snapshot};

pub async fn serve(args: ServeArgs) -> ExitCode {
    raise_open_file_limit();
    let mut config = match load_config(&settings(&args)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut dev_banner = None;
    let dev = if args.dev {
        let dev = match crate::dev::setup(&config.data_dir, &config.tiers) {
            Ok(d) => d,
            Err(e) => return fail(&format!("EDGE_SPOOL_DIR {}: {e}", config.data_dir.display())),
        };
        if config.jwt.hs256_secret.is_none() {
            config.jwt.hs256_secret = Some(dev.jwt_secret.clone());
        }
        let secret = config.jwt.hs256_secret.clone().unwrap_or_default();
        dev_banner = Some((
            SdkKey::from_string(dev.key.expose().to_string()),
            crate::dev::demo_token(&secret, crate::clock::Clock::system().unix_secs()),
        ));
        Some(Arc::new(dev))
    } else {
        None
    };
    if dev.is_none() && config.tenants_file.is_none() && config.postgres.is_none() {
        return fail("no tenants: set DATABASE_URL (the control plane) or EDGE_TENANTS_FILE, or run with --dev");
    }
    // `--dev` serves its demo organisation beside the organisations of the database or the file.
    let base = {
        let dev = dev.clone();
        Arc::new(move || dev.as_ref().map(|d| d.builder()).unwrap_or_default())
    };
    let tenants = {
        let (base, file, tiers) = (base.clone(), config.tenants_file.clone(), config.tiers.clone());
        move || -> Result<Snapshot, LoadError> {
            match &file {
                Some(path) => load_tenants_file(path, &tiers, base()),
                None => Ok(base().build()),
            }
        }
    };
    let clock = Clock::system();
    let (snapshot, db, version) = match &config.postgres {
        Some(pg) => {
            let db = match Db::new(pg) {
                Ok(db) => db,
                Err(e) => return fail(&format!("DATABASE_URL: {e}")),
            };
            if let Err(e) = db.check_service_role().await {
                return fail(&e.to_string());
            }
            match feed::load(&db, &config.tiers, base()).await {
                Ok((snapshot, version)) => (snapshot, Some(db), version),
                Err(e) => return fail(&format!("DATABASE_URL: loading the organisations: {e}")),
            }
        }
        None => match tenants() {
            Ok(s) => (s, None, 0),
            Err(e) => return fail(&format!("invalid configuration: EDGE_TENANTS_FILE: {e}")),
        },
    };
    let sink = match (&config.clickhouse, args.dev) {
        (Some(ch), _) => Sink::ClickHouse(ClickHouseSink::new(ch, config.data_dir.clone())),
        (None, true) => match LocalSink::open(config.data_dir.clone(), config.local_store_max_bytes) {
            Ok(s) => Sink::Local(s),
            Err(e) => return fail(&format!("EDGE_SPOOL_DIR {}: {e}", config.data_dir.display())),
        },
        (None, false) => return fail("invalid configuration: CLICKHOUSE_URL: required (or run with --dev)"),
    };
    let sink_name = match &sink {
        Sink::ClickHouse(_) => {
            format!("ClickHouse at {}", config.clickhouse.as_ref().map(|c| c.url.as_str()).unwrap_or(""))
        }
        _ => format!("{}/local (set CLICKHOUSE_URL to ship to ClickHouse)", config.data_dir.display()),
    };
    // With a database the feed keeps the registry current; the tenants file is then not read.
    let reloadable = config.tenants_file.clone().filter(|_| db.is_none());
    let feed_config = config.postgres.clone();
    let tiers = config.tiers.clone();
    let registry = Arc::new(Registry::new(snapshot));
    let status = Arc::new(FeedStatus::default());
    status.current_at_ms.store(clock.unix_millis(), std::sync::atomic::Ordering::Release);
    let registry_status = db.as_ref().map(|_| status.clone());
    let sources = Sources { registry: registry.clone(), sink, clock: clock.clone(), db: db.clone(), registry_status };
    let server = match Server::start(config, sources).await {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    if let (Some(db), Some(pg)) = (db, feed_config) {
        let feed = Feed { db, config: pg, tiers, registry, base, status, clock, version };
        server.spawn("registry-feed", feed.run());
    }
    if let Some((key, token)) = dev_banner {
        println!("{}", crate::dev::banner(server.addr, server.admin_addr, &key, &token, &sink_name));
    }
    if let Some(path) = reloadable {
        server.spawn("tenants-reloader", reload_on_sighup(path, server.registry.clone(), tenants));
    }
    wait_for_signal().await;
    tracing::info!("shutting down: draining connections and flushing batches");
    server.shutdown();
    server.wait().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP re-reads the tenants file and swaps the registry atomically; a bad file
/// is logged and the current tenants stay in force.
async fn reload_on_sighup(
    path: std::path::PathBuf,
    registry: Arc<Registry>,
    tenants: impl Fn() -> Result<Snapshot, LoadError>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match tenants() {
            Ok(snapshot) => {
                let count = snapshot.org_count();
                registry.replace(snapshot);
                tracing::info!(organizations = count, file = %path.display(), "tenants reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "tenants reload failed; keeping the current tenants")
            }
        }
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn migrate() -> ExitCode {
    let vars: HashMap<String, String> = std::env::vars().collect();
    let config = match load_config(&vars) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.postgres.is_none() && config.clickhouse.is_none() {
        return fail("invalid configuration: DATABASE_URL or CLICKHOUSE_URL: migrate needs at least one");
    }
    let progress = |line: &str| eprintln!("migrate: {line}");
    if let Some(pg) = &config.postgres {
        match crate::migrate::postgres::run_postgres(pg, progress).await {
            Ok(o) => println!("postgres: {} applied, {} already applied", o.applied.len(), o.already),
            Err(e) => return fail(&format!("migrate: {e}")),
        }
    }
    if let Some(ch) = &config.clickhouse {
        match crate::migrate::run_clickhouse(ch, progress).await {
            Ok(o) => println!(
                "clickhouse: {} applied, {} already applied, {} skipped",
                o.applied.len(),
                o.already,
                o.skipped.len()
            ),
            Err(e) => return fail(&format!("migrate: {e}")),
        }
    }
    ExitCode::SUCCESS
}

/// Each connection is a file descriptor; many systems start processes at a soft
/// limit of 1024. Raise it to the hard limit, as servers commonly do.
pub(super) fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-file limit; connections are capped by it");
            }
        }
    }
}
