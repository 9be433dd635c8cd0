//! Passwords: argon2id (RFC 9106's second recommended setting, 19 MiB, t=2, p=1, as
//! the argon2 crate defaults to), hashed off the async threads and at most
//! [`CONCURRENT_HASHES`] at a time, so that sign-up and login floods queue instead of
//! taking every core.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use tokio::sync::Semaphore;

/// Hashes in flight across the process (each takes ~19 MiB and tens of ms of one core).
const CONCURRENT_HASHES: usize = 2;
static HASHING: Semaphore = Semaphore::const_new(CONCURRENT_HASHES);

/// Accepted password lengths in bytes (the upper bound caps the hashing work one request buys).
pub const MIN_BYTES: usize = 12;
pub const MAX_BYTES: usize = 256;

/// The PHC string of `password` with a fresh salt.
pub async fn hash(password: String) -> String {
    let _permit = HASHING.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).expect("16 bytes encode");
        Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 with default parameters").to_string()
    })
    .await
    .expect("hashing does not panic")
}

/// Whether `password` matches the PHC string `phc`; `None` (no password set) never matches,
/// but costs the same, so that timing does not tell unknown accounts from wrong passwords.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    let _permit = HASHING.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(move || {
        let (phc, real) = match &phc {
            Some(p) => (p.as_str(), true),
            None => (stand_in(), false),
        };
        let ok = PasswordHash::new(phc)
            .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok());
        ok && real
    })
    .await
    .expect("verifying does not panic")
}

static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The hash unknown accounts are checked against (made once).
fn stand_in() -> &'static str {
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(&[7u8; 16]).expect("16 bytes encode");
        Argon2::default().hash_password(b"no account", &salt).expect("argon2").to_string()
    })
}

/// Makes the stand-in hash before the first login, so that the first unknown account does
/// not take two hashes' time.
pub async fn warm() {
    let _ = tokio::task::spawn_blocking(stand_in).await;
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_verify_and_differ_by_salt() {
        let a = super::hash("correct horse battery".into()).await;
        let b = super::hash("correct horse battery".into()).await;
        assert!(a.starts_with("$argon2id$") && a != b);
        assert!(super::verify("correct horse battery".into(), Some(a.clone())).await);
        assert!(!super::verify("wrong horse battery".into(), Some(a)).await);
        assert!(!super::verify("no account".into(), None).await, "the stand-in never matches");
    }
}
