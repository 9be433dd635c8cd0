//! `edge migrate`: versioned, idempotent DDL for ClickHouse (here) and for the
//! control plane's PostgreSQL ([`postgres`]).
//!
//! Migrations are `migrations/{clickhouse,postgres}/NNN_name.sql`, compiled into the
//! binary so `edge migrate` needs no source tree. Applied versions are
//! recorded in `schema_migrations`; a migration whose first line says
//! `-- min_version: X.Y` runs only on servers at least that new and is not
//! recorded when skipped, so it runs after an upgrade. Statements use
//! `IF NOT EXISTS`, so a run interrupted between a statement and its record
//! is safe to repeat. The database is created when missing.

use clickhouse::Client;

use crate::config::ClickHouseConfig;
use crate::sink::clickhouse::client;

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub mod postgres;

macro_rules! migration {
    ($dir:literal, $version:literal, $file:literal) => {
        Migration { version: $version, name: $file, sql: include_str!(concat!("../../migrations/", $dir, "/", $file)) }
    };
}
pub(crate) use migration;

/// Every ClickHouse migration in order (a test checks this matches the directory).
pub const CLICKHOUSE: &[Migration] = &[
    migration!("clickhouse", 1, "001_events.sql"),
    migration!("clickhouse", 2, "002_events_daily.sql"),
    migration!("clickhouse", 3, "003_low_cardinality.sql"),
    migration!("clickhouse", 4, "004_user_columns.sql"),
];

#[derive(Debug, Default)]
pub struct Outcome {
    pub server_version: String,
    pub applied: Vec<&'static str>,
    pub skipped: Vec<(&'static str, String)>,
    pub already: usize,
}

impl Migration {
    /// The server version this migration needs, from `-- min_version: X.Y`.
    pub fn min_version(&self) -> Option<Vec<u32>> {
        let first = self.sql.lines().next()?.trim();
        let v = first.strip_prefix("--")?.trim().strip_prefix("min_version:")?.trim();
        Some(parse_version(v))
    }

    /// Statements without comments, split at `;` ending a line.
    pub fn statements(&self) -> Vec<String> {
        let text: String =
            self.sql.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
        text.split(";\n")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches(';').to_string())
            .collect()
    }
}

pub fn parse_version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.trim().parse().unwrap_or(0)).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("postgres: {context}: {message}")]
    Postgres { context: &'static str, message: String },
    #[error("postgres: timed out {0}")]
    Timeout(&'static str),
    #[error(
        "EDGE_DB_SERVICE_ROLE {0:?} is a superuser or the migrating role itself; name a role for the service alone"
    )]
    UnsafeServiceRole(String),
    /// The server refused a statement (first line quoted).
    #[error("{source} (in: {statement})")]
    ClickHouse { statement: String, source: clickhouse::error::Error },
    #[error("{migration}: {source}")]
    Migration { migration: &'static str, source: Box<MigrateError> },
}

/// Applies what is missing; `progress` gets one line per step.
pub async fn run_clickhouse(config: &ClickHouseConfig, progress: impl Fn(&str)) -> Result<Outcome, MigrateError> {
    let server = ClickHouseConfig { database: "default".into(), ..config.clone() };
    let root = client(&server).with_compression(clickhouse::Compression::None);
    let version = fetch_text(&root, "SELECT version()").await?;
    let mut outcome = Outcome { server_version: version.trim().to_string(), ..Default::default() };
    progress(&format!("clickhouse {} at {}", outcome.server_version, config.url));
    exec(&root, &format!("CREATE DATABASE IF NOT EXISTS {}", config.database)).await?;

    let db = client(config).with_compression(clickhouse::Compression::None);
    exec(
        &db,
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) \
         ENGINE = MergeTree() ORDER BY version",
    )
    .await?;
    let applied: Vec<u32> = fetch_text(&db, "SELECT version FROM schema_migrations ORDER BY version")
        .await?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let server_version = parse_version(&outcome.server_version);
    for (i, m) in CLICKHOUSE.iter().enumerate() {
        let step = format!("[{}/{}] {}", i + 1, CLICKHOUSE.len(), m.name);
        if applied.contains(&m.version) {
            outcome.already += 1;
            progress(&format!("{step}: already applied"));
            continue;
        }
        if let Some(min) = m.min_version() {
            if server_version < min {
                let why = format!("needs ClickHouse {}, server is {}", join(&min), outcome.server_version);
                progress(&format!("{step}: skipped ({why})"));
                outcome.skipped.push((m.name, why));
                continue;
            }
        }
        for statement in m.statements() {
            match exec(&db, &statement).await {
                // `ADD COLUMN` has no `IF NOT EXISTS` on old servers: a column already there
                // (a run interrupted before its record) is what the statement wanted.
                Err(MigrateError::ClickHouse { source, .. })
                    if statement.contains("ADD COLUMN") && source.to_string().contains("Code: 44") => {}
                other => other.map_err(|e| MigrateError::Migration { migration: m.name, source: Box::new(e) })?,
            }
        }
        // The name is a compile-time constant file name: safe to quote inline.
        exec(&db, &format!("INSERT INTO schema_migrations (version, name) VALUES ({}, '{}')", m.version, m.name))
            .await?;
        progress(&format!("{step}: applied"));
        outcome.applied.push(m.name);
    }
    Ok(outcome)
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

fn refused(sql: &str) -> impl FnOnce(clickhouse::error::Error) -> MigrateError + '_ {
    move |source| MigrateError::ClickHouse { statement: first_line(sql).to_string(), source }
}

async fn exec(client: &Client, sql: &str) -> Result<(), MigrateError> {
    client.query_raw(sql).execute().await.map_err(refused(sql))
}

async fn fetch_text(client: &Client, sql: &str) -> Result<String, MigrateError> {
    let bytes = client
        .query_raw(sql)
        .fetch_bytes("TabSeparated")
        .map_err(refused(sql))?
        .collect()
        .await
        .map_err(refused(sql))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn first_line(sql: &str) -> &str {
    sql.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_match_directories() {
        for (dir, list) in [("clickhouse", CLICKHOUSE), ("postgres", postgres::POSTGRES)] {
            let path = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
            let mut files: Vec<String> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            files.sort();
            let listed: Vec<&str> = list.iter().map(|m| m.name).collect();
            assert_eq!(files, listed);
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1);
                assert!(m.name.starts_with(&format!("{:03}_", m.version)));
            }
        }
    }

    #[test]
    fn statements_and_gates() {
        assert_eq!(CLICKHOUSE[1].statements().len(), 2);
        assert!(CLICKHOUSE[0].min_version().is_none());
        assert_eq!(CLICKHOUSE[2].min_version(), Some(vec![19, 9]));
        assert!(parse_version("18.16.1") < vec![19, 9]);
        assert!(parse_version("23.8.2.7") >= vec![19, 9]);
        for m in CLICKHOUSE {
            for s in m.statements() {
                assert!(!s.contains("--"), "comments stripped");
                assert!(!s.ends_with(';'));
            }
        }
    }
}
