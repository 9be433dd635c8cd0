//! HTTP: route a request to its handler, time it, count it, and turn any
//! [`ApiError`] into a JSON response (in [`response`], the only place that does).
//!
//! Two listeners share this module: the data listener (SDK traffic and the
//! control-plane API) and the admin listener (`/metrics`, `/healthz`, `/readyz`).

pub mod body;
pub mod budget;
pub mod conn;
pub mod cors;
pub mod response;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::config::IpNet;
use crate::error::ApiError;
use crate::event::parse::Shape;
use crate::metrics as m;
use crate::server::AppState;
use response::Body;

/// Data listener routes; `route` labels metrics with a fixed, low-cardinality name.
pub async fn serve_data(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let started = Instant::now();
    let route = Route::of(req.uri().path());
    let policy = route.cors();
    // Kept for the CORS headers: the request itself goes to its handler.
    let origin = req.headers().get(hyper::header::ORIGIN).cloned();
    let result = match (req.method(), route) {
        _ if oversized_header(req.headers(), state.conn.max_header_value_bytes) => {
            answer_early(&state, req, Err(header_too_large(state.conn.max_header_value_bytes))).await
        }
        (&Method::POST, Route::Events) => crate::ingest::handle(&state, req, Shape::Single).await,
        (&Method::POST, Route::Batch) => crate::ingest::handle(&state, req, Shape::Batch).await,
        (&Method::OPTIONS, Route::Events | Route::Batch) => {
            let r = state.cors.preflight(policy, "POST, OPTIONS", req.headers());
            answer_early(&state, req, r).await
        }
        (&Method::GET, Route::Stats) => {
            let (req, r) = crate::control::stats::handle(&state, req);
            answer_early(&state, req, r).await
        }
        (&Method::OPTIONS, Route::Stats) => {
            let r = state.cors.preflight(policy, "GET, OPTIONS", req.headers());
            answer_early(&state, req, r).await
        }
        (_, Route::Events | Route::Batch) => answer_early(&state, req, Err(ApiError::method_not_allowed("POST"))).await,
        (_, Route::Stats) => answer_early(&state, req, Err(ApiError::method_not_allowed("GET"))).await,
        (&Method::GET, Route::Healthz) => Ok(response::text(StatusCode::OK, "ok\n")),
        _ => answer_early(&state, req, Err(ApiError::not_found())).await,
    };
    let mut response = finish(route, started, result);
    if let Some(origin) = origin {
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::ORIGIN, origin);
        state.cors.decorate(policy, &h, &mut response);
    }
    Ok(response)
}

/// The client address: the peer, or, when the peer is a trusted proxy, the address its PROXY
/// header reported or else the nearest address in `X-Forwarded-For` that is not itself a
/// trusted proxy.
pub fn client_ip(parts: &hyper::http::request::Parts, trusted: &[IpNet]) -> IpAddr {
    let Some(peer) = parts.extensions.get::<conn::Peer>() else { return IpAddr::from([0, 0, 0, 0]) };
    if let Some(client) = peer.proxied {
        return client;
    }
    let peer = peer.addr.ip();
    if !trusted.iter().any(|net| net.contains(peer)) {
        return peer;
    }
    let forwarded = parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|net| net.contains(ip)) => continue,
            Ok(ip) => return ip,
            // Garbage from beyond the proxy: the proxy's word ends here.
            Err(_) => break,
        }
    }
    peer
}

/// What authentication needs from a request.
pub fn request_meta<'r>(
    parts: &'r hyper::http::request::Parts,
    trusted: &[IpNet],
    route: &'r str,
) -> crate::auth::RequestMeta<'r> {
    crate::auth::RequestMeta {
        headers: &parts.headers,
        authority: parts.uri.authority().map(|a| a.as_str()),
        authority_replaces_host: parts.version <= hyper::Version::HTTP_11,
        client: client_ip(parts, trusted),
        route,
    }
}

/// An answer that does not need the body: what the client still sends is read and dropped
/// first (bounded), so an HTTP/1 client that is still writing can read the answer.
async fn answer_early(
    state: &AppState,
    req: Request<Incoming>,
    result: Result<Response<Body>, ApiError>,
) -> Result<Response<Body>, ApiError> {
    if req.version() <= hyper::Version::HTTP_11 {
        body::discard(req.into_body(), state.conn.early_drain_bytes, state.conn.body_timeout).await;
    }
    result
}

/// A header value longer than the per-header bound: refused before anything reads, logs or
/// echoes it.
fn oversized_header(headers: &hyper::HeaderMap, max: usize) -> bool {
    headers.values().any(|v| v.len() > max)
}

fn header_too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header_too_large",
        format!("A request header is longer than {max} bytes"),
    )
}

/// Admin listener routes.
pub async fn serve_admin(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let started = Instant::now();
    let (route, result) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (Route::Metrics, Ok(response::metrics(state.metrics.render()))),
        (&Method::GET, "/healthz") => (Route::Healthz, Ok(response::text(StatusCode::OK, "ok\n"))),
        (&Method::GET, "/readyz") => (Route::Readyz, Ok(readiness(&state))),
        (_, "/metrics" | "/healthz" | "/readyz") => (Route::Other, Err(ApiError::method_not_allowed("GET"))),
        _ => (Route::Other, Err(ApiError::not_found())),
    };
    Ok(finish(route, started, result))
}

/// Ready when not draining and the sink is reachable (checked in the background).
fn readiness(state: &AppState) -> Response<Body> {
    if state.draining.load(Ordering::Acquire) {
        return response::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !state.sink_ready.load(Ordering::Acquire) {
        return response::text(StatusCode::SERVICE_UNAVAILABLE, "sink unreachable\n");
    }
    response::text(StatusCode::OK, "ready\n")
}

fn finish(route: Route, started: Instant, result: Result<Response<Body>, ApiError>) -> Response<Body> {
    let response = result.unwrap_or_else(|e| response::error(&e));
    m::http_request(route as usize, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Metric label of a route, as an index into [`m::ROUTES`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Events = 0,
    Batch = 1,
    Stats = 2,
    Healthz = 3,
    Readyz = 4,
    Metrics = 5,
    Other = 6,
}

impl Route {
    fn of(path: &str) -> Route {
        match path {
            "/v1/events" => Route::Events,
            "/v1/events/batch" => Route::Batch,
            "/api/v1/stats/events" => Route::Stats,
            "/healthz" => Route::Healthz,
            _ => Route::Other,
        }
    }

    fn cors(self) -> cors::Policy {
        match self {
            Route::Events | Route::Batch => cors::Policy::AnyOrigin,
            Route::Stats => cors::Policy::Configured,
            _ => cors::Policy::None,
        }
    }
}
