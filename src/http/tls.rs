//! TLS on the data listener: the SDKs default to `https://` and mobile
//! platforms refuse cleartext, so a single node terminates TLS itself.
//! `EDGE_TLS_CERT` (PEM chain) and `EDGE_TLS_KEY` (PEM private key); HTTP/2
//! or HTTP/1.1 by ALPN; SIGHUP reloads both files (a bad pair is logged and
//! the current one stays). The handshake runs under the detection timeout,
//! so a client that opens a connection and says nothing costs what it does
//! on a cleartext listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("EDGE_TLS_CERT {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("EDGE_TLS_KEY {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("EDGE_TLS_CERT/EDGE_TLS_KEY: {0}")]
    Pair(String),
}

/// The acceptor in force, swapped whole on reload.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: ArcSwap<TlsAcceptor>,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Tls>, TlsError> {
        let acceptor = acceptor(cert, key)?;
        Ok(Arc::new(Tls { cert: cert.into(), key: key.into(), acceptor: ArcSwap::from_pointee(acceptor) }))
    }

    /// Re-reads both files; on failure the current pair stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.acceptor.store(Arc::new(acceptor(&self.cert, &self.key)?));
        Ok(())
    }

    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certificate { path: cert.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate { path: cert.into(), reason: "no certificate in the file".into() });
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.into(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Whether the handshake chose HTTP/2.
pub fn negotiated_h2<S>(stream: &tokio_rustls::server::TlsStream<S>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}
