//! Registry error codes (OCI Distribution Spec) and the crate's validation error.

use std::fmt;

/// An error code from the OCI Distribution Specification, plus a few
/// registry-operational codes (`RANGE_INVALID`, `UNAVAILABLE`,
/// `INTERNAL_ERROR`).
///
/// Serializes as the wire code string ([`ErrorCode::as_str`]).
/// [`ErrorCode::ManifestTooLarge`] serializes as `"SIZE_INVALID"` (its wire
/// code) but, because that string deserializes to [`ErrorCode::SizeInvalid`],
/// it is only deserialized from the alias `"MANIFEST_TOO_LARGE"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`, 404.
    BlobUnknown,
    /// `BLOB_UPLOAD_INVALID`, 400.
    BlobUploadInvalid,
    /// `BLOB_UPLOAD_UNKNOWN`, 404.
    BlobUploadUnknown,
    /// `DIGEST_INVALID`, 400.
    DigestInvalid,
    /// `MANIFEST_BLOB_UNKNOWN`, 400.
    ManifestBlobUnknown,
    /// `MANIFEST_INVALID`, 400.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`, 404.
    ManifestUnknown,
    /// `NAME_INVALID`, 400.
    NameInvalid,
    /// `NAME_UNKNOWN`, 404.
    NameUnknown,
    /// `SIZE_INVALID`, 400.
    SizeInvalid,
    /// `UNAUTHORIZED`, 401.
    Unauthorized,
    /// `DENIED`, 403.
    Denied,
    /// `UNSUPPORTED`, 415.
    Unsupported,
    /// `TOOMANYREQUESTS` (spelled without underscore, per spec), 429.
    #[serde(rename = "TOOMANYREQUESTS")]
    TooManyRequests,
    /// `RANGE_INVALID`, 416.
    RangeInvalid,
    /// `SIZE_INVALID`, 413: the manifest exceeds the registry's size limit.
    #[serde(rename(serialize = "SIZE_INVALID", deserialize = "MANIFEST_TOO_LARGE"))]
    ManifestTooLarge,
    /// `PAGINATION_NUMBER_INVALID`, 400: the `n` of a listing is not a number.
    PaginationNumberInvalid,
    /// `UNSUPPORTED`, 405: the operation is not allowed here (deletes turned off, a
    /// blob a manifest still references, a method the endpoint does not have).
    #[serde(rename(serialize = "UNSUPPORTED", deserialize = "NOT_ALLOWED"))]
    NotAllowed,
    /// `BLOB_UPLOAD_INVALID`, 416: a chunk does not start where the upload ends.
    #[serde(rename(serialize = "BLOB_UPLOAD_INVALID", deserialize = "UPLOAD_OUT_OF_ORDER"))]
    UploadOutOfOrder,
    /// `BAD_REQUEST`, 400: a request of the admin API that cannot be right (an
    /// address that is no `host:port`).
    BadRequest,
    /// `CONFLICT`, 409: the request contradicts the cluster's state (a membership
    /// change that would leave no quorum, another change in progress).
    Conflict,
    /// `UNAVAILABLE`, 503.
    Unavailable,
    /// `INTERNAL_ERROR`, 500.
    #[serde(rename = "INTERNAL_ERROR")]
    Internal,
}

impl ErrorCode {
    /// Every error code, in declaration order.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::RangeInvalid,
        ErrorCode::ManifestTooLarge,
        ErrorCode::PaginationNumberInvalid,
        ErrorCode::NotAllowed,
        ErrorCode::UploadOutOfOrder,
        ErrorCode::BadRequest,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code string sent on the wire, e.g. `"BLOB_UNKNOWN"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::ManifestTooLarge => "SIZE_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::NotAllowed => "UNSUPPORTED",
            ErrorCode::UploadOutOfOrder => "BLOB_UPLOAD_INVALID",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status the registry responds with for this code.
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorCode::BlobUnknown => 404,
            ErrorCode::BlobUploadInvalid => 400,
            ErrorCode::BlobUploadUnknown => 404,
            ErrorCode::DigestInvalid => 400,
            ErrorCode::ManifestBlobUnknown => 400,
            ErrorCode::ManifestInvalid => 400,
            ErrorCode::ManifestUnknown => 404,
            ErrorCode::NameInvalid => 400,
            ErrorCode::NameUnknown => 404,
            ErrorCode::SizeInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 415,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::ManifestTooLarge => 413,
            ErrorCode::PaginationNumberInvalid => 400,
            ErrorCode::NotAllowed => 405,
            ErrorCode::UploadOutOfOrder => 416,
            ErrorCode::BadRequest => 400,
            ErrorCode::Conflict => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The gRPC status code an error of this code crosses a gRPC hop with
    /// (the numbers of `grpc/status.proto`: 3 `INVALID_ARGUMENT`, 5 `NOT_FOUND`,
    /// 7 `PERMISSION_DENIED`, 8 `RESOURCE_EXHAUSTED`, 11 `OUT_OF_RANGE`,
    /// 9 `FAILED_PRECONDITION`, 12 `UNIMPLEMENTED`, 13 `INTERNAL`, 14 `UNAVAILABLE`, 16 `UNAUTHENTICATED`).
    /// The code itself travels beside it, so the far side restores it exactly.
    pub fn grpc_code(&self) -> i32 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 5,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::PaginationNumberInvalid
            | ErrorCode::BadRequest => 3,
            ErrorCode::NotAllowed | ErrorCode::Conflict => 9,
            ErrorCode::Unauthorized => 16,
            ErrorCode::Denied => 7,
            ErrorCode::Unsupported => 12,
            ErrorCode::TooManyRequests | ErrorCode::ManifestTooLarge => 8,
            ErrorCode::RangeInvalid | ErrorCode::UploadOutOfOrder => 11,
            ErrorCode::Unavailable => 14,
            ErrorCode::Internal => 13,
        }
    }

    /// The variant's own name (`UPLOAD_OUT_OF_ORDER`, `MANIFEST_TOO_LARGE`, …),
    /// unique per variant where [`ErrorCode::as_str`], the wire code clients see,
    /// is shared by a few. It names the code on internal hops.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorCode::ManifestTooLarge => "MANIFEST_TOO_LARGE",
            ErrorCode::UploadOutOfOrder => "UPLOAD_OUT_OF_ORDER",
            ErrorCode::NotAllowed => "NOT_ALLOWED",
            other => other.as_str(),
        }
    }

    /// Looks up a code by its [`ErrorCode::name`].
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.name() == name)
    }

    /// A short human-readable message for the error body's `message` field.
    pub fn default_message(&self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => "manifest references a manifest or blob unknown to registry",
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::RangeInvalid => "requested range not satisfiable",
            ErrorCode::ManifestTooLarge => "manifest too large",
            ErrorCode::PaginationNumberInvalid => "invalid number of results requested",
            ErrorCode::NotAllowed => "the operation is not allowed",
            ErrorCode::UploadOutOfOrder => "chunk out of order",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Conflict => "the request conflicts with the cluster's state",
            ErrorCode::Unavailable => "service unavailable",
            ErrorCode::Internal => "internal server error",
        }
    }

    /// Looks up a code by its wire string. `"SIZE_INVALID"` maps to
    /// [`ErrorCode::SizeInvalid`]; `"MANIFEST_TOO_LARGE"` is accepted for
    /// [`ErrorCode::ManifestTooLarge`].
    pub fn from_code_str(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == code)
            .or_else(|| ErrorCode::from_name(code))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validation error produced while parsing registry vocabulary
/// (digests, names, tags, references, manifests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    /// The digest string is malformed (or a registered algorithm's encoded
    /// part has the wrong form).
    #[error("invalid digest: {0}")]
    InvalidDigest(String),
    /// The digest is well-formed but uses an algorithm berth does not support.
    #[error("unsupported digest algorithm: {0}")]
    UnsupportedDigestAlgorithm(String),
    /// The repository name does not match the distribution spec grammar.
    #[error("invalid repository name: {0}")]
    InvalidName(String),
    /// The tag does not match `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    #[error("invalid tag: {0}")]
    InvalidTag(String),
    /// The reference is neither a valid tag nor a valid digest.
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    /// The manifest is malformed or fails validation.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The manifest is of a kind berth does not accept (e.g. Docker schema 1).
    #[error("unsupported manifest: {0}")]
    UnsupportedManifest(String),
    /// The upload id does not match `[A-Za-z0-9-]{1,64}`: no such session can exist.
    #[error("blob upload unknown to registry: {0}")]
    InvalidUploadId(String),
    /// The manifest body exceeds the size limit.
    #[error("manifest too large: {size} bytes exceeds the limit of {limit} bytes")]
    ManifestTooLarge {
        /// Size of the rejected body in bytes.
        size: usize,
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
}

impl OciError {
    /// The registry error code to report for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            OciError::InvalidDigest(_) => ErrorCode::DigestInvalid,
            // An algorithm the registry cannot compute makes the digest invalid for it,
            // wherever the digest appears (path, query, manifest): one answer.
            OciError::UnsupportedDigestAlgorithm(_) => ErrorCode::DigestInvalid,
            OciError::InvalidName(_) => ErrorCode::NameInvalid,
            OciError::InvalidTag(_) => ErrorCode::ManifestInvalid,
            OciError::InvalidReference(_) => ErrorCode::ManifestInvalid,
            OciError::InvalidManifest(_) => ErrorCode::ManifestInvalid,
            OciError::UnsupportedManifest(_) => ErrorCode::ManifestInvalid,
            OciError::InvalidUploadId(_) => ErrorCode::BlobUploadUnknown,
            OciError::ManifestTooLarge { .. } => ErrorCode::ManifestTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_strings_and_statuses() {
        let expected: [(ErrorCode, &str, u16); 23] = [
            (ErrorCode::BlobUnknown, "BLOB_UNKNOWN", 404),
            (ErrorCode::BlobUploadInvalid, "BLOB_UPLOAD_INVALID", 400),
            (ErrorCode::BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN", 404),
            (ErrorCode::DigestInvalid, "DIGEST_INVALID", 400),
            (ErrorCode::ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", 400),
            (ErrorCode::ManifestInvalid, "MANIFEST_INVALID", 400),
            (ErrorCode::ManifestUnknown, "MANIFEST_UNKNOWN", 404),
            (ErrorCode::NameInvalid, "NAME_INVALID", 400),
            (ErrorCode::NameUnknown, "NAME_UNKNOWN", 404),
            (ErrorCode::SizeInvalid, "SIZE_INVALID", 400),
            (ErrorCode::Unauthorized, "UNAUTHORIZED", 401),
            (ErrorCode::Denied, "DENIED", 403),
            (ErrorCode::Unsupported, "UNSUPPORTED", 415),
            (ErrorCode::TooManyRequests, "TOOMANYREQUESTS", 429),
            (ErrorCode::RangeInvalid, "RANGE_INVALID", 416),
            (ErrorCode::ManifestTooLarge, "SIZE_INVALID", 413),
            (ErrorCode::PaginationNumberInvalid, "PAGINATION_NUMBER_INVALID", 400),
            (ErrorCode::NotAllowed, "UNSUPPORTED", 405),
            (ErrorCode::UploadOutOfOrder, "BLOB_UPLOAD_INVALID", 416),
            (ErrorCode::BadRequest, "BAD_REQUEST", 400),
            (ErrorCode::Conflict, "CONFLICT", 409),
            (ErrorCode::Unavailable, "UNAVAILABLE", 503),
            (ErrorCode::Internal, "INTERNAL_ERROR", 500),
        ];
        for (code, s, status) in expected {
            assert_eq!(code.as_str(), s, "{code:?}");
            assert_eq!(code.http_status(), status, "{code:?}");
            assert_eq!(code.to_string(), s);
            assert!(!code.default_message().is_empty());
        }
        assert_eq!(ErrorCode::ALL.len(), expected.len());
        assert_eq!(ErrorCode::BlobUnknown.default_message(), "blob unknown to registry");
    }

    #[test]
    fn code_serde_uses_wire_strings() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            if code.name() == code.as_str() {
                let back: ErrorCode = serde_json::from_str(&json).unwrap();
                assert_eq!(back, code);
            }
        }
        let back: ErrorCode = serde_json::from_str("\"MANIFEST_TOO_LARGE\"").unwrap();
        assert_eq!(back, ErrorCode::ManifestTooLarge);
        let back: ErrorCode = serde_json::from_str("\"UPLOAD_OUT_OF_ORDER\"").unwrap();
        assert_eq!(back, ErrorCode::UploadOutOfOrder);
        assert!(serde_json::from_str::<ErrorCode>("\"NOPE\"").is_err());
    }

    #[test]
    fn every_code_has_a_unique_name_and_a_grpc_code() {
        let mut names = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(names.insert(code.name()), "{code:?}");
            assert_eq!(ErrorCode::from_name(code.name()), Some(code));
            assert!((1..=16).contains(&code.grpc_code()), "{code:?}");
        }
        assert_eq!(ErrorCode::Unavailable.grpc_code(), 14);
        assert_eq!(ErrorCode::NameUnknown.grpc_code(), 5);
    }

    #[test]
    fn code_lookup() {
        assert_eq!(ErrorCode::from_code_str("SIZE_INVALID"), Some(ErrorCode::SizeInvalid));
        assert_eq!(ErrorCode::from_code_str("INTERNAL_ERROR"), Some(ErrorCode::Internal));
        assert_eq!(
            ErrorCode::from_code_str("MANIFEST_TOO_LARGE"),
            Some(ErrorCode::ManifestTooLarge)
        );
        assert_eq!(ErrorCode::from_code_str("blob_unknown"), None);
    }

    #[test]
    fn oci_error_codes() {
        let s = || "x".to_string();
        assert_eq!(OciError::InvalidDigest(s()).code(), ErrorCode::DigestInvalid);
        assert_eq!(
            OciError::UnsupportedDigestAlgorithm(s()).code(),
            ErrorCode::DigestInvalid
        );
        assert_eq!(OciError::InvalidName(s()).code(), ErrorCode::NameInvalid);
        assert_eq!(OciError::InvalidTag(s()).code(), ErrorCode::ManifestInvalid);
        assert_eq!(OciError::InvalidReference(s()).code(), ErrorCode::ManifestInvalid);
        assert_eq!(OciError::InvalidManifest(s()).code(), ErrorCode::ManifestInvalid);
        assert_eq!(OciError::UnsupportedManifest(s()).code(), ErrorCode::ManifestInvalid);
        let too_large = OciError::ManifestTooLarge { size: 10, limit: 5 };
        assert_eq!(too_large.code(), ErrorCode::ManifestTooLarge);
        assert_eq!(
            too_large.to_string(),
            "manifest too large: 10 bytes exceeds the limit of 5 bytes"
        );
    }
}
