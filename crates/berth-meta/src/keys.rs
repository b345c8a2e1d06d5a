//! Column families and key layout.
//!
//! Composite keys join their parts with a NUL byte, which sorts before every byte a
//! repository name, tag or digest may contain, so a prefix scan over `repo\0` returns
//! exactly that repository's entries in lexical order.

use berth_oci::Digest;
use berth_oci::RepoName;

/// Raft log entries, keyed by big-endian index.
pub const CF_LOGS: &str = "logs";
/// Raft vote, committed and purged log ids.
pub const CF_RAFT: &str = "raft";
/// State-machine bookkeeping: last applied log id, membership, current snapshot.
pub const CF_SM: &str = "sm";
/// repo → RepoRecord
pub const CF_REPOS: &str = "repos";
/// repo\0tag → TagRecord
pub const CF_TAGS: &str = "tags";
/// repo\0digest → ManifestRecord
pub const CF_MANIFESTS: &str = "manifests";
/// digest → BlobRecord
pub const CF_BLOBS: &str = "blobs";
/// repo\0digest → () : the blob is visible in the repository
pub const CF_LINKS: &str = "links";
/// repo\0subject\0referrer → Descriptor
pub const CF_REFERRERS: &str = "referrers";
/// upload id → UploadRecord
pub const CF_UPLOADS: &str = "uploads";
/// log index (BE) → Change
pub const CF_CHANGES: &str = "changes";

/// The column families that make up the state machine (what a snapshot carries).
pub const STATE_CFS: &[&str] = &[
    CF_REPOS,
    CF_TAGS,
    CF_MANIFESTS,
    CF_BLOBS,
    CF_LINKS,
    CF_REFERRERS,
    CF_UPLOADS,
    CF_CHANGES,
];

/// The Raft bookkeeping column families; with [`STATE_CFS`], every one there is.
pub const RAFT_CFS: &[&str] = &[CF_LOGS, CF_RAFT, CF_SM];

pub fn all_cfs() -> impl Iterator<Item = &'static str> {
    RAFT_CFS.iter().chain(STATE_CFS).copied()
}

pub fn join(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

pub fn repo_prefix(repo: &RepoName) -> Vec<u8> {
    let mut k = repo.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

pub fn repo_digest(repo: &RepoName, digest: &Digest) -> Vec<u8> {
    join(&[repo.as_str(), &digest.to_string()])
}

pub fn referrer_prefix(repo: &RepoName, subject: &Digest) -> Vec<u8> {
    let mut k = join(&[repo.as_str(), &subject.to_string()]);
    k.push(0);
    k
}

pub fn index(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

pub fn parse_index(k: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = k.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// The part of a composite key after `prefix`.
pub fn suffix<'a>(key: &'a [u8], prefix: &[u8]) -> Option<&'a str> {
    key.strip_prefix(prefix).and_then(|s| std::str::from_utf8(s).ok())
}
