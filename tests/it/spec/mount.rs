//! Cross-repository blob mount and its fallback to a plain upload.

use reqwest::Method;
use reqwest::Response;

use super::support::*;

async fn mount(reg: &Reg, repo: &str, digest: &str, from: Option<&str>) -> Response {
    let mut url = with_query(reg.url(&format!("/v2/{repo}/blobs/uploads/")), "mount", digest);
    if let Some(from) = from {
        url = with_query(url, "from", from);
    }
    send(reg.req_url(Method::POST, url).header("Content-Length", "0")).await
}

/// Asserts a 202 fallback whose session is usable, by completing it with
/// `data`.
async fn assert_fallback_upload(reg: &Reg, resp: Response, repo: &str, data: &[u8]) {
    let (h, _) = check(resp, 202).await;
    let loc = header_req(&h, "location");
    assert!(
        reg.path_of(&loc).starts_with(&format!("/v2/{repo}/blobs/uploads/")),
        "fallback Location {loc:?} must be an upload in {repo}"
    );
    let digest = sha256_digest(data);
    check(reg.finish_upload(&loc, &digest, data).await, 201).await;
    reg.assert_blob(repo, &digest, data).await;
}

#[tokio::test]
async fn mount_from_repository_holding_the_blob() {
    let reg = Reg::start().await;
    let data = random_bytes(5000, 20);
    let d = reg.push_blob("src/app", &data).await;
    assert_eq!(reg.blob_status("dst/app", &d).await, 404);

    let (h, _) = check(mount(&reg, "dst/app", &d, Some("src/app")).await, 201).await;
    assert_eq!(
        reg.path_of(&header_req(&h, "location")),
        format!("/v2/dst/app/blobs/{d}")
    );
    if let Some(dcd) = header_opt(&h, "docker-content-digest") {
        assert_eq!(dcd, d);
    }
    reg.assert_blob("dst/app", &d, &data).await;
    reg.assert_blob("src/app", &d, &data).await;
}

#[tokio::test]
async fn mount_falls_back_to_upload() {
    let reg = Reg::start().await;
    let data = random_bytes(300, 21);
    let d = sha256_digest(&data);
    // The blob exists only in `other/app`, never in the named source.
    reg.push_blob("other/app", &data).await;
    reg.push_blob("src/app", b"src holds something else").await;

    // Source exists but lacks the blob.
    let resp = mount(&reg, "dst/one", &d, Some("src/app")).await;
    assert_eq!(
        reg.blob_status("dst/one", &d).await,
        404,
        "mount must not find the blob elsewhere"
    );
    assert_fallback_upload(&reg, resp, "dst/one", &data).await;

    // Source does not exist.
    let resp = mount(&reg, "dst/two", &d, Some("no/such/repo")).await;
    assert_eq!(reg.blob_status("dst/two", &d).await, 404);
    assert_fallback_upload(&reg, resp, "dst/two", &data).await;

    // Unknown digest.
    let resp = mount(&reg, "dst/three", &unknown_digest(21), Some("src/app")).await;
    assert_fallback_upload(&reg, resp, "dst/three", b"three").await;
}

#[tokio::test]
async fn mount_without_from() {
    // Without `from`, the spec lets a registry either fall back to an upload
    // (202) or mount by automatic content discovery (201); berth may do
    // either, but a 201 must really make the blob available.
    let reg = Reg::start().await;
    let data = random_bytes(300, 22);
    let d = reg.push_blob("src/app", &data).await;
    let resp = mount(&reg, "dst/app", &d, None).await;
    match resp.status().as_u16() {
        201 => reg.assert_blob("dst/app", &d, &data).await,
        _ => assert_fallback_upload(&reg, resp, "dst/app", &data).await,
    }
}

#[tokio::test]
async fn malformed_mount_digest() {
    // A mount digest that is not a digest: a fallback upload (the spec's
    // "invalid digest arguments" case) or 400 DIGEST_INVALID are both fine,
    // but nothing may be mounted.
    let reg = Reg::start().await;
    reg.push_blob("src/app", b"x").await;
    let resp = mount(&reg, "dst/app", "sha256:nothex", Some("src/app")).await;
    if resp.status().as_u16() == 400 {
        expect_error(resp, 400, &["DIGEST_INVALID"]).await;
    } else {
        assert_fallback_upload(&reg, resp, "dst/app", b"y").await;
    }
}
