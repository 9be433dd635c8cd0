//! Configuration: plain data, parsed from a name → value lookup (the process
//! environment, with command-line flags layered on top by [`crate::cli`]).
//!
//! Parsing is separate from reading the environment so it can be tested, and it
//! reports every bad variable at once, one line each, naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::plan::TierTable;

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

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub clickhouse: Option<ClickHouseConfig>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub jwt: JwtConfig,
    pub base_domain: Option<String>,
    pub spool_dir: PathBuf,
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

/// Connection-level bounds: every phase of a connection has a timer.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// From accept until the first bytes tell HTTP/1 from HTTP/2.
    pub detect_timeout: Duration,
    /// HTTP/1: until a request's headers are complete (also the keep-alive idle limit).
    pub header_timeout: Duration,
    /// Until a request's body has fully arrived.
    pub body_timeout: Duration,
    /// HTTP/2: a connection with no open stream is closed after this long.
    pub idle_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// HTTP/2 streams open at once on one connection.
    pub h2_max_streams: u32,
    /// All request headers of one request together (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// One header value.
    pub max_header_value_bytes: usize,
    /// After an early answer (413, 401, …), how much of the unread body is read and
    /// discarded so that a client still sending can read the answer.
    pub early_drain_bytes: usize,
    /// Connections from trusted proxies start with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// Peers whose word (PROXY header, `X-Forwarded-For`) on the client address is taken.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            detect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            h2_max_streams: 32,
            max_header_bytes: 64 << 10,
            max_header_value_bytes: 8 << 10,
            early_drain_bytes: 16 << 20,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An address range (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::*;
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map(V4).unwrap_or(V6(v6)),
            v4 => v4,
        };
        match (self.addr, ip) {
            (V4(net), V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (V6(net), V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| format!("{s:?}: not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("{s:?}: bad prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

#[derive(Clone)]
pub struct JwtConfig {
    pub hs256_secret: Option<Vec<u8>>,
    pub public_keys_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock leeway for `exp`/`nbf`: SDK and server clocks disagree by seconds.
    pub leeway_secs: u64,
    /// Longer bearer tokens are refused before any verification.
    pub max_token_bytes: usize,
    /// Bytes the verified-token cache may hold.
    pub cache_max_bytes: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: None,
            public_keys_file: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            // Real tokens are under 2 KiB; 8 KiB leaves room for many permissions.
            max_token_bytes: 8 << 10,
            cache_max_bytes: 32 << 20,
        }
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "<redacted>"))
            .field("public_keys_file", &self.public_keys_file)
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// 202 only after the events are on disk (needs the spool; see README).
    Durable,
    /// 202 once the events are in memory: lower latency, lost on a crash.
    Memory,
}

/// Request and event size limits (SPEC §3).
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub max_properties_bytes: usize,
    pub max_properties_depth: usize,
    /// Events stamped further ahead than this are refused (clock bugs, not clock skew).
    pub max_future: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_event_bytes: 1 << 20,
            max_batch_bytes: 10 << 20,
            max_batch_events: 10_000,
            max_properties_bytes: 32 << 10,
            max_properties_depth: 32,
            max_future: Duration::from_secs(24 * 3600),
        }
    }
}

/// When the shipper sends a block to the sink.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// ClickHouse likes blocks of 10k–1M rows; 100k keeps parts few without long waits.
    pub max_rows: usize,
    pub max_bytes: usize,
    /// Upper bound on how stale a quiet tenant's events get before they ship.
    pub interval: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_rows: 100_000, max_bytes: 32 << 20, interval: Duration::from_secs(1) }
    }
}

/// One bad setting: the variable's name and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub name: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.name, self.problem)
    }
}

/// Collects errors while parsing so that all of them are reported together.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn string(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        match self.string(name) {
            None => default,
            Some(raw) => match raw.parse::<T>() {
                Ok(v) => v,
                Err(e) => {
                    self.fail(name, format!("{raw:?}: {e}"));
                    default
                }
            },
        }
    }

    fn positive(&mut self, name: &str, default: usize) -> usize {
        let v = self.parse(name, default);
        if v == 0 {
            self.fail(name, "must be greater than 0".into());
            return default;
        }
        v
    }

    fn duration(&mut self, name: &str, default: Duration) -> Duration {
        match self.string(name) {
            None => default,
            Some(raw) => parse_duration(&raw).unwrap_or_else(|e| {
                self.fail(name, e);
                default
            }),
        }
    }

    fn fail(&mut self, name: &str, problem: String) {
        self.errors.push(ConfigError { name: name.to_string(), problem });
    }
}

/// `500ms`, `30s`, `5m`, `1h`, `7d`, or bare seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{raw:?}: expected a duration like 500ms, 30s, 5m, 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(format!("{raw:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    Ok(d)
}

impl Config {
    /// Parses settings from a name → value map; every problem is returned, not just the first.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, Vec<ConfigError>> {
        let mut r = Reader { vars, errors: Vec::new() };
        let listen = r.parse("EDGE_LISTEN", DEFAULT_LISTEN.parse().expect("valid default"));
        let admin_listen = r.parse("EDGE_ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN.parse().expect("valid default"));

        let clickhouse = r.string("CLICKHOUSE_URL").map(|url| {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                r.fail("CLICKHOUSE_URL", format!("{url:?}: expected an http:// or https:// URL"));
            }
            ClickHouseConfig {
                url: url.trim_end_matches('/').to_string(),
                database: r.string("CLICKHOUSE_DATABASE").unwrap_or_else(|| "default".into()),
                user: r.string("CLICKHOUSE_USER"),
                password: r.string("CLICKHOUSE_PASSWORD"),
            }
        });
        if let Some(db) = clickhouse.as_ref().map(|c| c.database.clone()) {
            if !is_identifier(&db) {
                r.fail("CLICKHOUSE_DATABASE", format!("{db:?}: letters, digits and _ only"));
            }
        }

        let jwt = JwtConfig {
            hs256_secret: r.string("JWT_SECRET").map(String::into_bytes),
            public_keys_file: r.string("JWT_PUBLIC_KEYS").map(PathBuf::from),
            jwks_url: r.string("JWT_JWKS_URL"),
            issuer: r.string("JWT_ISSUER"),
            audience: r.string("JWT_AUDIENCE"),
            leeway_secs: r.parse("JWT_LEEWAY_SECS", 30),
            max_token_bytes: r.positive("EDGE_MAX_TOKEN_BYTES", JwtConfig::default().max_token_bytes),
            cache_max_bytes: r.positive("EDGE_JWT_CACHE_BYTES", JwtConfig::default().cache_max_bytes),
        };
        if jwt.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            r.fail("JWT_SECRET", "must be at least 32 bytes (HS256 with a short secret is brute-forceable)".into());
        }
        if jwt.jwks_url.is_some() {
            r.fail("JWT_JWKS_URL", "not supported yet: use JWT_PUBLIC_KEYS with a PEM file".into());
        }
        if let Some(path) = &jwt.public_keys_file {
            if !path.is_file() {
                r.fail("JWT_PUBLIC_KEYS", format!("{}: no such file", path.display()));
            }
        }

        let ack = match r.string("EDGE_ACK").as_deref() {
            None | Some("durable") => AckMode::Durable,
            Some("memory") => AckMode::Memory,
            Some(other) => {
                r.fail("EDGE_ACK", format!("{other:?}: expected durable or memory"));
                AckMode::Durable
            }
        };

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

        let defaults = BodyLimits::default();
        let body = BodyLimits {
            max_event_bytes: r.positive("EDGE_MAX_EVENT_BYTES", defaults.max_event_bytes),
            max_batch_bytes: r.positive("EDGE_MAX_BATCH_BYTES", defaults.max_batch_bytes),
            max_batch_events: r.positive("EDGE_MAX_BATCH_EVENTS", defaults.max_batch_events),
            max_properties_bytes: r.positive("EDGE_MAX_PROPERTIES_BYTES", defaults.max_properties_bytes),
            max_properties_depth: r.positive("EDGE_MAX_PROPERTIES_DEPTH", defaults.max_properties_depth),
            max_future: r.duration("EDGE_MAX_FUTURE", defaults.max_future),
        };
        let defaults = BatchConfig::default();
        let batch = BatchConfig {
            max_rows: r.positive("EDGE_BATCH_MAX_ROWS", defaults.max_rows),
            max_bytes: r.positive("EDGE_BATCH_MAX_BYTES", defaults.max_bytes),
            interval: r.duration("EDGE_BATCH_INTERVAL", defaults.interval),
        };

        let mut tiers = TierTable::default();
        for tier in tiers.tiers_mut() {
            let upper = tier.name.to_ascii_uppercase();
            tier.events_per_second = r.parse(&format!("EDGE_TIER_{upper}_EVENTS_PER_SEC"), tier.events_per_second);
            tier.burst_seconds = r.parse(&format!("EDGE_TIER_{upper}_BURST_SECS"), tier.burst_seconds);
            tier.events_per_month = r.parse(&format!("EDGE_TIER_{upper}_EVENTS_PER_MONTH"), tier.events_per_month);
        }

        let d = ConnConfig::default();
        let conn = ConnConfig {
            detect_timeout: r.duration("EDGE_DETECT_TIMEOUT", d.detect_timeout),
            header_timeout: r.duration("EDGE_HEADER_TIMEOUT", d.header_timeout),
            body_timeout: r.duration("EDGE_BODY_TIMEOUT", d.body_timeout),
            idle_timeout: r.duration("EDGE_IDLE_TIMEOUT", d.idle_timeout),
            write_timeout: r.duration("EDGE_WRITE_TIMEOUT", d.write_timeout),
            h2_max_streams: r.positive("EDGE_H2_MAX_STREAMS", d.h2_max_streams as usize).min(u32::MAX as usize) as u32,
            max_header_bytes: r.positive("EDGE_MAX_HEADER_BYTES", d.max_header_bytes).max(8192),
            max_header_value_bytes: r.positive("EDGE_MAX_HEADER_VALUE_BYTES", d.max_header_value_bytes),
            early_drain_bytes: r.parse("EDGE_EARLY_DRAIN_BYTES", d.early_drain_bytes),
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
        };
        let mut conn = conn;
        for (name, value) in [
            ("EDGE_DETECT_TIMEOUT", conn.detect_timeout),
            ("EDGE_HEADER_TIMEOUT", conn.header_timeout),
            ("EDGE_BODY_TIMEOUT", conn.body_timeout),
            ("EDGE_IDLE_TIMEOUT", conn.idle_timeout),
            ("EDGE_WRITE_TIMEOUT", conn.write_timeout),
        ] {
            if value.is_zero() {
                r.fail(name, "must be greater than 0".into());
            }
        }
        let mut trusted_proxies = Vec::new();
        for item in r.string("EDGE_TRUSTED_PROXIES").unwrap_or_default().split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            match item.parse::<IpNet>() {
                Ok(net) => trusted_proxies.push(net),
                Err(e) => r.fail("EDGE_TRUSTED_PROXIES", e),
            }
        }
        conn.trusted_proxies = trusted_proxies.clone();
        conn.proxy_protocol = match r.string("EDGE_PROXY_PROTOCOL").as_deref() {
            None | Some("off") => false,
            Some("on") if !trusted_proxies.is_empty() => true,
            Some("on") => {
                r.fail("EDGE_PROXY_PROTOCOL", "on needs EDGE_TRUSTED_PROXIES (whose headers to believe)".into());
                false
            }
            Some(other) => {
                r.fail("EDGE_PROXY_PROTOCOL", format!("{other:?}: expected on or off"));
                false
            }
        };
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
            database_url: r.string("DATABASE_URL"),
            redis_url: r.string("REDIS_URL"),
            jwt,
            base_domain: r.string("EDGE_BASE_DOMAIN").map(|d| d.trim_start_matches('.').to_ascii_lowercase()),
            spool_dir: r.string("EDGE_SPOOL_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("./data")),
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
            stats_max_bytes: r.positive("EDGE_STATS_MAX_BYTES", DEFAULT_STATS_MAX_BYTES),
            spool_max_queued_bytes: r.parse("EDGE_SPOOL_MAX_QUEUED_BYTES", DEFAULT_SPOOL_MAX_QUEUED_BYTES),
            conn,
            admin_max_connections: r.positive("EDGE_ADMIN_MAX_CONNECTIONS", DEFAULT_ADMIN_MAX_CONNECTIONS),
            max_inflight_body_bytes: r.positive("EDGE_MAX_INFLIGHT_BODY_BYTES", DEFAULT_MAX_INFLIGHT_BODY_BYTES),
            trusted_proxies,
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
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
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
