//! The rules of a registry, in one place.
//!
//! `berth-registry` holds the use-cases of OCI distribution, one module per concern:
//! [`blobs`](crate::blobs) (stat, get, delete, monolithic pushes, cross-repository
//! mounts), `uploads` (start, continue, finish, cancel, the hand-over of a request to
//! the node that owns its session, and the sweeper that expires sessions),
//! `manifests` (manifests and tags: put, get, delete), `listings` (catalog, tag
//! lists, referrers), `admin` (cluster status, membership, readiness) and `workers`
//! (the background-work abstraction every long-running job runs under). It combines
//! the blob bytes (`berth-blob`) with the replicated metadata (`berth-cluster`,
//! `berth-meta`): bytes are written and verified first, then one command makes them
//! visible, so a failure at any step leaves nothing half-visible.
//!
//! It is called by `berth-api` and the binary, and knows nothing of HTTP framing:
//! requests arrive as typed values (`RepoName`, `Reference`, `Digest`, `UploadId`),
//! answers leave as this crate's own types (so callers need no storage or cluster
//! crate), and errors leave as [`RegistryError`], which carries the spec's error code.

mod admin;
mod blobs;
mod error;
mod hashing;
mod listings;
mod manifests;
mod stream;
mod uploads;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

pub use admin::ClusterStatus;
pub use admin::MemberStatus;
pub use admin::NewMember;
use berth_blob::BlobStore;
pub use berth_blob::ByteRange;
pub use berth_blob::ByteStream;
pub use berth_blob::RangeRequest;
use berth_cluster::ClusterNode;
use berth_meta::Command;
use berth_meta::MetaReader;
use berth_oci::MAX_MANIFEST_SIZE;
pub use blobs::BlobBody;
pub use blobs::BlobDelivery;
pub use blobs::BlobHead;
pub use blobs::MountResult;
pub use error::RegistryError;
pub use listings::Page;
pub use listings::Referrers;
pub use manifests::Manifest;
pub use manifests::PutManifestResult;
pub use uploads::UploadStatus;
pub use uploads::sweeper::UploadSweeper;

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
    /// The largest manifest accepted, in bytes: the one limit every caller
    /// (the HTTP body reader included, through [`Registry::max_manifest_size`]) uses.
    pub max_manifest_size: usize,
    pub delivery: BlobDelivery,
    /// Deletes of blobs, manifests and tags are allowed; `false` refuses them all.
    pub deletes: bool,
    /// Upload sessions open at once in one repository, at most.
    pub max_sessions_per_repository: usize,
    /// Upload sessions this node owns at once, at most.
    pub max_sessions: usize,
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
            deletes: true,
            max_sessions_per_repository: 1_000,
            max_sessions: 10_000,
        }
    }
}

/// The registry use-cases; one per node, shared by all requests.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    blobs: Arc<dyn BlobStore>,
    cluster: ClusterNode,
    sessions: uploads::Sessions,
    options: RegistryOptions,
    workers: workers::Workers,
    kept_status: admin::KeptStatus,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Registry {
    pub fn new(blobs: Arc<dyn BlobStore>, cluster: ClusterNode, options: RegistryOptions) -> Registry {
        let workers = workers::Workers::new({
            let cluster = cluster.clone();
            Arc::new(move || cluster.is_leader())
        });
        let inner = Arc::new(Inner {
            blobs,
            cluster,
            sessions: uploads::Sessions::default(),
            options,
            workers,
            kept_status: admin::KeptStatus::default(),
        });
        uploads::handover::register(&inner);
        Registry { inner }
    }

    /// Start the node's background workers (the upload sweeper, the cluster status
    /// kept for metrics and readiness).
    pub fn start_workers(&self) {
        self.inner.workers.spawn(UploadSweeper::new(self.clone()));
        self.inner.workers.spawn(admin::StatusRefresher::new(self.clone()));
    }

    /// The runner of this node's background workers: their status, wake-ups and
    /// shutdown.
    pub fn workers(&self) -> &workers::Workers {
        &self.inner.workers
    }

    /// The largest manifest [`Registry::put_manifest`] accepts, in bytes.
    pub fn max_manifest_size(&self) -> usize {
        self.inner.options.max_manifest_size
    }

    fn meta(&self) -> &MetaReader {
        self.inner.cluster.reader()
    }

    async fn propose(&self, cmd: Command) -> Result<berth_meta::Applied, RegistryError> {
        Ok(self.inner.cluster.propose(cmd).await?)
    }

    /// Propose `cmd` and wait until every reachable member applied it: for changes
    /// that reads answered locally must not contradict (deletes).
    async fn propose_everywhere(&self, cmd: Command) -> Result<(), RegistryError> {
        self.inner.cluster.propose_everywhere(cmd).await?;
        Ok(())
    }

    /// Refuse a delete when deletes are turned off.
    fn check_deletes(&self) -> Result<(), RegistryError> {
        if self.inner.options.deletes {
            return Ok(());
        }
        Err(RegistryError::NotAllowed(
            "deletes are turned off on this registry ([registry] deletes = false)".into(),
        ))
    }

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

    /// Before a read of something that moves (a tag, a listing): with linearizable
    /// tag reads, catch up with the leader's read index, so the answer reflects every
    /// write acknowledged anywhere before the read began.
    async fn tag_read_barrier(&self) -> Result<(), RegistryError> {
        if self.inner.options.tag_reads == TagReads::Linearizable {
            self.inner.cluster.read_barrier().await?;
        }
        Ok(())
    }

    /// Before a read of content under a digest (which never changes but can be
    /// deleted): catch up with the leader's read index when it answers within a
    /// moment, so an acknowledged delete is never undone by a read through another
    /// node; otherwise go on with the local state (immutable reads stay available on a
    /// node cut off from the leader).
    async fn digest_read_barrier(&self) {
        if self.inner.options.tag_reads != TagReads::Linearizable {
            return;
        }
        let wait = self.inner.options.digest_read_wait;
        match tokio::time::timeout(wait, self.inner.cluster.read_barrier()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "no read index; answering from local state"),
            Err(_) => tracing::debug!(?wait, "read index too slow; answering from local state"),
        }
    }
}
