use berth_meta::Command;
use berth_meta::NodeId;
use berth_meta::TypeConfig;
use berth_proto::cluster::v1::FollowerLeaseReply;
use berth_proto::cluster::v1::FollowerLeaseRequest;
use berth_proto::cluster::v1::HandOverFrame;
use berth_proto::cluster::v1::HandOverReply;
use berth_proto::cluster::v1::MembershipReply;
use berth_proto::cluster::v1::MembershipRequest;
use berth_proto::cluster::v1::ProposeReply;
use berth_proto::cluster::v1::ProposeRequest;
use berth_proto::cluster::v1::RaftPayload;
use berth_proto::cluster::v1::ReadIndexReply;
use berth_proto::cluster::v1::ReadIndexRequest;
use berth_proto::cluster::v1::StatusReply;
use berth_proto::cluster::v1::StatusRequest;
use berth_proto::cluster::v1::hand_over_frame::Kind;
use berth_proto::cluster::v1::raft_service_server::RaftService;
use berth_proto::cluster::v1::raft_service_server::RaftServiceServer;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::VoteRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::ClusterError;
use crate::ClusterNode;
use crate::MembershipChange;
use crate::handover;
use crate::node::ForwardOr;

/// The internal gRPC service every member serves to its peers.
pub struct RaftGrpcService {
    node: ClusterNode,
}

impl RaftGrpcService {
    pub fn new(node: ClusterNode) -> RaftServiceServer<RaftGrpcService> {
        RaftServiceServer::new(RaftGrpcService { node }).max_decoding_message_size(64 << 20)
    }
}

fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    rmp_serde::from_slice(data).map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    rmp_serde::to_vec_named(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn status(e: ClusterError) -> Status {
    e.to_status()
}

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.into_inner().data)?;
        reply(&self.node.raft().append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(&req.into_inner().data)?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&req.into_inner().data)?;
        reply(&self.node.raft().install_snapshot(rpc).await)
    }

    async fn propose(&self, req: Request<ProposeRequest>) -> Result<Response<ProposeReply>, Status> {
        let cmd: Command = decode(&req.into_inner().command)?;
        let forwarded = self.node.propose_as_leader(cmd).await.map_err(status)?;
        let response = rmp_serde::to_vec_named(&forwarded).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ProposeReply { response }))
    }

    async fn change_membership(&self, req: Request<MembershipRequest>) -> Result<Response<MembershipReply>, Status> {
        let change: MembershipChange = decode(&req.into_inner().change)?;
        match self.node.change_membership_here(change).await {
            Ok(()) => Ok(Response::new(MembershipReply {})),
            Err(ForwardOr::Forward(_)) => Err(status(ClusterError::NotLeader(
                "not the leader (leadership moved)".into(),
            ))),
            Err(ForwardOr::Failed(e)) => Err(status(e)),
        }
    }

    async fn hand_over(
        &self,
        req: Request<tonic::Streaming<HandOverFrame>>,
    ) -> Result<Response<HandOverReply>, Status> {
        let Some(handler) = self.node.hand_over_handler() else {
            return Err(status(ClusterError::Unavailable(
                "this node does not take upload hand-overs yet".into(),
            )));
        };
        // Tracked from the first frame: a node shutting down lets the request finish.
        self.node
            .hand_over_tracked(async move {
                let mut frames = req.into_inner();
                let header = match frames.message().await? {
                    Some(HandOverFrame {
                        kind: Some(Kind::Header(h)),
                    }) => h,
                    _ => return Err(Status::invalid_argument("a hand-over starts with its header")),
                };
                let reply = handler
                    .handle(header, handover::body_of(frames))
                    .await
                    .map_err(|e| status(ClusterError::Remote(e)))?;
                Ok(Response::new(HandOverReply { reply }))
            })
            .await
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let status = rmp_serde::to_vec_named(&self.node.status()).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(StatusReply { status }))
    }

    async fn read_index(&self, _req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let index = self.node.leader_read_index().await.map_err(status)?;
        Ok(Response::new(ReadIndexReply { index }))
    }

    async fn follower_lease(&self, req: Request<FollowerLeaseRequest>) -> Result<Response<FollowerLeaseReply>, Status> {
        let reply = self
            .node
            .follower_lease_request(req.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(reply))
    }
}

/// A gRPC server for the node's services (the cluster's, and whatever the binary
/// adds beside it): each call gets a span that continues the caller's trace.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder().trace_fn(berth_telemetry::trace_context::grpc_server_span)
}

/// The connections `listener` accepts, with `TCP_NODELAY`: Raft messages and
/// read-index round trips are small, and Nagle's algorithm with delayed ACKs would
/// add ~40 ms to each.
pub fn grpc_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use futures::TryStreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map_ok(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        stream
    })
}

/// Serve the cluster's gRPC service alone on `listener` until `shutdown` completes
/// (in-process test clusters; the binary composes its server from [`grpc_server`]).
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    node: ClusterNode,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    grpc_server()
        .add_service(RaftGrpcService::new(node))
        .serve_with_incoming_shutdown(grpc_incoming(listener), shutdown)
        .await
}
