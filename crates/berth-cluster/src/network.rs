use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use berth_meta::NodeId;
use berth_meta::NodeInfo;
use berth_meta::TypeConfig;
use berth_proto::cluster::v1::RaftPayload;
use berth_proto::cluster::v1::raft_service_client::RaftServiceClient;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::ClusterError;
use crate::visibility::Visibility;
use berth_telemetry::trace_context::PropagateTrace;

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

/// The HTTP/2 channels of one node to its peers: one per peer address, shared by Raft
/// replication, forwarded proposals and read indexes. openraft asks for a new client
/// for every leadership check (each read index) and followers forward every write, so
/// a fresh connection per call would add a TCP and HTTP/2 handshake to each of them.
#[derive(Clone, Default)]
pub struct Peers {
    connect_timeout: Duration,
    /// Local address of outgoing connections (multi-homed hosts); the OS picks when
    /// `None`.
    source: Option<IpAddr>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    pub fn new(connect_timeout: Duration, source: Option<IpAddr>) -> Self {
        Peers {
            connect_timeout,
            source,
            channels: Arc::default(),
        }
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, ClusterError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClusterError::Unavailable(format!("{addr}: {e}")))?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .local_address(self.source)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5)))
    }

    /// The shared channel to `addr`; it connects on first use and reconnects after
    /// the connection breaks.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, ClusterError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self.endpoint(addr)?.connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A channel to `addr` that is connected now, or an error saying why it cannot
    /// be: the caller learns that the peer is unreachable before sending anything.
    /// The shared channel is replaced by the new one.
    pub(crate) async fn connect(&self, addr: &str) -> Result<Channel, ClusterError> {
        let endpoint = self.endpoint(addr)?;
        let ch = tokio::time::timeout(self.connect_timeout, endpoint.connect())
            .await
            .map_err(|_| ClusterError::Unavailable(format!("{addr}: connect timed out")))?
            .map_err(|e| ClusterError::Unavailable(format!("{addr}: {e}")))?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// How long a commit notice to a follower may wait for the leader to apply what it
/// announces (applying one batch takes well under a millisecond).
const SETTLE_COMMIT: Duration = Duration::from_millis(2);

/// Creates gRPC clients to the other members.
#[derive(Clone)]
pub struct GrpcNetwork {
    from: NodeId,
    filter: Option<Arc<dyn LinkFilter>>,
    peers: Peers,
    visibility: Arc<Visibility>,
}

impl GrpcNetwork {
    pub(crate) fn new(
        peers: Peers,
        from: NodeId,
        filter: Option<Arc<dyn LinkFilter>>,
        visibility: Arc<Visibility>,
    ) -> Self {
        GrpcNetwork {
            from,
            filter,
            peers,
            visibility,
        }
    }
}

/// What happens to a message from one member to another. Production has no filter;
/// tests install one to partition, isolate, delay and drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    Pass,
    Drop,
    Delay(Duration),
}

/// Decides the fate of every message between two members.
pub trait LinkFilter: Send + Sync + 'static {
    fn on_send(&self, from: NodeId, to: NodeId) -> LinkAction;
}

/// Apply `filter` to a message `from` → `to`: `Err` when it is dropped.
pub(crate) async fn pass_link(
    filter: Option<&Arc<dyn LinkFilter>>,
    from: NodeId,
    to: NodeId,
) -> Result<(), ClusterError> {
    match filter.map_or(LinkAction::Pass, |f| f.on_send(from, to)) {
        LinkAction::Pass => Ok(()),
        LinkAction::Drop => Err(ClusterError::Unavailable(format!("link {from} -> {to} is down"))),
        LinkAction::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
    }
}

/// A client of a peer's Raft service whose calls carry the caller's trace context:
/// for calls made on behalf of one request (a forwarded write, an upload handed to
/// its owner), so the peer's work joins the request's trace. Raft's own traffic and
/// the batched read barriers serve no single request and use plain clients.
pub(crate) type TracedClient = RaftServiceClient<InterceptedService<Channel, PropagateTrace>>;

pub(crate) fn traced_client(channel: Channel) -> TracedClient {
    RaftServiceClient::with_interceptor(channel, PropagateTrace)
}

/// A lazily connected channel to one peer.
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    filter: Option<Arc<dyn LinkFilter>>,
    client: Result<RaftServiceClient<Channel>, ClusterError>,
    visibility: Arc<Visibility>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let client = self.peers.channel(&node.grpc_addr);
        PeerClient {
            from: self.from,
            target,
            filter: self.filter.clone(),
            client: client.map(RaftServiceClient::new),
            visibility: self.visibility.clone(),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    rmp_serde::to_vec_named(v).map_err(std::io::Error::other)
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if let Err(e) = pass_link(self.filter.as_ref(), self.from, self.target).await {
            return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                e.to_string(),
            ))));
        }
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    e.to_string(),
                ))));
            }
        };
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let mut client = client;
        let reply = match method {
            "append_entries" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let io = std::io::Error::other(format!("{method}: {status}"));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&io)),
                    _ => RPCError::Network(NetworkError::new(&io)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = rmp_serde::from_slice(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // Followers show nothing the leader has not applied (`visibility.rs`). A
        // commit notice (no entries) follows a commit at once, usually before the
        // apply: waiting a moment for it saves a second notice after the apply.
        if rpc.entries.is_empty() {
            self.visibility.settle(rpc.leader_commit, SETTLE_COMMIT).await;
        }
        rpc.leader_commit = self.visibility.cap(rpc.leader_commit);
        self.call("append_entries", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call("vote", &rpc, &option).await
    }
}
