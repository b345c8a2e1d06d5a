//! Upload-session ids.

use std::fmt;
use std::str::FromStr;

use crate::error::OciError;
use crate::quote;

/// Maximum length of an upload id, in bytes.
pub const MAX_UPLOAD_ID_LEN: usize = 64;

/// The id of a blob upload session, as it appears in
/// `/v2/<name>/blobs/uploads/<id>`: `[A-Za-z0-9-]{1,64}`.
///
/// The registry hands out UUIDs; the grammar is wider so that ids of sessions
/// created by any node stay valid, and narrow enough that an id can name a file
/// or an object key without escaping its directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// Parses and validates an upload id.
    pub fn parse(s: &str) -> Result<UploadId, OciError> {
        let valid =
            !s.is_empty() && s.len() <= MAX_UPLOAD_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(OciError::InvalidUploadId(quote(s)));
        }
        Ok(UploadId(s.to_owned()))
    }

    /// A new random id: a UUID v4 in its hyphenated form.
    pub fn random() -> UploadId {
        UploadId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UploadId {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UploadId::parse(s)
    }
}

impl AsRef<str> for UploadId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

string_serde!(UploadId, "an upload id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_grammar_parse() {
        for ok in ["a", "0f8c-11", "A-b-C", &"x".repeat(MAX_UPLOAD_ID_LEN)] {
            assert_eq!(UploadId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn ids_that_could_escape_or_bloat_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "a\0b",
            "ä",
            "a.b",
            &"x".repeat(MAX_UPLOAD_ID_LEN + 1),
        ] {
            let err = UploadId::parse(bad).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::BlobUploadUnknown, "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_uuids_and_differ() {
        let a = UploadId::random();
        let b = UploadId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 36);
        assert_eq!(a.as_str().as_bytes()[14], b'4');
        assert!(UploadId::parse(a.as_str()).is_ok());
    }
}
