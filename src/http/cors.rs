//! CORS for the whole product: browsers may call the ingestion routes from any
//! origin (SDK keys are public by design), and the control-plane routes only
//! from the origins in `EDGE_CORS_ORIGINS`.

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use hyper::{Response, StatusCode};

use super::response::{self, Body};
use super::RouteError;

/// Who may call a route from a browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Ingestion: any origin.
    AnyOrigin,
    /// Control plane: the configured origins.
    Configured,
    /// Not for browsers (health, unknown routes): no CORS headers.
    None,
}

const ANY: HeaderValue = HeaderValue::from_static("*");
const REQUEST_HEADERS: HeaderValue =
    HeaderValue::from_static("content-type, content-encoding, authorization, x-api-key, x-organization-id");
const EXPOSED: HeaderValue = HeaderValue::from_static("retry-after");
/// Browsers cap this anyway (Chromium at 2 h); a day saves preflights elsewhere.
const MAX_AGE: HeaderValue = HeaderValue::from_static("86400");

pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

impl Cors {
    pub fn new(origins: &[String]) -> Self {
        Cors { any: origins.iter().any(|o| o == "*"), origins: origins.to_vec() }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it may have one.
    fn allow(&self, policy: Policy, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match policy {
            Policy::AnyOrigin => Some(ANY),
            Policy::Configured => {
                let o = origin.to_str().ok()?;
                (self.any || self.origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(o))).then(|| origin.clone())
            }
            Policy::None => None,
        }
    }

    /// Answers an `OPTIONS` preflight for a route that allows `methods`.
    pub fn preflight(&self, policy: Policy, methods: &str, headers: &HeaderMap) -> Result<Response<Body>, RouteError> {
        let Some(allow) = self.allow(policy, headers.get(ORIGIN)) else {
            return Err(RouteError::OriginNotAllowed);
        };
        let mut r = response::empty(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_str(methods).unwrap_or(HeaderValue::from_static("GET")),
        );
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, REQUEST_HEADERS);
        h.insert(ACCESS_CONTROL_MAX_AGE, MAX_AGE);
        if policy == Policy::Configured {
            h.insert(VARY, HeaderValue::from_static("origin"));
        }
        Ok(r)
    }

    /// Adds the CORS headers to an actual (non-preflight) answer to a request from `origin`.
    pub fn decorate(&self, policy: Policy, origin: Option<&HeaderValue>, response: &mut Response<Body>) {
        if let Some(allow) = self.allow(policy, origin) {
            let h = response.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
            if policy == Policy::Configured {
                h.insert(VARY, HeaderValue::from_static("origin"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(o: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static(o));
        h
    }

    #[test]
    fn ingestion_allows_any_origin_control_only_configured() {
        let cors = Cors::new(&["https://app.example".to_string()]);
        let r = cors.preflight(Policy::AnyOrigin, "POST, OPTIONS", &with_origin("https://shop.test")).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(r.headers()[ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("x-api-key"));
        let r = cors.preflight(Policy::Configured, "GET, OPTIONS", &with_origin("https://app.example")).unwrap();
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        let e = cors.preflight(Policy::Configured, "GET, OPTIONS", &with_origin("https://evil.test")).unwrap_err();
        assert_eq!(e, RouteError::OriginNotAllowed);
        let mut r = response::empty(StatusCode::ACCEPTED);
        cors.decorate(Policy::AnyOrigin, None, &mut r);
        assert!(r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(), "no Origin, no CORS headers");
    }
}
