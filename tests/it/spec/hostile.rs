//! Inputs that would break images or mislead clients: deletes of blobs an image
//! still uses, manifests a second parser reads differently, numbers that overflow,
//! and the exact answers the spec and RFC 9110 ask for.

use super::support::*;

#[tokio::test]
async fn a_blob_a_manifest_uses_is_not_deleted_and_the_image_still_pulls() {
    let reg = Reg::start().await;
    let repo = "hostile/in-use";
    let img = reg.push_image(repo, "v1", 60).await;
    let layer = sha256_digest(&img.layer);

    let body = expect_error(
        reg.delete(&format!("/v2/{repo}/blobs/{layer}")).await,
        405,
        &["UNSUPPORTED"],
    )
    .await;
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains(&img.digest), "names the manifest: {body}");
    reg.assert_blob(repo, &layer, &img.layer).await;
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &img.manifest).await;

    // Untagged, the manifest is still served by digest: its layer stays.
    check(reg.delete(&format!("/v2/{repo}/manifests/v1")).await, 202).await;
    expect_error(
        reg.delete(&format!("/v2/{repo}/blobs/{layer}")).await,
        405,
        &["UNSUPPORTED"],
    )
    .await;
    // Once the manifest is gone, the layer may go.
    check(reg.delete(&format!("/v2/{repo}/manifests/{}", img.digest)).await, 202).await;
    check(reg.delete(&format!("/v2/{repo}/blobs/{layer}")).await, 202).await;
    assert_eq!(reg.blob_status(repo, &layer).await, 404);
}

#[tokio::test]
async fn deletes_turned_off_refuse_every_delete_and_change_nothing() {
    let reg = Reg::start_with("[registry]\ndeletes = false\n").await;
    let repo = "hostile/no-deletes";
    let img = reg.push_image(repo, "v1", 61).await;
    let loose = reg.push_blob(repo, &random_bytes(100, 61)).await;
    for path in [
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/manifests/{}", img.digest),
        format!("/v2/{repo}/blobs/{loose}"),
    ] {
        let body = expect_error(reg.delete(&path).await, 405, &["UNSUPPORTED"]).await;
        assert!(body.to_string().contains("deletes = false"), "{path}: {body}");
    }
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &img.manifest).await;
    assert_eq!(reg.blob_status(repo, &loose).await, 200);
}

#[tokio::test]
async fn a_manifest_with_a_repeated_key_is_refused_with_nothing_stored() {
    let reg = Reg::start().await;
    let repo = "hostile/dup";
    let config = config_blob(62);
    let other = config_blob(63);
    let layer = random_bytes(300, 62);
    for blob in [&config, &other, &layer] {
        reg.push_blob(repo, blob).await;
    }
    let cfg = desc(OCI_CONFIG, &config).to_string();
    let cfg2 = desc(OCI_CONFIG, &other).to_string();
    let lay = desc(OCI_LAYER, &layer).to_string();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":[{lay}],"config":{cfg2}}}"#
    );
    let body = expect_error(
        reg.put_manifest(repo, "v1", OCI_MANIFEST, manifest.as_bytes()).await,
        400,
        &["MANIFEST_INVALID"],
    )
    .await;
    assert!(body.to_string().contains("config"), "{body}");
    expect_error(reg.get_manifest(repo, "v1").await, 404, &["MANIFEST_UNKNOWN"]).await;
    let digest = sha256_digest(manifest.as_bytes());
    assert_eq!(reg.head_manifest(repo, &digest).await.status().as_u16(), 404);
}

#[tokio::test]
async fn a_descriptor_with_the_wrong_size_is_refused_with_nothing_stored() {
    let reg = Reg::start().await;
    let repo = "hostile/size";
    let config = config_blob(64);
    let layer = random_bytes(11, 64);
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let mut wrong = desc(OCI_LAYER, &layer);
    wrong["size"] = serde_json::json!(999);
    let manifest = image_manifest(OCI_MANIFEST, &desc(OCI_CONFIG, &config), &[wrong], None);
    let body = expect_error(
        reg.put_manifest(repo, "v1", OCI_MANIFEST, &manifest).await,
        400,
        &["MANIFEST_INVALID"],
    )
    .await;
    let message = body.to_string();
    assert!(
        message.contains(&sha256_digest(&layer)) && message.contains("999"),
        "names the descriptor: {body}"
    );
    expect_error(reg.get_manifest(repo, "v1").await, 404, &["MANIFEST_UNKNOWN"]).await;
    assert_eq!(reg.tags(repo).await, Vec::<String>::new());
}

#[tokio::test]
async fn exact_answers_for_odd_requests() {
    let reg = Reg::start().await;
    let repo = "hostile/exact";
    reg.push_image(repo, "v1", 65).await;

    // A reference that is neither tag nor digest names no manifest.
    for reference in ["-bad", "a%20b", "sha256:xyz"] {
        expect_error(reg.get_manifest(repo, reference).await, 404, &["MANIFEST_UNKNOWN"]).await;
        assert_eq!(reg.head_manifest(repo, reference).await.status().as_u16(), 404);
    }
    // Pushing under it stays invalid.
    expect_error(
        reg.put_manifest(repo, "-bad", OCI_MANIFEST, b"{}").await,
        400,
        &["MANIFEST_INVALID"],
    )
    .await;

    // Deleting in a repository that does not exist: what a read would say.
    for reference in ["v1".to_string(), unknown_digest(65)] {
        expect_error(
            reg.delete(&format!("/v2/hostile/nowhere/manifests/{reference}")).await,
            404,
            &["NAME_UNKNOWN"],
        )
        .await;
    }

    // A bad page size has the reference registry's code.
    for path in [format!("/v2/{repo}/tags/list?n=-1"), "/v2/_catalog?n=x".to_string()] {
        expect_error(reg.get(&path).await, 400, &["PAGINATION_NUMBER_INVALID"]).await;
    }

    // An unknown digest algorithm is one answer everywhere.
    let odd = "md5:d41d8cd98f00b204e9800998ecf8427e";
    expect_error(
        reg.get(&format!("/v2/{repo}/blobs/{odd}")).await,
        400,
        &["DIGEST_INVALID"],
    )
    .await;
    let upload = reg.start_upload(repo).await;
    let finish = send(reg.req_url(reqwest::Method::PUT, with_query(reg.url(&upload), "digest", odd))).await;
    expect_error(finish, 400, &["DIGEST_INVALID"]).await;

    // A path that is no endpoint: a plain 404, no OCI error code.
    let resp = reg.get("/v2/hostile/exact/nothing/here").await;
    assert_eq!(resp.status().as_u16(), 404);
    let text = resp.text().await.unwrap_or_default();
    assert!(!text.contains("NAME_UNKNOWN"), "{text}");
}

#[tokio::test]
async fn a_manifest_declared_too_large_is_refused_before_its_body() {
    let reg = Reg::start().await;
    // Declares an exabyte and sends nothing: the answer comes at once from the
    // header (a server waiting for the body would time the client out).
    let mut stream = tokio::net::TcpStream::connect(reg.base().socket_addrs(|| None).expect("addr")[0])
        .await
        .expect("connect");
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "PUT /v2/hostile/big/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\n\
         Content-Length: 1000000000000000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("SIZE_INVALID"), "{answer}");
}

#[tokio::test]
async fn a_content_range_as_wide_as_64_bits_is_refused_not_wrapped() {
    let reg = Reg::start().await;
    let repo = "hostile/overflow";
    let upload = reg.start_upload(repo).await;
    let resp = send(
        reg.req(reqwest::Method::PATCH, &upload)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", "0-18446744073709551615"),
    )
    .await;
    expect_error(resp, 416, &["BLOB_UPLOAD_INVALID"]).await;
    // The session is unchanged and still usable.
    check(reg.patch_chunk(&upload, 0, b"hello").await, 202).await;
}

#[tokio::test]
async fn open_upload_sessions_are_bounded_per_repository() {
    let reg = Reg::start_with("[uploads]\nmax_sessions_per_repository = 3\n").await;
    for _ in 0..3 {
        reg.start_upload("hostile/bounded").await;
    }
    let resp = send(reg.req(reqwest::Method::POST, "/v2/hostile/bounded/blobs/uploads/")).await;
    let retry = resp.headers().get("retry-after").is_some();
    expect_error(resp, 429, &["TOOMANYREQUESTS"]).await;
    assert!(retry, "429 comes with Retry-After");
    // Other repositories are not held up by this one.
    reg.start_upload("hostile/other").await;
}
