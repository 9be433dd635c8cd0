//! The route table: every route of both listeners with its methods, metric
//! label, handler, the permission it needs and who may call it from a browser,
//! and the one dispatcher that applies them.
//!
//! The dispatcher owns what every route shares: header bounds, CORS,
//! authentication and the permission check, early answers that drain what the
//! client still sends, and the request metrics. Handlers get their own
//! surface's state ([`IngestState`], [`ControlState`], [`AdminState`]) and the
//! authenticated [`crate::auth::Principal`]; none of them can reach another surface's state.
//! The route rows themselves, with path templates, are in `routes/table.rs`: the SDK
//! routes, the control plane (`/api/v1`, PostgreSQL) and the vendor formats
//! (`/batch/`, `/v1/batch`, capture v1 and the capture routes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::ORIGIN;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::AuthError;
use crate::auth::Authenticator;
use crate::config::{ConnConfig, IpNet};
use crate::control::{Caller, ControlState, Origin};
use crate::error::Error;
use crate::event::parse::Shape;
use crate::http::conn::Peer;
use crate::http::cors::{Cors, Policy};
use crate::http::response::{self, Body};
use crate::http::RouteError;
use crate::ingest::IngestState;
use crate::metrics as m;
use crate::tenant::Registry;

mod table;

pub use table::{labels, Permission, Route, ADMIN, DATA};
use table::{Handler, OTHER, OTHER_SLOT};

/// Set while shutting down, and the last background view of the sink: `/readyz` reports both.
#[derive(Default)]
pub struct Readiness {
    pub draining: AtomicBool,
    pub sink_ready: AtomicBool,
}

pub struct AdminState {
    pub metrics: PrometheusHandle,
    pub readiness: Arc<Readiness>,
    /// How current the registry is, when PostgreSQL feeds it.
    pub registry: Option<(Arc<crate::control::feed::FeedStatus>, crate::clock::Clock)>,
    /// Whether the limits are the fleet's or this node's share (Redis unreachable).
    pub limiter: Arc<crate::limits::Limiter>,
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
    /// `EDGE_SIGNUP=open`: anyone may create an organisation (otherwise the operator only).
    pub signup_open: bool,
}

impl DataRouter {
    pub async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let started = Instant::now();
        let found = table::find(&DATA, req.uri().path());
        let (slot, label) = found.as_ref().map_or((OTHER_SLOT, OTHER), |m| (m.first().slot, m.first().label));
        let policy = found.as_ref().map_or(Policy::None, |m| m.first().cors);
        // Kept for the CORS headers: the request itself goes to its handler.
        let origin = req.headers().get(ORIGIN).cloned();
        let result = match found {
            _ if oversized_header(req.headers(), self.conn.max_header_value_bytes) => {
                let e = RouteError::HeaderTooLarge { max: self.conn.max_header_value_bytes };
                self.answer_early(req, Err(e.into())).await
            }
            None => self.answer_early(req, Err(RouteError::NotFound.into())).await,
            Some(m) => match m.row(req.method()) {
                Some(route) => self.dispatch(route, req, &peer, m.params).await,
                None if req.method() == Method::OPTIONS && policy != Policy::None => {
                    let allowed = format!("{}, OPTIONS", m.methods());
                    let preflight = self.cors.preflight(policy, &allowed, req.headers()).map_err(Error::from);
                    self.answer_early(req, preflight).await
                }
                None => {
                    let e = RouteError::MethodNotAllowed { allow: m.methods() };
                    self.answer_early(req, Err(e.into())).await
                }
            },
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
        params: Vec<String>,
    ) -> Result<Response<Body>, Error> {
        let caller = match self.authorize(route, &req, peer) {
            Ok(caller) => caller,
            Err(e) => return self.answer_early(req, Err(e.into())).await,
        };
        match (route.handler, caller) {
            (Handler::Healthz, _) => self.answer_early(req, Ok(response::text(StatusCode::OK, "ok\n"))).await,
            (Handler::Events, Caller::Tenant(p)) => crate::ingest::handle(&self.ingest, p, req, Shape::Single).await,
            (Handler::Batch, Caller::Tenant(p)) => crate::ingest::handle(&self.ingest, p, req, Shape::Batch).await,
            (Handler::Vendor(vendor), caller) => {
                let principal = match caller {
                    Caller::Tenant(p) => Some(p),
                    _ => None,
                };
                Box::pin(self.vendor(route, vendor, principal, req, peer)).await
            }
            (Handler::Control(endpoint), caller) => {
                let client = crate::http::client_ip(req.headers(), peer, &self.trusted_proxies);
                let origin = Origin { caller, client };
                // Boxed, as the vendor formats are: inline, the largest handler's future sizes
                // every request's (~9 KB for the control plane), and hyper moves it per request.
                Ok(Box::pin(crate::control::handle(&self.control, endpoint, origin, req, params)).await?)
            }
            _ => self.answer_early(req, Err(RouteError::NotFound.into())).await,
        }
    }

    /// The vendor formats (PostHog, Segment): the key may be in the body, so the vendor
    /// module checks it once the body is read.
    async fn vendor(
        &self,
        route: &'static Route,
        vendor: crate::vendor::Vendor,
        principal: Option<crate::auth::Principal>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Result<Response<Body>, Error> {
        let (parts, mut body) = req.into_parts();
        let meta = crate::http::request_meta(
            &parts.uri,
            parts.version,
            &parts.headers,
            peer,
            &self.trusted_proxies,
            route.label,
        );
        let check = crate::vendor::KeyCheck { auth: &self.auth, registry: &self.registry, meta };
        let result = crate::vendor::handle(&self.ingest, vendor, principal, check, &parts, &mut body).await;
        if result.is_err() {
            crate::http::body::drain_unread(parts.version, body, &self.conn).await;
        }
        result
    }

    /// Authenticates the caller as the route requires and checks its permission.
    fn authorize(&self, route: &Route, req: &Request<Incoming>, peer: &Peer) -> Result<Caller, AuthError> {
        let meta = || {
            crate::http::request_meta(req.uri(), req.version(), req.headers(), peer, &self.trusted_proxies, route.label)
        };
        let counted = |e: AuthError| {
            metrics::counter!(m::AUTH_FAILURES, "code" => Error::from(e.clone()).code()).increment(1);
            e
        };
        let needed = match route.permission {
            Permission::Public | Permission::Open => return Ok(Caller::Anonymous),
            // Open sign-up takes anonymous callers; a credential, if sent, must be the operator's.
            Permission::Signup if self.signup_open && !has_credential(req.headers()) => {
                return Ok(Caller::Anonymous);
            }
            Permission::Signup => {
                return self.auth.platform_operator(&meta()).map(|()| Caller::PlatformOperator).map_err(counted);
            }
            Permission::SdkKeyAnywhere if !has_credential(req.headers()) => return Ok(Caller::Anonymous),
            Permission::SdkKeyBearer => {
                // On this route a bearer token is an SDK key, never a JWT or the operator's.
                let key = crate::auth::bearer_token(req.headers()).map_err(counted)?;
                let key = key.ok_or(AuthError::MissingCredentials).map_err(counted)?;
                let principal = self.auth.authenticate_body_key(key, &meta(), &self.registry).map_err(counted)?;
                return Ok(Caller::Tenant(principal));
            }
            Permission::SdkKeyAnywhere => "events:write",
            Permission::Needs(permission) => permission,
        };
        let principal = self.auth.authenticate(&meta(), &self.registry).map_err(counted)?;
        if principal.has(needed) {
            return Ok(Caller::Tenant(principal));
        }
        Err(match principal.credential {
            crate::auth::Credential::SdkKey { .. } => AuthError::WriteOnlyCredential,
            _ => AuthError::MissingPermission(needed),
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
        Some(r) if req.method() != r.method => Err(RouteError::MethodNotAllowed { allow: "GET".into() }),
        Some(r) => Ok(match r.handler {
            Handler::Metrics => response::metrics(state.metrics.render()),
            Handler::Readyz => readiness(&state.readiness, state.registry.as_ref(), state.limiter.fleet()),
            _ => response::text(StatusCode::OK, "ok\n"),
        }),
    };
    let response = result.unwrap_or_else(|e| Error::from(e).into_response());
    record(slot, label, &response, started);
    Ok(response)
}

/// Ready when not draining and the sink is reachable (checked in the background).
/// A stale registry does not make the node unready (ingestion serves from the last one), nor
/// does an unreachable Redis (limits fall back to this node's share), but the answer says so.
fn readiness(
    r: &Readiness,
    registry: Option<&(Arc<crate::control::feed::FeedStatus>, crate::clock::Clock)>,
    fleet: &crate::limits::fleet::FleetShare,
) -> Response<Body> {
    let (status, state) = if r.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !r.sink_ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "sink not ready (unreachable, or its schema is behind: run edge migrate)")
    } else {
        (StatusCode::OK, "ready")
    };
    let mut detail = match registry {
        Some((feed, clock)) => {
            format!("{state}\nregistry: postgres, current {:.1} s ago\n", feed.age(clock).as_secs_f64())
        }
        None => format!("{state}\nregistry: static\n"),
    };
    detail += &match (fleet.enabled(), fleet.synced()) {
        (false, _) => "limits: this node's own\n".to_string(),
        (true, true) => format!("limits: fleet-wide through Redis, {} nodes\n", fleet.live_nodes()),
        (true, false) => {
            format!("limits: Redis unreachable, this node keeps to its share (1/{})\n", fleet.live_nodes())
        }
    };
    response::text_owned(status, detail)
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

fn has_credential(headers: &HeaderMap) -> bool {
    headers.contains_key(hyper::header::AUTHORIZATION) || headers.contains_key(crate::auth::API_KEY_HEADER)
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
