//! Benchmark data (real images from the testkit's generator: tar layers of random
//! bytes, a config with correct `diff_ids`, an OCI manifest), held as [`Bytes`] so
//! the pushes slice them without copies, and a pushing client that speaks the OCI
//! API the way skopeo does: HEAD blob, POST upload, one streamed PATCH, PUT
//! `?digest=`, PUT manifest.

use std::time::Duration;

use anyhow::Context;
use berth_testkit::ImageBuilder;
use berth_testkit::image::MEDIA_OCI_MANIFEST;
use berth_testkit::image::random_tar_layer;
use berth_testkit::registry::expect_status;
use berth_testkit::registry::location;
use berth_testkit::sha256_digest;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::Url;

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

    /// A tar layer of [`random_tar_layer`] (`size` rounded up to tar blocks).
    pub fn tar_layer(size: u64, seed: u64, name: &str) -> anyhow::Result<Blob> {
        Ok(Blob::new(random_tar_layer(size, seed, name)?))
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// A complete image: config, layers, manifest.
#[derive(Clone, Debug)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

impl Image {
    /// An OCI image of uncompressed tar archives `layers`; `label` goes into the
    /// config (label `berth.bench`) so images with the same layers still differ.
    pub fn build(layers: Vec<Vec<u8>>, label: &str) -> anyhow::Result<Image> {
        let builder = layers
            .into_iter()
            .fold(ImageBuilder::new(), ImageBuilder::tar_layer_blob);
        // The builder (and its copy of the layers) goes at the end of this
        // statement; the image keeps the built blobs.
        let built = builder.label("berth.bench", label).build()?;
        Ok(Image {
            config: Blob {
                digest: built.config_digest,
                bytes: built.config.into(),
            },
            layers: built
                .layers
                .into_iter()
                .map(|l| Blob {
                    digest: l.digest,
                    bytes: l.blob.into(),
                })
                .collect(),
            manifest: Blob {
                digest: built.manifest_digest,
                bytes: built.manifest.into(),
            },
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
        let resp = expect_status(resp, StatusCode::ACCEPTED, "POST upload").await?;
        let upload_url = join_location(base, &resp)?;

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
        let resp = expect_status(resp, StatusCode::ACCEPTED, "PATCH upload").await?;
        let mut finish = join_location(base, &resp)?;
        finish.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .http
            .put(finish)
            .header("Content-Length", "0")
            .send()
            .await
            .context("PUT upload")?;
        expect_status(resp, StatusCode::CREATED, "PUT upload ?digest=").await?;
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
        expect_status(resp, StatusCode::CREATED, "PUT manifest").await?;
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

/// The upload's Location, which may be relative to `base`.
fn join_location(base: &Url, resp: &reqwest::Response) -> anyhow::Result<Url> {
    let loc = location(resp)?;
    base.join(&loc).with_context(|| format!("bad Location {loc:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_references_its_blobs_and_its_label_makes_it_differ() {
        let tar = random_tar_layer(4096, 1, "a").unwrap();
        let layer = Blob::new(tar.clone());
        let image = Image::build(vec![tar.clone()], "x").unwrap();
        assert_eq!(image.layers[0].bytes, layer.bytes);
        let m: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(m["mediaType"], MEDIA_OCI_MANIFEST);
        assert_eq!(m["layers"][0]["digest"], layer.digest);
        assert_eq!(m["layers"][0]["size"], layer.size());
        assert_eq!(m["config"]["digest"], image.config.digest);
        let c: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], layer.digest);
        assert_eq!(c["config"]["Labels"]["berth.bench"], "x");
        assert_eq!(image.manifest.digest, sha256_digest(&image.manifest.bytes));
        assert_eq!(image.config.digest, sha256_digest(&image.config.bytes));
        let other = Image::build(vec![tar], "y").unwrap();
        assert_ne!(other.manifest.digest, image.manifest.digest);
    }
}
