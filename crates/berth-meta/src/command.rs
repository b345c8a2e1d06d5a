use berth_oci::Descriptor;
use berth_oci::Digest;
use berth_oci::RepoName;
use berth_oci::Tag;
use serde::Deserialize;
use serde::Serialize;

/// A change to the metadata, proposed through Raft and applied on every node.
///
/// Timestamps (`at`, milliseconds since the Unix epoch) are chosen by the proposer so
/// that every replica applies the same values.
// PutManifest carries the manifest bytes; commands are built once and serialised
// into the log, so boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Open an upload session owned by `node`.
    CreateUpload {
        id: String,
        repo: RepoName,
        node: u64,
        at: u64,
    },
    /// Record that an upload has durably received `offset` bytes.
    UploadProgress { id: String, offset: u64, at: u64 },
    /// Make `node` the owner of an upload whose owner cannot be reached.
    ClaimUpload { id: String, node: u64, at: u64 },
    /// Forget an upload session (cancelled, expired, or its bytes are gone).
    DeleteUpload { id: String },
    /// A blob's bytes are in the blob store under `digest`: record it, link it to
    /// `repo`, and close the upload session that produced it, if any.
    CommitBlob {
        upload_id: Option<String>,
        repo: RepoName,
        digest: Digest,
        size: u64,
        at: u64,
    },
    /// Link an existing blob to `repo` (cross-repository mount). Rejected when the blob
    /// is not linked to `from`.
    MountBlob {
        repo: RepoName,
        from: RepoName,
        digest: Digest,
        at: u64,
    },
    /// Remove a blob from a repository (the bytes stay until garbage collection).
    UnlinkBlob { repo: RepoName, digest: Digest },
    /// Store a manifest in a repository and optionally tag it. Rejected unless every
    /// blob in `blobs` is linked to the repository and every manifest in `children`
    /// is stored in it.
    PutManifest {
        repo: RepoName,
        digest: Digest,
        media_type: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        tag: Option<Tag>,
        subject: Option<Digest>,
        referrer: Option<Descriptor>,
        blobs: Vec<Digest>,
        children: Vec<Digest>,
        /// The size each descriptor declares for a blob or child manifest; the put is
        /// refused when the stored content has another size (a client verifies sizes
        /// on pull, so such an image could never be pulled). Absent in entries
        /// written before the check existed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        declared_sizes: Vec<(Digest, u64)>,
        at: u64,
    },
    /// Delete a manifest from a repository together with every tag pointing at it.
    DeleteManifest { repo: RepoName, digest: Digest, at: u64 },
    /// Delete one tag; the manifest stays.
    DeleteTag { repo: RepoName, tag: Tag, at: u64 },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateUpload { .. } => "create_upload",
            Command::UploadProgress { .. } => "upload_progress",
            Command::ClaimUpload { .. } => "claim_upload",
            Command::DeleteUpload { .. } => "delete_upload",
            Command::CommitBlob { .. } => "commit_blob",
            Command::MountBlob { .. } => "mount_blob",
            Command::UnlinkBlob { .. } => "unlink_blob",
            Command::PutManifest { .. } => "put_manifest",
            Command::DeleteManifest { .. } => "delete_manifest",
            Command::DeleteTag { .. } => "delete_tag",
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to report (blank and membership entries, idempotent no-ops).
    Done,
    /// A manifest was deleted; these tags went with it.
    ManifestDeleted { tags: Vec<Tag> },
}

/// Why a command was not applied. The state is unchanged when a command is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("upload {0} is unknown")]
    UploadUnknown(String),
    #[error("blob {0} is unknown to this repository")]
    BlobUnknown(Digest),
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    #[error("manifest {0} is unknown")]
    ManifestUnknown(Digest),
    #[error("tag {0} is unknown")]
    TagUnknown(Tag),
    #[error("repository {0} is unknown")]
    NameUnknown(RepoName),
    /// A descriptor declares a size the content it points to does not have.
    #[error("the descriptor of {digest} declares {declared} bytes, the stored content has {actual}")]
    SizeMismatch { digest: Digest, declared: u64, actual: u64 },
    /// A blob of the repository that one of its manifests still references.
    #[error("blob {digest} is referenced by manifest {manifest} of this repository")]
    BlobInUse { digest: Digest, manifest: Digest },
}

/// The reply to a proposed command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(pub Result<Applied, Rejection>);

impl CommandResponse {
    pub fn done() -> Self {
        CommandResponse(Ok(Applied::Done))
    }
}
