//! Blobs: existence and size, reads (streamed or redirected), deletes, monolithic
//! pushes and cross-repository mounts.

use std::time::Duration;

use berth_blob::ByteRange;
use berth_blob::ByteStream;
use berth_blob::RangeRequest;
use berth_meta::Command;
use berth_oci::Digest;
use berth_oci::RepoName;

use crate::Registry;
use crate::RegistryError;
use crate::UploadStatus;
use crate::now_ms;
use crate::stream::exact_length;

/// How blob bytes reach a client that GETs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobDelivery {
    /// The node streams the bytes (through its cache, when one is configured).
    Proxy,
    /// The client is redirected to a presigned URL of the storage backend, valid for
    /// this long. Backends that cannot presign are proxied.
    Redirect { expires: Duration },
}

/// What a `HEAD` of a blob answers: its size and the part of it a `GET` with the
/// same `Range` would serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHead {
    /// Size of the whole blob.
    pub size: u64,
    /// The range served, if one was asked for and applies.
    pub range: Option<ByteRange>,
}

pub enum BlobBody {
    Stream {
        head: BlobHead,
        body: ByteStream,
    },
    /// Fetch the bytes from this URL instead (it honours `Range` itself).
    Redirect(String),
}

pub enum MountResult {
    Mounted(Digest),
    /// The blob could not be mounted: a fresh upload session was started instead.
    Upload(UploadStatus),
}

impl Registry {
    /// Size of a blob linked to `repo`.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        match self.lookup(|m| m.linked_blob(repo, digest)).await? {
            Some(b) => Ok(b.size),
            None => Err(RegistryError::BlobUnknown(digest.to_string())),
        }
    }

    /// Size of a blob linked to `repo`, and the part of it `range` selects.
    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobHead, RegistryError> {
        let size = self.stat_blob(repo, digest).await?;
        let range = match range {
            Some(r) => r.resolve(size)?,
            None => None,
        };
        Ok(BlobHead { size, range })
    }

    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobBody, RegistryError> {
        let head = self.head_blob(repo, digest, range).await?;
        if let BlobDelivery::Redirect { expires } = self.inner.options.delivery
            && let Some(url) = self.inner.blobs.presigned_get(digest, expires).await?
        {
            return Ok(BlobBody::Redirect(url));
        }
        let body = self.inner.blobs.get(digest, head.range).await?;
        Ok(BlobBody::Stream { head, body })
    }

    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        // Blob reads are local on every node: wait for the others to apply it too.
        self.propose_everywhere(Command::UnlinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
        })
        .await
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
}
