//! Manifests and tags: put (with its blob and child references), get by tag or
//! digest, delete a manifest or only a tag.

use berth_meta::Command;
use berth_oci::Digest;
use berth_oci::ParsedManifest;
use berth_oci::Reference;
use berth_oci::RepoName;

use crate::Registry;
use crate::RegistryError;
use crate::now_ms;

pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

pub struct PutManifestResult {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl Registry {
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<PutManifestResult, RegistryError> {
        let limit = self.max_manifest_size();
        if bytes.len() > limit {
            return Err(berth_oci::OciError::ManifestTooLarge {
                size: bytes.len(),
                limit,
            }
            .into());
        }
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(RegistryError::DigestMismatch(format!(
                        "manifest pushed as {d} has digest {actual}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let parsed = ParsedManifest::parse_with_limit(&bytes, content_type, limit)?;
        let size = bytes.len() as u64;
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let referrer = subject
            .as_ref()
            .map(|_| parsed.referrer_descriptor(digest.clone(), size));
        let blobs = parsed.blob_references().into_iter().map(|d| d.digest.clone()).collect();
        let children = parsed
            .manifest_references()
            .into_iter()
            .map(|d| d.digest.clone())
            .collect();
        self.propose(Command::PutManifest {
            repo: repo.clone(),
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            bytes,
            tag: reference.as_tag().cloned(),
            subject: subject.clone(),
            referrer,
            blobs,
            children,
            at: now_ms(),
        })
        .await?;
        Ok(PutManifestResult { digest, subject })
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Manifest, RegistryError> {
        let digest = match reference {
            Reference::Digest(d) => {
                self.digest_read_barrier().await;
                d.clone()
            }
            Reference::Tag(tag) => {
                self.tag_read_barrier().await?;
                match self.meta().tag(repo, tag)? {
                    Some(t) => t.digest,
                    None => return Err(self.manifest_unknown(repo, tag.as_str())?),
                }
            }
        };
        match self.lookup(|m| m.manifest(repo, &digest)).await? {
            Some(m) => Ok(Manifest {
                digest,
                media_type: m.media_type,
                bytes: m.bytes,
            }),
            None => Err(self.manifest_unknown(repo, &digest.to_string())?),
        }
    }

    fn manifest_unknown(&self, repo: &RepoName, what: &str) -> Result<RegistryError, RegistryError> {
        Ok(if self.meta().repo_exists(repo)? {
            RegistryError::ManifestUnknown(what.to_string())
        } else {
            RegistryError::NameUnknown(repo.to_string())
        })
    }

    /// Delete a manifest (by digest, with every tag on it) or only a tag.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<(), RegistryError> {
        let at = now_ms();
        let cmd = match reference {
            Reference::Digest(d) => Command::DeleteManifest {
                repo: repo.clone(),
                digest: d.clone(),
                at,
            },
            Reference::Tag(t) => Command::DeleteTag {
                repo: repo.clone(),
                tag: t.clone(),
                at,
            },
        };
        self.propose_everywhere(cmd).await
    }
}
