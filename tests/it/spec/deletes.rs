//! Deleting manifests (by digest and by tag) and blobs.

use super::support::*;

#[tokio::test]
async fn delete_manifest_by_digest_removes_its_tags() {
    let reg = Reg::start().await;
    let repo = "del/app";
    let a = reg.push_image(repo, "a", 40).await;
    reg.push_manifest(repo, "b", OCI_MANIFEST, &a.manifest).await;
    let c = reg.push_image(repo, "c", 41).await;

    check(reg.delete(&format!("/v2/{repo}/manifests/{}", a.digest)).await, 202).await;

    expect_error(reg.get_manifest(repo, &a.digest).await, 404, &["MANIFEST_UNKNOWN"]).await;
    assert_eq!(reg.head_manifest(repo, &a.digest).await.status().as_u16(), 404);
    for tag in ["a", "b"] {
        expect_error(reg.get_manifest(repo, tag).await, 404, &["MANIFEST_UNKNOWN"]).await;
    }
    assert_eq!(reg.tags(repo).await, vec!["c".to_string()]);
    reg.assert_manifest(repo, "c", OCI_MANIFEST, &c.manifest).await;

    expect_error(
        reg.delete(&format!("/v2/{repo}/manifests/{}", a.digest)).await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn delete_tag_keeps_the_manifest() {
    let reg = Reg::start().await;
    let repo = "deltag/app";
    let a = reg.push_image(repo, "a", 42).await;
    reg.push_manifest(repo, "b", OCI_MANIFEST, &a.manifest).await;

    check(reg.delete(&format!("/v2/{repo}/manifests/a")).await, 202).await;
    expect_error(reg.get_manifest(repo, "a").await, 404, &["MANIFEST_UNKNOWN"]).await;
    reg.assert_manifest(repo, &a.digest, OCI_MANIFEST, &a.manifest).await;
    reg.assert_manifest(repo, "b", OCI_MANIFEST, &a.manifest).await;
    assert_eq!(reg.tags(repo).await, vec!["b".to_string()]);

    expect_error(
        reg.delete(&format!("/v2/{repo}/manifests/a")).await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn delete_unknown_manifest() {
    let reg = Reg::start().await;
    let repo = "delunk/app";
    let a = reg.push_image(repo, "a", 43).await;
    for reference in ["nope".to_string(), unknown_digest(43)] {
        expect_error(
            reg.delete(&format!("/v2/{repo}/manifests/{reference}")).await,
            404,
            &["MANIFEST_UNKNOWN"],
        )
        .await;
    }
    reg.assert_manifest(repo, "a", OCI_MANIFEST, &a.manifest).await;
    assert_eq!(reg.tags(repo).await, vec!["a".to_string()]);
}

#[tokio::test]
async fn delete_blob_only_in_one_repository() {
    let reg = Reg::start().await;
    let data = random_bytes(2000, 44);
    let d = reg.push_blob("delblob/one", &data).await;
    reg.push_blob("delblob/two", &data).await;

    check(reg.delete(&format!("/v2/delblob/one/blobs/{d}")).await, 202).await;
    assert_eq!(reg.blob_status("delblob/one", &d).await, 404);
    expect_error(reg.get_blob("delblob/one", &d, None).await, 404, &["BLOB_UNKNOWN"]).await;
    reg.assert_blob("delblob/two", &d, &data).await;

    expect_error(
        reg.delete(&format!("/v2/delblob/one/blobs/{d}")).await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
    expect_error(
        reg.delete(&format!("/v2/delblob/two/blobs/{}", unknown_digest(44)))
            .await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
    reg.assert_blob("delblob/two", &d, &data).await;

    // The blob can be pushed to the repository again.
    reg.push_blob("delblob/one", &data).await;
    reg.assert_blob("delblob/one", &d, &data).await;
}

#[tokio::test]
async fn deleted_blob_can_no_longer_be_referenced_or_mounted() {
    let reg = Reg::start().await;
    let repo = "gone/app";
    let config = config_blob(45);
    let layer = random_bytes(500, 45);
    reg.push_blob(repo, &config).await;
    let layer_digest = reg.push_blob(repo, &layer).await;
    check(reg.delete(&format!("/v2/{repo}/blobs/{layer_digest}")).await, 202).await;

    let manifest = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &layer)],
        None,
    );
    expect_error(
        reg.put_manifest(repo, "v1", OCI_MANIFEST, &manifest).await,
        400,
        &["MANIFEST_BLOB_UNKNOWN"],
    )
    .await;
    expect_error(
        reg.get_manifest(repo, "v1").await,
        404,
        &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"],
    )
    .await;

    // Mounting it from the repository it was deleted from falls back to an upload.
    let url = with_query(
        with_query(reg.url("/v2/gone/dst/blobs/uploads/"), "mount", &layer_digest),
        "from",
        repo,
    );
    let (h, _) = check(
        send(reg.req_url(reqwest::Method::POST, url).header("Content-Length", "0")).await,
        202,
    )
    .await;
    assert!(
        reg.path_of(&header_req(&h, "location"))
            .starts_with("/v2/gone/dst/blobs/uploads/")
    );
    assert_eq!(reg.blob_status("gone/dst", &layer_digest).await, 404);
}
