//! The monthly quota counts of a single node, kept in the data directory so
//! that a restart does not give every organisation a fresh month.
//!
//! A background task (`quota-saver`) writes `quota.json` (month, organisation
//! → events charged) when the counts changed, every [`SAVE_EVERY`], and once
//! more on shutdown; the write goes to a temporary file, is synced, then
//! renamed, so a crash leaves the previous file or the new one. At start the
//! counts of the current month are loaded before any request is served.
//! Bound: a crash (not a clean stop) forgets at most what was charged since the
//! last save, i.e. at most `events_per_second × SAVE_EVERY` per organisation
//! (plus one burst). With `REDIS_URL` set, [`super::fleet_quota`] keeps the
//! counts instead (Redis and PostgreSQL) and this file is not written.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{month_index, Limiter};
use crate::clock::Clock;
use crate::tenant::OrgId;

/// How often changed counts are written.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);

#[derive(Serialize, Deserialize, PartialEq, Debug, Default)]
struct Saved {
    /// Months since year 0 (UTC calendar months).
    month: u32,
    counts: BTreeMap<String, u64>,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("quota.json")
}

/// Loads the counts of the current month into `limiter` (a missing or unreadable file, or one
/// of another month, loads nothing). Returns how many organisations were restored.
pub fn restore(limiter: &Limiter, data_dir: &Path, clock: &Clock) -> usize {
    let Ok(text) = std::fs::read_to_string(path(data_dir)) else { return 0 };
    let Ok(saved) = serde_json::from_str::<Saved>(&text) else {
        tracing::warn!(file = %path(data_dir).display(), "quota file unreadable; counting this month from zero");
        return 0;
    };
    if saved.month != month_index(clock.unix_secs() as i64) {
        return 0;
    }
    for (org, used) in &saved.counts {
        limiter.restore_month(&OrgId::new(org), saved.month, *used);
    }
    saved.counts.len()
}

fn snapshot(limiter: &Limiter, clock: &Clock) -> Saved {
    let month = month_index(clock.unix_secs() as i64);
    let counts = limiter.month_counts(month).into_iter().map(|(org, used)| (org.as_str().to_string(), used)).collect();
    Saved { month, counts }
}

fn write(data_dir: &Path, saved: &Saved) -> std::io::Result<()> {
    let target = path(data_dir);
    let tmp = target.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(saved).unwrap_or_default())?;
    file.sync_data()?;
    std::fs::rename(&tmp, &target)
}

/// Saves changed counts until `stop`, then once more.
pub async fn save_until(limiter: Arc<Limiter>, data_dir: PathBuf, clock: Clock, stop: CancellationToken) {
    let mut last = Saved::default();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => false,
            _ = stop.cancelled() => true,
        };
        let now = snapshot(&limiter, &clock);
        if now != last {
            let (dir, saving) = (data_dir.clone(), now);
            let result = tokio::task::spawn_blocking(move || write(&dir, &saving).map(|()| saving)).await;
            match result {
                Ok(Ok(saved)) => last = saved,
                Ok(Err(e)) => tracing::warn!(error = %e, "could not save the quota counts; retrying"),
                Err(_) => {}
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::TierTable;
    use crate::tenant::{Org, OrgStatus};

    #[test]
    fn counts_of_this_month_come_back_and_last_months_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(std::time::UNIX_EPOCH + Duration::from_secs(1_780_000_000));
        let tiers = TierTable::default();
        let org = Org::new("org_q", "Q", "q", tiers.get("starter").unwrap().clone(), OrgStatus::Active);
        let before = Limiter::new(clock.clone());
        assert_eq!(before.org(&org).reserve(42, clock.unix_secs() as i64), 42);
        write(dir.path(), &snapshot(&before, &clock)).unwrap();

        let after = Limiter::new(clock.clone());
        assert_eq!(restore(&after, dir.path(), &clock), 1);
        assert_eq!(after.month_events(&org.id, clock.unix_secs() as i64), 42);
        clock.advance(Duration::from_secs(40 * 86_400));
        let next_month = Limiter::new(clock.clone());
        assert_eq!(restore(&next_month, dir.path(), &clock), 0, "another month starts from zero");
    }
}
