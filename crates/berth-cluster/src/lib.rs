//! A node's membership in its site's Raft group.
//!
//! `berth-cluster` runs the openraft instance over `berth-meta`'s storage, carries
//! Raft RPCs over gRPC (`berth.cluster.v1`), forwards writes proposed on a follower to
//! the leader, and gives linearizable read barriers. It is called by `berth-registry`
//! (propose a command, wait for a read barrier) and by the binary (start, serve the
//! internal gRPC service, shut down). It knows nothing of HTTP or OCI rules: commands
//! are opaque to it.

mod error;
mod follower_lease;
mod handover;
mod lease;
mod network;
mod node;
mod options;
mod service;
mod visibility;

pub use error::ClusterError;
pub use error::RemoteError;
pub use handover::BodyStream;
pub use handover::HandOverHandler;
pub use handover::OwnerChannel;
pub use network::GrpcNetwork;
pub use network::LinkAction;
pub use network::LinkFilter;
pub use network::Peers;
pub use node::ClusterNode;
pub use node::ClusterStatus;
pub use node::MemberStatus;
pub use node::MembershipChange;
pub use node::NodeStatus;
pub use node::validate_address;
pub use node::validate_http_address;
pub use options::RaftOptions;
pub use options::TimingError;
pub use service::RaftGrpcService;
pub use service::grpc_incoming;
pub use service::grpc_server;
pub use service::serve_grpc;
