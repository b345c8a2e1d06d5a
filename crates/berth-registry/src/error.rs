use berth_blob::BlobError;
use berth_cluster::ClusterError;
use berth_meta::Rejection;
use berth_oci::ErrorCode;
use berth_oci::OciError;
use thiserror::Error;

/// Why a registry operation failed; [`RegistryError::code`] gives the spec's code.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload unknown to registry: {0}")]
    UploadUnknown(String),
    #[error("blob upload invalid: {0}")]
    UploadInvalid(String),
    #[error("provided digest did not match uploaded content: {0}")]
    DigestMismatch(String),
    #[error("manifest references a blob or manifest unknown to this repository: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    /// A chunk did not start where the upload ends.
    #[error("chunk out of order: upload is at offset {offset}")]
    ChunkOutOfOrder { offset: u64 },
    /// A requested byte range lies outside the blob.
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("size invalid: {0}")]
    SizeInvalid(String),
    #[error(transparent)]
    Oci(#[from] OciError),
    /// A membership change the cluster's state refused (no quorum would be left,
    /// another change in progress, a node that did not catch up).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// A request that cannot be right (an address that is no `host:port`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Not allowed here: deletes turned off, a blob a manifest still references.
    #[error("{0}")]
    NotAllowed(String),
    /// A bound on what one client may hold open (upload sessions) is reached.
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Another node ran the operation and failed with this code and message (a
    /// request handed over to an upload's owner).
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistryError::BlobUnknown(_) => ErrorCode::BlobUnknown,
            RegistryError::UploadUnknown(_) => ErrorCode::BlobUploadUnknown,
            RegistryError::UploadInvalid(_) => ErrorCode::BlobUploadInvalid,
            RegistryError::DigestMismatch(_) => ErrorCode::DigestInvalid,
            RegistryError::ManifestBlobUnknown(_) => ErrorCode::ManifestBlobUnknown,
            RegistryError::ManifestUnknown(_) => ErrorCode::ManifestUnknown,
            RegistryError::NameUnknown(_) => ErrorCode::NameUnknown,
            RegistryError::ChunkOutOfOrder { .. } => ErrorCode::UploadOutOfOrder,
            RegistryError::RangeNotSatisfiable { .. } => ErrorCode::RangeInvalid,
            RegistryError::SizeInvalid(_) => ErrorCode::SizeInvalid,
            RegistryError::Oci(e) => e.code(),
            RegistryError::Membership(_) => ErrorCode::Conflict,
            RegistryError::BadRequest(_) => ErrorCode::BadRequest,
            RegistryError::NotAllowed(_) => ErrorCode::NotAllowed,
            RegistryError::TooManyRequests(_) => ErrorCode::TooManyRequests,
            RegistryError::Unavailable(_) => ErrorCode::Unavailable,
            RegistryError::Remote { code, .. } => *code,
            RegistryError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<ClusterError> for RegistryError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Rejected(r) => r.into(),
            ClusterError::Unavailable(m) | ClusterError::NotLeader(m) => RegistryError::Unavailable(m),
            ClusterError::Remote(e) => RegistryError::Remote {
                code: e.code,
                message: e.message,
            },
            other => RegistryError::Internal(other.to_string()),
        }
    }
}

impl From<Rejection> for RegistryError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::UploadUnknown(id) => RegistryError::UploadUnknown(id),
            Rejection::BlobUnknown(d) => RegistryError::BlobUnknown(d.to_string()),
            Rejection::ManifestBlobUnknown(d) => RegistryError::ManifestBlobUnknown(d.to_string()),
            Rejection::ManifestUnknown(d) => RegistryError::ManifestUnknown(d.to_string()),
            Rejection::TagUnknown(t) => RegistryError::ManifestUnknown(t.to_string()),
            Rejection::NameUnknown(n) => RegistryError::NameUnknown(n.to_string()),
            Rejection::SizeMismatch { .. } => OciError::InvalidManifest(r.to_string()).into(),
            Rejection::BlobInUse { .. } => RegistryError::NotAllowed(format!("{r}: delete the manifest first")),
        }
    }
}

impl From<berth_meta::MetaError> for RegistryError {
    fn from(e: berth_meta::MetaError) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

impl From<BlobError> for RegistryError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(d) => RegistryError::BlobUnknown(d),
            BlobError::UploadNotFound(id) => RegistryError::UploadUnknown(id),
            BlobError::OffsetMismatch { expected, .. } => RegistryError::ChunkOutOfOrder { offset: expected },
            BlobError::DigestMismatch { expected, actual } => {
                RegistryError::DigestMismatch(format!("expected {expected}, got {actual}"))
            }
            BlobError::RangeNotSatisfiable { size, .. } => RegistryError::RangeNotSatisfiable { size },
            BlobError::Client(e) => RegistryError::UploadInvalid(format!("request body failed: {e}")),
            BlobError::Unavailable(m) => RegistryError::Unavailable(m),
            BlobError::Io(e) => RegistryError::Internal(format!("blob storage: {e}")),
            BlobError::Backend(m) => RegistryError::Internal(format!("blob storage: {m}")),
        }
    }
}
