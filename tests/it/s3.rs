//! The S3 backend end to end: content-addressed keys in the bucket, redirect
//! delivery, and an S3 outage during pushes and pulls (503 with the spec's body and
//! `Retry-After`, never a 500 or a hang; recovery without a restart; no leftovers).

use std::time::Duration;
use std::time::Instant;

use berth_testkit::BerthNode;
use berth_testkit::NodeOptions;
use berth_testkit::Registry;
use berth_testkit::SeaweedFs;
use berth_testkit::random_bytes;
use berth_testkit::sha256_digest;
use reqwest::StatusCode;
use reqwest::redirect::Policy;

use crate::berth_binary;
use crate::s3_toml;

/// A node on a fresh SeaweedFS with short S3 timeouts, so an outage shows quickly.
async fn node_on_s3(delivery: &str) -> (BerthNode, SeaweedFs) {
    let s3 = SeaweedFs::start()
        .await
        .unwrap_or_else(|e| panic!("starting SeaweedFS: {e:#}"));
    let mut toml = s3_toml(&s3, delivery);
    toml.push_str("request_timeout = \"3s\"\nmax_attempts = 2\n");
    let opts = NodeOptions {
        binary: berth_binary().into(),
        extra_toml: toml,
        ..Default::default()
    };
    let node = BerthNode::start_with(opts)
        .await
        .unwrap_or_else(|e| panic!("starting berth on S3: {e:#}"));
    (node, s3)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

async fn assert_unavailable(resp: reqwest::Response, what: &str) {
    let status = resp.status();
    let retry = resp.headers().get("retry-after").is_some();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert!(retry, "{what}: 503 without Retry-After");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: body {body:?}: {e}"));
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_content_addressed_in_the_bucket() {
    let (node, s3) = node_on_s3("proxy").await;
    let reg = Registry::new(node.base_url());
    let data = random_bytes(3 * 1024 * 1024 + 7, 31);
    let digest = reg.push_blob("team/s3keys", &data).await.expect("push");
    let hex = digest.trim_start_matches("sha256:");
    let keys = s3.list_keys("blobs/").await.expect("list");
    let want = format!("blobs/sha256/{}/{hex}", &hex[..2]);
    assert!(
        keys.iter().any(|(k, size)| k == &want && *size == data.len() as i64),
        "{want} not in {keys:?}"
    );
    let uploads = s3.list_keys("uploads/").await.expect("list uploads");
    assert!(uploads.is_empty(), "upload parts left behind: {uploads:?}");
    assert_eq!(reg.get_blob("team/s3keys", &digest).await.expect("pull"), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_delivery_hands_out_presigned_urls() {
    let (node, _s3) = node_on_s3("redirect").await;
    let reg = Registry::new(node.base_url());
    let data = random_bytes(1024 * 1024, 32);
    let digest = reg.push_blob("team/redirect", &data).await.expect("push");
    let http = client();
    let url = format!("{}/v2/team/redirect/blobs/{digest}", node.base_url());
    let resp = http.get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"].to_str().expect("location").to_string();
    let direct = http.get(&location).send().await.expect("presigned GET");
    assert_eq!(direct.status(), StatusCode::OK);
    assert_eq!(direct.bytes().await.expect("body").as_ref(), data.as_slice());
    let ranged = http
        .get(&location)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .expect("ranged");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.expect("body").as_ref(), &data[10..20]);
    // HEAD is answered from the node's own index.
    let head = http.head(&url).send().await.expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], data.len().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_gives_503_and_the_node_recovers() {
    let (node, mut s3) = node_on_s3("proxy").await;
    let reg = Registry::new(node.base_url());
    let http = client();
    let repo = "team/outage";
    let cached = random_bytes(2 * 1024 * 1024, 33);
    let cached_digest = reg.push_blob(repo, &cached).await.expect("push before the outage");
    // Pulled once: now in the node-local cache.
    assert_eq!(reg.get_blob(repo, &cached_digest).await.expect("pull"), cached);
    let uncached = random_bytes(1024 * 1024, 34);
    let uncached_digest = reg.push_blob(repo, &uncached).await.expect("push");

    s3.stop().await.expect("stopping SeaweedFS");

    let ready = http
        .get(format!("{}/readyz", node.base_url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "readyz while S3 is down"
    );

    let data = random_bytes(6 * 1024 * 1024, 35);
    let digest = sha256_digest(&data);
    let started = Instant::now();
    let url = format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", node.base_url());
    let push = http
        .post(&url)
        .body(data.clone())
        .send()
        .await
        .expect("monolithic push");
    assert_unavailable(push, "push during the outage").await;
    let loc = reg.start_upload(repo).await.expect("starting an upload needs no S3");
    let patch = http
        .patch(reg.url(&loc))
        .header("Content-Type", "application/octet-stream")
        .body(random_bytes(9 * 1024 * 1024, 36))
        .send()
        .await
        .expect("PATCH");
    assert_unavailable(patch, "chunk upload during the outage").await;
    let pull = http
        .get(format!("{}/v2/{repo}/blobs/{uncached_digest}", node.base_url()))
        .send()
        .await
        .expect("pull");
    assert_unavailable(pull, "pull of an uncached blob during the outage").await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "answers took {:?}",
        started.elapsed()
    );
    // HEAD is local and the cache still serves what it holds.
    let head = reg.head_blob(repo, &uncached_digest).await.expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(reg.get_blob(repo, &cached_digest).await.expect("cached pull"), cached);
    let failed = reg.head_blob(repo, &digest).await.expect("HEAD of the failed push");
    assert_eq!(
        failed.status(),
        StatusCode::NOT_FOUND,
        "nothing half-written is visible"
    );

    s3.start_again().await.expect("restarting SeaweedFS");

    let pushed = reg.push_blob(repo, &data).await.expect("push after the outage");
    assert_eq!(pushed, digest);
    assert_eq!(reg.get_blob(repo, &digest).await.expect("pull"), data);
    assert_eq!(reg.get_blob(repo, &uncached_digest).await.expect("pull"), uncached);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("{}/readyz", node.base_url()))
            .send()
            .await
            .expect("readyz");
        if ready.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed {} after S3 came back",
            ready.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cancelled chunk left no parts in the bucket; only content-addressed blobs.
    let cancel = http.delete(reg.url(&loc)).send().await.expect("cancel");
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);
    let uploads = s3.list_keys("uploads/").await.expect("list uploads");
    assert!(uploads.is_empty(), "upload parts left behind: {uploads:?}");
}
