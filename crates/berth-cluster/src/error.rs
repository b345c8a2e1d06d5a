use berth_meta::Rejection;
use thiserror::Error;

/// Errors of proposing commands and reading through the Raft group.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The command was applied and refused by the state machine; nothing changed.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// No leader, lost quorum or a timeout: the caller may retry later.
    #[error("metadata cluster unavailable: {0}")]
    Unavailable(String),
    /// A proposal reached a node that no longer leads; it was not appended.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// The local metadata store failed.
    #[error("metadata store: {0}")]
    Store(#[from] berth_meta::MetaError),
    /// Raft stopped on an unrecoverable error.
    #[error("raft fatal error: {0}")]
    Fatal(String),
    #[error("cluster configuration: {0}")]
    Config(String),
}
