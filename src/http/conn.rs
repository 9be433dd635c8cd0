//! Connections, from accept to close, with a timer on every phase.
//!
//! Clients are hostile until proven otherwise: a socket that sends nothing, one
//! byte, half an HTTP/2 preface, headers at a byte a second, or that never reads
//! its responses must not hold a slot for long. The phases and their bounds:
//!
//! | phase | bound |
//! |---|---|
//! | over the connection cap | refused at once (a 503, then close), never parked in the backlog |
//! | accept fails for lack of file descriptors | a spare descriptor refuses the pending client; back-off; one log line per interval |
//! | first bytes, protocol detection | `detect_timeout` |
//! | HTTP/1 headers (and keep-alive idle): from an answer to the next complete head | `header_timeout`; total size `max_header_bytes` |
//! | body | `body_timeout` (in [`super::body`]) |
//! | HTTP/2 with no open stream | `idle_timeout`, plus PING keep-alive for dead peers |
//! | HTTP/2 streams | `h2_max_streams` per connection; header list `max_header_bytes` |
//! | a response write that makes no progress | `write_timeout` |
//!
//! hyper's own answers to unparsable requests (400, 414, 431) carry no body;
//! [`super::guarded_io::GuardedIo`] rewrites them into the JSON error shape every other
//! answer has. [`super::proxy`] reads the PROXY protocol header of trusted proxies.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::response::Body;
use crate::config::ConnConfig;

/// Who a request came from, handed to the handler with each request (see
/// [`super::client_ip`]): the TCP peer and, when that peer is a trusted proxy speaking the
/// PROXY protocol, the client address it reported.
///
/// It also ends the request for the connection's timers: dropped with the handler's future
/// (answered, or abandoned), it starts an HTTP/1 connection's wait for its next head, or ends
/// an HTTP/2 stream for the idle check. A handler keeps it until it is done, as every handler
/// does by taking it by value. (Not a wrapper future: that would move the handler's future,
/// kilobytes, once more per request.)
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub proxied: Option<IpAddr>,
    _done: RequestDone,
}

#[derive(Debug)]
enum RequestDone {
    Http1(Arc<HeadWait>),
    /// Held only to be dropped.
    Http2(#[allow(dead_code)] StreamGuard),
}

impl Drop for RequestDone {
    fn drop(&mut self) {
        if let RequestDone::Http1(wait) = self {
            wait.waiting();
        }
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// After a graceful close starts on an idle HTTP/2 connection, how long the peer has to go.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Between two log lines about failing accepts.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
connection: close\r\ncontent-length: 111\r\n\r\n\
{\"error\":\"The edge serves as many connections as it may\",\"code\":\"too_many_connections\",\"message\":\"Retry later\"}";

/// One listener: accepts until shutdown, then waits for its connections to finish.
pub struct Listener<H> {
    pub name: &'static str,
    pub listener: TcpListener,
    pub max_connections: usize,
    pub config: Arc<ConnConfig>,
    pub handler: H,
    /// Terminate TLS (the data listener with `EDGE_TLS_CERT`/`EDGE_TLS_KEY`).
    pub tls: Option<Arc<super::tls::Tls>>,
}

impl<H, Fut> Listener<H>
where
    H: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    pub async fn run(self, shutdown: CancellationToken) {
        let max = self.max_connections.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        let slots = Arc::new(Semaphore::new(max));
        let mut spare = SpareFd::open();
        let mut log = AcceptLog::new(self.name);
        // Handles made once: refusals come in floods, and each `counter!` call builds its key.
        let refused = metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "listener" => self.name);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    if is_out_of_descriptors(&e) {
                        // The pending client would wait in the backlog until we have a descriptor
                        // again: give ours up for a moment to refuse it instead.
                        spare.release();
                        if let Ok(Ok((stream, _))) =
                            tokio::time::timeout(Duration::from_millis(1), self.listener.accept()).await
                        {
                            refuse(stream);
                        }
                        spare = SpareFd::open();
                    }
                    log.failed(&e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                refused.increment(1);
                refuse(stream);
                continue;
            };
            let conn = Connection {
                peer,
                config: self.config.clone(),
                shutdown: shutdown.clone(),
                slot: permit,
                tls: self.tls.clone(),
            };
            tokio::spawn(conn.serve(stream, self.handler.clone()));
        }
        drop(self.listener);
        // Every connection holds a slot until it closes: all slots back means all closed.
        let _ = slots.acquire_many(max as u32).await;
    }
}

/// Descriptors kept for everything that is not a client connection: spool segments, the
/// ClickHouse client, the spare descriptor, logs.
const RESERVED_DESCRIPTORS: usize = 64;

/// Connection caps that fit the process's open-file limit, so that connections are refused
/// by the cap (at once, counted) rather than by `accept` failing with EMFILE for everyone.
pub fn fit_to_descriptors(data: usize, admin: usize) -> (usize, usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return (data, admin);
    }
    let usable = (limit.rlim_cur as usize).saturating_sub(RESERVED_DESCRIPTORS).max(2);
    if data + admin <= usable {
        return (data, admin);
    }
    // Admin gets an eighth (probes need little), data the rest.
    let admin_fit = admin.min((usable / 8).max(1));
    let data_fit = data.min(usable - admin_fit).max(1);
    tracing::warn!(
        open_file_limit = limit.rlim_cur,
        data_connections = data_fit,
        admin_connections = admin_fit,
        "connection caps lowered to fit the open-file limit"
    );
    (data_fit, admin_fit)
}

/// Over the cap: say so without reading anything, and close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSED);
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// A descriptor kept in reserve so that accept can still refuse clients when the process has no
/// descriptor left (the classic libev trick).
struct SpareFd(Option<std::fs::File>);

impl SpareFd {
    fn open() -> Self {
        SpareFd(std::fs::File::open("/dev/null").ok())
    }
    fn release(&mut self) {
        self.0 = None;
    }
}

/// One warning per interval however often accept fails, with the count in between.
struct AcceptLog {
    listener: &'static str,
    errors: metrics::Counter,
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptLog {
    fn new(listener: &'static str) -> Self {
        let errors = metrics::counter!(crate::metrics::ACCEPT_ERRORS, "listener" => listener);
        AcceptLog { listener, errors, last: None, suppressed: 0 }
    }

    fn failed(&mut self, e: &io::Error) {
        self.errors.increment(1);
        if self.last.is_some_and(|t| t.elapsed() < ACCEPT_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(listener = self.listener, error = %e, suppressed = self.suppressed, "accept failed; backing off");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

struct Connection {
    peer: SocketAddr,
    config: Arc<ConnConfig>,
    shutdown: CancellationToken,
    /// Held by the socket (see `GuardedIo`) until it is closed.
    slot: OwnedSemaphorePermit,
    tls: Option<Arc<super::tls::Tls>>,
}

impl Connection {
    async fn serve<H, Fut>(self, stream: TcpStream, handler: H)
    where
        H: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        let from_proxy =
            self.config.proxy_protocol && self.config.trusted_proxies.iter().any(|n| n.contains(self.peer.ip()));
        if let Some(tls) = self.tls.clone() {
            // The handshake, under the same timer as protocol detection; ALPN picks the protocol.
            let handshake = async {
                let proxied = if from_proxy { super::proxy::read_header(&mut stream).await? } else { None };
                Ok::<_, io::Error>((proxied, tls.acceptor().accept(stream).await?))
            };
            let Ok(Ok((proxied, secured))) = tokio::time::timeout(self.config.detect_timeout, handshake).await else {
                return; // silent, too slow, gone, or not TLS
            };
            let protocol = if super::tls::negotiated_h2(&secured) { Protocol::Http2 } else { Protocol::Http1 };
            return self.serve_io(secured, proxied, protocol, handler).await;
        }
        let start = async {
            let proxied = if from_proxy { super::proxy::read_header(&mut stream).await? } else { None };
            Ok::<_, io::Error>((proxied, detect(&stream).await?))
        };
        let (proxied, protocol) = match tokio::time::timeout(self.config.detect_timeout, start).await {
            Ok(Ok(found)) => found,
            _ => return, // silent, too slow, gone, or a proxy header that does not parse
        };
        self.serve_io(stream, proxied, protocol, handler).await
    }

    /// Serves HTTP on a plain socket or the plaintext side of a TLS one.
    async fn serve_io<S, H, Fut>(self, stream: S, proxied: Option<std::net::IpAddr>, protocol: Protocol, handler: H)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
    {
        let io = TokioIo::new(super::guarded_io::GuardedIo::new(
            stream,
            self.config.write_timeout,
            protocol == Protocol::Http1,
            self.slot,
        ));
        let addr = self.peer;
        let c = &self.config;
        match protocol {
            Protocol::Http1 => {
                let waiting = Arc::new(HeadWait::new());
                let marks = waiting.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    marks.busy();
                    handler(req, Peer { addr, proxied, _done: RequestDone::Http1(marks.clone()) })
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    // `HeadWait` bounds the wait for a head, once per connection: hyper's own
                    // timer boxes and registers a fresh `Sleep` for every request.
                    .header_read_timeout(None)
                    .keep_alive(true)
                    // A client that shuts its side after sending still gets its answer.
                    .half_close(true)
                    .max_buf_size(c.max_header_bytes);
                let expiry = async move { waiting.expired(c.header_timeout).await };
                drive(builder.serve_connection(io, service), self.shutdown, expiry, Duration::ZERO).await;
            }
            Protocol::Http2 => {
                let activity = Arc::new(Activity::new());
                let streams = activity.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    handler(req, Peer { addr, proxied, _done: RequestDone::Http2(streams.open()) })
                });
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(c.h2_max_streams)
                    .max_header_list_size(c.max_header_bytes.min(u32::MAX as usize) as u32)
                    .max_pending_accept_reset_streams(Some(c.h2_max_streams as usize * 2))
                    .keep_alive_interval(c.idle_timeout / 2)
                    .keep_alive_timeout(c.write_timeout.min(c.idle_timeout));
                let expiry = async move { activity.idle_for(c.idle_timeout).await };
                drive(builder.serve_connection(io, service), self.shutdown, expiry, CLOSE_GRACE).await;
            }
        }
    }
}

/// Reads nothing: peeks until the bytes tell the protocol (HTTP/2's preface, or anything else).
async fn detect(stream: &TcpStream) -> io::Result<Protocol> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Part of the preface: peeking again at once would see the same bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a connection until it ends, closing it gracefully on shutdown, or when `expiry`
/// resolves (a slow or idle client), giving it `grace` to finish.
async fn drive<C, E>(conn: C, shutdown: CancellationToken, expiry: E, grace: Duration)
where
    C: GracefulConnection,
    E: Future<Output = ()>,
{
    enum Stop {
        Shutdown,
        Expired,
    }
    let mut conn = std::pin::pin!(conn);
    // Polled only when the token or the timer fires, not on every wake-up of the connection.
    let stop = super::dormant::Dormant::new(async move {
        tokio::select! {
            _ = shutdown.cancelled() => Stop::Shutdown,
            _ = expiry => Stop::Expired,
        }
    });
    tokio::select! {
        biased;
        _ = conn.as_mut() => {}
        stop = stop => {
            conn.as_mut().graceful_shutdown();
            match stop {
                Stop::Shutdown => {
                    let _ = conn.await;
                }
                Stop::Expired => {
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        }
    }
}

/// An HTTP/1 connection's wait for request heads, keep-alive idle included: from the end of
/// one answer (or the start) to the next complete head. One timer per connection, re-armed
/// only when it fires, where hyper's `header_read_timeout` arms one per request.
#[derive(Debug)]
struct HeadWait {
    started: Instant,
    /// Milliseconds after `started` since which the connection has waited for a head, or
    /// [`HeadWait::BUSY`] while a request is being handled (its body has its own timer).
    since_ms: AtomicU64,
}

impl HeadWait {
    const BUSY: u64 = u64::MAX;

    fn new() -> Self {
        HeadWait { started: Instant::now(), since_ms: AtomicU64::new(0) }
    }

    fn busy(&self) {
        self.since_ms.store(Self::BUSY, Ordering::Relaxed);
    }

    fn waiting(&self) {
        self.since_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once the connection has waited `limit` for a head.
    async fn expired(&self, limit: Duration) {
        loop {
            let since = self.since_ms.load(Ordering::Relaxed);
            let wait = if since == Self::BUSY {
                limit
            } else {
                let waited = self.started.elapsed().saturating_sub(Duration::from_millis(since));
                if waited >= limit {
                    return;
                }
                limit - waited
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Open streams of an HTTP/2 connection and when the last one ended.
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    started: Instant,
    /// Milliseconds after `started` of the last stream's end.
    last_end_ms: AtomicU64,
}

#[derive(Debug)]
struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_end_ms.store(a.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Activity { open: AtomicUsize::new(0), started: Instant::now(), last_end_ms: AtomicU64::new(0) }
    }

    fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Resolves once no stream has been open for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
            let idle = self.started.elapsed().saturating_sub(last);
            if self.open.load(Ordering::Acquire) == 0 && idle >= limit {
                return;
            }
            let wait = if self.open.load(Ordering::Acquire) > 0 { limit } else { limit - idle };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_well_formed() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head.split("content-length: ").nth(1).unwrap().trim().parse().unwrap();
        assert_eq!(declared, body.len());
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        assert_eq!(v["code"], "too_many_connections");
    }
}
