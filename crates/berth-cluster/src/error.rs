use berth_meta::Rejection;
use berth_oci::ErrorCode;
use thiserror::Error;
use tonic::metadata::MetadataValue;

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
    /// A membership change the cluster's state refuses (no quorum would be left,
    /// another change in progress, a learner that did not catch up).
    #[error("cluster configuration: {0}")]
    Config(String),
    /// A membership change that cannot be right whatever the state (an address
    /// that is no `host:port`).
    #[error("invalid member: {0}")]
    InvalidMember(String),
    /// Another member ran the request and failed with this error.
    #[error(transparent)]
    Remote(RemoteError),
}

/// An error as it crosses a gRPC hop between members: the code the client of the
/// far side would have seen, and its message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

/// gRPC metadata naming which [`ClusterError`] a status stands for.
const KIND: &str = "berth-error-kind";
/// gRPC metadata naming the [`ErrorCode`] of a [`ClusterError::Remote`].
const CODE: &str = "berth-error-code";

impl ClusterError {
    /// The spec's (or berth's operational) error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClusterError::Rejected(r) => rejection_code(r),
            ClusterError::Unavailable(_) | ClusterError::NotLeader(_) => ErrorCode::Unavailable,
            ClusterError::Store(_) | ClusterError::Fatal(_) => ErrorCode::Internal,
            ClusterError::Config(_) => ErrorCode::Conflict,
            ClusterError::InvalidMember(_) => ErrorCode::BadRequest,
            ClusterError::Remote(e) => e.code,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ClusterError::Rejected(_) | ClusterError::Remote(_) => "remote",
            ClusterError::Unavailable(_) => "unavailable",
            ClusterError::NotLeader(_) => "not_leader",
            ClusterError::Store(_) | ClusterError::Fatal(_) => "internal",
            ClusterError::Config(_) => "config",
            ClusterError::InvalidMember(_) => "invalid_member",
        }
    }

    /// The message without this type's prefix, as the far side restores it.
    fn bare_message(&self) -> String {
        match self {
            ClusterError::Unavailable(m)
            | ClusterError::NotLeader(m)
            | ClusterError::Fatal(m)
            | ClusterError::Config(m)
            | ClusterError::InvalidMember(m) => m.clone(),
            ClusterError::Remote(e) => e.message.clone(),
            other => other.to_string(),
        }
    }

    /// The gRPC status this error crosses a hop as: a status code matching its
    /// error code, and metadata from which [`ClusterError::from_status`] restores it.
    pub fn to_status(&self) -> tonic::Status {
        let code = self.code();
        let mut status = tonic::Status::new(tonic::Code::from_i32(code.grpc_code()), self.bare_message());
        status
            .metadata_mut()
            .insert(KIND, MetadataValue::from_static(self.kind()));
        status
            .metadata_mut()
            .insert(CODE, MetadataValue::from_static(code.name()));
        status
    }

    /// The error a peer's status stands for. A status without berth's metadata
    /// comes from the transport (refused connection, timeout, reset): the peer is
    /// unavailable for `what`.
    pub fn from_status(status: &tonic::Status, what: &str) -> ClusterError {
        let meta = |key: &str| status.metadata().get(key).and_then(|v| v.to_str().ok());
        let message = status.message().to_string();
        match meta(KIND) {
            Some("not_leader") => ClusterError::NotLeader(message),
            Some("config") => ClusterError::Config(message),
            Some("invalid_member") => ClusterError::InvalidMember(message),
            Some("internal") => ClusterError::Remote(RemoteError::new(ErrorCode::Internal, message)),
            Some("remote") => {
                let code = meta(CODE).and_then(ErrorCode::from_name).unwrap_or(ErrorCode::Internal);
                ClusterError::Remote(RemoteError { code, message })
            }
            Some("unavailable") => ClusterError::Unavailable(message),
            _ => ClusterError::Unavailable(format!("{what}: {message}")),
        }
    }

    /// Whether `status` is the transport's own (the call never reached a peer's
    /// handler, or its connection broke), rather than an error a peer answered with.
    pub(crate) fn is_transport_failure(status: &tonic::Status) -> bool {
        status.code() == tonic::Code::Unavailable && status.metadata().get(KIND).is_none()
    }

    /// The same error again, for each of several callers waiting on one outcome.
    pub(crate) fn duplicate(&self) -> ClusterError {
        match self {
            ClusterError::Rejected(r) => ClusterError::Rejected(r.clone()),
            ClusterError::Unavailable(m) => ClusterError::Unavailable(m.clone()),
            ClusterError::NotLeader(m) => ClusterError::NotLeader(m.clone()),
            ClusterError::Store(e) => ClusterError::Fatal(format!("metadata store: {e}")),
            ClusterError::Fatal(m) => ClusterError::Fatal(m.clone()),
            ClusterError::Config(m) => ClusterError::Config(m.clone()),
            ClusterError::InvalidMember(m) => ClusterError::InvalidMember(m.clone()),
            ClusterError::Remote(e) => ClusterError::Remote(e.clone()),
        }
    }
}

fn rejection_code(r: &Rejection) -> ErrorCode {
    match r {
        Rejection::UploadUnknown(_) => ErrorCode::BlobUploadUnknown,
        Rejection::BlobUnknown(_) => ErrorCode::BlobUnknown,
        Rejection::ManifestBlobUnknown(_) => ErrorCode::ManifestBlobUnknown,
        Rejection::ManifestUnknown(_) | Rejection::TagUnknown(_) => ErrorCode::ManifestUnknown,
        Rejection::NameUnknown(_) => ErrorCode::NameUnknown,
        Rejection::SizeMismatch { .. } => ErrorCode::ManifestInvalid,
        Rejection::BlobInUse { .. } => ErrorCode::NotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: ClusterError) -> ClusterError {
        ClusterError::from_status(&e.to_status(), "peer")
    }

    #[test]
    fn an_error_crossing_a_hop_keeps_its_code_and_message() {
        for code in ErrorCode::ALL {
            let back = round_trip(ClusterError::Remote(RemoteError::new(code, "it went wrong")));
            assert_eq!(back.code(), code, "{code:?}");
            assert_eq!(back.to_string(), "it went wrong");
        }
        let back = round_trip(ClusterError::Unavailable("no quorum".into()));
        assert!(
            matches!(&back, ClusterError::Unavailable(m) if m == "no quorum"),
            "{back:?}"
        );
        let back = round_trip(ClusterError::NotLeader("moved".into()));
        assert!(matches!(back, ClusterError::NotLeader(_)));
        let back = round_trip(ClusterError::Config("already changing".into()));
        assert!(
            matches!(&back, ClusterError::Config(m) if m == "already changing"),
            "{back:?}"
        );
        assert_eq!(back.code(), ErrorCode::Conflict);
        let back = round_trip(ClusterError::InvalidMember("no port".into()));
        assert!(
            matches!(&back, ClusterError::InvalidMember(m) if m == "no port"),
            "{back:?}"
        );
        assert_eq!(back.code(), ErrorCode::BadRequest);
        let back = round_trip(ClusterError::Fatal("disk".into()));
        assert_eq!(back.code(), ErrorCode::Internal);
    }

    #[test]
    fn grpc_status_codes_follow_the_error_code() {
        let s = ClusterError::Unavailable("x".into()).to_status();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        let s = ClusterError::Remote(RemoteError::new(ErrorCode::BlobUploadUnknown, "x")).to_status();
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s = ClusterError::Remote(RemoteError::new(ErrorCode::UploadOutOfOrder, "x")).to_status();
        assert_eq!(s.code(), tonic::Code::OutOfRange);
    }

    #[test]
    fn a_transport_failure_is_unavailability() {
        let back = ClusterError::from_status(&tonic::Status::unavailable("connection refused"), "leader 10.0.0.1:1");
        assert_eq!(back.code(), ErrorCode::Unavailable);
        assert_eq!(
            back.to_string(),
            "metadata cluster unavailable: leader 10.0.0.1:1: connection refused"
        );
    }
}
