//! The PROXY protocol (v1 text, v2 binary): how an L4 load balancer tells the edge the
//! client's address. Read only from peers in `EDGE_TRUSTED_PROXIES`, when
//! `EDGE_PROXY_PROTOCOL=on`; anyone else's word on addresses is ignored.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// The PROXY protocol header (v1 text or v2 binary) a trusted proxy sends first: consumes it
/// and returns the client address it names (`None` for `UNKNOWN`/`LOCAL`).
pub(super) async fn read_header(stream: &mut TcpStream) -> io::Result<Option<IpAddr>> {
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
