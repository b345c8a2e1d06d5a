//! Shared helpers for the spec suite: a node plus an HTTP client, request
//! shortcuts, blob/manifest builders and response assertions.
//!
//! Helpers assert on the *happy path* they implement (e.g. `push_blob` fails
//! the test if the registry does not answer 201), so each test body only
//! spells out the behaviour it is about.

use std::time::Duration;
use std::time::Instant;

use berth_testkit::BerthNode;
use berth_testkit::NodeOptions;
use bytes::Bytes;
use reqwest::Method;
use reqwest::RequestBuilder;
use reqwest::Response;
use reqwest::Url;
use reqwest::header::HeaderMap;
use serde::Serialize as _;
use serde_json::Value;
use serde_json::json;
use sha2::Digest as _;

pub use berth_testkit::random_bytes;
pub use berth_testkit::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// What a real client sends when pulling: every manifest type it understands.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A digest that is well-formed but names nothing in any registry.
pub fn unknown_digest(seed: u64) -> String {
    sha256_digest(format!("berth spec suite: nothing has this content ({seed})").as_bytes())
}

pub fn sha512_digest(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// One berth node and an HTTP client that never follows redirects (so
/// `Location` headers can be inspected) and never uses a proxy.
pub struct Reg {
    pub node: BerthNode,
    http: reqwest::Client,
    /// Every node requests are spread over (round robin), the first being `node`.
    bases: Vec<Url>,
    next: std::sync::atomic::AtomicUsize,
    /// The other members and the S3 store of a cluster run.
    _cluster: Option<(Vec<BerthNode>, berth_testkit::SeaweedFs)>,
}

/// `BERTH_SPEC_NODES=3` runs the suite against a 3-node cluster (on SeaweedFS) with
/// every request sent to the next node in turn, as a round-robin load balancer would.
fn cluster_size() -> u64 {
    std::env::var("BERTH_SPEC_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 1)
        .unwrap_or(1)
}

impl Reg {
    pub async fn start() -> Reg {
        Reg::start_with("").await
    }

    pub async fn start_with(extra_toml: &str) -> Reg {
        let n = cluster_size();
        if n > 1 {
            let (mut nodes, s3) = crate::start_cluster(n, extra_toml).await;
            let node = nodes.remove(0);
            return Reg::with_nodes(node, Some((nodes, s3)));
        }
        let opts = NodeOptions::new(env!("CARGO_BIN_EXE_berth")).extra_toml(extra_toml);
        let node = BerthNode::start_with(opts).await.expect("start berth node");
        Reg::with_nodes(node, None)
    }

    fn with_nodes(node: BerthNode, cluster: Option<(Vec<BerthNode>, berth_testkit::SeaweedFs)>) -> Reg {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let others = cluster.iter().flat_map(|(nodes, _)| nodes.iter());
        let bases = std::iter::once(&node)
            .chain(others)
            .map(|n| Url::parse(&n.base_url()).expect("base url"))
            .collect();
        Reg {
            node,
            http,
            bases,
            next: std::sync::atomic::AtomicUsize::new(0),
            _cluster: cluster,
        }
    }

    /// Where nodes keep the bytes of uploads in progress: the fs backend's
    /// `blobs/uploads`, or (on S3, in a cluster) every node's local spool.
    pub fn upload_data_dirs(&self) -> Vec<std::path::PathBuf> {
        match &self._cluster {
            None => vec![self.node.data_dir().join("blobs").join("uploads")],
            Some((others, _)) => std::iter::once(&self.node)
                .chain(others.iter())
                .map(|n| n.data_dir().join("spool"))
                .collect(),
        }
    }

    /// The node the next request goes to.
    pub fn base(&self) -> Url {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.bases[i % self.bases.len()].clone()
    }

    /// Resolves a path (`/v2/...`) or a `Location` value (relative or
    /// absolute, both allowed by the spec) against the node.
    pub fn url(&self, loc: &str) -> Url {
        self.base()
            .join(loc)
            .unwrap_or_else(|e| panic!("cannot resolve {loc:?}: {e}"))
    }

    /// The path of a `Location` value, whether it was relative or absolute.
    pub fn path_of(&self, loc: &str) -> String {
        self.url(loc).path().to_string()
    }

    pub fn req(&self, method: Method, loc: &str) -> RequestBuilder {
        self.http.request(method, self.url(loc))
    }

    pub fn req_url(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url)
    }

    pub async fn get(&self, loc: &str) -> Response {
        send(self.req(Method::GET, loc)).await
    }

    pub async fn head(&self, loc: &str) -> Response {
        send(self.req(Method::HEAD, loc)).await
    }

    pub async fn delete(&self, loc: &str) -> Response {
        send(self.req(Method::DELETE, loc)).await
    }

    // ----- blobs ---------------------------------------------------------

    /// `POST /v2/<repo>/blobs/uploads/`, asserting 202; returns the upload
    /// `Location` as given.
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = send(
            self.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .header("Content-Length", "0"),
        )
        .await;
        let (h, _) = check(resp, 202).await;
        header_req(&h, "location")
    }

    /// PATCH one chunk with the spec's `Content-Range: <start>-<end>`.
    pub async fn patch_chunk(&self, loc: &str, start: u64, data: &[u8]) -> Response {
        let end = start + data.len() as u64 - 1;
        send(
            self.req(Method::PATCH, loc)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{start}-{end}"))
                .body(data.to_vec()),
        )
        .await
    }

    /// `PUT <loc>?digest=<digest>` with an optional final chunk.
    pub async fn finish_upload(&self, loc: &str, digest: &str, body: &[u8]) -> Response {
        send(
            self.req_url(Method::PUT, with_query(self.url(loc), "digest", digest))
                .header("Content-Type", "application/octet-stream")
                .body(body.to_vec()),
        )
        .await
    }

    /// Pushes a blob the way every client can (POST, then PUT with the whole
    /// body), asserting 201. Returns its sha256 digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        let loc = self.start_upload(repo).await;
        let resp = self.finish_upload(&loc, &digest, data).await;
        let (h, _) = check(resp, 201).await;
        assert_eq!(
            header_opt(&h, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
        digest
    }

    /// Single-request monolithic push: `POST /v2/<repo>/blobs/uploads/?digest=D`.
    pub async fn post_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Response {
        let url = with_query(self.url(&format!("/v2/{repo}/blobs/uploads/")), "digest", digest);
        send(
            self.req_url(Method::POST, url)
                .header("Content-Type", "application/octet-stream")
                .body(data.to_vec()),
        )
        .await
    }

    pub async fn blob_status(&self, repo: &str, digest: &str) -> u16 {
        self.head(&format!("/v2/{repo}/blobs/{digest}")).await.status().as_u16()
    }

    /// GETs a blob, following one redirect if the registry answers with one
    /// (the spec allows a 307 to another service for blob downloads).
    pub async fn get_blob(&self, repo: &str, digest: &str, range: Option<&str>) -> Response {
        let mut rb = self.req(Method::GET, &format!("/v2/{repo}/blobs/{digest}"));
        if let Some(r) = range {
            rb = rb.header("Range", r);
        }
        let resp = send(rb).await;
        if !resp.status().is_redirection() {
            return resp;
        }
        let loc = header_req(resp.headers(), "location");
        let url = resp.url().join(&loc).expect("redirect location");
        let mut rb = self.req_url(Method::GET, url);
        if let Some(r) = range {
            rb = rb.header("Range", r);
        }
        send(rb).await
    }

    /// Asserts that `repo` serves exactly `data` under `digest`.
    pub async fn assert_blob(&self, repo: &str, digest: &str, data: &[u8]) {
        let (h, body) = check(self.get_blob(repo, digest, None).await, 200).await;
        assert_eq!(body.len(), data.len(), "blob {digest} in {repo}: wrong length");
        assert!(body[..] == data[..], "blob {digest} in {repo}: wrong bytes");
        if let Some(d) = header_opt(&h, "docker-content-digest") {
            assert_eq!(d, digest);
        }
    }

    // ----- manifests -----------------------------------------------------

    pub async fn put_manifest(&self, repo: &str, reference: &str, content_type: &str, body: &[u8]) -> Response {
        send(
            self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                .header("Content-Type", content_type)
                .body(body.to_vec()),
        )
        .await
    }

    /// PUTs a manifest, asserting 201 and the `Docker-Content-Digest`;
    /// returns the digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, content_type: &str, body: &[u8]) -> String {
        let digest = sha256_digest(body);
        let resp = self.put_manifest(repo, reference, content_type, body).await;
        let (h, _) = check(resp, 201).await;
        assert_eq!(
            header_opt(&h, "docker-content-digest").as_deref(),
            Some(digest.as_str()),
            "PUT manifest {repo}:{reference}: Docker-Content-Digest must be the sha256 of the exact bytes"
        );
        digest
    }

    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Response {
        send(
            self.req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                .header("Accept", ACCEPT_MANIFESTS),
        )
        .await
    }

    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Response {
        send(
            self.req(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"))
                .header("Accept", ACCEPT_MANIFESTS),
        )
        .await
    }

    /// Asserts `repo:reference` serves exactly `body` with `content_type`.
    pub async fn assert_manifest(&self, repo: &str, reference: &str, content_type: &str, body: &[u8]) {
        let (h, got) = check(self.get_manifest(repo, reference).await, 200).await;
        assert!(
            got[..] == body[..],
            "{repo}:{reference}: manifest bytes differ from what was pushed"
        );
        assert_eq!(
            media_type_of(&h).as_deref(),
            Some(content_type),
            "{repo}:{reference}: Content-Type"
        );
        assert_eq!(
            header_opt(&h, "docker-content-digest").as_deref(),
            Some(sha256_digest(body).as_str()),
            "{repo}:{reference}: Docker-Content-Digest"
        );
    }

    /// Pushes config + one layer + an OCI image manifest tagged `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: u64) -> Image {
        let config = config_blob(seed);
        let layer = random_bytes(1024 + seed as usize % 512, seed);
        self.push_blob(repo, &config).await;
        self.push_blob(repo, &layer).await;
        let manifest = image_manifest(
            OCI_MANIFEST,
            &desc(OCI_CONFIG, &config),
            &[desc(OCI_LAYER, &layer)],
            None,
        );
        let digest = self.push_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        Image {
            config,
            layer,
            manifest,
            digest,
        }
    }

    // ----- listings ------------------------------------------------------

    /// `GET /v2/<repo>/tags/list` (plus `query`), asserting 200 and the body
    /// shape; returns the tags and the `Link` header.
    pub async fn tags_page(&self, repo: &str, query: &str) -> (Vec<String>, Option<String>) {
        let (h, body) = check(self.get(&format!("/v2/{repo}/tags/list{query}")).await, 200).await;
        let v: Value = json_body(&h, &body);
        assert_eq!(v["name"], json!(repo), "tags/list name field");
        (string_list(&v["tags"], "tags"), header_opt(&h, "link"))
    }

    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let (tags, link) = self.tags_page(repo, "").await;
        assert_eq!(link, None, "unpaginated tags/list must not have a Link");
        tags
    }

    pub async fn catalog_page(&self, query: &str) -> (Vec<String>, Option<String>) {
        let (h, body) = check(self.get(&format!("/v2/_catalog{query}")).await, 200).await;
        let v: Value = json_body(&h, &body);
        (string_list(&v["repositories"], "repositories"), header_opt(&h, "link"))
    }

    pub async fn catalog(&self) -> Vec<String> {
        self.catalog_page("").await.0
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        // A failing test shows what the server logged.
        if std::thread::panicking() {
            eprintln!("---- berth node log (tail) ----\n{}", self.node.log_tail(60));
        }
    }
}

pub struct Image {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

pub async fn send(rb: RequestBuilder) -> Response {
    rb.send().await.expect("HTTP request failed")
}

/// Asserts the status and returns headers and body; the panic message shows
/// the URL and the body, which usually explains a server-side failure.
pub async fn check(resp: Response, status: u16) -> (HeaderMap, Bytes) {
    let url = resp.url().clone();
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let (body, body_err) = match resp.bytes().await {
        Ok(b) => (b, None),
        Err(e) => (Bytes::new(), Some(e)),
    };
    assert_eq!(
        got,
        status,
        "{url}: expected status {status}, got {got}; headers {headers:?}; body {}",
        String::from_utf8_lossy(&body[..body.len().min(2000)])
    );
    if let Some(e) = body_err {
        panic!("{url}: status {got} as expected, but the body could not be read ({e:?}); headers {headers:?}");
    }
    (headers, body)
}

/// Asserts an error response: `status`, `Content-Type: application/json` and
/// a body `{"errors":[{"code":..,"message":..,"detail":..}]}` in which some
/// entry's code is one of `codes`. Returns the parsed body.
pub async fn expect_error(resp: Response, status: u16, codes: &[&str]) -> Value {
    let url = resp.url().clone();
    let (h, body) = check(resp, status).await;
    let ct = header_opt(&h, "content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{url}: error body must have Content-Type application/json, got {ct:?}"
    );
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{url}: error body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{url}: error body has no errors array: {v}"));
    assert!(!errors.is_empty(), "{url}: empty errors array");
    for e in errors {
        assert!(e["code"].is_string(), "{url}: error entry without code: {e}");
        assert!(e["message"].is_string(), "{url}: error entry without message: {e}");
    }
    assert!(
        errors.iter().any(|e| codes.contains(&e["code"].as_str().unwrap_or(""))),
        "{url}: expected error code in {codes:?}, got {v}"
    );
    v
}

pub fn header_opt(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| v.to_str().expect("header is not ASCII").to_string())
}

pub fn header_req(h: &HeaderMap, name: &str) -> String {
    header_opt(h, name).unwrap_or_else(|| panic!("missing header {name}; headers {h:?}"))
}

/// The media type of `Content-Type`, without parameters.
pub fn media_type_of(h: &HeaderMap) -> Option<String> {
    header_opt(h, "content-type").map(|ct| ct.split(';').next().unwrap_or("").trim().to_string())
}

pub fn json_body(h: &HeaderMap, body: &[u8]) -> Value {
    let ct = media_type_of(h).unwrap_or_default();
    assert!(
        ct == "application/json" || ct.ends_with("+json"),
        "expected a JSON Content-Type, got {ct:?}"
    );
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn string_list(v: &Value, field: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{field} must be a JSON array, got {v}"))
        .iter()
        .map(|t| {
            t.as_str()
                .unwrap_or_else(|| panic!("{field} entry is not a string: {t}"))
                .to_string()
        })
        .collect()
}

pub fn with_query(mut url: Url, key: &str, value: &str) -> Url {
    url.query_pairs_mut().append_pair(key, value);
    url
}

/// Parses `Link: <url>; rel="next"` into the target URL's path and query
/// pairs (the spec does not fix the order of `n` and `last`, and the target
/// may be relative or absolute).
pub fn parse_next_link(reg: &Reg, link: &str) -> (String, Vec<(String, String)>, Url) {
    let link = link.trim();
    assert!(link.starts_with('<'), "Link must start with <url>: {link:?}");
    let close = link.find('>').unwrap_or_else(|| panic!("Link without '>': {link:?}"));
    let target = &link[1..close];
    let params = link[close + 1..].replace(' ', "");
    assert!(
        params.contains(";rel=\"next\"") || params.contains(";rel=next"),
        "Link must have rel=\"next\": {link:?}"
    );
    let url = reg.url(target);
    let pairs = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (url.path().to_string(), pairs, url)
}

pub fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Polls `f` until it returns `Some`, at most `limit`; panics with `what`
/// otherwise. The limit bounds the test, it is not an assertion on timing.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ----- content builders --------------------------------------------------

pub fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256_digest(data), "size": data.len() })
}

pub fn config_blob(seed: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": [format!("SEED={seed}")] },
        "rootfs": { "type": "layers", "diff_ids": [] }
    }))
    .unwrap()
}

/// Serializes with an unusual indent, so that a registry which re-encodes
/// the JSON instead of keeping the exact bytes is caught by digest checks.
pub fn odd_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).unwrap();
    out.push(b'\n');
    out
}

/// An image manifest (OCI or Docker schema 2, by `media_type`), with the
/// `mediaType` field set to it; `extra` fields are merged in (use
/// `Value::Null` entries to remove a field).
pub fn image_manifest(media_type: &str, config: &Value, layers: &[Value], extra: Option<Value>) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config,
        "layers": layers,
    });
    merge(&mut m, extra);
    odd_json(&m)
}

/// An OCI index or Docker manifest list over `children` (media type, body).
pub fn index_manifest(media_type: &str, children: &[(&str, &[u8])], extra: Option<Value>) -> Vec<u8> {
    let archs = ["amd64", "arm64", "s390x", "ppc64le"];
    let manifests: Vec<Value> = children
        .iter()
        .enumerate()
        .map(|(i, (mt, body))| {
            let mut d = desc(mt, body);
            d["platform"] = json!({ "architecture": archs[i % archs.len()], "os": "linux" });
            d
        })
        .collect();
    let mut m = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests });
    merge(&mut m, extra);
    odd_json(&m)
}

fn merge(m: &mut Value, extra: Option<Value>) {
    if let Some(Value::Object(extra)) = extra {
        let obj = m.as_object_mut().unwrap();
        for (k, v) in extra {
            if v.is_null() {
                obj.remove(&k);
            } else {
                obj.insert(k, v);
            }
        }
    }
}
