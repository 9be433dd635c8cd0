//! Responses: JSON bodies, and how a [`Problem`] (an error already mapped by
//! [`crate::error`]) is written.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::time::Duration;

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

pub fn text_owned(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub fn metrics(text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// An error as the client sees it: status, `code`, message, extra body fields and headers.
/// Built by [`crate::error::Error::problem`], the one place errors are mapped.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Whole seconds for the `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
    /// Extra top-level fields of the JSON body, in order.
    pub fields: Vec<(&'static str, Value)>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Problem { status, code, message: message.into(), retry_after: None, allow: None, fields: Vec::new() }
    }

    pub fn field(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        self.fields.push((key, value.into()));
        self
    }

    /// `Retry-After` is whole seconds, at least 1, rounded up so clients never come back early.
    pub fn retry_after(&mut self, wait: Duration) {
        self.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
    }
}

/// `{"error", "code", "message", …fields}` plus headers. `message` repeats `error`: some SDKs
/// read only `code` and `message`.
pub fn problem(p: &Problem) -> Response<Body> {
    let mut body = Map::with_capacity(3 + p.fields.len());
    body.insert("error".into(), Value::from(p.message.as_ref()));
    body.insert("code".into(), Value::from(p.code));
    body.insert("message".into(), Value::from(p.message.as_ref()));
    for (k, v) in &p.fields {
        body.insert((*k).into(), v.clone());
    }
    let mut r = json(p.status, serde_json::to_vec(&body).unwrap_or_default());
    if let Some(secs) = p.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(allow) = p.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
        r.headers_mut().insert(ALLOW, allow);
    }
    r
}

/// 202 for a request: `{"accepted":n,"rejected":m,"errors":[…]}`.
/// The all-accepted case is written by hand: it is the hot path.
pub fn accepted(accepted: usize, errors: &[(usize, Rejection)]) -> Response<Body> {
    const HEAD: &[u8] = b"{\"accepted\":";
    const TAIL: &[u8] = b",\"rejected\":0,\"errors\":[]}";
    if errors.is_empty() {
        if accepted == 1 {
            return json(StatusCode::ACCEPTED, Bytes::from_static(b"{\"accepted\":1,\"rejected\":0,\"errors\":[]}"));
        }
        let mut buf = itoa::Buffer::new();
        let n = buf.format(accepted);
        // Exactly its length: a full Vec becomes `Bytes` without another allocation.
        let mut out = Vec::with_capacity(HEAD.len() + n.len() + TAIL.len());
        out.extend_from_slice(HEAD);
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(TAIL);
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
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Rate limit exceeded");
        p.retry_after(Duration::from_millis(1500));
        p.field("tier", "growth").field("limit", 10_000).field("retry_after", 2);
        let r = problem(&p);
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
        let mut p = Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed");
        p.allow = Some("POST".into());
        let r = problem(&p);
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
