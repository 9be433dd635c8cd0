//! Request bodies: bounded, then decompressed, then bounded again.
//!
//! The compressed size is checked against the limit as it arrives (and
//! against `Content-Length` before reading), and the decompressed size while
//! inflating, so a small gzip bomb costs at most `limit + 1` bytes of memory.
//! A body that stalls is cut off after the configured body timeout. Every
//! byte held is charged to the request's [`Lease`] on the global budget.

use std::future::Future;
use std::io::Read;
use std::task::Poll;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE};

use super::budget::{push, Lease};
use crate::config::ConnConfig;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    UnsupportedEncoding,
    UnsupportedMediaType,
    /// NDJSON sent to the single-event route.
    NdjsonNeedsBatchRoute,
    /// Over `limit` bytes on the wire, declared, or after decompression.
    TooLarge {
        what: &'static str,
        limit: usize,
    },
    Timeout,
    Undecodable {
        encoding: &'static str,
        detail: String,
    },
    ReadFailed(String),
    /// The global body budget has no room.
    Overloaded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
    /// zlib (RFC 1950), which HTTP calls `deflate` (PostHog's capture v1 may send it).
    Deflate,
}

pub fn encoding(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let Some(v) = headers.get(CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let name = v.to_str().unwrap_or("\u{0}").trim();
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    if name.is_empty() || is("identity") {
        Ok(Encoding::Identity)
    } else if is("gzip") || is("x-gzip") {
        Ok(Encoding::Gzip)
    } else if is("zstd") {
        Ok(Encoding::Zstd)
    } else if is("deflate") {
        Ok(Encoding::Deflate)
    } else {
        Err(BodyError::UnsupportedEncoding)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    Json,
    Ndjson,
}

/// JSON unless told NDJSON; `text/plain` is accepted as JSON because browser SDKs
/// send it to avoid a CORS preflight.
pub fn media_type(headers: &HeaderMap) -> Result<MediaType, BodyError> {
    let Some(v) = headers.get(CONTENT_TYPE) else {
        return Ok(MediaType::Json);
    };
    // What nearly every SDK sends, compared whole before the general parse.
    if v.as_bytes() == b"application/json" {
        return Ok(MediaType::Json);
    }
    let essence = v.to_str().unwrap_or("\u{0}").split(';').next().unwrap_or("").trim();
    let is_any = |names: &[&str]| names.iter().any(|n| essence.eq_ignore_ascii_case(n));
    if essence.is_empty() || is_any(&["application/json", "text/plain"]) {
        Ok(MediaType::Json)
    } else if is_any(&["application/x-ndjson", "application/ndjson", "application/jsonlines"]) {
        Ok(MediaType::Ndjson)
    } else {
        Err(BodyError::UnsupportedMediaType)
    }
}

/// Reads the whole body: at most `limit` bytes on the wire and after decompression, every
/// byte held charged to `lease` as it arrives, the whole within `timeout`.
pub async fn read(
    headers: &HeaderMap,
    body: &mut Incoming,
    limit: usize,
    what: &'static str,
    lease: &mut Lease,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let encoding = encoding(headers)?;
    // Refused before a byte is read: the caller drains or closes.
    if declared_length(body).is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { what, limit });
    }
    let raw = {
        let mut collecting = std::pin::pin!(collect(body, limit, what, lease));
        // Most bodies arrive with their headers: finish without arming a timer when possible.
        let first = std::future::poll_fn(|cx| Poll::Ready(collecting.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(result) => result?,
            Poll::Pending => tokio::time::timeout(timeout, collecting).await.map_err(|_| BodyError::Timeout)??,
        }
    };
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => inflate(flate2::read::MultiGzDecoder::new(&raw[..]), limit, what, "gzip", lease),
        Encoding::Deflate => inflate(flate2::read::ZlibDecoder::new(&raw[..]), limit, what, "deflate", lease),
        Encoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&raw[..])
                .map_err(|e| BodyError::Undecodable { encoding: "zstd", detail: e.to_string() })?;
            inflate(decoder, limit, what, "zstd", lease)
        }
    }
}

/// What `Content-Length` promised, as hyper parsed it (it refused a malformed one): no second
/// header lookup and parse per request.
fn declared_length(body: &Incoming) -> Option<u64> {
    body.size_hint().exact()
}

/// Buffers grow with the bytes that arrive, never with what `Content-Length` promises.
async fn collect(
    body: &mut Incoming,
    limit: usize,
    what: &'static str,
    lease: &mut Lease,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::ReadFailed(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge { what, limit });
            }
            push(&mut out, data, lease)?;
        }
    }
    Ok(out)
}

/// Reads and drops what is left of a body the edge answered early (401, 413, …), so that
/// an HTTP/1 client still sending can read the answer instead of a reset. At most
/// `early_drain_bytes` within the body timeout; past either, the connection closes as it
/// would have. HTTP/2 needs none of this: the stream is reset after the answer.
pub async fn drain_unread(version: hyper::Version, body: Incoming, conn: &ConnConfig) {
    if version <= hyper::Version::HTTP_11 {
        discard(body, conn.early_drain_bytes, conn.body_timeout).await;
    }
}

async fn discard(mut body: Incoming, max_bytes: usize, timeout: Duration) {
    if body.is_end_stream() {
        return;
    }
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > max_bytes {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

/// A gzip body whose encoding a query parameter names rather than `Content-Encoding`
/// (posthog-js's `compression=gzip-js`): bounded and charged like any other.
pub fn gunzip(raw: &[u8], limit: usize, what: &'static str, lease: &mut Lease) -> Result<Vec<u8>, BodyError> {
    inflate(flate2::read::MultiGzDecoder::new(raw), limit, what, "gzip", lease)
}

fn inflate(
    mut decoder: impl Read,
    limit: usize,
    what: &'static str,
    name: &'static str,
    lease: &mut Lease,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 32 << 10];
    loop {
        let n =
            decoder.read(&mut chunk).map_err(|e| BodyError::Undecodable { encoding: name, detail: e.to_string() })?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > limit {
            return Err(BodyError::TooLarge { what, limit });
        }
        push(&mut out, &chunk[..n], lease)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use std::io::Write;

    #[test]
    fn gzip_and_zstd_are_bounded_after_decompression() {
        let budget = super::super::budget::MemoryBudget::new(1 << 20);
        let mut l = budget.lease();
        let mut inflate = |d: &mut dyn Read, limit, what, name| inflate(d, limit, what, name, &mut l);
        let plain = vec![b'a'; 10_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 200, "a tiny bomb");
        assert_eq!(
            inflate(&mut flate2::read::MultiGzDecoder::new(&gz[..]), 10_000, "batch", "gzip").unwrap().len(),
            10_000
        );
        let e = inflate(&mut flate2::read::MultiGzDecoder::new(&gz[..]), 9_999, "batch", "gzip").unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { limit: _, what: "batch" }), "{e:?}");
        let zs = zstd::encode_all(&plain[..], 3).unwrap();
        let e = inflate(&mut zstd::stream::read::Decoder::new(&zs[..]).unwrap(), 100, "batch", "zstd").unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { limit: _, what: "batch" }), "{e:?}");
        let e = inflate(&mut flate2::read::MultiGzDecoder::new(&b"not gzip"[..]), 100, "batch", "gzip").unwrap_err();
        assert!(matches!(e, BodyError::Undecodable { encoding: "gzip", .. }), "{e:?}");
    }

    #[test]
    fn encodings_and_types() {
        let mut h = HeaderMap::new();
        assert_eq!(encoding(&h).unwrap(), Encoding::Identity);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(matches!(encoding(&h), Err(BodyError::UnsupportedEncoding)));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson; charset=utf-8"));
        assert_eq!(media_type(&h).unwrap(), MediaType::Ndjson);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        assert!(matches!(media_type(&h), Err(BodyError::UnsupportedMediaType)));
        for json in ["application/json", "Application/JSON; charset=utf-8", " text/plain ;charset=UTF-8", ""] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(json));
            assert_eq!(media_type(&h).unwrap(), MediaType::Json, "{json:?}");
        }
        h.remove(CONTENT_TYPE);
        assert_eq!(media_type(&h).unwrap(), MediaType::Json, "none");
    }
}
