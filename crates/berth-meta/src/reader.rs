use berth_oci::Descriptor;
use berth_oci::Digest;
use berth_oci::RepoName;
use berth_oci::Tag;
use openraft::LogId;
use rocksdb::Direction;
use rocksdb::IteratorMode;

use crate::BlobRecord;
use crate::Change;
use crate::ManifestRecord;
use crate::MetaError;
use crate::NodeId;
use crate::TagRecord;
use crate::UploadRecord;
use crate::error::corrupt;
use crate::keys::*;
use crate::store::MetaStore;
use crate::store::decode;

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// More items follow the last one returned.
    pub more: bool,
}

/// Read-side queries on a node's local copy of the state machine.
///
/// Reads are served from RocksDB directly; every command is applied in one atomic
/// batch, so a reader sees each command entirely or not at all.
#[derive(Clone)]
pub struct MetaReader {
    store: MetaStore,
}

impl MetaReader {
    pub(crate) fn new(store: MetaStore) -> Self {
        MetaReader { store }
    }

    /// Index of the last entry in this node's Raft log ([`MetaStore::log_tip`]).
    pub fn log_tip(&self) -> u64 {
        self.store.log_tip()
    }

    /// Index of the last log entry applied to this node's state machine.
    pub fn applied_index(&self) -> Result<Option<u64>, MetaError> {
        let applied: Option<Option<LogId<NodeId>>> = self.store.get(CF_SM, b"last_applied")?;
        Ok(applied.flatten().map(|l| l.index))
    }

    pub fn repo_exists(&self, repo: &RepoName) -> Result<bool, MetaError> {
        self.store.exists(CF_REPOS, repo.as_str().as_bytes())
    }

    pub fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<TagRecord>, MetaError> {
        self.store.get(CF_TAGS, &join(&[repo.as_str(), tag.as_str()]))
    }

    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError> {
        self.store.get(CF_MANIFESTS, &repo_digest(repo, digest))
    }

    pub fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError> {
        self.store.exists(CF_MANIFESTS, &repo_digest(repo, digest))
    }

    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        self.store.get(CF_BLOBS, digest.to_string().as_bytes())
    }

    /// The blob, if it is linked to `repo`.
    pub fn linked_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        if !self.store.exists(CF_LINKS, &repo_digest(repo, digest))? {
            return Ok(None);
        }
        self.blob(digest)
    }

    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>, MetaError> {
        self.store.get(CF_UPLOADS, id.as_bytes())
    }

    pub fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, MetaError> {
        let cf = self.store.cf(CF_UPLOADS)?;
        let mut out = Vec::new();
        for kv in self.store.db().iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = kv?;
            let id = String::from_utf8(k.to_vec()).map_err(|e| corrupt("upload id", e))?;
            out.push((id, decode("upload", &v)?));
        }
        Ok(out)
    }

    /// Tags of `repo` in lexical order, after `last`, at most `n`.
    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let prefix = repo_prefix(repo);
        self.page(CF_TAGS, &prefix, last, n)
    }

    /// Repository names in lexical order, after `last`, at most `n`.
    pub fn catalog(&self, last: Option<&str>, n: usize) -> Result<Page, MetaError> {
        self.page(CF_REPOS, b"", last, n)
    }

    fn page(&self, cf_name: &'static str, prefix: &[u8], last: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let cf = self.store.cf(cf_name)?;
        let mut start = prefix.to_vec();
        if let Some(last) = last {
            start.extend_from_slice(last.as_bytes());
            // The smallest key strictly after `last`.
            start.push(0);
        }
        let mut items = Vec::new();
        let mut more = false;
        for kv in self
            .store
            .db()
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, _) = kv?;
            let Some(name) = suffix(&k, prefix) else {
                break;
            };
            if items.len() == n {
                more = true;
                break;
            }
            items.push(name.to_string());
        }
        Ok(Page { items, more })
    }

    /// Every (key suffix, value) of `cf` under `prefix`, in key order.
    fn scan_prefix<T: serde::de::DeserializeOwned>(
        &self,
        cf_name: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(String, T)>, MetaError> {
        let cf = self.store.cf(cf_name)?;
        let mut out = Vec::new();
        for kv in self
            .store
            .db()
            .iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = kv?;
            let Some(rest) = suffix(&k, prefix) else { break };
            out.push((rest.to_string(), decode(cf_name, &v)?));
        }
        Ok(out)
    }

    /// Tags of `repo` that point at `digest`.
    pub fn tags_pointing_to(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>, MetaError> {
        let mut out = Vec::new();
        for (name, rec) in self.scan_prefix::<TagRecord>(CF_TAGS, &repo_prefix(repo))? {
            if &rec.digest == digest {
                out.push(Tag::parse(&name).map_err(|e| corrupt("tag", e))?);
            }
        }
        Ok(out)
    }

    /// A manifest of `repo` that references the blob `digest` (as its config or a
    /// layer), if there is one.
    pub fn manifest_referencing(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Digest>, MetaError> {
        manifest_referencing(&self.store, repo, digest)
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>, MetaError> {
        let rows = self.scan_prefix::<Descriptor>(CF_REFERRERS, &referrer_prefix(repo, subject))?;
        Ok(rows.into_iter().map(|(_, d)| d).collect())
    }

    /// Change-feed entries with a sequence greater than `after`, at most `n`.
    pub fn changes(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, Change)>, MetaError> {
        let cf = self.store.cf(CF_CHANGES)?;
        let start = index(after.map_or(0, |a| a.saturating_add(1)));
        let mut out = Vec::new();
        for kv in self
            .store
            .db()
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = kv?;
            let seq = parse_index(&k).ok_or_else(|| corrupt("change key", "not 8 bytes"))?;
            out.push((seq, decode("change", &v)?));
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
    }
}

/// A manifest of `repo` whose blobs include `digest`. A scan of the repository's
/// manifests: blob deletes are rare, and a reverse index would cost every manifest
/// put a write per blob.
pub(crate) fn manifest_referencing(
    store: &MetaStore,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<Digest>, MetaError> {
    let prefix = repo_prefix(repo);
    let cf = store.cf(CF_MANIFESTS)?;
    for kv in store
        .db()
        .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
    {
        let (k, v) = kv?;
        let Some(name) = suffix(&k, &prefix) else { break };
        let rec: ManifestRecord = decode(CF_MANIFESTS, &v)?;
        if rec.blobs.contains(digest) {
            return Ok(Some(Digest::parse(name).map_err(|e| corrupt("manifest key", e))?));
        }
    }
    Ok(None)
}
