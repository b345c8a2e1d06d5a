//! S3 backend (aws-sdk-s3), for AWS S3 and S3-compatible stores (SeaweedFS,
//! MinIO, …).
//!
//! Object layout in the bucket, under an optional key prefix:
//!
//! ```text
//! <prefix>/blobs/<algo>/<2 hex>/<hex>        content-addressed blobs (same as fs)
//! <prefix>/uploads/<id>/part-NNNNN           full parts of in-progress uploads
//! <prefix>/_probe/<uuid>                     readiness probes (deleted at once)
//! ```
//!
//! Local layout under `spool_dir`:
//!
//! ```text
//! uploads/<id>/spool-NNNNN                   bytes that will become part NNNNN
//!                                            (upload_create writes spool-00001)
//! tmp/put-<uuid>                             body of an in-flight put
//! ```
//!
//! **Uploads.** Incoming bytes go to the local spool file; when it holds
//! `part_size(n)` bytes it is PUT as `part-n` and a new spool file `n+1` is
//! started. Memory use is bounded (1 MiB write batches); part size doubles
//! every 1,000 parts so an upload never needs more than S3's 10,000 parts.
//! The in-memory state of an upload (part sizes, spool length) changes only
//! when an append succeeds, so a failed or cancelled append leaves it as it
//! was at `offset`; the local spool is truncated back and spool files the
//! append created are removed; part objects it wrote are overwritten later
//! or deleted on commit/abort.
//!
//! **Recovery.** The state is rebuilt when absent (after a restart): the
//! highest-numbered local spool file `j` is the tail and parts `1..j` must be
//! in S3 (a spool file is only started after the previous part was stored,
//! and lower-numbered spool files left by a crash are stale); parts `≥ j` are
//! leftovers of a failed append and are ignored. Without a local
//! spool (another node resumes) the contiguous parts in S3 are the upload; a
//! short last part is pulled back into a local spool so later parts keep S3's
//! 5 MiB minimum.
//!
//! **Commit.** No parts: the spool is PUT as the blob. Otherwise the spool is
//! flushed as the last part, then one part within `copy_part_limit` is
//! copied with CopyObject, anything else assembled server-side with
//! multipart UploadPartCopy (parts split into ranges above
//! `copy_part_limit`). Then the part objects and the local spool are
//! deleted.
//!
//! **Failures.** The SDK retries with exponential backoff and jitter
//! (`max_attempts`); attempts are bounded by `request_timeout` (plus time
//! for the bytes of large transfers at 1 MiB/s), and stalled bodies are
//! cut off by the SDK's stalled-stream protection (and response bodies by
//! an idle bound of `request_timeout` while we wait for S3, not while the
//! consumer is slow). What is left after the
//! retries — no connection, timeouts, 5xx, throttling — is
//! [`BlobError::Unavailable`]; `NoSuchKey` is `NotFound`.
//!
//! Concurrency: appends and commits of one upload are serialised by a
//! per-upload lock of this process; one `spool_dir` belongs to one store.
//! Abort does not wait for a running append (the append notices and fails).
//!
//! Incomplete multipart uploads left by a crash in the middle of a commit or
//! put are invisible; a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) reclaims them.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::ErrorKind;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::BehaviorVersion;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::config::ResponseChecksumValidation;
use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::primitives::Length;
use aws_sdk_s3::types::CompletedMultipartUpload;
use aws_sdk_s3::types::CompletedPart;
use aws_sdk_s3::types::Delete;
use aws_sdk_s3::types::ObjectIdentifier;
use berth_oci::Digest;
use bytes::Bytes;
use futures::StreamExt;
use futures::TryStreamExt;
use tracing::Instrument;
use tracing::debug;
use tracing::info;
use tracing::warn;

use crate::BlobError;
use crate::BlobPage;
use crate::BlobStore;
use crate::ByteRange;
use crate::ByteStream;
use crate::check_upload_id;
use crate::fs::FileWriter;
use crate::fs::blocking;
use crate::fs::clean_dir;
use crate::fs::read_stream;
use crate::lock::KeyedGuard;
use crate::lock::KeyedLocks;
use crate::temp::TempBlob;

mod error;
mod plan;

use error::classify;
use error::to_blob_error;
use plan::Keys;
pub use plan::MAX_OBJECT_PART;
pub use plan::MAX_PARTS;
pub use plan::MIN_PART_SIZE;
pub use plan::PARTS_PER_DOUBLING;
pub use plan::copy_ranges;
use plan::encode_copy_source;
use plan::parse_content_range;
use plan::parse_spool_name;
pub use plan::part_size_for;
use plan::spool_name;

const MIB: u64 = plan::MIB;
/// Largest chunk yielded by the streams this backend returns.
const STREAM_CHUNK: usize = 1024 * 1024;
/// Write batches of the upload spool. A spool file is read once, to send a part,
/// never served from memory maps, so it skips the 2 MiB huge-folio batches of blob
/// files: smaller batches keep each upload's two buffers at 2 MiB in all.
const SPOOL_BATCH: usize = 1024 * 1024;
/// Buffer size used to stream files into request bodies.
const FILE_BODY_BUFFER: usize = 256 * 1024;
/// Parallel part uploads / part copies of one multipart upload.
const TRANSFER_CONCURRENCY: usize = 4;
/// Transfers get `request_timeout` plus this much time per byte (1 MiB/s).
const MIN_TRANSFER_RATE: u64 = MIB;
/// DeleteObjects accepts at most this many keys.
const DELETE_BATCH: usize = 1000;
/// S3's longest presigned URL lifetime.
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Re-reads of an upload's state when aborts race with loading it.
const LOAD_TRIES: usize = 5;
/// Bound on ListObjectsV2 pages for one listing.
const MAX_LIST_PAGES: usize = 1_000_000;
/// Keys asked for per ListObjectsV2 request (S3 answers at most 1,000).
const LIST_PAGE_KEYS: i32 = 1000;

// ---- configuration ---------------------------------------------------------------------

/// Settings of [`S3BlobStore`]. Field names are the names used in error
/// messages ("check setting `bucket`").
#[derive(Clone)]
pub struct S3Config {
    /// Bucket name (must exist).
    pub bucket: String,
    /// Endpoint URL for S3-compatible stores (`http://127.0.0.1:8333`);
    /// `None`: AWS's endpoint for `region`.
    pub endpoint: Option<String>,
    /// Signing region (`us-east-1` for most S3-compatible stores).
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most
    /// S3-compatible stores.
    pub path_style: bool,
    /// Key prefix inside the bucket (`""` or e.g. `"registry"`).
    pub prefix: String,
    /// Static credentials; both or neither. Neither: the standard AWS chain
    /// (environment, profile, web identity, ECS, IMDS).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Base size of upload parts (5 MiB – 5 GiB); doubles every 1,000 parts.
    /// Also the largest blob `put` stores with a single PutObject.
    pub part_size: u64,
    /// Largest object copied with one CopyObject / one UploadPartCopy range
    /// (S3's limit is 5 GiB; smaller values exist for tests).
    pub copy_part_limit: u64,
    /// Bound of one request attempt (transfers get extra time per byte);
    /// also the connect timeout and the stall grace period of bodies.
    pub request_timeout: Duration,
    /// Attempts per request, including the first (≥ 1).
    pub max_attempts: u32,
    /// Local directory for upload spools and put temp files (one store per
    /// directory).
    pub spool_dir: PathBuf,
}

impl S3Config {
    /// Defaults: AWS endpoint, `us-east-1`, virtual-host style, no prefix,
    /// credential chain, 8 MiB parts, 5 GiB copy limit, 30 s requests,
    /// 3 attempts.
    pub fn new(bucket: impl Into<String>, spool_dir: impl Into<PathBuf>) -> Self {
        S3Config {
            bucket: bucket.into(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            path_style: false,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            part_size: 8 * MIB,
            copy_part_limit: MAX_OBJECT_PART,
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            spool_dir: spool_dir.into(),
        }
    }

    fn validate(&self) -> Result<(), BlobError> {
        let bad = |msg: String| Err(BlobError::Backend(format!("invalid S3 settings: {msg}")));
        if self.bucket.trim().is_empty() {
            return bad("`bucket` is empty".into());
        }
        if self.region.trim().is_empty() {
            return bad("`region` is empty".into());
        }
        if let Some(ep) = &self.endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            return bad(format!("`endpoint` {ep:?} must start with http:// or https://"));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return bad(
                "give both `access_key_id` and `secret_access_key`, or neither (to use the \
                 AWS credential chain)"
                    .into(),
            );
        }
        if self.max_attempts == 0 {
            return bad("`max_attempts` must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return bad("`request_timeout` must be positive".into());
        }
        if self.spool_dir.as_os_str().is_empty() {
            return bad("`spool_dir` is empty".into());
        }
        if let Err(msg) = plan::validate_sizes(self.part_size, self.copy_part_limit) {
            return bad(msg);
        }
        Ok(())
    }

    fn endpoint_description(&self) -> String {
        match &self.endpoint {
            Some(ep) => format!("endpoint {ep}"),
            None => format!("the AWS endpoint of region {}", self.region),
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("part_size", &self.part_size)
            .field("copy_part_limit", &self.copy_part_limit)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("spool_dir", &self.spool_dir)
            .finish()
    }
}

// ---- the store ---------------------------------------------------------------------------

/// Blob store in an S3 bucket. See the module docs for layout and behaviour.
pub struct S3BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.inner.bucket)
            .field("keys", &self.inner.keys)
            .field("spool", &self.inner.spool_root)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    bucket: String,
    keys: Keys,
    part_size: u64,
    copy_part_limit: u64,
    request_timeout: Duration,
    /// `spool_dir/uploads`
    spool_root: PathBuf,
    /// `spool_dir/tmp`
    tmp: PathBuf,
    locks: Arc<KeyedLocks>,
    uploads: Mutex<HashMap<String, UploadState>>,
    /// Bumped by every abort/purge, so a concurrent state load can tell.
    aborts: AtomicU64,
    epochs: AtomicU64,
}

/// In-memory state of one upload: sizes of `part-1..=n` in S3, then the
/// bytes in local spool file `n + 1`.
#[derive(Debug, Clone)]
struct UploadState {
    parts: Vec<u64>,
    spool_len: u64,
    /// Distinguishes loads of the same id (an abort drops the entry).
    epoch: u64,
}

impl UploadState {
    fn len(&self) -> u64 {
        self.parts.iter().sum::<u64>() + self.spool_len
    }

    /// Number of the part the spool will become.
    fn spool_part(&self) -> u32 {
        u32::try_from(self.parts.len() + 1).unwrap_or(u32::MAX)
    }
}

impl S3BlobStore {
    /// Build the client, prepare `spool_dir` (removing stale put temp files)
    /// and check that the bucket answers (HeadBucket). Errors name the
    /// setting to check and what S3 answered.
    pub async fn connect(cfg: S3Config) -> Result<Self, BlobError> {
        cfg.validate()?;
        let client = build_client(&cfg).await;

        let spool_root = cfg.spool_dir.join("uploads");
        let tmp = cfg.spool_dir.join("tmp");
        let dirs = [spool_root.clone(), tmp.clone()];
        let t = tmp.clone();
        let removed = blocking(move || {
            for d in &dirs {
                std::fs::create_dir_all(d)?;
            }
            clean_dir(&t)
        })
        .await
        .map_err(|e| BlobError::Backend(format!("cannot prepare `spool_dir` {}: {e}", cfg.spool_dir.display())))?;
        if removed > 0 {
            info!(dir = %tmp.display(), removed, "removed stale S3 put temp files");
        }

        check_bucket(&client, &cfg).await?;
        info!(bucket = %cfg.bucket, endpoint = ?cfg.endpoint, prefix = %cfg.prefix,
            "connected to S3 blob store");
        Ok(S3BlobStore {
            inner: Arc::new(Inner {
                client,
                bucket: cfg.bucket.clone(),
                keys: Keys::new(&cfg.prefix),
                part_size: cfg.part_size,
                copy_part_limit: cfg.copy_part_limit,
                request_timeout: cfg.request_timeout,
                spool_root,
                tmp,
                locks: Arc::new(KeyedLocks::default()),
                uploads: Mutex::new(HashMap::new()),
                aborts: AtomicU64::new(0),
                epochs: AtomicU64::new(1),
            }),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The SDK client (for tools and tests).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Object key of the blob `digest` (whether or not it exists).
    pub fn blob_key(&self, digest: &Digest) -> Result<String, BlobError> {
        self.inner.keys.blob(digest)
    }

    /// Key prefix under which upload `id` keeps its part objects.
    pub fn upload_prefix(&self, id: &str) -> Result<String, BlobError> {
        check_upload_id(id)?;
        Ok(self.inner.keys.upload_dir(id))
    }

    /// Object key of part `n` of upload `id`.
    pub fn upload_part_key(&self, id: &str, n: u32) -> Result<String, BlobError> {
        check_upload_id(id)?;
        Ok(self.inner.keys.part(id, n))
    }

    /// Every stored blob with its size (a bucket listing, to rebuild an
    /// index). Keys that are not valid digests are skipped. Holds the whole
    /// listing in memory; [`BlobStore::list`] pages instead.
    pub async fn list_blobs(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let listed = self.inner.list_keys(&self.inner.keys.blobs_root()).await?;
        let mut out = Vec::with_capacity(listed.len());
        for (key, size) in listed {
            match self.inner.keys.parse_blob_key(&key) {
                Some(d) => out.push((d, size)),
                None => warn!(%key, "ignoring unexpected object under blobs/"),
            }
        }
        Ok(out)
    }
}

/// SDK client from settings, built without `aws_config::load_defaults`, so
/// no environment variable other than the credential chain's (e.g. not
/// `AWS_CA_BUNDLE`, `AWS_ENDPOINT_URL`, `AWS_REGION`) can change it.
async fn build_client(cfg: &S3Config) -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(cfg.request_timeout)
        .operation_attempt_timeout(cfg.request_timeout)
        .build();
    let retry = RetryConfig::standard()
        .with_max_attempts(cfg.max_attempts)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF);
    let stall = StalledStreamProtectionConfig::enabled()
        .grace_period(cfg.request_timeout)
        .build();
    let region = Region::new(cfg.region.clone());
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region.clone())
        .force_path_style(cfg.path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(retry)
        .timeout_config(timeouts)
        .stalled_stream_protection(stall);
    if let Some(ep) = &cfg.endpoint {
        builder = builder.endpoint_url(ep.clone());
    }
    builder = match (&cfg.access_key_id, &cfg.secret_access_key) {
        (Some(key), Some(secret)) => builder.credentials_provider(Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "berth-config",
        )),
        _ => {
            let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .region(region)
                .build()
                .await;
            builder.credentials_provider(chain)
        }
    };
    Client::from_conf(builder.build())
}

/// HeadBucket with an error that names the setting to check.
async fn check_bucket(client: &Client, cfg: &S3Config) -> Result<(), BlobError> {
    let err = match client.head_bucket().bucket(&cfg.bucket).send().await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let failure = classify("HeadBucket", &cfg.bucket, &err);
    let bucket = &cfg.bucket;
    let at = cfg.endpoint_description();
    let msg = match failure.status {
        None => {
            return Err(BlobError::Unavailable(format!(
                "S3 bucket {bucket:?} is not reachable at {at} (check setting `endpoint`): {failure}"
            )));
        }
        Some(404) => format!("S3 bucket {bucket:?} does not exist at {at} (check setting `bucket`): {failure}"),
        Some(401 | 403) => format!(
            "S3 denied access to bucket {bucket:?} at {at} (check settings `access_key_id` / \
             `secret_access_key`, or the AWS credential chain): {failure}"
        ),
        Some(301 | 307 | 400) => format!(
            "S3 rejected bucket {bucket:?} at {at} (check settings `region` = {:?} and \
             `path_style` = {}): {failure}",
            cfg.region, cfg.path_style
        ),
        Some(s) if s >= 500 || s == 429 => {
            return Err(BlobError::Unavailable(format!(
                "S3 bucket {bucket:?} at {at} is unavailable: {failure}"
            )));
        }
        Some(_) => format!("S3 bucket {bucket:?} at {at} is not usable: {failure}"),
    };
    Err(BlobError::Backend(msg))
}

/// Where a multipart part comes from.
enum PartSource {
    /// Bytes `offset..offset+len` of a local file.
    File { path: PathBuf, offset: u64, len: u64 },
    /// Inclusive byte range of an existing object.
    Copy { key: String, start: u64, end: u64 },
}

impl Inner {
    fn spool_dir(&self, id: &str) -> PathBuf {
        self.spool_root.join(id)
    }

    /// Per-operation timeouts for moving `bytes` bytes.
    fn transfer_config(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        let extra = Duration::from_secs(bytes / MIN_TRANSFER_RATE + 1);
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.request_timeout)
                .operation_attempt_timeout(self.request_timeout.saturating_add(extra))
                .build(),
        )
    }

    fn get_state(&self, id: &str) -> Option<UploadState> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Replace the state of `id` if it is still the load `epoch` (not aborted).
    fn replace_state(&self, id: &str, state: UploadState) -> bool {
        let mut map = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(id) {
            Some(cur) if cur.epoch == state.epoch => {
                *cur = state;
                true
            }
            _ => false,
        }
    }

    fn forget_state(&self, id: &str) {
        let mut map = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
        self.aborts.fetch_add(1, Ordering::SeqCst);
    }

    /// The state of `id`, loading it if needed (waits for the upload lock
    /// only when it has to load).
    async fn state_for(self: &Arc<Self>, id: &str) -> Result<UploadState, BlobError> {
        if let Some(s) = self.get_state(id) {
            return Ok(s);
        }
        let _lock = self.locks.lock(id).await;
        self.load_state_locked(id).await
    }

    /// The state of `id`; the caller holds the upload lock.
    async fn load_state_locked(&self, id: &str) -> Result<UploadState, BlobError> {
        for _ in 0..LOAD_TRIES {
            if let Some(s) = self.get_state(id) {
                return Ok(s);
            }
            let seq = self.aborts.load(Ordering::SeqCst);
            let Some(state) = self.rebuild(id).await? else {
                return Err(BlobError::UploadNotFound(id.to_owned()));
            };
            let mut map = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            if self.aborts.load(Ordering::SeqCst) == seq {
                map.insert(id.to_owned(), state.clone());
                return Ok(state);
            }
        }
        Err(BlobError::Unavailable(format!(
            "upload {id}: its state kept changing while it was being loaded"
        )))
    }

    /// Rebuild the state of `id` from the local spool and the part objects.
    async fn rebuild(&self, id: &str) -> Result<Option<UploadState>, BlobError> {
        let dir = self.spool_dir(id);
        let d = dir.clone();
        let local = blocking(move || list_spools(&d)).await?;
        let highest = local.as_ref().and_then(|v| v.last().copied());
        let (parts, spool_len) = match highest {
            Some((1, len)) => (Vec::new(), len),
            Some((j, len)) => {
                let in_s3 = self.list_parts(id).await?;
                let mut parts = Vec::with_capacity(j as usize);
                for n in 1..j {
                    match in_s3.get(&n) {
                        Some(size) => parts.push(*size),
                        None => {
                            return Err(BlobError::Backend(format!(
                                "upload {id}: local spool {} exists but part {n} is missing \
                                 from S3 ({})",
                                spool_name(j),
                                self.keys.part(id, n)
                            )));
                        }
                    }
                }
                (parts, len)
            }
            None => {
                let in_s3 = self.list_parts(id).await?;
                if local.is_none() && in_s3.is_empty() {
                    return Ok(None);
                }
                let mut parts = Vec::new();
                let mut n = 1u32;
                while let Some(size) = in_s3.get(&n) {
                    parts.push(*size);
                    n += 1;
                }
                if in_s3.len() > parts.len() {
                    warn!(
                        upload = id,
                        contiguous = parts.len(),
                        stored = in_s3.len(),
                        "ignoring upload parts after a gap"
                    );
                }
                let mut spool_len = 0;
                if let Some(&last) = parts.last() {
                    let m = u32::try_from(parts.len()).unwrap_or(u32::MAX);
                    if last < part_size_for(self.part_size, m) {
                        // A short last part (a commit flushed the spool of a node
                        // that is gone): continue it locally so every part but the
                        // last keeps S3's minimum size.
                        self.pull_part_into_spool(id, m, last).await?;
                        parts.pop();
                        spool_len = last;
                    }
                }
                (parts, spool_len)
            }
        };
        if let (Some(local), Some((j, _))) = (local, highest) {
            let stale: Vec<PathBuf> = local
                .iter()
                .filter(|(n, _)| *n < j)
                .map(|(n, _)| dir.join(spool_name(*n)))
                .collect();
            if !stale.is_empty() {
                blocking(move || {
                    for p in &stale {
                        remove_file_quiet(p);
                    }
                    Ok(())
                })
                .await?;
            }
        }
        let state = UploadState {
            parts,
            spool_len,
            epoch: self.epochs.fetch_add(1, Ordering::SeqCst),
        };
        debug!(
            upload = id,
            parts = state.parts.len(),
            spool = state.spool_len,
            len = state.len(),
            "rebuilt upload state"
        );
        Ok(Some(state))
    }

    /// Download part `n` of `id` into local spool file `n`.
    async fn pull_part_into_spool(&self, id: &str, n: u32, size: u64) -> Result<(), BlobError> {
        let key = self.keys.part(id, n);
        debug!(
            upload = id,
            part = n,
            size,
            "pulling short last part into the local spool"
        );
        let mut body = self.get_object_stream(&key, size).await?;
        let dir = self.spool_dir(id);
        let path = dir.join(spool_name(n));
        let file = blocking(move || {
            std::fs::create_dir_all(&dir)?;
            OpenOptions::new().write(true).create(true).truncate(true).open(&path)
        })
        .await?;
        let mut writer = spool_writer(file, 0);
        let res: Result<u64, BlobError> = async {
            while let Some(chunk) = body.next().await {
                writer.write(chunk?).await?;
            }
            let len = writer.flush().await?;
            writer.sync().await?;
            Ok(len)
        }
        .await;
        match res {
            Ok(len) if len == size => Ok(()),
            Ok(len) => Err(BlobError::Backend(format!("{key}: read {len} bytes, S3 listed {size}"))),
            Err(e) => {
                writer.wait_quiet().await;
                Err(e)
            }
        }
    }

    /// Part numbers and sizes of `id` in S3.
    async fn list_parts(&self, id: &str) -> Result<BTreeMap<u32, u64>, BlobError> {
        let mut parts = BTreeMap::new();
        for (key, size) in self.list_keys(&self.keys.upload_dir(id)).await? {
            if let Some((kid, n)) = self.keys.parse_part_key(&key)
                && kid == id
            {
                parts.insert(n, size);
            }
        }
        Ok(parts)
    }

    /// Every object key (with size) under `prefix`: the objects themselves,
    /// never common prefixes (SeaweedFS keeps deleted "directories" in
    /// delimiter listings for minutes).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| to_blob_error("ListObjectsV2", prefix, &e))?;
            for obj in page.contents() {
                if let (Some(key), Some(size)) = (obj.key(), obj.size())
                    && !key.ends_with('/')
                {
                    out.push((key.to_owned(), u64::try_from(size).unwrap_or(0)));
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => {
                    if token.as_deref() == Some(next) {
                        return Err(BlobError::Backend(format!(
                            "ListObjectsV2 {prefix}: S3 repeated continuation token"
                        )));
                    }
                    token = Some(next.to_owned());
                }
                _ => return Ok(out),
            }
        }
        Err(BlobError::Backend(format!(
            "ListObjectsV2 {prefix}: more than {MAX_LIST_PAGES} pages"
        )))
    }

    /// One page of the blobs (see [`BlobStore::list`]): ListObjectsV2 from the
    /// key of `after`, following continuation tokens past keys that are not
    /// blobs until the page is full or the listing ends. S3 lists keys in
    /// byte order, which is digest order for blob keys (see `Keys::blob`).
    async fn list_blobs_page(&self, after: Option<&Digest>, limit: usize) -> Result<BlobPage, BlobError> {
        let limit = limit.max(1);
        let root = self.keys.blobs_root();
        let start_after = after.map(|d| self.keys.blob(d)).transpose()?;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX).min(LIST_PAGE_KEYS);
            let req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&root)
                .max_keys(want);
            // The start applies to the first request; the token carries it on.
            let req = match &token {
                Some(t) => req.continuation_token(t),
                None => req.set_start_after(start_after.clone()),
            };
            let page = req
                .send()
                .await
                .map_err(|e| to_blob_error("ListObjectsV2", &root, &e))?;
            let truncated = page.is_truncated() == Some(true);
            let mut objects = page.contents().iter();
            for obj in objects.by_ref() {
                let (Some(key), Some(size)) = (obj.key(), obj.size()) else {
                    continue;
                };
                match self.keys.parse_blob_key(key) {
                    Some(digest) => out.push((digest, u64::try_from(size).unwrap_or(0))),
                    None => warn!(%key, "ignoring unexpected object under blobs/"),
                }
                if out.len() == limit {
                    break;
                }
            }
            if out.len() == limit {
                let more = truncated || objects.next().is_some();
                let next = more.then(|| out.last().map(|(d, _)| d.clone())).flatten();
                return Ok(BlobPage { blobs: out, next });
            }
            match page.next_continuation_token() {
                Some(next) if truncated => {
                    if token.as_deref() == Some(next) {
                        return Err(BlobError::Backend(format!(
                            "ListObjectsV2 {root}: S3 repeated continuation token"
                        )));
                    }
                    token = Some(next.to_owned());
                }
                _ => return Ok(BlobPage { blobs: out, next: None }),
            }
        }
        Err(BlobError::Backend(format!(
            "ListObjectsV2 {root}: more than {MAX_LIST_PAGES} pages"
        )))
    }

    /// Delete `keys` (DeleteObjects in batches); missing keys are fine.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), BlobError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let mut ids = Vec::with_capacity(batch.len());
            for key in batch {
                ids.push(
                    ObjectIdentifier::builder()
                        .key(key)
                        .build()
                        .map_err(|e| BlobError::Backend(format!("DeleteObjects {key}: {e}")))?,
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| BlobError::Backend(format!("DeleteObjects: {e}")))?;
            let first = batch.first().map(String::as_str).unwrap_or("");
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| to_blob_error("DeleteObjects", first, &e))?;
            if let Some(err) = out.errors().first() {
                return Err(BlobError::Backend(format!(
                    "DeleteObjects: S3 could not delete {} of {} keys, e.g. {}: {} {}",
                    out.errors().len(),
                    batch.len(),
                    err.key().unwrap_or("?"),
                    err.code().unwrap_or("?"),
                    err.message().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// Size of `key`, `None` if absent.
    async fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some(object_len("HeadObject", key, out.content_length())?)),
            Err(e) => {
                let failure = classify("HeadObject", key, &e);
                if failure.is_not_found() || failure.status == Some(404) {
                    Ok(None)
                } else {
                    Err(failure.into_blob_error())
                }
            }
        }
    }

    /// PutObject of `len` bytes of `path` (from offset 0) as `key`.
    async fn put_file(&self, key: &str, path: &Path, len: u64) -> Result<(), BlobError> {
        let body = file_body(path, 0, len).await?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .body(body)
            .customize()
            .config_override(self.transfer_config(len))
            .send()
            .await
            .map_err(|e| to_blob_error("PutObject", key, &e))?;
        debug!(key, len, "stored object");
        Ok(())
    }

    /// CopyObject `src` → `dst` (`size` ≤ copy limit).
    async fn copy_object(&self, src: &str, dst: &str, size: u64) -> Result<(), BlobError> {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst)
            .copy_source(encode_copy_source(&self.bucket, src))
            .customize()
            .config_override(self.transfer_config(size))
            .send()
            .await
            .map_err(|e| to_blob_error("CopyObject", dst, &e))?;
        debug!(src, dst, size, "copied object");
        Ok(())
    }

    /// Assemble `key` from `sources` with a multipart upload; aborts it on
    /// failure (and on cancellation, from a spawned task).
    async fn multipart(self: &Arc<Self>, key: &str, sources: Vec<PartSource>) -> Result<(), BlobError> {
        if sources.len() > MAX_PARTS as usize {
            return Err(BlobError::Backend(format!(
                "{key}: {} parts exceed S3's limit of {MAX_PARTS}; raise `part_size` or \
                 `copy_part_limit`",
                sources.len()
            )));
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| to_blob_error("CreateMultipartUpload", key, &e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| BlobError::Backend(format!("CreateMultipartUpload {key}: S3 returned no upload id")))?
            .to_owned();
        let mut guard = MultipartGuard {
            inner: Some(Arc::clone(self)),
            key: key.to_owned(),
            upload_id: upload_id.clone(),
        };
        debug!(key, upload_id, parts = sources.len(), "multipart upload started");

        let result = async {
            let parts: Vec<CompletedPart> = futures::stream::iter(sources.into_iter().enumerate())
                .map(|(i, src)| {
                    let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
                    self.send_part(key, &upload_id, number, src)
                })
                .buffered(TRANSFER_CONCURRENCY)
                .try_collect()
                .await?;
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| to_blob_error("CompleteMultipartUpload", key, &e))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                guard.inner = None;
                debug!(key, "multipart upload completed");
                Ok(())
            }
            Err(e) => {
                guard.inner = None;
                self.abort_multipart(key, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            warn!(key, upload_id, error = %DisplayErrorContext(&e),
                "could not abort multipart upload (a lifecycle rule must reclaim it)");
        }
    }

    async fn send_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        src: PartSource,
    ) -> Result<CompletedPart, BlobError> {
        let etag = match src {
            PartSource::File { path, offset, len } => {
                let body = file_body(&path, offset, len).await?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                    .body(body)
                    .customize()
                    .config_override(self.transfer_config(len))
                    .send()
                    .await
                    .map_err(|e| to_blob_error("UploadPart", key, &e))?;
                out.e_tag().map(str::to_owned)
            }
            PartSource::Copy {
                key: src_key,
                start,
                end,
            } => {
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(encode_copy_source(&self.bucket, &src_key))
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .customize()
                    .config_override(self.transfer_config(end - start + 1))
                    .send()
                    .await
                    .map_err(|e| to_blob_error("UploadPartCopy", key, &e))?;
                out.copy_part_result().and_then(|r| r.e_tag()).map(str::to_owned)
            }
        };
        let etag = etag.ok_or_else(|| BlobError::Backend(format!("{key}: S3 returned no ETag for part {number}")))?;
        Ok(CompletedPart::builder().part_number(number).e_tag(etag).build())
    }

    /// Store `size` bytes of the file `path` as `key`: one PutObject up to
    /// `part_size`, else a multipart upload of growing parts.
    async fn store_file(self: &Arc<Self>, key: &str, path: &Path, size: u64) -> Result<(), BlobError> {
        if size <= self.part_size {
            return self.put_file(key, path, size).await;
        }
        let mut sources = Vec::new();
        let mut offset = 0;
        let mut n = 1u32;
        while offset < size {
            let len = part_size_for(self.part_size, n).min(size - offset);
            sources.push(PartSource::File {
                path: path.to_owned(),
                offset,
                len,
            });
            offset += len;
            n = n.saturating_add(1);
        }
        self.multipart(key, sources).await
    }

    /// GetObject of the whole `key`, which must be `size` bytes.
    async fn get_object_stream(&self, key: &str, size: u64) -> Result<ByteStream, BlobError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| to_blob_error("GetObject", key, &e))?;
        let len = object_len("GetObject", key, out.content_length())?;
        if len != size {
            return Err(BlobError::Backend(format!(
                "GetObject {key}: object has {len} bytes, expected {size}"
            )));
        }
        Ok(sdk_body_stream(out.body, len, key.to_owned(), self.request_timeout))
    }

    /// Remove every trace of upload `id`: in-memory state, local spool, part
    /// objects. Idempotent.
    async fn purge(&self, id: &str) -> Result<(), BlobError> {
        self.forget_state(id);
        let dir = self.spool_dir(id);
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await?;
        let keys: Vec<String> = self
            .list_keys(&self.keys.upload_dir(id))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if !keys.is_empty() {
            self.delete_keys(keys).await?;
        }
        Ok(())
    }
}

/// Aborts a multipart upload whose future was dropped.
struct MultipartGuard {
    inner: Option<Arc<Inner>>,
    key: String,
    upload_id: String,
}

impl Drop for MultipartGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let upload_id = std::mem::take(&mut self.upload_id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                inner.abort_multipart(&key, &upload_id).await;
            });
        } else {
            warn!(
                key,
                upload_id, "multipart upload cancelled outside a runtime; not aborted"
            );
        }
    }
}

fn object_len(op: &str, key: &str, len: Option<i64>) -> Result<u64, BlobError> {
    len.and_then(|l| u64::try_from(l).ok())
        .ok_or_else(|| BlobError::Backend(format!("{op} {key}: S3 sent no valid Content-Length")))
}

/// Request body: `len` bytes of `path` from `offset`, re-readable for retries.
async fn file_body(path: &Path, offset: u64, len: u64) -> Result<SdkByteStream, BlobError> {
    if len == 0 {
        return Ok(SdkByteStream::from_static(b""));
    }
    SdkByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(FILE_BODY_BUFFER)
        .build()
        .await
        .map_err(|e| BlobError::Io(io::Error::other(format!("reading {} for upload: {e}", path.display()))))
}

/// Our stream over an SDK response body: chunks of at most `STREAM_CHUNK`,
/// exactly `expected` bytes (else an error), no wait for S3 longer than
/// `idle`.
fn sdk_body_stream(body: SdkByteStream, expected: u64, what: String, idle: Duration) -> ByteStream {
    struct St {
        body: SdkByteStream,
        remaining: u64,
        pending: Bytes,
        what: String,
        idle: Duration,
        done: bool,
    }
    let st = St {
        body,
        remaining: expected,
        pending: Bytes::new(),
        what,
        idle,
        done: false,
    };
    Box::pin(futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if !st.pending.is_empty() {
                let n = st.pending.len().min(STREAM_CHUNK);
                let chunk = st.pending.split_to(n);
                return Some((Ok(chunk), st));
            }
            let next = match tokio::time::timeout(st.idle, st.body.next()).await {
                Ok(next) => next,
                Err(_) => {
                    st.done = true;
                    let e = io::Error::new(
                        ErrorKind::TimedOut,
                        format!("{}: no data from S3 for {:?}", st.what, st.idle),
                    );
                    return Some((Err(e), st));
                }
            };
            match next {
                Some(Ok(bytes)) => {
                    let n = bytes.len() as u64;
                    if n > st.remaining {
                        st.done = true;
                        let e = io::Error::other(format!("{}: S3 sent more bytes than announced", st.what));
                        return Some((Err(e), st));
                    }
                    st.remaining -= n;
                    st.pending = bytes;
                }
                Some(Err(e)) => {
                    st.done = true;
                    let e = io::Error::other(format!(
                        "{}: reading from S3 failed: {}",
                        st.what,
                        DisplayErrorContext(&e)
                    ));
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    if st.remaining > 0 {
                        let e = io::Error::new(
                            ErrorKind::UnexpectedEof,
                            format!("{}: S3 body ended {} bytes early", st.what, st.remaining),
                        );
                        return Some((Err(e), st));
                    }
                    return None;
                }
            }
        }
    }))
}

/// Spool files in `dir` as (part number, length), sorted; `None` if `dir`
/// does not exist.
fn list_spools(dir: &Path) -> io::Result<Option<Vec<(u32, u64)>>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(n) = parse_spool_name(&name) else {
            continue;
        };
        let meta = entry.metadata()?;
        if meta.is_file() {
            out.push((n, meta.len()));
        }
    }
    out.sort_unstable();
    Ok(Some(out))
}

fn remove_file_quiet(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not remove spool file");
    }
}

/// Undo the local side of a failed append: remove spool files it started
/// (`k0+1..=last`), then cut spool `k0` back to `s0` bytes.
fn rollback_spools(dir: &Path, k0: u32, s0: u64, last: u32) -> io::Result<()> {
    for n in k0.saturating_add(1)..=last {
        remove_file_quiet(&dir.join(spool_name(n)));
    }
    match OpenOptions::new().write(true).open(dir.join(spool_name(k0))) {
        Ok(file) => {
            file.set_len(s0)?;
            file.sync_data()
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

// ---- spool writer --------------------------------------------------------------------------

/// A writer appending to a spool file that already holds `len` bytes.
fn spool_writer(file: File, len: u64) -> FileWriter {
    FileWriter::new(file, len).with_batch(SPOOL_BATCH)
}

// ---- appends -------------------------------------------------------------------------------

/// One running append. Unless disarmed it rolls the local spool back — inline
/// via [`AppendTx::rollback`], or from a spawned task when the append future
/// is dropped — and holds the upload lock until that is done.
struct AppendTx {
    inner: Arc<Inner>,
    id: String,
    dir: PathBuf,
    base: UploadState,
    /// Spool number at `offset` and its length then.
    k0: u32,
    s0: u64,
    /// Highest spool number this append created.
    last: u32,
    writer: Option<FileWriter>,
    lock: Option<KeyedGuard>,
    armed: bool,
}

impl AppendTx {
    async fn run(
        &mut self,
        data: &mut ByteStream,
        on_chunk: &mut (dyn for<'c> FnMut(&'c [u8]) + Send),
    ) -> Result<u64, BlobError> {
        let mut parts = self.base.parts.clone();
        let mut k = self.k0;
        while let Some(item) = data.next().await {
            let mut chunk = item.map_err(BlobError::Client)?;
            if chunk.is_empty() {
                continue;
            }
            on_chunk(&chunk);
            while !chunk.is_empty() {
                if k > MAX_PARTS {
                    return Err(BlobError::Backend(format!(
                        "upload {}: larger than {MAX_PARTS} parts can hold (raise `part_size`)",
                        self.id
                    )));
                }
                let cap = part_size_for(self.inner.part_size, k);
                let writer = self.writer_mut()?;
                let room = cap.saturating_sub(writer.len());
                let n = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
                writer.write(chunk.split_to(n)).await?;
                if writer.len() >= cap {
                    let size = writer.flush().await?;
                    self.writer = None;
                    let path = self.dir.join(spool_name(k));
                    self.inner
                        .put_file(&self.inner.keys.part(&self.id, k), &path, size)
                        .await?;
                    parts.push(size);
                    k += 1;
                    // Fails if the upload was aborted meanwhile (its dir is gone).
                    let next = self.dir.join(spool_name(k));
                    self.last = k;
                    let file = blocking(move || OpenOptions::new().write(true).create(true).truncate(true).open(&next))
                        .await
                        .map_err(|e| self.missing_upload(e))?;
                    self.writer = Some(spool_writer(file, 0));
                    if k - 1 != self.k0 {
                        // The spool of `offset` stays until the end: it is the undo.
                        blocking(move || {
                            remove_file_quiet(&path);
                            Ok(())
                        })
                        .await?;
                    }
                }
            }
        }
        let writer = self.writer_mut()?;
        let spool_len = writer.flush().await?;
        writer.sync().await?;
        if k != self.k0 {
            let dir = self.dir.clone();
            blocking(move || crate::fs::sync_dir(&dir)).await?;
        }
        let state = UploadState {
            parts,
            spool_len,
            epoch: self.base.epoch,
        };
        let new_len = state.len();
        if !self.inner.replace_state(&self.id, state) {
            // Aborted while we were appending.
            return Err(BlobError::UploadNotFound(self.id.clone()));
        }
        self.armed = false;
        if k != self.k0 {
            let old = self.dir.join(spool_name(self.k0));
            blocking(move || {
                remove_file_quiet(&old);
                Ok(())
            })
            .await?;
        }
        Ok(new_len)
    }

    fn writer_mut(&mut self) -> Result<&mut FileWriter, BlobError> {
        self.writer
            .as_mut()
            .ok_or_else(|| BlobError::Backend("upload spool writer missing".into()))
    }

    fn missing_upload(&self, e: io::Error) -> BlobError {
        if e.kind() == ErrorKind::NotFound {
            BlobError::UploadNotFound(self.id.clone())
        } else {
            BlobError::Io(e)
        }
    }

    async fn rollback(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            w.wait_quiet().await;
        }
        let (dir, k0, s0, last) = (self.dir.clone(), self.k0, self.s0, self.last);
        if let Err(e) = blocking(move || rollback_spools(&dir, k0, s0, last)).await {
            warn!(upload = %self.id, error = %e, "could not roll back the upload spool");
        }
        self.armed = false;
    }
}

impl Drop for AppendTx {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inflight = self.writer.as_mut().and_then(|w| w.take_inflight());
        let (dir, k0, s0, last) = (self.dir.clone(), self.k0, self.s0, self.last);
        let lock = self.lock.take();
        let id = std::mem::take(&mut self.id);
        let undo = move || {
            if let Err(e) = rollback_spools(&dir, k0, s0, last) {
                warn!(upload = %id, error = %e, "could not roll back a cancelled append");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Some(h) = inflight {
                        let _ = h.await;
                    }
                    let _ = tokio::task::spawn_blocking(undo).await;
                    drop(lock);
                });
            }
            Err(_) => {
                undo();
                drop(lock);
            }
        }
    }
}

// ---- the trait -----------------------------------------------------------------------------

#[async_trait]
impl BlobStore for S3BlobStore {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        let key = self.inner.keys.blob(digest)?;
        self.inner.head(&key).await
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, BlobError> {
        let inner = &self.inner;
        let key = inner.keys.blob(digest)?;
        if let Some(r) = range
            && r.is_empty()
        {
            // Not expressible as an HTTP range; answer from the size.
            return match inner.head(&key).await? {
                None => Err(BlobError::NotFound(digest.to_string())),
                Some(size) => {
                    r.validate(size)?;
                    Err(BlobError::Backend(format!("empty range {r:?} passed validation")))
                }
            };
        }
        let mut req = inner.client.get_object().bucket(&inner.bucket).key(&key);
        if let Some(r) = range {
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                let failure = classify("GetObject", &key, &e);
                if failure.is_not_found() {
                    return Err(BlobError::NotFound(digest.to_string()));
                }
                if failure.status == Some(416) {
                    // Unsatisfiable: report it with the real size.
                    return match inner.head(&key).await? {
                        None => Err(BlobError::NotFound(digest.to_string())),
                        Some(size) => {
                            if let Some(r) = range {
                                r.validate(size)?;
                            }
                            Err(failure.into_blob_error())
                        }
                    };
                }
                return Err(failure.into_blob_error());
            }
        };
        let len = object_len("GetObject", &key, out.content_length())?;
        if let Some(r) = range {
            let Some((first, last, total)) = out.content_range().and_then(parse_content_range) else {
                return Err(BlobError::Backend(format!(
                    "GetObject {key}: S3 ignored the Range header (no Content-Range)"
                )));
            };
            r.validate(total)?;
            if first != r.start || last + 1 != r.end || len != r.len() {
                return Err(BlobError::Backend(format!(
                    "GetObject {key}: asked for bytes {}-{}, S3 sent {first}-{last} ({len} bytes)",
                    r.start,
                    r.end - 1
                )));
            }
        }
        debug!(%digest, ?range, len, "streaming blob from S3");
        Ok(sdk_body_stream(out.body, len, key, inner.request_timeout))
    }

    async fn put(&self, digest: &Digest, data: ByteStream) -> Result<u64, BlobError> {
        let inner = &self.inner;
        let key = inner.keys.blob(digest)?;
        let span = tracing::debug_span!("s3_put", %digest);
        async move {
            if let Some(size) = inner.head(&key).await? {
                // Present already; the caller must still prove it has the bytes.
                debug!(size, "put: blob already present, verifying the body");
                crate::verify_body(digest, data).await?;
                return Ok(size);
            }

            let verified = TempBlob::create(&inner.tmp, "put", digest).await?.receive(data).await?;
            let size = verified.size();
            let stored = inner.store_file(&key, verified.path(), size).await;
            verified.discard().await;
            stored?;
            debug!(size, "put: stored blob");
            Ok(size)
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        let key = self.inner.keys.blob(digest)?;
        match self
            .inner
            .client
            .delete_object()
            .bucket(&self.inner.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let failure = classify("DeleteObject", &key, &e);
                if failure.is_not_found() {
                    Ok(())
                } else {
                    Err(failure.into_blob_error())
                }
            }
        }
    }

    async fn list(&self, after: Option<&Digest>, limit: usize) -> Result<BlobPage, BlobError> {
        self.inner.list_blobs_page(after, limit).await
    }

    async fn upload_create(&self, id: &str) -> Result<(), BlobError> {
        check_upload_id(id)?;
        let _lock = self.inner.locks.lock(id).await;
        if self.inner.get_state(id).is_some() {
            return Ok(());
        }
        // "Exists" is judged locally (no S3 call): a new spool dir gets an empty
        // spool-00001, so neither this nor the first append needs S3. An existing
        // dir is left alone; its state is rebuilt when needed.
        let dir = self.inner.spool_dir(id);
        let root = self.inner.spool_root.clone();
        let created = blocking(move || {
            std::fs::create_dir_all(&root)?;
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(dir.join(spool_name(1)))?
                        .sync_all()?;
                    crate::fs::sync_dir(&dir)?;
                    crate::fs::sync_dir(&root)?;
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await?;
        if created {
            let state = UploadState {
                parts: Vec::new(),
                spool_len: 0,
                epoch: self.inner.epochs.fetch_add(1, Ordering::SeqCst),
            };
            self.inner
                .uploads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned(), state);
        }
        debug!(upload = id, created, "created upload");
        Ok(())
    }

    async fn upload_append(
        &self,
        id: &str,
        offset: u64,
        mut data: ByteStream,
        on_chunk: &mut (dyn for<'c> FnMut(&'c [u8]) + Send),
    ) -> Result<u64, BlobError> {
        check_upload_id(id)?;
        let inner = &self.inner;
        let lock = inner.locks.lock(id).await;
        let state = inner.load_state_locked(id).await?;
        let len = state.len();
        if offset != len {
            return Err(BlobError::OffsetMismatch {
                expected: len,
                got: offset,
            });
        }
        let dir = inner.spool_dir(id);
        let k0 = state.spool_part();
        let (d, p) = (dir.clone(), dir.join(spool_name(k0)));
        let file = blocking(move || {
            std::fs::create_dir_all(&d)?;
            OpenOptions::new().write(true).create(true).truncate(false).open(&p)
        })
        .await?;
        let mut tx = AppendTx {
            inner: Arc::clone(inner),
            id: id.to_owned(),
            dir,
            s0: state.spool_len,
            writer: Some(spool_writer(file, state.spool_len)),
            base: state,
            k0,
            last: k0,
            lock: Some(lock),
            armed: true,
        };
        let span = tracing::debug_span!("s3_upload_append", upload = id, offset);
        match tx.run(&mut data, on_chunk).instrument(span).await {
            Ok(new_len) => {
                debug!(upload = id, offset, new_len, "appended");
                Ok(new_len)
            }
            Err(e) => {
                debug!(upload = id, offset, error = %e, "append failed; rolling back");
                tx.rollback().await;
                if matches!(e, BlobError::UploadNotFound(_)) {
                    // Aborted under us: make sure nothing we wrote survives.
                    if let Err(pe) = inner.purge(id).await {
                        warn!(upload = id, error = %pe, "cleanup after a concurrent abort failed");
                    }
                }
                Err(e)
            }
        }
    }

    async fn upload_len(&self, id: &str) -> Result<u64, BlobError> {
        check_upload_id(id)?;
        Ok(self.inner.state_for(id).await?.len())
    }

    async fn upload_read(&self, id: &str) -> Result<ByteStream, BlobError> {
        check_upload_id(id)?;
        let inner = &self.inner;
        // The spool of a snapshot disappears only after a successful append has
        // replaced the snapshot, so one retry with a fresh snapshot suffices.
        let mut tries = 0;
        let (state, spool) = loop {
            let state = inner.state_for(id).await?;
            if state.spool_len == 0 {
                break (state, None);
            }
            let path = inner.spool_dir(id).join(spool_name(state.spool_part()));
            match blocking(move || File::open(&path)).await {
                Ok(f) => break (state, Some(f)),
                Err(e) if e.kind() == ErrorKind::NotFound && tries == 0 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        };
        let parts: Vec<(u32, u64)> = state
            .parts
            .iter()
            .enumerate()
            .map(|(i, size)| (u32::try_from(i + 1).unwrap_or(u32::MAX), *size))
            .collect();
        let spool_stream: ByteStream = match spool {
            Some(file) => read_stream(file, 0, state.spool_len).await?,
            None => Box::pin(futures::stream::empty()),
        };
        let reader = Arc::clone(inner);
        let id = id.to_owned();
        let part_streams = futures::stream::iter(parts)
            .then(move |(n, size)| {
                let reader = Arc::clone(&reader);
                let key = reader.keys.part(&id, n);
                async move {
                    match reader.get_object_stream(&key, size).await {
                        Ok(s) => s,
                        Err(e) => {
                            let err = io::Error::other(format!("reading upload part: {e}"));
                            Box::pin(futures::stream::once(async move { Err(err) })) as ByteStream
                        }
                    }
                }
            })
            .flatten();
        // Stop at the first error.
        let all = part_streams.chain(spool_stream).scan(false, |failed, item| {
            let out = if *failed {
                None
            } else {
                *failed = item.is_err();
                Some(item)
            };
            futures::future::ready(out)
        });
        Ok(Box::pin(all))
    }

    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, BlobError> {
        check_upload_id(id)?;
        let inner = &self.inner;
        let key = inner.keys.blob(digest)?;
        let _lock = inner.locks.lock(id).await;
        let state = inner.load_state_locked(id).await?;
        let span = tracing::debug_span!("s3_upload_commit", upload = id, %digest);
        async move {
            if let Some(size) = inner.head(&key).await? {
                debug!(size, "commit: blob already present; dropping the upload");
                if let Err(e) = inner.purge(id).await {
                    warn!(upload = id, error = %e, "could not delete a committed upload's parts");
                }
                return Ok(size);
            }
            let total = state.len();
            let k = state.spool_part();
            let spool_path = inner.spool_dir(id).join(spool_name(k));
            if state.parts.is_empty() {
                inner.put_file(&key, &spool_path, state.spool_len).await?;
            } else {
                let mut sizes = state.parts.clone();
                if state.spool_len > 0 {
                    inner
                        .put_file(&inner.keys.part(id, k), &spool_path, state.spool_len)
                        .await?;
                    sizes.push(state.spool_len);
                }
                if let [only] = sizes[..]
                    && only <= inner.copy_part_limit
                {
                    inner.copy_object(&inner.keys.part(id, 1), &key, only).await?;
                } else {
                    let count = sizes.len();
                    let mut sources = Vec::new();
                    for (i, size) in sizes.into_iter().enumerate() {
                        let part_key = inner.keys.part(id, u32::try_from(i + 1).unwrap_or(u32::MAX));
                        for (start, end) in copy_ranges(size, inner.copy_part_limit, i + 1 == count) {
                            sources.push(PartSource::Copy {
                                key: part_key.clone(),
                                start,
                                end,
                            });
                        }
                    }
                    inner.multipart(&key, sources).await?;
                }
            }
            debug!(size = total, "commit: stored blob");
            if let Err(e) = inner.purge(id).await {
                // The blob is stored; leftovers show up in upload_list for cleanup.
                warn!(upload = id, error = %e, "could not delete a committed upload's parts");
            }
            Ok(total)
        }
        .instrument(span)
        .await
    }

    async fn upload_abort(&self, id: &str) -> Result<(), BlobError> {
        check_upload_id(id)?;
        // No lock: an append stuck on a slow client must not block an abort. A
        // running append notices (its state is gone) and cleans up after itself.
        self.inner.purge(id).await?;
        debug!(upload = id, "aborted upload");
        Ok(())
    }

    async fn upload_list(&self) -> Result<Vec<String>, BlobError> {
        let inner = &self.inner;
        let mut ids = BTreeSet::new();
        for (key, _) in inner.list_keys(&inner.keys.uploads_root()).await? {
            if let Some((id, _)) = inner.keys.parse_part_key(&key) {
                ids.insert(id);
            }
        }
        let root = inner.spool_root.clone();
        let local = blocking(move || {
            let mut out = Vec::new();
            let rd = match std::fs::read_dir(&root) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            };
            for entry in rd {
                let entry = entry?;
                if entry.file_type()?.is_dir()
                    && let Some(name) = entry.file_name().to_str()
                    && crate::is_valid_upload_id(name)
                {
                    out.push(name.to_owned());
                }
            }
            Ok(out)
        })
        .await?;
        ids.extend(local);
        Ok(ids.into_iter().collect())
    }

    async fn presigned_get(&self, digest: &Digest, expires: Duration) -> Result<Option<String>, BlobError> {
        let inner = &self.inner;
        let key = inner.keys.blob(digest)?;
        let expires = expires.clamp(Duration::from_secs(1), MAX_PRESIGN);
        let config =
            PresigningConfig::expires_in(expires).map_err(|e| BlobError::Backend(format!("presigning {key}: {e}")))?;
        let req = inner
            .client
            .get_object()
            .bucket(&inner.bucket)
            .key(&key)
            .presigned(config)
            .await
            .map_err(|e| to_blob_error("presign GetObject", &key, &e))?;
        Ok(Some(req.uri().to_owned()))
    }

    async fn check_writable(&self) -> Result<(), BlobError> {
        let inner = &self.inner;
        let key = inner.keys.probe(&uuid::Uuid::new_v4().to_string());
        let res: Result<(), BlobError> = async {
            inner
                .client
                .put_object()
                .bucket(&inner.bucket)
                .key(&key)
                .body(SdkByteStream::from_static(b"ok"))
                .send()
                .await
                .map_err(|e| to_blob_error("PutObject", &key, &e))?;
            inner
                .client
                .delete_object()
                .bucket(&inner.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| to_blob_error("DeleteObject", &key, &e))?;
            Ok(())
        }
        .await;
        res.map_err(|e| {
            warn!(bucket = %inner.bucket, error = %e, "S3 blob store not writable");
            match e {
                BlobError::Unavailable(m) | BlobError::Backend(m) => BlobError::Unavailable(m),
                other => BlobError::Unavailable(other.to_string()),
            }
        })
    }
}
