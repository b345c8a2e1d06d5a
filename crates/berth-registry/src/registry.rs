use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use berth_blob::BlobStore;
use berth_blob::ByteRange;
use berth_blob::ByteStream;
use berth_cluster::ClusterNode;
use berth_meta::Command;
use berth_meta::MetaReader;
use berth_meta::Page;
use berth_oci::Descriptor;
use berth_oci::Digest;
use berth_oci::DigestAlgorithm;
use berth_oci::Hasher;
use berth_oci::MAX_MANIFEST_SIZE;
use berth_oci::ParsedManifest;
use berth_oci::Reference;
use berth_oci::RepoName;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::RegistryError;
use crate::handover;
use crate::handover::UploadReply;
use crate::handover::UploadRequest;
use crate::hashing::OFF_THREAD_MIN;
use crate::hashing::hash_alongside;
use crate::stream::exact_length;
use crate::uploads::Session;
use crate::uploads::Sessions;

/// How tag reads see writes made through other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagReads {
    /// Read-index barrier before each tag read: a pull right after a push through
    /// another node sees the push.
    Linearizable,
    /// Answer from the local copy with no coordination.
    Local,
}

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// An upload with no activity for this long is cancelled and its bytes removed.
    pub upload_expiry: Duration,
    /// How often expired uploads are looked for.
    pub sweep_interval: Duration,
    pub tag_reads: TagReads,
    /// How long a read of content by digest waits for the leader's read index
    /// before it answers from the local state (a node cut off from the leader).
    pub digest_read_wait: Duration,
    pub max_manifest_size: usize,
    pub delivery: BlobDelivery,
}

/// How blob bytes reach a client that GETs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobDelivery {
    /// The node streams the bytes (through its cache, when one is configured).
    Proxy,
    /// The client is redirected to a presigned URL of the storage backend, valid for
    /// this long. Backends that cannot presign are proxied.
    Redirect { expires: Duration },
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            upload_expiry: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
            tag_reads: TagReads::Linearizable,
            digest_read_wait: Duration::from_secs(1),
            max_manifest_size: MAX_MANIFEST_SIZE,
            delivery: BlobDelivery::Proxy,
        }
    }
}

/// Where an upload session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: String,
    /// Bytes received so far.
    pub offset: u64,
}

pub enum MountResult {
    Mounted(Digest),
    /// The blob could not be mounted: a fresh upload session was started instead.
    Upload(UploadStatus),
}

pub enum BlobBody {
    Stream {
        /// Size of the whole blob.
        size: u64,
        /// The range served, if one was asked for.
        range: Option<ByteRange>,
        body: ByteStream,
    },
    /// Fetch the bytes from this URL instead (it honours `Range` itself).
    Redirect(String),
}

pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

pub struct PutManifestResult {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// The registry use-cases; one per node, shared by all requests.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    blobs: Arc<dyn BlobStore>,
    cluster: ClusterNode,
    sessions: Sessions,
    options: RegistryOptions,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Registry {
    pub fn new(blobs: Arc<dyn BlobStore>, cluster: ClusterNode, options: RegistryOptions) -> Registry {
        let inner = Arc::new(Inner {
            blobs,
            cluster,
            sessions: Sessions::default(),
            options,
        });
        inner
            .cluster
            .set_hand_over_handler(Arc::new(handover::Handler(Arc::downgrade(&inner))));
        Registry { inner }
    }

    fn meta(&self) -> &MetaReader {
        self.inner.cluster.reader()
    }

    pub fn cluster(&self) -> &ClusterNode {
        &self.inner.cluster
    }

    pub fn blob_store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    async fn propose(&self, cmd: Command) -> Result<berth_meta::Applied, RegistryError> {
        Ok(self.inner.cluster.propose(cmd).await?)
    }

    // ---- blobs --------------------------------------------------------------------

    /// Size of a blob linked to `repo`.
    /// A local lookup and, when it finds nothing, a second one after catching up with
    /// the leader: a write acknowledged through another node may not be applied here
    /// yet, and a 404 must not contradict it. Hits, the common case, cost nothing.
    async fn lookup<T>(
        &self,
        find: impl Fn(&MetaReader) -> Result<Option<T>, berth_meta::MetaError>,
    ) -> Result<Option<T>, RegistryError> {
        if let Some(found) = find(self.meta())? {
            return Ok(Some(found));
        }
        if let Err(e) = self.inner.cluster.read_barrier().await {
            tracing::debug!(error = %e, "cannot catch up with the leader before answering a miss");
            return Ok(None);
        }
        Ok(find(self.meta())?)
    }

    /// Catch up with the leader's read index when it answers within a moment;
    /// otherwise go on with the local state.
    async fn barrier_or_local(&self) {
        let wait = self.inner.options.digest_read_wait;
        match tokio::time::timeout(wait, self.inner.cluster.read_barrier()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "no read index; answering from local state"),
            Err(_) => tracing::debug!(?wait, "read index too slow; answering from local state"),
        }
    }

    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        match self.lookup(|m| m.linked_blob(repo, digest)).await? {
            Some(b) => Ok(b.size),
            None => Err(RegistryError::BlobUnknown(digest.to_string())),
        }
    }

    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, RegistryError> {
        let size = self.stat_blob(repo, digest).await?;
        if let Some(r) = range
            && (r.start >= size || r.end > size || r.start >= r.end)
        {
            return Err(RegistryError::RangeNotSatisfiable { size });
        }
        if let BlobDelivery::Redirect { expires } = self.inner.options.delivery
            && let Some(url) = self.inner.blobs.presigned_get(digest, expires).await?
        {
            return Ok(BlobBody::Redirect(url));
        }
        let body = self.inner.blobs.get(digest, range).await?;
        Ok(BlobBody::Stream { size, range, body })
    }

    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        // Blob reads are local on every node: wait for the others to apply it too.
        let cmd = Command::UnlinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
        };
        self.inner.cluster.propose_everywhere(cmd).await?;
        Ok(())
    }

    /// Push a whole blob in one request (`POST …/blobs/uploads/?digest=`).
    pub async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), RegistryError> {
        let body = match length {
            Some(n) => exact_length(body, n),
            None => body,
        };
        let size = self.inner.blobs.put(digest, body).await?;
        self.propose(Command::CommitBlob {
            upload_id: None,
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            at: now_ms(),
        })
        .await?;
        Ok(())
    }

    /// Link a blob of `from` into `repo`; when that is not possible (the blob is not
    /// in `from`, or `from` is absent), start an ordinary upload instead.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<MountResult, RegistryError> {
        if let Some(from) = from {
            let cmd = Command::MountBlob {
                repo: repo.clone(),
                from: from.clone(),
                digest: digest.clone(),
                at: now_ms(),
            };
            match self.propose(cmd).await {
                Ok(_) => return Ok(MountResult::Mounted(digest.clone())),
                Err(RegistryError::BlobUnknown(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(MountResult::Upload(self.start_upload(repo).await?))
    }

    // ---- uploads ------------------------------------------------------------------

    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus, RegistryError> {
        let id = uuid::Uuid::new_v4().to_string();
        // Registered before any bytes exist, so the sweeper never mistakes the new
        // session for an orphan.
        self.inner.sessions.insert(&id, Session::fresh());
        let res = async {
            self.inner.blobs.upload_create(&id).await?;
            self.propose(Command::CreateUpload {
                id: id.clone(),
                repo: repo.clone(),
                node: self.inner.cluster.id(),
                at: now_ms(),
            })
            .await
        }
        .await;
        if let Err(e) = res {
            self.inner.sessions.remove(&id);
            if let Err(abort) = self.inner.blobs.upload_abort(&id).await {
                tracing::warn!(upload = %id, error = %abort, "could not remove a failed upload's data");
            }
            return Err(e);
        }
        Ok(UploadStatus { id, offset: 0 })
    }

    /// Where an upload request runs: here, when this node owns the session (or has
    /// just taken it over from an owner that cannot be reached), or on the owner.
    async fn route(
        &self,
        repo: &RepoName,
        id: &str,
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

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus, RegistryError> {
        let request = UploadRequest::Status {
            repo: repo.clone(),
            id: id.to_string(),
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
        id: &str,
        start: Option<u64>,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus, RegistryError> {
        let request = UploadRequest::Append {
            repo: repo.clone(),
            id: id.to_string(),
            start,
            length,
        };
        match self.route(repo, id, request, body).await? {
            Routed::Here(body) => self.append_chunk_here(repo, id, start, length, body).await,
            Routed::Answered(reply) => reply.offset(id),
        }
    }

    /// Finish an upload, with an optional last chunk, as blob `digest`.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last_chunk: Option<(ByteStream, Option<u64>)>,
    ) -> Result<(), RegistryError> {
        let (body, length) = match last_chunk {
            Some((body, length)) => (body, Some(length)),
            None => (empty_body(), None),
        };
        let request = UploadRequest::Finish {
            repo: repo.clone(),
            id: id.to_string(),
            digest: digest.clone(),
            last_chunk: length,
        };
        match self.route(repo, id, request, body).await? {
            Routed::Here(body) => {
                self.finish_upload_here(repo, id, digest, length.map(|l| (body, l)))
                    .await
            }
            Routed::Answered(reply) => reply.done(),
        }
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), RegistryError> {
        let request = UploadRequest::Cancel {
            repo: repo.clone(),
            id: id.to_string(),
        };
        match self.route(repo, id, request, empty_body()).await? {
            Routed::Here(_) => self.cancel_upload_here(repo, id).await,
            Routed::Answered(reply) => reply.done(),
        }
    }

    /// The session, if it exists and belongs to `repo`.
    /// [`Registry::check_session`], catching up with the leader before a miss.
    async fn find_session(&self, repo: &RepoName, id: &str) -> Result<berth_meta::UploadRecord, RegistryError> {
        if !berth_blob::is_valid_upload_id(id) {
            return Err(RegistryError::UploadUnknown(id.to_string()));
        }
        match self.lookup(|m| m.upload(id)).await? {
            Some(rec) if &rec.repo == repo => Ok(rec),
            _ => Err(RegistryError::UploadUnknown(id.to_string())),
        }
    }

    fn check_session(&self, repo: &RepoName, id: &str) -> Result<berth_meta::UploadRecord, RegistryError> {
        if !berth_blob::is_valid_upload_id(id) {
            return Err(RegistryError::UploadUnknown(id.to_string()));
        }
        match self.meta().upload(id)? {
            Some(rec) if &rec.repo == repo => Ok(rec),
            _ => Err(RegistryError::UploadUnknown(id.to_string())),
        }
    }

    pub(crate) async fn upload_status_here(&self, repo: &RepoName, id: &str) -> Result<UploadStatus, RegistryError> {
        self.check_session(repo, id)?;
        let offset = self.inner.blobs.upload_len(id).await?;
        Ok(UploadStatus {
            id: id.to_string(),
            offset,
        })
    }

    /// Bring the in-memory hash up to the stored bytes (after a restart).
    async fn ensure_hashed(&self, id: &str, session: &mut Session) -> Result<(), RegistryError> {
        if session.hasher.is_some() {
            return Ok(());
        }
        let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
        let offset = hash_stream(self.inner.blobs.upload_read(id).await?, &mut hasher).await?;
        tracing::info!(upload = %id, offset, "re-hashed stored upload bytes");
        session.hasher = Some(hasher);
        session.offset = offset;
        Ok(())
    }

    /// [`Registry::append_chunk`] on this node, which owns the session.
    pub(crate) async fn append_chunk_here(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus, RegistryError> {
        self.check_session(repo, id)?;
        let session = self.inner.sessions.get_or_unknown(id);
        let mut session = session.lock().await;
        self.append_locked(id, &mut session, start, length, body).await?;
        Ok(UploadStatus {
            id: id.to_string(),
            offset: session.offset,
        })
    }

    async fn append_locked(
        &self,
        id: &str,
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
                .upload_append(id, session.offset, body, &mut |_| {})
                .await?;
            hasher = hashed
                .await
                .map_err(|e| RegistryError::Internal(format!("upload hashing failed: {e}")))?;
            new_len
        } else {
            self.inner
                .blobs
                .upload_append(id, session.offset, body, &mut |chunk| hasher.update(chunk))
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
        id: &str,
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
                hash_stream(self.inner.blobs.upload_read(id).await?, &mut h).await?;
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
        let size = self.inner.blobs.upload_commit(id, digest).await?;
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

    pub(crate) async fn cancel_upload_here(&self, repo: &RepoName, id: &str) -> Result<(), RegistryError> {
        self.check_session(repo, id)?;
        self.discard_upload(id).await
    }

    async fn discard_upload(&self, id: &str) -> Result<(), RegistryError> {
        self.propose(Command::DeleteUpload { id: id.to_string() }).await?;
        self.inner.sessions.remove(id);
        self.inner.blobs.upload_abort(id).await?;
        Ok(())
    }

    /// Cancel uploads idle for longer than the expiry and remove stored upload bytes
    /// that no session owns (left by a crash between steps).
    pub async fn sweep_uploads(&self) -> Result<usize, RegistryError> {
        let now = now_ms();
        let expiry = self.inner.options.upload_expiry.as_millis() as u64;
        let mut removed = 0;
        let records = self.meta().uploads()?;
        for (id, rec) in &records {
            if rec.node == self.inner.cluster.id() && now.saturating_sub(rec.updated_at) > expiry {
                tracing::info!(upload = %id, repo = %rec.repo, "upload expired");
                self.discard_upload(id).await?;
                removed += 1;
            }
        }
        for id in self.inner.blobs.upload_list().await? {
            let known = records.iter().any(|(r, _)| r == &id);
            if !known && !self.inner.sessions.contains(&id) && self.meta().upload(&id)?.is_none() {
                tracing::info!(upload = %id, "removing orphaned upload data");
                self.inner.blobs.upload_abort(&id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Run [`Registry::sweep_uploads`] every sweep interval until `stop` fires.
    pub async fn run_upload_sweeper(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.options.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let span = tracing::info_span!("upload_sweep");
            match self.sweep_uploads().instrument(span).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "upload sweep"),
                Err(e) => tracing::warn!(error = %e, "upload sweep failed"),
            }
        }
    }

    // ---- manifests and tags -------------------------------------------------------

    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<PutManifestResult, RegistryError> {
        let limit = self.inner.options.max_manifest_size;
        if bytes.len() > limit {
            return Err(berth_oci::OciError::ManifestTooLarge {
                size: bytes.len(),
                limit,
            }
            .into());
        }
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(RegistryError::DigestMismatch(format!(
                        "manifest pushed as {d} has digest {actual}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let parsed = ParsedManifest::parse_with_limit(&bytes, content_type, limit)?;
        let size = bytes.len() as u64;
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let referrer = subject
            .as_ref()
            .map(|_| parsed.referrer_descriptor(digest.clone(), size));
        let blobs = parsed.blob_references().into_iter().map(|d| d.digest.clone()).collect();
        let children = parsed
            .manifest_references()
            .into_iter()
            .map(|d| d.digest.clone())
            .collect();
        self.propose(Command::PutManifest {
            repo: repo.clone(),
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            bytes,
            tag: reference.as_tag().cloned(),
            subject: subject.clone(),
            referrer,
            blobs,
            children,
            at: now_ms(),
        })
        .await?;
        Ok(PutManifestResult { digest, subject })
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Manifest, RegistryError> {
        // A tag moves, so a linearizable tag read waits for the read index. Content
        // under a digest never changes but can be deleted: it waits for the read index
        // too while the leader answers, so an acknowledged delete is never undone by a
        // read through another node; on a node cut off from the leader it is served
        // from the local state instead (immutable reads stay available in a minority).
        let digest = match reference {
            Reference::Digest(d) => {
                if self.inner.options.tag_reads == TagReads::Linearizable {
                    self.barrier_or_local().await;
                }
                d.clone()
            }
            Reference::Tag(tag) => {
                if self.inner.options.tag_reads == TagReads::Linearizable {
                    self.inner.cluster.read_barrier().await?;
                }
                match self.meta().tag(repo, tag)? {
                    Some(t) => t.digest,
                    None => return Err(self.manifest_unknown(repo, tag.as_str())?),
                }
            }
        };
        match self.lookup(|m| m.manifest(repo, &digest)).await? {
            Some(m) => Ok(Manifest {
                digest,
                media_type: m.media_type,
                bytes: m.bytes,
            }),
            None => Err(self.manifest_unknown(repo, &digest.to_string())?),
        }
    }

    fn manifest_unknown(&self, repo: &RepoName, what: &str) -> Result<RegistryError, RegistryError> {
        Ok(if self.meta().repo_exists(repo)? {
            RegistryError::ManifestUnknown(what.to_string())
        } else {
            RegistryError::NameUnknown(repo.to_string())
        })
    }

    /// Delete a manifest (by digest, with every tag on it) or only a tag.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<(), RegistryError> {
        let at = now_ms();
        let cmd = match reference {
            Reference::Digest(d) => Command::DeleteManifest {
                repo: repo.clone(),
                digest: d.clone(),
                at,
            },
            Reference::Tag(t) => Command::DeleteTag {
                repo: repo.clone(),
                tag: t.clone(),
                at,
            },
        };
        self.inner.cluster.propose_everywhere(cmd).await?;
        Ok(())
    }

    pub async fn list_tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Page, RegistryError> {
        if self.inner.options.tag_reads == TagReads::Linearizable {
            self.inner.cluster.read_barrier().await?;
        }
        if !self.meta().repo_exists(repo)? {
            return Err(RegistryError::NameUnknown(repo.to_string()));
        }
        Ok(self.meta().tags(repo, last, n)?)
    }

    pub async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Page, RegistryError> {
        if self.inner.options.tag_reads == TagReads::Linearizable {
            self.inner.cluster.read_barrier().await?;
        }
        Ok(self.meta().catalog(last, n)?)
    }

    /// Manifests of `repo` whose subject is `subject`, optionally only those of one
    /// artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        if self.inner.options.tag_reads == TagReads::Linearizable {
            self.inner.cluster.read_barrier().await?;
        }
        let mut all = self.meta().referrers(repo, subject)?;
        if let Some(at) = artifact_type {
            all.retain(|d| d.artifact_type.as_deref() == Some(at));
        }
        Ok(all)
    }

    // ---- cluster administration ---------------------------------------------------

    pub async fn cluster_status(&self) -> berth_cluster::ClusterStatus {
        self.inner.cluster.cluster_status().await
    }

    /// Add a node (learner, catch-up, voter) or remove one; any node may be asked.
    pub async fn change_membership(&self, change: berth_cluster::MembershipChange) -> Result<(), RegistryError> {
        self.inner.cluster.change_membership(change).await.map_err(|e| match e {
            berth_cluster::ClusterError::Config(m) => RegistryError::Membership(m),
            other => other.into(),
        })
    }

    /// Ready to serve: metadata has a leader and blob storage takes writes.
    pub async fn check_ready(&self) -> Result<(), RegistryError> {
        if !self.inner.cluster.is_ready() {
            return Err(RegistryError::Unavailable("no raft leader".into()));
        }
        self.inner.blobs.check_writable().await?;
        Ok(())
    }
}

fn empty_body() -> ByteStream {
    Box::pin(futures::stream::empty())
}

/// Where [`Registry::route`] sent a request.
enum Routed {
    /// Run it here, with this body.
    Here(ByteStream),
    /// The owner ran it and answered.
    Answered(UploadReply),
}

impl UploadReply {
    fn offset(self, id: &str) -> Result<UploadStatus, RegistryError> {
        match self {
            UploadReply::Offset(offset) => Ok(UploadStatus {
                id: id.to_string(),
                offset,
            }),
            UploadReply::Failed(e) => Err(e.into()),
            UploadReply::Done => Err(RegistryError::Internal(
                "upload owner answered without an offset".into(),
            )),
        }
    }

    fn done(self) -> Result<(), RegistryError> {
        match self {
            UploadReply::Failed(e) => Err(e.into()),
            _ => Ok(()),
        }
    }
}

async fn hash_stream(mut s: ByteStream, hasher: &mut Hasher) -> Result<u64, RegistryError> {
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Internal(format!("reading upload: {e}")))?;
        hasher.update(&chunk);
        n += chunk.len() as u64;
    }
    Ok(n)
}
