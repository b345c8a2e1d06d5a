//! In-process Raft clusters for fast, unit-level scenarios: N `ClusterNode`s in one
//! process, each serving the real gRPC service on its own loopback port, with every
//! message between members passed through [`Faults`], which can partition, isolate,
//! delay and drop links.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use berth_cluster::ClusterNode;
use berth_cluster::LinkAction;
use berth_cluster::LinkFilter;
use berth_cluster::MembershipChange;
use berth_cluster::RaftOptions;
use berth_meta::NodeId;
use berth_meta::NodeInfo;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The fate of messages between members; links not mentioned pass.
#[derive(Default)]
pub struct Faults {
    links: Mutex<HashMap<(NodeId, NodeId), LinkAction>>,
}

impl Faults {
    fn set(&self, from: NodeId, to: NodeId, action: LinkAction) {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to), action);
    }

    /// No message crosses between `a` and `b`, in either direction.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        for x in a {
            for y in b {
                self.set(*x, *y, LinkAction::Drop);
                self.set(*y, *x, LinkAction::Drop);
            }
        }
    }

    /// Cut `id` off from every other member of `all`.
    pub fn isolate(&self, id: NodeId, all: &[NodeId]) {
        let others: Vec<NodeId> = all.iter().copied().filter(|o| *o != id).collect();
        self.partition(&[id], &others);
    }

    /// Drop messages from `from` to `to` only.
    pub fn drop_link(&self, from: NodeId, to: NodeId) {
        self.set(from, to, LinkAction::Drop);
    }

    /// Delay every message from `from` to `to`.
    pub fn delay(&self, from: NodeId, to: NodeId, by: Duration) {
        self.set(from, to, LinkAction::Delay(by));
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl LinkFilter for Faults {
    fn on_send(&self, from: NodeId, to: NodeId) -> LinkAction {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.get(&(from, to)).copied().unwrap_or(LinkAction::Pass)
    }
}

/// One member of a [`TestCluster`].
pub struct Member {
    pub node: ClusterNode,
    pub info: NodeInfo,
    stop: CancellationToken,
    _dir: TempDir,
}

/// Raft settings that make scenarios fast: short heartbeats and elections.
pub fn fast_options() -> RaftOptions {
    RaftOptions {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        request_timeout: Duration::from_secs(3),
        read_lease: Duration::from_millis(150),
        follower_lease: Duration::from_millis(150),
        ..RaftOptions::default()
    }
}

/// N members in this process, sharing one [`Faults`].
pub struct TestCluster {
    pub members: BTreeMap<NodeId, Member>,
    pub faults: Arc<Faults>,
    options: RaftOptions,
}

impl TestCluster {
    /// Members `1..=n`, bootstrapped together, with a leader elected.
    pub async fn start(n: u64, options: RaftOptions) -> anyhow::Result<TestCluster> {
        let mut cluster = TestCluster {
            members: BTreeMap::new(),
            faults: Arc::new(Faults::default()),
            options,
        };
        for id in 1..=n {
            cluster.open_member(id).await?;
        }
        let all: BTreeMap<NodeId, NodeInfo> = cluster.members.iter().map(|(id, m)| (*id, m.info.clone())).collect();
        cluster.member(1)?.node.bootstrap(all).await?;
        cluster.leader(Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    /// Start member `id` (not part of the cluster until added).
    async fn open_member(&mut self, id: NodeId) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let filter: Arc<dyn LinkFilter> = self.faults.clone();
        let node = ClusterNode::open_with_filter(id, dir.path(), self.options.clone(), Some(filter)).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let stop = CancellationToken::new();
        let server_stop = stop.clone();
        let server_node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = berth_cluster::serve_grpc(listener, server_node, server_stop.cancelled_owned()).await {
                tracing::warn!(error = %e, "test member's gRPC server failed");
            }
        });
        let info = NodeInfo {
            grpc_addr: addr,
            http_addr: String::new(),
        };
        self.members.insert(
            id,
            Member {
                node,
                info,
                stop,
                _dir: dir,
            },
        );
        Ok(())
    }

    pub fn member(&self, id: NodeId) -> anyhow::Result<&Member> {
        self.members.get(&id).with_context(|| format!("no member {id}"))
    }

    pub fn node(&self, id: NodeId) -> anyhow::Result<&ClusterNode> {
        Ok(&self.member(id)?.node)
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// The leader every running member agrees on, waiting up to `timeout`.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        self.leader_among(&self.ids(), timeout).await
    }

    /// The leader that all of `ids` agree on (e.g. the majority side of a partition).
    pub async fn leader_among(&self, ids: &[NodeId], timeout: Duration) -> anyhow::Result<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<NodeId>> = ids
                .iter()
                .filter_map(|id| self.members.get(id))
                .map(|m| m.node.status().leader)
                .collect();
            if let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*first))
                && ids.contains(first)
            {
                return Ok(*first);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader among {ids:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until member `id` has applied the log up to `index`.
    pub async fn wait_applied(&self, id: NodeId, index: u64, timeout: Duration) -> anyhow::Result<()> {
        self.node(id)?
            .wait_applied(index, timeout)
            .await
            .with_context(|| format!("member {id} did not apply index {index}"))
    }

    /// Start member `id` and add it through the leader (learner, catch-up, voter).
    pub async fn add_member(&mut self, id: NodeId) -> anyhow::Result<()> {
        let leader = self.leader(Duration::from_secs(10)).await?;
        self.open_member(id).await?;
        let info = self.member(id)?.info.clone();
        self.node(leader)?
            .change_membership(MembershipChange::Add { id, info, force: false })
            .await
            .context("adding a member")?;
        Ok(())
    }

    /// Stop member `id`: its gRPC server and its Raft instance.
    pub async fn stop_member(&mut self, id: NodeId) -> anyhow::Result<()> {
        let m = self.members.remove(&id).with_context(|| format!("no member {id}"))?;
        m.stop.cancel();
        m.node.shutdown().await;
        Ok(())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in self.members.values() {
            m.stop.cancel();
        }
    }
}
