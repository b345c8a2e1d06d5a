//! Mapping of aws-sdk-s3 errors to [`BlobError`].
//!
//! Rules (applied after the SDK has exhausted its retries):
//! - no answer (connect/IO failure, timeout, a response that broke off),
//!   throttling (429, `SlowDown`) and 5xx → [`BlobError::Unavailable`], which
//!   the API turns into 503 + Retry-After;
//! - `NoSuchKey` / a bodiless 404 → [`Failure::is_not_found`], which callers
//!   turn into `NotFound`, `UploadNotFound` or `Ok(None)`;
//! - everything else (access denied, missing bucket, bad request, …) →
//!   [`BlobError::Backend`] with what S3 answered.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::error::SdkError;

use crate::BlobError;

/// How a failed S3 call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The object (or upload) does not exist.
    NotFound,
    /// S3 could not be reached or is overloaded: try again later.
    Unavailable,
    /// S3 answered with an error that retrying will not fix.
    Rejected,
}

/// A classified S3 failure with a human-readable account of what happened.
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: Kind,
    pub status: Option<u16>,
    pub code: Option<String>,
    /// "PutObject uploads/x/part-00001: …"
    pub detail: String,
}

impl Failure {
    pub fn is_not_found(&self) -> bool {
        self.kind == Kind::NotFound
    }

    pub fn into_blob_error(self) -> BlobError {
        match self.kind {
            Kind::Unavailable => BlobError::Unavailable(self.detail),
            Kind::NotFound | Kind::Rejected => BlobError::Backend(self.detail),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Classify an SDK error of operation `op` on `target` (a key or bucket).
pub(crate) fn classify<E>(op: &str, target: &str, err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let context = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ConstructionFailure(_) => Failure {
            kind: Kind::Rejected,
            status: None,
            code: None,
            detail: format!("S3 {op} {target}: request could not be built: {context}"),
        },
        SdkError::TimeoutError(_) => Failure {
            kind: Kind::Unavailable,
            status: None,
            code: None,
            detail: format!("S3 {op} {target}: timed out (after retries): {context}"),
        },
        SdkError::DispatchFailure(d) => Failure {
            kind: if d.is_user() { Kind::Rejected } else { Kind::Unavailable },
            status: None,
            code: None,
            detail: format!("S3 {op} {target}: no answer from S3 (after retries): {context}"),
        },
        SdkError::ResponseError(r) => Failure {
            kind: Kind::Unavailable,
            status: Some(r.raw().status().as_u16()),
            code: None,
            detail: format!("S3 {op} {target}: broken response (after retries): {context}"),
        },
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = err.code().map(str::to_owned);
            let message = err.message().unwrap_or("");
            let throttled = matches!(
                code.as_deref(),
                Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout")
            );
            let kind = if status == 429 || status >= 500 || throttled {
                Kind::Unavailable
            } else if matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) || (status == 404 && code.is_none()) {
                Kind::NotFound
            } else {
                Kind::Rejected
            };
            let shown = code.as_deref().unwrap_or("(no error code)");
            let detail = format!("S3 {op} {target}: S3 answered {status} {shown}: {message}");
            Failure {
                kind,
                status: Some(status),
                code,
                detail,
            }
        }
        _ => Failure {
            kind: Kind::Unavailable,
            status: None,
            code: None,
            detail: format!("S3 {op} {target}: {context}"),
        },
    }
}

/// Shorthand: classify and convert to a [`BlobError`] (for calls where a
/// 404 is an error like any other).
pub(crate) fn to_blob_error<E>(op: &str, target: &str, err: &SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let failure = classify(op, target, err);
    tracing::debug!(op, target, kind = ?failure.kind, status = ?failure.status,
        code = ?failure.code, "S3 call failed");
    failure.into_blob_error()
}
