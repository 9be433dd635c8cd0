//! Login timing on its own: an unknown account and a wrong password must cost the same.
//! A test binary of its own, so that no other test shares the two cores while it measures
//! (cargo runs test binaries one after another).

mod common;

#[path = "support/pg.rs"]
mod pg;

use std::time::Instant;

async fn post(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut r = http.post(url).json(&body);
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_accounts_and_wrong_passwords_take_the_same_time() {
    let Some(pg) = pg::Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let limits =
        [("EDGE_LOGIN_MAX_FAILURES", "100000".into()), ("EDGE_LOGIN_MAX_FAILURES_PER_ADDRESS", "100000".into())];
    let edge = pg::api_edge(&pg, dir.path(), &limits);
    let (http, base) = (reqwest::Client::new(), format!("http://{}", edge.addr));
    let signup = serde_json::json!({"name": "timing", "subdomain": "timing", "admin_email": "admin@timing.example",
                                    "admin_password": "the right password"});
    let (status, _) = post(&http, &format!("{base}/api/v1/organizations"), Some(common::OPERATOR_TOKEN), signup).await;
    assert_eq!(status, 201);
    let login = format!("{base}/api/v1/auth/login");
    let attempt = |email: &'static str| {
        let (http, login) = (&http, &login);
        async move {
            let body = serde_json::json!({"email": email, "password": "a wrong password"});
            let started = Instant::now();
            let (status, _) = post(http, login, None, body).await;
            assert_eq!(status, 401);
            started.elapsed()
        }
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    // Interleaved, so that drift on this machine hits both alike.
    for _ in 0..200 {
        known.push(attempt("admin@timing.example").await);
        unknown.push(attempt("nobody@timing.example").await);
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[100].as_secs_f64(), unknown[100].as_secs_f64());
    let ratio = k.max(u) / k.min(u);
    eprintln!("login medians over 200 tries each: wrong password {k:.4} s, unknown account {u:.4} s, ratio {ratio:.3}");
    assert!(ratio < 1.05, "medians differ by {:.1} %", (ratio - 1.0) * 100.0);
    drop(edge);
    pg.drop().await;
}
