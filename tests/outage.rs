//! A ClickHouse outage under load: the edge's only route to ClickHouse goes
//! through a proxy that this test cuts for 30 s (connections refused, open
//! ones reset: what the edge sees when ClickHouse is down). Acknowledged
//! events survive it, memory stays flat, and a small spool bound turns into
//! 503 + Retry-After instead of accepting what cannot be kept.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{EdgeProcess, ProcessFixture};
use tokio::net::{TcpListener, TcpStream};

const OUTAGE: Duration = Duration::from_secs(30);

/// Forwards 127.0.0.1:port → `target` while up; when down, refuses and resets.
struct Proxy {
    port: u16,
    target: String,
    connections: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    async fn start(target: &str) -> Arc<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Arc::new(Proxy {
            port: listener.local_addr().unwrap().port(),
            target: target.to_string(),
            connections: Mutex::default(),
            acceptor: Mutex::default(),
        });
        proxy.clone().serve(listener);
        proxy
    }

    fn serve(self: Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = me.target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                me.connections.lock().unwrap().push(conn);
            }
        });
        *self.acceptor.lock().unwrap() = Some(acceptor);
    }

    fn down(&self) {
        if let Some(a) = self.acceptor.lock().unwrap().take() {
            a.abort(); // drops the listener: new connections are refused
        }
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort(); // open connections die mid-request
        }
    }

    async fn up(self: &Arc<Self>) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.clone().serve(listener);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn clickhouse_outage_under_load() {
    let Some(fx) = ProcessFixture::new() else { return };
    let (rt, ch, key) = (&fx.rt, &fx.ch, &fx.key);
    let ch_addr = ch.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let proxy = rt.block_on(Proxy::start(&ch_addr));
    let mut envs = fx.env(&format!("http://127.0.0.1:{}", proxy.port));
    envs.extend([
        ("EDGE_BATCH_INTERVAL", "200ms".to_string()),
        ("EDGE_SPOOL_MAX_BYTES", (4 << 20).to_string()),
        ("EDGE_SPOOL_SEGMENT_BYTES", (1 << 20).to_string()),
    ]);
    let mut edge = EdgeProcess::spawn(&envs);
    let pid = edge.child.id();
    let addr = edge.addr.clone();

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let (rss_before, rss_peak) = rt.block_on(async {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let mut workers = Vec::new();
        for worker in 0..4 {
            let (http, acked, refused, running) = (http.clone(), acked.clone(), refused.clone(), running.clone());
            let (url, key) = (format!("http://{addr}/v1/events/batch"), key.expose().to_string());
            workers.push(tokio::spawn(async move {
                let mut seq = 0;
                while running.load(Ordering::Acquire) {
                    seq += 1;
                    let ids: Vec<String> = (0..50).map(|i| format!("w{worker}-s{seq}-e{i}")).collect();
                    let events: Vec<_> = ids
                        .iter()
                        .map(|id| serde_json::json!({"event_type":"t","event_name":"n","device_id":"d","event_id":id,"properties":{"pad":"x".repeat(200)}}))
                        .collect();
                    let r = http.post(&url).header("x-api-key", &key).json(&events).send().await.unwrap();
                    match r.status().as_u16() {
                        202 => acked.lock().unwrap().extend(ids),
                        503 => {
                            assert!(r.headers().contains_key("retry-after"));
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected status {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.down();
        let rss_before = rss_kib(pid);
        let mut peak = rss_before;
        let started = tokio::time::Instant::now();
        while started.elapsed() < OUTAGE {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak = peak.max(rss_kib(pid));
        }
        proxy.up().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        running.store(false, Ordering::Release);
        for w in workers {
            w.await.unwrap();
        }
        (rss_before, peak)
    });

    let acked = acked.lock().unwrap().clone();
    assert!(refused.load(Ordering::Relaxed) > 0, "the 4 MiB spool filled during the outage and the edge said 503");
    assert!(rss_peak < rss_before + 48 * 1024, "RSS stayed flat: {rss_before} KiB → peak {rss_peak} KiB");
    rt.block_on(async {
        let landed = common::eventually(Duration::from_secs(60), || async {
            ch.query("SELECT uniqExact(event_id) FROM events").await.trim().parse::<usize>().unwrap() >= acked.len()
        })
        .await;
        assert!(landed, "the spool drains once ClickHouse is back");
        assert_eq!(ch.missing_event_ids(&acked).await, 0, "no acknowledged event lost");
        eprintln!(
            "outage {OUTAGE:?}: {} events acknowledged, {} requests refused with 503, RSS {rss_before} → peak {rss_peak} KiB",
            acked.len(),
            refused.load(Ordering::Relaxed)
        );
    });
    edge.signal("TERM");
    assert!(edge.wait(Duration::from_secs(20)).is_some_and(|s| s.success()));
    rt.block_on(ch.drop());
}
