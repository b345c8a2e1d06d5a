//! Blob push (single POST), pull, HEAD and range reads; repository isolation.

use reqwest::Method;

use super::support::*;

#[tokio::test]
async fn monolithic_post_then_head_and_get() {
    let reg = Reg::start().await;
    let data = random_bytes(3000, 1);
    let digest = sha256_digest(&data);

    let (h, _) = check(reg.post_blob("mono/app", &digest, &data).await, 201).await;
    // Location may be a path or an absolute URL (RFC 7231); both are allowed.
    assert_eq!(
        reg.path_of(&header_req(&h, "location")),
        format!("/v2/mono/app/blobs/{digest}")
    );
    assert_eq!(
        header_opt(&h, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );

    let (h, body) = check(reg.head(&format!("/v2/mono/app/blobs/{digest}")).await, 200).await;
    assert_eq!(header_opt(&h, "content-length").as_deref(), Some("3000"));
    assert_eq!(
        header_opt(&h, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert!(body.is_empty(), "HEAD must not have a body");

    reg.assert_blob("mono/app", &digest, &data).await;
    let (h, _) = check(reg.get_blob("mono/app", &digest, None).await, 200).await;
    assert_eq!(header_opt(&h, "content-length").as_deref(), Some("3000"));
}

#[tokio::test]
async fn unknown_blob_is_404_blob_unknown() {
    let reg = Reg::start().await;
    // In a repository that exists ...
    reg.push_blob("known/app", b"something").await;
    let d = unknown_digest(1);
    expect_error(reg.get_blob("known/app", &d, None).await, 404, &["BLOB_UNKNOWN"]).await;
    assert_eq!(reg.blob_status("known/app", &d).await, 404);
    // ... and in one that does not. The spec only fixes the status; the code
    // may name the missing repository instead of the blob.
    expect_error(
        reg.get_blob("nothing/here", &d, None).await,
        404,
        &["BLOB_UNKNOWN", "NAME_UNKNOWN"],
    )
    .await;
    assert_eq!(reg.blob_status("nothing/here", &d).await, 404);
}

#[tokio::test]
async fn blob_range_requests() {
    let reg = Reg::start().await;
    let data = random_bytes(1000, 2);
    let d = reg.push_blob("ranges/app", &data).await;

    let cases: [(&str, usize, usize); 6] = [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, 999),
        ("bytes=-5", 995, 999),
        ("bytes=990-5000", 990, 999),             // end past the size is clamped (RFC 9110)
        ("bytes=0-99999999999999999999", 0, 999), // even past 64 bits
        ("bytes=-99999999999999999999", 0, 999),  // a suffix longer than the blob
    ];
    for (range, first, last) in cases {
        let (h, body) = check(reg.get_blob("ranges/app", &d, Some(range)).await, 206).await;
        assert_eq!(
            header_opt(&h, "content-range").as_deref(),
            Some(format!("bytes {first}-{last}/1000").as_str()),
            "Range: {range}"
        );
        assert_eq!(
            header_opt(&h, "content-length"),
            Some((last - first + 1).to_string()),
            "Range: {range}"
        );
        assert!(body[..] == data[first..=last], "Range: {range}: wrong bytes");
    }

    for range in ["bytes=1000-", "bytes=5000-6000"] {
        let (h, _) = check(reg.get_blob("ranges/app", &d, Some(range)).await, 416).await;
        assert_eq!(
            header_opt(&h, "content-range").as_deref(),
            Some("bytes */1000"),
            "Range: {range}"
        );
    }

    check(reg.get_blob("ranges/app", &d, Some("bytes=abc")).await, 416).await;

    // A unit other than bytes, or several ranges, is ignored: the whole blob, 200.
    for range in ["items=0-1", "bytes=0-1,5-6"] {
        let (h, body) = check(reg.get_blob("ranges/app", &d, Some(range)).await, 200).await;
        assert_eq!(header_opt(&h, "content-range"), None, "Range: {range}");
        assert!(body[..] == data[..], "Range: {range}: wrong bytes");
    }

    // The blob is still whole and readable afterwards.
    reg.assert_blob("ranges/app", &d, &data).await;
}

#[tokio::test]
async fn sha512_and_empty_blobs() {
    let reg = Reg::start().await;
    // sha512, monolithic.
    let data = random_bytes(777, 3);
    let d512 = sha512_digest(&data);
    let (h, _) = check(reg.post_blob("algo/app", &d512, &data).await, 201).await;
    assert_eq!(header_opt(&h, "docker-content-digest").as_deref(), Some(d512.as_str()));
    assert_eq!(
        reg.path_of(&header_req(&h, "location")),
        format!("/v2/algo/app/blobs/{d512}")
    );
    reg.assert_blob("algo/app", &d512, &data).await;

    // sha512, chunked.
    let data2 = random_bytes(400, 4);
    let d2 = sha512_digest(&data2);
    let loc = reg.start_upload("algo/app").await;
    let (h, _) = check(reg.patch_chunk(&loc, 0, &data2[..150]).await, 202).await;
    let loc = header_req(&h, "location");
    let (h, _) = check(reg.patch_chunk(&loc, 150, &data2[150..]).await, 202).await;
    let loc = header_req(&h, "location");
    let (h, _) = check(reg.finish_upload(&loc, &d2, b"").await, 201).await;
    assert_eq!(header_opt(&h, "docker-content-digest").as_deref(), Some(d2.as_str()));
    reg.assert_blob("algo/app", &d2, &data2).await;

    // Empty blob, single POST and POST + PUT.
    let empty = sha256_digest(b"");
    assert_eq!(
        empty,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    check(reg.post_blob("empty/one", &empty, b"").await, 201).await;
    let (h, body) = check(reg.head(&format!("/v2/empty/one/blobs/{empty}")).await, 200).await;
    assert_eq!(header_opt(&h, "content-length").as_deref(), Some("0"));
    assert!(body.is_empty());
    reg.assert_blob("empty/one", &empty, b"").await;

    let loc = reg.start_upload("empty/two").await;
    check(reg.finish_upload(&loc, &empty, b"").await, 201).await;
    reg.assert_blob("empty/two", &empty, b"").await;
}

#[tokio::test]
async fn monolithic_post_with_wrong_digest_stores_nothing() {
    let reg = Reg::start().await;
    let data = random_bytes(500, 5);
    let claimed = sha256_digest(b"other content");
    let before = reg.catalog().await;
    expect_error(
        reg.post_blob("wrong/app", &claimed, &data).await,
        400,
        &["DIGEST_INVALID"],
    )
    .await;
    assert_eq!(reg.blob_status("wrong/app", &claimed).await, 404);
    assert_eq!(reg.blob_status("wrong/app", &sha256_digest(&data)).await, 404);
    assert_eq!(
        reg.catalog().await,
        before,
        "a failed push must not create a repository"
    );

    // A malformed digest is rejected the same way.
    for bad in [
        "sha256:xyz",
        "nodigest",
        "sha256:",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        expect_error(reg.post_blob("wrong/app", bad, b"").await, 400, &["DIGEST_INVALID"]).await;
    }
    assert_eq!(reg.catalog().await, before);
}

#[tokio::test]
async fn repositories_are_isolated_for_blobs() {
    let reg = Reg::start().await;
    let data = random_bytes(256, 6);
    let d = reg.push_blob("iso/a", &data).await;
    reg.push_blob("iso/c", b"c has something else").await;
    assert_eq!(reg.blob_status("iso/a", &d).await, 200);
    assert_eq!(reg.blob_status("iso/c", &d).await, 404);
    expect_error(reg.get_blob("iso/c", &d, None).await, 404, &["BLOB_UNKNOWN"]).await;
    // A prefix or sub-path of the name is a different repository too.
    assert_eq!(reg.blob_status("iso", &d).await, 404);
    assert_eq!(reg.blob_status("iso/a/b", &d).await, 404);
}

#[tokio::test]
async fn blob_get_on_wrong_method_is_not_5xx() {
    // Guards the router: a PUT on a blob URL is not an endpoint of the spec.
    let reg = Reg::start().await;
    let d = reg.push_blob("meth/app", b"x").await;
    let resp = send(reg.req(Method::PUT, &format!("/v2/meth/app/blobs/{d}")).body("x")).await;
    let status = resp.status().as_u16();
    assert!(
        (400..500).contains(&status),
        "PUT on a blob URL: expected a 4xx, got {status}"
    );
    reg.assert_blob("meth/app", &d, b"x").await;
}
