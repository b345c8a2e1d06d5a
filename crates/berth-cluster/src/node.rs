use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use berth_meta::Applied;
use berth_meta::Command;
use berth_meta::CommandResponse;
use berth_meta::MetaReader;
use berth_meta::MetaStore;
use berth_meta::NodeId;
use berth_meta::NodeInfo;
use berth_meta::TypeConfig;
use berth_proto::cluster::v1::FollowerLeaseReply;
use berth_proto::cluster::v1::FollowerLeaseRequest;
use berth_proto::cluster::v1::ProposeRequest;
use berth_proto::cluster::v1::ReadIndexRequest;
use berth_proto::cluster::v1::StatusRequest;
use berth_proto::cluster::v1::raft_service_client::RaftServiceClient;
use openraft::Config;
use openraft::Raft;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::ClusterError;
use crate::GrpcNetwork;
use crate::follower_lease::CATCH_UP_SLACK;
use crate::follower_lease::FollowerLease;
use crate::follower_lease::Granted;
use crate::follower_lease::RETRY_AFTER;
use crate::follower_lease::leader_side_length;
use crate::handover::HandOverHandler;
use crate::handover::OwnerChannel;
use crate::handover::SharedHandler;
use crate::lease::LeaseCheck;
use crate::lease::ReadLease;
use crate::network::LinkFilter;
use crate::network::Peers;
use crate::network::pass_link;
use crate::network::traced_client;
use crate::options::RaftOptions;
use crate::visibility::Visibility;

mod membership;

pub use membership::MembershipChange;
pub use membership::validate_address;
pub use membership::validate_http_address;

/// How long one snapshot chunk may take to be acknowledged (see `Config` below).
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(600);

/// A point-in-time view of this node's Raft state, as it sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub members: BTreeMap<NodeId, NodeInfo>,
    /// Voters of the membership in effect (the other members are learners).
    pub voters: BTreeSet<NodeId>,
    /// On the leader: the log index each member is known to hold.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
    /// It answers linearizable reads alone under a follower lease right now.
    #[serde(default)]
    pub follower_lease: bool,
    /// On the leader: how long ago a quorum of voters last acknowledged it.
    #[serde(default)]
    pub quorum_ack_ms: Option<u64>,
}

impl NodeStatus {
    /// On the leader: the highest index a quorum of voters holds (the commit index).
    pub fn quorum_index(&self) -> Option<u64> {
        let replication = self.replication.as_ref()?;
        let mut held: Vec<u64> = self
            .voters
            .iter()
            .map(|v| replication.get(v).copied().flatten().unwrap_or(0))
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        held.get(self.voters.len() / 2).copied()
    }
}

/// One member in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub grpc_addr: String,
    pub http_addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// It answered the status request.
    pub reachable: bool,
    /// Its own report, when it answered.
    pub state: Option<String>,
    pub term: Option<u64>,
    pub applied_index: Option<u64>,
    /// The index the leader knows it holds.
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's log.
    pub lag: Option<u64>,
    /// It reported answering linearizable reads under a follower lease.
    pub follower_lease: Option<bool>,
}

/// The cluster as seen from the node asked, completed with every member's own
/// report and the leader's replication progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// Commit index according to the leader's replication progress.
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Whether the leader reported a quorum's acknowledgement lately (unknown when
    /// it did not answer).
    pub leader_has_quorum: Option<bool>,
    pub members: BTreeMap<NodeId, MemberStatus>,
}

/// A proposal forwarded to the leader comes back with the log index it was applied at,
/// so the forwarding node can wait for its own copy before answering its client.
#[derive(Serialize, Deserialize)]
pub(crate) struct ForwardedReply {
    pub index: u64,
    pub response: CommandResponse,
}

type BarrierWaiter = oneshot::Sender<Result<(), ClusterError>>;

/// Runs read-barrier rounds for queued callers until every sender is gone.
async fn run_barriers(
    raft: Raft<TypeConfig>,
    timeout: Duration,
    filter: Option<Arc<dyn LinkFilter>>,
    peers: Peers,
    lease: Arc<ReadLease>,
    mut rx: mpsc::UnboundedReceiver<BarrierWaiter>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = barrier_round(&raft, timeout, filter.as_ref(), &peers, &lease).await;
        lease.round_done();
        for w in waiters {
            // A caller that gave up no longer listens; nothing to do.
            let _ = w.send(result.as_ref().map(|_| ()).map_err(ClusterError::duplicate));
        }
    }
}

/// One read-index round: on the leader, confirm leadership and wait for the apply;
/// on a follower, ask the leader for its read index and wait to apply up to it.
async fn barrier_round(
    raft: &Raft<TypeConfig>,
    timeout: Duration,
    filter: Option<&Arc<dyn LinkFilter>>,
    peers: &Peers,
    lease: &ReadLease,
) -> Result<(), ClusterError> {
    // A follower that knows the leader asks it directly: asking the local Raft core
    // first would only answer "forward to the leader", at the cost of a task hop.
    let known = {
        let m = raft.metrics();
        let m = m.borrow();
        m.current_leader
            .filter(|l| m.state != ServerState::Leader && *l != m.id)
    };
    let index = match known.and_then(|l| leader_info(raft, Some(l)).map(|n| (l, n))) {
        Some((id, leader)) => read_index_from(raft, filter, peers, timeout, Some(id), &leader).await?,
        None => {
            let asked = Instant::now();
            let term = lease.leading_term();
            match raft.ensure_linearizable().await {
                Ok(_) => {
                    if let Some(term) = term {
                        lease.confirmed(term, asked);
                    }
                    return Ok(());
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => return Err(unavailable(e)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    let leader = f
                        .leader_node
                        .clone()
                        .or_else(|| leader_info(raft, f.leader_id))
                        .ok_or_else(|| unavailable("no leader known"))?;
                    read_index_from(raft, filter, peers, timeout, f.leader_id, &leader).await?
                }
                Err(RaftError::Fatal(e)) => return Err(ClusterError::Fatal(e.to_string())),
            }
        }
    };
    raft.wait(Some(timeout))
        .applied_index_at_least(Some(index), "read barrier")
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// The leader's read index: an index covering every write committed before the call.
async fn read_index_from(
    raft: &Raft<TypeConfig>,
    filter: Option<&Arc<dyn LinkFilter>>,
    peers: &Peers,
    timeout: Duration,
    id: Option<NodeId>,
    leader: &NodeInfo,
) -> Result<u64, ClusterError> {
    let mut client = peer_client(filter, peers, raft_id(raft), id, &leader.grpc_addr).await?;
    Ok(bounded(timeout, "read index", client.read_index(ReadIndexRequest {}))
        .await?
        .index)
}

/// A client of the member `to` at `addr`, once the link filter (tests) lets a
/// message from `from` pass.
async fn peer_client(
    filter: Option<&Arc<dyn LinkFilter>>,
    peers: &Peers,
    from: NodeId,
    to: Option<NodeId>,
    addr: &str,
) -> Result<RaftServiceClient<tonic::transport::Channel>, ClusterError> {
    if let Some(to) = to {
        pass_link(filter, from, to).await?;
    }
    Ok(RaftServiceClient::new(peers.channel(addr)?))
}

/// A call to another member bounded by `timeout`; every failure is "unavailable".
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClusterError> {
    Ok(tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| unavailable(format!("{what} timed out")))?
        .map_err(|s| ClusterError::from_status(&s, what))?
        .into_inner())
}

/// What a follower needs to ask the leader for its read lease.
struct LeaseAsker {
    raft: Raft<TypeConfig>,
    filter: Option<Arc<dyn LinkFilter>>,
    peers: Peers,
    timeout: Duration,
}

impl LeaseAsker {
    async fn ask(&self, to: NodeId, leader: &NodeInfo, applied: u64) -> Result<FollowerLeaseReply, ClusterError> {
        let from = raft_id(&self.raft);
        let mut client = peer_client(self.filter.as_ref(), &self.peers, from, Some(to), &leader.grpc_addr).await?;
        let request = FollowerLeaseRequest {
            from,
            applied,
            drains_log: true,
        };
        bounded(self.timeout, "follower lease request", client.follower_lease(request)).await
    }
}

/// On every member: while reads arrive and another member leads, hold a follower
/// read lease (ask again once half of it is used).
async fn keep_follower_lease(asker: LeaseAsker, lease: Arc<FollowerLease>) {
    let mut metrics = asker.raft.metrics();
    let mut retry_at: Option<Instant> = None;
    loop {
        let (leader, applied) = {
            let m = metrics.borrow_and_update();
            let other = m
                .current_leader
                .filter(|l| *l != m.id && m.state != ServerState::Leader);
            (other, m.last_applied.map_or(0, |l| l.index))
        };
        let Some((id, info)) = leader.and_then(|l| leader_info(&asker.raft, Some(l)).map(|n| (l, n))) else {
            // Leading, or no leader known: nothing to ask anyone until that changes.
            lease.forget_leader(None);
            if metrics.changed().await.is_err() {
                return;
            }
            continue;
        };
        lease.forget_leader(Some(id));
        let now = Instant::now();
        let may_ask = retry_at.is_none_or(|t| now >= t);
        if may_ask && lease.renew_due(now) {
            match asker.ask(id, &info, applied).await {
                Ok(reply) => {
                    retry_at = None;
                    match lease.granted_length(&reply) {
                        Some(length) => lease.set(Granted {
                            leader: id,
                            term: reply.term,
                            sent: now,
                            until: now + length,
                            index: reply.index,
                        }),
                        None => retry_at = Some(Instant::now() + RETRY_AFTER),
                    }
                }
                Err(e) => {
                    tracing::debug!(leader = id, error = %e, "follower lease request failed");
                    retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
            continue;
        }
        let wake_at = match (lease.next_renewal(now), retry_at) {
            (Some(t), Some(r)) => Some(t.max(r)),
            (t, None) => t,
            (None, Some(r)) => Some(r),
        };
        let deadline = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = lease.woken() => {}
            _ = deadline => {}
        }
    }
}

/// On the leader: after a commit index was held back from followers until this node
/// applied it (`visibility.rs`), send it at once with a heartbeat. Holds the node
/// weakly: it ends with the node (or with Raft), and keeps neither alive.
async fn send_held_back_commits(node: std::sync::Weak<Inner>, visibility: Arc<Visibility>) {
    loop {
        visibility.heartbeat_wanted().await;
        let Some(inner) = node.upgrade() else {
            return;
        };
        if inner.raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

async fn send_proposal(
    channel: tonic::transport::Channel,
    command: Vec<u8>,
) -> Result<berth_proto::cluster::v1::ProposeReply, tonic::Status> {
    let reply = traced_client(channel).propose(ProposeRequest { command }).await?;
    Ok(reply.into_inner())
}

/// The node the vote saved in this store is for, if a vote was saved.
async fn saved_vote_for(store: &MetaStore) -> Result<Option<Option<NodeId>>, ClusterError> {
    use openraft::storage::RaftLogStorage;
    let vote = store
        .log_store()
        .read_vote()
        .await
        .map_err(|e| ClusterError::Fatal(e.to_string()))?;
    Ok(vote.map(|v| v.leader_id().voted_for()))
}

fn raft_id(raft: &Raft<TypeConfig>) -> NodeId {
    raft.metrics().borrow().id
}

/// The advertised addresses of `leader`, from the membership this node knows.
fn leader_info(raft: &Raft<TypeConfig>, leader: Option<NodeId>) -> Option<NodeInfo> {
    let leader = leader?;
    let m = raft.metrics();
    let m = m.borrow();
    m.membership_config
        .nodes()
        .find(|(id, _)| **id == leader)
        .map(|(_, n)| n.clone())
}

/// The outcome of one proposal attempt that did not succeed.
enum Attempt {
    /// Certainly not appended anywhere: safe to try again.
    Retry(String),
    Failed(ClusterError),
}

/// A membership change that must go to the leader, or failed here.
pub(crate) enum ForwardOr {
    Forward(Option<NodeInfo>),
    Failed(ClusterError),
}

struct Inner {
    id: NodeId,
    raft: Raft<TypeConfig>,
    reader: MetaReader,
    options: RaftOptions,
    barrier: mpsc::UnboundedSender<BarrierWaiter>,
    lease: Arc<ReadLease>,
    /// This node's own follower read lease (as a follower).
    follower_lease: Option<Arc<FollowerLease>>,
    /// When entries become visible here, and who holds follower leases (as the
    /// leader): see `visibility.rs`.
    visibility: Arc<Visibility>,
    hand_over: SharedHandler,
    filter: Option<Arc<dyn LinkFilter>>,
    peers: Peers,
    background: Background,
    /// Upload requests other nodes handed to this one, while they run.
    hand_overs: TaskTracker,
}

/// How long [`ClusterNode::shutdown`] waits for the background tasks to end.
const BACKGROUND_STOP: Duration = Duration::from_secs(5);

/// The node's own tasks (read barriers, follower lease, commit heartbeats): each
/// runs until the node shuts down, which stops them before Raft.
#[derive(Default)]
struct Background {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// `task` must carry its span (`instrument`).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            stop.run_until_cancelled(task).await;
        });
    }

    /// Stop the tasks and wait for them, at most `bound`; `false` when some did not
    /// end in time.
    async fn stop(&self, bound: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }
}

/// This node's member of the Raft group, shared by every request handler.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

impl ClusterNode {
    /// Open the metadata store under `dir` and start Raft on it. The node takes part
    /// in no cluster until [`ClusterNode::bootstrap`] or a leader adds it.
    pub async fn open(id: NodeId, dir: &Path, options: RaftOptions) -> Result<ClusterNode, ClusterError> {
        Self::open_with_filter(id, dir, options, None).await
    }

    /// [`ClusterNode::open`] with every message to other members passed through
    /// `filter` (fault injection in tests).
    pub async fn open_with_filter(
        id: NodeId,
        dir: &Path,
        options: RaftOptions,
        filter: Option<Arc<dyn LinkFilter>>,
    ) -> Result<ClusterNode, ClusterError> {
        options.validate().map_err(|e| ClusterError::Config(e.to_string()))?;
        let store = MetaStore::open(dir)?;
        // A member that acknowledged a leader's heartbeat promised not to vote for
        // anyone else for `election_timeout_max` (the leader's read lease rests on
        // it), but that promise lived in memory. Coming back with a saved vote for
        // another node, it might be inside such a promise still: stay out of
        // elections for that long. (A vote for itself, as on a single node, promised
        // nothing to anyone.)
        let follower_leases = !options.read_lease.is_zero() && !options.follower_lease.is_zero();
        match saved_vote_for(&store).await? {
            Some(other) if other != Some(id) && !options.read_lease.is_zero() => {
                tracing::info!(wait = ?options.election_timeout_max, "restarted member: honouring its last vote promise");
                tokio::time::sleep(options.election_timeout_max).await;
            }
            // It may have led and granted follower leases it no longer knows of, and
            // openraft resumes leading the same term at once: let them run out.
            Some(me) if me == Some(id) && follower_leases => {
                let wait = leader_side_length(options.follower_lease);
                tracing::info!(
                    ?wait,
                    "restarted leader: waiting out follower leases it may have granted"
                );
                tokio::time::sleep(wait).await;
            }
            _ => {}
        }
        let config = Config {
            cluster_name: "berth".to_string(),
            heartbeat_interval: options.heartbeat_interval.as_millis() as u64,
            election_timeout_min: options.election_timeout_min.as_millis() as u64,
            election_timeout_max: options.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_after_logs),
            max_in_snapshot_log_to_keep: options.logs_to_keep,
            // Each snapshot chunk gets this long, and the last one is answered only
            // once the follower installed the whole snapshot (seconds per GiB):
            // openraft's 200 ms restarted every transfer of a big state from zero.
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT.as_millis() as u64,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| ClusterError::Config(e.to_string()))?);
        let peers = Peers::new(Duration::from_secs(2), options.source_address);
        let visibility = Arc::new(Visibility::default());
        let network = GrpcNetwork::new(peers.clone(), id, filter.clone(), visibility.clone());
        let state_machine = store.state_machine()?.with_gate(visibility.clone());
        let raft = Raft::new(id, config, network, store.log_store(), state_machine)
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        visibility.attach(raft.metrics());
        let (barrier, rx) = mpsc::unbounded_channel();
        let lease = Arc::new(ReadLease::new(id, options.read_lease, raft.server_metrics()));
        let background = Background::default();
        background.spawn(
            run_barriers(
                raft.clone(),
                options.request_timeout,
                filter.clone(),
                peers.clone(),
                lease.clone(),
                rx,
            )
            .instrument(tracing::info_span!("read_barriers", node = id)),
        );
        let follower_lease = follower_leases.then(|| {
            let follower_lease = Arc::new(FollowerLease::new(id, options.follower_lease, raft.metrics()));
            let asker = LeaseAsker {
                raft: raft.clone(),
                filter: filter.clone(),
                peers: peers.clone(),
                timeout: options.follower_lease.max(Duration::from_millis(100)),
            };
            background.spawn(
                keep_follower_lease(asker, follower_lease.clone())
                    .instrument(tracing::info_span!("follower_lease", node = id)),
            );
            follower_lease
        });
        let node = ClusterNode {
            inner: Arc::new(Inner {
                id,
                raft,
                options,
                barrier,
                lease,
                follower_lease,
                visibility,
                reader: store.reader(),
                hand_over: SharedHandler::default(),
                filter,
                peers,
                background,
                hand_overs: TaskTracker::new(),
            }),
        };
        node.inner.background.spawn(
            send_held_back_commits(Arc::downgrade(&node.inner), node.inner.visibility.clone())
                .instrument(tracing::info_span!("commit_heartbeats", node = id)),
        );
        Ok(node)
    }

    /// Initialise a new cluster with `members`, unless this node already belongs to
    /// one: starting an initialised node with the same configuration is safe.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<bool, ClusterError> {
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))?
        {
            return Ok(false);
        }
        tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "bootstrapping a new cluster");
        match raft.initialize(members).await {
            Ok(()) => Ok(true),
            // Another member's initialisation reached us first.
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "cluster already initialised");
                Ok(false)
            }
            Err(e) => Err(ClusterError::Fatal(e.to_string())),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    pub fn reader(&self) -> &MetaReader {
        &self.inner.reader
    }

    /// Wait until some member is leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ClusterError> {
        let mut rx = self.inner.raft.metrics();
        let wait = async {
            loop {
                if let Some(leader) = rx.borrow().current_leader {
                    return Ok(leader);
                }
                if rx.changed().await.is_err() {
                    return Err(ClusterError::Fatal("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| unavailable("no leader elected in time"))?
    }

    /// Ready to serve: some member leads, and when this node leads, a quorum of
    /// voters acknowledged it lately (a leader whose voters are gone stays leader
    /// in openraft, but can commit nothing).
    pub fn is_ready(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let leading = m.current_leader == Some(self.inner.id);
        m.running_state.is_ok()
            && m.current_leader.is_some()
            && (!leading || self.quorum_acked(m.millis_since_quorum_ack))
    }

    /// Whether a leader last acknowledged by a quorum `millis` ago still has one:
    /// within two maximal election timeouts (followers that stopped answering for
    /// that long are gone, or elect without it).
    fn quorum_acked(&self, millis: Option<u64>) -> bool {
        let window = u64::try_from((self.inner.options.election_timeout_max * 2).as_millis()).unwrap_or(u64::MAX);
        millis.is_some_and(|ms| ms <= window)
    }

    pub fn status(&self) -> NodeStatus {
        let follower_lease = self.holds_follower_lease();
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        NodeStatus {
            follower_lease,
            quorum_ack_ms: m.millis_since_quorum_ack,
            id: self.inner.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            members: m.membership_config.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            voters: m.membership_config.voter_ids().collect(),
            replication: m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, matched)| (*id, matched.map(|l| l.index))).collect()),
        }
    }

    /// Every member's own report (asked over gRPC, each within a second) and the
    /// leader's replication progress, as one view.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let me = self.status();
        let reports = futures::future::join_all(me.members.iter().map(|(id, info)| {
            let local = (*id == me.id).then(|| me.clone());
            async move {
                match local {
                    Some(s) => (*id, Some(s)),
                    None => (*id, self.ask_status(&info.grpc_addr).await),
                }
            }
        }))
        .await;
        let reports: BTreeMap<NodeId, Option<NodeStatus>> = reports.into_iter().collect();
        let leader = me.leader.and_then(|l| reports.get(&l).cloned().flatten());
        let leader_last = leader.as_ref().and_then(|l| l.last_log_index);
        let members = me
            .members
            .iter()
            .map(|(id, info)| {
                let report = reports.get(id).cloned().flatten();
                let matched = leader
                    .as_ref()
                    .and_then(|l| l.replication.as_ref())
                    .and_then(|r| r.get(id).copied().flatten());
                let held = matched.or(report.as_ref().and_then(|r| r.applied_index));
                let status = MemberStatus {
                    grpc_addr: info.grpc_addr.clone(),
                    http_addr: info.http_addr.clone(),
                    role: if me.voters.contains(id) { "voter" } else { "learner" }.to_string(),
                    reachable: report.is_some(),
                    state: report.as_ref().map(|r| r.state.clone()),
                    term: report.as_ref().map(|r| r.term),
                    applied_index: report.as_ref().and_then(|r| r.applied_index),
                    matched_index: matched,
                    lag: leader_last.zip(held).map(|(last, held)| last.saturating_sub(held)),
                    follower_lease: report.as_ref().map(|r| r.follower_lease),
                };
                (*id, status)
            })
            .collect();
        ClusterStatus {
            id: me.id,
            state: me.state,
            leader: me.leader,
            term: me.term,
            last_log_index: me.last_log_index,
            committed_index: leader.as_ref().and_then(NodeStatus::quorum_index),
            applied_index: me.applied_index,
            snapshot_index: me.snapshot_index,
            leader_has_quorum: leader.as_ref().map(|l| self.quorum_acked(l.quorum_ack_ms)),
            members,
        }
    }

    async fn ask_status(&self, addr: &str) -> Option<NodeStatus> {
        let channel = self.inner.peers.channel(addr).ok()?;
        let mut client = RaftServiceClient::new(channel);
        let call = client.status(StatusRequest {});
        let reply = tokio::time::timeout(Duration::from_secs(1), call).await.ok()?.ok()?;
        rmp_serde::from_slice(&reply.into_inner().status).ok()
    }

    /// Propose `cmd` and wait until it is committed and applied on this node.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ClusterError> {
        let (_, response) = self.propose_applied(cmd).await?;
        response.0.map_err(ClusterError::Rejected)
    }

    /// [`ClusterNode::propose`] for changes that take something away (deletes).
    /// Content by digest is read from each node's own state, so before answering
    /// this also waits (about a second at most) until every member that answers has
    /// applied the change: a read through any healthy node then agrees with the
    /// acknowledged delete. A member that does not answer is not waited for.
    pub async fn propose_everywhere(&self, cmd: Command) -> Result<Applied, ClusterError> {
        let (index, response) = self.propose_applied(cmd).await?;
        self.wait_members_applied(index, Duration::from_secs(1)).await;
        response.0.map_err(ClusterError::Rejected)
    }

    /// Propose and wait until applied here: the log index and the response.
    async fn propose_applied(&self, cmd: Command) -> Result<(u64, CommandResponse), ClusterError> {
        let kind = cmd.kind();
        let timeout = self.inner.options.request_timeout;
        let (index, response) = tokio::time::timeout(timeout, self.propose_inner(cmd))
            .await
            .map_err(|_| unavailable(format!("proposal {kind} timed out after {timeout:?}")))??;
        self.wait_applied(index, timeout).await?;
        Ok((index, response))
    }

    /// Wait until every other member that answers has applied `index`, or `within`.
    async fn wait_members_applied(&self, index: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let others: Vec<String> = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .nodes()
                .filter(|(id, _)| **id != self.inner.id)
                .map(|(_, n)| n.grpc_addr.clone())
                .collect()
        };
        futures::future::join_all(others.iter().map(|addr| async move {
            while tokio::time::Instant::now() < deadline {
                match self.ask_status(addr).await {
                    Some(s) if s.applied_index.unwrap_or(0) >= index => return,
                    Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    None => {
                        tracing::debug!(member = %addr, index, "member did not answer; not waiting for it");
                        return;
                    }
                }
            }
        }))
        .await;
    }

    /// Propose until some leader takes the command. While leadership moves (no leader
    /// known, the leader unreachable, a node that stopped leading), the command was
    /// certainly not appended, so it is retried; the caller's timeout bounds the wait.
    ///
    /// A node that knows no leader for longer than an election takes (several
    /// election timeouts) is cut off from a majority: it answers at once instead of
    /// waiting for the caller's timeout.
    async fn propose_inner(&self, cmd: Command) -> Result<(u64, CommandResponse), ClusterError> {
        let mut backoff = Duration::from_millis(20);
        let mut leaderless_since: Option<std::time::Instant> = None;
        let leaderless_limit = self.inner.options.election_timeout_max * 3;
        loop {
            match self.try_propose(&cmd).await {
                Err(Attempt::Retry(why)) => {
                    if self.inner.raft.metrics().borrow().current_leader.is_some() {
                        leaderless_since = None;
                    } else {
                        let since = *leaderless_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() >= leaderless_limit {
                            return Err(unavailable(format!(
                                "no leader for {:?}: this node cannot reach a majority of the cluster",
                                since.elapsed()
                            )));
                        }
                    }
                    tracing::debug!(command = cmd.kind(), %why, "no leader took the proposal yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(done) => return Ok(done),
            }
        }
    }

    async fn try_propose(&self, cmd: &Command) -> Result<(u64, CommandResponse), Attempt> {
        match self.inner.raft.client_write(cmd.clone()).await {
            Ok(r) => Ok((r.log_id.index, r.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let Some(leader) = f
                    .leader_node
                    .clone()
                    .or_else(|| leader_info(&self.inner.raft, f.leader_id))
                else {
                    return Err(Attempt::Retry("no leader known".into()));
                };
                let term = self.inner.raft.metrics().borrow().current_term;
                let sent = async {
                    if let Some(to) = f.leader_id {
                        pass_link(self.inner.filter.as_ref(), self.inner.id, to)
                            .await
                            .map_err(|e| Attempt::Retry(e.to_string()))?;
                    }
                    self.forward(&leader, cmd).await
                };
                // A leader that stops answering (a black hole, not a refused
                // connection) would hold the proposal until TCP gives up. Once this
                // node sees another leader or a later term, answer at once: the
                // outcome is unknown, so the caller must retry (not this node: the
                // command might be applied twice).
                tokio::select! {
                    done = sent => done,
                    () = self.leader_moved(f.leader_id, term) => Err(Attempt::Failed(unavailable(
                        "the leader changed while a proposal was on its way to it: it may or may not \
                         have been applied; retry",
                    ))),
                }
            }
            Err(RaftError::APIError(e)) => Err(Attempt::Failed(unavailable(e))),
            Err(RaftError::Fatal(e)) => Err(Attempt::Failed(ClusterError::Fatal(e.to_string()))),
        }
    }

    /// Resolves once this node no longer sees `leader` leading `term`.
    async fn leader_moved(&self, leader: Option<NodeId>, term: u64) {
        let Some(leader) = leader else {
            return std::future::pending().await;
        };
        let mut metrics = self.inner.raft.metrics();
        let _ = metrics
            .wait_for(|m| m.current_term > term || m.current_leader.is_some_and(|l| l != leader))
            .await;
    }

    async fn forward(&self, leader: &NodeInfo, cmd: &Command) -> Result<(u64, CommandResponse), Attempt> {
        tracing::debug!(leader = %leader.grpc_addr, command = cmd.kind(), "forwarding proposal to leader");
        let addr = &leader.grpc_addr;
        let command = rmp_serde::to_vec_named(cmd).map_err(|e| Attempt::Failed(unavailable(e)))?;
        let peers = &self.inner.peers;
        let shared = peers.channel(addr).map_err(|e| Attempt::Retry(e.to_string()))?;
        let reply = match send_proposal(shared, command.clone()).await {
            // The shared connection could not be made or was refused before the call
            // ran (connect error, refused stream, dead keep-alive). Connect anew: a
            // leader that cannot be reached has not seen the command.
            Err(s) if ClusterError::is_transport_failure(&s) => {
                tracing::debug!(leader = %addr, status = %s, "reconnecting to the leader");
                let fresh = peers.connect(addr).await.map_err(|e| Attempt::Retry(e.to_string()))?;
                send_proposal(fresh, command).await
            }
            other => other,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(s) => {
                return Err(match ClusterError::from_status(&s, &format!("leader {addr}")) {
                    // The node no longer leads and did not append the command.
                    ClusterError::NotLeader(why) => Attempt::Retry(why),
                    other => Attempt::Failed(other),
                });
            }
        };
        let reply: ForwardedReply =
            rmp_serde::from_slice(&reply.response).map_err(|e| Attempt::Failed(unavailable(e)))?;
        Ok((reply.index, reply.response))
    }

    /// Propose on this node only; used by the gRPC service for forwarded proposals.
    pub(crate) async fn propose_as_leader(&self, cmd: Command) -> Result<ForwardedReply, ClusterError> {
        match self.inner.raft.client_write(cmd).await {
            Ok(r) => Ok(ForwardedReply {
                index: r.log_id.index,
                response: r.data,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ClusterError::NotLeader("this node no longer leads".into()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Register what runs upload requests handed over to this node (once).
    pub fn set_hand_over_handler(&self, handler: Arc<dyn HandOverHandler>) {
        if self.inner.hand_over.set(handler).is_err() {
            tracing::warn!("hand-over handler already set");
        }
    }

    pub(crate) fn hand_over_handler(&self) -> Option<Arc<dyn HandOverHandler>> {
        self.inner.hand_over.get().cloned()
    }

    /// A connection to `node`, the owner of an upload session; an error means it
    /// cannot be reached now.
    pub async fn connect_owner(&self, node: NodeId) -> Result<OwnerChannel, ClusterError> {
        let addr = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .nodes()
                .find(|(id, _)| **id == node)
                .map(|(_, n)| n.grpc_addr.clone())
        };
        match addr {
            Some(a) if !a.is_empty() => {
                OwnerChannel::connect(&self.inner.peers, a, self.inner.options.request_timeout).await
            }
            _ => Err(ClusterError::Unavailable(format!("node {node} is not a member"))),
        }
    }

    /// Wait until this node has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "wait for local apply")
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// After this returns, this node's state reflects every write committed before the
    /// call: reads that follow are linearizable.
    ///
    /// Concurrent callers share rounds: every caller waits for the first round that
    /// starts after it arrived, so one read index serves a whole burst of reads. On
    /// the leader, a valid read lease (`lease.rs`) answers at once, and so does a
    /// follower's lease (`follower_lease.rs`) on a follower.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        match self.inner.lease.check() {
            LeaseCheck::Valid => return Ok(()),
            LeaseCheck::Renew => {
                // Renew in the background: nobody waits for this round.
                let (tx, _) = oneshot::channel();
                if self.inner.barrier.send(tx).is_err() {
                    self.inner.lease.round_done();
                }
                return Ok(());
            }
            LeaseCheck::Expired => {}
        }
        if self.inner.follower_lease.as_ref().is_some_and(|l| l.check()) && self.drain_log().await {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .barrier
            .send(tx)
            .map_err(|_| ClusterError::Fatal("read barrier task stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClusterError::Fatal("read barrier task stopped".into())),
        }
    }

    /// Under a follower lease: apply everything this node's log holds now, since
    /// another node may already show it (`visibility.rs`). `false` when that takes
    /// longer than a lease: the read then goes through the leader.
    async fn drain_log(&self) -> bool {
        let tip = self.inner.reader.log_tip();
        let applied = self.inner.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        if applied >= tip {
            return true;
        }
        self.inner
            .raft
            .wait(Some(self.inner.options.follower_lease))
            .applied_index_at_least(Some(tip), "follower lease read")
            .await
            .is_ok()
    }

    /// A read index for a follower's read barrier: an index that covers every write
    /// acknowledged before this call, and whatever any member showed before it
    /// (members show only what the leader applied: `visibility.rs`). The request
    /// joins this node's batched barrier rounds, so the reads of all followers and of
    /// the leader itself share one leadership check per burst; once the barrier
    /// passed, everything applied here qualifies.
    pub(crate) async fn leader_read_index(&self) -> Result<u64, ClusterError> {
        self.read_barrier().await?;
        self.stored_applied_index()
    }

    /// The applied index as written with the last applied command. openraft answers
    /// a write before it publishes the new index in its metrics, so the metrics may
    /// not cover a write that was already acknowledged; the store does.
    fn stored_applied_index(&self) -> Result<u64, ClusterError> {
        Ok(self.inner.reader.applied_index()?.unwrap_or(0))
    }

    /// Answer a follower's lease request (see `follower_lease.rs`): grant it a lease
    /// when this node leads under its own read lease and the follower is caught up.
    pub(crate) async fn follower_lease_request(
        &self,
        req: FollowerLeaseRequest,
    ) -> Result<FollowerLeaseReply, ClusterError> {
        let inner = &self.inner;
        let mut reply = FollowerLeaseReply::default();
        // Only other members count: a removed node, or anything else that reaches
        // this port, would hold writes back for nothing.
        let member = {
            let m = inner.raft.metrics();
            let m = m.borrow();
            req.from != inner.id && m.membership_config.nodes().any(|(id, _)| *id == req.from)
        };
        if !member {
            tracing::debug!(from = req.from, "follower lease request from a non-member");
            return Ok(reply);
        }
        let length = inner.options.follower_lease;
        // A member that does not say it applies its log before reading under a lease
        // (an older version) must not get one: the leader only waits for holders to
        // log writes.
        if req.drains_log && inner.follower_lease.is_some() && inner.lease.leading_term().is_some() {
            self.read_barrier().await?;
            if let Some(term) = inner.lease.holding().filter(|_| self.may_hold_lease(&req)) {
                // Registered before the index is read: everything applied here
                // without waiting for this holder is in this node's log by then
                // (`visibility.rs`).
                inner
                    .visibility
                    .register(req.from, Instant::now() + leader_side_length(length));
                reply = FollowerLeaseReply {
                    granted: true,
                    term,
                    index: inner.reader.log_tip(),
                    lease_micros: u64::try_from(length.as_micros()).unwrap_or(u64::MAX),
                };
            }
        }
        pass_link(inner.filter.as_ref(), inner.id, req.from)
            .await
            .map_err(unavailable)?;
        Ok(reply)
    }

    /// Is the member asking for a lease caught up? It must have logged and applied
    /// nearly everything committed (else writes, and its own reads, would wait for
    /// it), and not be what the leader's applies wait for (`visibility.rs`).
    fn may_hold_lease(&self, req: &FollowerLeaseRequest) -> bool {
        let status = self.status();
        let Some(committed) = status.quorum_index() else {
            return false;
        };
        let logged = status
            .replication
            .as_ref()
            .and_then(|r| r.get(&req.from).copied().flatten())
            .unwrap_or(0);
        logged.saturating_add(CATCH_UP_SLACK) >= committed
            && req.applied.saturating_add(CATCH_UP_SLACK) >= committed
            && self
                .inner
                .visibility
                .may_register(req.from, logged, committed, self.inner.options.follower_lease / 4)
    }

    /// Does this node hold a usable follower read lease right now?
    pub fn holds_follower_lease(&self) -> bool {
        self.inner.follower_lease.as_ref().is_some_and(|l| l.valid_now())
    }

    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    /// Run `handling`, a request another node handed over, as one that
    /// [`ClusterNode::drain_hand_overs`] waits for.
    pub(crate) async fn hand_over_tracked<T>(&self, handling: impl std::future::Future<Output = T>) -> T {
        self.inner.hand_overs.track_future(handling).await
    }

    /// Does a request another node handed over run here now?
    pub fn hand_over_in_flight(&self) -> bool {
        !self.inner.hand_overs.is_empty()
    }

    /// Wait until no handed-over request runs here, including those that arrive
    /// meanwhile: they are requests of clients like the HTTP ones a shutting-down
    /// node drains, and this node's sessions are only here. The caller bounds it.
    pub async fn drain_hand_overs(&self) {
        self.inner.hand_overs.close();
        self.inner.hand_overs.wait().await;
    }

    /// Stop the node's background tasks (waiting for them a bounded time), then
    /// Raft, which closes the metadata store. Pending proposals fail with
    /// "unavailable".
    pub async fn shutdown(&self) {
        if !self.inner.background.stop(BACKGROUND_STOP).await {
            tracing::warn!(bound = ?BACKGROUND_STOP, "cluster background tasks did not stop in time");
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(voters: &[NodeId], replication: &[(NodeId, Option<u64>)]) -> NodeStatus {
        NodeStatus {
            id: 1,
            state: "Leader".into(),
            leader: Some(1),
            term: 1,
            last_log_index: Some(10),
            applied_index: Some(10),
            snapshot_index: None,
            members: BTreeMap::new(),
            voters: voters.iter().copied().collect(),
            replication: Some(replication.iter().copied().collect()),
            follower_lease: false,
            quorum_ack_ms: Some(0),
        }
    }

    #[tokio::test]
    async fn shutdown_stops_and_awaits_every_background_task() {
        let dir = tempfile::tempdir().unwrap();
        let node = ClusterNode::open(1, dir.path(), RaftOptions::default()).await.unwrap();
        // Read barriers, the follower lease, commit heartbeats.
        assert_eq!(node.inner.background.tasks.len(), 3);
        node.shutdown().await;
        assert!(node.inner.background.tasks.is_empty());
        assert!(
            node.read_barrier().await.is_err(),
            "a read barrier passed after shutdown"
        );
    }

    #[test]
    fn the_quorum_index_is_held_by_a_majority_of_voters() {
        // Three voters: the second highest is held by two of them.
        assert_eq!(
            status(&[1, 2, 3], &[(1, Some(10)), (2, Some(7)), (3, Some(4))]).quorum_index(),
            Some(7)
        );
        // A learner's progress does not count; an unknown one counts as nothing.
        assert_eq!(
            status(&[1, 2, 3], &[(1, Some(10)), (2, None), (3, Some(4)), (4, Some(10))]).quorum_index(),
            Some(4)
        );
        // Five voters need three.
        let five = status(
            &[1, 2, 3, 4, 5],
            &[(1, Some(9)), (2, Some(8)), (3, Some(3)), (4, Some(2)), (5, Some(7))],
        );
        assert_eq!(five.quorum_index(), Some(7));
        // Only the leader knows.
        let mut follower = five;
        follower.replication = None;
        assert_eq!(follower.quorum_index(), None);
    }
}
