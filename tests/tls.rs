//! TLS on the data listener, on the real binary: HTTP/2 and HTTP/1.1 by ALPN, cleartext
//! refused, a silent client cut like on a cleartext listener, and SIGHUP swapping the
//! certificate for new connections.

mod common;

use std::time::Duration;

use common::EdgeProcess;

struct Pair {
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Pair {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

fn client(trusting: &Pair, http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(trusting.cert_pem.as_bytes()).unwrap();
    let b = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).add_root_certificate(root);
    let b = if http1_only { b.http1_only() } else { b };
    b.build().unwrap()
}

#[tokio::test]
async fn the_data_listener_terminates_tls_negotiates_h2_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let edge = EdgeProcess::spawn_with(
        &["--dev"],
        &[
            ("EDGE_SPOOL_DIR", dir.path().join("data").display().to_string()),
            ("EDGE_TLS_CERT", cert.display().to_string()),
            ("EDGE_TLS_KEY", key.display().to_string()),
            ("EDGE_DETECT_TIMEOUT", "1s".into()),
        ],
    );
    let port = edge.addr.rsplit_once(':').unwrap().1.to_string();
    let url = format!("https://localhost:{port}/healthz");

    let r = client(&first, false).get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2), "h2 by ALPN");
    let r = client(&first, true).get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_11));
    // An event over TLS is taken like any other (the dev key from the data directory).
    let creds = std::fs::read_to_string(dir.path().join("data/dev-credentials")).unwrap();
    let dev_key = creds.split_whitespace().find(|w| w.starts_with("edk_")).unwrap().to_string();
    let r = client(&first, false)
        .post(format!("https://localhost:{port}/v1/events"))
        .header("x-api-key", dev_key)
        .json(&common::event("tls-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Cleartext on the TLS port gets nothing it could mistake for an answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that connects and says nothing is cut after the detection timeout.
    let mut silent = tokio::net::TcpStream::connect(&edge.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut silent, &mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed, not left open: {read:?}");

    // A new certificate, then SIGHUP: new connections see it.
    let second = self_signed();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    edge.signal("HUP");
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = client(&second, true).get(&url).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the new certificate was not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(client(&first, true).get(&url).send().await.is_err(), "the old one is gone");
}
