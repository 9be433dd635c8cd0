//! Hostile clients against the real binary on real sockets (`edge serve --dev` with a
//! tenants file, local store: no external service needed). Each test reproduces an
//! attack from the hardening issue and checks the edge's bound.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge::auth::jwt::{issue_hs256, Claims};
use edge::tenant::SdkKey;

/// A running `edge serve --dev` with three starter organisations in a tenants file.
struct Dev {
    child: std::process::Child,
    addr: String,
    admin: String,
    dir: tempfile::TempDir,
    /// Keys of `org_q`, `org_p`, `org_r` (starter), `org_b` (growth, subdomain `bravo`).
    keys: [SdkKey; 4],
    log_bytes: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
}

const ORGS: [(&str, &str, &str); 4] = [
    ("org_q", "quota", "starter"),
    ("org_p", "parallel", "starter"),
    ("org_r", "race", "starter"),
    ("org_b", "bravo", "growth"),
];

impl Dev {
    fn start(envs: &[(&str, &str)]) -> Dev {
        Self::start_with_limit(envs, None)
    }

    fn start_with_limit(envs: &[(&str, &str)], open_files: Option<u64>) -> Dev {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let keys = [SdkKey::generate(), SdkKey::generate(), SdkKey::generate(), SdkKey::generate()];
        let mut toml = String::new();
        for ((id, sub, tier), key) in ORGS.iter().zip(&keys) {
            toml += &format!(
                "[[organizations]]\nid = \"{id}\"\nname = \"{id}\"\nsubdomain = \"{sub}\"\ntier = \"{tier}\"\n\
                 keys = [{{ app_id = \"app_{sub}\", sha256 = \"{}\" }}]\n\n",
                key.hash().to_hex()
            );
        }
        let tenants = dir.path().join("tenants.toml");
        std::fs::write(&tenants, toml).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edge"));
        cmd.args(["serve", "--dev"])
            .env("EDGE_LISTEN", "127.0.0.1:0")
            .env("EDGE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("EDGE_SPOOL_DIR", dir.path().join("state"))
            .env("EDGE_TENANTS_FILE", &tenants)
            .env("EDGE_BASE_DOMAIN", "edge.test")
            .env("EDGE_TIER_STARTER_EVENTS_PER_MONTH", "100")
            .env("EDGE_BATCH_INTERVAL", "100ms")
            .env("EDGE_ACK", "durable")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("CLICKHOUSE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it only lowers this child's limit.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("edge starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr, admin) = loop {
            let line = lines.next().expect("edge logs its address").unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split(" addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                let admin = line.split(" admin_addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
                break (addr, admin);
            }
        };
        let log_bytes = Arc::new(AtomicUsize::new(0));
        let (bytes, kept) = (log_bytes.clone(), log.clone());
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                bytes.fetch_add(line.len() + 1, Ordering::Relaxed);
                let mut kept = kept.lock().unwrap();
                if kept.len() < 10_000 {
                    kept.push(line);
                }
            }
        });
        Dev { child, addr, admin, dir, keys, log_bytes, log }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// A user token for `org` signed with the dev secret.
    fn token(&self, org: &str, permissions: &[&str]) -> String {
        let creds = std::fs::read_to_string(self.dir.path().join("state/dev-credentials")).unwrap();
        let secret = creds.lines().nth(1).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        issue_hs256(&Claims::new("u", org, permissions, now, 3600), secret.as_bytes())
    }

    fn log_contains(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Lines reach the log reader a little after the answer: wait (up to 2 s) for `at_least`.
    fn log_has(&self, needle: &str, at_least: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if self.log_contains(needle) >= at_least {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes and reads one HTTP/1 response (head + `Content-Length` body).
fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String, String) {
    stream.write_all(request).unwrap();
    read_response(stream)
}

fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, head, body);
            }
        }
        let n = stream.read(&mut chunk).expect("response arrives");
        assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn post(path: &str, key: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn batch(prefix: &str, n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"event_type":"session","event_name":"open","device_id":"{prefix}-{i}"}}"#))
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn raise_open_file_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

const MIB: u64 = 1024;

#[test]
fn promised_bodies_cost_nothing_until_they_arrive() {
    let dev = Dev::start(&[("EDGE_BODY_TIMEOUT", "3s")]);
    let key = dev.keys[3].expose().to_string();
    let mut warm = dev.connect();
    assert_eq!(exchange(&mut warm, &post("/v1/events/batch", &key, "", &batch("warm", 10))).0, 202);
    let before = dev.rss_kib();

    // 100 HTTP/1.1 requests promising 10 MiB each and sending one byte.
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: 10485760\r\n\r\n["
    );
    let mut slow: Vec<TcpStream> = (0..100).map(|_| dev.connect()).collect();
    for s in &mut slow {
        s.write_all(head.as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let h1 = dev.rss_kib();

    // One h2c connection opening as many streams as it is allowed, each promising 10 MiB.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (opened, h2) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&dev.addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut streams = Vec::new();
        for _ in 0..100 {
            let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_millis(200), client.clone().ready()).await else {
                break;
            };
            client = ready;
            let req = http::Request::post(format!("http://{}/v1/events/batch", dev.addr))
                .header("x-api-key", &key)
                .header("content-length", "10485760")
                .body(())
                .unwrap();
            let Ok((response, mut send)) = client.send_request(req, false) else { break };
            send.send_data(bytes::Bytes::from_static(b"["), false).unwrap();
            streams.push((response, send));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = dev.rss_kib();
        // Streams past the server's limit are refused (REFUSED_STREAM); the rest wait for bodies.
        let mut open = 0;
        for (response, _send) in &mut streams {
            if tokio::time::timeout(Duration::from_millis(1), response).await.is_err() {
                open += 1;
            }
        }
        (open, rss)
    });
    println!("RSS before {before} KiB, 100 slow HTTP/1 bodies {h1} KiB, {opened} h2 streams {h2} KiB");
    assert!(opened <= 32, "h2 streams per connection are bounded (default 32), got {opened}");
    assert!(h1 - before < 20 * MIB, "HTTP/1: RSS grew {} KiB", h1 - before);
    assert!(h2 - before < 20 * MIB, "HTTP/2: RSS grew {} KiB", h2 - before);

    // After the body timeout each slow request gets its 408 and the memory is back.
    for s in &mut slow {
        let (status, _, body) = read_response(s);
        assert_eq!((status, json(&body)["code"].as_str()), (408, Some("body_timeout")));
    }
    let after = dev.rss_kib();
    println!("RSS after the timeouts {after} KiB");
    assert!(after < before + 20 * MIB);
}

#[test]
fn the_body_budget_answers_503_instead_of_growing() {
    let dev = Dev::start(&[("EDGE_MAX_INFLIGHT_BODY_BYTES", "1048576"), ("EDGE_BODY_TIMEOUT", "3s")]);
    let key = dev.keys[3].expose().to_string();
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: 900000\r\n\r\n["
    );
    let filler = vec![b' '; 400_000];
    let mut conns: Vec<TcpStream> = (0..5).map(|_| dev.connect()).collect();
    for c in &mut conns {
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&filler).unwrap();
    }
    let mut overloaded = 0;
    for c in &mut conns {
        let (status, head, body) = read_response(c);
        if status == 503 {
            assert_eq!(json(&body)["code"], "overloaded");
            assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
            overloaded += 1;
        } else {
            assert_eq!(status, 408, "the others wait for their bodies until the timeout");
        }
    }
    assert!(overloaded >= 2, "5 × 400 kB in flight against a 1 MiB budget: {overloaded} refused");
}

#[test]
fn silent_sockets_are_cut_and_never_lock_clients_out() {
    raise_open_file_limit();
    let dev = Dev::start(&[
        ("EDGE_MAX_CONNECTIONS", "300"),
        ("EDGE_DETECT_TIMEOUT", "2s"),
        ("EDGE_HEADER_TIMEOUT", "2s"),
        ("EDGE_IDLE_TIMEOUT", "2s"),
    ]);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut silent = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(&dev.addr).unwrap();
        let _ = match i % 4 {
            0 => Ok(()),
            1 => s.write_all(b"P"),
            2 => s.write_all(&preface[..10]),
            _ => s.write_all(preface),
        };
        silent.push(s);
    }
    for _ in 0..1000 {
        silent.push(TcpStream::connect(&dev.admin).unwrap());
    }

    let started = Instant::now();
    let mut probe = TcpStream::connect(&dev.admin).unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (status, _, _) = exchange(&mut probe, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "/healthz took {:?}", started.elapsed());

    let started = Instant::now();
    let mut client = TcpStream::connect(&dev.addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let request =
        post("/v1/events", dev.keys[3].expose(), "", r#"{"event_type":"s","event_name":"n","device_id":"d"}"#);
    let _ = client.write_all(&request);
    let mut answer = [0u8; 512];
    match client.read(&mut answer) {
        Ok(n) => {
            let text = String::from_utf8_lossy(&answer[..n]);
            assert!(text.starts_with("HTTP/1.1 202") || text.contains("too_many_connections") || n == 0, "{text}");
        }
        Err(e) => assert!(e.kind() == std::io::ErrorKind::ConnectionReset, "neither answer nor refusal: {e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1), "new client waited {:?}", started.elapsed());

    // After the timeouts (detect 2 s, HTTP/2 idle 2 s + close grace) nothing is left open.
    std::thread::sleep(Duration::from_secs(10));
    let mut open = 0;
    for s in &mut silent {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // a refusal or an HTTP/2 GOAWAY before the close
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    open += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    assert_eq!(open, 0, "silent sockets still open after the timeouts");
    assert_eq!(dev.log_contains("accept failed"), 0);
}

/// Closed by the server: `read` sees the end (or a reset) rather than timing out.
fn wait_for_close(mut s: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
}

#[test]
fn slow_heads_and_idle_keep_alive_are_cut_but_busy_connections_are_not() {
    let dev = Dev::start(&[("EDGE_HEADER_TIMEOUT", "2s")]);
    let request =
        post("/v1/events", dev.keys[3].expose(), "", r#"{"event_type":"s","event_name":"n","device_id":"d"}"#);
    std::thread::scope(|scope| {
        // A head at a byte every 100 ms: progress, but never a complete head.
        let slow = scope.spawn(|| {
            let mut s = dev.connect();
            let started = Instant::now();
            let head = b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nX-Padding: ";
            s.write_all(head).unwrap();
            let writer = s.try_clone().unwrap();
            let dripping = std::thread::spawn(move || {
                let mut writer = writer;
                while writer.write_all(b"a").is_ok() && started.elapsed() < Duration::from_secs(8) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let closed_after = wait_for_close(s, Duration::from_secs(8));
            dripping.join().unwrap();
            closed_after
        });
        // One answer, then silence on the kept-alive connection.
        let idle = scope.spawn(|| {
            let mut s = dev.connect();
            assert_eq!(exchange(&mut s, &request).0, 202);
            wait_for_close(s, Duration::from_secs(8))
        });
        // A request every 300 ms for 5 s: never waits 2 s for a head, so never cut.
        let busy = scope.spawn(|| {
            let mut s = dev.connect();
            let started = Instant::now();
            let mut answered = 0;
            while started.elapsed() < Duration::from_secs(5) {
                assert_eq!(exchange(&mut s, &request).0, 202, "answer {answered} on a busy connection");
                answered += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            answered
        });
        let (slow, idle, busy) = (slow.join().unwrap(), idle.join().unwrap(), busy.join().unwrap());
        println!("slow head cut after {slow:?}, idle keep-alive after {idle:?}; {busy} answers on the busy one");
        assert!(slow >= Duration::from_millis(1900) && slow < Duration::from_secs(4), "slow head cut after {slow:?}");
        assert!(idle >= Duration::from_millis(1900) && idle < Duration::from_secs(4), "idle cut after {idle:?}");
        assert!(busy >= 10, "{busy} answers");
    });
}

#[test]
fn h2_connections_close_when_idle_but_not_while_a_stream_is_open() {
    let dev = Dev::start(&[("EDGE_IDLE_TIMEOUT", "2s")]);
    let key = dev.keys[3].expose().to_string();
    let body = r#"{"event_type":"s","event_name":"n","device_id":"d"}"#;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&dev.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post(format!("http://{}/v1/events", dev.addr))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .header("content-length", body.len().to_string())
            .body(())
            .unwrap();
        // One stream whose body trickles in over 3.5 s, past the idle timeout: still answered.
        let (response, mut send) = client.send_request(req, false).unwrap();
        let started = Instant::now();
        for (i, byte) in body.as_bytes().chunks(8).enumerate() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            send.send_data(bytes::Bytes::copy_from_slice(byte), (i + 1) * 8 >= body.len()).unwrap();
        }
        let response = response.await.expect("the open stream is answered");
        assert_eq!(response.status(), 202, "after {:?}", started.elapsed());
        assert!(started.elapsed() > Duration::from_secs(3));
        // Then nothing: the server closes the connection after the idle timeout (plus its grace).
        let idle = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), conn).await.expect("closed when idle").unwrap().ok();
        let closed = idle.elapsed();
        println!("h2: a 3.5 s stream answered; idle connection closed after {closed:?}");
        assert!(closed >= Duration::from_millis(1900), "closed after {closed:?}");
    });
}

#[test]
fn out_of_descriptors_the_caps_shrink_and_refusals_are_immediate() {
    raise_open_file_limit();
    let dev = Dev::start_with_limit(&[("EDGE_DETECT_TIMEOUT", "3s")], Some(200));
    assert!(dev.log_has("connection caps lowered", 1));
    let silent: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&dev.addr).unwrap()).collect();
    let started = Instant::now();
    let mut probe = TcpStream::connect(&dev.admin).unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(exchange(&mut probe, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(1));
    assert!(dev.log_contains("accept failed") <= 1, "accept failures are logged at most once per interval");
    drop(silent);
}

#[test]
fn headers_are_bounded_and_audit_lines_cannot_amplify() {
    let dev = Dev::start(&[]);
    let key = dev.keys[3].expose().to_string();
    // 300 KB of header: hyper's own 431, rewritten to the JSON shape, readable by the sender.
    let mut s = dev.connect();
    let huge = "o".repeat(300_000);
    let (status, _, body) =
        exchange(&mut s, &post("/v1/events", &key, &format!("X-Organization-ID: {huge}\r\n"), "{}"));
    assert_eq!((status, json(&body)["code"].as_str()), (431, Some("headers_too_large")));
    assert!(json(&body)["message"].is_string());
    // One header value over the per-header bound: our own 431.
    let mut s = dev.connect();
    let long = "o".repeat(9_000);
    let (status, _, body) =
        exchange(&mut s, &post("/v1/events", &key, &format!("X-Organization-ID: {long}\r\n"), "{}"));
    assert_eq!((status, json(&body)["code"].as_str()), (431, Some("header_too_large")));

    // 2 000 selector mismatches of 7 kB each on one keep-alive connection.
    let before = dev.log_bytes.load(Ordering::Relaxed);
    let claimed = "x".repeat(7_000);
    let event = r#"{"event_type":"s","event_name":"n","device_id":"d"}"#;
    let request = post("/v1/events", &key, &format!("X-Organization-ID: {claimed}\r\n"), event);
    let mut s = dev.connect();
    for _ in 0..2_000 {
        let (status, _, body) = exchange(&mut s, &request);
        assert_eq!((status, json(&body)["code"].as_str()), (403, Some("tenant_mismatch")));
    }
    std::thread::sleep(Duration::from_millis(300));
    let written = dev.log_bytes.load(Ordering::Relaxed) - before;
    println!("2 000 mismatches wrote {written} bytes of log");
    assert!(written < 64 * 1024, "log grew {written} bytes");
    // 20 lines a minute per address; the run may straddle a minute boundary: two windows.
    let lines = dev.log_contains("selector_mismatch");
    assert!(dev.log_has("selector_mismatch", 1) && lines <= 45, "{lines} audit lines");
}

#[test]
fn hanging_up_never_skips_the_quota_and_half_closed_clients_get_answers() {
    let dev = Dev::start(&[]);
    let key = dev.keys[0].expose().to_string(); // org_q: starter, quota 100 (EDGE_TIER_STARTER_EVENTS_PER_MONTH)
    for round in 0..9 {
        let request = post("/v1/events/batch", &key, "", &batch(&format!("hangdev{round}"), 10));
        let mut s = dev.connect();
        s.write_all(&request).unwrap();
        match round % 3 {
            // Close without reading.
            0 => drop(s),
            // Half-close: the answer still comes.
            1 => {
                s.shutdown(Shutdown::Write).unwrap();
                let (status, _, body) = read_response(&mut s);
                assert_eq!((status, json(&body)["accepted"].as_u64()), (202, Some(10)), "half-closed request");
            }
            // Reset.
            _ => {
                linger_zero(&s);
                drop(s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // What was stored, what was charged and what the stats count agree.
    let stored: usize = std::fs::read_dir(dev.dir.path().join("state/local"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .map(|data| data.windows(7).filter(|w| w == b"hangdev").count())
        .sum();
    let token = dev.token("org_q", &["events:read"]);
    let mut s = dev.connect();
    let (status, _, body) = exchange(
        &mut s,
        format!("GET /api/v1/stats/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let counted = json(&body)["total_events"].as_u64().unwrap() as usize;
    let (status, _, body) = exchange(&mut s, &post("/v1/events/batch", &key, "", &batch("probe", 100)));
    assert_eq!(status, 202, "{body}");
    let charged = 100 - json(&body)["accepted"].as_u64().unwrap() as usize;
    println!("stored {stored}, charged {charged}, counted {counted}");
    assert!(stored >= 30, "the answered requests at least were stored");
    assert_eq!((charged, counted), (stored, stored));
}

/// SO_LINGER 0 so that dropping the socket sends a reset instead of a FIN.
fn linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a valid fd and a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

#[test]
fn the_quota_is_reserved_never_overshot() {
    let dev = Dev::start(&[]);
    let key = dev.keys[1].expose().to_string(); // org_p, quota 100
    let mut s = dev.connect();
    let (status, _, body) = exchange(&mut s, &post("/v1/events/batch", &key, "", &batch("p", 99)));
    assert_eq!((status, json(&body)["accepted"].as_u64()), (202, Some(99)));
    let (status, _, body) = exchange(&mut s, &post("/v1/events/batch", &key, "", &batch("big", 5_000)));
    let body = json(&body);
    assert_eq!((status, body["accepted"].as_u64(), body["rejected"].as_u64()), (202, Some(1), Some(4_999)));
    assert_eq!(body["errors"][0]["code"], "quota_exceeded");
    assert_eq!(body["errors"][0]["index"], 1);
    let (status, _, body) = exchange(&mut s, &post("/v1/events/batch", &key, "", &batch("more", 1)));
    assert_eq!((status, json(&body)["code"].as_str()), (402, Some("quota_exceeded")));

    // 20 parallel batches of 10 against an untouched quota of 100: exactly 100 get in.
    let key = dev.keys[2].expose().to_string(); // org_r
    let accepted: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (dev, key) = (&dev, &key);
                scope.spawn(move || {
                    let mut s = dev.connect();
                    let (status, _, body) =
                        exchange(&mut s, &post("/v1/events/batch", key, "", &batch(&format!("r{i}"), 10)));
                    if status == 202 {
                        json(&body)["accepted"].as_u64().unwrap()
                    } else {
                        0
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(accepted, 100);
}

#[test]
fn every_selector_instance_is_checked_on_the_wire() {
    let dev = Dev::start(&[]);
    let key = dev.keys[0].expose().to_string(); // org_q, subdomain "quota"
    let event = r#"{"event_type":"s","event_name":"n","device_id":"d"}"#;
    let code = |status: u16, body: &str| (status, json(body)["code"].as_str().map(str::to_string));
    // Absolute-form target naming another tenant.
    let mut s = dev.connect();
    let req = post("/v1/events", &key, "", event);
    let req = String::from_utf8(req).unwrap().replacen("POST /v1/events", "POST http://bravo.edge.test/v1/events", 1);
    let (status, _, body) = exchange(&mut s, req.as_bytes());
    assert_eq!(code(status, &body), (403, Some("tenant_mismatch".into())));
    // Duplicate selectors that disagree, and that agree.
    let mut s = dev.connect();
    let two = "X-Organization-ID: org_q\r\nX-Organization-ID: org_b\r\n";
    let (status, _, body) = exchange(&mut s, &post("/v1/events", &key, two, event));
    assert_eq!(code(status, &body), (400, Some("conflicting_selectors".into())));
    let same = "X-Organization-ID: org_q\r\nX-Organization-ID: org_q\r\n";
    assert_eq!(exchange(&mut s, &post("/v1/events", &key, same, event)).0, 202);
    let mut s = dev.connect();
    let (status, _, body) = exchange(&mut s, &post("/v1/events", &key, "Host: bravo.edge.test\r\n", event));
    assert_eq!(code(status, &body), (400, Some("conflicting_selectors".into())), "two Host headers that differ");
    // Two keys, or a key and a token: ambiguous.
    let mut s = dev.connect();
    let other = format!("X-Api-Key: {}\r\n", dev.keys[3].expose());
    let (status, _, body) = exchange(&mut s, &post("/v1/events", &key, &other, event));
    assert_eq!(code(status, &body), (401, Some("ambiguous_credentials".into())));

    // HTTP/2 :authority naming another tenant.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&dev.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post("http://bravo.edge.test/v1/events")
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(req, false).unwrap();
        send.send_data(bytes::Bytes::from(event), true).unwrap();
        response.await.unwrap().status().as_u16()
    });
    assert_eq!(status, 403);
    assert!(dev.log_has("selector_mismatch", 2));
}

#[test]
fn early_answers_are_readable_by_clients_still_sending() {
    let dev = Dev::start(&[]);
    let key = dev.keys[3].expose().to_string();
    // 12 MiB declared and sent: 413 on Content-Length, read while still writing.
    let mut s = dev.connect();
    let size = 12 << 20;
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {size}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 << 10];
        (0..size / chunk.len()).try_for_each(|_| writer.write_all(&chunk)).is_ok()
    });
    let (status, _, body) = read_response(&mut s);
    assert_eq!((status, json(&body)["code"].as_str()), (413, Some("payload_too_large")));
    assert!(sender.join().unwrap(), "the whole body could be sent: no reset");

    // The same without Content-Length (chunked): the 413 comes while reading, still readable.
    let mut s = dev.connect();
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut chunk = b"10000\r\n".to_vec();
        chunk.extend(vec![b' '; 0x10000]);
        chunk.extend_from_slice(b"\r\n");
        let sent = (0..size / 0x10000).try_for_each(|_| writer.write_all(&chunk)).is_ok();
        sent && writer.write_all(b"0\r\n\r\n").is_ok()
    });
    let (status, _, body) = read_response(&mut s);
    assert_eq!((status, json(&body)["code"].as_str()), (413, Some("payload_too_large")));
    assert!(sender.join().unwrap(), "the whole chunked body could be sent: no reset");

    // Node's fetch, as the PostHog and Segment Node SDKs use it.
    let script = format!(
        "fetch('http://{}/v1/events/batch', {{method: 'POST', headers: {{'content-type': 'application/json', \
         'x-api-key': '{key}'}}, body: ' '.repeat({size})}}).then(r => r.json().then(b => console.log(r.status, b.code)))\
         .catch(e => console.log('error', e.cause ? e.cause.code : e.message))",
        dev.addr
    );
    match std::process::Command::new("node").args(["-e", &script]).output() {
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                said.trim(),
                "413 payload_too_large",
                "node said {said:?}, {:?}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => panic!("node is needed for this test (scripts/services installs it): {e}"),
    }

    // hyper's own 400 for an unparsable request carries the JSON shape too.
    let mut s = dev.connect();
    let (status, _, body) = exchange(&mut s, b"GARBAGE\r\n\r\n");
    assert_eq!((status, json(&body)["code"].as_str()), (400, Some("bad_request")));
}

#[test]
fn browsers_permissions_and_operator_guesses() {
    let dev = Dev::start(&[("EDGE_ADMIN_TOKEN", "operator-token-0123456789abcdef")]);
    let key = dev.keys[3].expose().to_string();
    let mut s = dev.connect();
    // CORS preflight and headers on the ingestion routes.
    let (status, head, _) = exchange(
        &mut s,
        b"OPTIONS /v1/events HTTP/1.1\r\nHost: x\r\nOrigin: https://shop.example\r\n\
          Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: x-api-key, content-type\r\n\r\n",
    );
    let head = head.to_ascii_lowercase();
    assert_eq!(status, 204);
    assert!(head.contains("access-control-allow-origin: *") && head.contains("x-api-key"), "{head}");
    let event = r#"{"event_type":"s","event_name":"n","device_id":"d","revenue":5}"#;
    let (status, head, _) = exchange(&mut s, &post("/v1/events", &key, "Origin: https://shop.example\r\n", event));
    assert_eq!(status, 202, "whole-number revenue is a number");
    assert!(head.to_ascii_lowercase().contains("access-control-allow-origin: *"));

    // Revenue totals saturate instead of wrapping (11 × 9e15 overflows an i64 of cents).
    let rich = r#"{"event_type":"purchase","event_name":"buy","device_id":"whale","revenue":9000000000000000}"#;
    for _ in 0..11 {
        assert_eq!(exchange(&mut s, &post("/v1/events", &key, "", rich)).0, 202);
    }
    let token = dev.token("org_b", &["events:read"]);
    let req = format!("GET /api/v1/stats/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    let (status, _, body) = exchange(&mut s, req.as_bytes());
    assert_eq!(status, 200);
    let total = json(&body)["total_revenue"].as_f64().unwrap();
    assert!(total > 9.0e16, "total revenue {total} wrapped");

    // Stats need events:read.
    for perms in [&["events:write"][..], &[]] {
        let token = dev.token("org_b", perms);
        let req = format!("GET /api/v1/stats/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
        let (status, _, body) = exchange(&mut s, req.as_bytes());
        assert_eq!((status, json(&body)["code"].as_str()), (403, Some("insufficient_permission")));
    }

    // Operator-token guesses: throttled and audited per client address.
    let guess = |s: &mut TcpStream, token: &str| {
        let req = format!(
            "GET /api/v1/stats/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Organization-ID: org_b\r\n\r\n"
        );
        let (status, _, body) = exchange(s, req.as_bytes());
        (status, json(&body)["code"].as_str().unwrap_or("").to_string())
    };
    for i in 0..10 {
        assert_eq!(guess(&mut s, &format!("guess-{i}")).0, 401);
    }
    assert_eq!(guess(&mut s, "guess-11"), (429, "too_many_attempts".to_string()));
    assert_eq!(guess(&mut s, "operator-token-0123456789abcdef").0, 429, "even the right token waits");
    assert!(dev.log_has("operator_token_rejected", 1));
}

#[test]
fn client_addresses_come_only_from_trusted_proxies() {
    let event = r#"{"event_type":"s","event_name":"n","device_id":"d"}"#;
    let mismatch = |dev: &Dev, s: &mut TcpStream, extra: &str| {
        let req = post("/v1/events", dev.keys[3].expose(), &format!("X-Organization-ID: org_q\r\n{extra}"), event);
        assert_eq!(exchange(s, &req).0, 403);
        std::thread::sleep(Duration::from_millis(100));
    };
    // PROXY protocol from a trusted proxy: v1 and v2; the header's address wins over X-Forwarded-For.
    let dev = Dev::start(&[("EDGE_TRUSTED_PROXIES", "127.0.0.1"), ("EDGE_PROXY_PROTOCOL", "on")]);
    let mut s = dev.connect();
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n").unwrap();
    mismatch(&dev, &mut s, "X-Forwarded-For: 192.0.2.99\r\n");
    assert!(dev.log_has("client=203.0.113.7", 1));
    let mut s = dev.connect();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 23, 127, 0, 0, 1, 0x15, 0xb3, 0, 80]);
    s.write_all(&v2).unwrap();
    mismatch(&dev, &mut s, "");
    assert!(dev.log_has("client=198.51.100.23", 1));
    // A trusted peer that sends no PROXY header is not served.
    let mut s = dev.connect();
    s.write_all(&post("/v1/events", dev.keys[3].expose(), "", event)).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed without an answer");
    drop(dev);

    // X-Forwarded-For from a trusted proxy: the nearest untrusted hop; per-address throttles.
    let dev =
        Dev::start(&[("EDGE_TRUSTED_PROXIES", "127.0.0.0/8"), ("EDGE_ADMIN_TOKEN", "operator-token-0123456789abcdef")]);
    let mut s = dev.connect();
    mismatch(&dev, &mut s, "X-Forwarded-For: 192.0.2.1, 198.51.100.50, 127.0.0.5\r\n");
    assert!(dev.log_has("client=198.51.100.50", 1));
    let guess = |s: &mut TcpStream, from: &str| {
        let req = format!(
            "GET /api/v1/stats/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-guess\r\nX-Forwarded-For: {from}\r\n\r\n"
        );
        exchange(s, req.as_bytes()).0
    };
    for _ in 0..10 {
        assert_eq!(guess(&mut s, "198.51.100.1"), 401);
    }
    assert_eq!(guess(&mut s, "198.51.100.1"), 429);
    assert_eq!(guess(&mut s, "198.51.100.2"), 401, "another client address has its own allowance");
    drop(dev);

    // From an untrusted peer X-Forwarded-For means nothing.
    let dev = Dev::start(&[]);
    let mut s = dev.connect();
    mismatch(&dev, &mut s, "X-Forwarded-For: 198.51.100.77\r\n");
    assert!(dev.log_has("client=127.0.0.1", 1));
    assert_eq!(dev.log_contains("client=198.51.100.77"), 0);
}

#[test]
fn every_series_is_exported_from_the_start() {
    let dev = Dev::start(&[]);
    let mut s = TcpStream::connect(&dev.admin).unwrap();
    let (status, _, text) = exchange(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    for series in [
        "edge_tenants 5",
        "edge_events_rejected_total{reason=\"missing_field\"} 0",
        "edge_rate_limited_total{tier=\"starter\"} 0",
        "edge_quota_exceeded_total{tier=\"enterprise\"} 0",
        "edge_auth_failures_total{code=\"tenant_mismatch\"} 0",
        "edge_http_requests_total{route=\"/v1/events\",status=\"429\"} 0",
        "edge_connections_refused_total{listener=\"data\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing from /metrics");
    }
}

#[test]
fn sigterm_stops_every_named_task_in_order() {
    let mut dev = Dev::start(&[("EDGE_DRAIN_TIMEOUT", "6s")]);
    let mut s = dev.connect();
    assert_eq!(exchange(&mut s, &post("/v1/events/batch", dev.keys[3].expose(), "", &batch("term", 5))).0, 202);
    drop(s);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(dev.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the edge did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    let log = dev.log.lock().unwrap().clone();
    let stopped_at = |task: &str| {
        log.iter()
            .position(|l| l.contains("task stopped") && l.contains(task))
            .unwrap_or_else(|| panic!("{task} never reported stopping:\n{}", log.join("\n")))
    };
    let order: Vec<usize> = ["data-listener", "spool-writer", "shipper"].iter().map(|t| stopped_at(t)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "drain order: {order:?}");
    for task in ["admin-listener", "sink-watcher", "metrics-upkeep", "quota-saver", "tenants-reloader"] {
        assert!(stopped_at(task) > order[2], "{task} stops after the shipper");
    }
}
