//! Upload requests that reached a node other than the session's owner are handed
//! to the owner (see `berth_cluster::OwnerChannel`); when the owner cannot be reached
//! this node claims the session and continues it from the stored bytes.

use std::sync::Weak;

use berth_blob::ByteStream;
use berth_oci::Digest;
use berth_oci::RepoName;
use serde::Deserialize;
use serde::Serialize;
use tracing::Instrument;

use crate::Registry;
use crate::RegistryError;
use crate::registry::Inner;

/// An upload request, as the owner receives it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum UploadRequest {
    Status {
        repo: RepoName,
        id: String,
    },
    Append {
        repo: RepoName,
        id: String,
        start: Option<u64>,
        length: Option<u64>,
    },
    Finish {
        repo: RepoName,
        id: String,
        digest: Digest,
        last_chunk: Option<Option<u64>>,
    },
    Cancel {
        repo: RepoName,
        id: String,
    },
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum UploadReply {
    Offset(u64),
    Done,
    Failed(WireError),
}

/// A registry error that crossed the hand-over hop, keeping what the client must see.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    UploadUnknown(String),
    UploadInvalid(String),
    DigestMismatch(String),
    ChunkOutOfOrder(u64),
    BlobUnknown(String),
    SizeInvalid(String),
    Unavailable(String),
    Other(String),
}

impl From<&RegistryError> for WireError {
    fn from(e: &RegistryError) -> Self {
        match e {
            RegistryError::UploadUnknown(m) => WireError::UploadUnknown(m.clone()),
            RegistryError::UploadInvalid(m) => WireError::UploadInvalid(m.clone()),
            RegistryError::DigestMismatch(m) => WireError::DigestMismatch(m.clone()),
            RegistryError::ChunkOutOfOrder { offset } => WireError::ChunkOutOfOrder(*offset),
            RegistryError::BlobUnknown(m) => WireError::BlobUnknown(m.clone()),
            RegistryError::SizeInvalid(m) => WireError::SizeInvalid(m.clone()),
            RegistryError::Unavailable(m) => WireError::Unavailable(m.clone()),
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for RegistryError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::UploadUnknown(m) => RegistryError::UploadUnknown(m),
            WireError::UploadInvalid(m) => RegistryError::UploadInvalid(m),
            WireError::DigestMismatch(m) => RegistryError::DigestMismatch(m),
            WireError::ChunkOutOfOrder(offset) => RegistryError::ChunkOutOfOrder { offset },
            WireError::BlobUnknown(m) => RegistryError::BlobUnknown(m),
            WireError::SizeInvalid(m) => RegistryError::SizeInvalid(m),
            WireError::Unavailable(m) => RegistryError::Unavailable(m),
            WireError::Other(m) => RegistryError::Internal(format!("upload owner: {m}")),
        }
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RegistryError> {
    rmp_serde::to_vec_named(v).map_err(|e| RegistryError::Internal(format!("encoding a hand-over: {e}")))
}

pub(crate) fn decode_reply(bytes: &[u8]) -> Result<UploadReply, RegistryError> {
    rmp_serde::from_slice(bytes).map_err(|e| RegistryError::Internal(format!("decoding a hand-over reply: {e}")))
}

/// Runs requests handed over by other nodes on this node's sessions.
pub(crate) struct Handler(pub Weak<Inner>);

#[async_trait::async_trait]
impl berth_cluster::HandOverHandler for Handler {
    async fn handle(&self, header: Vec<u8>, body: ByteStream) -> Result<Vec<u8>, String> {
        let inner = self.0.upgrade().ok_or("the registry is shutting down")?;
        let registry = Registry { inner };
        let request: UploadRequest =
            rmp_serde::from_slice(&header).map_err(|e| format!("undecodable hand-over: {e}"))?;
        let span = tracing::info_span!("upload_hand_over", request = ?request);
        let result = async move {
            match request {
                UploadRequest::Status { repo, id } => registry
                    .upload_status_here(&repo, &id)
                    .await
                    .map(|s| UploadReply::Offset(s.offset)),
                UploadRequest::Append {
                    repo,
                    id,
                    start,
                    length,
                } => registry
                    .append_chunk_here(&repo, &id, start, length, body)
                    .await
                    .map(|s| UploadReply::Offset(s.offset)),
                UploadRequest::Finish {
                    repo,
                    id,
                    digest,
                    last_chunk,
                } => {
                    let last = last_chunk.map(|length| (body, length));
                    registry
                        .finish_upload_here(&repo, &id, &digest, last)
                        .await
                        .map(|()| UploadReply::Done)
                }
                UploadRequest::Cancel { repo, id } => registry
                    .cancel_upload_here(&repo, &id)
                    .await
                    .map(|()| UploadReply::Done),
            }
        }
        .instrument(span)
        .await;
        let reply = match result {
            Ok(r) => r,
            Err(e) => UploadReply::Failed(WireError::from(&e)),
        };
        rmp_serde::to_vec_named(&reply).map_err(|e| e.to_string())
    }
}
