//! Deterministic test data and real OCI image layouts.
//!
//! [`ImageBuilder`] writes an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) holding one image: layers are real tar archives (gzip by default)
//! that podman and docker can unpack, the config has correct `rootfs.diff_ids`, and
//! `index.json` tags it with `org.opencontainers.image.ref.name`. Same input, same
//! bytes: tar headers carry a fixed mtime and owner, gzip carries no timestamp.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;
use serde_json::json;
use sha2::Digest as _;
use sha2::Sha256;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The OCI empty descriptor's content `{}`.
pub const EMPTY_JSON_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Fixed mtime for tar entries (2023-11-14T22:13:20Z).
const TAR_MTIME: u64 = 1_700_000_000;
const CREATED: &str = "2023-11-14T22:13:20Z";

/// `len` pseudo-random bytes from `seed` (xorshift64*; same seed, same bytes).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_random(&mut out, seed);
    out
}

/// Fills `buf` as [`random_bytes`] would; chunked callers pass distinct seeds.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    // A zero state would stay zero; mix the seed so nearby seeds differ everywhere.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }
}

/// "sha256:<hex>" of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One regular file in a layer.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Path inside the image, relative ("etc/hello.txt"); a leading '/' is stripped.
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

#[derive(Debug, Clone)]
enum LayerSpec {
    Files {
        files: Vec<FileEntry>,
        gzip: bool,
    },
    /// An uncompressed tar archive as given.
    Tar(Vec<u8>),
}

/// Builds a one-image OCI layout. Layers are gzip unless added with `tar_layer`.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<LayerSpec>,
    ref_name: String,
    cmd: Option<Vec<String>>,
    labels: Vec<(String, String)>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            ref_name: "latest".into(),
            cmd: None,
            labels: Vec::new(),
        }
    }

    /// Adds a gzip-compressed layer with `files` (path, content), mode 0644.
    pub fn layer(self, files: &[(&str, &[u8])]) -> Self {
        self.push_layer(files, true)
    }

    /// Adds an uncompressed tar layer.
    pub fn tar_layer(self, files: &[(&str, &[u8])]) -> Self {
        self.push_layer(files, false)
    }

    /// Adds a layer of explicit entries (e.g. an executable with mode 0755).
    pub fn layer_entries(mut self, files: Vec<FileEntry>, gzip: bool) -> Self {
        self.layers.push(LayerSpec::Files { files, gzip });
        self
    }

    /// Adds an uncompressed tar layer that is already built (e.g. a big
    /// [`random_tar_layer`]), taken as it is.
    pub fn tar_layer_blob(mut self, tar: Vec<u8>) -> Self {
        self.layers.push(LayerSpec::Tar(tar));
        self
    }

    /// The tag recorded as `org.opencontainers.image.ref.name` in `index.json`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.ref_name = tag.into();
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }

    /// A config label; also a cheap way to make otherwise equal images differ.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    fn push_layer(mut self, files: &[(&str, &[u8])], gzip: bool) -> Self {
        let files = files
            .iter()
            .map(|(path, content)| FileEntry {
                path: (*path).to_string(),
                content: content.to_vec(),
                mode: 0o644,
            })
            .collect();
        self.layers.push(LayerSpec::Files { files, gzip });
        self
    }

    /// Builds every blob in memory without writing a layout.
    pub fn build(&self) -> anyhow::Result<OciImage> {
        let mut layers = Vec::new();
        for spec in &self.layers {
            let (tar, compress) = match spec {
                LayerSpec::Files { files, gzip } => (tar_archive(files)?, *gzip),
                LayerSpec::Tar(tar) => (tar.clone(), false),
            };
            let diff_id = sha256_digest(&tar);
            let (blob, media_type, digest) = if compress {
                let blob = gzip(&tar)?;
                let digest = sha256_digest(&blob);
                (blob, MEDIA_OCI_LAYER_GZIP, digest)
            } else {
                // An uncompressed layer is its own diff: one hash of it is enough.
                (tar, MEDIA_OCI_LAYER_TAR, diff_id.clone())
            };
            layers.push(BuiltLayer {
                media_type: media_type.to_string(),
                digest,
                size: blob.len() as u64,
                diff_id,
                blob,
            });
        }

        let mut image_config = serde_json::Map::new();
        image_config.insert("Env".into(), json!(["PATH=/bin:/usr/bin"]));
        if let Some(cmd) = &self.cmd {
            image_config.insert("Cmd".into(), json!(cmd));
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            image_config.insert("Labels".into(), Value::Object(labels));
        }
        let history: Vec<Value> = (0..layers.len())
            .map(|i| json!({"created": CREATED, "created_by": format!("berth-testkit layer {i}")}))
            .collect();
        let config = serde_json::to_vec(&json!({
            "created": CREATED,
            "architecture": "amd64",
            "os": "linux",
            "config": Value::Object(image_config),
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": history,
        }))?;
        let config_digest = sha256_digest(&config);

        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {
                "mediaType": MEDIA_OCI_CONFIG,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        }))?;

        Ok(OciImage {
            layout_dir: PathBuf::new(),
            ref_name: self.ref_name.clone(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            layers,
        })
    }

    /// Builds and writes the layout into `dir` (created; must not hold another layout).
    pub fn write(&self, dir: impl AsRef<Path>) -> anyhow::Result<OciImage> {
        let dir = dir.as_ref();
        let mut image = self.build()?;
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let write_blob = |digest: &str, data: &[u8]| -> anyhow::Result<()> {
            let hex = digest.strip_prefix("sha256:").context("digest algorithm")?;
            std::fs::write(blobs.join(hex), data).with_context(|| format!("writing blob {digest}"))
        };
        for layer in &image.layers {
            write_blob(&layer.digest, &layer.blob)?;
        }
        write_blob(&image.config_digest, &image.config)?;
        write_blob(&image.manifest_digest, &image.manifest)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [{
                "mediaType": MEDIA_OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "annotations": { REF_NAME_ANNOTATION: image.ref_name },
            }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        image.layout_dir = dir.to_path_buf();
        Ok(image)
    }
}

/// One layer blob as built.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub media_type: String,
    /// Digest of the blob as stored (compressed if gzip).
    pub digest: String,
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    pub blob: Vec<u8>,
}

/// A built image: every blob's bytes, and where its layout was written (if it was).
#[derive(Debug, Clone)]
pub struct OciImage {
    /// Empty when only `build()` was called.
    pub layout_dir: PathBuf,
    pub ref_name: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<BuiltLayer>,
}

impl OciImage {
    /// Source reference for skopeo: "oci:DIR:TAG".
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout_dir.display(), self.ref_name)
    }

    /// Path of a blob in the written layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.layout_dir.join("blobs").join("sha256").join(hex)
    }

    /// The manifest's descriptor (for `subject` fields and indexes).
    pub fn manifest_descriptor(&self) -> Value {
        json!({
            "mediaType": MEDIA_OCI_MANIFEST,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
        })
    }
}

/// A tar archive of `files` with parent directories, deterministic headers.
pub fn tar_archive(files: &[FileEntry]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for file in files {
        let path = file.path.trim_start_matches('/');
        anyhow::ensure!(!path.is_empty(), "empty file path in layer");
        let mut parent = Path::new(path).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent {
            if p.as_os_str().is_empty() {
                break;
            }
            if dirs.insert(p.to_path_buf()) {
                missing.push(p.to_path_buf());
            }
            parent = p.parent();
        }
        for dir in missing.into_iter().rev() {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(TAR_MTIME);
            header.set_uid(0);
            header.set_gid(0);
            builder.append_data(&mut header, format!("{}/", dir.display()), std::io::empty())?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(file.mode);
        header.set_size(file.content.len() as u64);
        header.set_mtime(TAR_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, file.content.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

const TAR_BLOCK: usize = 512;

/// `size` rounded up to whole tar blocks, at least a header, one data block and
/// the end-of-archive marker: the size of [`random_tar_layer`]`(size, ..)`.
pub fn tar_layer_size(size: u64) -> u64 {
    let block = TAR_BLOCK as u64;
    size.div_ceil(block).max(4) * block
}

/// An uncompressed tar archive of exactly [`tar_layer_size`]`(size)` bytes holding
/// one file `name` of [`random_bytes`] from `seed`, built in place (one buffer of
/// the archive's size, however big).
pub fn random_tar_layer(size: u64, seed: u64, name: &str) -> anyhow::Result<Vec<u8>> {
    let total = usize::try_from(tar_layer_size(size)).context("layer too large for memory")?;
    let content_len = total - 3 * TAR_BLOCK;
    let mut header = tar::Header::new_ustar();
    header.set_path(name).with_context(|| format!("tar path {name:?}"))?;
    header.set_size(content_len as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(TAR_MTIME);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = vec![0u8; total];
    out[..TAR_BLOCK].copy_from_slice(header.as_bytes());
    fill_random(&mut out[TAR_BLOCK..TAR_BLOCK + content_len], seed);
    // The last two blocks stay zero: end of archive.
    Ok(out)
}

/// Gzip with no timestamp in the header (deterministic).
pub fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Files in a layer blob (tar, or gzip'd tar detected by magic): (path, content) of
/// regular files, paths without a leading "./" or "/".
pub fn layer_files(blob: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = if blob.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").trim_start_matches('/').to_string();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        out.push((path, content));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_is_deterministic_and_seeded() {
        assert_eq!(random_bytes(1001, 7), random_bytes(1001, 7));
        assert_ne!(random_bytes(64, 7), random_bytes(64, 8));
        assert_eq!(&random_bytes(1001, 7)[..1000], &random_bytes(1000, 7)[..]);
    }

    #[test]
    fn a_random_tar_layer_is_a_readable_archive_of_the_requested_size() {
        let bytes = random_tar_layer(10_000, 7, "data.bin").unwrap();
        assert_eq!(bytes.len() as u64, tar_layer_size(10_000));
        assert_eq!(bytes.len() % 512, 0);
        let files = layer_files(&bytes).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "data.bin");
        assert_eq!(files[0].1.len(), bytes.len() - 1536);
        assert_eq!(files[0].1, random_bytes(bytes.len() - 1536, 7));
        assert_eq!(tar_layer_size(1), 2048);
        assert_eq!(tar_layer_size(1 << 20), 1 << 20);
    }

    #[test]
    fn a_prebuilt_tar_layer_is_taken_as_it_is() {
        let tar = random_tar_layer(4096, 1, "a").unwrap();
        let image = ImageBuilder::new()
            .tar_layer_blob(tar.clone())
            .label("k", "v")
            .build()
            .unwrap();
        assert_eq!(image.layers[0].blob, tar);
        assert_eq!(image.layers[0].digest, sha256_digest(&tar));
        assert_eq!(image.layers[0].diff_id, image.layers[0].digest);
        assert_eq!(image.layers[0].media_type, MEDIA_OCI_LAYER_TAR);
        let manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], image.layers[0].digest);
        let other = ImageBuilder::new().tar_layer_blob(tar).label("k", "w").build().unwrap();
        assert_ne!(
            other.manifest_digest, image.manifest_digest,
            "labels make images differ"
        );
    }

    #[test]
    fn empty_json_digest_matches() {
        assert_eq!(sha256_digest(b"{}"), EMPTY_JSON_DIGEST);
    }

    #[test]
    fn layout_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let image = ImageBuilder::new()
            .layer(&[("etc/hello.txt", b"hello"), ("etc/deep/x.bin", b"x")])
            .tar_layer(&[("top.txt", b"top")])
            .tag("v1")
            .write(dir.path())
            .unwrap();
        assert_eq!(image.layers.len(), 2);
        let stored = std::fs::read(image.blob_path(&image.manifest_digest)).unwrap();
        assert_eq!(sha256_digest(&stored), image.manifest_digest);
        let files = layer_files(&image.layers[0].blob).unwrap();
        assert_eq!(
            files,
            vec![
                ("etc/hello.txt".to_string(), b"hello".to_vec()),
                ("etc/deep/x.bin".to_string(), b"x".to_vec())
            ]
        );
        let config: Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], image.layers[0].diff_id);
        assert_eq!(config["rootfs"]["diff_ids"][1], image.layers[1].digest);
        let index: Value = serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME_ANNOTATION], "v1");
        // Deterministic.
        let again = ImageBuilder::new()
            .layer(&[("etc/hello.txt", b"hello"), ("etc/deep/x.bin", b"x")])
            .tar_layer(&[("top.txt", b"top")])
            .build()
            .unwrap();
        assert_eq!(again.manifest_digest, image.manifest_digest);
    }
}
