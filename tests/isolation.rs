//! The isolation matrix: for every route and method of the data listener, a credential of
//! organisation A (or a forged one) tries to read or change organisation B's objects, by id,
//! by `X-Organization-ID`, by `Host` subdomain and custom domain, and with forged claims. Zero
//! leaks, B unchanged, every blocked attempt in the audit log.

mod common;

use std::time::Duration;

use base64::Engine as _;
use edge::auth::jwt::{issue_hs256, Claims};
use edge::clock::Clock;
use reqwest::Method;
use serde_json::{json, Value};

#[path = "support/pg.rs"]
mod pg;

struct Org {
    id: String,
    admin: String,
    key: String,
    app: String,
    key_id: String,
    user: String,
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Value>,
) -> (u16, String) {
    let mut r = http.request(method, format!("{base}{path}"));
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn token(org: &str, user: &str, secret: &[u8], iat: u64, ttl: u64) -> String {
    issue_hs256(&Claims { role: "super_admin".into(), ..Claims::new(user, org, &["*"], iat, ttl) }, secret)
}

fn alg_none(org: &str) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = Clock::system().unix_secs();
    let claims =
        json!({"user_id": "usr_x", "organization_id": org, "permissions": ["*"], "iat": now, "exp": now + 600});
    format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

/// A body the route would accept, so that an attack is refused for who sent it, not for its shape.
fn body_for(method: &Method, path: &str, b: &Org) -> Option<Value> {
    match (method.as_str(), path) {
        ("GET" | "DELETE", _) => None,
        ("POST", "/v1/events") => Some(common::event("attack")),
        ("POST", "/v1/events/batch") => Some(json!([common::event("attack")])),
        ("POST", "/api/v1/organizations") => Some(
            json!({"name": "x", "subdomain": "bravo", "admin_email": "x@x.example", "admin_password": "a long enough password"}),
        ),
        ("POST", "/api/v1/auth/login") => {
            Some(json!({"email": "admin@bravo.example", "password": "not bravo's password"}))
        }
        ("POST", "/api/v1/auth/refresh" | "/api/v1/auth/logout") => {
            Some(json!({"refresh_token": format!("{}.{}", b.id, "ab".repeat(32))}))
        }
        ("POST", "/api/v1/auth/set-password") => {
            Some(json!({"token": format!("{}.{}", b.id, "cd".repeat(32)), "password": "a long enough password"}))
        }
        ("POST", "/api/v1/users/me/password") => {
            Some(json!({"current_password": "not it at all", "new_password": "a long enough password"}))
        }
        ("POST", "/api/v1/users") => Some(json!({"email": "mole@bravo.example", "role": "admin"})),
        ("PATCH", p) if p.starts_with("/api/v1/users/") => Some(json!({"role": "viewer"})),
        ("PUT", "/api/v1/branding") => Some(json!({"primary_color": "#000000"})),
        (_, _) => Some(json!({"name": "pwned"})),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_of_one_organisation_reaches_another() {
    let Some(pg) = pg::Pg::fresh().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let edge = pg::api_edge(
        &pg,
        dir.path(),
        &[
            ("EDGE_BASE_DOMAIN", "edge.test".into()),
            ("EDGE_AUDIT_LINES_PER_MINUTE", "100000".into()),
            ("EDGE_TIER_ENTERPRISE_API_REQUESTS_PER_MINUTE", "100000".into()),
        ],
    );
    pg.wait_for_listeners(1).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", edge.addr);
    let operator = [("authorization", format!("Bearer {}", common::OPERATOR_TOKEN))];
    let mut orgs = Vec::new();
    for sub in ["alpha", "bravo", "charlie"] {
        let body = json!({"name": sub, "subdomain": sub, "admin_email": format!("admin@{sub}.example"),
                          "admin_password": format!("{sub}'s own password"), "tier": "enterprise"});
        let (status, created) = call(&http, &base, Method::POST, "/api/v1/organizations", &operator, Some(body)).await;
        assert_eq!(status, 201, "{created}");
        let created: Value = serde_json::from_str(&created).unwrap();
        let id = created["organization"]["id"].as_str().unwrap().to_string();
        let admin = format!(
            "Bearer {}",
            token(
                &id,
                created["user"]["id"].as_str().unwrap(),
                common::JWT_SECRET.as_bytes(),
                Clock::system().unix_secs(),
                3600
            )
        );
        orgs.push(Org {
            admin,
            key: created["sdk_key"]["key"].as_str().unwrap().to_string(),
            app: created["app"]["id"].as_str().unwrap().to_string(),
            key_id: created["sdk_key"]["id"].as_str().unwrap().to_string(),
            user: created["user"]["id"].as_str().unwrap().to_string(),
            id,
        });
    }
    let (a, b) = (&orgs[0], &orgs[1]);
    let b_auth = [("authorization", b.admin.clone())];
    let (status, _) = call(
        &http,
        &base,
        Method::PUT,
        "/api/v1/branding",
        &b_auth,
        Some(json!({"custom_domain": "events.bravo.example"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, invited) = call(
        &http,
        &base,
        Method::POST,
        "/api/v1/users",
        &b_auth,
        Some(json!({"email": "second@bravo.example", "role": "analyst"})),
    )
    .await;
    assert_eq!(status, 201);
    let second: Value = serde_json::from_str(&invited).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the feed has the custom domain

    // What must never appear in an answer to A: B's ids, names, secrets.
    let secrets = [
        b.id.as_str(),
        b.app.as_str(),
        b.key_id.as_str(),
        b.user.as_str(),
        b.key.as_str(),
        second["user"]["id"].as_str().unwrap(),
        "second@bravo.example",
        "events.bravo.example",
        "admin@bravo.example",
    ];
    let before = pg.state_of(&b.id).await;

    let now = Clock::system().unix_secs();
    let other_key = b"another signing key, not the edge's 0123456789";
    let forged = [
        ("forged_signature", token(&b.id, &b.user, other_key, now, 600)),
        ("swapped_organization", token(&b.id, &a.user, other_key, now, 600)),
        ("expired", token(&b.id, &b.user, common::JWT_SECRET.as_bytes(), now - 7200, 60)),
        ("alg_none", alg_none(&b.id)),
    ];
    let mut attacks = 0;
    let mut expected_in_a = 0;
    let mut expected_in_b = 0;
    for route in edge::routes::DATA.iter() {
        if route.path == "/healthz" {
            continue;
        }
        let params = [b.app.as_str(), b.key_id.as_str()];
        let mut i = 0;
        let by_id: String = route
            .path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    let v = if seg == "{user_id}" {
                        b.user.as_str()
                    } else {
                        i += 1;
                        params[i - 1]
                    };
                    v.to_string()
                } else {
                    seg.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let has_params = route.path.contains('{');
        let needs_auth = matches!(route.permission, edge::routes::Permission::Needs(_));
        let body = || body_for(&route.method, route.path, b);
        let mut kinds: Vec<(&str, Vec<(&str, String)>)> = vec![
            ("org_header", vec![("authorization", a.admin.clone()), ("x-organization-id", b.id.clone())]),
            ("subdomain", vec![("authorization", a.admin.clone()), ("host", "bravo.edge.test".into())]),
            ("custom_domain", vec![("authorization", a.admin.clone()), ("host", "events.bravo.example".into())]),
            ("sdk_key_org_header", vec![("x-api-key", a.key.clone()), ("x-organization-id", b.id.clone())]),
        ];
        for (name, t) in &forged {
            kinds.push((name, vec![("authorization", format!("Bearer {t}"))]));
        }
        // A's own credential on B's ids; parameterless writes would act on A itself, not B.
        if has_params || route.method == Method::GET {
            kinds.push(("by_id", vec![("authorization", a.admin.clone())]));
        }
        for (kind, headers) in kinds {
            attacks += 1;
            let (status, answer) = call(&http, &base, route.method.clone(), &by_id, &headers, body()).await;
            // A's own audit log echoes what A itself sent (B's ids in A's attempts): there, only
            // what A never sent would be a leak, and no entry may be B's.
            let checked: &[&str] = if route.path == "/api/v1/audit-log" { &secrets[4..7] } else { &secrets };
            for s in checked {
                assert!(!answer.contains(s), "{kind} {} {by_id}: leaked {s}: {answer}", route.method);
            }
            if route.path == "/api/v1/audit-log" && status == 200 {
                let page: Value = serde_json::from_str(&answer).unwrap();
                for entry in page["data"].as_array().unwrap() {
                    let actor = entry["actor"].as_str().unwrap();
                    assert!(!actor.contains(&b.user) && !actor.contains(&b.app), "B's entry in A's log: {entry}");
                }
            }
            if !needs_auth {
                assert!(status >= 400, "{kind} {} {by_id}: {status} {answer}", route.method);
                continue;
            }
            let want: &[u16] = match kind {
                "org_header" | "subdomain" | "custom_domain" | "sdk_key_org_header" => &[403],
                "by_id" if has_params => &[404],
                "by_id" => &[200],
                _ => &[401],
            };
            assert!(want.contains(&status), "{kind} {} {by_id}: {status} {answer}", route.method);
            match kind {
                "org_header" | "subdomain" | "custom_domain" | "sdk_key_org_header" => expected_in_a += 1,
                "by_id" if has_params => expected_in_a += 1,
                "by_id" => {}
                _ => expected_in_b += 1,
            }
        }
    }
    // B is as it was, and its key still works.
    assert_eq!(pg.state_of(&b.id).await, before, "B changed");
    let ok =
        call(&http, &base, Method::POST, "/v1/events", &[("x-api-key", b.key.clone())], Some(common::event("b"))).await;
    assert_eq!(ok.0, 202);

    // Every blocked attempt is in the audit log: A's for what A's credentials tried, B's for
    // the forged tokens that named B.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |org: String, actions: &'static [&'static str]| {
        let pg = &pg;
        async move {
            let actions: Vec<String> = actions.iter().map(|s| s.to_string()).collect();
            let n: i64 = pg
                .owner
                .query_one(
                    "SELECT count(*) FROM audit_log WHERE organization_id = $1 AND action = ANY($2)",
                    &[&org, &actions],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    let in_a = count(a.id.clone(), &["selector_mismatch", "not_found"]).await;
    let in_b = count(b.id.clone(), &["token_rejected"]).await;
    let operator_stream = count(String::new(), &["selector_mismatch", "token_rejected"]).await;
    assert!(in_a >= expected_in_a, "A's log: {in_a} of {expected_in_a}");
    assert!(in_b >= expected_in_b, "B's log: {in_b} of {expected_in_b}");
    assert!(operator_stream >= expected_in_b, "operator stream: {operator_stream}");
    eprintln!(
        "isolation matrix: {} routes x up to 9 attack kinds = {attacks} attacks, 0 leaks; audited: {in_a} in A's log, {in_b} in B's, {operator_stream} in the operator's stream",
        edge::routes::DATA.len() - 1
    );
    drop(edge);
    pg.drop().await;
}
