//! # berth-oci
//!
//! `berth-oci` owns the domain vocabulary of the berth registry: the types
//! and validation rules defined by the OCI Distribution Specification v1.1
//! and the OCI Image Specification that every other crate speaks in.
//!
//! It provides:
//!
//! * [`ErrorCode`] — the registry error codes from the distribution spec,
//!   with their wire strings and HTTP statuses — and [`OciError`], the
//!   validation error returned by every parser in this crate.
//! * [`Digest`], [`DigestAlgorithm`] and the streaming [`Hasher`].
//! * [`RepoName`], [`Tag`] and [`Reference`] (tag or digest), each with a
//!   hand-written parser that enforces the spec grammar.
//! * [`media_types`] — the well-known media type constants.
//! * [`Descriptor`] and [`ParsedManifest`] — manifest/index parsing and
//!   validation, including the information needed for blob-reference checks
//!   and the referrers API.
//!
//! This crate is deliberately pure: it performs no I/O, no HTTP and no
//! storage access. It only parses, validates and describes data handed to it,
//! so it can be used from any layer (API, metadata store, cluster, tests).

/// Implements `Serialize`/`Deserialize` for a type as its `Display` string,
/// validating through `FromStr` on the way in.
macro_rules! string_serde {
    ($ty:ty, $expecting:literal) => {
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct StrVisitor;

                impl ::serde::de::Visitor<'_> for StrVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                        v.parse::<$ty>().map_err(E::custom)
                    }
                }

                deserializer.deserialize_str(StrVisitor)
            }
        }
    };
}

mod digest;
mod error;
mod manifest;
pub mod media_types;
mod name;
mod upload;

pub use digest::Digest;
pub use digest::DigestAlgorithm;
pub use digest::Hasher;
pub use error::ErrorCode;
pub use error::OciError;
pub use manifest::Descriptor;
pub use manifest::MAX_MANIFEST_SIZE;
pub use manifest::ManifestKind;
pub use manifest::ParsedManifest;
pub use media_types::is_manifest_media_type;
pub use media_types::normalize_media_type;
pub use name::MAX_REPO_NAME_LEN;
pub use name::MAX_TAG_LEN;
pub use name::Reference;
pub use name::RepoName;
pub use name::Tag;
pub use upload::MAX_UPLOAD_ID_LEN;
pub use upload::UploadId;

/// Renders user input for inclusion in an error message: quoted, escaped and
/// truncated so that hostile input cannot bloat or corrupt messages.
pub(crate) fn quote(input: &str) -> String {
    const MAX_CHARS: usize = 80;
    let mut chars = input.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}
