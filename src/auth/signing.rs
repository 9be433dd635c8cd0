//! Signing the access tokens logins hand out: with a private key (EdDSA or
//! ES256, PKCS#8 PEM in `EDGE_JWT_SIGNING_KEY`) whose `kid` the verifier
//! matches, or else HS256 with `JWT_SECRET`. The `kid` is derived from the
//! public key ([`super::jwt::key_id`]), so the same PEM's public half in
//! `JWT_PUBLIC_KEYS` verifies the tokens on every node.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::jwt::{key_id, Claims};

pub struct Signer {
    key: EncodingKey,
    header: Header,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("EDGE_JWT_SIGNING_KEY: {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("EDGE_JWT_SIGNING_KEY: {} is not a PKCS#8 Ed25519 or P-256 private key", .0.display())]
    NotAPrivateKey(PathBuf),
}

impl Signer {
    pub fn hs256(secret: &[u8]) -> Self {
        Signer { key: EncodingKey::from_secret(secret), header: Header::new(Algorithm::HS256) }
    }

    /// An Ed25519 (EdDSA) or P-256 (ES256) private key from a PKCS#8 PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Self, SigningKeyError> {
        let pem =
            std::fs::read_to_string(path).map_err(|source| SigningKeyError::Read { path: path.into(), source })?;
        let not_a_key = || SigningKeyError::NotAPrivateKey(path.into());
        let (alg, public_der) = if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem) {
            (Algorithm::EdDSA, k.verifying_key().to_public_key_der().map_err(|_| not_a_key())?)
        } else if let Ok(k) = p256::SecretKey::from_pkcs8_pem(&pem) {
            (Algorithm::ES256, k.public_key().to_public_key_der().map_err(|_| not_a_key())?)
        } else {
            return Err(not_a_key());
        };
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(pem.as_bytes()),
        }
        .map_err(|_| not_a_key())?;
        let mut header = Header::new(alg);
        header.kid = Some(key_id(public_der.as_bytes()));
        Ok(Signer { key, header })
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&self.header, claims, &self.key).expect("signing serialisable claims cannot fail")
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{JwtError, JwtVerifier};
    use crate::config::JwtConfig;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};

    fn key_files(dir: &Path, private: String, public: String) -> (PathBuf, PathBuf) {
        let (p, q) = (dir.join("private.pem"), dir.join("public.pem"));
        std::fs::write(&p, private).unwrap();
        std::fs::write(&q, public).unwrap();
        (p, q)
    }

    fn verifier(public: &Path) -> JwtVerifier {
        JwtVerifier::from_config(&JwtConfig { public_keys_file: Some(public.into()), ..Default::default() }, 16)
            .unwrap()
    }

    #[test]
    fn ed25519_and_p256_tokens_verify_by_kid_and_only_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let ed = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let p = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
        let pairs = [
            (
                ed.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                ed.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                Algorithm::EdDSA,
            ),
            (
                p.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                p.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
                Algorithm::ES256,
            ),
        ];
        let now = 1_800_000_000;
        for (private, public, alg) in pairs {
            let (private, public) = key_files(dir.path(), private, public);
            let signer = Signer::from_pem_file(&private).unwrap();
            assert_eq!(signer.header.alg, alg);
            let token = signer.sign(&Claims::new("u", "org_a", &["*"], now, 600));
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), signer.kid());
            assert_eq!(verifier(&public).verify(&token, now).unwrap().organization_id, "org_a");
        }
        // The right kid on a token signed by another key is refused.
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        let (private, _) =
            key_files(dir.path(), other.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(), String::new());
        let mut forger = Signer::from_pem_file(&private).unwrap();
        let (_, public) = key_files(
            dir.path(),
            ed.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            ed.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
        );
        forger.header.kid = Signer::from_pem_file(&dir.path().join("private.pem")).unwrap().kid().map(String::from);
        let forged = forger.sign(&Claims::new("u", "org_a", &["*"], now, 600));
        assert_eq!(verifier(&public).verify(&forged, now).unwrap_err(), JwtError::Invalid);
        assert!(matches!(
            Signer::from_pem_file(&dir.path().join("public.pem")),
            Err(SigningKeyError::NotAPrivateKey(_))
        ));
    }
}
