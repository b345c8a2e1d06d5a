// openraft's storage traits fix the error type (`StorageError`, which is large).
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Instant;

use berth_oci::Digest;
use berth_oci::RepoName;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;
use openraft::SnapshotMeta;
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::StoredMembership;
use openraft::storage::RaftStateMachine;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use serde::Deserialize;
use serde::Serialize;

use crate::Applied;
use crate::BlobRecord;
use crate::Change;
use crate::ChangeKind;
use crate::Command;
use crate::CommandResponse;
use crate::ManifestRecord;
use crate::MetaError;
use crate::NodeId;
use crate::NodeInfo;
use crate::Rejection;
use crate::SnapshotFile;
use crate::TagRecord;
use crate::TypeConfig;
use crate::UploadRecord;
use crate::keys::*;
use crate::reader::manifest_referencing;
use crate::snapshot;
use crate::snapshot::io_err;
use crate::store::MetaStore;
use crate::store::decode;
use crate::store::encode;

type Entry = openraft::Entry<TypeConfig>;
type Membership = StoredMembership<NodeId, NodeInfo>;
type Meta = SnapshotMeta<NodeId, NodeInfo>;

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Present while a snapshot install is replacing the state: the snapshot it installs.
const KEY_INSTALLING: &[u8] = b"installing";
/// Size of the write batches a snapshot install writes.
const INSTALL_BATCH: usize = 8 << 20;
/// Files in the snapshot directory that no record names yet.
const TEMP_SUFFIX: &str = ".tmp";

/// A starting point for snapshot sequence numbers that a restart does not repeat.
fn start_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn sm_read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn sm_write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// The snapshot this store serves, in CF_SM: its meta and the name of its file in
/// the store's snapshot directory. (Before snapshots were files, the record held the
/// snapshot's bytes instead of `file`; such a record is replaced at start-up.)
#[derive(Serialize, Deserialize)]
pub(crate) struct CurrentSnapshot {
    meta: Meta,
    #[serde(default)]
    file: Option<String>,
}

/// The state machine, applied in RocksDB. Each entry is applied in one atomic write
/// batch together with the new `last_applied`, so a crash never leaves an entry half
/// applied and openraft re-applies exactly what is missing.
#[derive(Clone)]
pub struct StateMachineStore {
    store: MetaStore,
    snapshot_seq: Arc<AtomicU64>,
    /// Builds and installs take turns: a build during an install would snapshot a
    /// half-replaced state.
    snapshot_lock: Arc<Mutex<()>>,
    gate: Option<Arc<dyn ApplyGate>>,
}

/// Decides when committed entries may become visible on this node, and hears what
/// was applied. `berth-cluster` uses it to keep reads in one order across nodes
/// (see its `visibility` module); without a gate, entries apply as they commit.
pub trait ApplyGate: Send + Sync + 'static {
    /// Resolves once the entries up to `index` may be applied.
    fn admit(&self, index: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Everything up to `log_id` is applied (also called at start-up and after a
    /// snapshot was installed).
    fn applied(&self, log_id: LogId<NodeId>);
}

impl StateMachineStore {
    pub(crate) fn new(store: MetaStore) -> Result<Self, MetaError> {
        Ok(StateMachineStore {
            store,
            // Unique across restarts too: it names temporary files and snapshot ids.
            snapshot_seq: Arc::new(AtomicU64::new(start_seq())),
            snapshot_lock: Arc::default(),
            gate: None,
        })
    }

    /// Apply entries only as `gate` admits them, and tell it what was applied.
    pub fn with_gate(mut self, gate: Arc<dyn ApplyGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn report_applied(&self, applied: Option<LogId<NodeId>>) {
        if let (Some(gate), Some(applied)) = (&self.gate, applied) {
            gate.applied(applied);
        }
    }

    fn applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), MetaError> {
        let applied = self.store.get::<Option<LogId<NodeId>>>(CF_SM, KEY_APPLIED)?.flatten();
        let membership = self.store.get::<Membership>(CF_SM, KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn apply_entry(&self, entry: &Entry) -> Result<CommandResponse, MetaError> {
        let mut batch = WriteBatch::default();
        let response = match &entry.payload {
            EntryPayload::Blank => CommandResponse::done(),
            EntryPayload::Membership(m) => {
                let stored = Membership::new(Some(entry.log_id), m.clone());
                batch.put_cf(self.store.cf(CF_SM)?, KEY_MEMBERSHIP, encode("membership", &stored)?);
                CommandResponse::done()
            }
            EntryPayload::Normal(cmd) => {
                let mut txn = Txn {
                    store: &self.store,
                    batch: &mut batch,
                    index: entry.log_id.index,
                    changes: 0,
                };
                match txn.apply(cmd)? {
                    Ok(applied) => CommandResponse(Ok(applied)),
                    Err(rejection) => {
                        tracing::debug!(command = cmd.kind(), %rejection, "command rejected");
                        // A rejected command changes nothing but the applied index.
                        batch.clear();
                        CommandResponse(Err(rejection))
                    }
                }
            }
        };
        batch.put_cf(
            self.store.cf(CF_SM)?,
            KEY_APPLIED,
            encode("applied", &Some(entry.log_id))?,
        );
        self.store.db().write(batch)?;
        Ok(response)
    }

    fn current_snapshot(&self) -> Result<Option<CurrentSnapshot>, MetaError> {
        self.store.get(CF_SM, KEY_SNAPSHOT)
    }

    /// Write the state as of now to a new snapshot file and make it the current
    /// one; the previous file is deleted once the new one is durable and recorded.
    /// Streams from a RocksDB snapshot: memory stays bounded whatever the state's size.
    fn build(&self) -> Result<(Meta, std::fs::File, PathBuf), MetaError> {
        let _one_at_a_time = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let db = self.store.db();
        let snap = db.snapshot();
        let sm = self.store.cf(CF_SM)?;
        let last_applied: Option<LogId<NodeId>> = match snap.get_cf(sm, KEY_APPLIED)? {
            Some(v) => decode::<Option<LogId<NodeId>>>("applied", &v)?,
            None => None,
        };
        let membership: Membership = match snap.get_cf(sm, KEY_MEMBERSHIP)? {
            Some(v) => decode("membership", &v)?,
            None => Membership::default(),
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let dir = self.store.snapshot_dir();
        let tmp = dir.join(format!("build-{seq}{TEMP_SUFFIX}"));
        let written = (|| -> Result<(u64, u64), MetaError> {
            let mut w = snapshot::Writer::create(tmp.clone(), &meta)?;
            for cf_name in STATE_CFS {
                let tag = snapshot::cf_tag(cf_name)?;
                let mut opts = ReadOptions::default();
                // A snapshot reads everything once: keep the block cache for reads.
                opts.fill_cache(false);
                opts.set_readahead_size(2 << 20);
                let mut it = snap.raw_iterator_cf_opt(self.store.cf(cf_name)?, opts);
                it.seek_to_first();
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    w.record(tag, k, v)?;
                    it.next();
                }
                it.status()?;
            }
            w.finish()
        })();
        let (records, bytes) = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let name = snapshot::file_name(&meta.snapshot_id);
        let path = dir.join(&name);
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        snapshot::sync_dir(dir)?;
        let previous = self.current_snapshot()?.and_then(|c| c.file);
        self.record_snapshot(KEY_SNAPSHOT, &meta, &name)?;
        if let Some(previous) = previous.filter(|p| *p != name) {
            remove_snapshot_file(&dir.join(previous));
        }
        let file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            records,
            bytes,
            elapsed = ?started.elapsed(),
            "built snapshot"
        );
        Ok((meta, file, path))
    }

    /// Record that `key` (the current snapshot, or the one being installed) is the
    /// snapshot `meta` in the file `name`, durably: files are deleted on the strength
    /// of it.
    fn record_snapshot(&self, key: &[u8], meta: &Meta, name: &str) -> Result<CurrentSnapshot, MetaError> {
        let record = CurrentSnapshot {
            meta: meta.clone(),
            file: Some(name.to_string()),
        };
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let cf = self.store.cf(CF_SM)?;
        self.store
            .db()
            .put_cf_opt(cf, key, encode("snapshot", &record)?, &opts)?;
        Ok(record)
    }

    /// Install the snapshot file at `path` (received, or `copy` it when it belongs to
    /// someone else). The file is checked from end to end first, so a damaged one is
    /// refused before the state is touched; then it becomes this store's current
    /// snapshot file, an "install in progress" record names it, and its records
    /// replace the state in bounded batches. Should the process stop halfway, opening
    /// the store finishes the install from that file before anything reads the state.
    fn install(&self, meta: &Meta, path: &Path, copy: bool) -> Result<(), MetaError> {
        let _one_at_a_time = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let previous = self.current_snapshot()?.and_then(|c| c.file);
        let marker = self.stage(meta, path, copy)?;
        let records = self.replace_state(&marker)?;
        if let Some(previous) = previous.filter(|p| Some(p) != marker.file.as_ref()) {
            remove_snapshot_file(&self.store.snapshot_dir().join(previous));
        }
        tracing::info!(
            snapshot = %meta.snapshot_id,
            records,
            elapsed = ?started.elapsed(),
            "installed snapshot"
        );
        Ok(())
    }

    /// The first half of an install: check the file, move it into place and record
    /// that an install of it is in progress.
    pub(crate) fn stage(&self, meta: &Meta, path: &Path, copy: bool) -> Result<CurrentSnapshot, MetaError> {
        let found = snapshot::verify(path)?;
        if found.snapshot_id != meta.snapshot_id || found.last_log_id != meta.last_log_id {
            return Err(crate::error::corrupt(
                format!("snapshot {}", path.display()),
                format!("holds snapshot {}, expected {}", found.snapshot_id, meta.snapshot_id),
            ));
        }
        let dir = self.store.snapshot_dir();
        let name = snapshot::file_name(&meta.snapshot_id);
        let target = dir.join(&name);
        if copy {
            let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!("copy-{seq}{TEMP_SUFFIX}"));
            std::fs::copy(path, &tmp).map_err(|e| io_err(&tmp, e))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err(&tmp, e))?;
            std::fs::rename(&tmp, &target).map_err(|e| io_err(&target, e))?;
        } else {
            std::fs::rename(path, &target).map_err(|e| io_err(&target, e))?;
        }
        snapshot::sync_dir(dir)?;
        self.record_snapshot(KEY_INSTALLING, meta, &name)
    }

    /// Replace the state with the records of the snapshot file `marker` names, and
    /// finish with one batch that sets the applied log id and membership, makes the
    /// file current and drops the "install in progress" record.
    ///
    /// The bulk writes skip the WAL: until that last batch, a crash is repaired by
    /// running this again from the start, and the state column families are
    /// flushed before it, so nothing written here depends on the WAL.
    fn replace_state(&self, marker: &CurrentSnapshot) -> Result<u64, MetaError> {
        let name = marker
            .file
            .as_deref()
            .ok_or_else(|| crate::error::corrupt("snapshot", "install record names no file"))?;
        let path = self.store.snapshot_dir().join(name);
        let (mut reader, _) = snapshot::Reader::open(&path)?;
        let db = self.store.db();
        let mut batch = WriteBatch::default();
        for cf_name in STATE_CFS {
            let cf = self.store.cf(cf_name)?;
            let mut it = db.raw_iterator_cf(cf);
            it.seek_to_last();
            if let Some(last) = it.key() {
                let mut end = last.to_vec();
                // The smallest key after the last one: the range covers every key.
                end.push(0);
                batch.delete_range_cf(cf, b"".as_slice(), end.as_slice());
            }
            it.status()?;
        }
        let mut records = 0u64;
        while let Some(rec) = reader.next()? {
            batch.put_cf(self.store.cf(rec.cf)?, &rec.key, &rec.value);
            records += 1;
            if batch.size_in_bytes() >= INSTALL_BATCH {
                db.write_without_wal(std::mem::take(&mut batch))?;
            }
        }
        db.write_without_wal(batch)?;
        let cfs = STATE_CFS
            .iter()
            .map(|n| self.store.cf(n))
            .collect::<Result<Vec<_>, _>>()?;
        db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        let sm = self.store.cf(CF_SM)?;
        let mut last = WriteBatch::default();
        last.put_cf(sm, KEY_APPLIED, encode("applied", &marker.meta.last_log_id)?);
        last.put_cf(sm, KEY_MEMBERSHIP, encode("membership", &marker.meta.last_membership)?);
        last.put_cf(sm, KEY_SNAPSHOT, encode("snapshot", marker)?);
        last.delete_cf(sm, KEY_INSTALLING);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(last, &opts)?;
        Ok(records)
    }

    /// Bring the store to a consistent state before anything reads it: finish an
    /// install that was interrupted, replace a snapshot stored the old way (bytes in
    /// RocksDB) with a file, and delete files no record names.
    pub(crate) fn recover(store: &MetaStore) -> Result<(), MetaError> {
        let sm = StateMachineStore::new(store.clone())?;
        if let Some(marker) = store.get::<CurrentSnapshot>(CF_SM, KEY_INSTALLING)? {
            tracing::warn!(snapshot = %marker.meta.snapshot_id, "finishing an interrupted snapshot install");
            sm.replace_state(&marker)?;
        }
        match sm.current_snapshot()? {
            Some(CurrentSnapshot { file: None, .. }) => {
                tracing::info!("moving the snapshot out of RocksDB into a file");
                sm.build()?;
            }
            Some(CurrentSnapshot { file: Some(name), .. }) if !store.snapshot_dir().join(&name).exists() => {
                tracing::warn!(file = %name, "the current snapshot file is missing: building a new one");
                sm.build()?;
            }
            _ => {}
        }
        let keep = sm.current_snapshot()?.and_then(|c| c.file);
        let dir = store.snapshot_dir();
        let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let name = entry.file_name();
            if keep.is_some() && name.to_str() == keep.as_deref() {
                continue;
            }
            remove_snapshot_file(&entry.path());
        }
        Ok(())
    }

    fn receive_path(&self) -> PathBuf {
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        self.store.snapshot_dir().join(format!("receive-{seq}{TEMP_SUFFIX}"))
    }
}

fn remove_snapshot_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot file");
    }
}

/// One command being applied: reads see the state before the command, writes go to
/// `batch`.
struct Txn<'a> {
    store: &'a MetaStore,
    batch: &'a mut WriteBatch,
    index: u64,
    changes: u64,
}

impl Txn<'_> {
    fn put<T: Serialize>(&mut self, cf: &'static str, key: &[u8], value: &T) -> Result<(), MetaError> {
        let bytes = encode(cf, value)?;
        self.batch.put_cf(self.store.cf(cf)?, key, bytes);
        Ok(())
    }

    fn delete(&mut self, cf: &'static str, key: &[u8]) -> Result<(), MetaError> {
        self.batch.delete_cf(self.store.cf(cf)?, key);
        Ok(())
    }

    fn touch_repo(&mut self, repo: &RepoName, at: u64) -> Result<(), MetaError> {
        if !self.store.exists(CF_REPOS, repo.as_str().as_bytes())? {
            self.put(CF_REPOS, repo.as_str().as_bytes(), &at)?;
        }
        Ok(())
    }

    fn change(&mut self, repo: &RepoName, kind: ChangeKind, at: u64) -> Result<(), MetaError> {
        let change = Change {
            repo: repo.clone(),
            kind,
            at,
        };
        // One command may produce several changes; the low bits keep them apart
        // while the high bits keep the feed in log order.
        let seq = (self.index << 16) | self.changes;
        self.changes += 1;
        self.put(CF_CHANGES, &index(seq), &change)
    }

    fn link_blob(&mut self, repo: &RepoName, digest: &Digest, at: u64) -> Result<(), MetaError> {
        self.put(CF_LINKS, &repo_digest(repo, digest), &at)?;
        self.touch_repo(repo, at)
    }

    fn apply(&mut self, cmd: &Command) -> Result<Result<Applied, Rejection>, MetaError> {
        match cmd {
            Command::CreateUpload { id, repo, node, at } => {
                let rec = UploadRecord {
                    repo: repo.clone(),
                    node: *node,
                    offset: 0,
                    started_at: *at,
                    updated_at: *at,
                };
                self.put(CF_UPLOADS, id.as_bytes(), &rec)?;
            }
            Command::UploadProgress { id, offset, at } => {
                let Some(mut rec) = self.store.get::<UploadRecord>(CF_UPLOADS, id.as_bytes())? else {
                    return Ok(Err(Rejection::UploadUnknown(id.clone())));
                };
                rec.offset = *offset;
                rec.updated_at = *at;
                self.put(CF_UPLOADS, id.as_bytes(), &rec)?;
            }
            Command::ClaimUpload { id, node, at } => {
                let Some(mut rec) = self.store.get::<UploadRecord>(CF_UPLOADS, id.as_bytes())? else {
                    return Ok(Err(Rejection::UploadUnknown(id.clone())));
                };
                rec.node = *node;
                rec.updated_at = *at;
                self.put(CF_UPLOADS, id.as_bytes(), &rec)?;
            }
            Command::DeleteUpload { id } => self.delete(CF_UPLOADS, id.as_bytes())?,
            Command::CommitBlob {
                upload_id,
                repo,
                digest,
                size,
                at,
            } => {
                if let Some(id) = upload_id {
                    if !self.store.exists(CF_UPLOADS, id.as_bytes())? {
                        return Ok(Err(Rejection::UploadUnknown(id.clone())));
                    }
                    self.delete(CF_UPLOADS, id.as_bytes())?;
                }
                let key = digest.to_string();
                if !self.store.exists(CF_BLOBS, key.as_bytes())? {
                    let rec = BlobRecord {
                        size: *size,
                        created_at: *at,
                    };
                    self.put(CF_BLOBS, key.as_bytes(), &rec)?;
                }
                self.link_blob(repo, digest, *at)?;
            }
            Command::MountBlob { repo, from, digest, at } => {
                let linked = self.store.exists(CF_LINKS, &repo_digest(from, digest))?;
                let stored = self.store.exists(CF_BLOBS, digest.to_string().as_bytes())?;
                if !linked || !stored {
                    return Ok(Err(Rejection::BlobUnknown(digest.clone())));
                }
                self.link_blob(repo, digest, *at)?;
            }
            Command::UnlinkBlob { repo, digest } => {
                let key = repo_digest(repo, digest);
                if !self.store.exists(CF_LINKS, &key)? {
                    return Ok(Err(Rejection::BlobUnknown(digest.clone())));
                }
                // Checked here, atomically with the unlink: a manifest put that links
                // the blob is ordered before or after this command, never beside it.
                if let Some(manifest) = manifest_referencing(self.store, repo, digest)? {
                    return Ok(Err(Rejection::BlobInUse {
                        digest: digest.clone(),
                        manifest,
                    }));
                }
                self.delete(CF_LINKS, &key)?;
            }
            Command::PutManifest {
                repo,
                digest,
                media_type,
                bytes,
                tag,
                subject,
                referrer,
                blobs,
                children,
                declared_sizes,
                at,
            } => {
                for blob in blobs {
                    if !self.store.exists(CF_LINKS, &repo_digest(repo, blob))? {
                        return Ok(Err(Rejection::ManifestBlobUnknown(blob.clone())));
                    }
                }
                for child in children {
                    if !self.store.exists(CF_MANIFESTS, &repo_digest(repo, child))? {
                        return Ok(Err(Rejection::ManifestBlobUnknown(child.clone())));
                    }
                }
                for (digest, declared) in declared_sizes {
                    let actual = match self.store.get::<BlobRecord>(CF_BLOBS, digest.to_string().as_bytes())? {
                        Some(b) => Some(b.size),
                        None => self
                            .store
                            .get::<ManifestRecord>(CF_MANIFESTS, &repo_digest(repo, digest))?
                            .map(|m| m.bytes.len() as u64),
                    };
                    if let Some(actual) = actual
                        && actual != *declared
                    {
                        return Ok(Err(Rejection::SizeMismatch {
                            digest: digest.clone(),
                            declared: *declared,
                            actual,
                        }));
                    }
                }
                let key = repo_digest(repo, digest);
                if !self.store.exists(CF_MANIFESTS, &key)? {
                    let rec = ManifestRecord {
                        media_type: media_type.clone(),
                        bytes: bytes.clone(),
                        subject: subject.clone(),
                        referrer: referrer.clone(),
                        blobs: blobs.clone(),
                        children: children.clone(),
                        created_at: *at,
                    };
                    self.put(CF_MANIFESTS, &key, &rec)?;
                    if let (Some(subject), Some(referrer)) = (subject, referrer) {
                        let mut k = referrer_prefix(repo, subject);
                        k.extend_from_slice(digest.to_string().as_bytes());
                        self.put(CF_REFERRERS, &k, referrer)?;
                    }
                    self.change(repo, ChangeKind::ManifestPut { digest: digest.clone() }, *at)?;
                }
                if let Some(tag) = tag {
                    let rec = TagRecord {
                        digest: digest.clone(),
                        updated_at: *at,
                    };
                    self.put(CF_TAGS, &join(&[repo.as_str(), tag.as_str()]), &rec)?;
                    let kind = ChangeKind::TagSet {
                        tag: tag.clone(),
                        digest: digest.clone(),
                    };
                    self.change(repo, kind, *at)?;
                }
                self.touch_repo(repo, *at)?;
            }
            Command::DeleteManifest { repo, digest, at } => {
                let key = repo_digest(repo, digest);
                let Some(rec) = self.store.get::<ManifestRecord>(CF_MANIFESTS, &key)? else {
                    return Ok(Err(Rejection::ManifestUnknown(digest.clone())));
                };
                self.delete(CF_MANIFESTS, &key)?;
                if let Some(subject) = &rec.subject {
                    let mut k = referrer_prefix(repo, subject);
                    k.extend_from_slice(digest.to_string().as_bytes());
                    self.delete(CF_REFERRERS, &k)?;
                }
                let tags = self.store.reader().tags_pointing_to(repo, digest)?;
                for tag in &tags {
                    self.delete(CF_TAGS, &join(&[repo.as_str(), tag.as_str()]))?;
                    self.change(repo, ChangeKind::TagDeleted { tag: tag.clone() }, *at)?;
                }
                self.change(repo, ChangeKind::ManifestDeleted { digest: digest.clone() }, *at)?;
                return Ok(Ok(Applied::ManifestDeleted { tags }));
            }
            Command::DeleteTag { repo, tag, at } => {
                let key = join(&[repo.as_str(), tag.as_str()]);
                if !self.store.exists(CF_TAGS, &key)? {
                    return Ok(Err(Rejection::TagUnknown(tag.clone())));
                }
                self.delete(CF_TAGS, &key)?;
                self.change(repo, ChangeKind::TagDeleted { tag: tag.clone() }, *at)?;
            }
        }
        Ok(Ok(Applied::Done))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        let (meta, file, path) = tokio::task::spawn_blocking(move || this.build())
            .await
            .map_err(sm_read_err)?
            .map_err(sm_read_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::from_std(file, path)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let state = self.applied().map_err(sm_read_err)?;
        self.report_applied(state.0);
        Ok(state)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        if let Some(gate) = &self.gate {
            gate.admit(last.index).await;
        }
        let mut out = Vec::with_capacity(entries.len());
        for entry in &entries {
            out.push(self.apply_entry(entry).map_err(sm_write_err)?);
        }
        self.report_applied(Some(last));
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        let path = self.receive_path();
        let file = SnapshotFile::create_received(path)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<NodeId>> {
        let (path, received) = snapshot.finish().await.map_err(sm_write_err)?;
        let this = self.clone();
        let meta = meta.clone();
        let applied = meta.last_log_id;
        let result = tokio::task::spawn_blocking(move || {
            let result = this.install(&meta, &path, !received);
            if received && result.is_err() {
                // Refused before it was moved into place: nothing else will use it.
                let _ = std::fs::remove_file(&path);
            }
            result
        })
        .await
        .map_err(sm_write_err)?;
        result.map_err(sm_write_err)?;
        self.report_applied(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // A build may replace the file between reading its name and opening it:
        // read the name again then.
        for _ in 0..3 {
            let Some(current) = self.current_snapshot().map_err(sm_read_err)? else {
                return Ok(None);
            };
            let Some(name) = current.file else {
                return Ok(None);
            };
            match SnapshotFile::open(self.store.snapshot_dir().join(name)).await {
                Ok(file) => {
                    return Ok(Some(Snapshot {
                        meta: current.meta,
                        snapshot: Box::new(file),
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(sm_read_err(e)),
            }
        }
        Err(sm_read_err("the current snapshot file keeps disappearing"))
    }
}
