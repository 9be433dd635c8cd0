//! The tenant registry: organisations, their SDK keys and host names.
//!
//! Readers (every request) take a lock-free snapshot through `ArcSwap`;
//! writers build a whole new [`Snapshot`] and swap it in atomically, so a
//! request never sees half an update and never waits for one. The registry is
//! filled from `--dev`, a TOML tenants file, or the PostgreSQL control plane's
//! feed, all through [`Registry::replace`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::plan::{Tier, TierTable};

pub mod slots;
pub use slots::PerOrg;

/// An organisation's id as it appears in tokens and in ClickHouse, with its process-wide
/// slot ([`slots`]): per-organisation state is indexed by the slot, and ids compare by it.
#[derive(Clone)]
pub struct OrgId {
    text: Arc<str>,
    slot: u32,
}

/// By the text, as `str` hashes (maps keyed by id are looked up by `&str`).
impl std::hash::Hash for OrgId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}

/// Interned: one slot per text, so comparing slots compares the ids.
impl PartialEq for OrgId {
    fn eq(&self, other: &Self) -> bool {
        self.slot == other.slot
    }
}
impl Eq for OrgId {}

impl Ord for OrgId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}
impl PartialOrd for OrgId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl OrgId {
    /// The id of `text` (interned: cheap to compare, slot assigned on first sight).
    pub fn new(text: &str) -> Self {
        let (text, slot) = slots::intern(text);
        OrgId { text, slot }
    }
    /// The id that holds `slot`, if one was ever made.
    pub fn from_slot(slot: u32) -> Option<Self> {
        slots::text_of(slot).map(|text| OrgId { text, slot })
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// Its index in [`PerOrg`] tables.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Borrow<str> for OrgId {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrgStatus {
    Active,
    Suspended,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub subdomain: String,
    /// The plan the organisation is on (resolved from its tier name when loaded).
    pub tier: Arc<Tier>,
    pub status: OrgStatus,
    pub custom_domain: Option<String>,
}

impl Org {
    pub fn new(id: &str, name: &str, subdomain: &str, tier: Arc<Tier>, status: OrgStatus) -> Self {
        Org {
            id: OrgId::new(id),
            name: name.to_string(),
            subdomain: subdomain.to_ascii_lowercase(),
            tier,
            status,
            custom_domain: None,
        }
    }
}

/// An SDK key as sent by a client. `Debug` never shows it.
pub struct SdkKey(String);

impl SdkKey {
    /// A new random key: `edk_` and 48 hex digits (192 bits).
    pub fn generate() -> Self {
        let bytes: [u8; 24] = rand::random();
        SdkKey(format!("edk_{}", hex::encode(bytes)))
    }
    /// A key read back from storage or a header.
    pub fn from_string(key: String) -> Self {
        SdkKey(key)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for SdkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SdkKey(<redacted>)")
    }
}

/// SHA-256 of a key: what is stored. Keys are 192 random bits, so a fast hash is enough
/// (no password stretching needed) and keeps the per-request cost well under a microsecond.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }
    pub fn from_bytes(sha256: [u8; 32]) -> Self {
        KeyHash(sha256)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(KeyHash(out))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// What an SDK key grants: writing events for one app of one organisation.
#[derive(Debug, Clone)]
pub struct KeyGrant {
    pub org: Arc<Org>,
    pub app_id: Arc<str>,
}

/// One consistent view of all tenants.
#[derive(Debug, Default)]
pub struct Snapshot {
    orgs: HashMap<OrgId, Arc<Org>, ahash::RandomState>,
    by_host: HashMap<String, Arc<Org>, ahash::RandomState>,
    keys: HashMap<KeyHash, KeyGrant, ahash::RandomState>,
    /// Per organisation and user: tokens issued before this unix second are refused.
    tokens_valid_after: HashMap<OrgId, HashMap<String, u64>, ahash::RandomState>,
}

impl Snapshot {
    pub fn org(&self, id: &str) -> Option<&Arc<Org>> {
        self.orgs.get(id)
    }
    /// By subdomain label or by custom domain (full host name, lower case).
    pub fn org_by_host(&self, name: &str) -> Option<&Arc<Org>> {
        self.by_host.get(name)
    }
    pub fn key(&self, hash: &KeyHash) -> Option<&KeyGrant> {
        self.keys.get(hash)
    }
    pub fn org_count(&self) -> usize {
        self.orgs.len()
    }
    pub fn orgs(&self) -> impl Iterator<Item = &Arc<Org>> {
        self.orgs.values()
    }
    pub fn keys(&self) -> impl Iterator<Item = (&KeyHash, &KeyGrant)> {
        self.keys.iter()
    }
    /// The unix second before which `user`'s tokens are refused (role changed, removed).
    pub fn tokens_valid_after(&self, org: &str, user: &str) -> Option<u64> {
        if self.tokens_valid_after.is_empty() {
            return None;
        }
        self.tokens_valid_after.get(org)?.get(user).copied()
    }
}

/// Why a set of organisations cannot be served: refused whole, the current set stays.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("duplicate organisation id {0}")]
    DuplicateOrganization(String),
    #[error("host {0:?} is claimed by two organisations")]
    DuplicateHost(String),
    #[error("duplicate SDK key {0:?}")]
    DuplicateKey(KeyHash),
    #[error("organisation {organization}: unknown tier {tier:?} (known: {known})")]
    UnknownTier { organization: String, tier: String, known: String },
    #[error("organisation {0:?}: id must be 1 to 64 characters")]
    InvalidId(String),
    #[error("organisation {organization}: key for {app} is not 64 hex digits")]
    InvalidKeyHash { organization: String, app: String },
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    InFile { path: PathBuf, source: Box<LoadError> },
}

/// Builds a [`Snapshot`], refusing duplicates that would make routing ambiguous.
#[derive(Default)]
pub struct SnapshotBuilder {
    snap: Snapshot,
}

impl SnapshotBuilder {
    pub fn org(&mut self, org: Org) -> Result<Arc<Org>, LoadError> {
        if self.snap.orgs.contains_key(org.id.as_str()) {
            return Err(LoadError::DuplicateOrganization(org.id.as_str().to_string()));
        }
        let org = Arc::new(org);
        let mut hosts = vec![org.subdomain.clone()];
        hosts.extend(org.custom_domain.clone());
        for host in hosts {
            if self.snap.by_host.insert(host.clone(), org.clone()).is_some() {
                return Err(LoadError::DuplicateHost(host));
            }
        }
        self.snap.orgs.insert(org.id.clone(), org.clone());
        Ok(org)
    }

    pub fn key(&mut self, hash: KeyHash, org: &Arc<Org>, app_id: &str) -> Result<(), LoadError> {
        let grant = KeyGrant { org: org.clone(), app_id: Arc::from(app_id) };
        if self.snap.keys.insert(hash, grant).is_some() {
            return Err(LoadError::DuplicateKey(hash));
        }
        Ok(())
    }

    /// Refuses `user`'s tokens issued before `unix_secs`.
    pub fn revoke_tokens(&mut self, org: &str, user: &str, unix_secs: u64) {
        self.snap.tokens_valid_after.entry(OrgId::new(org)).or_default().insert(user.to_string(), unix_secs);
    }

    pub fn build(self) -> Snapshot {
        self.snap
    }
}

pub struct Registry {
    current: ArcSwap<Snapshot>,
}

impl Registry {
    pub fn new(snapshot: Snapshot) -> Self {
        let registry = Registry { current: ArcSwap::from_pointee(snapshot) };
        registry.publish_gauge();
        registry
    }

    /// The current snapshot; lock-free, cheap, consistent for the whole request.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Atomically replaces every tenant at once.
    pub fn replace(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.publish_gauge();
    }

    /// Sets `edge_tenants` (again once the metrics recorder is installed).
    pub fn publish_gauge(&self) {
        metrics::gauge!(crate::metrics::TENANTS).set(self.current.load().org_count() as f64);
    }
}

// ---- tenants file (EDGE_TENANTS_FILE) ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    organizations: Vec<OrgEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgEntry {
    id: String,
    name: String,
    subdomain: String,
    #[serde(default = "default_tier")]
    tier: String,
    #[serde(default = "default_status")]
    status: OrgStatus,
    custom_domain: Option<String>,
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    app_id: String,
    /// Hex SHA-256 of the key; the key itself never sits in the file.
    sha256: String,
}

fn default_tier() -> String {
    "starter".into()
}
fn default_status() -> OrgStatus {
    OrgStatus::Active
}

/// Parses a tenants file (TOML). Errors name the organisation at fault.
pub fn parse_tenants(text: &str, tiers: &TierTable) -> Result<Snapshot, LoadError> {
    let mut builder = SnapshotBuilder::default();
    parse_tenants_into(text, tiers, &mut builder)?;
    Ok(builder.build())
}

/// Adds the file's organisations to `builder` (beside the demo organisation of `--dev`).
pub fn parse_tenants_into(text: &str, tiers: &TierTable, builder: &mut SnapshotBuilder) -> Result<(), LoadError> {
    let file: TenantsFile = toml::from_str(text)?;
    for entry in file.organizations {
        let Some(tier) = tiers.get(&entry.tier).cloned() else {
            let known: Vec<_> = tiers.names().collect();
            return Err(LoadError::UnknownTier { organization: entry.id, tier: entry.tier, known: known.join(", ") });
        };
        if entry.id.is_empty() || entry.id.len() > 64 {
            return Err(LoadError::InvalidId(entry.id));
        }
        let mut org = Org::new(&entry.id, &entry.name, &entry.subdomain, tier, entry.status);
        org.custom_domain = entry.custom_domain.map(|d| d.to_ascii_lowercase());
        let org = builder.org(org)?;
        for key in entry.keys {
            let Some(hash) = KeyHash::from_hex(&key.sha256) else {
                return Err(LoadError::InvalidKeyHash { organization: entry.id, app: key.app_id });
            };
            builder.key(hash, &org, &key.app_id)?;
        }
    }
    Ok(())
}

/// The tenants file's organisations added to `builder`.
pub fn load_tenants_file(path: &Path, tiers: &TierTable, mut builder: SnapshotBuilder) -> Result<Snapshot, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
    parse_tenants_into(&text, tiers, &mut builder)
        .map_err(|e| LoadError::InFile { path: path.into(), source: Box::new(e) })?;
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_file_round_trip() {
        let key = SdkKey::generate();
        let text = format!(
            r#"
            [[organizations]]
            id = "org_acme"
            name = "Acme"
            subdomain = "Acme"
            tier = "growth"
            custom_domain = "events.acme.example"
            keys = [{{ app_id = "app_ios", sha256 = "{}" }}]

            [[organizations]]
            id = "org_gone"
            name = "Gone"
            subdomain = "gone"
            status = "deleted"
            "#,
            key.hash().to_hex()
        );
        let snap = parse_tenants(&text, &TierTable::default()).unwrap();
        let grant = snap.key(&key.hash()).unwrap();
        assert_eq!(grant.org.id.as_str(), "org_acme");
        assert_eq!(&*grant.app_id, "app_ios");
        assert_eq!(grant.org.tier.name, "growth");
        assert_eq!(snap.org_by_host("acme").unwrap().id.as_str(), "org_acme");
        assert_eq!(snap.org_by_host("events.acme.example").unwrap().id.as_str(), "org_acme");
        assert_eq!(snap.org("org_gone").unwrap().status, OrgStatus::Deleted);
        assert!(snap.key(&SdkKey::generate().hash()).is_none());
    }

    #[test]
    fn ambiguous_or_bad_files_are_refused() {
        let dup = r#"
            [[organizations]]
            id = "a"
            name = "A"
            subdomain = "same"
            [[organizations]]
            id = "b"
            name = "B"
            subdomain = "same"
        "#;
        assert!(matches!(parse_tenants(dup, &TierTable::default()), Err(LoadError::DuplicateHost(h)) if h == "same"));
        let bad_tier = "[[organizations]]\nid='a'\nname='A'\nsubdomain='a'\ntier='platinum'\n";
        let e = parse_tenants(bad_tier, &TierTable::default()).unwrap_err();
        assert!(matches!(&e, LoadError::UnknownTier { tier, .. } if tier == "platinum"), "{e}");
        assert!(e.to_string().contains("unknown tier"));
        let unknown_field = "[[organizations]]\nid='a'\nname='A'\nsubdomain='a'\ncolour='red'\n";
        assert!(parse_tenants(unknown_field, &TierTable::default()).is_err());
    }

    #[test]
    fn key_debug_hides_secret() {
        let key = SdkKey::generate();
        assert!(!format!("{key:?}").contains(&key.expose()[4..]));
        assert!(key.expose().starts_with("edk_") && key.expose().len() == 52);
    }

    #[test]
    fn replace_is_atomic_for_readers() {
        let reg = Registry::new(Snapshot::default());
        let before = reg.snapshot();
        let mut b = SnapshotBuilder::default();
        let starter = TierTable::default().get("starter").unwrap().clone();
        b.org(Org::new("o", "O", "o", starter, OrgStatus::Active)).unwrap();
        reg.replace(b.build());
        assert_eq!(before.org_count(), 0, "a held snapshot never changes");
        assert_eq!(reg.snapshot().org_count(), 1);
    }
}
