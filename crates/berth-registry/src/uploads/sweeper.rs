//! The upload sweeper: cancels sessions idle for longer than the expiry and removes
//! stored upload bytes that no session owns (left by a crash between two steps of
//! an upload).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::time::Duration;

use berth_oci::UploadId;

use crate::Registry;
use crate::RegistryError;
use crate::now_ms;
use crate::workers::Step;
use crate::workers::Worker;

/// Sessions and orphans removed in one step at most: a backlog (after a long
/// outage) is worked off in steps, each with a bounded number of Raft entries.
const MAX_REMOVALS_PER_STEP: usize = 256;

/// The upload sweeper, as a background worker.
pub struct UploadSweeper {
    registry: Registry,
    expired: u64,
    orphans: u64,
}

impl UploadSweeper {
    pub fn new(registry: Registry) -> UploadSweeper {
        UploadSweeper {
            registry,
            expired: 0,
            orphans: 0,
        }
    }
}

#[async_trait::async_trait]
impl Worker for UploadSweeper {
    fn name(&self) -> String {
        "upload_sweeper".into()
    }

    fn interval(&self) -> Duration {
        self.registry.inner.options.sweep_interval
    }

    async fn step(&mut self) -> Result<Step, RegistryError> {
        let swept = self.registry.sweep_uploads(MAX_REMOVALS_PER_STEP).await?;
        self.expired = self.expired.saturating_add(swept.expired);
        self.orphans = self.orphans.saturating_add(swept.orphans);
        if swept.expired + swept.orphans > 0 {
            tracing::info!(expired = swept.expired, orphans = swept.orphans, "upload sweep");
        }
        Ok(if swept.limited { Step::Busy } else { Step::Idle })
    }

    fn progress(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("expired_sessions".to_string(), self.expired),
            ("orphans_removed".to_string(), self.orphans),
        ])
    }
}

/// What one sweep removed.
#[derive(Debug, Default)]
pub(crate) struct Swept {
    pub expired: u64,
    pub orphans: u64,
    /// It stopped at its bound with more left to remove.
    pub limited: bool,
}

impl Registry {
    /// Cancel this node's uploads idle for longer than the expiry and remove stored
    /// upload bytes that no session owns; at most `limit` removals.
    pub(crate) async fn sweep_uploads(&self, limit: usize) -> Result<Swept, RegistryError> {
        let now = now_ms();
        let expiry = u64::try_from(self.inner.options.upload_expiry.as_millis()).unwrap_or(u64::MAX);
        let mut swept = Swept::default();
        let mut budget = limit;
        let records = self.meta().uploads()?;
        for (id, rec) in &records {
            if rec.node == self.inner.cluster.id() && now.saturating_sub(rec.updated_at) > expiry {
                if budget == 0 {
                    swept.limited = true;
                    return Ok(swept);
                }
                let Ok(id) = UploadId::parse(id) else {
                    tracing::warn!(upload = %id.escape_default(), "an upload record has an invalid id");
                    continue;
                };
                tracing::info!(upload = %id, repo = %rec.repo, "upload expired");
                self.discard_upload(&id).await?;
                swept.expired += 1;
                budget -= 1;
            }
        }
        let known: HashSet<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
        for stored in self.inner.blobs.upload_list().await? {
            if known.contains(stored.as_str()) || self.meta().upload(&stored)?.is_some() {
                continue;
            }
            if let Ok(id) = UploadId::parse(&stored)
                && self.inner.sessions.contains(&id)
            {
                continue;
            }
            if budget == 0 {
                swept.limited = true;
                return Ok(swept);
            }
            tracing::info!(upload = %stored.escape_default(), "removing orphaned upload data");
            self.inner.blobs.upload_abort(&stored).await?;
            swept.orphans += 1;
            budget -= 1;
        }
        Ok(swept)
    }
}
