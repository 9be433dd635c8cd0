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
use tokio_util::sync::CancellationToken;

const OUTAGE: Duration = Duration::from_secs(30);

/// Forwards 127.0.0.1:port → `target` while up; when down, refuses and resets.
///
/// Each up period has its own token: a connection accepted just as the proxy goes down
/// sees it cancelled and closes, instead of outliving the cut (a handle list drained
/// while the acceptor was still pushing to it let one survive).
struct Proxy {
    port: u16,
    target: String,
    up: Mutex<CancellationToken>,
}

impl Proxy {
    async fn start(target: &str) -> Arc<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Arc::new(Proxy {
            port: listener.local_addr().unwrap().port(),
            target: target.to_string(),
            up: Mutex::new(CancellationToken::new()),
        });
        proxy.clone().serve(listener);
        proxy
    }

    fn serve(self: Arc<Self>, listener: TcpListener) {
        let up = self.up.lock().unwrap().clone();
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    biased;
                    _ = up.cancelled() => return, // drops the listener: new connections are refused
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => return,
                    },
                };
                let (target, up) = (self.target.clone(), up.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        biased;
                        _ = up.cancelled() => {} // open connections die mid-request
                        _ = async {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        } => {}
                    }
                });
            }
        });
    }

    fn down(&self) {
        self.up.lock().unwrap().cancel();
    }

    async fn up(self: &Arc<Self>) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        *self.up.lock().unwrap() = CancellationToken::new();
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
    let admin = edge.admin.clone();
    let at_end_of_cut = Mutex::new(String::new());

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
        // What the edge says of itself at the end of the cut, for the failure message below.
        let metrics = http.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        let seen: Vec<&str> = metrics
            .lines()
            .filter(|l| ["edge_spool_bytes ", "edge_clickhouse_insert_rows_total", "edge_clickhouse_insert_errors_total"].iter().any(|m| l.starts_with(m)))
            .collect();
        *at_end_of_cut.lock().unwrap() = format!("{} events acknowledged; {}", acked.lock().unwrap().len(), seen.join(", "));
        proxy.up().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        running.store(false, Ordering::Release);
        for w in workers {
            w.await.unwrap();
        }
        (rss_before, peak)
    });

    let acked = acked.lock().unwrap().clone();
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the 4 MiB spool should fill during the outage and the edge say 503; at the end of the cut: {}",
        at_end_of_cut.lock().unwrap()
    );
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
