//! Every `/v2/` request is parsed into an [`Endpoint`] before any logic runs.
//!
//! Repository names contain slashes, so the path is split at the last route marker
//! (`/manifests/`, `/blobs/`, …) whose remainder is a single segment.

use berth_oci::Digest;
use berth_oci::OciError;
use berth_oci::Reference;
use berth_oci::RepoName;
use berth_oci::UploadId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { repo: RepoName },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { repo: RepoName, reference: Reference },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { repo: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { repo: RepoName, id: UploadId },
    /// `/v2/<name>/blobs/<digest>`
    Blob { repo: RepoName, digest: Digest },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { repo: RepoName, digest: Digest },
}

impl Endpoint {
    /// A stable name for spans and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::UploadStart { .. } => "upload_start",
            Endpoint::Upload { .. } => "upload",
            Endpoint::Blob { .. } => "blob",
            Endpoint::Referrers { .. } => "referrers",
        }
    }

    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { repo }
            | Endpoint::Manifest { repo, .. }
            | Endpoint::UploadStart { repo }
            | Endpoint::Upload { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::Referrers { repo, .. } => Some(repo),
        }
    }
}

/// Why a path is not an endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No route has this shape.
    NotFound,
    /// The route matched but a component is invalid.
    Invalid(OciError),
}

impl From<OciError> for ParseError {
    fn from(e: OciError) -> Self {
        ParseError::Invalid(e)
    }
}

/// Split `path` (after `/v2/`) at the last `marker` whose remainder has no slash.
fn split_last<'a>(path: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let i = path.rfind(marker)?;
    let rest = &path[i + marker.len()..];
    if rest.contains('/') {
        return None;
    }
    Some((&path[..i], rest))
}

pub fn parse(path: &str) -> Result<Endpoint, ParseError> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(ParseError::NotFound);
    };
    let rest = match rest {
        "" | "/" => return Ok(Endpoint::Base),
        r => r.strip_prefix('/').ok_or(ParseError::NotFound)?,
    };
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let with_slash = format!("/{rest}");
    let p = with_slash.as_str();
    let name = |n: &str| RepoName::parse(n.strip_prefix('/').unwrap_or(n));
    if let Some(prefix) = p.strip_suffix("/tags/list") {
        return Ok(Endpoint::Tags { repo: name(prefix)? });
    }
    if let Some((n, id)) = split_last(p, "/blobs/uploads/") {
        let repo = name(n)?;
        return Ok(if id.is_empty() {
            Endpoint::UploadStart { repo }
        } else {
            Endpoint::Upload {
                repo,
                id: UploadId::parse(id)?,
            }
        });
    }
    if let Some((n, reference)) = split_last(p, "/manifests/") {
        let repo = name(n)?;
        return Ok(Endpoint::Manifest {
            repo,
            reference: Reference::parse(reference)?,
        });
    }
    if let Some((n, d)) = split_last(p, "/blobs/") {
        let repo = name(n)?;
        return Ok(Endpoint::Blob {
            repo,
            digest: Digest::parse(d)?,
        });
    }
    if let Some((n, d)) = split_last(p, "/referrers/") {
        let repo = name(n)?;
        return Ok(Endpoint::Referrers {
            repo,
            digest: Digest::parse(d)?,
        });
    }
    Err(ParseError::NotFound)
}

#[cfg(test)]
mod tests {
    use berth_oci::ErrorCode;

    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn base_and_catalog() {
        assert_eq!(parse("/v2/"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert_eq!(parse("/v3/"), Err(ParseError::NotFound));
    }

    #[test]
    fn nested_names() {
        assert_eq!(parse("/v2/a/b/c/tags/list"), Ok(Endpoint::Tags { repo: repo("a/b/c") }));
        assert_eq!(
            parse(&format!("/v2/team/blobs/app/blobs/{D}")),
            Ok(Endpoint::Blob {
                repo: repo("team/blobs/app"),
                digest: Digest::parse(D).unwrap()
            })
        );
        assert_eq!(
            parse("/v2/x/manifests/y/manifests/v1"),
            Ok(Endpoint::Manifest {
                repo: repo("x/manifests/y"),
                reference: Reference::parse("v1").unwrap()
            })
        );
    }

    #[test]
    fn uploads() {
        assert_eq!(
            parse("/v2/team/app/blobs/uploads/"),
            Ok(Endpoint::UploadStart { repo: repo("team/app") })
        );
        assert_eq!(
            parse("/v2/team/app/blobs/uploads/abc-123"),
            Ok(Endpoint::Upload {
                repo: repo("team/app"),
                id: UploadId::parse("abc-123").unwrap()
            })
        );
    }

    #[test]
    fn invalid_parts_have_codes() {
        let code = |p: &str| match parse(p) {
            Err(ParseError::Invalid(e)) => e.code(),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(code("/v2/Team/App/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a//b/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:zz"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/manifests/-bad"), ErrorCode::ManifestInvalid);
        assert_eq!(code("/v2/a/blobs/uploads/bad.id"), ErrorCode::BlobUploadUnknown);
        assert_eq!(code("/v2/a/blobs/uploads/x%00"), ErrorCode::BlobUploadUnknown);
        assert_eq!(parse("/v2/a/unknown/x"), Err(ParseError::NotFound));
    }
}
