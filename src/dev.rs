//! `edge serve --dev`: the embedded default. No external service: a demo
//! organisation, app and SDK key in memory, plus a user token for the stats
//! API, all printed with a ready `curl` line.
//!
//! The key and the JWT secret are kept in `<spool dir>/dev-credentials` so a
//! restart does not invalidate what an SDK under development was given.

use std::path::Path;

use crate::auth::jwt::{issue_hs256, Claims};
use std::sync::Arc;

use crate::plan::{Tier, TierTable};
use crate::tenant::{Org, OrgStatus, SdkKey, Snapshot, SnapshotBuilder};

pub const DEMO_ORG: &str = "org_demo";
pub const DEMO_APP: &str = "app_demo";

pub struct DevSetup {
    pub key: SdkKey,
    pub jwt_secret: Vec<u8>,
    tier: Arc<Tier>,
}

impl DevSetup {
    /// A builder holding the demo organisation and its key; a tenants file may add more.
    pub fn builder(&self) -> SnapshotBuilder {
        let mut builder = SnapshotBuilder::default();
        let org = builder
            .org(Org::new(DEMO_ORG, "Demo Organisation", "demo", self.tier.clone(), OrgStatus::Active))
            .expect("empty builder");
        builder.key(self.key.hash(), &org, DEMO_APP).expect("empty builder");
        builder
    }

    pub fn snapshot(&self) -> Snapshot {
        self.builder().build()
    }
}

/// Loads or creates the demo credentials under `dir`.
pub fn setup(dir: &Path, tiers: &TierTable) -> std::io::Result<DevSetup> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("dev-credentials");
    let (key, secret) = match std::fs::read_to_string(&file) {
        Ok(text) if text.lines().count() >= 2 => {
            let mut lines = text.lines();
            let key = lines.next().unwrap_or_default().to_string();
            let secret = lines.next().unwrap_or_default().to_string();
            (SdkKey::from_string(key), secret)
        }
        _ => {
            let key = SdkKey::generate();
            let secret = hex::encode(rand::random::<[u8; 32]>());
            std::fs::write(&file, format!("{}\n{}\n", key.expose(), secret))?;
            (key, secret)
        }
    };
    let tier = tiers.get("growth").cloned().ok_or_else(|| std::io::Error::other("no growth tier"))?;
    Ok(DevSetup { key, jwt_secret: secret.into_bytes(), tier })
}

/// A day-long user token for the demo organisation (stats API).
pub fn demo_token(secret: &[u8], now: u64) -> String {
    let claims = Claims {
        email: "demo@example.com".into(),
        role: "super_admin".into(),
        ..Claims::new("user_demo", DEMO_ORG, &["events:write", "events:read"], now, 86_400)
    };
    issue_hs256(&claims, secret)
}

/// What `--dev` prints at start-up.
pub fn banner(
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    key: &SdkKey,
    token: &str,
    sink: &str,
) -> String {
    format!(
        "\nUnMoGrowP Edge (dev): organisation {DEMO_ORG}, app {DEMO_APP}, events go to {sink}\n\
         \n  SDK key:   {key}\n  User JWT:  {token}\n\
         \nSend an event:\n  curl -i -X POST http://{addr}/v1/events -H 'Content-Type: application/json' -H 'X-Api-Key: {key}' \\\n    \
         -d '{{\"event_type\":\"session\",\"event_name\":\"app_open\",\"device_id\":\"device-1\"}}'\n\
         \nSee the per-day stats:\n  curl -s http://{addr}/api/v1/stats/events -H 'Authorization: Bearer {token}'\n\
         \nMetrics: http://{admin}/metrics   Health: http://{admin}/healthz   Ready: http://{admin}/readyz\n",
        key = key.expose()
    )
}
