//! Repository names, tags and manifest references.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::OciError;
use crate::quote;

/// Maximum length of a repository name, in bytes.
pub const MAX_REPO_NAME_LEN: usize = 255;

/// Maximum length of a tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;

/// A validated repository name such as `library/ubuntu`.
///
/// Grammar (distribution spec):
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
/// at most [`MAX_REPO_NAME_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// Parses and validates a repository name.
    pub fn parse(s: &str) -> Result<RepoName, OciError> {
        if s.is_empty() {
            return Err(OciError::InvalidName("name must not be empty".into()));
        }
        if s.len() > MAX_REPO_NAME_LEN {
            return Err(OciError::InvalidName(format!(
                "{}: name is {} characters long, the limit is {MAX_REPO_NAME_LEN}",
                quote(s),
                s.len()
            )));
        }
        for component in s.split('/') {
            if let Err(reason) = check_path_component(component) {
                return Err(OciError::InvalidName(format!("{}: {reason}", quote(s))));
            }
        }
        Ok(RepoName(s.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated path components of the name, e.g.
    /// `["library", "ubuntu"]` for `library/ubuntu`.
    pub fn namespace_segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Consumes the name, returning the underlying string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Checks `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_path_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("empty path component (leading, trailing or doubled '/')");
    }
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    // Alternate: a run of alphanumerics, then a separator run, then alnum...
    loop {
        let start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return Err(
                "path components must start and end with a lowercase letter or digit, and separators must be followed by one",
            );
        }
        if i == bytes.len() {
            return Ok(());
        }
        let sep_start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        match &component[sep_start..i] {
            "." | "_" | "__" => {}
            sep if sep.bytes().all(|b| b == b'-') => {}
            sep if sep.bytes().all(|b| matches!(b, b'.' | b'_' | b'-')) => {
                return Err("invalid separator: use '.', '_', '__' or a run of '-'");
            }
            _ => {
                return Err("only lowercase letters, digits and the separators '.', '_', '__', '-' are allowed");
            }
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepoName {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RepoName::parse(s)
    }
}

impl AsRef<str> for RepoName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

string_serde!(RepoName, "a repository name");

/// A validated tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Parses and validates a tag.
    pub fn parse(s: &str) -> Result<Tag, OciError> {
        let Some(&first) = s.as_bytes().first() else {
            return Err(OciError::InvalidTag("tag must not be empty".into()));
        };
        if s.len() > MAX_TAG_LEN {
            return Err(OciError::InvalidTag(format!(
                "{}: tag is {} characters long, the limit is {MAX_TAG_LEN}",
                quote(s),
                s.len()
            )));
        }
        if !(first.is_ascii_alphanumeric() || first == b'_') {
            return Err(OciError::InvalidTag(format!(
                "{}: must start with a letter, digit or '_'",
                quote(s)
            )));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(OciError::InvalidTag(format!(
                "{}: only letters, digits, '.', '_' and '-' are allowed",
                quote(s)
            )));
        }
        Ok(Tag(s.to_owned()))
    }

    /// The tag as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the tag, returning the underlying string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tag::parse(s)
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

string_serde!(Tag, "a tag");

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag such as `latest`.
    Tag(Tag),
    /// A digest such as `sha256:…`.
    Digest(Digest),
}

impl Reference {
    /// Parses a reference: anything containing `':'` is a digest (digest
    /// errors are returned as-is), otherwise it is a tag.
    pub fn parse(s: &str) -> Result<Reference, OciError> {
        if s.is_empty() {
            return Err(OciError::InvalidReference("reference must not be empty".into()));
        }
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }

    /// The tag, if this is a tag reference.
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }

    /// The digest, if this is a digest reference.
    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Tag(_) => None,
            Reference::Digest(d) => Some(d),
        }
    }

    /// Whether this is a digest reference.
    pub fn is_digest(&self) -> bool {
        matches!(self, Reference::Digest(_))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Reference::Digest(d)
    }
}

string_serde!(Reference, "a tag or digest");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn valid_names() {
        for n in [
            "a",
            "0",
            "ubuntu",
            "library/ubuntu",
            "a/b/c/d/e",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a-----b",
            "a.b_c__d-e--f",
            "my-org/my.repo/sub_path",
            "123/456",
            "a0.b1/c2-d3",
        ] {
            let name = RepoName::parse(n).unwrap_or_else(|e| panic!("{n:?}: {e}"));
            assert_eq!(name.as_str(), n);
            assert_eq!(name.to_string(), n);
            assert_eq!(name.as_ref(), n);
            assert_eq!(n.parse::<RepoName>().unwrap(), name);
        }
    }

    #[test]
    fn invalid_names() {
        for n in [
            "",
            "a___b",
            "a..b",
            "a._b",
            "a-.b",
            "a_-b",
            "a/",
            "/a",
            "a//b",
            "/",
            "A",
            "library/Ubuntu",
            "-a",
            "a-",
            ".a",
            "a.",
            "_a",
            "a_",
            "a b",
            "a:b",
            "a@b",
            "é",
            "a/b/",
            "a/./b",
            "a/../b",
        ] {
            match RepoName::parse(n) {
                Err(e @ OciError::InvalidName(_)) => assert_eq!(e.code(), ErrorCode::NameInvalid),
                other => panic!("{n:?}: expected InvalidName, got {other:?}"),
            }
        }
    }

    #[test]
    fn name_length_limit() {
        let ok = "a".repeat(255);
        assert!(RepoName::parse(&ok).is_ok());
        let too_long = "a".repeat(256);
        assert!(matches!(RepoName::parse(&too_long), Err(OciError::InvalidName(_))));
        let with_path = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        assert_eq!(with_path.len(), 255);
        assert!(RepoName::parse(&with_path).is_ok());
    }

    #[test]
    fn name_segments() {
        let n = RepoName::parse("org/team/app").unwrap();
        assert_eq!(n.namespace_segments().collect::<Vec<_>>(), ["org", "team", "app"]);
        let single = RepoName::parse("app").unwrap();
        assert_eq!(single.namespace_segments().collect::<Vec<_>>(), ["app"]);
    }

    #[test]
    fn name_serde() {
        let n = RepoName::parse("library/ubuntu").unwrap();
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"library/ubuntu\"");
        assert_eq!(serde_json::from_str::<RepoName>(&json).unwrap(), n);
        assert!(serde_json::from_str::<RepoName>("\"Bad\"").is_err());
    }

    #[test]
    fn valid_tags() {
        let max = "a".repeat(128);
        for t in [
            "latest",
            "v1.2.3",
            "_private",
            "1",
            "A-b_C.d",
            "3.12-slim-bookworm",
            max.as_str(),
        ] {
            let tag = Tag::parse(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
            assert_eq!(tag.as_str(), t);
            assert_eq!(tag.to_string(), t);
        }
    }

    #[test]
    fn invalid_tags() {
        let too_long = "a".repeat(129);
        for t in [
            "",
            ".hidden",
            "-dash",
            "a:b",
            "a/b",
            "a b",
            "tag!",
            "ü",
            too_long.as_str(),
        ] {
            match Tag::parse(t) {
                Err(e @ OciError::InvalidTag(_)) => {
                    assert_eq!(e.code(), ErrorCode::ManifestInvalid)
                }
                other => panic!("{t:?}: expected InvalidTag, got {other:?}"),
            }
        }
    }

    #[test]
    fn tag_serde() {
        let t = Tag::parse("v1").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"v1\"");
        assert_eq!(serde_json::from_str::<Tag>("\"v1\"").unwrap(), t);
        assert!(serde_json::from_str::<Tag>("\".v1\"").is_err());
    }

    #[test]
    fn references() {
        let r = Reference::parse("latest").unwrap();
        assert_eq!(r, Reference::Tag(Tag::parse("latest").unwrap()));
        assert_eq!(r.as_tag().map(Tag::as_str), Some("latest"));
        assert!(!r.is_digest());
        assert_eq!(r.to_string(), "latest");

        let d = Digest::sha256_of(b"x");
        let r = Reference::parse(&d.to_string()).unwrap();
        assert_eq!(r, Reference::Digest(d.clone()));
        assert_eq!(r.as_digest(), Some(&d));
        assert!(r.is_digest());
        assert_eq!(r.to_string(), d.to_string());
        assert_eq!(Reference::from(d.clone()), r);

        assert!(matches!(Reference::parse(""), Err(OciError::InvalidReference(_))));
        assert!(matches!(
            Reference::parse("sha256:abc"),
            Err(OciError::InvalidDigest(_))
        ));
        assert!(matches!(
            Reference::parse("md5:abc"),
            Err(OciError::UnsupportedDigestAlgorithm(_))
        ));
        assert!(matches!(Reference::parse(".bad"), Err(OciError::InvalidTag(_))));

        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
    }
}
