//! HTTP: route a request to its handler, time it, count it, and turn any
//! [`ApiError`] into a JSON response (in [`response`], the only place that does).
//!
//! Two listeners share this module: the data listener (SDK traffic and the
//! control-plane API) and the admin listener (`/metrics`, `/healthz`, `/readyz`).

pub mod body;
pub mod response;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

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
    let path = req.uri().path();
    let (route, result) = match (req.method(), path) {
        (&Method::POST, "/v1/events") => (Route::Events, crate::ingest::handle(&state, req, Shape::Single).await),
        (&Method::POST, "/v1/events/batch") => (Route::Batch, crate::ingest::handle(&state, req, Shape::Batch).await),
        (_, "/v1/events" | "/v1/events/batch") => (Route::Events, Err(ApiError::method_not_allowed("POST"))),
        (&Method::GET, "/api/v1/stats/events") => (Route::Stats, crate::control::stats::handle(&state, &req)),
        (_, "/api/v1/stats/events") => (Route::Stats, Err(ApiError::method_not_allowed("GET"))),
        (&Method::GET, "/healthz") => (Route::Healthz, Ok(response::text(StatusCode::OK, "ok\n"))),
        _ => (Route::Other, Err(ApiError::not_found())),
    };
    Ok(finish(route, started, result))
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
#[derive(Clone, Copy)]
enum Route {
    Events = 0,
    Batch = 1,
    Stats = 2,
    Healthz = 3,
    Readyz = 4,
    Metrics = 5,
    Other = 6,
}
