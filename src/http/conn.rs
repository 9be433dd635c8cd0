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
//! | HTTP/1 headers (and keep-alive idle) | `header_timeout`; total size `max_header_bytes` |
//! | body | `body_timeout` (in [`super::body`]) |
//! | HTTP/2 with no open stream | `idle_timeout`, plus PING keep-alive for dead peers |
//! | HTTP/2 streams | `h2_max_streams` per connection; header list `max_header_bytes` |
//! | a response write that makes no progress | `write_timeout` |
//!
//! hyper's own answers to unparsable requests (400, 414, 431) carry no body;
//! [`GuardedIo`] rewrites them into the JSON error shape every other answer has.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::response::Body;
use crate::config::ConnConfig;

/// Who a request came from (see [`super::client_ip`]): the TCP peer and, when that peer is a
/// trusted proxy speaking the PROXY protocol, the client address it reported.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub proxied: Option<IpAddr>,
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
}

impl<H, Fut> Listener<H>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let max = self.max_connections.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        let slots = Arc::new(Semaphore::new(max));
        let mut spare = SpareFd::open();
        let mut log = AcceptLog::default();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = stopped(&mut shutdown) => break,
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
                    log.failed(self.name, &e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "listener" => self.name).increment(1);
                refuse(stream);
                continue;
            };
            let conn = Connection { peer, config: self.config.clone(), shutdown: shutdown.clone(), _permit: permit };
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
#[derive(Default)]
struct AcceptLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptLog {
    fn failed(&mut self, listener: &str, e: &io::Error) {
        metrics::counter!(crate::metrics::ACCEPT_ERRORS, "listener" => listener.to_string()).increment(1);
        if self.last.is_some_and(|t| t.elapsed() < ACCEPT_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(listener, error = %e, suppressed = self.suppressed, "accept failed; backing off");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

struct Connection {
    peer: SocketAddr,
    config: Arc<ConnConfig>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<H, Fut>(self, stream: TcpStream, handler: H)
    where
        H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        let from_proxy =
            self.config.proxy_protocol && self.config.trusted_proxies.iter().any(|n| n.contains(self.peer.ip()));
        let start = async {
            let proxied = if from_proxy { read_proxy_header(&mut stream).await? } else { None };
            Ok::<_, io::Error>((proxied, detect(&stream).await?))
        };
        let (proxied, protocol) = match tokio::time::timeout(self.config.detect_timeout, start).await {
            Ok(Ok(found)) => found,
            _ => return, // silent, too slow, gone, or a proxy header that does not parse
        };
        let io = TokioIo::new(GuardedIo::new(stream, self.config.write_timeout, protocol == Protocol::Http1));
        let peer = Peer { addr: self.peer, proxied };
        let c = &self.config;
        match protocol {
            Protocol::Http1 => {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    handler(req)
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(c.header_timeout)
                    .keep_alive(true)
                    // A client that shuts its side after sending still gets its answer.
                    .half_close(true)
                    .max_buf_size(c.max_header_bytes);
                drive(builder.serve_connection(io, service), self.shutdown, None).await;
            }
            Protocol::Http2 => {
                let activity = Arc::new(Activity::new());
                let streams = activity.clone();
                let service = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    let open = streams.open();
                    let response = handler(req);
                    async move {
                        let r = response.await;
                        drop(open);
                        r
                    }
                });
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(c.h2_max_streams)
                    .max_header_list_size(c.max_header_bytes.min(u32::MAX as usize) as u32)
                    .max_pending_accept_reset_streams(Some(c.h2_max_streams as usize * 2))
                    .keep_alive_interval(c.idle_timeout / 2)
                    .keep_alive_timeout(c.write_timeout.min(c.idle_timeout));
                let idle = (activity, c.idle_timeout);
                drive(builder.serve_connection(io, service), self.shutdown, Some(idle)).await;
            }
        }
    }
}

/// The PROXY protocol header (v1 text or v2 binary) a trusted proxy sends first: consumes it
/// and returns the client address it names (`None` for `UNKNOWN`/`LOCAL`).
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<Option<IpAddr>> {
    use tokio::io::AsyncReadExt;
    const V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY header: {what}"));
    let mut head = [0u8; 16];
    let mut seen = 0;
    // Peek until there are enough bytes to tell v1 from v2 and, for v2, the length.
    while seen < 16 {
        seen = stream.peek(&mut head).await?;
        if seen == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if head[..seen].starts_with(b"PROXY ") || (seen >= 6 && !V2.starts_with(&head[..seen.min(12)])) {
            break;
        }
        if seen < 16 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if head.starts_with(b"PROXY ") {
        // v1: one line of at most 107 bytes.
        let mut line = [0u8; 107];
        let n = loop {
            let n = stream.peek(&mut line).await?;
            if let Some(end) = line[..n].windows(2).position(|w| w == b"\r\n") {
                break end + 2;
            }
            if n == line.len() {
                return Err(bad("no line end within 107 bytes"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        stream.read_exact(&mut line[..n]).await?;
        let text = std::str::from_utf8(&line[..n - 2]).map_err(|_| bad("not text"))?;
        let mut parts = text.split(' ');
        return match (parts.next(), parts.next(), parts.next()) {
            (_, Some("UNKNOWN"), _) => Ok(None),
            (_, Some("TCP4" | "TCP6"), Some(source)) => source.parse().map(Some).map_err(|_| bad("bad source")),
            _ => Err(bad("unknown protocol")),
        };
    }
    if !head.starts_with(V2) {
        return Err(bad("missing"));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut rest = vec![0u8; 16 + len.min(536)];
    if len > 536 {
        return Err(bad("too long"));
    }
    stream.read_exact(&mut rest).await?;
    let (command, family, addresses) = (rest[12] & 0x0f, rest[13] >> 4, &rest[16..]);
    match (command, family) {
        (0, _) => Ok(None), // LOCAL: the proxy's own health check
        (1, 1) if addresses.len() >= 12 => {
            Ok(Some(IpAddr::from([addresses[0], addresses[1], addresses[2], addresses[3]])))
        }
        (1, 2) if addresses.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&addresses[..16]);
            Ok(Some(IpAddr::from(a)))
        }
        (1, _) => Ok(None), // UNIX or unspecified: no IP to report
        _ => Err(bad("unknown command")),
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

/// Runs a connection until it ends, closing it gracefully on shutdown or (HTTP/2) when idle.
async fn drive<C>(conn: C, mut shutdown: watch::Receiver<bool>, idle: Option<(Arc<Activity>, Duration)>)
where
    C: GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    let idle_check = async {
        match &idle {
            Some((activity, limit)) => activity.idle_for(*limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        _ = idle_check => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
    }
}

/// Open streams of an HTTP/2 connection and when the last one ended.
struct Activity {
    open: AtomicUsize,
    started: Instant,
    /// Milliseconds after `started` of the last stream's end.
    last_end_ms: AtomicU64,
}

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

/// The socket as hyper sees it: writes that stall past `write_timeout` fail, and (HTTP/1)
/// hyper's bodiless automatic error answers are rewritten into JSON ones.
pub struct GuardedIo {
    /// Always `Some` until dropped (taken then, to linger after an automatic error answer).
    inner: Option<TcpStream>,
    /// An automatic error answer was written: the client may still be sending.
    answered_early: bool,
    write_timeout: Duration,
    /// Armed when a write or flush first returns `Pending`; disarmed by progress.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    rewrite_errors: bool,
    /// A rewritten answer being written: bytes, how many are out, and the length hyper asked for.
    replacement: Option<(Vec<u8>, usize, usize)>,
}

impl GuardedIo {
    fn new(inner: TcpStream, write_timeout: Duration, rewrite_errors: bool) -> Self {
        GuardedIo {
            inner: Some(inner),
            answered_early: false,
            write_timeout,
            stall: None,
            stalled: false,
            rewrite_errors,
            replacement: None,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.inner.as_mut().expect("present until drop"))
    }

    fn progress(&mut self) {
        self.stalled = false;
    }

    /// `Pending` while within `write_timeout` of the first stalled write; then an error.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        if !self.stalled {
            self.stalled = true;
            match &mut self.stall {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.stall.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client is not reading its responses")))
            }
            _ => Poll::Pending,
        }
    }

    fn write_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some((bytes, written, claimed)) = &mut self.replacement else { unreachable!() };
            if *written == bytes.len() {
                let claimed = *claimed;
                self.replacement = None;
                return Poll::Ready(Ok(claimed));
            }
            match Pin::new(self.inner.as_mut().expect("present until drop")).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    self.progress();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    return match self.check_stall(cx) {
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        _ => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// hyper's automatic answer to a request it could not parse, rewritten with a JSON body.
pub fn rewrite_automatic_error(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let (code, error, message) = match rest.get(..3)? {
        b"400" => ("bad_request", "Bad request", "The request line or a header could not be parsed"),
        b"414" => ("uri_too_long", "URI too long", "The request target is longer than the edge accepts"),
        b"431" => ("headers_too_large", "Request headers too large", "The request headers exceed the edge's limit"),
        _ => return None,
    };
    // Ours always have a body; only hyper's automatic answers are empty.
    let empty = head.windows(19).any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"));
    if !empty || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status_line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let body = format!(r#"{{"error":"{error}","code":"{code}","message":"{message}"}}"#);
    let mut out = Vec::with_capacity(status_line_end + 120 + body.len());
    out.extend_from_slice(&head[..status_line_end]);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

/// After an automatic error answer hyper closes at once; a client still sending would get a
/// reset instead of the answer. Linger: half-close, read and drop what still comes, briefly.
impl Drop for GuardedIo {
    fn drop(&mut self) {
        let Some(mut stream) = self.inner.take().filter(|_| self.answered_early) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 16 << 10];
            let drain = async {
                let mut seen = 0usize;
                while let Ok(n) = stream.read(&mut sink).await {
                    seen += n;
                    if n == 0 || seen > LINGER_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}

/// How much a lingering connection reads and drops, and for how long.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

impl AsyncRead for GuardedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_some() {
            return this.write_replacement(cx);
        }
        if this.rewrite_errors && buf.starts_with(b"HTTP/1.1 4") {
            if let Some(replacement) = rewrite_automatic_error(buf) {
                this.replacement = Some((replacement, 0, buf.len()));
                this.answered_early = true;
                return this.write_replacement(cx);
            }
        }
        match this.stream().poll_write(cx, buf) {
            Poll::Pending => match this.check_stall(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            ready => {
                this.progress();
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.stream().poll_flush(cx) {
            Poll::Pending => this.check_stall(cx),
            ready => {
                this.progress();
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then writes each response as one buffer, which the rewrite above can recognise.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_errors_get_json_bodies() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite_automatic_error(head).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{out}");
        let body: serde_json::Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["code"], "headers_too_large");
        assert!(body["message"].is_string() && body["error"].is_string());
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n";
        assert!(rewrite_automatic_error(ours).is_none(), "answers with a body are left alone");
        assert!(rewrite_automatic_error(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").is_none());
    }

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
