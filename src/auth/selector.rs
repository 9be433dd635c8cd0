//! Tenant selectors: `X-Organization-ID`, the `Host` header and the request
//! target's authority (HTTP/2 `:authority`, absolute-form URIs).
//!
//! A selector never authenticates; it can only confirm what the credential
//! already says. A selector that names another organisation is a mismatch
//! (403 + audit). A host that names no known tenant (the bare base domain, an
//! IP, `localhost`) selects nothing.

use hyper::header::{HeaderMap, HOST};

use super::AuthError;
use crate::tenant::{Org, Snapshot};

/// The host the request names: every `Host` header and the request target's authority
/// (HTTP/2 `:authority`, absolute-form URIs) must agree, or the request is refused (400).
pub fn host<'r>(headers: &'r HeaderMap, authority: Option<&'r str>) -> Result<Option<&'r str>, AuthError> {
    let mut named: Option<&str> = None;
    let headers = headers.get_all(HOST).iter().map(|h| h.to_str().unwrap_or("\u{0}"));
    for candidate in authority.into_iter().chain(headers) {
        let candidate = candidate.trim();
        match named {
            None => named = Some(candidate),
            Some(first) if same_host(first, candidate) => {}
            Some(_) => {
                return Err(AuthError::ConflictingHosts);
            }
        }
    }
    Ok(named)
}

fn same_host(a: &str, b: &str) -> bool {
    normalise(a).eq_ignore_ascii_case(normalise(b))
}

fn normalise(host: &str) -> &str {
    strip_port(host.trim()).trim_end_matches('.')
}

/// A selector that names another organisation than the credential; `claimed` is what it
/// named, for the audit line.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub claimed: String,
}

/// `Ok` when every selector present agrees with `org`.
pub fn check(
    org_header: Option<&str>,
    host: Option<&str>,
    org: &Org,
    snapshot: &Snapshot,
    base_domain: Option<&str>,
) -> Result<(), Mismatch> {
    if let Some(claimed) = org_header {
        if claimed != org.id.as_str() {
            return Err(Mismatch { claimed: claimed.to_string() });
        }
    }
    let Some(host) = host else {
        return Ok(());
    };
    let host = normalise(host);
    // Hosts arrive lower case almost always; only mixed case pays for a copy.
    let host: std::borrow::Cow<str> =
        if host.bytes().any(|b| b.is_ascii_uppercase()) { host.to_ascii_lowercase().into() } else { host.into() };
    let selected = match base_domain.and_then(|base| subdomain_of(&host, base)) {
        Some(label) => Some(label),
        // Not under the base domain: maybe a tenant's custom domain.
        None if snapshot.org_by_host(&host).is_some() => Some(&*host),
        None => None,
    };
    match selected {
        None => Ok(()),
        Some(name) => match snapshot.org_by_host(name) {
            Some(owner) if owner.id == org.id => Ok(()),
            // Unknown subdomain under our base, or someone else's: both are mismatches.
            _ => Err(Mismatch { claimed: name.to_string() }),
        },
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // IPv6 literal: never a tenant
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// `acme` for `acme.edge.example` under `edge.example`; only one label deep.
fn subdomain_of<'h>(host: &'h str, base: &str) -> Option<&'h str> {
    let label = host.strip_suffix(base)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        assert_eq!(subdomain_of("acme.edge.example", "edge.example"), Some("acme"));
        assert_eq!(subdomain_of("edge.example", "edge.example"), None);
        assert_eq!(subdomain_of("a.b.edge.example", "edge.example"), None);
        assert_eq!(subdomain_of("acmeedge.example", "edge.example"), None);
        assert_eq!(strip_port("acme.edge.example:8080"), "acme.edge.example");
        assert_eq!(strip_port("[::1]:8080"), "[::1]:8080");
    }

    #[test]
    fn every_host_must_agree() {
        let mut h = HeaderMap::new();
        h.append(HOST, "acme.edge.example".parse().unwrap());
        assert_eq!(host(&h, Some("ACME.edge.example:443")).unwrap(), Some("ACME.edge.example:443"));
        assert_eq!(host(&h, Some("bravo.edge.example")).unwrap_err(), AuthError::ConflictingHosts);
        h.append(HOST, "bravo.edge.example".parse().unwrap());
        assert_eq!(host(&h, None).unwrap_err(), AuthError::ConflictingHosts);
        assert_eq!(host(&HeaderMap::new(), None).unwrap(), None);
    }
}
