//! The rules of a registry, in one place.
//!
//! `berth-registry` holds the use-cases of OCI distribution: uploads (start,
//! continue, finish, cancel, expire), monolithic pushes and cross-repository mounts,
//! manifests and tags (put, get, delete), referrers, listings. It combines the blob
//! bytes (`berth-blob`) with the replicated metadata (`berth-cluster`, `berth-meta`):
//! bytes are written and verified first, then one command makes them visible, so a
//! failure at any step leaves nothing half-visible.
//!
//! It is called by `berth-api` and knows nothing of HTTP framing: requests arrive as
//! typed values (`RepoName`, `Reference`, `Digest`) and errors leave as
//! [`RegistryError`], which carries the spec's error code.

mod error;
mod handover;
mod hashing;
mod registry;
mod stream;
mod uploads;

pub use berth_blob::ByteRange;
pub use berth_blob::ByteStream;
pub use error::RegistryError;
pub use registry::BlobBody;
pub use registry::BlobDelivery;
pub use registry::Manifest;
pub use registry::MountResult;
pub use registry::PutManifestResult;
pub use registry::Registry;
pub use registry::RegistryOptions;
pub use registry::TagReads;
pub use registry::UploadStatus;
