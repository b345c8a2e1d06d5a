//! Listings: the catalog, a repository's tags, the referrers of a manifest. Each is
//! a page of a sorted index read with one bounded iteration.

use berth_oci::Descriptor;
use berth_oci::Digest;
use berth_oci::RepoName;

use crate::Registry;
use crate::RegistryError;

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// More items follow the last one returned.
    pub more: bool,
}

impl From<berth_meta::Page> for Page {
    fn from(p: berth_meta::Page) -> Self {
        Page {
            items: p.items,
            more: p.more,
        }
    }
}

impl Registry {
    /// Tags of `repo` in lexical order, after `last`, at most `n`.
    pub async fn list_tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Page, RegistryError> {
        self.tag_read_barrier().await?;
        if !self.meta().repo_exists(repo)? {
            return Err(RegistryError::NameUnknown(repo.to_string()));
        }
        Ok(self.meta().tags(repo, last, n)?.into())
    }

    /// Repository names in lexical order, after `last`, at most `n`.
    pub async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Page, RegistryError> {
        self.tag_read_barrier().await?;
        Ok(self.meta().catalog(last, n)?.into())
    }

    /// Manifests of `repo` whose subject is `subject`, in order of their digests,
    /// after `last`, at most `n` read; optionally only those of one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        last: Option<&Digest>,
        n: usize,
    ) -> Result<Referrers, RegistryError> {
        self.tag_read_barrier().await?;
        let page = self.meta().referrers_page(repo, subject, last, n)?;
        let next = if page.more {
            page.items.last().map(|d| d.digest.clone())
        } else {
            None
        };
        let mut items = page.items;
        if let Some(at) = artifact_type {
            items.retain(|d| d.artifact_type.as_deref() == Some(at));
        }
        Ok(Referrers { items, next })
    }
}

/// One page of a manifest's referrers.
#[derive(Debug, Clone, PartialEq)]
pub struct Referrers {
    pub items: Vec<Descriptor>,
    /// Where the next page starts (its `last`), when there is one. A filtered page
    /// may hold fewer than asked and still have a next one.
    pub next: Option<Digest>,
}
