//! Benchmark data (real images: tar layers of random bytes, a config with correct
//! `diff_ids`, an OCI manifest) and a pushing client that speaks the OCI API the way
//! skopeo does: HEAD blob, POST upload, one streamed PATCH, PUT `?digest=`, PUT
//! manifest.

use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use berth_testkit::image::MEDIA_OCI_CONFIG;
use berth_testkit::image::MEDIA_OCI_LAYER_TAR;
use berth_testkit::image::MEDIA_OCI_MANIFEST;
use berth_testkit::image::fill_random;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::Url;
use serde_json::json;
use sha2::Digest as _;
use sha2::Sha256;

const TAR_BLOCK: usize = 512;
const TAR_MTIME: u64 = 1_700_000_000;
/// Size of the pieces a streamed PATCH body is cut into.
pub const STREAM_CHUNK: usize = 1024 * 1024;

/// A blob and its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub bytes: Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        Blob { bytes, digest }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// "sha256:<hex>" of `data`, hashed in 1 MiB steps.
pub fn sha256_digest(data: &[u8]) -> String {
    let mut h = Sha256::new();
    for chunk in data.chunks(1024 * 1024) {
        h.update(chunk);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `size` rounded up to whole tar blocks, at least a header, one data block and
/// the end-of-archive marker.
pub fn tar_layer_size(size: u64) -> u64 {
    let block = TAR_BLOCK as u64;
    size.div_ceil(block).max(4) * block
}

/// An uncompressed tar archive of exactly [`tar_layer_size`]`(size)` bytes holding
/// one file `name` of pseudo-random content from `seed`.
pub fn tar_layer(size: u64, seed: u64, name: &str) -> anyhow::Result<Vec<u8>> {
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

/// A complete image: config, layers, manifest.
#[derive(Clone, Debug)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

impl Image {
    /// An OCI image of uncompressed tar `layers` (so `diff_ids` are the layer
    /// digests); `label` goes into the config and the manifest annotations so images
    /// with the same layers still differ.
    pub fn build(layers: Vec<Blob>, label: &str) -> anyhow::Result<Image> {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let config = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"], "Labels": {"berth.bench": label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|_| json!({"created": "2023-11-14T22:13:20Z", "created_by": "berth-bench"})).collect::<Vec<_>>(),
        });
        let config = Blob::new(serde_json::to_vec(&config)?);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config.digest, "size": config.size()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": MEDIA_OCI_LAYER_TAR, "digest": l.digest, "size": l.size(),
            })).collect::<Vec<_>>(),
            "annotations": {"org.opencontainers.image.title": label},
        });
        let manifest = Blob::new(serde_json::to_vec(&manifest)?);
        Ok(Image {
            config,
            layers,
            manifest,
        })
    }
}

/// The pushing side of the benchmark (reqwest: writes stream bodies).
#[derive(Clone)]
pub struct Pusher {
    http: reqwest::Client,
}

impl Pusher {
    pub fn new(request_timeout: Duration) -> anyhow::Result<Pusher> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(request_timeout)
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .context("building HTTP client")?;
        Ok(Pusher { http })
    }

    /// Pushes `blob` to `repo`: optional HEAD, POST, one PATCH (streamed in
    /// [`STREAM_CHUNK`] pieces when `streamed`, else with a Content-Length), PUT
    /// `?digest=`.
    pub async fn push_blob(
        &self,
        base: &Url,
        repo: &str,
        blob: &Blob,
        head_first: bool,
        streamed: bool,
    ) -> anyhow::Result<()> {
        if head_first {
            let url = base.join(&format!("v2/{repo}/blobs/{}", blob.digest))?;
            let resp = self.http.head(url).send().await.context("HEAD blob")?;
            if resp.status() == StatusCode::OK {
                return Ok(());
            }
        }
        let start = base.join(&format!("v2/{repo}/blobs/uploads/"))?;
        let resp = self.http.post(start).send().await.context("POST upload")?;
        let resp = expect(resp, StatusCode::ACCEPTED, "POST upload").await?;
        let upload_url = location(base, &resp)?;

        let body = if streamed {
            let chunks: Vec<Result<Bytes, std::io::Error>> = (0..blob.bytes.len())
                .step_by(STREAM_CHUNK)
                .map(|i| Ok(blob.bytes.slice(i..(i + STREAM_CHUNK).min(blob.bytes.len()))))
                .collect();
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        } else {
            reqwest::Body::from(blob.bytes.clone())
        };
        let resp = self
            .http
            .patch(upload_url)
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .context("PATCH upload")?;
        let resp = expect(resp, StatusCode::ACCEPTED, "PATCH upload").await?;
        let mut finish = location(base, &resp)?;
        finish.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .http
            .put(finish)
            .header("Content-Length", "0")
            .send()
            .await
            .context("PUT upload")?;
        expect(resp, StatusCode::CREATED, "PUT upload ?digest=").await?;
        Ok(())
    }

    pub async fn put_manifest(&self, base: &Url, repo: &str, reference: &str, manifest: &Blob) -> anyhow::Result<()> {
        let url = base.join(&format!("v2/{repo}/manifests/{reference}"))?;
        let resp = self
            .http
            .put(url)
            .header("Content-Type", MEDIA_OCI_MANIFEST)
            .body(manifest.bytes.clone())
            .send()
            .await
            .context("PUT manifest")?;
        expect(resp, StatusCode::CREATED, "PUT manifest").await?;
        Ok(())
    }

    /// Pushes every blob (HEAD first, as clients do), then the manifest under `tag`.
    pub async fn push_image(
        &self,
        base: &Url,
        repo: &str,
        tag: &str,
        image: &Image,
        streamed: bool,
    ) -> anyhow::Result<()> {
        for layer in &image.layers {
            self.push_blob(base, repo, layer, true, streamed).await?;
        }
        self.push_blob(base, repo, &image.config, true, false).await?;
        self.put_manifest(base, repo, tag, &image.manifest).await
    }
}

fn location(base: &Url, resp: &reqwest::Response) -> anyhow::Result<Url> {
    let loc = resp
        .headers()
        .get("location")
        .context("upload response without Location")?
        .to_str()
        .context("Location is not text")?;
    base.join(loc).with_context(|| format!("bad Location {loc:?}"))
}

/// `resp` if it has status `want`, else an error with the status and body start.
pub async fn expect(resp: reqwest::Response, want: StatusCode, what: &str) -> anyhow::Result<reqwest::Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    bail!("{what}: expected {want}, got {status}: {body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_layer_is_a_readable_archive_of_the_requested_size() {
        let bytes = tar_layer(10_000, 7, "data.bin").unwrap();
        assert_eq!(bytes.len() as u64, tar_layer_size(10_000));
        assert_eq!(bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("data.bin"));
        assert_eq!(entry.size() as usize, bytes.len() - 1536);
        assert!(entries.next().is_none());
        assert_eq!(tar_layer_size(1), 2048);
        assert_eq!(tar_layer_size(1 << 20), 1 << 20);
    }

    #[test]
    fn image_manifest_references_its_blobs() {
        let layer = Blob::new(tar_layer(4096, 1, "a").unwrap());
        let image = Image::build(vec![layer.clone()], "x").unwrap();
        let m: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(m["layers"][0]["digest"], layer.digest);
        assert_eq!(m["config"]["digest"], image.config.digest);
        let c: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], layer.digest);
        assert_eq!(image.manifest.digest, sha256_digest(&image.manifest.bytes));
        let other = Image::build(vec![layer], "y").unwrap();
        assert_ne!(other.manifest.digest, image.manifest.digest);
    }
}
