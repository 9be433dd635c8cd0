//! The route table: every route of both listeners with its methods, metric
//! label, handler, the permission it needs and who may call it from a browser,
//! and the one dispatcher that applies them.
//!
//! The dispatcher owns what every route shares: header bounds, CORS,
//! authentication and the permission check, early answers that drain what the
//! client still sends, and the request metrics. Handlers get their own
//! surface's state ([`IngestState`], [`ControlState`], [`AdminState`]) and the
//! authenticated [`Principal`]; none of them can reach another surface's state.
//! The control-plane routes (PostgreSQL) and the vendor formats (`/batch`,
//! `/v1/batch`) are rows added here with their own handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::ORIGIN;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::AuthError;
use crate::auth::{Authenticator, Principal};
use crate::config::{ConnConfig, IpNet};
use crate::control::ControlState;
use crate::error::Error;
use crate::event::parse::Shape;
use crate::http::conn::Peer;
use crate::http::cors::{Cors, Policy};
use crate::http::response::{self, Body};
use crate::http::RouteError;
use crate::ingest::IngestState;
use crate::metrics as m;
use crate::tenant::Registry;

/// What a route's caller must hold (checked by the dispatcher, after authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// No credential: probes and metrics.
    Public,
    /// `events:write`: SDK keys, users with the permission, the operator.
    WriteEvents,
    /// `events:read`: users with the permission, the operator (never SDK keys).
    ReadEvents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Events,
    Batch,
    Stats,
    Healthz,
    Readyz,
    Metrics,
}

pub struct Route {
    pub path: &'static str,
    pub method: Method,
    /// Metric label (`edge_http_requests_total{route}`); also its series slot, by position.
    pub label: &'static str,
    pub permission: Permission,
    pub cors: Policy,
    handler: Handler,
    /// Where the label's metric series are kept (one slot per label, below [`m::MAX_ROUTES`]).
    slot: usize,
}

const fn route(
    slot: usize,
    path: &'static str,
    method: Method,
    permission: Permission,
    cors: Policy,
    handler: Handler,
) -> Route {
    Route { path, method, label: path, permission, cors, handler, slot }
}

/// Data listener: SDK traffic and the control-plane API.
pub static DATA: [Route; 4] = [
    route(0, "/v1/events", Method::POST, Permission::WriteEvents, Policy::AnyOrigin, Handler::Events),
    route(1, "/v1/events/batch", Method::POST, Permission::WriteEvents, Policy::AnyOrigin, Handler::Batch),
    route(2, "/api/v1/stats/events", Method::GET, Permission::ReadEvents, Policy::Configured, Handler::Stats),
    route(3, "/healthz", Method::GET, Permission::Public, Policy::None, Handler::Healthz),
];

/// Admin listener: probes and metrics (loopback by default). `/healthz` shares its slot.
pub static ADMIN: [Route; 3] = [
    route(4, "/metrics", Method::GET, Permission::Public, Policy::None, Handler::Metrics),
    route(3, "/healthz", Method::GET, Permission::Public, Policy::None, Handler::Healthz),
    route(5, "/readyz", Method::GET, Permission::Public, Policy::None, Handler::Readyz),
];

/// Label and slot of requests that match no route.
const OTHER: &str = "other";
const OTHER_SLOT: usize = m::MAX_ROUTES - 1;

/// Every metric label with its series slot.
pub fn labels() -> Vec<(usize, &'static str)> {
    let mut labels: Vec<(usize, &'static str)> = Vec::new();
    for r in DATA.iter().chain(ADMIN.iter()) {
        if !labels.contains(&(r.slot, r.label)) {
            labels.push((r.slot, r.label));
        }
    }
    labels.push((OTHER_SLOT, OTHER));
    labels
}

/// Set while shutting down, and the last background view of the sink: `/readyz` reports both.
#[derive(Default)]
pub struct Readiness {
    pub draining: AtomicBool,
    pub sink_ready: AtomicBool,
}

pub struct AdminState {
    pub metrics: PrometheusHandle,
    pub readiness: Arc<Readiness>,
}

/// Everything the data listener's dispatcher needs; built once at start.
pub struct DataRouter {
    pub auth: Authenticator,
    pub registry: Arc<Registry>,
    pub trusted_proxies: Vec<IpNet>,
    pub cors: Cors,
    pub conn: ConnConfig,
    pub ingest: IngestState,
    pub control: ControlState,
}

impl DataRouter {
    pub async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let started = Instant::now();
        let path = req.uri().path();
        let found = DATA.iter().find(|r| r.path == path);
        let (slot, label) = found.map_or((OTHER_SLOT, OTHER), |r| (r.slot, r.label));
        let policy = found.map_or(Policy::None, |r| r.cors);
        // Kept for the CORS headers: the request itself goes to its handler.
        let origin = req.headers().get(ORIGIN).cloned();
        let result = match found {
            _ if oversized_header(req.headers(), self.conn.max_header_value_bytes) => {
                let e = RouteError::HeaderTooLarge { max: self.conn.max_header_value_bytes };
                self.answer_early(req, Err(e.into())).await
            }
            None => self.answer_early(req, Err(RouteError::NotFound.into())).await,
            Some(r) if req.method() == Method::OPTIONS && r.cors != Policy::None => {
                let allowed = if r.method == Method::GET { "GET, OPTIONS" } else { "POST, OPTIONS" };
                let preflight = self.cors.preflight(r.cors, allowed, req.headers()).map_err(Error::from);
                self.answer_early(req, preflight).await
            }
            Some(r) if req.method() != r.method => {
                let allow = if r.method == Method::GET { "GET" } else { "POST" };
                self.answer_early(req, Err(RouteError::MethodNotAllowed { allow }.into())).await
            }
            Some(r) => self.dispatch(r, req, &peer).await,
        };
        let mut response = result.unwrap_or_else(Error::into_response);
        self.cors.decorate(policy, origin.as_ref(), &mut response);
        record(slot, label, &response, started);
        Ok(response)
    }

    async fn dispatch(
        &self,
        route: &'static Route,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Result<Response<Body>, Error> {
        if route.permission == Permission::Public {
            return match route.handler {
                Handler::Healthz => Ok(response::text(StatusCode::OK, "ok\n")),
                _ => self.answer_early(req, Err(RouteError::NotFound.into())).await,
            };
        }
        let principal = match self.authorize(route, &req, peer) {
            Ok(p) => p,
            Err(e) => return self.answer_early(req, Err(e.into())).await,
        };
        match route.handler {
            Handler::Events => crate::ingest::handle(&self.ingest, principal, req, Shape::Single).await,
            Handler::Batch => crate::ingest::handle(&self.ingest, principal, req, Shape::Batch).await,
            Handler::Stats => {
                let (parts, body) = req.into_parts();
                let result = crate::control::stats::handle(&self.control, &principal, &parts).map_err(Error::from);
                self.answer_early(Request::from_parts(parts, body), result).await
            }
            Handler::Healthz | Handler::Readyz | Handler::Metrics => {
                self.answer_early(req, Err(RouteError::NotFound.into())).await
            }
        }
    }

    /// Authenticates the caller and checks the route's permission.
    fn authorize(&self, route: &Route, req: &Request<Incoming>, peer: &Peer) -> Result<Principal, AuthError> {
        let meta = crate::http::request_meta(
            req.uri(),
            req.version(),
            req.headers(),
            peer,
            &self.trusted_proxies,
            route.label,
        );
        let principal = self.auth.authenticate(&meta, &self.registry).inspect_err(|e| {
            metrics::counter!(m::AUTH_FAILURES, "code" => Error::from(e.clone()).code()).increment(1)
        })?;
        let allowed = match route.permission {
            Permission::Public => true,
            Permission::WriteEvents => principal.can_write_events(),
            Permission::ReadEvents => principal.can_read_events(),
        };
        if allowed {
            return Ok(principal);
        }
        Err(match (&principal.credential, route.permission) {
            (crate::auth::Credential::SdkKey { .. }, Permission::ReadEvents) => AuthError::WriteOnlyCredential,
            (_, Permission::ReadEvents) => AuthError::MissingPermission("events:read"),
            _ => AuthError::MissingPermission("events:write"),
        })
    }

    /// An answer that does not need the body: what the client still sends is read and dropped
    /// first (bounded), so an HTTP/1 client that is still writing can read the answer.
    async fn answer_early(
        &self,
        req: Request<Incoming>,
        result: Result<Response<Body>, Error>,
    ) -> Result<Response<Body>, Error> {
        crate::http::body::drain_unread(req.version(), req.into_body(), &self.conn).await;
        result
    }
}

/// The admin listener: probes and metrics, no credentials, nothing from the data surfaces.
pub async fn serve_admin(
    state: Arc<AdminState>,
    req: Request<Incoming>,
    _peer: Peer,
) -> Result<Response<Body>, std::convert::Infallible> {
    let started = Instant::now();
    let found = ADMIN.iter().find(|r| r.path == req.uri().path());
    let (slot, label) = found.map_or((OTHER_SLOT, OTHER), |r| (r.slot, r.label));
    let result = match found {
        None => Err(RouteError::NotFound),
        Some(r) if req.method() != r.method => Err(RouteError::MethodNotAllowed { allow: "GET" }),
        Some(r) => Ok(match r.handler {
            Handler::Metrics => response::metrics(state.metrics.render()),
            Handler::Readyz => readiness(&state.readiness),
            _ => response::text(StatusCode::OK, "ok\n"),
        }),
    };
    let response = result.unwrap_or_else(|e| Error::from(e).into_response());
    record(slot, label, &response, started);
    Ok(response)
}

/// Ready when not draining and the sink is reachable (checked in the background).
fn readiness(r: &Readiness) -> Response<Body> {
    if r.draining.load(Ordering::Acquire) {
        return response::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !r.sink_ready.load(Ordering::Acquire) {
        return response::text(StatusCode::SERVICE_UNAVAILABLE, "sink unreachable\n");
    }
    response::text(StatusCode::OK, "ready\n")
}

fn record(slot: usize, label: &'static str, response: &Response<Body>, started: Instant) {
    m::http_request(slot, label, response.status().as_u16(), started.elapsed().as_secs_f64());
}

/// Registers every route × status series at zero, so dashboards see them from the start.
pub fn register_series() {
    for (slot, label) in labels() {
        m::register_route(slot, label);
    }
}

/// A header value longer than the per-header bound: refused before anything reads, logs or
/// echoes it.
fn oversized_header(headers: &HeaderMap, max: usize) -> bool {
    headers.values().any(|v| v.len() > max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_its_own_series_slot() {
        let labels = labels();
        let slots: std::collections::HashSet<_> = labels.iter().map(|(slot, _)| *slot).collect();
        let names: std::collections::HashSet<_> = labels.iter().map(|(_, label)| *label).collect();
        assert_eq!((slots.len(), names.len()), (labels.len(), labels.len()), "{labels:?}");
        assert!(slots.iter().all(|&s| s < m::MAX_ROUTES));
    }
}
