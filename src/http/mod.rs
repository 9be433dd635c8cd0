//! HTTP plumbing shared by every surface: connections with a timer on every
//! phase ([`conn`]), bounded and decompressed bodies ([`body`]) charged to one
//! memory budget ([`budget`]), CORS ([`cors`]), responses ([`response`]), and
//! who the client is. Errors are mapped to responses in [`crate::error`]. Which route goes where is [`crate::routes`]' business, not this module's.

pub mod body;
pub mod budget;
pub mod conn;
pub mod cors;
pub mod dormant;
pub mod guarded_io;
pub mod proxy;
pub mod response;
pub mod tls;

use std::net::IpAddr;

use hyper::{HeaderMap, Uri, Version};

use crate::config::IpNet;

/// A request the route table cannot take anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists for the methods in `allow` only.
    MethodNotAllowed {
        allow: String,
    },
    /// A header value longer than the per-header bound.
    HeaderTooLarge {
        max: usize,
    },
    /// A CORS preflight from an origin the route does not serve.
    OriginNotAllowed,
}

/// The client address: the peer, or, when the peer is a trusted proxy, the address its PROXY
/// header reported or else the nearest address in `X-Forwarded-For` that is not itself a
/// trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: &conn::Peer, trusted: &[IpNet]) -> IpAddr {
    if let Some(client) = peer.proxied {
        return client;
    }
    let peer = peer.addr.ip();
    if !trusted.iter().any(|net| net.contains(peer)) {
        return peer;
    }
    // Nearest hop first: the last header's last entry.
    let forwarded = headers.get_all("x-forwarded-for").iter().rev().filter_map(|v| v.to_str().ok());
    for hop in forwarded.flat_map(|v| v.rsplit(',')).map(str::trim) {
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
    uri: &'r Uri,
    version: Version,
    headers: &'r HeaderMap,
    peer: &conn::Peer,
    trusted: &[IpNet],
    route: &'r str,
) -> crate::auth::RequestMeta<'r> {
    crate::auth::RequestMeta {
        headers,
        authority: uri.authority().map(|a| a.as_str()),
        authority_replaces_host: version <= Version::HTTP_11,
        client: client_ip(headers, peer, trusted),
        route,
    }
}
