use berth_oci::Descriptor;
use berth_oci::Digest;
use berth_oci::RepoName;
use berth_oci::Tag;
use serde::Deserialize;
use serde::Serialize;

/// What a cluster member advertises to its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address peers use for the internal gRPC service.
    pub grpc_addr: String,
    /// Address clients are sent to for HTTP.
    pub http_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "grpc={} http={}", self.grpc_addr, self.http_addr)
    }
}

/// A tag of a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    /// Milliseconds since the Unix epoch, chosen by the proposer.
    pub updated_at: u64,
}

/// A manifest stored in a repository, with the bytes exactly as pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub subject: Option<Digest>,
    /// The descriptor this manifest is listed under in its subject's referrers.
    pub referrer: Option<Descriptor>,
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
    pub created_at: u64,
}

/// A committed blob: its bytes are in the blob store under its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub created_at: u64,
}

/// An upload session in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub repo: RepoName,
    /// The node holding the session's in-memory hash state.
    pub node: u64,
    /// Bytes received and durably stored so far.
    pub offset: u64,
    pub started_at: u64,
    pub updated_at: u64,
}

/// One entry of the change feed, keyed by the Raft log index that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub repo: RepoName,
    pub kind: ChangeKind,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    TagSet { tag: Tag, digest: Digest },
    TagDeleted { tag: Tag },
    ManifestPut { digest: Digest },
    ManifestDeleted { digest: Digest },
}
