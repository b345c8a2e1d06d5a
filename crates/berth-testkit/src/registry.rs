//! A small hand-written OCI distribution client for tests: pushes and reads that the
//! real clients cannot express (referrers, interrupted uploads, exact status checks).
//! Every helper that "succeeds" checks the status the spec requires and reports the
//! full response otherwise.

use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use reqwest::Response;
use reqwest::StatusCode;
use reqwest::header::CONTENT_LENGTH;
use reqwest::header::CONTENT_TYPE;

use crate::image::OciImage;
use crate::image::sha256_digest;

/// Client for one registry base URL ("http://127.0.0.1:PORT").
#[derive(Debug, Clone)]
pub struct Registry {
    pub base: String,
    pub http: reqwest::Client,
}

impl Registry {
    /// Plain-http client, no proxies, 5 s connect and 300 s overall timeouts.
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .expect("building reqwest client");
        Registry {
            base: base_url.into().trim_end_matches('/').to_string(),
            http,
        }
    }

    /// Absolute URL for a path ("/v2/…") or a Location header (absolute or relative).
    pub fn url(&self, path_or_location: &str) -> String {
        if path_or_location.starts_with("http://") || path_or_location.starts_with("https://") {
            path_or_location.to_string()
        } else if path_or_location.starts_with('/') {
            format!("{}{}", self.base, path_or_location)
        } else {
            format!("{}/{}", self.base, path_or_location)
        }
    }

    /// POST /v2/<repo>/blobs/uploads/ → the upload's absolute Location (status 202).
    pub async fn start_upload(&self, repo: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .header(CONTENT_LENGTH, "0")
            .send()
            .await?;
        let resp = expect_status(resp, StatusCode::ACCEPTED, "POST blobs/uploads/").await?;
        location(&resp).map(|l| self.url(&l))
    }

    /// Monolithic push (POST, then PUT ?digest= with the body). Returns the digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(data);
        let upload = self.start_upload(repo).await?;
        let resp = self
            .http
            .put(with_digest(&upload, &digest))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        let resp = expect_status(resp, StatusCode::CREATED, "PUT upload ?digest=").await?;
        let loc = location(&resp)?;
        anyhow::ensure!(loc.contains(&digest), "blob Location {loc:?} does not name {digest}");
        Ok(digest)
    }

    /// PUT a manifest; returns the raw response (status unchecked).
    pub async fn put_manifest_raw(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        Ok(self
            .http
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header(CONTENT_TYPE, media_type)
            .body(body.to_vec())
            .send()
            .await?)
    }

    /// PUT a manifest and require 201 with the right Docker-Content-Digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let resp = self.put_manifest_raw(repo, reference, media_type, body).await?;
        let resp = expect_status(resp, StatusCode::CREATED, "PUT manifest").await?;
        let digest = sha256_digest(body);
        if let Some(got) = header_str(&resp, "docker-content-digest") {
            anyhow::ensure!(
                got == digest,
                "PUT manifest answered Docker-Content-Digest {got}, body digest is {digest}"
            );
        }
        Ok(resp)
    }

    /// GET a manifest with an Accept header; raw response.
    pub async fn get_manifest(&self, repo: &str, reference: &str, accept: &str) -> anyhow::Result<Response> {
        Ok(self
            .http
            .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await?)
    }

    /// HEAD a blob; raw response.
    pub async fn head_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Response> {
        Ok(self
            .http
            .head(self.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await?)
    }

    /// GET a blob (following redirects) and require 200; returns its bytes.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .http
            .get(self.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await?;
        let resp = expect_status(resp, StatusCode::OK, "GET blob").await?;
        Ok(resp.bytes().await?.to_vec())
    }

    /// Pushes every blob of `image` and its manifest under `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &OciImage) -> anyhow::Result<()> {
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob).await?;
        }
        self.push_blob(repo, &image.config).await?;
        self.put_manifest(repo, tag, crate::image::MEDIA_OCI_MANIFEST, &image.manifest)
            .await?;
        Ok(())
    }

    /// GET /v2/<repo>/tags/list → tags.
    pub async fn tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        let resp = self.http.get(self.url(&format!("/v2/{repo}/tags/list"))).send().await?;
        let resp = expect_status(resp, StatusCode::OK, "GET tags/list").await?;
        let body: serde_json::Value = resp.json().await?;
        Ok(string_array(&body["tags"]))
    }

    /// GET /v2/_catalog → repositories.
    pub async fn catalog(&self) -> anyhow::Result<Vec<String>> {
        let resp = self.http.get(self.url("/v2/_catalog")).send().await?;
        let resp = expect_status(resp, StatusCode::OK, "GET _catalog").await?;
        let body: serde_json::Value = resp.json().await?;
        Ok(string_array(&body["repositories"]))
    }
}

fn string_array(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Appends `digest=<digest>` to an upload URL that may already carry a query.
pub fn with_digest(upload_url: &str, digest: &str) -> String {
    let sep = if upload_url.contains('?') { '&' } else { '?' };
    format!("{upload_url}{sep}digest={digest}")
}

/// A header's value as a string, if present and ASCII.
pub fn header_str(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The Location header, required.
pub fn location(resp: &Response) -> anyhow::Result<String> {
    header_str(resp, "location").with_context(|| format!("{} answered {} without Location", resp.url(), resp.status()))
}

/// Returns `resp` if its status is `want`; otherwise an error with status, headers
/// and body, naming `what`.
pub async fn expect_status(resp: Response, want: StatusCode, what: &str) -> anyhow::Result<Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    bail!("{what}: expected {want}, got {}", describe(resp).await)
}

/// "STATUS (url)\nheaders\nbody" of a response, for error messages.
pub async fn describe(resp: Response) -> String {
    let status = resp.status();
    let url = resp.url().to_string();
    let headers: Vec<String> = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("  {k}: {}", v.to_str().unwrap_or("<non-ascii>")))
        .collect();
    let body = resp.text().await.unwrap_or_else(|e| format!("<body error: {e}>"));
    let body: String = body.chars().take(2000).collect();
    format!("{status} from {url}\n{}\nbody: {body}", headers.join("\n"))
}
