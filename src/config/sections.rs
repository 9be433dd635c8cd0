//! The configuration's sections: plain data, each with its defaults and its reader.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::reader::Reader;
use crate::plan::TierTable;

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
    type Err = super::ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| super::ValueError::NotAnAddress(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| super::ValueError::BadPrefix(s.into()))?,
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
    /// LZ4 on the wire saves bandwidth to a remote server; on loopback it only costs both
    /// sides CPU (a fifth of the edge's while it drained a spool into a local ClickHouse), so
    /// by default (`auto`) it is off for a loopback URL.
    pub compress: bool,
}

#[derive(Clone)]
pub struct JwtConfig {
    pub hs256_secret: Option<Vec<u8>>,
    pub public_keys_file: Option<PathBuf>,
    /// PKCS#8 PEM private key (Ed25519 or P-256) that signs login tokens instead of the secret.
    pub signing_key_file: Option<PathBuf>,
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
            signing_key_file: None,
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
    /// Upper bound on how stale events get before they ship while more keep arriving.
    pub interval: Duration,
    /// Once the spool is drained and nothing new has come for this long, the tail ships.
    pub idle: Duration,
    /// At least this long between two inserts that are not full blocks, so a trickle of events
    /// does not become a stream of tiny inserts (each one a part ClickHouse must merge).
    pub min_spacing: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 100_000,
            max_bytes: 32 << 20,
            interval: Duration::from_secs(1),
            idle: Duration::from_millis(20),
            min_spacing: Duration::from_millis(250),
        }
    }
}

impl ConnConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
        let d = ConnConfig::default();
        let mut conn = ConnConfig {
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
        for item in r.string("EDGE_TRUSTED_PROXIES").unwrap_or_default().split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            match item.parse::<IpNet>() {
                Ok(net) => conn.trusted_proxies.push(net),
                Err(e) => r.fail("EDGE_TRUSTED_PROXIES", e.to_string()),
            }
        }
        conn.proxy_protocol = match r.string("EDGE_PROXY_PROTOCOL").as_deref() {
            None | Some("off") => false,
            Some("on") if !conn.trusted_proxies.is_empty() => true,
            Some("on") => {
                r.fail("EDGE_PROXY_PROTOCOL", "on needs EDGE_TRUSTED_PROXIES (whose headers to believe)".into());
                false
            }
            Some(other) => {
                r.fail("EDGE_PROXY_PROTOCOL", format!("{other:?}: expected on or off"));
                false
            }
        };
        conn
    }
}

/// Whether an http(s) URL names this host: `localhost`, 127.0.0.0/8 or `[::1]`.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ClickHouseConfig {
    pub(super) fn read(r: &mut Reader) -> Option<Self> {
        let clickhouse = r.string("CLICKHOUSE_URL").map(|url| {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                r.fail("CLICKHOUSE_URL", format!("{url:?}: expected an http:// or https:// URL"));
            }
            ClickHouseConfig {
                url: url.trim_end_matches('/').to_string(),
                database: r.string("CLICKHOUSE_DATABASE").unwrap_or_else(|| "default".into()),
                user: r.string("CLICKHOUSE_USER"),
                password: r.string("CLICKHOUSE_PASSWORD"),
                compress: true,
            }
        });
        let compress = match r.string("EDGE_CLICKHOUSE_COMPRESSION").as_deref() {
            None | Some("auto") => None,
            Some("lz4") => Some(true),
            Some("none") => Some(false),
            Some(other) => {
                r.fail("EDGE_CLICKHOUSE_COMPRESSION", format!("{other:?}: expected auto, lz4 or none"));
                None
            }
        };
        let clickhouse = clickhouse
            .map(|c| ClickHouseConfig { compress: compress.unwrap_or_else(|| !is_loopback_url(&c.url)), ..c });
        if let Some(db) = clickhouse.as_ref().map(|c| c.database.clone()) {
            if !super::is_identifier(&db) {
                r.fail("CLICKHOUSE_DATABASE", format!("{db:?}: letters, digits and _ only"));
            }
        }
        clickhouse
    }
}

impl JwtConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
        let jwt = JwtConfig {
            hs256_secret: r.string("JWT_SECRET").map(String::into_bytes),
            public_keys_file: r.string("JWT_PUBLIC_KEYS").map(PathBuf::from),
            signing_key_file: r.string("EDGE_JWT_SIGNING_KEY").map(PathBuf::from),
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
        jwt
    }
}

impl AckMode {
    pub(super) fn read(r: &mut Reader) -> Self {
        match r.string("EDGE_ACK").as_deref() {
            None | Some("durable") => AckMode::Durable,
            Some("memory") => AckMode::Memory,
            Some(other) => {
                r.fail("EDGE_ACK", format!("{other:?}: expected durable or memory"));
                AckMode::Durable
            }
        }
    }
}

impl BodyLimits {
    pub(super) fn read(r: &mut Reader) -> Self {
        let d = BodyLimits::default();
        BodyLimits {
            max_event_bytes: r.positive("EDGE_MAX_EVENT_BYTES", d.max_event_bytes),
            max_batch_bytes: r.positive("EDGE_MAX_BATCH_BYTES", d.max_batch_bytes),
            max_batch_events: r.positive("EDGE_MAX_BATCH_EVENTS", d.max_batch_events),
            max_properties_bytes: r.positive("EDGE_MAX_PROPERTIES_BYTES", d.max_properties_bytes),
            max_properties_depth: r.positive("EDGE_MAX_PROPERTIES_DEPTH", d.max_properties_depth),
            max_future: r.duration("EDGE_MAX_FUTURE", d.max_future),
        }
    }
}

impl BatchConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
        let d = BatchConfig::default();
        BatchConfig {
            max_rows: r.positive("EDGE_BATCH_MAX_ROWS", d.max_rows),
            max_bytes: r.positive("EDGE_BATCH_MAX_BYTES", d.max_bytes),
            interval: r.duration("EDGE_BATCH_INTERVAL", d.interval),
            idle: r.duration("EDGE_BATCH_IDLE", d.idle),
            min_spacing: r.duration("EDGE_BATCH_MIN_SPACING", d.min_spacing),
        }
    }
}

/// The SPEC §4 table with `EDGE_TIER_<TIER>_*` overrides.
pub(super) fn read_tiers(r: &mut Reader) -> TierTable {
    let mut tiers = TierTable::default();
    for tier in tiers.tiers_mut() {
        let upper = tier.name.to_ascii_uppercase();
        tier.events_per_second = r.parse(&format!("EDGE_TIER_{upper}_EVENTS_PER_SEC"), tier.events_per_second);
        tier.burst_seconds = r.parse(&format!("EDGE_TIER_{upper}_BURST_SECS"), tier.burst_seconds);
        tier.events_per_month = r.parse(&format!("EDGE_TIER_{upper}_EVENTS_PER_MONTH"), tier.events_per_month);
        tier.api_requests_per_minute =
            r.parse(&format!("EDGE_TIER_{upper}_API_REQUESTS_PER_MINUTE"), tier.api_requests_per_minute);
    }
    tiers
}
