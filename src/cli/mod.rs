//! The `edge` command line. Flags mirror environment variables (a flag wins);
//! both go through [`Config::from_vars`], so every bad setting is reported at
//! once, one line each, before anything starts.

mod spool;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::jwt::{issue_hs256, Claims};
use crate::config::{parse_duration, Config};
use crate::server::Server;
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::local::LocalSink;
use crate::sink::Sink;
use crate::tenant::{load_tenants_file, Registry, SdkKey};

#[derive(Parser)]
#[command(
    name = "edge",
    version,
    about = "UnMoGrowP Edge: multi-tenant event ingestion into ClickHouse",
    long_about = "UnMoGrowP Edge: SDKs POST events; the edge authenticates the tenant, rate-limits it by tier, \
validates the events and ships them to ClickHouse in large batches.\n\n\
Configuration comes from the environment (see README.md for every variable); flags override it."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "EDGE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge server.
    Serve(ServeArgs),
    /// Apply ClickHouse migrations (CLICKHOUSE_URL) in order, idempotently.
    Migrate,
    /// Issue tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage SDK keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Look into or mend the spool (EDGE_SPOOL_DIR/spool); run while the edge is stopped.
    #[command(subcommand)]
    Spool(SpoolCommand),
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Segments, sizes, records, unshipped events, damaged regions.
    Inspect {
        /// The data directory [env: EDGE_SPOOL_DIR, default ./data].
        #[arg(long, alias = "spool-dir", env = "EDGE_SPOOL_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
    /// Rewrites damaged segments keeping every intact record.
    Repair {
        #[arg(long, alias = "spool-dir", env = "EDGE_SPOOL_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Embedded default: a demo organisation, app and key in memory; no external service needed.
    #[arg(long)]
    dev: bool,
    /// Data listener address [env: EDGE_LISTEN, default 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Admin listener (/metrics, /healthz, /readyz) [env: EDGE_ADMIN_LISTEN, default 127.0.0.1:9090].
    #[arg(long)]
    admin_listen: Option<String>,
    /// ClickHouse HTTP URL [env: CLICKHOUSE_URL].
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// The data directory: spool, dev credentials, local store, dead letters
    /// [env: EDGE_SPOOL_DIR, default ./data].
    #[arg(long, alias = "spool-dir")]
    data_dir: Option<String>,
    /// Static tenants in TOML [env: EDGE_TENANTS_FILE].
    #[arg(long)]
    tenants_file: Option<String>,
    /// durable | memory [env: EDGE_ACK].
    #[arg(long)]
    ack: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an HS256 JWT signed with JWT_SECRET.
    Issue {
        #[arg(long)]
        org: String,
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long, default_value = "events:write,events:read", value_delimiter = ',')]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        email: String,
        #[arg(long, default_value = "member")]
        role: String,
        /// Bind the token to one app.
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate an SDK key; prints the key once and the tenants-file line holding its hash.
    Create {
        #[arg(long)]
        org: String,
        #[arg(long)]
        app: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Migrate => runtime.block_on(migrate()),
        Command::Token(TokenCommand::Issue { org, user, ttl, permissions, email, role, app }) => {
            token_issue(org, user, &ttl, permissions, email, role, app)
        }
        Command::Spool(SpoolCommand::Inspect { data_dir }) => spool::inspect(&data_dir.join("spool")),
        Command::Spool(SpoolCommand::Repair { data_dir }) => spool::repair(&data_dir.join("spool")),
        Command::Key(KeyCommand::Create { org, app }) => {
            let key = SdkKey::generate();
            println!("key: {}", key.expose());
            println!("# tenants file, under the [[organizations]] entry with id = \"{org}\":");
            println!("keys = [{{ app_id = \"{app}\", sha256 = \"{}\" }}]", key.hash().to_hex());
            ExitCode::SUCCESS
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn fail(line: &str) -> ExitCode {
    eprintln!("edge: {line}");
    ExitCode::from(2)
}

/// The environment with flags laid over it.
fn settings(args: &ServeArgs) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    let flags = [
        ("EDGE_LISTEN", &args.listen),
        ("EDGE_ADMIN_LISTEN", &args.admin_listen),
        ("CLICKHOUSE_URL", &args.clickhouse_url),
        ("EDGE_SPOOL_DIR", &args.data_dir),
        ("EDGE_TENANTS_FILE", &args.tenants_file),
        ("EDGE_ACK", &args.ack),
    ];
    for (name, value) in flags {
        if let Some(v) = value {
            vars.insert(name.to_string(), v.clone());
        }
    }
    vars
}

fn load_config(vars: &HashMap<String, String>) -> Result<Config, ExitCode> {
    Config::from_vars(vars).map_err(|errors| {
        for e in &errors {
            eprintln!("edge: {e}");
        }
        ExitCode::from(2)
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
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
    if dev.is_none() && config.tenants_file.is_none() {
        return fail(
            "no tenants: set EDGE_TENANTS_FILE (the PostgreSQL control plane is not available yet), or run with --dev",
        );
    }
    let tenants = {
        let (dev, file, tiers) = (dev.clone(), config.tenants_file.clone(), config.tiers.clone());
        // `--dev` with a tenants file serves both: the demo organisation and the file's.
        move || -> Result<crate::tenant::Snapshot, crate::tenant::LoadError> {
            let builder = dev.as_ref().map(|d| d.builder()).unwrap_or_default();
            match &file {
                Some(path) => load_tenants_file(path, &tiers, builder),
                None => Ok(builder.build()),
            }
        }
    };
    let snapshot = match tenants() {
        Ok(s) => s,
        Err(e) => return fail(&format!("invalid configuration: EDGE_TENANTS_FILE: {e}")),
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
    let reloadable = config.tenants_file.clone();
    let server =
        match Server::start(config, Arc::new(Registry::new(snapshot)), sink, crate::clock::Clock::system()).await {
            Ok(s) => s,
            Err(e) => return fail(&e.to_string()),
        };
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
    tenants: impl Fn() -> Result<crate::tenant::Snapshot, crate::tenant::LoadError>,
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

async fn migrate() -> ExitCode {
    let vars: HashMap<String, String> = std::env::vars().collect();
    let config = match load_config(&vars) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.database_url.is_some() {
        eprintln!("edge: DATABASE_URL is set, but PostgreSQL migrations are not available yet; skipping them");
    }
    let Some(ch) = &config.clickhouse else {
        return fail("invalid configuration: CLICKHOUSE_URL: required for migrate");
    };
    match crate::migrate::run_clickhouse(ch, |line| eprintln!("migrate: {line}")).await {
        Ok(outcome) => {
            println!(
                "clickhouse: {} applied, {} already applied, {} skipped",
                outcome.applied.len(),
                outcome.already,
                outcome.skipped.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("migrate: {e}")),
    }
}

#[allow(clippy::too_many_arguments)]
fn token_issue(
    org: String,
    user: String,
    ttl: &str,
    permissions: Vec<String>,
    email: String,
    role: String,
    app: Option<String>,
) -> ExitCode {
    let Some(secret) = std::env::var("JWT_SECRET").ok().filter(|s| s.len() >= 32) else {
        return fail("invalid configuration: JWT_SECRET: required (at least 32 bytes) to issue tokens");
    };
    let ttl = match parse_duration(ttl) {
        Ok(d) => d,
        Err(e) => return fail(&format!("--ttl: {e}")),
    };
    let now = crate::clock::Clock::system().unix_secs();
    let perms: Vec<&str> = permissions.iter().map(String::as_str).collect();
    let claims = Claims {
        email,
        role,
        app_id: app,
        iss: std::env::var("JWT_ISSUER").ok(),
        aud: std::env::var("JWT_AUDIENCE").ok().map(Into::into),
        ..Claims::new(&user, &org, &perms, now, ttl.as_secs())
    };
    println!("{}", issue_hs256(&claims, secret.as_bytes()));
    ExitCode::SUCCESS
}

/// Each connection is a file descriptor; many systems start processes at a soft
/// limit of 1024. Raise it to the hard limit, as servers commonly do.
fn raise_open_file_limit() {
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
