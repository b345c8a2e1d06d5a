// openraft's storage traits fix the error type (`StorageError`, which is large).
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

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
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
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
use crate::TagRecord;
use crate::TypeConfig;
use crate::UploadRecord;
use crate::keys::*;
use crate::reader::manifest_referencing;
use crate::store::MetaStore;
use crate::store::decode;
use crate::store::encode;

type Entry = openraft::Entry<TypeConfig>;
type Membership = StoredMembership<NodeId, NodeInfo>;

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

fn sm_read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn sm_write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// A snapshot as transferred and stored: every key/value of the state column
/// families at one applied log id.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    rows: Vec<Row>,
}

#[derive(Serialize, Deserialize)]
struct Row {
    cf: String,
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The state machine, applied in RocksDB. Each entry is applied in one atomic write
/// batch together with the new `last_applied`, so a crash never leaves an entry half
/// applied and openraft re-applies exactly what is missing.
#[derive(Clone)]
pub struct StateMachineStore {
    store: MetaStore,
    snapshot_seq: Arc<AtomicU64>,
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
            snapshot_seq: Arc::new(AtomicU64::new(0)),
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

    fn build(&self) -> Result<Snapshot<TypeConfig>, MetaError> {
        let db = self.store.db();
        let snap = db.snapshot();
        let read = |key: &[u8]| -> Result<Option<Vec<u8>>, MetaError> { Ok(snap.get_cf(self.store.cf(CF_SM)?, key)?) };
        let last_applied: Option<LogId<NodeId>> = match read(KEY_APPLIED)? {
            Some(v) => decode::<Option<LogId<NodeId>>>("applied", &v)?,
            None => None,
        };
        let membership: Membership = match read(KEY_MEMBERSHIP)? {
            Some(v) => decode("membership", &v)?,
            None => Membership::default(),
        };
        let mut rows = Vec::new();
        for cf_name in STATE_CFS {
            let cf = self.store.cf(cf_name)?;
            for kv in snap.iterator_cf(cf, IteratorMode::Start) {
                let (k, v) = kv?;
                rows.push(Row {
                    cf: cf_name.to_string(),
                    key: k.to_vec(),
                    value: v.to_vec(),
                });
            }
        }
        let data = encode(
            "snapshot",
            &SnapshotData {
                last_applied,
                membership: membership.clone(),
                rows,
            },
        )?;
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
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        db.put_cf(self.store.cf(CF_SM)?, KEY_SNAPSHOT, encode("snapshot", &stored)?)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn install(&self, meta: &SnapshotMeta<NodeId, NodeInfo>, data: Vec<u8>) -> Result<(), MetaError> {
        let snapshot: SnapshotData = decode("snapshot", &data)?;
        let db = self.store.db();
        let mut batch = WriteBatch::default();
        for cf_name in STATE_CFS {
            let cf = self.store.cf(cf_name)?;
            for kv in db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = kv?;
                batch.delete_cf(cf, k);
            }
        }
        for row in &snapshot.rows {
            let Some(name) = STATE_CFS.iter().find(|n| **n == row.cf.as_str()) else {
                let cf = &row.cf;
                return Err(crate::error::corrupt("snapshot", format!("unknown column family {cf}")));
            };
            batch.put_cf(self.store.cf(name)?, &row.key, &row.value);
        }
        let sm = self.store.cf(CF_SM)?;
        batch.put_cf(sm, KEY_APPLIED, encode("applied", &meta.last_log_id)?);
        batch.put_cf(sm, KEY_MEMBERSHIP, encode("membership", &meta.last_membership)?);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        batch.put_cf(sm, KEY_SNAPSHOT, encode("snapshot", &stored)?);
        db.write(batch)?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
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
        tokio::task::spawn_blocking(move || this.build())
            .await
            .map_err(sm_read_err)?
            .map_err(sm_read_err)
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let this = self.clone();
        let meta = meta.clone();
        let data = snapshot.into_inner();
        let applied = meta.last_log_id;
        tokio::task::spawn_blocking(move || this.install(&meta, data))
            .await
            .map_err(sm_write_err)?
            .map_err(sm_write_err)?;
        self.report_applied(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored: Option<StoredSnapshot> = self.store.get(CF_SM, KEY_SNAPSHOT).map_err(sm_read_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
