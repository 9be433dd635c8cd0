//! The one error type every stage converts into before a response is made.
//!
//! Each error carries its HTTP status, a machine-readable `code` clients can
//! branch on, a human message, and the extra fields some responses promise
//! (SPEC §3: `Retry-After`, the tier and limit on 429, `upgrade_url` on 402).
//! [`crate::http::response`] turns it into bytes in exactly one place.

use std::borrow::Cow;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Whole seconds for the `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
    /// Extra top-level fields of the JSON body.
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None, extra: Map::new() }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "No such route")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed").with("allow", allow)
    }

    pub fn too_large(what: &'static str, limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("{what} exceeds {limit} bytes"))
            .with("limit", limit)
    }

    pub fn too_many_events(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", format!("a batch holds at most {limit} events"))
            .with("limit", limit)
    }

    pub fn unsupported(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, code, message)
    }

    /// 429: the SPEC's body `{"error":"Rate limit exceeded","tier","limit","retry_after"}`.
    pub fn rate_limited(tier: &str, limit_per_sec: u64, retry_after: Duration) -> Self {
        let secs = retry_after_secs(retry_after);
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Rate limit exceeded")
            .with("tier", tier)
            .with("limit", limit_per_sec)
            .with("retry_after", secs);
        e.retry_after = Some(secs);
        e
    }

    /// 402: not retryable until the month turns or the tier changes.
    pub fn quota_exceeded(tier: &str, limit_per_month: u64) -> Self {
        Self::new(StatusCode::PAYMENT_REQUIRED, "quota_exceeded", "Monthly event quota exceeded")
            .with("tier", tier)
            .with("limit", limit_per_month)
            .with("upgrade_url", "/billing/upgrade")
    }

    /// 503 with `Retry-After`: the edge cannot take more now (buffers full, draining).
    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>, retry_after: Duration) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(retry_after_secs(retry_after));
        e
    }
}

/// `Retry-After` is whole seconds; round up so clients never come back early.
fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        let e = ApiError::rate_limited("starter", 1000, Duration::from_millis(2500));
        assert_eq!(e.retry_after, Some(3));
        assert_eq!(e.extra["tier"], "starter");
        assert_eq!(e.extra["limit"], 1000);
    }
}
