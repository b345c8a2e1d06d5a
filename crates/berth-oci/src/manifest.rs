//! Descriptors and manifest parsing/validation.

use std::collections::BTreeMap;

use serde_json::Map;
use serde_json::Value;

use crate::digest::Digest;
use crate::error::OciError;
use crate::media_types;
use crate::media_types::normalize_media_type;
use crate::quote;

/// Maximum accepted manifest body size (4 MiB), enforced by
/// [`ParsedManifest::parse`].
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size of the referenced content in bytes.
    pub size: u64,
    /// Artifact type of the referenced content (referrers, index entries).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub artifact_type: Option<String>,
    /// Arbitrary annotations.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform object (index entries), kept verbatim.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub platform: Option<Value>,
    /// Alternate download URLs (foreign layers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// A descriptor with only the required fields set.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            artifact_type: None,
            annotations: None,
            platform: None,
            urls: None,
        }
    }

    /// Whether this descriptor points at a non-distributable (foreign) layer
    /// that is not expected to be stored in the registry.
    pub fn is_non_distributable(&self) -> bool {
        media_types::is_non_distributable(&self.media_type)
    }
}

/// The kinds of manifest berth accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// `application/vnd.oci.image.manifest.v1+json`
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`
    OciIndex,
    /// `application/vnd.docker.distribution.manifest.v2+json`
    DockerManifest,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    DockerManifestList,
}

impl ManifestKind {
    /// Maps a media type (parameters allowed, case-insensitive) to a kind.
    pub fn from_media_type(mt: &str) -> Option<ManifestKind> {
        match normalize_media_type(mt).as_str() {
            media_types::OCI_MANIFEST => Some(ManifestKind::OciManifest),
            media_types::OCI_INDEX => Some(ManifestKind::OciIndex),
            media_types::DOCKER_MANIFEST => Some(ManifestKind::DockerManifest),
            media_types::DOCKER_MANIFEST_LIST => Some(ManifestKind::DockerManifestList),
            _ => None,
        }
    }

    /// The canonical media type of this kind.
    pub fn media_type(&self) -> &'static str {
        match self {
            ManifestKind::OciManifest => media_types::OCI_MANIFEST,
            ManifestKind::OciIndex => media_types::OCI_INDEX,
            ManifestKind::DockerManifest => media_types::DOCKER_MANIFEST,
            ManifestKind::DockerManifestList => media_types::DOCKER_MANIFEST_LIST,
        }
    }

    /// Whether this kind is an index / manifest list.
    pub fn is_index(&self) -> bool {
        matches!(self, ManifestKind::OciIndex | ManifestKind::DockerManifestList)
    }

    /// Whether this is an OCI (as opposed to Docker) type; only OCI types
    /// carry `subject` and `artifactType`.
    pub fn is_oci(&self) -> bool {
        matches!(self, ManifestKind::OciManifest | ManifestKind::OciIndex)
    }
}

/// A validated manifest or index, reduced to what the registry needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    /// The manifest kind.
    pub kind: ManifestKind,
    /// Effective (canonical) media type: from the body's `mediaType`, else
    /// the `Content-Type`, else inferred from the body's shape.
    pub media_type: String,
    /// Config descriptor (image manifests only).
    pub config: Option<Descriptor>,
    /// Layer descriptors (image manifests only).
    pub layers: Vec<Descriptor>,
    /// Child manifest descriptors (indexes / lists only).
    pub manifests: Vec<Descriptor>,
    /// The `subject` descriptor (OCI types only).
    pub subject: Option<Descriptor>,
    /// The top-level `artifactType` (OCI types only).
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `Content-Type` values that carry no manifest type information; with these
/// (and no body `mediaType`) the kind is inferred from the body.
const GENERIC_CONTENT_TYPES: [&str; 4] = ["application/json", "application/octet-stream", "text/plain", "*/*"];

fn invalid(msg: impl Into<String>) -> OciError {
    OciError::InvalidManifest(msg.into())
}

fn schema1_unsupported() -> OciError {
    OciError::UnsupportedManifest(
        "Docker schema 1 manifests are not supported; push a Docker schema 2 or OCI manifest".into(),
    )
}

impl ParsedManifest {
    /// Parses and validates a manifest body, limiting its size to
    /// [`MAX_MANIFEST_SIZE`].
    ///
    /// `content_type` is the request's `Content-Type` header, if any
    /// (parameters such as `; charset=utf-8` are ignored).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, OciError> {
        Self::parse_with_limit(bytes, content_type, MAX_MANIFEST_SIZE)
    }

    /// Like [`ParsedManifest::parse`] with a caller-chosen size limit.
    pub fn parse_with_limit(
        bytes: &[u8],
        content_type: Option<&str>,
        limit: usize,
    ) -> Result<ParsedManifest, OciError> {
        if bytes.len() > limit {
            return Err(OciError::ManifestTooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("body is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(invalid("manifest must be a JSON object"));
        };

        let content_type = content_type.map(normalize_media_type).filter(|ct| !ct.is_empty());

        let schema_version = match non_null(&obj, "schemaVersion") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| invalid("schemaVersion must be a non-negative integer"))?,
            ),
        };
        let body_media_type = optional_string(&obj, "mediaType", "mediaType")?;

        // Docker schema 1 is recognised and rejected explicitly.
        if schema_version == Some(1)
            || body_media_type.is_some_and(media_types::is_schema1_media_type)
            || (body_media_type.is_none() && content_type.as_deref().is_some_and(media_types::is_schema1_media_type))
        {
            return Err(schema1_unsupported());
        }

        let kind = determine_kind(&obj, body_media_type, content_type.as_deref())?;

        match schema_version {
            Some(2) => {}
            Some(v) => {
                return Err(invalid(format!("unsupported schemaVersion {v}, expected 2")));
            }
            None => return Err(invalid("missing required field schemaVersion")),
        }

        let mut parsed = ParsedManifest {
            kind,
            media_type: kind.media_type().to_owned(),
            config: None,
            layers: Vec::new(),
            manifests: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations: parse_annotations(non_null(&obj, "annotations"), "annotations")?,
        };

        if kind.is_index() {
            parsed.manifests = descriptor_array(&obj, "manifests")?;
        } else {
            let config =
                non_null(&obj, "config").ok_or_else(|| invalid("image manifest is missing required field config"))?;
            parsed.config = Some(parse_descriptor(config, "config")?);
            parsed.layers = descriptor_array(&obj, "layers")?;
        }

        if kind.is_oci() {
            if let Some(subject) = non_null(&obj, "subject") {
                parsed.subject = Some(parse_descriptor(subject, "subject")?);
            }
            parsed.artifact_type = optional_string(&obj, "artifactType", "artifactType")?
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if media_types::is_valid_media_type(s) {
                        Ok(s.to_owned())
                    } else {
                        Err(invalid(format!("artifactType {} is not a valid media type", quote(s))))
                    }
                })
                .transpose()?;
        }

        Ok(parsed)
    }

    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        self.kind.is_index()
    }

    /// Blobs that must exist in the repository for this manifest to be
    /// accepted: the config and every distributable layer. Non-distributable
    /// (foreign) layers are skipped. Empty for indexes.
    pub fn blob_references(&self) -> Vec<&Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|l| !l.is_non_distributable()))
            .collect()
    }

    /// Child manifests of an index / manifest list. Empty for image manifests.
    pub fn manifest_references(&self) -> Vec<&Descriptor> {
        self.manifests.iter().collect()
    }

    /// The `artifactType` reported for this manifest by the referrers API:
    /// the top-level `artifactType`, else (image manifests) the config's
    /// media type, else `None`.
    pub fn referrer_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }

    /// The descriptor of this manifest as an entry of a referrers index.
    pub fn referrer_descriptor(&self, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest,
            size,
            artifact_type: self.referrer_artifact_type(),
            annotations: self.annotations.clone(),
            platform: None,
            urls: None,
        }
    }
}

/// Works out the manifest kind from body `mediaType`, `Content-Type` and,
/// failing both, the body's shape.
fn determine_kind(
    obj: &Map<String, Value>,
    body_media_type: Option<&str>,
    content_type: Option<&str>,
) -> Result<ManifestKind, OciError> {
    if let Some(body_mt) = body_media_type {
        let kind = ManifestKind::from_media_type(body_mt)
            .ok_or_else(|| invalid(format!("unsupported manifest media type {}", quote(body_mt))))?;
        if let Some(ct) = content_type {
            let ct_known = ManifestKind::from_media_type(ct).is_some() || media_types::is_schema1_media_type(ct);
            if ct_known && ct != normalize_media_type(body_mt) {
                return Err(invalid(format!(
                    "media type mismatch: Content-Type is {} but the manifest's mediaType is {}",
                    quote(ct),
                    quote(body_mt)
                )));
            }
        }
        return Ok(kind);
    }

    if let Some(ct) = content_type {
        if let Some(kind) = ManifestKind::from_media_type(ct) {
            return Ok(kind);
        }
        if !GENERIC_CONTENT_TYPES.contains(&ct) {
            return Err(invalid(format!(
                "unsupported manifest media type {} (from Content-Type)",
                quote(ct)
            )));
        }
    }

    if obj.contains_key("manifests") {
        Ok(ManifestKind::OciIndex)
    } else if obj.contains_key("config") || obj.contains_key("layers") {
        Ok(ManifestKind::OciManifest)
    } else {
        Err(invalid(
            "cannot determine manifest media type: no mediaType field, no manifest Content-Type, and neither manifests nor config/layers present",
        ))
    }
}

/// A field's value, treating JSON `null` as absent.
fn non_null<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn optional_string<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>, OciError> {
    match non_null(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(format!("{path} must be a string"))),
    }
}

fn descriptor_array(obj: &Map<String, Value>, key: &str) -> Result<Vec<Descriptor>, OciError> {
    let value = non_null(obj, key).ok_or_else(|| invalid(format!("missing required field {key}")))?;
    let Value::Array(items) = value else {
        return Err(invalid(format!("{key} must be an array")));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_descriptor(item, &format!("{key}[{i}]")))
        .collect()
}

fn parse_annotations(value: Option<&Value>, path: &str) -> Result<Option<BTreeMap<String, String>>, OciError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Value::Object(map) = value else {
        return Err(invalid(format!("{path} must be an object")));
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(invalid(format!("{path}[{}] must be a string", quote(k)))),
        })
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map(Some)
}

/// Validates one descriptor; `path` names it in error messages
/// (e.g. `layers[2]`).
fn parse_descriptor(value: &Value, path: &str) -> Result<Descriptor, OciError> {
    let Value::Object(obj) = value else {
        return Err(invalid(format!("{path} must be a descriptor object")));
    };

    let media_type = optional_string(obj, "mediaType", &format!("{path}.mediaType"))?
        .ok_or_else(|| invalid(format!("{path} is missing required field mediaType")))?;
    if !media_types::is_valid_media_type(media_type) {
        return Err(invalid(format!(
            "{path}.mediaType {} is not a valid media type",
            quote(media_type)
        )));
    }

    let digest_str = optional_string(obj, "digest", &format!("{path}.digest"))?
        .ok_or_else(|| invalid(format!("{path} is missing required field digest")))?;
    let digest = Digest::parse(digest_str).map_err(|e| match e {
        OciError::UnsupportedDigestAlgorithm(msg) => {
            invalid(format!("{path}.digest uses an unsupported digest algorithm: {msg}"))
        }
        other => invalid(format!("{path}.digest is invalid: {other}")),
    })?;

    let size = match non_null(obj, "size") {
        None => return Err(invalid(format!("{path} is missing required field size"))),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(format!("{path}.size must be a non-negative integer")))?,
    };

    let artifact_type = optional_string(obj, "artifactType", &format!("{path}.artifactType"))?.map(str::to_owned);

    let annotations = parse_annotations(non_null(obj, "annotations"), &format!("{path}.annotations"))?;

    let platform = match non_null(obj, "platform") {
        None => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(invalid(format!("{path}.platform must be an object"))),
    };

    let urls = match non_null(obj, "urls") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|u| {
                    u.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("{path}.urls must contain only strings")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(invalid(format!("{path}.urls must be an array"))),
    };

    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        artifact_type,
        annotations,
        platform,
        urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use crate::media_types::*;
    use serde_json::json;

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    fn d(seed: &str) -> String {
        Digest::sha256_of(seed.as_bytes()).to_string()
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn parse(v: &Value, ct: Option<&str>) -> Result<ParsedManifest, OciError> {
        ParsedManifest::parse(&bytes(v), ct)
    }

    fn oci_manifest() -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": d("config"), "size": 7023},
            "layers": [
                {"mediaType": LAYER, "digest": d("l1"), "size": 32654},
                {"mediaType": LAYER, "digest": d("l2"), "size": 16724,
                 "annotations": {"org.opencontainers.image.title": "layer2"}}
            ],
            "annotations": {"com.example.key": "value"}
        })
    }

    fn oci_index() -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d("amd64"), "size": 7143,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": d("arm64"), "size": 7682,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
            ],
            "annotations": {"com.example.index": "yes"}
        })
    }

    fn assert_invalid(result: Result<ParsedManifest, OciError>, needle: &str) {
        match result {
            Err(e @ OciError::InvalidManifest(_)) => {
                assert_eq!(e.code(), ErrorCode::ManifestInvalid);
                assert!(e.to_string().contains(needle), "expected {needle:?} in {e}");
            }
            other => panic!("expected InvalidManifest containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn oci_image_manifest() {
        let m = parse(&oci_manifest(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert!(!m.is_index());
        let config = m.config.as_ref().unwrap();
        assert_eq!(config.media_type, OCI_CONFIG);
        assert_eq!(config.size, 7023);
        assert_eq!(config.digest.to_string(), d("config"));
        assert_eq!(m.layers.len(), 2);
        assert_eq!(
            m.layers[1]
                .annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.title"))
                .map(String::as_str),
            Some("layer2")
        );
        assert!(m.manifests.is_empty());
        assert!(m.subject.is_none());
        assert!(m.artifact_type.is_none());
        assert_eq!(
            m.annotations.as_ref().and_then(|a| a.get("com.example.key")),
            Some(&"value".to_string())
        );
        let blobs: Vec<String> = m.blob_references().iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(blobs, [d("config"), d("l1"), d("l2")]);
        assert!(m.manifest_references().is_empty());
    }

    #[test]
    fn content_type_parameters_are_ignored() {
        let m = parse(
            &oci_manifest(),
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);
        // Generic / missing Content-Type is fine when the body says what it is.
        assert!(parse(&oci_manifest(), Some("application/json")).is_ok());
        assert!(parse(&oci_manifest(), None).is_ok());
        assert!(parse(&oci_manifest(), Some("")).is_ok());
    }

    #[test]
    fn oci_image_index() {
        let m = parse(&oci_index(), Some(OCI_INDEX)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciIndex);
        assert_eq!(m.media_type, OCI_INDEX);
        assert!(m.is_index());
        assert!(m.config.is_none());
        assert!(m.layers.is_empty());
        assert_eq!(m.manifests.len(), 2);
        assert_eq!(m.manifests[1].platform.as_ref().unwrap()["variant"], json!("v8"));
        assert!(m.blob_references().is_empty());
        let children: Vec<String> = m.manifest_references().iter().map(|c| c.digest.to_string()).collect();
        assert_eq!(children, [d("amd64"), d("arm64")]);
        assert_eq!(m.referrer_artifact_type(), None);
    }

    #[test]
    fn docker_v2_manifest() {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": 7023, "digest": d("cfg")},
            "layers": [
                {"mediaType": DOCKER_LAYER, "size": 32654, "digest": d("a")},
                {"mediaType": DOCKER_FOREIGN_LAYER, "size": 1000, "digest": d("win"),
                 "urls": ["https://example.com/layer.tar.gz"]}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "size": 1, "digest": d("subj")},
            "artifactType": "application/vnd.example"
        });
        let m = parse(&v, Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::DockerManifest);
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.layers.len(), 2, "foreign layers are still listed");
        assert_eq!(
            m.layers[1].urls.as_deref(),
            Some(&["https://example.com/layer.tar.gz".to_string()][..])
        );
        // Foreign layer is not required to exist as a blob.
        let blobs: Vec<String> = m.blob_references().iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(blobs, [d("cfg"), d("a")]);
        // Docker types carry neither subject nor artifactType.
        assert!(m.subject.is_none());
        assert!(m.artifact_type.is_none());
        assert_eq!(m.referrer_artifact_type().as_deref(), Some(DOCKER_CONFIG));
    }

    #[test]
    fn oci_nondistributable_layer_skipped() {
        let mut v = oci_manifest();
        v["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip");
        let m = parse(&v, None).unwrap();
        assert_eq!(m.layers.len(), 2);
        let blobs: Vec<String> = m.blob_references().iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(blobs, [d("config"), d("l2")]);
    }

    #[test]
    fn docker_manifest_list() {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "size": 7143, "digest": d("x86"),
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": DOCKER_MANIFEST, "size": 7682, "digest": d("ppc"),
                 "platform": {"architecture": "ppc64le", "os": "linux"}}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "size": 1, "digest": d("subj")}
        });
        let m = parse(&v, Some(DOCKER_MANIFEST_LIST)).unwrap();
        assert_eq!(m.kind, ManifestKind::DockerManifestList);
        assert!(m.is_index());
        assert_eq!(m.manifest_references().len(), 2);
        assert!(m.subject.is_none(), "subject ignored on Docker lists");
        assert!(m.blob_references().is_empty());
    }

    #[test]
    fn artifact_with_artifact_type_and_subject() {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom.v1",
            "config": {"mediaType": OCI_EMPTY, "digest": d("{}"), "size": 2},
            "layers": [
                {"mediaType": "application/spdx+json", "digest": d("sbom"), "size": 1234}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d("image"), "size": 7682},
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
        });
        let m = parse(&v, Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.example.sbom.v1"));
        let subject = m.subject.as_ref().unwrap();
        assert_eq!(subject.digest.to_string(), d("image"));
        assert_eq!(subject.size, 7682);
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.example.sbom.v1")
        );
        // subject is not a blob reference
        assert_eq!(m.blob_references().len(), 2);

        let own = Digest::sha256_of(&bytes(&v));
        let desc = m.referrer_descriptor(own.clone(), 999);
        assert_eq!(desc.media_type, OCI_MANIFEST);
        assert_eq!(desc.digest, own);
        assert_eq!(desc.size, 999);
        assert_eq!(desc.artifact_type.as_deref(), Some("application/vnd.example.sbom.v1"));
        assert_eq!(desc.annotations, m.annotations);
        assert!(desc.platform.is_none() && desc.urls.is_none());

        let json = serde_json::to_value(&desc).unwrap();
        assert_eq!(json["mediaType"], json!(OCI_MANIFEST));
        assert_eq!(json["artifactType"], json!("application/vnd.example.sbom.v1"));
        assert!(json.get("platform").is_none());
        assert!(json.get("urls").is_none());
    }

    #[test]
    fn index_with_subject_and_artifact_type() {
        let mut v = oci_index();
        v["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": d("s"), "size": 3});
        v["artifactType"] = json!("application/vnd.example.bundle");
        let m = parse(&v, None).unwrap();
        assert_eq!(m.subject.as_ref().map(|s| s.size), Some(3));
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.example.bundle")
        );
    }

    #[test]
    fn referrer_artifact_type_falls_back_to_config_media_type() {
        let mut v = oci_manifest();
        v["config"]["mediaType"] = json!("application/vnd.example.signature.config");
        v["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": d("s"), "size": 3});
        let m = parse(&v, None).unwrap();
        assert!(m.artifact_type.is_none());
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.example.signature.config")
        );
        let desc = m.referrer_descriptor(Digest::sha256_of(b"m"), 10);
        assert_eq!(
            desc.artifact_type.as_deref(),
            Some("application/vnd.example.signature.config")
        );

        // Empty artifactType counts as missing.
        v["artifactType"] = json!("");
        let m = parse(&v, None).unwrap();
        assert!(m.artifact_type.is_none());
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.example.signature.config")
        );
    }

    #[test]
    fn media_type_from_content_type_when_body_has_none() {
        let mut v = oci_manifest();
        v.as_object_mut().unwrap().remove("mediaType");
        let m = parse(&v, Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);

        let m = parse(&v, Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::DockerManifest);
        assert_eq!(m.media_type, DOCKER_MANIFEST);

        let mut idx = oci_index();
        idx.as_object_mut().unwrap().remove("mediaType");
        let m = parse(&idx, Some("application/vnd.oci.image.index.v1+json; charset=utf-8")).unwrap();
        assert_eq!(m.kind, ManifestKind::OciIndex);

        // Content-Type says index but body is an image manifest.
        assert_invalid(parse(&v, Some(OCI_INDEX)), "manifests");
    }

    #[test]
    fn media_type_inferred_when_absent_everywhere() {
        let mut v = oci_manifest();
        v.as_object_mut().unwrap().remove("mediaType");
        assert_eq!(parse(&v, None).unwrap().kind, ManifestKind::OciManifest);
        assert_eq!(
            parse(&v, Some("application/json")).unwrap().kind,
            ManifestKind::OciManifest
        );

        let mut idx = oci_index();
        idx.as_object_mut().unwrap().remove("mediaType");
        assert_eq!(parse(&idx, None).unwrap().kind, ManifestKind::OciIndex);

        assert_invalid(
            parse(&json!({"schemaVersion": 2}), None),
            "cannot determine manifest media type",
        );
        // An unknown, non-generic Content-Type without body mediaType.
        assert_invalid(
            parse(&v, Some("application/vnd.example.thing+json")),
            "unsupported manifest media type",
        );
    }

    #[test]
    fn media_type_mismatch() {
        assert_invalid(parse(&oci_manifest(), Some(OCI_INDEX)), "media type mismatch");
        assert_invalid(parse(&oci_manifest(), Some(DOCKER_MANIFEST)), "media type mismatch");
        assert_invalid(parse(&oci_index(), Some(DOCKER_MANIFEST_LIST)), "media type mismatch");
        assert_invalid(
            parse(&oci_manifest(), Some(DOCKER_SCHEMA1_SIGNED)),
            "media type mismatch",
        );
    }

    #[test]
    fn unknown_body_media_type() {
        let mut v = oci_manifest();
        v["mediaType"] = json!("application/vnd.oci.artifact.manifest.v1+json");
        assert_invalid(parse(&v, None), "unsupported manifest media type");
        v["mediaType"] = json!(42);
        assert_invalid(parse(&v, None), "mediaType must be a string");
    }

    #[test]
    fn schema1_rejected() {
        let signed = json!({
            "schemaVersion": 1,
            "name": "library/hello",
            "tag": "latest",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": d("x")}],
            "history": [],
            "signatures": []
        });
        for ct in [
            Some(DOCKER_SCHEMA1_SIGNED),
            Some(DOCKER_SCHEMA1),
            Some(OCI_MANIFEST),
            None,
        ] {
            match parse(&signed, ct) {
                Err(e @ OciError::UnsupportedManifest(_)) => {
                    assert_eq!(e.code(), ErrorCode::ManifestInvalid);
                    assert!(e.to_string().contains("schema 1"), "{e}");
                }
                other => panic!("{ct:?}: expected UnsupportedManifest, got {other:?}"),
            }
        }
        // schema1 media type in the body, even with schemaVersion 2.
        let mut v = oci_manifest();
        v["mediaType"] = json!(DOCKER_SCHEMA1);
        assert!(matches!(parse(&v, None), Err(OciError::UnsupportedManifest(_))));
        // schema1 Content-Type, no body media type.
        v.as_object_mut().unwrap().remove("mediaType");
        assert!(matches!(
            parse(&v, Some(DOCKER_SCHEMA1_SIGNED)),
            Err(OciError::UnsupportedManifest(_))
        ));
    }

    #[test]
    fn schema_version_must_be_two() {
        let mut v = oci_manifest();
        v.as_object_mut().unwrap().remove("schemaVersion");
        assert_invalid(parse(&v, None), "schemaVersion");
        v["schemaVersion"] = json!(3);
        assert_invalid(parse(&v, None), "schemaVersion 3");
        v["schemaVersion"] = json!("2");
        assert_invalid(parse(&v, None), "schemaVersion");
        v["schemaVersion"] = json!(-2);
        assert_invalid(parse(&v, None), "schemaVersion");
    }

    #[test]
    fn invalid_json() {
        assert_invalid(
            ParsedManifest::parse(b"{not json", Some(OCI_MANIFEST)),
            "not valid JSON",
        );
        assert_invalid(ParsedManifest::parse(b"", None), "not valid JSON");
        assert_invalid(ParsedManifest::parse(b"[1,2,3]", Some(OCI_MANIFEST)), "JSON object");
        assert_invalid(ParsedManifest::parse(b"\"str\"", Some(OCI_MANIFEST)), "JSON object");
        assert_invalid(
            ParsedManifest::parse(&[0xff, 0xfe, 0x00], Some(OCI_MANIFEST)),
            "not valid JSON",
        );
    }

    #[test]
    fn missing_config_or_layers() {
        let mut v = oci_manifest();
        v.as_object_mut().unwrap().remove("config");
        assert_invalid(parse(&v, None), "config");

        let mut v = oci_manifest();
        v["config"] = Value::Null;
        assert_invalid(parse(&v, None), "config");

        let mut v = oci_manifest();
        v["config"] = json!("sha256:abc");
        assert_invalid(parse(&v, None), "config must be a descriptor object");

        let mut v = oci_manifest();
        v.as_object_mut().unwrap().remove("layers");
        assert_invalid(parse(&v, None), "missing required field layers");

        let mut v = oci_manifest();
        v["layers"] = json!({});
        assert_invalid(parse(&v, None), "layers must be an array");

        let mut v = oci_index();
        v.as_object_mut().unwrap().remove("manifests");
        assert_invalid(parse(&v, None), "missing required field manifests");
    }

    #[test]
    fn empty_layers_allowed() {
        let mut v = oci_manifest();
        v["layers"] = json!([]);
        let m = parse(&v, None).unwrap();
        assert!(m.layers.is_empty());
        assert_eq!(m.blob_references().len(), 1);

        let mut v = oci_index();
        v["manifests"] = json!([]);
        assert!(parse(&v, None).unwrap().manifests.is_empty());
    }

    #[test]
    fn bad_descriptors() {
        let mut v = oci_manifest();
        v["layers"][1]["digest"] = json!("sha256:1234");
        assert_invalid(parse(&v, None), "layers[1].digest is invalid");

        let mut v = oci_manifest();
        v["layers"][0]["digest"] = json!(format!("md5:{}", "a".repeat(32)));
        assert_invalid(parse(&v, None), "unsupported digest algorithm");

        let mut v = oci_manifest();
        v["layers"][0].as_object_mut().unwrap().remove("digest");
        assert_invalid(parse(&v, None), "layers[0] is missing required field digest");

        let mut v = oci_manifest();
        v["layers"][0]["mediaType"] = json!("not a media type");
        assert_invalid(parse(&v, None), "layers[0].mediaType");

        let mut v = oci_manifest();
        v["config"].as_object_mut().unwrap().remove("mediaType");
        assert_invalid(parse(&v, None), "config is missing required field mediaType");

        let mut v = oci_manifest();
        v["config"]["mediaType"] = json!(5);
        assert_invalid(parse(&v, None), "config.mediaType must be a string");

        for size in [json!(-1), json!(1.5), json!("12"), Value::Null] {
            let mut v = oci_manifest();
            v["layers"][0]["size"] = size;
            assert_invalid(parse(&v, None), "layers[0]");
        }

        let mut v = oci_manifest();
        v["layers"][0]["size"] = json!(0);
        assert_eq!(parse(&v, None).unwrap().layers[0].size, 0);

        let mut v = oci_manifest();
        v["layers"][0]["annotations"] = json!({"k": 1});
        assert_invalid(parse(&v, None), "annotations");

        let mut v = oci_manifest();
        v["layers"][0]["urls"] = json!([1]);
        assert_invalid(parse(&v, None), "urls");

        let mut v = oci_index();
        v["manifests"][0]["platform"] = json!("linux/amd64");
        assert_invalid(parse(&v, None), "manifests[0].platform");

        let mut v = oci_manifest();
        v["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": "bogus", "size": 1});
        assert_invalid(parse(&v, None), "subject.digest");

        let mut v = oci_manifest();
        v["layers"] = json!([42]);
        assert_invalid(parse(&v, None), "layers[0] must be a descriptor object");

        let mut v = oci_manifest();
        v["annotations"] = json!(["a"]);
        assert_invalid(parse(&v, None), "annotations must be an object");

        let mut v = oci_manifest();
        v["artifactType"] = json!(7);
        assert_invalid(parse(&v, None), "artifactType must be a string");

        let mut v = oci_manifest();
        v["artifactType"] = json!("nope");
        assert_invalid(parse(&v, None), "artifactType");
    }

    #[test]
    fn size_limit() {
        let mut v = oci_manifest();
        v["annotations"] = json!({"pad": "x".repeat(MAX_MANIFEST_SIZE)});
        let body = bytes(&v);
        match ParsedManifest::parse(&body, None) {
            Err(e @ OciError::ManifestTooLarge { .. }) => {
                assert_eq!(e.code(), ErrorCode::ManifestTooLarge);
                assert_eq!(e.code().http_status(), 413);
            }
            other => panic!("expected ManifestTooLarge, got {other:?}"),
        }
        let small = bytes(&oci_manifest());
        assert!(ParsedManifest::parse_with_limit(&small, None, small.len()).is_ok());
        assert!(matches!(
            ParsedManifest::parse_with_limit(&small, None, small.len() - 1),
            Err(OciError::ManifestTooLarge { .. })
        ));
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let mut v = oci_manifest();
        v["subject"] = Value::Null;
        v["annotations"] = Value::Null;
        v["artifactType"] = Value::Null;
        v["layers"][0]["urls"] = Value::Null;
        let m = parse(&v, None).unwrap();
        assert!(m.subject.is_none() && m.annotations.is_none() && m.artifact_type.is_none());
        assert!(m.layers[0].urls.is_none());
    }

    #[test]
    fn descriptor_serde() {
        let desc = Descriptor::new(OCI_MANIFEST, Digest::sha256_of(b"x"), 5);
        let json = serde_json::to_value(&desc).unwrap();
        assert_eq!(
            json,
            json!({"mediaType": OCI_MANIFEST, "digest": Digest::sha256_of(b"x").to_string(), "size": 5})
        );
        let back: Descriptor = serde_json::from_value(json).unwrap();
        assert_eq!(back, desc);
        assert!(
            serde_json::from_value::<Descriptor>(json!({"mediaType": OCI_MANIFEST, "digest": "sha256:bad", "size": 5}))
                .is_err()
        );
    }

    #[test]
    fn manifest_kind_helpers() {
        for kind in [
            ManifestKind::OciManifest,
            ManifestKind::OciIndex,
            ManifestKind::DockerManifest,
            ManifestKind::DockerManifestList,
        ] {
            assert_eq!(ManifestKind::from_media_type(kind.media_type()), Some(kind));
            assert!(is_manifest_media_type(kind.media_type()));
        }
        assert_eq!(ManifestKind::from_media_type(DOCKER_SCHEMA1), None);
        assert!(ManifestKind::OciIndex.is_index() && ManifestKind::DockerManifestList.is_index());
        assert!(!ManifestKind::OciManifest.is_index());
    }
}
