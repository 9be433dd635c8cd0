//! Configuration: plain data, parsed from a name → value lookup (the process
//! environment, with command-line flags layered on top by [`crate::cli`]).
//!
//! Parsing is separate from reading the environment so it can be tested, and it
//! reports every bad variable at once, one line each, naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::plan::TierTable;

mod control;
mod reader;
mod sections;

pub use control::{LoginConfig, PostgresConfig};
use reader::Reader;
pub use reader::{parse_duration, ConfigError, ValueError};
pub use sections::{AckMode, BatchConfig, BodyLimits, ClickHouseConfig, ConnConfig, IpNet, JwtConfig};

/// Where the edge listens for SDK traffic unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Admin listener: `/metrics`, `/healthz`, `/readyz`; loopback so it is never public by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Mobile SDKs hold connections open; 25k keeps well inside a raised file-descriptor limit.
const DEFAULT_MAX_CONNECTIONS: usize = 25_000;
/// Kubernetes' default grace period is 30 s: drain in half of it, leaving room to exit.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Active users' tokens: ~100 bytes each, so 100k cost ~10 MiB.
const DEFAULT_JWT_CACHE: usize = 100_000;
/// `--dev` only: enough for a day of demo traffic, small enough for a laptop.
const DEFAULT_LOCAL_STORE_BYTES: u64 = 1 << 30;
/// ~1 hour of ClickHouse outage at ~1 MB/s of events; past it the edge says 503.
const DEFAULT_SPOOL_MAX_BYTES: u64 = 4 << 30;
/// The admin listener is for probes and scrapes: a few clients, but never locked out by silent sockets.
const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 4096;
/// Bodies in flight across all requests; 256 MiB is ~25 full batches at once.
const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 256 << 20;
/// Some 400 000 organisation-days of small sketches, or 12 000 of dense ones.
const DEFAULT_STATS_MAX_BYTES: usize = 64 << 20;
/// Four of the writer's largest groups: the writer keeps up unless the disk stalls.
const DEFAULT_SPOOL_MAX_QUEUED_BYTES: u64 = 64 << 20;
/// Big enough that rotation is rare, small enough that shipped space is freed promptly.
const DEFAULT_SPOOL_SEGMENT_BYTES: u64 = 64 << 20;
/// Zero-filled spool segments pay while syncs are frequent and small (each `fdatasync` of an
/// appended file also commits its block allocations). Measured here with 100-event batches:
/// durable acks (~300 KB per sync) 1.1× the events/s with spares, memory acks (~30 MB per
/// sync) 1.2× without; memory acks with single events (~1.5 MB) alike either way.
const DEFAULT_SPOOL_PREFILL_BELOW: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub clickhouse: Option<ClickHouseConfig>,
    /// The control plane (`DATABASE_URL`); without it organisations come from the tenants file.
    pub postgres: Option<PostgresConfig>,
    /// `EDGE_SIGNUP=open`: anyone may create an organisation; `operator` (default): only the
    /// platform operator's token.
    pub signup_open: bool,
    pub login: LoginConfig,
    /// `EDGE_TLS_CERT` and `EDGE_TLS_KEY`: the data listener terminates TLS with them.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Audit lines (and audit-log rows) per client address and minute; more are counted, not written.
    pub audit_lines_per_minute: u32,
    /// Wrong operator-token guesses per client address and minute before 429.
    pub operator_guesses_per_minute: u32,
    pub redis_url: Option<String>,
    /// Fleet sync tick (and slot) length, its timeout, and how long a silent node counts as live.
    pub redis_sync_interval: Duration,
    pub redis_timeout: Duration,
    pub redis_node_ttl: Duration,
    /// This node's id in the fleet and in usage rows (else saved in the data directory).
    pub node_id: Option<String>,
    /// Usage rows: how often a node saves its counts, how often events and devices are read
    /// from ClickHouse, and over how many recent days.
    pub usage_interval: Duration,
    pub usage_rollup_interval: Duration,
    pub usage_rollup_days: u32,
    pub jwt: JwtConfig,
    pub base_domain: Option<String>,
    pub data_dir: PathBuf,
    pub ack: AckMode,
    pub admin_token: Option<String>,
    pub tenants_file: Option<PathBuf>,
    pub body: BodyLimits,
    pub batch: BatchConfig,
    pub tiers: TierTable,
    /// Connections served at once; past it, accepts wait (the kernel backlog queues them).
    pub max_connections: usize,
    /// How long SIGTERM waits for in-flight requests and the final flush.
    pub drain_timeout: Duration,
    /// Verified JWTs remembered so a repeat costs a hash lookup, not a signature check.
    pub jwt_cache_capacity: usize,
    /// Local store for `--dev` without ClickHouse: bound on its size on disk.
    pub local_store_max_bytes: u64,
    /// Unshipped events the spool keeps on disk while ClickHouse is slow or down; past it, 503.
    pub spool_max_bytes: u64,
    /// Segment size: the unit in which shipped data is deleted.
    pub spool_segment_bytes: u64,
    /// With `EDGE_ACK=memory`: how often the spool is synced (what an OS crash may lose).
    pub spool_sync_interval: Duration,
    /// With `EDGE_ACK=memory`: the spool writer's pause between groups (fewer wake-ups).
    pub spool_write_linger: Duration,
    /// With `EDGE_ACK=durable`: the same pause, after groups of many appends only (fewer syncs per request).
    pub spool_sync_linger: Duration,
    /// Zero-fill the next spool segment ahead while syncs average fewer bytes than this.
    pub spool_prefill_below: u64,
    /// In-process daily aggregates (`/api/v1/stats/events` without ClickHouse); oldest days go first.
    pub stats_max_bytes: usize,
    /// Accepted blocks waiting in memory for the spool writer; past it, 503.
    pub spool_max_queued_bytes: u64,
    /// Per-phase connection timeouts and protocol bounds (both listeners).
    pub conn: ConnConfig,
    /// Connections the admin listener serves at once.
    pub admin_max_connections: usize,
    /// Body bytes held in memory by all requests together (raw, decompressed, parse buffers).
    pub max_inflight_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: Vec<IpNet>,
    /// Origins allowed to call the control-plane routes from a browser (`*` for any).
    pub cors_origins: Vec<String>,
}

impl Config {
    /// Parses settings from a name → value map; every problem is returned, not just the first.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, Vec<ConfigError>> {
        let mut r = Reader { vars, errors: Vec::new() };
        let listen = r.parse("EDGE_LISTEN", DEFAULT_LISTEN.parse().expect("valid default"));
        let admin_listen = r.parse("EDGE_ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN.parse().expect("valid default"));
        let clickhouse = ClickHouseConfig::read(&mut r);
        let jwt = JwtConfig::read(&mut r);
        let ack = AckMode::read(&mut r);
        let tenants_file = r.string("EDGE_TENANTS_FILE").map(PathBuf::from);
        if let Some(path) = &tenants_file {
            if !path.is_file() {
                r.fail("EDGE_TENANTS_FILE", format!("{}: no such file", path.display()));
            }
        }
        let admin_token = r.string("EDGE_ADMIN_TOKEN");
        if admin_token.as_ref().is_some_and(|t| t.len() < 24) {
            r.fail("EDGE_ADMIN_TOKEN", "must be at least 24 characters".into());
        }
        let body = BodyLimits::read(&mut r);
        let batch = BatchConfig::read(&mut r);
        let tiers = sections::read_tiers(&mut r);
        let conn = ConnConfig::read(&mut r);
        let cors_origins: Vec<String> = r
            .string("EDGE_CORS_ORIGINS")
            .unwrap_or_default()
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();

        let config = Config {
            listen,
            admin_listen,
            clickhouse,
            postgres: PostgresConfig::read(&mut r),
            login: LoginConfig::read(&mut r),
            tls: match (r.string("EDGE_TLS_CERT"), r.string("EDGE_TLS_KEY")) {
                (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
                (None, None) => None,
                _ => {
                    r.fail("EDGE_TLS_CERT", "EDGE_TLS_CERT and EDGE_TLS_KEY go together".into());
                    None
                }
            },
            audit_lines_per_minute: r.positive("EDGE_AUDIT_LINES_PER_MINUTE", 20) as u32,
            operator_guesses_per_minute: r.positive("EDGE_OPERATOR_GUESSES_PER_MINUTE", 10) as u32,
            signup_open: match r.string("EDGE_SIGNUP").as_deref() {
                None | Some("operator") => false,
                Some("open") => true,
                Some(other) => {
                    r.fail("EDGE_SIGNUP", format!("{other:?}: expected open or operator"));
                    false
                }
            },
            redis_url: r.string("REDIS_URL"),
            redis_sync_interval: r.duration("EDGE_REDIS_SYNC_INTERVAL", Duration::from_millis(50)),
            redis_timeout: r.duration("EDGE_REDIS_TIMEOUT", Duration::from_millis(250)),
            redis_node_ttl: r.duration("EDGE_REDIS_NODE_TTL", Duration::from_secs(3)),
            node_id: r.string("EDGE_NODE_ID"),
            usage_interval: r.duration("EDGE_USAGE_INTERVAL", Duration::from_secs(60)),
            usage_rollup_interval: r.duration("EDGE_USAGE_ROLLUP_INTERVAL", Duration::from_secs(60)),
            usage_rollup_days: r.positive("EDGE_USAGE_ROLLUP_DAYS", 2).min(400) as u32,
            jwt,
            base_domain: r.string("EDGE_BASE_DOMAIN").map(|d| d.trim_start_matches('.').to_ascii_lowercase()),
            data_dir: r.string("EDGE_SPOOL_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("./data")),
            ack,
            admin_token,
            tenants_file,
            body,
            batch,
            tiers,
            max_connections: r.positive("EDGE_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
            drain_timeout: r.duration("EDGE_DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT),
            jwt_cache_capacity: r.positive("EDGE_JWT_CACHE_CAPACITY", DEFAULT_JWT_CACHE),
            local_store_max_bytes: r.parse("EDGE_LOCAL_STORE_MAX_BYTES", DEFAULT_LOCAL_STORE_BYTES),
            spool_max_bytes: r.parse("EDGE_SPOOL_MAX_BYTES", DEFAULT_SPOOL_MAX_BYTES),
            spool_segment_bytes: r.parse("EDGE_SPOOL_SEGMENT_BYTES", DEFAULT_SPOOL_SEGMENT_BYTES),
            spool_sync_interval: r.duration("EDGE_SPOOL_SYNC_INTERVAL", Duration::from_millis(100)),
            // 5 ms rather than 1: groups of ~250 single events instead of ~60 at 64 connections, and half
            // the writer's CPU per request (1.3–1.6 → 0.5–0.9 µs); memory acks never wait for it.
            spool_write_linger: r.duration("EDGE_SPOOL_WRITE_LINGER", Duration::from_millis(5)),
            spool_sync_linger: r.duration("EDGE_SPOOL_SYNC_LINGER", Duration::from_millis(1)),
            spool_prefill_below: r.parse("EDGE_SPOOL_PREFILL_BELOW", DEFAULT_SPOOL_PREFILL_BELOW),
            stats_max_bytes: r.positive("EDGE_STATS_MAX_BYTES", DEFAULT_STATS_MAX_BYTES),
            spool_max_queued_bytes: r.parse("EDGE_SPOOL_MAX_QUEUED_BYTES", DEFAULT_SPOOL_MAX_QUEUED_BYTES),
            trusted_proxies: conn.trusted_proxies.clone(),
            conn,
            admin_max_connections: r.positive("EDGE_ADMIN_MAX_CONNECTIONS", DEFAULT_ADMIN_MAX_CONNECTIONS),
            max_inflight_body_bytes: r.positive("EDGE_MAX_INFLIGHT_BODY_BYTES", DEFAULT_MAX_INFLIGHT_BODY_BYTES),
            cors_origins,
        };
        if r.errors.is_empty() {
            Ok(config)
        } else {
            Err(r.errors)
        }
    }
}

/// A ClickHouse/SQL identifier we are willing to splice into DDL.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.ack, AckMode::Durable);
        assert!(c.clickhouse.is_none());
        assert_eq!(c.body.max_batch_events, 10_000);
    }

    #[test]
    fn every_bad_variable_is_reported() {
        let errs = Config::from_vars(&vars(&[
            ("EDGE_LISTEN", "nope"),
            ("EDGE_ACK", "maybe"),
            ("JWT_SECRET", "short"),
            ("EDGE_BATCH_INTERVAL", "3 fortnights"),
            ("EDGE_MAX_BATCH_EVENTS", "0"),
        ]))
        .unwrap_err();
        let names: Vec<_> = errs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["EDGE_LISTEN", "JWT_SECRET", "EDGE_ACK", "EDGE_MAX_BATCH_EVENTS", "EDGE_BATCH_INTERVAL"]);
        assert!(errs[0].to_string().starts_with("invalid configuration: EDGE_LISTEN:"));
    }

    #[test]
    fn tier_overrides_apply() {
        let c = Config::from_vars(&vars(&[("EDGE_TIER_STARTER_EVENTS_PER_SEC", "5")])).unwrap();
        assert_eq!(c.tiers.get("starter").unwrap().events_per_second, 5);
    }

    #[test]
    fn clickhouse_compression() {
        let compress =
            |settings: &[(&str, &str)]| Config::from_vars(&vars(settings)).unwrap().clickhouse.unwrap().compress;
        for (url, remote) in [
            ("http://127.0.0.1:8123", false),
            ("http://127.8.9.10", false),
            ("https://user:pw@localhost:8443/", false),
            ("http://[::1]:8123", false),
            ("http://clickhouse.internal:8123", true),
            ("http://10.0.0.5:8123/?x=1", true),
            ("http://[2001:db8::1]:8123", true),
            ("http://127.0.0.1.example.com", true),
        ] {
            assert_eq!(compress(&[("CLICKHOUSE_URL", url)]), remote, "LZ4 by default only to a remote server: {url}");
        }
        let url = ("CLICKHOUSE_URL", "http://127.0.0.1:8123");
        assert!(compress(&[url, ("EDGE_CLICKHOUSE_COMPRESSION", "lz4")]));
        let remote = ("CLICKHOUSE_URL", "http://clickhouse:8123");
        assert!(!compress(&[remote, ("EDGE_CLICKHOUSE_COMPRESSION", "none")]));
        assert!(compress(&[remote, ("EDGE_CLICKHOUSE_COMPRESSION", "auto")]));
        let errors = Config::from_vars(&vars(&[url, ("EDGE_CLICKHOUSE_COMPRESSION", "gzip")])).unwrap_err();
        assert_eq!(errors[0].name, "EDGE_CLICKHOUSE_COMPRESSION");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("1y").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("edge_test_1"));
        assert!(!is_identifier("a;drop"));
        assert!(!is_identifier("1abc"));
    }
}
