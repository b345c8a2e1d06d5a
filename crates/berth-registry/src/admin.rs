//! Administration: the cluster's status, membership changes and readiness.

pub use berth_cluster::ClusterStatus;
pub use berth_cluster::MemberStatus;
use berth_cluster::MembershipChange;
use berth_meta::NodeInfo;

use crate::Registry;
use crate::RegistryError;

/// A node to add to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    pub id: u64,
    /// Where the other members reach its cluster gRPC service.
    pub grpc_addr: String,
    /// Its registry API, for clients and status pages (may be empty).
    pub http_addr: String,
}

impl Registry {
    /// The cluster as this node sees it, completed with every member's own report.
    pub async fn cluster_status(&self) -> ClusterStatus {
        self.inner.cluster.cluster_status().await
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
        })
        .await
    }

    /// Remove a node from the voters and from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<(), RegistryError> {
        self.change_membership(MembershipChange::Remove { id }).await
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<(), RegistryError> {
        self.inner.cluster.change_membership(change).await.map_err(|e| match e {
            berth_cluster::ClusterError::Config(m) => RegistryError::Membership(m),
            other => other.into(),
        })
    }

    /// Ready to serve: metadata has a leader and blob storage takes writes.
    pub async fn check_ready(&self) -> Result<(), RegistryError> {
        if !self.inner.cluster.is_ready() {
            return Err(RegistryError::Unavailable("no raft leader".into()));
        }
        self.inner.blobs.check_writable().await?;
        Ok(())
    }

    /// Whether this node leads the cluster now (leader-only workers run here).
    pub fn is_leader(&self) -> bool {
        self.inner.cluster.is_leader()
    }
}
