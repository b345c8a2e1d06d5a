//! Administration: the cluster's status, membership changes and readiness.

use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

pub use berth_cluster::ClusterStatus;
pub use berth_cluster::MemberStatus;
use berth_cluster::MembershipChange;
use berth_meta::NodeInfo;

use crate::Registry;
use crate::RegistryError;
use crate::workers::Step;
use crate::workers::Worker;

/// How often the `cluster_status` worker asks the members for their status.
const STATUS_REFRESH: Duration = Duration::from_secs(2);
/// A kept status older than this is not used (its worker is stuck or not running).
const STATUS_STALE: Duration = Duration::from_secs(10);

/// A node to add to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    pub id: u64,
    /// Where the other members reach its cluster gRPC service.
    pub grpc_addr: String,
    /// Its registry API, for clients and status pages (may be empty).
    pub http_addr: String,
    /// Promote it even when the voters would then not have a reachable majority.
    pub force: bool,
}

/// The last cluster status the `cluster_status` worker saw, and when.
#[derive(Default)]
pub(crate) struct KeptStatus(Mutex<Option<(Instant, ClusterStatus)>>);

impl KeptStatus {
    fn fresh(&self) -> Option<ClusterStatus> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_ref()
            .filter(|(at, _)| at.elapsed() <= STATUS_STALE)
            .map(|(_, s)| s.clone())
    }

    fn keep(&self, status: ClusterStatus) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), status));
    }
}

/// Keeps every member's status at hand for metrics and readiness, so a scrape or
/// a probe never waits for other members.
pub(crate) struct StatusRefresher {
    registry: Registry,
}

impl StatusRefresher {
    pub(crate) fn new(registry: Registry) -> StatusRefresher {
        StatusRefresher { registry }
    }
}

#[async_trait::async_trait]
impl Worker for StatusRefresher {
    fn name(&self) -> String {
        "cluster_status".into()
    }

    fn interval(&self) -> Duration {
        STATUS_REFRESH
    }

    async fn step(&mut self) -> Result<Step, RegistryError> {
        let status = self.registry.inner.cluster.cluster_status().await;
        self.registry.inner.kept_status.keep(status);
        Ok(Step::Idle)
    }
}

impl Registry {
    /// The cluster as this node sees it, completed with every member's own report
    /// (asked now).
    pub async fn cluster_status(&self) -> ClusterStatus {
        let status = self.inner.cluster.cluster_status().await;
        self.inner.kept_status.keep(status.clone());
        status
    }

    /// [`Registry::cluster_status`] with the other members' reports as the
    /// background worker last saw them (at most a few seconds old) and this node's
    /// own state as it is now; everything asked now when nothing is kept.
    pub async fn recent_cluster_status(&self) -> ClusterStatus {
        let Some(mut status) = self.inner.kept_status.fresh() else {
            return self.cluster_status().await;
        };
        let me = self.inner.cluster.status();
        if me.leader == Some(me.id) {
            status.committed_index = me.quorum_index();
        }
        status.state = me.state;
        status.leader = me.leader;
        status.term = me.term;
        status.last_log_index = me.last_log_index;
        status.applied_index = me.applied_index;
        status.snapshot_index = me.snapshot_index;
        status
    }

    /// Add a node: it joins as a learner, catches up, then becomes a voter. Any
    /// node may be asked; the change is made on the leader.
    pub async fn add_member(&self, member: NewMember) -> Result<(), RegistryError> {
        self.change_membership(MembershipChange::Add {
            id: member.id,
            info: NodeInfo {
                grpc_addr: member.grpc_addr,
                http_addr: member.http_addr,
            },
            force: member.force,
        })
        .await
    }

    /// Remove a node from the voters and from the cluster. Unless `force`, refused
    /// when the remaining voters would not have a reachable majority.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<(), RegistryError> {
        self.change_membership(MembershipChange::Remove { id, force }).await
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<(), RegistryError> {
        self.inner.cluster.change_membership(change).await.map_err(|e| match e {
            berth_cluster::ClusterError::Config(m) => RegistryError::Membership(m),
            berth_cluster::ClusterError::InvalidMember(m) => RegistryError::BadRequest(m),
            other => other.into(),
        })
    }

    /// Ready to serve: metadata has a leader that a quorum of voters follows, and
    /// blob storage takes writes.
    pub async fn check_ready(&self) -> Result<(), RegistryError> {
        if !self.inner.cluster.is_ready() {
            return Err(RegistryError::Unavailable(
                "no raft leader, or this leader cannot reach a quorum of voters".into(),
            ));
        }
        if self.inner.kept_status.fresh().and_then(|s| s.leader_has_quorum) == Some(false) {
            return Err(RegistryError::Unavailable(
                "the raft leader cannot reach a quorum of voters".into(),
            ));
        }
        self.inner.blobs.check_writable().await?;
        Ok(())
    }

    /// Whether this node leads the cluster now (leader-only workers run here).
    pub fn is_leader(&self) -> bool {
        self.inner.cluster.is_leader()
    }
}
