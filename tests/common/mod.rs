//! Shared set-up for integration tests: a real ClickHouse from
//! `scripts/services` (its URL in `EDGE_TEST_CLICKHOUSE_URL`), a fresh database
//! per test, and the edge started in-process on port 0.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edge::clock::Clock;
use edge::config::{ClickHouseConfig, Config};
use edge::server::{Server, Sources};
use edge::sink::clickhouse::ClickHouseSink;
use edge::sink::Sink;
use edge::tenant::{Org, OrgStatus, Registry, SdkKey, SnapshotBuilder};

pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const OPERATOR_TOKEN: &str = "integration-operator-token-0123456789";

/// The URL `scripts/services env` exports in `var`, or `None` (test skipped) unless
/// `EDGE_REQUIRE_SERVICES=1`, which CI sets.
fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("EDGE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{var} is not set; run scripts/test (it starts the services)")
        }
        _ => {
            eprintln!("skipped: {var} not set (scripts/test sets it)");
            None
        }
    }
}

/// The superuser URL of the PostgreSQL `scripts/services` runs.
pub fn postgres_url() -> Option<String> {
    service_url("EDGE_TEST_DATABASE_URL")
}

pub fn clickhouse_url() -> Option<String> {
    service_url("EDGE_TEST_CLICKHOUSE_URL")
}

pub fn redis_url() -> Option<String> {
    service_url("EDGE_TEST_REDIS_URL")
}

pub struct Tenant {
    pub id: &'static str,
    pub key: SdkKey,
}

pub struct Harness {
    pub server: Server,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub ch: Option<ClickHouse>,
    pub acme: Tenant,
    pub bravo: Tenant,
    /// A suspended organisation with a key.
    pub frozen: Tenant,
    /// The spool and local state of this server; removed with the harness.
    pub dir: tempfile::TempDir,
    /// The server's clock: manual when the test asked for one, so the test can move it.
    pub clock: Clock,
}

pub struct Options {
    pub vars: Vec<(&'static str, String)>,
    pub clickhouse: bool,
    pub clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Options { vars: Vec::new(), clickhouse: true, clock: Clock::system() }
    }
}

impl Harness {
    /// `None` when ClickHouse is wanted and not configured (test skipped).
    pub async fn start(options: Options) -> Option<Harness> {
        let ch = if options.clickhouse {
            let url = clickhouse_url()?;
            Some(ClickHouse::fresh(&url).await)
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut vars: HashMap<String, String> = HashMap::from([
            ("EDGE_SPOOL_DIR".into(), dir.path().display().to_string()),
            ("EDGE_LISTEN".into(), "127.0.0.1:0".into()),
            ("EDGE_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("EDGE_ADMIN_TOKEN".into(), OPERATOR_TOKEN.into()),
            ("EDGE_BASE_DOMAIN".into(), "edge.test".into()),
            ("EDGE_BATCH_INTERVAL".into(), "100ms".into()),
            ("EDGE_DRAIN_TIMEOUT".into(), "10s".into()),
        ]);
        if let Some(ch) = &ch {
            vars.insert("CLICKHOUSE_URL".into(), ch.url.clone());
            vars.insert("CLICKHOUSE_DATABASE".into(), ch.database.clone());
        }
        for (k, v) in options.vars {
            vars.insert(k.to_string(), v);
        }
        let config = Config::from_vars(&vars).expect("test config is valid");

        let (acme, bravo, frozen) = (SdkKey::generate(), SdkKey::generate(), SdkKey::generate());
        let mut b = SnapshotBuilder::default();
        let tier = |name: &str| config.tiers.get(name).expect("a SPEC tier").clone();
        let a = b.org(Org::new("org_acme", "Acme", "acme", tier("growth"), OrgStatus::Active)).unwrap();
        let br = b.org(Org::new("org_bravo", "Bravo", "bravo", tier("starter"), OrgStatus::Active)).unwrap();
        let fr = b.org(Org::new("org_frozen", "Frozen", "frozen", tier("starter"), OrgStatus::Suspended)).unwrap();
        b.key(acme.hash(), &a, "app_acme").unwrap();
        b.key(bravo.hash(), &br, "app_bravo").unwrap();
        b.key(frozen.hash(), &fr, "app_frozen").unwrap();
        let registry = Arc::new(Registry::new(b.build()));

        let sink = match &config.clickhouse {
            Some(c) => Sink::ClickHouse(ClickHouseSink::new(c, config.data_dir.clone())),
            None => Sink::Memory(Default::default()),
        };
        let sources = Sources { registry, sink, clock: options.clock.clone(), db: None, registry_status: None };
        let server = Server::start(config, sources).await.expect("server starts");
        Some(Harness {
            base: format!("http://{}", server.addr),
            admin: format!("http://{}", server.admin_addr),
            server,
            http: reqwest::Client::new(),
            ch,
            acme: Tenant { id: "org_acme", key: acme },
            bravo: Tenant { id: "org_bravo", key: bravo },
            frozen: Tenant { id: "org_frozen", key: frozen },
            dir,
            clock: options.clock,
        })
    }

    pub fn post(&self, path: &str, key: &SdkKey) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("x-api-key", key.expose())
    }

    pub fn token(&self, org: &str, permissions: &[&str]) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        edge::auth::jwt::issue_hs256(
            &edge::auth::jwt::Claims::new("user_1", org, permissions, now, 3600),
            JWT_SECRET.as_bytes(),
        )
    }

    /// Stops the server (drain + final flush) and returns the ClickHouse handle.
    pub async fn stop(self) -> Option<ClickHouse> {
        self.server.shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.server.wait()).await.expect("drain finishes");
        self.ch
    }
}

/// A throwaway database on the test ClickHouse, migrated with `edge migrate`'s code.
pub struct ClickHouse {
    pub url: String,
    pub database: String,
    http: reqwest::Client,
}

impl ClickHouse {
    pub async fn fresh(url: &str) -> ClickHouse {
        let database = format!("edge_test_{}", uuid::Uuid::now_v7().simple());
        let config = ClickHouseConfig {
            url: url.into(),
            database: database.clone(),
            user: None,
            password: None,
            compress: true,
        };
        edge::migrate::run_clickhouse(&config, |_| {}).await.expect("migrations apply");
        ClickHouse { url: url.into(), database, http: reqwest::Client::new() }
    }

    /// Runs a query in this database and returns its TSV output.
    pub async fn query(&self, sql: &str) -> String {
        let r = self
            .http
            .post(format!("{}/?database={}", self.url, self.database))
            .body(format!("{sql} FORMAT TabSeparated"))
            .send()
            .await
            .expect("clickhouse reachable");
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{sql}: {text}");
        text
    }

    pub async fn count(&self, sql_where: &str) -> u64 {
        self.query(&format!("SELECT count() FROM events WHERE {sql_where}")).await.trim().parse().unwrap()
    }

    pub async fn drop(&self) {
        let _ = self.http.post(&self.url).body(format!("DROP DATABASE IF EXISTS {}", self.database)).send().await;
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn event(device: &str) -> serde_json::Value {
    serde_json::json!({"event_type": "session", "event_name": "app_open", "device_id": device})
}

/// A running `edge` binary (killed on drop if still running).
pub struct EdgeProcess {
    pub child: std::process::Child,
    pub addr: String,
    /// The admin listener (`/metrics`, `/readyz`).
    pub admin: String,
}

impl EdgeProcess {
    /// Starts `edge serve` with `envs` on a port chosen by the OS; returns once it listens.
    pub fn spawn(envs: &[(&str, String)]) -> EdgeProcess {
        Self::spawn_with(&[], envs)
    }

    /// `edge serve ARGS…` with `envs`.
    pub fn spawn_with(args: &[&str], envs: &[(&str, String)]) -> EdgeProcess {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edge"));
        cmd.arg("serve")
            .args(args)
            .env("EDGE_LISTEN", "127.0.0.1:0")
            .env("EDGE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("edge starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (addr, admin) = loop {
            let line = lines.next().expect("edge logs its address").unwrap();
            if let Some(rest) = line.split(" addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                let admin = line.split(" admin_addr=").nth(1).map_or("", |r| r.split_whitespace().next().unwrap());
                break (addr, admin.to_string());
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        EdgeProcess { child, addr, admin }
    }

    pub fn signal(&self, signal: &str) {
        std::process::Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
    }

    /// Waits for exit; `None` after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tenants file with one organisation (`org_crash`, enterprise) and `key`.
pub fn tenants_file(dir: &std::path::Path, key: &SdkKey) -> std::path::PathBuf {
    let path = dir.join("tenants.toml");
    let text = format!(
        "[[organizations]]\nid = \"org_crash\"\nname = \"Crash\"\nsubdomain = \"crash\"\ntier = \"enterprise\"\n\
         keys = [{{ app_id = \"app\", sha256 = \"{}\" }}]\n",
        key.hash().to_hex()
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl ClickHouse {
    /// Loads `ids` into a scratch table and counts those missing from `events`.
    pub async fn missing_event_ids(&self, ids: &[String]) -> u64 {
        self.query("CREATE TABLE IF NOT EXISTS acked (event_id String) ENGINE = Memory").await;
        for chunk in ids.chunks(50_000) {
            let r = self
                .http
                .post(format!("{}/?database={}&query=INSERT%20INTO%20acked%20FORMAT%20TSV", self.url, self.database))
                .body(chunk.join("\n") + "\n")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
        let missing = self.query("SELECT count() FROM acked WHERE event_id NOT IN (SELECT event_id FROM events)").await;
        missing.trim().parse().unwrap()
    }
}

/// Set-up shared by the tests that run the real binary: a runtime for the
/// client side, a fresh ClickHouse database, a temp dir with a tenants file
/// holding one organisation (`org_crash`) and its key.
pub struct ProcessFixture {
    pub rt: tokio::runtime::Runtime,
    pub ch: ClickHouse,
    pub dir: tempfile::TempDir,
    pub key: SdkKey,
    pub tenants: std::path::PathBuf,
}

impl ProcessFixture {
    /// `None` (test skipped) when no ClickHouse is configured outside CI.
    pub fn new() -> Option<ProcessFixture> {
        let url = clickhouse_url()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let ch = rt.block_on(ClickHouse::fresh(&url));
        let dir = tempfile::tempdir().unwrap();
        let key = SdkKey::generate();
        let tenants = tenants_file(dir.path(), &key);
        Some(ProcessFixture { rt, ch, dir, key, tenants })
    }

    /// Environment for `edge serve` on this fixture, state under `dir/state`.
    pub fn env(&self, clickhouse_url: &str) -> Vec<(&'static str, String)> {
        vec![
            ("EDGE_TENANTS_FILE", self.tenants.display().to_string()),
            ("EDGE_SPOOL_DIR", self.state().display().to_string()),
            ("CLICKHOUSE_URL", clickhouse_url.to_string()),
            ("CLICKHOUSE_DATABASE", self.ch.database.clone()),
        ]
    }

    pub fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }
}

/// A Redis server of the test's own (`redis-server` from `scripts/services`), without
/// persistence, so that it can be stopped or restarted empty without touching anyone else's.
pub struct OwnRedis {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
    pub url: String,
}

impl OwnRedis {
    pub fn start(dir: &std::path::Path) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        OwnRedis {
            child: Self::spawn(dir, port),
            port,
            dir: dir.to_path_buf(),
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    fn spawn(dir: &std::path::Path, port: u16) -> std::process::Child {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kills the server and starts a new, empty one on the same port.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, self.port);
    }

    pub fn signal(&self, signal: &str) {
        std::process::Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
