//! Upload sessions: start, continue, finish and cancel a chunked upload.
//!
//! A session's bytes live in the blob store and its record in the replicated
//! metadata; its running hash lives in the memory of the node that owns it. A request
//! that reaches another node is handed to the owner (`handover`), and when the owner
//! cannot be reached, the receiving node claims the session and continues it from the
//! stored bytes. Expired and orphaned sessions are removed by the `sweeper` worker.

pub(crate) mod handover;
mod sessions;
pub(crate) mod sweeper;

use berth_blob::ByteStream;
use berth_meta::Command;
use berth_meta::UploadRecord;
use berth_oci::Digest;
use berth_oci::DigestAlgorithm;
use berth_oci::Hasher;
use berth_oci::RepoName;
use berth_oci::UploadId;
use futures::StreamExt;
use handover::UploadReply;
use handover::UploadRequest;
pub(crate) use sessions::Session;
pub(crate) use sessions::Sessions;

use crate::Registry;
use crate::RegistryError;
use crate::hashing::OFF_THREAD_MIN;
use crate::hashing::hash_alongside;
use crate::now_ms;
use crate::stream::exact_length;

/// Where an upload session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    /// Bytes received so far.
    pub offset: u64,
}

/// Where [`Registry::route`] sent a request.
enum Routed {
    /// Run it here, with this body.
    Here(ByteStream),
    /// The owner ran it and answered.
    Answered(UploadReply),
}

impl Registry {
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus, RegistryError> {
        let id = UploadId::random();
        // Registered before any bytes exist, so the sweeper never mistakes the new
        // session for an orphan.
        self.inner.sessions.insert(&id, Session::fresh());
        let res = async {
            self.inner.blobs.upload_create(id.as_str()).await?;
            self.propose(Command::CreateUpload {
                id: id.to_string(),
                repo: repo.clone(),
                node: self.inner.cluster.id(),
                at: now_ms(),
            })
            .await
        }
        .await;
        if let Err(e) = res {
            self.inner.sessions.remove(&id);
            if let Err(abort) = self.inner.blobs.upload_abort(id.as_str()).await {
                tracing::warn!(upload = %id, error = %abort, "could not remove a failed upload's data");
            }
            return Err(e);
        }
        Ok(UploadStatus { id, offset: 0 })
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus, RegistryError> {
        let request = UploadRequest::Status {
            repo: repo.clone(),
            id: id.clone(),
        };
        match self.route(repo, id, request, empty_body()).await? {
            Routed::Here(_) => self.upload_status_here(repo, id).await,
            Routed::Answered(reply) => reply.offset(id),
        }
    }

    /// Append a chunk. `start` is where the client says the chunk begins (from
    /// `Content-Range`); `length` is its announced size.
    pub async fn append_chunk(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus, RegistryError> {
        let request = UploadRequest::Append {
            repo: repo.clone(),
            id: id.clone(),
            start,
            length,
        };
        match self.route(repo, id, request, body).await? {
            Routed::Here(body) => self.append_chunk_here(repo, id, start, length, body).await,
            Routed::Answered(reply) => reply.offset(id),
        }
    }

    /// Finish an upload, with an optional last chunk (and its announced length), as
    /// blob `digest`.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        last_chunk: Option<(ByteStream, Option<u64>)>,
    ) -> Result<(), RegistryError> {
        let (body, length) = match last_chunk {
            Some((body, length)) => (body, Some(length)),
            None => (empty_body(), None),
        };
        let request = UploadRequest::Finish {
            repo: repo.clone(),
            id: id.clone(),
            digest: digest.clone(),
            last_chunk: length,
        };
        match self.route(repo, id, request, body).await? {
            Routed::Here(body) => {
                self.finish_upload_here(repo, id, digest, length.map(|l| (body, l)))
                    .await
            }
            Routed::Answered(_) => Ok(()),
        }
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<(), RegistryError> {
        let request = UploadRequest::Cancel {
            repo: repo.clone(),
            id: id.clone(),
        };
        match self.route(repo, id, request, empty_body()).await? {
            Routed::Here(_) => self.cancel_upload_here(repo, id).await,
            Routed::Answered(_) => Ok(()),
        }
    }

    /// Where an upload request runs: here, when this node owns the session (or has
    /// just taken it over from an owner that cannot be reached), or on the owner.
    async fn route(
        &self,
        repo: &RepoName,
        id: &UploadId,
        request: UploadRequest,
        body: ByteStream,
    ) -> Result<Routed, RegistryError> {
        let rec = self.find_session(repo, id).await?;
        let me = self.inner.cluster.id();
        if rec.node == me {
            return Ok(Routed::Here(body));
        }
        match self.inner.cluster.connect_owner(rec.node).await {
            Ok(owner) => {
                tracing::debug!(upload = %id, owner = rec.node, "handing the request to the session's owner");
                let reply = owner.send(handover::encode(&request)?, body).await?;
                Ok(Routed::Answered(handover::decode_reply(&reply)?))
            }
            Err(why) => {
                tracing::warn!(upload = %id, owner = rec.node, %why, "upload owner unreachable: taking the session over");
                self.propose(Command::ClaimUpload {
                    id: id.to_string(),
                    node: me,
                    at: now_ms(),
                })
                .await?;
                // Whatever this node remembered of the session is stale now.
                self.inner.sessions.remove(id);
                Ok(Routed::Here(body))
            }
        }
    }

    /// The session, if it exists and belongs to `repo`, catching up with the leader
    /// before answering that it does not.
    async fn find_session(&self, repo: &RepoName, id: &UploadId) -> Result<UploadRecord, RegistryError> {
        match self.lookup(|m| m.upload(id.as_str())).await? {
            Some(rec) if &rec.repo == repo => Ok(rec),
            _ => Err(RegistryError::UploadUnknown(id.to_string())),
        }
    }

    /// The session, if this node's state has it and it belongs to `repo`.
    fn check_session(&self, repo: &RepoName, id: &UploadId) -> Result<UploadRecord, RegistryError> {
        match self.meta().upload(id.as_str())? {
            Some(rec) if &rec.repo == repo => Ok(rec),
            _ => Err(RegistryError::UploadUnknown(id.to_string())),
        }
    }

    /// [`Registry::upload_status`] on this node, which owns the session.
    pub(crate) async fn upload_status_here(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<UploadStatus, RegistryError> {
        self.check_session(repo, id)?;
        let offset = self.inner.blobs.upload_len(id.as_str()).await?;
        Ok(UploadStatus { id: id.clone(), offset })
    }

    /// Bring the in-memory hash up to the stored bytes (after a restart).
    async fn ensure_hashed(&self, id: &UploadId, session: &mut Session) -> Result<(), RegistryError> {
        if session.hasher.is_some() {
            return Ok(());
        }
        let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
        let offset = hash_stream(self.inner.blobs.upload_read(id.as_str()).await?, &mut hasher).await?;
        tracing::info!(upload = %id, offset, "re-hashed stored upload bytes");
        session.hasher = Some(hasher);
        session.offset = offset;
        Ok(())
    }

    /// [`Registry::append_chunk`] on this node, which owns the session.
    pub(crate) async fn append_chunk_here(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus, RegistryError> {
        self.check_session(repo, id)?;
        let session = self.inner.sessions.get_or_unknown(id);
        let mut session = session.lock().await;
        self.append_locked(id, &mut session, start, length, body).await?;
        Ok(UploadStatus {
            id: id.clone(),
            offset: session.offset,
        })
    }

    async fn append_locked(
        &self,
        id: &UploadId,
        session: &mut Session,
        start: Option<u64>,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<(), RegistryError> {
        self.ensure_hashed(id, session).await?;
        if let Some(start) = start
            && start != session.offset
        {
            return Err(RegistryError::ChunkOutOfOrder { offset: session.offset });
        }
        let body = match length {
            Some(n) => exact_length(body, n),
            None => body,
        };
        let Some(mut hasher) = session.hasher.clone() else {
            return Err(RegistryError::Internal("upload hash state missing".into()));
        };
        // A big (or unknown-length) body is hashed on its own thread, alongside
        // receiving and writing; a small one inline.
        let new_len = if length.is_none_or(|n| n >= OFF_THREAD_MIN) {
            let (body, hashed) = hash_alongside(body, hasher);
            let new_len = self
                .inner
                .blobs
                .upload_append(id.as_str(), session.offset, body, &mut |_| {})
                .await?;
            hasher = hashed
                .await
                .map_err(|e| RegistryError::Internal(format!("upload hashing failed: {e}")))?;
            new_len
        } else {
            self.inner
                .blobs
                .upload_append(id.as_str(), session.offset, body, &mut |chunk| hasher.update(chunk))
                .await?
        };
        session.hasher = Some(hasher);
        session.offset = new_len;
        self.propose(Command::UploadProgress {
            id: id.to_string(),
            offset: new_len,
            at: now_ms(),
        })
        .await?;
        Ok(())
    }

    /// [`Registry::finish_upload`] on this node, which owns the session.
    pub(crate) async fn finish_upload_here(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        last_chunk: Option<(ByteStream, Option<u64>)>,
    ) -> Result<(), RegistryError> {
        self.check_session(repo, id)?;
        let session = self.inner.sessions.get_or_unknown(id);
        let mut session = session.lock().await;
        if let Some((body, length)) = last_chunk {
            self.append_locked(id, &mut session, None, length, body).await?;
        }
        self.ensure_hashed(id, &mut session).await?;
        let actual = match (&session.hasher, digest.algorithm()) {
            (Some(h), DigestAlgorithm::Sha256) => h.clone().finalize(),
            (_, algo) => {
                let mut h = Hasher::new(algo);
                hash_stream(self.inner.blobs.upload_read(id.as_str()).await?, &mut h).await?;
                h.finalize()
            }
        };
        if &actual != digest {
            // The bytes can never become this blob: drop the session rather than
            // keep data nobody can use.
            drop(session);
            self.cancel_upload_here(repo, id).await?;
            return Err(RegistryError::DigestMismatch(format!(
                "expected {digest}, content is {actual}"
            )));
        }
        let size = self.inner.blobs.upload_commit(id.as_str(), digest).await?;
        self.propose(Command::CommitBlob {
            upload_id: Some(id.to_string()),
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            at: now_ms(),
        })
        .await?;
        drop(session);
        self.inner.sessions.remove(id);
        Ok(())
    }

    pub(crate) async fn cancel_upload_here(&self, repo: &RepoName, id: &UploadId) -> Result<(), RegistryError> {
        self.check_session(repo, id)?;
        self.discard_upload(id).await
    }

    /// Remove a session: its record, its in-memory state and its stored bytes.
    pub(crate) async fn discard_upload(&self, id: &UploadId) -> Result<(), RegistryError> {
        self.propose(Command::DeleteUpload { id: id.to_string() }).await?;
        self.inner.sessions.remove(id);
        self.inner.blobs.upload_abort(id.as_str()).await?;
        Ok(())
    }
}

impl UploadReply {
    fn offset(self, id: &UploadId) -> Result<UploadStatus, RegistryError> {
        match self {
            UploadReply::Offset(offset) => Ok(UploadStatus { id: id.clone(), offset }),
            UploadReply::Done => Err(RegistryError::Internal(
                "upload owner answered without an offset".into(),
            )),
        }
    }
}

fn empty_body() -> ByteStream {
    Box::pin(futures::stream::empty())
}

async fn hash_stream(mut s: ByteStream, hasher: &mut Hasher) -> Result<u64, RegistryError> {
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Internal(format!("reading upload: {e}")))?;
        hasher.update(&chunk);
        n = n.saturating_add(chunk.len() as u64);
    }
    Ok(n)
}
