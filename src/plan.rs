//! Plans: the pricing-tier table (SPEC §4), the seed's quotas verbatim plus the
//! ingestion rate per organisation, overridable per tier from configuration
//! (`EDGE_TIER_*`). Configuration on every node, at the bottom of the crate:
//! organisations (from a file today, from PostgreSQL next) name their tier and
//! hold the resolved [`Tier`]; an unknown name is a load error, never a panic.

use std::sync::Arc;

/// `-1` in the seed means unlimited; here it is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: &'static str,
    pub events_per_month: u64,
    pub api_requests_per_minute: u32,
    pub storage_gb: u32,
    pub users: Option<u32>,
    pub apps: Option<u32>,
    pub data_retention_days: u32,
    pub ml_predictions_per_month: u64,
    pub custom_models: bool,
    pub white_label: bool,
    pub sso: bool,
    pub support_level: &'static str,
    pub price_per_month: u32,
    /// Sustained ingestion rate for the whole organisation, across all nodes.
    pub events_per_second: u64,
    /// How many seconds of `events_per_second` may arrive at once.
    pub burst_seconds: u64,
}

#[derive(Debug, Clone)]
pub struct TierTable {
    tiers: Vec<Arc<Tier>>,
}

impl Default for TierTable {
    fn default() -> Self {
        TierTable {
            tiers: [
                Tier {
                    name: "starter",
                    events_per_month: 1_000_000,
                    api_requests_per_minute: 100,
                    storage_gb: 10,
                    users: Some(5),
                    apps: Some(2),
                    data_retention_days: 90,
                    ml_predictions_per_month: 10_000,
                    custom_models: false,
                    white_label: false,
                    sso: false,
                    support_level: "community",
                    price_per_month: 99,
                    events_per_second: 1_000,
                    burst_seconds: 2,
                },
                Tier {
                    name: "growth",
                    events_per_month: 10_000_000,
                    api_requests_per_minute: 500,
                    storage_gb: 50,
                    users: Some(20),
                    apps: Some(10),
                    data_retention_days: 180,
                    ml_predictions_per_month: 100_000,
                    custom_models: false,
                    white_label: false,
                    sso: true,
                    support_level: "email",
                    price_per_month: 499,
                    events_per_second: 10_000,
                    burst_seconds: 2,
                },
                Tier {
                    name: "enterprise",
                    events_per_month: 100_000_000,
                    api_requests_per_minute: 2000,
                    storage_gb: 500,
                    users: None,
                    apps: None,
                    data_retention_days: 730,
                    ml_predictions_per_month: 1_000_000,
                    custom_models: true,
                    white_label: true,
                    sso: true,
                    support_level: "priority",
                    price_per_month: 2499,
                    events_per_second: 100_000,
                    burst_seconds: 2,
                },
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
        }
    }
}

impl TierTable {
    /// The tier called `name`; organisations hold it (no index to go stale).
    pub fn get(&self, name: &str) -> Option<&Arc<Tier>> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// For configuration overrides, before any organisation holds a tier.
    pub fn tiers_mut(&mut self) -> impl Iterator<Item = &mut Tier> {
        self.tiers.iter_mut().map(Arc::make_mut)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tiers.iter().map(|t| t.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_table_is_verbatim() {
        let t = TierTable::default();
        let s = t.get("starter").unwrap();
        assert_eq!(
            (s.events_per_month, s.api_requests_per_minute, s.users, s.apps, s.data_retention_days),
            (1_000_000, 100, Some(5), Some(2), 90)
        );
        let g = t.get("growth").unwrap();
        assert_eq!(
            (g.events_per_month, g.api_requests_per_minute, g.users, g.apps, g.data_retention_days),
            (10_000_000, 500, Some(20), Some(10), 180)
        );
        let e = t.get("enterprise").unwrap();
        assert_eq!(
            (e.events_per_month, e.api_requests_per_minute, e.users, e.apps, e.data_retention_days),
            (100_000_000, 2000, None, None, 730)
        );
        assert_eq!([s.events_per_second, g.events_per_second, e.events_per_second], [1_000, 10_000, 100_000]);
    }
}
