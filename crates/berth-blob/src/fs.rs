//! Local-filesystem backend.
//!
//! Layout under the root directory:
//!
//! ```text
//! blobs/<algo>/<first two hex>/<hex>   content-addressed blobs (immutable)
//! uploads/<id>                         bytes of in-progress upload sessions
//! tmp/                                 temp files of in-flight puts / probes
//! ```
//!
//! Blobs only ever appear through `rename(2)` of a fully written and
//! fsynced file followed by an fsync of the destination directory, so a crash
//! can never leave a partial blob visible. `tmp/` is emptied on open.
//!
//! All file I/O runs on the blocking pool through `std::fs`; writes are
//! batched (2 MiB) and pipelined with receiving the next batch. Uploads and puts
//! write their whole batches with direct I/O (see `direct`): a pushed layer does
//! not pass through the page cache on its way to the disk. Big reads are served
//! from memory maps, small ones stream in 128 KiB chunks.
//!
//! Concurrency: appends and commits of one upload are serialised by an
//! in-process per-upload lock. `upload_len` / `upload_read` / `upload_abort`
//! do not wait for it (a stalled client must not block them), so while an
//! append is running they may observe its not-yet-acknowledged bytes.
//!
//! Crash note: appends are rolled back on error and on cancellation, but a
//! process crash in the middle of an append can leave bytes beyond the last
//! acknowledged offset in `uploads/<id>`; after a restart `upload_len` is the
//! truth (re-hash with `upload_read`).

use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::ErrorKind;
use std::io::SeekFrom;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::Digest;
use berth_oci::DigestAlgorithm;
use berth_oci::Hasher;
use bytes::Bytes;
use bytes::BytesMut;
use futures::StreamExt;
use futures::future::Either;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;
use tracing::debug;
use tracing::info;
use tracing::warn;

use crate::BlobError;
use crate::BlobPage;
use crate::BlobStore;
use crate::ByteRange;
use crate::ByteStream;
use crate::check_upload_id;
use crate::direct::DirectFile;
use crate::lock::KeyedGuard;
use crate::lock::KeyedLocks;
use crate::temp::TempBlob;

/// Chunk size of streams returned by `get` / `upload_read`.
pub(crate) const READ_CHUNK: usize = 128 * 1024;
/// Size of the write batches handed to the blocking pool. Batches end on multiples
/// of it in the file, so every full batch is one aligned 2 MiB `pwrite`: on a
/// filesystem with large folios (ext4 and XFS on recent Linux) the page cache then
/// holds the blob in huge-page-sized folios, which `read_blob` maps with one page
/// table entry per piece instead of 512.
pub(crate) const WRITE_BATCH: usize = 2 * 1024 * 1024;

/// Blob store on a local filesystem (the embedded default backend).
///
/// The root must live on a single filesystem (uploads are committed with
/// `rename`). Unix only.
pub struct FsBlobStore {
    root: PathBuf,
    blobs: PathBuf,
    uploads: PathBuf,
    tmp: PathBuf,
    /// Serialises append / commit of the same upload within this process.
    locks: Arc<KeyedLocks>,
    /// Uploads and puts write their whole batches with direct I/O.
    direct_io: bool,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl FsBlobStore {
    /// Open (creating directories as needed) a store rooted at `root` and
    /// remove stale temp files left by a previous process.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        let store = FsBlobStore {
            blobs: root.join("blobs"),
            uploads: root.join("uploads"),
            tmp: root.join("tmp"),
            root,
            locks: Arc::new(KeyedLocks::default()),
            direct_io: true,
        };
        let dirs = [
            store.root.clone(),
            store.blobs.clone(),
            store.uploads.clone(),
            store.tmp.clone(),
        ];
        let tmp = store.tmp.clone();
        let removed = blocking(move || {
            for d in &dirs {
                std::fs::create_dir_all(d)?;
            }
            let removed = clean_dir(&tmp)?;
            for d in &dirs {
                sync_dir(d)?;
            }
            if let Some(parent) = dirs[0].parent().filter(|p| !p.as_os_str().is_empty()) {
                // Best effort: makes a freshly created root durable.
                if let Err(e) = sync_dir(parent) {
                    debug!(error = %e, "could not fsync parent of blob root");
                }
            }
            Ok(removed)
        })
        .await?;
        if removed > 0 {
            info!(root = %store.root.display(), removed, "removed stale temp files");
        }
        debug!(root = %store.root.display(), "opened fs blob store");
        Ok(store)
    }

    /// With `false`, uploads and puts are written through the page cache instead of
    /// with direct I/O (on by default; see the `direct` module): a pushed blob then
    /// stays cached for a first pull from this node, at the cost of copying it into
    /// the page cache on the way in.
    pub fn with_direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the blob file for `digest` (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf, BlobError> {
        let hex = digest.hex();
        let canonical = hex.len() >= 2 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !canonical {
            return Err(BlobError::Backend(format!(
                "digest {digest} has a non-canonical hex part"
            )));
        }
        Ok(self.blobs.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex))
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf, BlobError> {
        check_upload_id(id)?;
        Ok(self.uploads.join(id))
    }

    /// Walk `blobs/` and return every stored blob with its size (used to
    /// rebuild an index). Files whose names are not valid digests are skipped.
    /// Holds the whole listing in memory; [`BlobStore::list`] pages instead.
    pub async fn list_blobs(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let found = scan_blobs(self.blobs.clone()).await?;
        Ok(found.into_iter().map(|(d, meta)| (d, meta.len())).collect())
    }
}

/// One page of the content-addressed tree `blobs` (see [`BlobStore::list`]).
///
/// Each level is read whole and sorted, and only its entries at or after
/// `after` are descended into: a page costs the directories it touches (a
/// shard holds 1/256 of an algorithm's blobs), never a walk of the whole tree.
/// Sorting by name is sorting by digest, because algorithms are ordered as
/// their names are and the shard is the first two characters of the lowercase
/// hex name.
fn list_page(blobs: &Path, after: Option<&Digest>, limit: usize) -> io::Result<BlobPage> {
    let limit = limit.max(1);
    let mut algos: Vec<(DigestAlgorithm, PathBuf)> = Vec::new();
    for (name, path) in sorted_entries(blobs, true)? {
        match DigestAlgorithm::from_name(&name) {
            Some(algo) if after.is_none_or(|a| algo >= a.algorithm()) => algos.push((algo, path)),
            Some(_) => {}
            None => warn!(path = %path.display(), "ignoring unexpected directory in blob directory"),
        }
    }
    algos.sort_by_key(|(algo, _)| *algo);
    let mut out = Vec::new();
    for (algo, algo_dir) in algos {
        // The part of `after` that bounds this algorithm's names from below.
        let floor = after.filter(|a| a.algorithm() == algo).map(Digest::hex);
        for (shard, shard_dir) in sorted_entries(&algo_dir, true)? {
            if floor.is_some_and(|f| shard.as_str() < f.get(..2).unwrap_or(f)) {
                continue;
            }
            for (name, path) in sorted_entries(&shard_dir, false)? {
                if floor.is_some_and(|f| name.as_str() <= f) {
                    continue;
                }
                let digest = match Digest::new(algo, &name) {
                    Ok(d) if name.starts_with(shard.as_str()) => d,
                    _ => {
                        warn!(path = %path.display(), "ignoring unexpected file in blob directory");
                        continue;
                    }
                };
                let size = match std::fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_file() => meta.len(),
                    Ok(_) => continue,
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                out.push((digest, size));
                if out.len() == limit {
                    return Ok(BlobPage::of(out, limit));
                }
            }
        }
    }
    Ok(BlobPage::of(out, limit))
}

/// The entries of `dir` that are directories (`dirs`) or not, with UTF-8
/// names, sorted by name; nothing if `dir` does not exist.
fn sorted_entries(dir: &Path, dirs: bool) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in read_dir_if_exists(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() != dirs {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Walk a content-addressed tree `<dir>/<algo>/<xx>/<hex>` and return every
/// file whose name is a valid digest, with its metadata. Other files are
/// skipped with a warning.
pub(crate) async fn scan_blobs(dir: PathBuf) -> Result<Vec<(Digest, std::fs::Metadata)>, BlobError> {
    let found = blocking(move || {
        let mut out = Vec::new();
        for algo in read_dir_if_exists(&dir)? {
            let algo = algo?;
            if !algo.file_type()?.is_dir() {
                continue;
            }
            for shard in read_dir_if_exists(&algo.path())? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    continue;
                }
                for blob in read_dir_if_exists(&shard.path())? {
                    let blob = blob?;
                    let meta = blob.metadata()?;
                    if meta.is_file() {
                        out.push((
                            algo.file_name().to_string_lossy().into_owned(),
                            blob.file_name().to_string_lossy().into_owned(),
                            meta,
                        ));
                    }
                }
            }
        }
        Ok(out)
    })
    .await?;
    let mut out = Vec::with_capacity(found.len());
    for (algo, hex, meta) in found {
        let text = format!("{algo}:{hex}");
        match Digest::parse(&text) {
            Ok(d) if d.hex() == hex => out.push((d, meta)),
            _ => warn!(name = %text, "ignoring unexpected file in blob directory"),
        }
    }
    Ok(out)
}

#[async_trait]
impl BlobStore for FsBlobStore {
    fn kind(&self) -> &'static str {
        "fs"
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        let path = self.blob_path(digest)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, BlobError> {
        let path = self.blob_path(digest)?;
        let opened = blocking(move || {
            let file = File::open(&path)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await;
        let (file, size) = match opened {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(BlobError::NotFound(digest.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let (start, len) = match range {
            None => (0, size),
            Some(r) => {
                r.validate(size)?;
                (r.start, r.len())
            }
        };
        Ok(read_blob(file, start, len).await?)
    }

    async fn put(&self, digest: &Digest, data: ByteStream) -> Result<u64, BlobError> {
        let final_path = self.blob_path(digest)?;
        if let Some(size) = self.stat(digest).await? {
            // The bytes are already here, but the caller must still prove it has
            // them: a put links the blob for whoever made it, so it is verified like
            // any other.
            debug!(%digest, size, "put: blob already present, verifying the body");
            crate::verify_body(digest, data).await?;
            return Ok(size);
        }

        let size = TempBlob::create(&self.tmp, "put", digest)
            .await?
            .durable()
            .direct(self.direct_io)
            .receive(data)
            .await?
            .sync()
            .await?
            .persist(final_path)
            .await?;
        debug!(%digest, size, "put: stored blob");
        Ok(size)
    }

    async fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.blob_path(digest)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(parent_of(&path)?),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        Ok(())
    }

    async fn list(&self, after: Option<&Digest>, limit: usize) -> Result<BlobPage, BlobError> {
        let blobs = self.blobs.clone();
        let after = after.cloned();
        Ok(blocking(move || list_page(&blobs, after.as_ref(), limit)).await?)
    }

    async fn upload_create(&self, id: &str) -> Result<(), BlobError> {
        let path = self.upload_path(id)?;
        let _lock = self.locks.lock(id).await;
        let uploads = self.uploads.clone();
        blocking(move || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false) // re-creating an existing upload keeps its bytes
                .open(&path)?;
            sync_dir(&uploads)
        })
        .await?;
        Ok(())
    }

    async fn upload_append(
        &self,
        id: &str,
        offset: u64,
        mut data: ByteStream,
        on_chunk: &mut (dyn for<'c> FnMut(&'c [u8]) + Send),
    ) -> Result<u64, BlobError> {
        let path = self.upload_path(id)?;
        let lock = self.locks.lock(id).await;
        let opened = blocking(move || {
            let file = OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await;
        let (file, len) = match opened {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(BlobError::UploadNotFound(id.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        if len != offset {
            return Err(BlobError::OffsetMismatch {
                expected: len,
                got: offset,
            });
        }

        let mut append = Append {
            writer: FileWriter::new(file, offset).durable().direct(self.direct_io),
            offset,
            lock: Some(lock),
            armed: true,
        };
        let result: Result<u64, BlobError> = async {
            while let Some(item) = data.next().await {
                let chunk = item.map_err(BlobError::Client)?;
                if chunk.is_empty() {
                    continue;
                }
                on_chunk(&chunk);
                append.writer.write(chunk).await?;
            }
            let new_len = append.writer.flush().await?;
            append.writer.sync().await?;
            Ok(new_len)
        }
        .await;
        match result {
            Ok(new_len) => {
                append.armed = false;
                Ok(new_len)
            }
            Err(e) => {
                debug!(upload = id, offset, error = %e, "append failed; rolling back");
                append.rollback().await;
                Err(e)
            }
        }
    }

    async fn upload_len(&self, id: &str) -> Result<u64, BlobError> {
        let path = self.upload_path(id)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(BlobError::UploadNotFound(id.to_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(BlobError::UploadNotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_read(&self, id: &str) -> Result<ByteStream, BlobError> {
        let path = self.upload_path(id)?;
        let opened = blocking(move || {
            let file = File::open(&path)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await;
        match opened {
            Ok((file, len)) => Ok(read_stream(file, 0, len).await?),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(BlobError::UploadNotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, BlobError> {
        let upload = self.upload_path(id)?;
        let blob = self.blob_path(digest)?;
        let _lock = self.locks.lock(id).await;
        let uploads = self.uploads.clone();
        let outcome = blocking(move || {
            let file = match File::open(&upload) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Commit::NoUpload),
                Err(e) => return Err(e),
            };
            let size = file.metadata()?.len();
            match std::fs::metadata(&blob) {
                Ok(m) if m.is_file() => {
                    drop(file);
                    std::fs::remove_file(&upload)?;
                    sync_dir(&uploads)?;
                    return Ok(Commit::Existed(m.len()));
                }
                Ok(_) => {
                    return Err(io::Error::other(format!("{} exists and is not a file", blob.display())));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // Appends are already fdatasync'ed; this also covers metadata.
            file.sync_all()?;
            drop(file);
            let parent = parent_of(&blob)?;
            ensure_dir(parent)?;
            match std::fs::rename(&upload, &blob) {
                Ok(()) => {}
                // Aborted concurrently (abort does not take the upload lock).
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Commit::NoUpload),
                Err(e) => return Err(e),
            }
            sync_dir(parent)?;
            sync_dir(&uploads)?;
            Ok(Commit::Committed(size))
        })
        .await?;
        match outcome {
            Commit::NoUpload => Err(BlobError::UploadNotFound(id.to_owned())),
            Commit::Existed(size) => {
                debug!(upload = id, %digest, "commit: blob already present; dropped upload");
                Ok(size)
            }
            Commit::Committed(size) => {
                debug!(upload = id, %digest, size, "commit: stored blob");
                Ok(size)
            }
        }
    }

    async fn upload_abort(&self, id: &str) -> Result<(), BlobError> {
        // No lock: an append stuck on a slow client must not block an abort.
        // Unlinking under a running append is harmless (it writes to, and
        // possibly truncates, the unlinked inode).
        let path = self.upload_path(id)?;
        let uploads = self.uploads.clone();
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&uploads),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        Ok(())
    }

    async fn upload_list(&self) -> Result<Vec<String>, BlobError> {
        let uploads = self.uploads.clone();
        let ids = blocking(move || {
            let mut ids = Vec::new();
            for entry in read_dir_if_exists(&uploads)? {
                let entry = entry?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                if let Some(name) = entry.file_name().to_str()
                    && crate::is_valid_upload_id(name)
                {
                    ids.push(name.to_owned());
                }
            }
            Ok(ids)
        })
        .await?;
        Ok(ids)
    }

    async fn check_writable(&self) -> Result<(), BlobError> {
        probe_writable(&self.tmp).await
    }
}

enum Commit {
    NoUpload,
    Existed(u64),
    Committed(u64),
}

// ---- helpers ---------------------------------------------------------------------------

/// Readiness probe: create, write and remove a file in `dir`.
pub(crate) async fn probe_writable(dir: &Path) -> Result<(), BlobError> {
    let probe = dir.join(format!(".probe-{}", uuid::Uuid::new_v4()));
    let res = blocking(move || {
        let file = OpenOptions::new().write(true).create_new(true).open(&probe)?;
        let written = file.write_all_at(b"ok", 0);
        drop(file);
        let removed = std::fs::remove_file(&probe);
        written.and(removed)
    })
    .await;
    res.map_err(|e| {
        warn!(dir = %dir.display(), error = %e, "blob store not writable");
        BlobError::Unavailable(format!("cannot write to {}: {e}", dir.display()))
    })
}

/// Run blocking file work on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(join_error)?
}

fn join_error(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("blocking I/O task failed: {e}"))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn parent_of(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))
}

/// Create a blob shard directory if needed, making the new entries durable.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    // dir = blobs/<algo>/<xx>: fsync <algo> and blobs so both entries persist.
    if let Some(algo) = dir.parent() {
        sync_dir(algo)?;
        if let Some(blobs) = algo.parent() {
            sync_dir(blobs)?;
        }
    }
    Ok(())
}

pub(crate) fn read_dir_if_exists(dir: &Path) -> io::Result<Box<dyn Iterator<Item = io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Box::new(rd)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

/// Remove everything inside `dir`; returns the number of entries removed.
pub(crate) fn clean_dir(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let res = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match res {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Ask the kernel to start writing `len` bytes at `pos` of `file` to disk, without
/// waiting (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint: durability
/// still comes from fsync, so a failure is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, pos: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(pos), Ok(len)) = (i64::try_from(pos), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor belongs to `file`, open for the whole call; the call
    // reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), pos, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _pos: u64, _len: u64) {}

/// Turn readahead off for reads through `file`'s open file description
/// (`POSIX_FADV_RANDOM`): a read then caches exactly the pages it asked for. For a
/// file that is read behind its own direct writes, readahead could cache pages of
/// a batch still being written, and the kernel's invalidation after that write is
/// best effort; a stale page would then be served by every later hit. Only a hint:
/// a failure is ignored.
#[cfg(target_os = "linux")]
pub(crate) fn no_readahead(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `file`, open for the whole call; the call
    // reads no memory of ours.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn no_readahead(_file: &File) {}

/// Blobs at least this big are sent from memory maps.
const MAP_MIN: u64 = 1024 * 1024;
/// Bytes per mapped piece. Pieces start on multiples of it in the file (but the
/// first), matching the write batches, so a piece of a blob whose page cache holds
/// 2 MiB folios is mapped with one huge-page entry: mapping, populating and
/// unmapping it costs one entry instead of 512, which measured ~30% more loopback
/// throughput per stream.
pub const MAP_CHUNK: u64 = WRITE_BATCH as u64;
/// Pieces mapped ahead of the one being sent: while the socket takes one piece,
/// the next is mapped and populated, so the connection never waits for the
/// blocking pool between pieces.
const MAP_AHEAD: usize = 2;

/// Stream `len` bytes at `start` of a *blob* file: content-addressed, written
/// elsewhere and renamed into place, never modified afterwards (removal unlinks,
/// which leaves an open mapping valid).
///
/// A big range is sent from memory maps of `MAP_CHUNK` pieces: the socket write
/// copies straight from the page cache, with no read into a buffer first (one copy
/// less per byte, which is most of the cost of serving a large blob). Each piece is
/// mapped and populated on the blocking pool, so a blob not in the page cache never
/// stalls an async worker on disk I/O, and unmapped once sent, so the pages mapped
/// at a time stay bounded (`MAP_AHEAD` pieces) whatever the blob size.
///
/// (`sendfile(2)` from the same pieces was tried and measured slower on loopback:
/// 1.1–1.3 GB/s against 1.6–2.0 GB/s for a 256 MiB GET, more CPU per byte. The copy
/// it saves is replaced by per-page splice work and smaller pushes to the socket.)
pub(crate) async fn read_blob(file: File, start: u64, len: u64) -> io::Result<ByteStream> {
    if len < MAP_MIN {
        return read_stream(file, start, len).await;
    }
    let file = Arc::new(file);
    let end = start.saturating_add(len);
    let pieces = futures::stream::iter(aligned_pieces(start, end, MAP_CHUNK))
        .map(move |(at, len)| {
            // A piece already in the page cache is mapped here: populating its page
            // table reads no disk, and a round trip through the blocking pool (two
            // thread wake-ups per piece) would cost more than the mapping.
            match map_resident_piece(&file, at, len) {
                Ok(Some(piece)) => Either::Left(std::future::ready(Ok(piece))),
                Ok(None) | Err(_) => {
                    let file = Arc::clone(&file);
                    Either::Right(blocking(move || map_piece(&file, at, len)))
                }
            }
        })
        .buffered(MAP_AHEAD);
    Ok(Box::pin(pieces))
}

/// `len` bytes at `at` of a blob file mapped and populated, if every page of them
/// is in the page cache (`mincore`); `None` if some must come from disk.
#[cfg(target_os = "linux")]
pub(crate) fn map_resident_piece(file: &File, at: u64, len: u64) -> io::Result<Option<Bytes>> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: as in `map_piece`: a blob file is never modified in place.
    let map = unsafe { memmap2::MmapOptions::new().offset(at).len(len).map(file)? };
    let page = page_size();
    let pages = len.div_ceil(page);
    let mut resident = vec![0u8; pages];
    // SAFETY: the range is our own live mapping, `resident` has one byte per page.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, resident.as_mut_ptr()) };
    if rc != 0 || resident.iter().any(|r| r & 1 == 0) {
        return Ok(None);
    }
    // Fill the page table now (one huge-page entry per 2 MiB folio), not by faults
    // in the middle of the socket write; an old kernel without the advice faults
    // the pages in instead.
    let _ = map.advise(memmap2::Advice::PopulateRead);
    Ok(Some(Bytes::from_owner(map)))
}

/// Whether the page cache holds the whole second write batch of the file at `path`
/// (tests of what direct I/O leaves out of it).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn second_batch_cached(path: &Path) -> bool {
    let file = File::open(path).unwrap();
    let batch = WRITE_BATCH as u64;
    map_resident_piece(&file, batch, batch).unwrap().is_some()
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn map_resident_piece(_file: &File, _at: u64, _len: u64) -> io::Result<Option<Bytes>> {
    Ok(None)
}

#[cfg(target_os = "linux")]
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf reads a constant of the system.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096))
}

/// `[start, end)` cut into `(offset, len)` pieces that end on multiples of `size`.
fn aligned_pieces(start: u64, end: u64, size: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = end.min(at.saturating_add(to_boundary(at, size)));
        let piece = (at, next - at);
        at = next;
        Some(piece)
    })
}

/// `len` bytes at `at` of a blob file, mapped with its page table populated (and
/// read from disk if needed, which is why it runs on the blocking pool).
fn map_piece(file: &File, at: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the file is a blob, never truncated or written in place (see
    // `read_blob`), so the mapped bytes stay valid and unchanged while mapped.
    let map = unsafe { memmap2::MmapOptions::new().offset(at).len(len).populate().map(file)? };
    Ok(Bytes::from_owner(map))
}

/// Stream `len` bytes of `file` starting at `start`, in `READ_CHUNK` pieces.
pub(crate) async fn read_stream(file: File, start: u64, len: u64) -> io::Result<ByteStream> {
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await?;
    }
    Ok(Box::pin(ReaderStream::with_capacity(file.take(len), READ_CHUNK)))
}

/// Bytes from offset `at` to the next multiple of `size` (a whole `size` on a
/// boundary).
fn to_boundary(at: u64, size: u64) -> u64 {
    size - at % size
}

/// A batch on the blocking pool; gives the hasher back when done.
/// The batch's bytes come back too, so its buffer can take the next batch.
pub(crate) type Inflight = JoinHandle<(Option<Hasher>, io::Result<()>, Bytes)>;

/// Batches writes into `WRITE_BATCH` pieces written with `pwrite` on the
/// blocking pool; one batch may be in flight while the next is collected.
/// With a hasher, each batch is also hashed on the blocking pool, so hashing
/// overlaps with receiving the next batch and stays off the async workers.
pub(crate) struct FileWriter {
    file: Arc<File>,
    /// File offset after all dispatched bytes.
    pos: u64,
    buf: BytesMut,
    /// `None` while a batch is in flight (it travels with the batch).
    hasher: Option<Hasher>,
    inflight: Option<Inflight>,
    /// The buffer of the last batch written, for the next one: a writer keeps
    /// reusing two buffers instead of allocating one per batch (fresh allocations
    /// spread over the allocator's per-thread arenas, which keep them).
    spare: Option<BytesMut>,
    /// Bytes per batch (`WRITE_BATCH` unless set with [`FileWriter::with_batch`]).
    batch: usize,
    /// File offset up to which every byte has been written.
    done: u64,
    /// Start writing each batch back to disk as soon as it is written, so that the
    /// final fsync of a durable file has little left to wait for.
    writeback: bool,
    /// Durable files: whole aligned batches bypass the page cache (`direct`).
    direct: Option<Arc<DirectFile>>,
}

impl FileWriter {
    pub(crate) fn new(file: File, pos: u64) -> Self {
        FileWriter {
            file: Arc::new(file),
            pos,
            buf: BytesMut::new(),
            hasher: None,
            inflight: None,
            spare: None,
            batch: WRITE_BATCH,
            done: pos,
            writeback: false,
            direct: None,
        }
    }

    /// A writer for a file that will be fsync'ed: disk writes start batch by batch
    /// while the data still arrives, instead of all at the final fsync.
    pub(crate) fn durable(mut self) -> Self {
        self.writeback = true;
        self
    }

    /// With `on`, whole aligned batches are written with direct I/O, straight to
    /// the device (see `direct`), not through the page cache.
    pub(crate) fn direct(mut self, on: bool) -> Self {
        self.direct = on.then(|| Arc::new(DirectFile::default()));
        self
    }

    /// Batches of `batch` bytes (at least one) instead of `WRITE_BATCH`: for files
    /// that are never served from memory maps, where smaller buffers are worth more
    /// than the huge-folio layout.
    pub(crate) fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    pub(crate) fn with_hasher(file: File, pos: u64, hasher: Hasher) -> Self {
        FileWriter {
            hasher: Some(hasher),
            ..FileWriter::new(file, pos)
        }
    }

    /// Bytes taken so far, written or not: the file's length once flushed.
    pub(crate) fn len(&self) -> u64 {
        self.pos + self.buf.len() as u64
    }

    /// The batch being written, for a caller that must wait for it elsewhere
    /// (a rollback that runs after this writer is gone).
    pub(crate) fn take_inflight(&mut self) -> Option<Inflight> {
        self.inflight.take()
    }

    /// The file being written.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The hasher, once everything has been flushed.
    pub(crate) fn take_hasher(&mut self) -> Option<Hasher> {
        self.hasher.take()
    }

    pub(crate) async fn write(&mut self, mut chunk: Bytes) -> io::Result<()> {
        while !chunk.is_empty() {
            // `batch` is a usize, so the room to its next boundary fits one.
            let room = to_boundary(self.len(), self.batch as u64) as usize;
            if self.buf.is_empty() && chunk.len() >= room {
                // A whole batch inside the chunk: write it as is (no copy).
                self.dispatch(chunk.split_to(room)).await?;
                continue;
            }
            let take = room.min(chunk.len());
            let piece = chunk.split_to(take);
            if self.buf.capacity() == 0 {
                self.buf = match self.spare.take() {
                    Some(spare) => spare,
                    // A durable file's batches go to the device from this buffer.
                    None if self.direct.is_some() => crate::direct::aligned_buffer(self.batch),
                    None => BytesMut::new(),
                };
            }
            self.buf.extend_from_slice(&piece);
            if take == room {
                let full = std::mem::take(&mut self.buf).freeze();
                self.dispatch(full).await?;
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, data: Bytes) -> io::Result<()> {
        self.wait().await?;
        let file = Arc::clone(&self.file);
        let pos = self.pos;
        self.pos += data.len() as u64;
        let mut hasher = self.hasher.take();
        let writeback = self.writeback;
        let direct = self.direct.clone();
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            if let Some(h) = hasher.as_mut() {
                h.update(&data);
            }
            let res = match direct.as_deref().map(|d| d.write_at(&file, &data, pos)) {
                Some(Ok(true)) => Ok(()),
                Some(Err(e)) => Err(e),
                None | Some(Ok(false)) => file.write_all_at(&data, pos).inspect(|()| {
                    if writeback {
                        start_writeback(&file, pos, data.len() as u64);
                    }
                }),
            };
            (hasher, res, data)
        }));
        Ok(())
    }

    /// Wait for the in-flight batch.
    async fn wait(&mut self) -> io::Result<()> {
        match self.inflight.take() {
            Some(handle) => {
                let (hasher, res, data) = handle.await.map_err(join_error)?;
                self.hasher = hasher;
                res?;
                // A whole batch's own buffer (not a slice of a received chunk).
                if let Ok(mut buf) = data.try_into_mut()
                    && buf.capacity() >= self.batch
                {
                    buf.clear();
                    self.spare = Some(buf);
                }
                // Everything dispatched so far is now written.
                self.done = self.pos;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// File offset up to which every byte is written (readable with `pread`),
    /// first collecting the in-flight batch if it has already finished.
    pub(crate) async fn completed(&mut self) -> io::Result<u64> {
        if self.inflight.as_ref().is_some_and(|h| h.is_finished()) {
            self.wait().await?;
        }
        Ok(self.done)
    }

    /// Wait for the in-flight batch, ignoring its outcome (error paths).
    pub(crate) async fn wait_quiet(&mut self) {
        if let Err(e) = self.wait().await {
            debug!(error = %e, "write failed while aborting");
        }
    }

    /// Write out everything buffered; returns the end offset.
    pub(crate) async fn flush(&mut self) -> io::Result<u64> {
        if !self.buf.is_empty() {
            let pending = self.buf.split().freeze();
            self.dispatch(pending).await?;
        }
        self.wait().await?;
        Ok(self.pos)
    }

    /// fdatasync.
    pub(crate) async fn sync(&self) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        blocking(move || file.sync_data()).await
    }
}

/// An append in progress: unless disarmed, truncates the upload back to
/// `offset` — inline via [`Append::rollback`], or from a spawned task if the
/// append future is dropped (e.g. the HTTP request was cancelled).
struct Append {
    writer: FileWriter,
    offset: u64,
    /// Held until the rollback is done so no other append interleaves.
    lock: Option<KeyedGuard>,
    armed: bool,
}

impl Append {
    async fn rollback(&mut self) {
        self.writer.wait_quiet().await;
        let file = Arc::clone(&self.writer.file);
        let offset = self.offset;
        if let Err(e) = blocking(move || truncate(&file, offset)).await {
            warn!(offset, error = %e, "failed to roll back upload after a failed append");
        }
        self.armed = false;
    }
}

fn truncate(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_data()
}

impl Drop for Append {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inflight = self.writer.inflight.take();
        let file = Arc::clone(&self.writer.file);
        let offset = self.offset;
        let lock = self.lock.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Some(h) = inflight {
                        let _ = h.await;
                    }
                    if let Err(e) = blocking(move || truncate(&file, offset)).await {
                        warn!(offset, error = %e, "failed to roll back cancelled upload append");
                    }
                    drop(lock);
                });
            }
            Err(_) => {
                if let Err(e) = truncate(&file, offset) {
                    warn!(offset, error = %e, "failed to roll back cancelled upload append");
                }
                drop(lock);
            }
        }
    }
}

/// Creates the new file `path` (read and write) on a blocking thread, together with
/// its guard: a caller cancelled while it waits for the file does not leave it
/// behind, because the guard is made as soon as the file exists and the unclaimed
/// result is dropped.
pub(crate) async fn create_temp(path: PathBuf) -> io::Result<(File, TempFile)> {
    blocking(move || {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok((file, TempFile::new(path)))
    })
    .await
}

/// Removes a temp file unless disarmed (also when the owning future is dropped).
pub(crate) struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        TempFile { path: Some(path) }
    }

    pub(crate) fn disarm(&mut self) {
        self.path = None;
    }

    pub(crate) async fn remove(&mut self) {
        if let Some(path) = self.path.take() {
            // remove_quiet already logs real failures.
            if let Err(e) = blocking(move || remove_quiet(&path)).await {
                debug!(error = %e, "temp file not removed");
            }
        }
    }
}

fn remove_quiet(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            warn!(path = %path.display(), error = %e, "failed to remove temp file");
            Err(e)
        }
        _ => Ok(()),
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || remove_quiet(&path));
                }
                Err(_) => {
                    let _ = remove_quiet(&path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drop `file`'s clean pages from the page cache.
    #[cfg(target_os = "linux")]
    fn evict(file: &File) {
        use std::os::fd::AsRawFd;
        file.sync_all().unwrap();
        // SAFETY: plain advice on our own open descriptor.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn cached_pieces_are_mapped_inline_and_the_others_on_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3 * MAP_CHUNK as usize + 12345).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        evict(&file);
        assert!(
            map_resident_piece(&file, 0, MAP_CHUNK).unwrap().is_none(),
            "a piece read from disk must go to the blocking pool"
        );
        // Read from disk (through the pool), the pieces are cached and come inline.
        let read = read_blob(File::open(&path).unwrap(), 7, data.len() as u64 - 7)
            .await
            .unwrap();
        let got: Vec<u8> = read.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(got, data[7..]);
        let piece = map_resident_piece(&file, MAP_CHUNK, MAP_CHUNK)
            .unwrap()
            .expect("cached now");
        assert_eq!(&piece[..], &data[MAP_CHUNK as usize..2 * MAP_CHUNK as usize]);
        let read = read_blob(File::open(&path).unwrap(), 100, MAP_CHUNK * 2).await.unwrap();
        let got: Vec<u8> = read.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(got, data[100..100 + 2 * MAP_CHUNK as usize]);
    }

    #[test]
    fn pieces_end_on_multiples_of_the_size() {
        let p: Vec<_> = aligned_pieces(0, 10, 4).collect();
        assert_eq!(p, vec![(0, 4), (4, 4), (8, 2)]);
        let p: Vec<_> = aligned_pieces(3, 13, 4).collect();
        assert_eq!(p, vec![(3, 1), (4, 4), (8, 4), (12, 1)]);
        let p: Vec<_> = aligned_pieces(5, 7, 4).collect();
        assert_eq!(p, vec![(5, 2)]);
        assert_eq!(aligned_pieces(7, 7, 4).count(), 0);
    }

    #[test]
    fn batches_fill_up_to_the_next_boundary() {
        let b = WRITE_BATCH as u64;
        assert_eq!(to_boundary(0, b), b);
        assert_eq!(to_boundary(1, b), b - 1);
        assert_eq!(to_boundary(b * 3 - 5, b), 5);
        assert_eq!(to_boundary(b * 3, b), b);
        assert_eq!(to_boundary(1000, 1024), 24);
    }

    #[tokio::test]
    async fn a_smaller_batch_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = FileWriter::new(std::fs::File::create(&path).unwrap(), 0).with_batch(1024);
        for _ in 0..10 {
            w.write(Bytes::from(vec![3u8; 700])).await.unwrap();
            assert!(
                w.pos.is_multiple_of(1024) && w.buf.len() < 1024,
                "pos {} buffered {}",
                w.pos,
                w.buf.len()
            );
        }
        assert_eq!(w.flush().await.unwrap(), 7000);
        assert_eq!(std::fs::read(&path).unwrap(), vec![3u8; 7000]);
    }

    /// Batches collected from small chunks go out in the writer's own buffers,
    /// which come back for the next batch instead of a new allocation each.
    #[tokio::test]
    async fn batch_buffers_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let mut w = FileWriter::new(file, 0);
        let chunk = Bytes::from(vec![1u8; 64 * 1024]);
        // Capacity of each batch's buffer right after its first chunk.
        let mut started = Vec::new();
        for _ in 0..(4 * WRITE_BATCH / chunk.len()) {
            w.write(chunk.clone()).await.unwrap();
            if w.buf.len() == chunk.len() {
                started.push(w.buf.capacity());
            }
        }
        assert_eq!(w.flush().await.unwrap(), 4 * WRITE_BATCH as u64);
        assert_eq!(started.len(), 4);
        // The first two batches allocate; the next ones start in a returned buffer.
        assert!(started[2..].iter().all(|&c| c >= WRITE_BATCH), "{started:?}");
        let spare = w.spare.as_ref().expect("the last batch's buffer is kept");
        assert!(spare.capacity() >= WRITE_BATCH);
    }

    /// A file at `path` holding `len` bytes of 7, open for reading and writing.
    fn file_of_sevens(path: &Path, len: u64) -> File {
        std::fs::write(path, vec![7u8; len as usize]).unwrap();
        std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
    }

    /// A durable file's whole batches go to the device with direct I/O, from the
    /// writer's aligned buffers or copied from unaligned chunks; its unaligned head
    /// and tail are written through the page cache. All of it lands in order.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn durable_batches_bypass_the_page_cache_and_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let start = 1000u64;
        let file = file_of_sevens(&path, start);
        let mut w = FileWriter::new(file, start).durable().direct(true);
        let mut expected = vec![7u8; start as usize];
        // Small chunks (collected in the writer's buffer), then a chunk holding whole
        // batches (written from the chunk itself), then an unaligned tail.
        let sizes = [WRITE_BATCH - 1000, 4096, 65_536, 3 * WRITE_BATCH, 12_345];
        for (i, n) in sizes.into_iter().enumerate() {
            let chunk: Vec<u8> = (0..n).map(|j| (i * 7 + j % 253) as u8).collect();
            expected.extend_from_slice(&chunk);
            let mut rest = Bytes::from(chunk);
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(if i == 3 { usize::MAX } else { 8192 }));
                w.write(piece).await.unwrap();
            }
        }
        let end = w.flush().await.unwrap();
        w.sync().await.unwrap();
        assert_eq!(end, expected.len() as u64);
        let f = std::fs::File::open(&path).unwrap();
        let batch = WRITE_BATCH as u64;
        // Batches 1..=4 are whole and aligned; the refusal of O_DIRECT by the
        // filesystem under the test's temp dir would leave them cached.
        let direct = w.direct.as_ref().expect("a durable writer writes direct");
        if !direct.refused() {
            assert!(
                map_resident_piece(&f, batch, batch).unwrap().is_none(),
                "batch 1 is not cached"
            );
            assert!(
                map_resident_piece(&f, 4 * batch, batch).unwrap().is_none(),
                "batch 4 is not cached"
            );
        }
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    /// Without readahead a read caches only the pages it asked for: a fill's
    /// requesters reading behind its direct writes never cache a page of a batch
    /// still being written.
    #[cfg(target_os = "linux")]
    #[test]
    fn without_readahead_a_read_caches_only_its_own_pages() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 4 * WRITE_BATCH]).unwrap();
        let mut next_page_cached = Vec::new();
        for readahead in [true, false] {
            let file = File::open(&path).unwrap();
            file.sync_all().unwrap();
            // SAFETY: our own open descriptor; no memory is passed.
            let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
            if !readahead {
                no_readahead(&file);
            }
            let mut page = vec![0u8; 4096];
            file.read_exact_at(&mut page, 0).unwrap();
            next_page_cached.push(map_resident_piece(&file, 8192, 4096).unwrap().is_some());
        }
        assert_eq!(next_page_cached, [true, false], "readahead: cached; without: not");
    }

    /// The store writes pushed blobs with direct I/O unless told not to, in which
    /// case the blob is left in the page cache like any buffered write.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_store_without_direct_io_leaves_pushed_blobs_cached() {
        let data: Vec<u8> = (0..4 * WRITE_BATCH).map(|i| (i % 241) as u8).collect();
        let digest = Digest::sha256_of(&data);
        let mut cached = Vec::new();
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = FsBlobStore::open(dir.path()).await.unwrap().with_direct_io(direct);
            let chunks: Vec<io::Result<Bytes>> = data.chunks(100_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let size = store
                .put(&digest, Box::pin(futures::stream::iter(chunks)))
                .await
                .unwrap();
            assert_eq!(size, data.len() as u64);
            cached.push(second_batch_cached(&store.blob_path(&digest).unwrap()));
            assert_eq!(std::fs::read(store.blob_path(&digest).unwrap()).unwrap(), data);
        }
        assert_eq!(cached, [false, true], "direct: not cached; buffered: cached");
    }

    /// Chunks of every awkward size, written from an unaligned offset, go to disk in
    /// batches that end on boundaries, land whole and in order, and the hash covers
    /// exactly them.
    #[tokio::test]
    async fn odd_chunks_are_written_whole_across_batch_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let start = 1000u64;
        let file = file_of_sevens(&path, start);
        let algo = berth_oci::DigestAlgorithm::Sha256;
        let mut w = FileWriter::with_hasher(file, start, Hasher::new(algo));
        let mut expected = Vec::new();
        let sizes = [1, WRITE_BATCH - 1001, 3, WRITE_BATCH * 2 + 17, 5000, WRITE_BATCH, 1];
        for (i, n) in sizes.into_iter().enumerate() {
            let chunk: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            w.write(Bytes::from(chunk)).await.unwrap();
            // Every batch handed to the disk so far ended on a boundary.
            assert!(
                w.pos == start || w.pos.is_multiple_of(WRITE_BATCH as u64),
                "batch ends at {}",
                w.pos
            );
            assert!(w.buf.len() < WRITE_BATCH);
        }
        let end = w.flush().await.unwrap();
        assert_eq!(end, start + expected.len() as u64);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[start as usize..], &expected[..]);
        let digest = w.take_hasher().unwrap().finalize();
        assert_eq!(digest, Digest::sha256_of(&expected));
    }
}
