//! Well-known media types and helpers for comparing them.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (schema 2).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 manifest (unsupported).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker schema 1 manifest (unsupported).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// The OCI empty descriptor's media type (`{}`).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker foreign (non-distributable) layer.
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The manifest media types berth accepts.
pub const SUPPORTED_MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// Strips parameters (`; charset=utf-8`) and surrounding whitespace from a
/// media type / `Content-Type` value and lowercases it.
pub fn normalize_media_type(mt: &str) -> String {
    let essence = mt.split(';').next().unwrap_or_default();
    essence.trim().to_ascii_lowercase()
}

/// Whether `mt` (parameters allowed, case-insensitive) is one of the four
/// supported manifest media types.
pub fn is_manifest_media_type(mt: &str) -> bool {
    let mt = normalize_media_type(mt);
    SUPPORTED_MANIFEST_TYPES.contains(&mt.as_str())
}

/// Whether `mt` is a Docker schema 1 manifest media type.
pub fn is_schema1_media_type(mt: &str) -> bool {
    let mt = normalize_media_type(mt);
    mt == DOCKER_SCHEMA1 || mt == DOCKER_SCHEMA1_SIGNED
}

/// Whether a layer with this media type is non-distributable (foreign) and
/// therefore not expected to exist as a blob in the registry.
pub fn is_non_distributable(mt: &str) -> bool {
    let mt = mt.to_ascii_lowercase();
    mt.contains("nondistributable") || mt.contains("foreign")
}

/// Checks RFC 6838 `type "/" subtype` syntax (parameters after `;` are
/// tolerated and not checked).
pub fn is_valid_media_type(mt: &str) -> bool {
    let essence = mt.split(';').next().unwrap_or_default();
    match essence.split_once('/') {
        Some((ty, subtype)) => is_restricted_name(ty) && is_restricted_name(subtype),
        None => false,
    }
}

/// RFC 6838 `restricted-name`.
fn is_restricted_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest.len() <= 126
                && rest.iter().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+')
                })
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_type_detection() {
        for mt in SUPPORTED_MANIFEST_TYPES {
            assert!(is_manifest_media_type(mt));
        }
        assert!(is_manifest_media_type(
            "application/vnd.oci.image.manifest.v1+json; charset=utf-8"
        ));
        assert!(is_manifest_media_type(" Application/VND.oci.image.index.v1+json "));
        assert!(!is_manifest_media_type(DOCKER_SCHEMA1));
        assert!(!is_manifest_media_type("application/json"));
        assert!(is_schema1_media_type(DOCKER_SCHEMA1_SIGNED));
        assert!(!is_schema1_media_type(OCI_MANIFEST));
    }

    #[test]
    fn normalize() {
        assert_eq!(
            normalize_media_type("application/vnd.oci.image.manifest.v1+json;charset=utf-8"),
            OCI_MANIFEST
        );
        assert_eq!(normalize_media_type("  "), "");
    }

    #[test]
    fn media_type_syntax() {
        assert!(is_valid_media_type(OCI_MANIFEST));
        assert!(is_valid_media_type("application/vnd.in-toto+json"));
        assert!(is_valid_media_type("text/plain; charset=utf-8"));
        assert!(!is_valid_media_type(""));
        assert!(!is_valid_media_type("application"));
        assert!(!is_valid_media_type("application/"));
        assert!(!is_valid_media_type("/json"));
        assert!(!is_valid_media_type("application/js on"));
        assert!(!is_valid_media_type("a/b/c"));
    }

    #[test]
    fn non_distributable() {
        assert!(is_non_distributable(DOCKER_FOREIGN_LAYER));
        assert!(is_non_distributable(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
        assert!(!is_non_distributable("application/vnd.oci.image.layer.v1.tar+gzip"));
    }
}
