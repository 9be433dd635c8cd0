//! The socket as hyper sees it: response writes that make no progress time out,
//! and hyper's own bodiless answers to unparsable requests (400, 414, 431) are
//! rewritten into the JSON error shape every other answer has, then the
//! connection lingers briefly so a client still sending can read it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// The socket as hyper sees it: writes that stall past `write_timeout` fail, and (HTTP/1)
/// hyper's bodiless automatic error answers are rewritten into JSON ones.
pub struct GuardedIo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static = TcpStream> {
    /// Always `Some` until dropped (taken then, to linger after an automatic error answer).
    /// A plain socket, or the plaintext side of a TLS one.
    inner: Option<S>,
    /// An automatic error answer was written: the client may still be sending.
    answered_early: bool,
    write_timeout: Duration,
    /// Armed when a write or flush first returns `Pending`; disarmed by progress.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    rewrite_errors: bool,
    /// A rewritten answer being written: bytes, how many are out, and the length hyper asked for.
    replacement: Option<(Vec<u8>, usize, usize)>,
    /// The connection's slot under the listener's cap: held as long as the socket, lingering
    /// included, so lingering sockets cannot exceed the cap.
    slot: Option<OwnedSemaphorePermit>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> GuardedIo<S> {
    pub(super) fn new(inner: S, write_timeout: Duration, rewrite_errors: bool, slot: OwnedSemaphorePermit) -> Self {
        GuardedIo {
            inner: Some(inner),
            answered_early: false,
            write_timeout,
            stall: None,
            stalled: false,
            rewrite_errors,
            replacement: None,
            slot: Some(slot),
        }
    }

    fn stream(&mut self) -> Pin<&mut S> {
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
impl<S> Drop for GuardedIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        let Some(mut stream) = self.inner.take().filter(|_| self.answered_early) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let slot = self.slot.take();
        runtime.spawn(async move {
            let _slot = slot;
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

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for GuardedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for GuardedIo<S> {
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
}
