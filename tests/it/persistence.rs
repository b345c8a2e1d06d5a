//! Crash safety: what a node acknowledged survives SIGKILL and restart; what it did
//! not finish leaves nothing visible.

use std::time::Duration;

use berth_testkit::ImageBuilder;
use berth_testkit::Registry;
use berth_testkit::Skopeo;
use berth_testkit::image::MEDIA_OCI_MANIFEST;
use berth_testkit::random_bytes;
use berth_testkit::registry::describe;
use berth_testkit::registry::header_str;
use berth_testkit::registry::location;
use berth_testkit::registry::with_digest;
use berth_testkit::sha256_digest;
use berth_testkit::tools::remove_blob_info_cache;
use bytes::Bytes;
use futures::StreamExt;
use sha2::Digest as _;
use sha2::Sha256;
use tokio::sync::oneshot;

use crate::start_node;

fn ok<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_push_survives_kill9_and_restart() {
    let mut node = start_node().await;
    let hp = node.host_port();
    let skopeo = Skopeo::new().expect("skopeo");
    let work = tempfile::tempdir().unwrap();
    let big = random_bytes(2 * 1024 * 1024 + 3, 41);
    let image = ImageBuilder::new()
        .layer(&[("data/big.bin", big.as_slice())])
        .layer(&[("etc/hello.txt", b"persisted".as_slice())])
        .tag("v1")
        .write(work.path().join("src"))
        .unwrap();
    let dst = format!("docker://{hp}/team/persist-skopeo:v1");
    remove_blob_info_cache();
    ok(
        "skopeo push",
        skopeo.copy(&image.oci_ref(), &dst, &["--preserve-digests"]).await,
    );

    let pid = node.pid();
    node.kill9();
    ok("restart after kill -9", node.restart().await);
    assert_ne!(node.pid(), pid);

    let raw = ok(
        "inspect --raw after restart",
        skopeo.run(&["inspect", "--tls-verify=false", "--raw", &dst]).await,
    );
    assert!(raw == image.manifest, "manifest changed across restart");
    let out = work.path().join("pulled");
    ok(
        "skopeo pull after restart",
        skopeo.copy(&dst, &format!("oci:{}:v1", out.display()), &[]).await,
    );
    for layer in &image.layers {
        let hex = layer.digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(out.join("blobs/sha256").join(hex)).expect("pulled layer");
        assert!(bytes == layer.blob, "layer {} differs after restart", layer.digest);
    }
    let hex = image.config_digest.strip_prefix("sha256:").unwrap();
    assert!(std::fs::read(out.join("blobs/sha256").join(hex)).unwrap() == image.config);
}

const BIG: usize = 64 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
/// Bytes the interrupted PATCH sends before the kill (the body then waits).
const SENT_BEFORE_KILL: usize = 16 * 1024 * 1024;

/// A request body of `data` in 1 MiB chunks that, after `pause_at` bytes, tells
/// `reached` and waits for `resume` before sending the rest.
pub(crate) fn gated_body(
    data: Bytes,
    pause_at: usize,
    reached: oneshot::Sender<()>,
    resume: oneshot::Receiver<()>,
) -> reqwest::Body {
    let state = (0usize, Some(reached), Some(resume));
    let stream = futures::stream::unfold(state, move |(off, mut reached, mut resume)| {
        let data = data.clone();
        async move {
            if off >= data.len() {
                return None;
            }
            if off >= pause_at {
                if let Some(tx) = reached.take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = resume.take() {
                    let _ = rx.await;
                }
            }
            let end = (off + CHUNK).min(data.len());
            Some((
                Ok::<Bytes, std::io::Error>(data.slice(off..end)),
                (end, reached, resume),
            ))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

fn chunked_body(data: Bytes) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
        .step_by(CHUNK)
        .map(|off| Ok(data.slice(off..(off + CHUNK).min(data.len()))))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// GET the blob, hashing as it streams; returns (digest, length).
async fn pull_digest(reg: &Registry, repo: &str, digest: &str) -> (String, u64) {
    let resp = reg
        .http
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET blob: {}", describe(resp).await);
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("reading blob body");
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (format!("sha256:{}", hex::encode(hasher.finalize())), len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_push_leaves_nothing_partial() {
    let mut node = start_node().await;
    let reg = Registry::new(node.base_url());
    let repo = "team/persist-partial";
    let data = Bytes::from(random_bytes(BIG, 42));
    let digest = sha256_digest(&data);

    // Start an upload and stream a 64 MiB PATCH; kill -9 while it is in flight.
    let upload = ok("POST upload", reg.start_upload(repo).await);
    let (reached_tx, reached_rx) = oneshot::channel();
    let (resume_tx, resume_rx) = oneshot::channel();
    let patch = reg
        .http
        .patch(&upload)
        .header("content-type", "application/octet-stream")
        .body(gated_body(data.clone(), SENT_BEFORE_KILL, reached_tx, resume_rx))
        .send();
    let patch = tokio::spawn(patch);
    tokio::time::timeout(Duration::from_secs(120), reached_rx)
        .await
        .expect("PATCH body did not reach 16 MiB within 120 s")
        .expect("PATCH body stream dropped before 16 MiB");
    // Let the server take in what was sent, then kill it mid-body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.kill9();
    let _ = resume_tx.send(());
    let patch_result = tokio::time::timeout(Duration::from_secs(60), patch)
        .await
        .expect("interrupted PATCH did not end within 60 s")
        .expect("PATCH task panicked");
    if let Ok(resp) = patch_result {
        assert!(
            !resp.status().is_success(),
            "a PATCH cut off by kill -9 cannot have succeeded: {}",
            describe(resp).await
        );
    }

    ok("restart after kill -9", node.restart().await);

    // Nothing partial is visible.
    let resp = reg.head_blob(repo, &digest).await.unwrap();
    assert_eq!(
        resp.status(),
        404,
        "HEAD of a never-completed blob: {}",
        describe(resp).await
    );
    let resp = reg
        .http
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "GET of a never-completed blob: {}",
        describe(resp).await
    );
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN", "error body: {body}");
    let catalog = ok("catalog", reg.catalog().await);
    assert!(
        !catalog.iter().any(|r| r == repo),
        "a repository holding only an interrupted upload must not be listed: {catalog:?}"
    );
    // The old session is either gone or reports no more than was sent.
    let resp = reg.http.get(&upload).send().await.unwrap();
    match resp.status().as_u16() {
        404 => {}
        204 => {
            if let Some(range) = header_str(&resp, "range") {
                let end: u64 = range
                    .rsplit('-')
                    .next()
                    .and_then(|e| e.parse().ok())
                    .unwrap_or_else(|| panic!("bad Range {range:?}"));
                assert!(end < BIG as u64, "old upload claims {range} after a cut-off PATCH");
            }
        }
        _ => panic!("GET old upload session: {}", describe(resp).await),
    }

    // The same blob pushed again completes and is byte-identical.
    let upload = ok("POST upload (retry)", reg.start_upload(repo).await);
    let resp = reg
        .http
        .patch(&upload)
        .header("content-type", "application/octet-stream")
        .body(chunked_body(data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "streamed PATCH: {}", describe(resp).await);
    let next = reg.url(&location(&resp).unwrap());
    let resp = reg
        .http
        .put(with_digest(&next, &digest))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "PUT ?digest=: {}", describe(resp).await);

    let resp = reg.head_blob(repo, &digest).await.unwrap();
    assert_eq!(resp.status(), 200, "HEAD: {}", describe(resp).await);
    assert_eq!(header_str(&resp, "content-length"), Some(BIG.to_string()));
    assert_eq!(
        header_str(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(pull_digest(&reg, repo, &digest).await, (digest.clone(), BIG as u64));

    // Acknowledged, so it survives another kill -9.
    node.kill9();
    ok("second restart", node.restart().await);
    assert_eq!(pull_digest(&reg, repo, &digest).await, (digest.clone(), BIG as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_manifests_survive_kill9() {
    let mut node = start_node().await;
    let reg = Registry::new(node.base_url());
    let repo = "team/persist-manifests";
    let layer = random_bytes(4096, 51);
    let layer_digest = ok("push layer", reg.push_blob(repo, &layer).await);

    let mut pushed = Vec::new();
    for i in 0..20 {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "n": i.to_string() } },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))
        .unwrap();
        let config_digest = ok("push config", reg.push_blob(repo, &config).await);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))
        .unwrap();
        let tag = format!("t{i:02}");
        ok(
            "PUT manifest",
            reg.put_manifest(repo, &tag, MEDIA_OCI_MANIFEST, &manifest).await,
        );
        pushed.push((tag, sha256_digest(&manifest), manifest, config_digest));
    }

    // Kill right after the last acknowledgement.
    node.kill9();
    ok("restart after kill -9", node.restart().await);

    for (tag, digest, manifest, config_digest) in &pushed {
        for reference in [tag, digest] {
            let resp = reg.get_manifest(repo, reference, MEDIA_OCI_MANIFEST).await.unwrap();
            assert_eq!(
                resp.status(),
                200,
                "GET manifest {reference} after restart: {}",
                describe(resp).await
            );
            assert_eq!(
                header_str(&resp, "docker-content-digest").as_deref(),
                Some(digest.as_str())
            );
            assert!(
                resp.bytes().await.unwrap().as_ref() == manifest.as_slice(),
                "{reference} bytes changed"
            );
        }
        let resp = reg.head_blob(repo, config_digest).await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "HEAD config {config_digest}: {}",
            describe(resp).await
        );
    }
    assert!(ok("GET layer", reg.get_blob(repo, &layer_digest).await) == layer);
    let mut tags = ok("tags/list", reg.tags(repo).await);
    tags.sort();
    let want: Vec<String> = pushed.iter().map(|p| p.0.clone()).collect();
    assert_eq!(tags, want);
    assert!(ok("catalog", reg.catalog().await).iter().any(|r| r == repo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_graceful_and_data_survives() {
    let mut node = start_node().await;
    let reg = Registry::new(node.base_url());
    let repo = "team/persist-sigterm";
    let image = ImageBuilder::new()
        .layer(&[("etc/hello.txt", b"graceful".as_slice())])
        .build()
        .unwrap();
    ok("push", reg.push_image(repo, "v1", &image).await);

    // Exits 0 within the testkit's bound (it errors otherwise).
    ok("stop (SIGTERM)", node.stop().await);
    assert!(!node.is_running());
    ok("restart after SIGTERM", node.restart().await);

    let resp = reg.get_manifest(repo, "v1", MEDIA_OCI_MANIFEST).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "GET manifest after restart: {}",
        describe(resp).await
    );
    assert!(resp.bytes().await.unwrap().as_ref() == image.manifest.as_slice());
    assert!(ok("GET layer", reg.get_blob(repo, &image.layers[0].digest).await) == image.layers[0].blob);
}

/// A client that starts an upload, sends 2 MiB of a PATCH body of `data` and then
/// goes silent until the returned sender is used or dropped.
async fn stalled_patch(
    reg: &Registry,
    repo: &str,
    data: Bytes,
) -> (
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    oneshot::Sender<()>,
) {
    let upload = ok("POST upload", reg.start_upload(repo).await);
    let (reached_tx, reached_rx) = oneshot::channel();
    let (resume_tx, resume_rx) = oneshot::channel::<()>();
    let patch = tokio::spawn(
        reg.http
            .patch(&upload)
            .header("content-type", "application/octet-stream")
            .body(gated_body(data, 2 * CHUNK, reached_tx, resume_rx))
            .send(),
    );
    tokio::time::timeout(Duration::from_secs(60), reached_rx)
        .await
        .expect("PATCH body did not reach 2 MiB within 60 s")
        .expect("PATCH body stream dropped");
    (patch, resume_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_upload_still_exits() {
    let mut node = start_node().await;
    let reg = Registry::new(node.base_url());
    let repo = "team/persist-stalled";
    let data = Bytes::from(random_bytes(8 * CHUNK, 61));

    let (patch, resume_tx) = stalled_patch(&reg, repo, data).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Graceful shutdown must not wait forever for that client.
    ok("stop (SIGTERM) with a stalled upload in flight", node.stop().await);
    drop(resume_tx);
    let _ = tokio::time::timeout(Duration::from_secs(30), patch).await;

    ok("restart", node.restart().await);
    let digest = sha256_digest(&random_bytes(8 * CHUNK, 61));
    let resp = reg.head_blob(repo, &digest).await.unwrap();
    assert_eq!(
        resp.status(),
        404,
        "HEAD of an unfinished blob: {}",
        describe(resp).await
    );
}

/// A second SIGTERM during the drain cuts it short: the stalled request is cancelled
/// at once rather than after the grace period, the later stages still run (the
/// metadata store is closed), and the node exits 0 and restarts with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_cuts_the_drain_short() {
    let mut node = start_node().await;
    let reg = Registry::new(node.base_url());
    let repo = "team/persist-second-sigterm";
    let config = random_bytes(512, 62);
    let digest = ok("push config", reg.push_blob(repo, &config).await);

    let data = Bytes::from(random_bytes(4 * CHUNK, 63));
    let (patch, _resume_tx) = stalled_patch(&reg, repo, data).await;

    node.terminate();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !node.log_tail(50).contains("shutdown requested") {
        assert!(std::time::Instant::now() < deadline, "no shutdown logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second signal; `stop` then waits for an exit 0.
    ok("second SIGTERM", node.stop().await);
    let log = node.log_tail(40);
    assert!(log.contains("shutdown: second signal"), "{log}");
    assert!(!log.contains("grace period"), "{log}");
    assert!(log.contains("shutdown: Raft and the metadata store closed"), "{log}");
    let _ = tokio::time::timeout(Duration::from_secs(30), patch).await;

    ok("restart", node.restart().await);
    assert!(ok("GET config", reg.get_blob(repo, &digest).await) == config);
}
