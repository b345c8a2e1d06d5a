//! # berth-blob
//!
//! Blob byte storage for berth.
//!
//! **What it owns.** The raw bytes of content-addressed blobs (layers, configs,
//! manifests-as-bytes) and the bytes of in-progress upload sessions. All
//! backends sit behind one trait, [`BlobStore`]; this crate ships the local
//! filesystem backend [`FsBlobStore`] (the embedded default) and the S3 backend
//! [`S3BlobStore`] (aws-sdk-s3; AWS or S3-compatible stores), and
//! [`CachedBlobStore`], a node-local read cache in front of either. Stores that
//! wrap another store build on [`ForwardingBlobStore`], which forwards whatever
//! they do not override. With the `testing` feature it also exports
//! [`conformance`], a suite every backend must pass.
//!
//! **Who calls it.** `berth-registry`, which implements the OCI Distribution
//! upload/pull flows on top of it (it hashes upload chunks through the
//! `on_chunk` callback of [`BlobStore::upload_append`] and verifies digests
//! before [`BlobStore::upload_commit`]).
//!
//! **What it never does.** It knows nothing of manifests, tags, repositories,
//! reference counting, Raft/cluster membership or HTTP. It stores and serves
//! bytes by digest (or by upload-session id) and nothing else; deciding *which*
//! blobs may be deleted or served to whom is the caller's job.

use std::pin::Pin;

pub use berth_oci::Digest;
pub use berth_oci::DigestAlgorithm;

mod direct;
mod forward;
mod fs;
mod lock;
mod range;
mod temp;

#[cfg(feature = "testing")]
pub mod conformance;

pub use forward::ForwardingBlobStore;
pub use fs::FsBlobStore;
pub use fs::MAP_CHUNK;
pub use range::RangeRequest;
pub mod s3;
pub use s3::S3BlobStore;
pub use s3::S3Config;
pub mod cache;
pub use cache::CacheStats;
pub use cache::CachedBlobStore;

/// A stream of blob bytes. Input streams that yield `Err` are treated as a
/// failed client ([`BlobError::Client`]); output streams yield `Err` on
/// storage read failures.
pub type ByteStream = Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static>>;

/// A byte range of a blob: `start` inclusive, `end` **exclusive**.
///
/// (HTTP `Range: bytes=a-b` is inclusive; the caller converts `b` to `b + 1`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// `start..end` (end exclusive).
    pub fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    /// Number of bytes covered by the range (0 if `end <= start`).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True if the range covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check the range against a blob of `size` bytes.
    ///
    /// A range is satisfiable iff `start < end <= size`; in particular an
    /// empty range and any range of an empty blob are not.
    pub fn validate(&self, size: u64) -> Result<(), BlobError> {
        if self.start >= size || self.end > size || self.start >= self.end {
            return Err(BlobError::RangeNotSatisfiable {
                start: self.start,
                end: self.end,
                size,
            });
        }
        Ok(())
    }
}

/// One page of [`BlobStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobPage {
    /// Stored blobs and their sizes, in ascending digest order.
    pub blobs: Vec<(Digest, u64)>,
    /// The `after` of the next page; `None` once the listing is complete. A full
    /// page may carry one even if nothing follows (the next page is then empty).
    pub next: Option<Digest>,
}

impl BlobPage {
    /// The page of `blobs` (at most `limit`, ascending) when more may follow
    /// exactly if the page is full.
    pub(crate) fn of(blobs: Vec<(Digest, u64)>, limit: usize) -> Self {
        let next = if blobs.len() >= limit {
            blobs.last().map(|(d, _)| d.clone())
        } else {
            None
        };
        BlobPage { blobs, next }
    }
}

/// Errors returned by a [`BlobStore`].
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("upload {0} not found")]
    UploadNotFound(String),
    #[error("upload offset mismatch: upload has {expected} bytes, chunk starts at {got}")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("digest mismatch: expected {expected}, computed {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("range {start}-{end} not satisfiable for size {size}")]
    RangeNotSatisfiable { start: u64, end: u64, size: u64 },
    /// The *input* stream yielded an error (client disconnect / body error).
    /// The caller maps this to 400 / aborts the request.
    #[error("client stream failed: {0}")]
    Client(std::io::Error),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// Storage of blob bytes and upload-session bytes.
///
/// Implementations must be safe to share between tasks (`Arc<dyn BlobStore>`).
/// Upload ids must match `[A-Za-z0-9-]{1,64}`; anything else is rejected with
/// [`BlobError::UploadNotFound`] (so ids can never escape the storage area).
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Short backend name, e.g. `"fs"`.
    fn kind(&self) -> &'static str;

    // ---- content-addressed blobs -------------------------------------------------

    /// Size of the blob, or `None` if it is absent.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError>;

    /// Stream the blob (or the byte range, validated against the size ->
    /// [`BlobError::RangeNotSatisfiable`]). [`BlobError::NotFound`] if absent.
    /// Streams in bounded chunks; memory use is independent of blob size.
    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, BlobError>;

    /// Store a whole blob, verifying its digest while streaming
    /// ([`BlobError::DigestMismatch`] -> nothing visible). Atomic. Idempotent
    /// if the blob already exists. Returns the size.
    async fn put(&self, digest: &Digest, data: ByteStream) -> Result<u64, BlobError>;

    /// Idempotent delete.
    async fn delete(&self, digest: &Digest) -> Result<(), BlobError>;

    /// One page of the stored blobs, with their sizes: at most `limit` of them
    /// (at least one is asked for), in ascending [`Digest`] order, strictly after
    /// `after` (`None`: from the first). Pass the page's [`BlobPage::next`] as
    /// `after` to get the next page. Files or objects in the blob area that are
    /// not blobs are skipped. A blob stored or deleted while a listing runs may
    /// or may not appear in it. Memory use is bounded by `limit`, not by the
    /// number of blobs.
    async fn list(&self, after: Option<&Digest>, limit: usize) -> Result<BlobPage, BlobError>;

    // ---- upload sessions -----------------------------------------------------------

    /// Create an (empty) upload session. Creating an id that already exists
    /// is a no-op (its bytes are kept).
    async fn upload_create(&self, id: &str) -> Result<(), BlobError>;

    /// Append `data` at `offset`, which must equal the current upload length
    /// (else [`BlobError::OffsetMismatch`]).
    ///
    /// All-or-nothing: on any error (including the input stream yielding
    /// `Err` -> [`BlobError::Client`]) the upload is truncated back to
    /// `offset`. Every chunk is passed to `on_chunk` in order as it is
    /// written; note that on error chunks already passed to `on_chunk` are
    /// *not* part of the upload, so the caller must discard that hash state
    /// (e.g. hash into a clone and keep it only on `Ok`). Durable (fdatasync)
    /// before returning `Ok(new_len)`.
    ///
    /// The callback type is `dyn FnMut(&[u8]) + Send`; the `for<'c>` is spelled
    /// out because `#[async_trait]` would otherwise pin the slice lifetime to a
    /// single caller-chosen lifetime. Implementations must spell it the same way.
    async fn upload_append(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        on_chunk: &mut (dyn for<'c> FnMut(&'c [u8]) + Send),
    ) -> Result<u64, BlobError>;

    /// Current length of the upload.
    async fn upload_len(&self, id: &str) -> Result<u64, BlobError>;

    /// Stream the upload's bytes from the start (used to re-hash after a restart).
    async fn upload_read(&self, id: &str) -> Result<ByteStream, BlobError>;

    /// Make the upload's bytes the blob `digest` (the caller has verified the
    /// digest): atomic; if the blob already exists just drop the upload.
    /// Returns the size. The upload is gone afterwards.
    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, BlobError>;

    /// Discard an upload. Idempotent for well-formed ids.
    async fn upload_abort(&self, id: &str) -> Result<(), BlobError>;

    /// Ids of uploads that have stored state (for orphan cleanup).
    async fn upload_list(&self) -> Result<Vec<String>, BlobError>;

    /// A URL from which a client can fetch the blob directly for `expires`, when the
    /// backend can hand one out (S3 presigned GET). `None`: the node must stream it.
    async fn presigned_get(
        &self,
        _digest: &Digest,
        _expires: std::time::Duration,
    ) -> Result<Option<String>, BlobError> {
        Ok(None)
    }

    /// Readiness probe: can we write?
    async fn check_writable(&self) -> Result<(), BlobError>;
}

/// True if `id` is an acceptable upload-session id: `[A-Za-z0-9-]{1,64}`.
pub fn is_valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Return `Ok(())` for a valid upload id, else [`BlobError::UploadNotFound`].
pub fn check_upload_id(id: &str) -> Result<(), BlobError> {
    if is_valid_upload_id(id) {
        Ok(())
    } else {
        Err(BlobError::UploadNotFound(id.escape_default().to_string()))
    }
}

/// Hash a request body and check that it is `digest`. A put of a blob that is already
/// stored still goes through this: knowing a digest must not be enough to link it.
pub(crate) async fn verify_body(digest: &Digest, mut data: ByteStream) -> Result<(), BlobError> {
    use futures::StreamExt;
    let mut hasher = berth_oci::Hasher::new(digest.algorithm());
    while let Some(item) = data.next().await {
        hasher.update(&item.map_err(BlobError::Client)?);
    }
    let actual = hasher.finalize();
    if actual.hex() != digest.hex() {
        return Err(BlobError::DigestMismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}
