use thiserror::Error;

/// Errors of the metadata store itself (not rejections of a command, see
/// [`crate::Rejection`]).
#[derive(Debug, Error)]
pub enum MetaError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record under {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("encoding {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> MetaError {
    MetaError::Corrupt {
        what: what.into(),
        reason: reason.to_string(),
    }
}
