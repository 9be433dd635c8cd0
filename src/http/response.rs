//! Responses: JSON bodies, and the single mapping from [`ApiError`] to HTTP.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::event::Rejection;

pub type Body = Full<Bytes>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, JSON);
    r
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub fn metrics(text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// The one place an error becomes a response: `{"error", "code", "message", …extra}` plus
/// headers. `message` repeats `error`: some SDKs read only `code` and `message`.
pub fn error(e: &ApiError) -> Response<Body> {
    let mut body = Map::with_capacity(3 + e.extra.len());
    body.insert("error".into(), Value::from(e.message.as_ref()));
    body.insert("code".into(), Value::from(e.code));
    body.insert("message".into(), Value::from(e.message.as_ref()));
    for (k, v) in &e.extra {
        if k != "allow" {
            body.insert(k.clone(), v.clone());
        }
    }
    let mut r = json(e.status, serde_json::to_vec(&body).unwrap_or_default());
    if let Some(secs) = e.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(Value::String(allow)) = e.extra.get("allow") {
        if let Ok(v) = HeaderValue::from_str(allow) {
            r.headers_mut().insert(ALLOW, v);
        }
    }
    r
}

/// 202 for a request: `{"accepted":n,"rejected":m,"errors":[…]}`.
/// The all-accepted case is written by hand: it is the hot path.
pub fn accepted(accepted: usize, errors: &[(usize, Rejection)]) -> Response<Body> {
    if errors.is_empty() {
        let mut buf = itoa::Buffer::new();
        let n = buf.format(accepted);
        let mut out = Vec::with_capacity(40 + n.len());
        out.extend_from_slice(b"{\"accepted\":");
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b",\"rejected\":0,\"errors\":[]}");
        return json(StatusCode::ACCEPTED, out);
    }
    let body = serde_json::json!({
        "accepted": accepted,
        "rejected": errors.len(),
        "errors": rejections(errors),
    });
    json(StatusCode::ACCEPTED, serde_json::to_vec(&body).unwrap_or_default())
}

pub fn rejections(errors: &[(usize, Rejection)]) -> Value {
    Value::Array(
        errors.iter().map(|(i, r)| serde_json::json!({"index": i, "code": r.code, "message": r.message})).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<Body>) -> Value {
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn error_shape_and_headers() {
        let e = ApiError::rate_limited("growth", 10_000, std::time::Duration::from_millis(1500));
        let r = error(&e);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        let b = body_of(r).await;
        assert_eq!(b["error"], "Rate limit exceeded");
        assert_eq!(b["message"], "Rate limit exceeded");
        assert_eq!(b["code"], "rate_limited");
        assert_eq!(
            (b["tier"].as_str(), b["limit"].as_u64(), b["retry_after"].as_u64()),
            (Some("growth"), Some(10_000), Some(2))
        );
        let r = error(&ApiError::method_not_allowed("POST"));
        assert_eq!(r.headers()[ALLOW], "POST");
        assert!(body_of(r).await.get("allow").is_none());
    }

    #[tokio::test]
    async fn accepted_fast_path_is_valid_json() {
        let b = body_of(accepted(12, &[])).await;
        assert_eq!(b, serde_json::json!({"accepted":12,"rejected":0,"errors":[]}));
        let b = body_of(accepted(1, &[(3, Rejection::new("missing_field", "device_id is required"))])).await;
        assert_eq!(b["errors"][0]["index"], 3);
        assert_eq!(b["rejected"], 1);
    }
}
