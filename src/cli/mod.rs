//! The `edge` command line. Flags mirror environment variables (a flag wins);
//! both go through [`Config::from_vars`], so every bad setting is reported at
//! once, one line each, before anything starts.

mod control;
mod serve;
mod spool;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::jwt::{issue_hs256, Claims};
use crate::config::{parse_duration, Config};
use crate::tenant::SdkKey;

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
    /// Apply PostgreSQL (DATABASE_URL, as the owner) and ClickHouse (CLICKHOUSE_URL) migrations
    /// in order, idempotently; creates the service role (EDGE_DB_SERVICE_ROLE).
    Migrate,
    /// Manage organisations in PostgreSQL (DATABASE_URL).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Move a tenants file into PostgreSQL (DATABASE_URL), keeping ids and key hashes; safe to rerun.
    ImportTenants {
        /// The tenants file (TOML, as EDGE_TENANTS_FILE).
        file: std::path::PathBuf,
    },
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
enum OrgCommand {
    /// Create an organisation with its super_admin (a one-time set-password token is printed),
    /// a default app and its first SDK key.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        subdomain: String,
        #[arg(long)]
        admin_email: String,
        #[arg(long, default_value = "starter")]
        tier: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate an SDK key, printed once: stored in PostgreSQL when DATABASE_URL is set (the app
    /// is created if missing), otherwise with the tenants-file line holding its hash.
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
        Command::Serve(args) => runtime.block_on(serve::serve(args)),
        Command::Migrate => runtime.block_on(serve::migrate()),
        Command::Token(TokenCommand::Issue { org, user, ttl, permissions, email, role, app }) => {
            token_issue(org, user, &ttl, permissions, email, role, app)
        }
        Command::Spool(SpoolCommand::Inspect { data_dir }) => spool::inspect(&data_dir.join("spool")),
        Command::Spool(SpoolCommand::Repair { data_dir }) => spool::repair(&data_dir.join("spool")),
        Command::Org(OrgCommand::Create { name, subdomain, admin_email, tier }) => {
            runtime.block_on(control::org_create(&name, &subdomain, &admin_email, &tier))
        }
        Command::ImportTenants { file } => runtime.block_on(control::import_tenants(&file)),
        Command::Key(KeyCommand::Create { org, app }) if std::env::var_os("DATABASE_URL").is_some() => {
            runtime.block_on(control::key_create(&org, &app))
        }
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
