//! Upload requests that reached a node other than the session's owner are handed
//! to the owner (see `berth_cluster::OwnerChannel`); when the owner cannot be reached
//! the receiving node claims the session and continues it from the stored bytes.
//!
//! An error the owner answers with crosses the hop as its code and message
//! ([`RemoteError`]), so the client sees what it would have seen on the owner.

use std::sync::Arc;
use std::sync::Weak;

use berth_blob::ByteStream;
use berth_cluster::RemoteError;
use berth_oci::Digest;
use berth_oci::ErrorCode;
use berth_oci::RepoName;
use berth_oci::UploadId;
use serde::Deserialize;
use serde::Serialize;
use tracing::Instrument;

use crate::Inner;
use crate::Registry;
use crate::RegistryError;

/// An upload request, as the owner receives it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum UploadRequest {
    Status {
        repo: RepoName,
        id: UploadId,
    },
    Append {
        repo: RepoName,
        id: UploadId,
        start: Option<u64>,
        length: Option<u64>,
    },
    Finish {
        repo: RepoName,
        id: UploadId,
        digest: Digest,
        last_chunk: Option<Option<u64>>,
    },
    Cancel {
        repo: RepoName,
        id: UploadId,
    },
}

/// The owner's answer when the request succeeded.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum UploadReply {
    Offset(u64),
    Done,
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RegistryError> {
    rmp_serde::to_vec_named(v).map_err(|e| RegistryError::Internal(format!("encoding a hand-over: {e}")))
}

pub(crate) fn decode_reply(bytes: &[u8]) -> Result<UploadReply, RegistryError> {
    rmp_serde::from_slice(bytes).map_err(|e| RegistryError::Internal(format!("decoding a hand-over reply: {e}")))
}

/// Make this node answer the requests other nodes hand over to it.
pub(crate) fn register(inner: &Arc<Inner>) {
    inner
        .cluster
        .set_hand_over_handler(Arc::new(Handler(Arc::downgrade(inner))));
}

/// Runs requests handed over by other nodes on this node's sessions.
struct Handler(Weak<Inner>);

impl Handler {
    async fn run(registry: Registry, request: UploadRequest, body: ByteStream) -> Result<UploadReply, RegistryError> {
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
}

#[async_trait::async_trait]
impl berth_cluster::HandOverHandler for Handler {
    async fn handle(&self, header: Vec<u8>, body: ByteStream) -> Result<Vec<u8>, RemoteError> {
        let inner = self
            .0
            .upgrade()
            .ok_or_else(|| RemoteError::new(ErrorCode::Unavailable, "the registry is shutting down"))?;
        let request: UploadRequest = rmp_serde::from_slice(&header)
            .map_err(|e| RemoteError::new(ErrorCode::Internal, format!("undecodable hand-over: {e}")))?;
        let span = tracing::info_span!("upload_hand_over", request = ?request);
        let reply = Handler::run(Registry { inner }, request, body)
            .instrument(span)
            .await
            .map_err(|e| RemoteError::new(e.code(), e.to_string()))?;
        encode(&reply).map_err(|e| RemoteError::new(e.code(), e.to_string()))
    }
}
