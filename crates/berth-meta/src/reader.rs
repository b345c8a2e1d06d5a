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

/// One page of a subject's referrers; the next page starts after the digest of the
/// last item.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferrersPage {
    pub items: Vec<Descriptor>,
    /// More referrers follow the last one returned.
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

    /// Every upload session; [`MetaReader::uploads_page`] reads them a page at a time.
    pub fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, MetaError> {
        self.uploads_page(None, usize::MAX)
    }

    /// Upload sessions in order of their ids, after `last`, at most `n`.
    pub fn uploads_page(&self, last: Option<&str>, n: usize) -> Result<Vec<(String, UploadRecord)>, MetaError> {
        let mut out = Vec::new();
        self.each(CF_UPLOADS, b"", last.map(str::as_bytes), |id, v| {
            if out.len() == n {
                return Ok(false);
            }
            out.push((id.to_string(), decode("upload", v)?));
            Ok(true)
        })?;
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
        let mut items = Vec::new();
        let mut more = false;
        self.each(cf_name, prefix, last.map(str::as_bytes), |name, _| {
            if items.len() == n {
                more = true;
                return Ok(false);
            }
            items.push(name.to_string());
            Ok(true)
        })?;
        Ok(Page { items, more })
    }

    /// Call `f` with the key suffix and value of each entry of `cf` under `prefix`
    /// whose suffix sorts after `last`, in key order, while it returns `true`.
    /// Nothing is collected here: a caller's memory is what it keeps.
    fn each(
        &self,
        cf_name: &'static str,
        prefix: &[u8],
        last: Option<&[u8]>,
        mut f: impl FnMut(&str, &[u8]) -> Result<bool, MetaError>,
    ) -> Result<(), MetaError> {
        let cf = self.store.cf(cf_name)?;
        let mut start = prefix.to_vec();
        if let Some(last) = last {
            start.extend_from_slice(last);
            // The smallest key strictly after `last`.
            start.push(0);
        }
        let mut it = self.store.db().raw_iterator_cf(cf);
        it.seek(&start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let Some(rest) = suffix(k, prefix) else { break };
            if !f(rest, v)? {
                return Ok(());
            }
            it.next();
        }
        Ok(it.status()?)
    }

    /// Tags of `repo` that point at `digest`.
    pub fn tags_pointing_to(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>, MetaError> {
        let mut out = Vec::new();
        self.each(CF_TAGS, &repo_prefix(repo), None, |name, v| {
            let rec: TagRecord = decode(CF_TAGS, v)?;
            if &rec.digest == digest {
                out.push(Tag::parse(name).map_err(|e| corrupt("tag", e))?);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// A manifest of `repo` that references the blob `digest` (as its config or a
    /// layer), if there is one.
    pub fn manifest_referencing(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Digest>, MetaError> {
        manifest_referencing(&self.store, repo, digest)
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`, all of
    /// them; [`MetaReader::referrers_page`] reads them a page at a time.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>, MetaError> {
        let mut out = Vec::new();
        self.each(CF_REFERRERS, &referrer_prefix(repo, subject), None, |_, v| {
            out.push(decode(CF_REFERRERS, v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Referrers of `subject` in `repo` in order of their digests, after the one
    /// whose digest is `last`, at most `n`.
    pub fn referrers_page(
        &self,
        repo: &RepoName,
        subject: &Digest,
        last: Option<&Digest>,
        n: usize,
    ) -> Result<ReferrersPage, MetaError> {
        let mut items = Vec::new();
        let mut more = false;
        let last = last.map(|d| d.to_string());
        self.each(
            CF_REFERRERS,
            &referrer_prefix(repo, subject),
            last.as_deref().map(str::as_bytes),
            |_, v| {
                if items.len() == n {
                    more = true;
                    return Ok(false);
                }
                items.push(decode(CF_REFERRERS, v)?);
                Ok(true)
            },
        )?;
        Ok(ReferrersPage { items, more })
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
